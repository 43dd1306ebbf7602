// Package brokers is the contract between the gateway and a message broker,
// in the manner of database/sql/driver: a deliberately small set of
// interfaces that every broker implementation (sub-packages natsbroker,
// amqpbroker, …) satisfies, and a conformance suite (brokertest) that every
// implementation runs unchanged.
//
// The gateway keeps one broker subscription per active channel pattern per
// node and fans messages out itself, so a broker sees a handful of
// subscriptions per node, never one per browser.
//
// Channels are dot-separated names ("prices.eur.usd"). A subscription
// pattern may use NATS wildcards: "*" matches exactly one token, ">" (last
// token only) matches one or more tokens. Implementations translate to their
// own syntax (AMQP topic "#" for ">").
//
// This package imports nothing from the gateway or transports.
package brokers

import (
	"context"
	"errors"
	"fmt"
)

// ErrClosed is returned by every method of a Broker after Close.
var ErrClosed = errors.New("brokers: closed")

// ErrUnavailable is returned by Publish while the broker connection is down
// and the publish could not be confirmed in time.
var ErrUnavailable = errors.New("brokers: broker unavailable")

// Message is one message on a channel.
//
// Data is owned by the receiver after delivery: a broker never reuses it.
type Message struct {
	// Channel is the concrete channel the message was published on (never a
	// pattern).
	Channel string
	// Data is the payload, opaque bytes.
	Data []byte
	// Seq is the message's position in the channel's history (a JetStream
	// stream sequence, a RabbitMQ stream offset), or 0 when the channel has
	// no history and so the message cannot be resumed from. Positions only
	// grow along a channel's history; the gateway shows them to clients as
	// decimal cursors.
	Seq uint64
	// Header carries broker metadata worth preserving end to end (for
	// example "Content-Type"). It may be nil.
	Header map[string]string
	// ID is the publisher's id of the message, "" for none: a publisher
	// that retries a publish whose confirmation it never got sends the
	// same ID again. A broker that deduplicates does so on it (JetStream:
	// Nats-Msg-Id, within the stream's duplicate window); others carry it
	// (AMQP: message_id), and every broker hands it back on delivery, so
	// a subscriber can drop a message it already has.
	ID string
	// Gap marks a message that carries no data: it tells the subscriber
	// that messages matching its pattern may have been lost between the
	// broker and this node (Seq, if non-zero, is the first position
	// delivered after the gap; Channel, Data and Header are empty).
	// Handlers must not treat it as data. History subscriptions (see
	// History) deliver such markers when they skip positions, and any
	// subscription does when the broker dropped messages for it (a NATS
	// subscription whose client-side buffer overflowed).
	Gap bool
}

// Handler receives the messages of one subscription, one at a time and in
// the order the broker delivered them. It is called from a goroutine the
// broker owns and must not block: the gateway's handler only enqueues.
type Handler func(Message)

// Subscription is one live subscription.
type Subscription interface {
	// Unsubscribe stops delivery. After it returns the Handler is not called
	// again. Calling it twice is safe and returns nil.
	//
	// To keep that promise an implementation may wait for a Handler call
	// in progress, so Unsubscribe must not be called from the
	// subscription's own Handler.
	Unsubscribe() error
}

// Broker is a connection to a message broker. All methods are safe for
// concurrent use.
type Broker interface {
	// Subscribe starts delivering messages whose channel matches pattern to
	// h. A subscription survives broker reconnects: the implementation
	// restores it by itself. h may also receive a Message with Gap set
	// when the broker detects that it skipped messages (see
	// Message.Gap).
	Subscribe(ctx context.Context, pattern string, h Handler) (Subscription, error)
	// Publish sends msg and returns once the broker has confirmed it (a
	// flush round trip on core NATS, a JetStream ack, an AMQP publisher
	// confirm). msg.Seq is ignored.
	Publish(ctx context.Context, msg Message) error
	// Ready reports whether the broker connection is up right now.
	Ready() bool
	// Close unsubscribes everything and closes the connection, waiting for
	// every goroutine the broker started. It is idempotent. After it
	// returns no Handler is called again; since it waits for Handler calls
	// in progress, it must not be called from a Handler or a StateFunc.
	Close() error
}

// State is a broker connection state, reported through a StateFunc.
type State int

const (
	// StateDisconnected means the connection is down; the broker is
	// reconnecting by itself.
	StateDisconnected State = iota
	// StateConnected means the connection is up and every subscription is in
	// place.
	StateConnected
	// StateClosed means Close was called.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnected:
		return "connected"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}

