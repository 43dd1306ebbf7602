package amqpbroker

import (
	"crypto/rand"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

// StreamSpec declares a RabbitMQ stream queue that stores the messages of
// some channels, which makes them history-backed (see the package doc).
//
// A stream keeps messages until its retention limits remove them, and
// retention removes whole segment files, oldest first: the oldest
// position still stored moves in jumps of about SegmentBytes.
type StreamSpec struct {
	// Name is the stream queue's name: at most 255 bytes, not starting
	// with "amq." (reserved by RabbitMQ).
	Name string
	// Patterns are the channel patterns whose messages the stream stores,
	// in channel syntax, before Options.SubjectPrefix is applied. At least
	// one. The patterns of two StreamSpecs of one Broker must not overlap.
	Patterns []string
	// MaxAge is how long stored messages are kept (x-max-age), in whole
	// seconds; zero means no age limit.
	MaxAge time.Duration
	// MaxLengthBytes is how many bytes of messages are kept
	// (x-max-length-bytes); zero means no size limit.
	MaxLengthBytes int64
	// SegmentBytes is the size of the stream's segment files
	// (x-stream-max-segment-size-bytes), the unit in which retention
	// removes messages; zero means RabbitMQ's default (500 MB). Small
	// segments make retention precise, at the cost of more files.
	SegmentBytes int64
	// Declare makes the Broker declare the stream (durable, with the
	// limits above) on every connect and bind it to the exchange with
	// each pattern. Without it the stream queue must already exist with
	// its bindings (created by an operator); it is only checked to exist.
	// With Declare, a stream that exists with other limits is an error:
	// RabbitMQ refuses to redeclare a queue with different arguments
	// (change limits with a policy, or delete the stream).
	Declare bool
}

// maxSegmentBytes is RabbitMQ's upper bound for
// x-stream-max-segment-size-bytes.
const maxSegmentBytes = 3_000_000_000

// stream is a validated StreamSpec and the live state of its history
// subscriptions.
type stream struct {
	spec StreamSpec
	keys []string   // binding keys of Patterns, prefixed and deduplicated
	args amqp.Table // the declaration's arguments

	// pats are the active history patterns this stream covers, by name,
	// and the same as a list for dispatch. Guarded by Broker.mu.
	pats  map[string]*pattern
	plist []*pattern

	// pos is the offset of the last record the stream's live consumer
	// handed on, or -1 when the consumer has no position (never started,
	// or stopped because nobody subscribed). Only the consumer's
	// dispatcher writes it while it runs; the holder of Broker.topo reads
	// and resets it after that dispatcher ended.
	pos atomic.Int64
}

// newStreams validates specs: names, patterns, limits, and that no two
// streams overlap (a channel must have one history).
func newStreams(specs []StreamSpec, k keys) ([]*stream, error) {
	out := make([]*stream, 0, len(specs))
	for i, sp := range specs {
		if err := checkStreamName(sp.Name); err != nil {
			return nil, fmt.Errorf("amqpbroker: stream %d: %w", i, err)
		}
		if len(sp.Patterns) == 0 {
			return nil, fmt.Errorf("amqpbroker: stream %q has no channel patterns", sp.Name)
		}
		if sp.MaxAge < 0 || sp.MaxLengthBytes < 0 || sp.SegmentBytes < 0 {
			return nil, fmt.Errorf("amqpbroker: stream %q: negative limit (zero means none)", sp.Name)
		}
		if sp.MaxAge%time.Second != 0 {
			return nil, fmt.Errorf("amqpbroker: stream %q: MaxAge %v is not a whole number of seconds", sp.Name, sp.MaxAge)
		}
		if sp.SegmentBytes > maxSegmentBytes {
			return nil, fmt.Errorf("amqpbroker: stream %q: SegmentBytes above RabbitMQ's limit of %d", sp.Name, int64(maxSegmentBytes))
		}
		st := &stream{spec: sp, pats: make(map[string]*pattern)}
		st.spec.Patterns = append([]string(nil), sp.Patterns...)
		st.pos.Store(-1)
		for _, p := range sp.Patterns {
			if err := checkPattern(p); err != nil {
				return nil, fmt.Errorf("amqpbroker: stream %q: %w", sp.Name, err)
			}
			if err := k.checkLen(p); err != nil {
				return nil, fmt.Errorf("amqpbroker: stream %q: %w", sp.Name, err)
			}
		}
		for _, prev := range out {
			if prev.spec.Name == sp.Name {
				return nil, fmt.Errorf("amqpbroker: stream %q is declared twice", sp.Name)
			}
			for _, a := range prev.spec.Patterns {
				for _, b := range sp.Patterns {
					if brokers.PatternsOverlap(a, b) {
						return nil, fmt.Errorf("amqpbroker: streams %q and %q overlap (patterns %q and %q)", prev.spec.Name, sp.Name, a, b)
					}
				}
			}
		}
		seen := make(map[string]bool)
		for _, p := range sp.Patterns {
			if key := k.bindingKey(p); !seen[key] {
				seen[key] = true
				st.keys = append(st.keys, key)
			}
		}
		st.args = amqp.Table{"x-queue-type": "stream"}
		if sp.MaxAge > 0 {
			st.args["x-max-age"] = fmt.Sprintf("%ds", int64(sp.MaxAge/time.Second))
		}
		if sp.MaxLengthBytes > 0 {
			st.args["x-max-length-bytes"] = sp.MaxLengthBytes
		}
		if sp.SegmentBytes > 0 {
			st.args["x-stream-max-segment-size-bytes"] = sp.SegmentBytes
		}
		out = append(out, st)
	}
	return out, nil
}

func checkStreamName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty stream name", errBadName)
	case len(name) > maxShortStr:
		return fmt.Errorf("%w: stream name longer than %d bytes", errBadName, maxShortStr)
	case strings.HasPrefix(name, "amq."):
		return fmt.Errorf("%w: stream name %q: the \"amq.\" prefix is reserved by RabbitMQ", errBadName, name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < ' ' || c == 0x7f {
			return fmt.Errorf("%w: stream name %q contains a control character", errBadName, name)
		}
	}
	return nil
}

