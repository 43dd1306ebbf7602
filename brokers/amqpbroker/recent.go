package amqpbroker

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

// recentWindow is the first window (in offsets) read backwards from a
// stream's end for ReplayRecent's Last; each next window is four times
// the one before.
const recentWindow = 256

// ReplayRecent implements brokers.History. RabbitMQ streams offer no
// per-channel index: one stream holds many channels, a consumer can start
// only at "first", "last" (the last chunk, whatever its channels), "next",
// an offset or a timestamp, and the records are filtered by channel here,
// not by the server (stream filtering came with RabbitMQ 3.13 and needs
// publishers that tag their messages). So:
//
//   - Last N (and PerChannel on a concrete channel, which is Last 1) reads
//     backwards from the end in windows of offsets, 256 then four times
//     wider each time, until the windows hold N records on the pattern or
//     reach the oldest record. It reads every record of those windows,
//     whatever its channel: cheap when the pattern is busy, up to the
//     whole stream when it is rare.
//   - PerChannel on a wildcard pattern reads the whole stream, oldest to
//     end, and keeps the last record per channel: exact, but its cost is
//     the stream's size (bound it with history_max_bytes or
//     history_max_age), once per such subscription.
//
// The end is an end marker (see endOffset), which End reports (in Seq
// units, the offset + 1 of the record before the marker).
func (b *Broker) ReplayRecent(ctx context.Context, pattern string, which brokers.Recent, h brokers.Handler) (brokers.ReplayResult, error) {
	if err := which.Check(); err != nil {
		return brokers.ReplayResult{}, fmt.Errorf("amqpbroker: replay %q: %w", pattern, err)
	}
	return b.withReplay(ctx, pattern, h, func(r *replay) (brokers.ReplayResult, error) {
		return r.recent(ctx, which)
	})
}

func (r *replay) recent(ctx context.Context, which brokers.Recent) (brokers.ReplayResult, error) {
	var res brokers.ReplayResult
	end, err := r.start(ctx)
	if err != nil {
		return res, err
	}
	// The marker takes offset end, so what was stored before it ends at
	// Seq end.
	res.End = uint64(end)
	var msgs []brokers.Message
	if which.PerChannel && brokers.IsPattern(r.pattern) {
		msgs, err = r.latestPerChannel(ctx, end)
	} else {
		msgs, err = r.lastN(ctx, end, max(which.Last, 1))
	}
	if err != nil {
		return res, err
	}
	for _, m := range msgs {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		r.h(m)
		res.Last = m.Seq
	}
	return res, nil
}

// latestPerChannel reads the stream up to end and returns the last record
// of each channel on the pattern, in order of offset.
func (r *replay) latestPerChannel(ctx context.Context, end int64) ([]brokers.Message, error) {
	latest := map[string]brokers.Message{}
	err := r.consume(ctx, "first", func(off int64, d *amqp.Delivery) (bool, error) {
		if off >= end {
			return true, nil
		}
		if m, ok := r.message(d, off); ok {
			latest[m.Channel] = m
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]brokers.Message, 0, len(latest))
	for _, m := range latest {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b brokers.Message) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

// lastN returns the last n records on the pattern before end, oldest
// first, reading windows of offsets backwards from end.
func (r *replay) lastN(ctx context.Context, end int64, n int) ([]brokers.Message, error) {
	var windows [][]brokers.Message // newest first
	need := n
	to, width := end, int64(recentWindow)
	for need > 0 && to > 0 {
		from := max(0, to-width)
		var ring []brokers.Message // the last `need` records of [from, to)
		err := r.consume(ctx, from, func(off int64, d *amqp.Delivery) (bool, error) {
			if off >= to {
				return true, nil
			}
			if off < from {
				return false, nil // the chunk holding from starts before it
			}
			if m, ok := r.message(d, off); ok {
				ring = brokers.KeepLast(append(ring, m), need, 2*need)
			}
			return false, nil
		})
		if err != nil {
			return nil, err
		}
		ring = brokers.KeepLast(ring, need, need)
		windows = append(windows, ring)
		need -= len(ring)
		to, width = from, width*4
	}
	var out []brokers.Message
	for _, w := range slices.Backward(windows) {
		out = append(out, w...)
	}
	return out, nil
}