// StateFunc is told every change of a broker's connection state. It is
// called from a broker goroutine and must not block.
type StateFunc func(State)

// History is implemented by brokers that store the messages of some
// channels (JetStream streams, RabbitMQ stream queues). For those channels
// Subscribe delivers messages with Seq set, and a client that lost its
// connection can get what it missed through Replay.
//
// A live subscription on such channels resumes by itself after a
// reconnect or a consumer failure. When the broker detects that it
// skipped messages it had not delivered yet (retention removed them
// meanwhile, or the stream was recreated), it hands the subscription's
// Handler a Message with Gap set, in order with the other messages and
// before the first one delivered after the gap: a loss is never silent.
type History interface {
	// HasHistory reports whether every channel matching pattern is stored.
	HasHistory(pattern string) bool
	// Replay calls h, in order, for each stored message on a channel
	// matching pattern whose Seq is greater than after, up to the last
	// message stored when Replay was called, and then returns. Unlike a
	// subscription Handler, h may block: that is how a slow client holds
	// back its replay. When messages after `after` are no longer stored
	// (retention removed them), the result has Gap set and Oldest is the
	// oldest position still stored; the replay then starts there.
	Replay(ctx context.Context, pattern string, after uint64, h Handler) (ReplayResult, error)
	// ReplayRecent calls h, in order of position, for the recent messages
	// that which selects among those stored on channels matching pattern
	// when it was called (the current state of those channels), and then
	// returns. Like Replay's, h may block.
	//
	// The result's End is the position the history was read up to: a
	// Replay after End continues with what was stored later, so recent
	// messages, then Replay rounds, then live delivery give a subscriber
	// the current state and every change after it, without a duplicate.
	// Messages at or before End that h did not get are not part of the
	// selection (older messages of a channel whose latest one h got, or,
	// with PerChannel, older messages of a channel whose newer message
	// was stored after End: the Replay after End brings that one). Last
	// is the position of the last message handed to h (0 if none); Gap
	// is never set: a channel whose messages retention removed has no
	// recent message, and nobody can tell.
	//
	// which must select something (Recent.Check); an invalid which, a
	// pattern without history and a broker that is down fail as Replay
	// does.
	ReplayRecent(ctx context.Context, pattern string, which Recent, h Handler) (ReplayResult, error)
}

// MaxRecent bounds Recent.Last.
const MaxRecent = 1000

// Recent selects the stored messages a subscription starts with, for
// History.ReplayRecent. Exactly one of its fields is set.
type Recent struct {
	// PerChannel selects the last stored message of each channel that
	// matches the pattern ("latest": an election board's regions, an
	// auction's lots). For a concrete channel it is the same as Last 1.
	PerChannel bool
	// Last selects the last Last stored messages matching the pattern,
	// whatever their channels, 1 to MaxRecent.
	Last int
}

// KeepLast trims msgs to its last n messages once it holds more than
// limit, for implementations of ReplayRecent that collect the last n
// messages of a read: with limit 2n, collecting costs O(1) per message;
// with limit n, it trims to the last n.
func KeepLast(msgs []Message, n, limit int) []Message {
	if len(msgs) <= limit {
		return msgs
	}
	k := copy(msgs, msgs[len(msgs)-n:])
	clear(msgs[k:])
	return msgs[:k]
}

// IsZero reports whether r selects nothing (a subscription without
// recent messages).
func (r Recent) IsZero() bool { return r == Recent{} }

// Check reports what is wrong with r as an argument of ReplayRecent.
func (r Recent) Check() error {
	switch {
	case r.PerChannel && r.Last != 0:
		return errors.New("brokers: recent: PerChannel and Last exclude each other")
	case r.IsZero():
		return errors.New("brokers: recent: select PerChannel or Last")
	case r.Last < 0 || r.Last > MaxRecent:
		return fmt.Errorf("brokers: recent: Last must be 1 to %d, not %d", MaxRecent, r.Last)
	}
	return nil
}

// ReplayResult reports how a Replay went.
type ReplayResult struct {
	// Gap is true when the history no longer reached back to the requested
	// position: messages were lost to the caller.
	Gap bool
	// Oldest is the oldest position still stored, when Gap is set.
	Oldest uint64
	// Last is the position of the last message replayed (0 if none).
	Last uint64
	// End is set by ReplayRecent only: the position the history was read
	// up to, after which a Replay continues.
	End uint64
}