// covers reports whether the stream stores every channel of pattern.
func (st *stream) covers(pattern string) bool {
	for _, p := range st.spec.Patterns {
		if brokers.PatternCovers(p, pattern) {
			return true
		}
	}
	return false
}

// streamFor returns the stream that stores every channel of the valid
// pattern (a concrete channel is a pattern too), or nil.
func (b *Broker) streamFor(pattern string) *stream {
	for _, st := range b.streams {
		if st.covers(pattern) {
			return st
		}
	}
	return nil
}

// declareStreams declares every stream and its bindings (Declare), or
// checks that it exists, on ch.
func (b *Broker) declareStreams(ch *amqp.Channel) error {
	for _, st := range b.streams {
		name := st.spec.Name
		if !st.spec.Declare {
			if _, err := ch.QueueDeclarePassive(name, true, false, false, false, nil); err != nil {
				return fmt.Errorf("stream %q (Declare is off, so it must exist): %w", name, err)
			}
			continue
		}
		if _, err := ch.QueueDeclare(name, true, false, false, false, st.args); err != nil {
			return fmt.Errorf("declare stream %q: %w", name, err)
		}
		for _, key := range st.keys {
			if err := ch.QueueBind(name, key, b.opts.Exchange, false, nil); err != nil {
				return fmt.Errorf("bind stream %q with %q to exchange %q: %w", name, key, b.opts.Exchange, err)
			}
		}
	}
	return nil
}

// Records of a stream carry their offset in this header.
const offsetHeader = "x-stream-offset"

// markerHeader marks the records the Broker writes to find a stream's end
// (see endOffset); its value is a random id. They are never delivered.
const markerHeader = "x-cometgate-end-marker"

// streamOffset returns the offset of a record delivered from a stream.
func streamOffset(d *amqp.Delivery) (int64, bool) {
	off, ok := d.Headers[offsetHeader].(int64)
	return off, ok && off >= 0
}

// isMarker reports whether d is an end marker (anyone's).
func isMarker(d *amqp.Delivery) bool {
	_, ok := d.Headers[markerHeader]
	return ok
}

// seqOf maps a stream offset to a brokers.Message.Seq: offsets start at 0
// where Seq 0 means "no history", so Seq = offset + 1.
func seqOf(offset int64) uint64 { return uint64(offset) + 1 }

// markerID returns a new random marker id.
func markerID() string { return rand.Text() }
