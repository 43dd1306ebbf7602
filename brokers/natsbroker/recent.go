package natsbroker

import (
	"context"
	"fmt"
	"slices"

	"github.com/cometgate/cometgate/brokers"
)

// recentWindow is the first window (in stream sequences) read backwards
// from the stream's end for ReplayRecent's Last; each next window is four
// times the one before.
const recentWindow = 256

// ReplayRecent implements brokers.History.
//
// PerChannel is JetStream's own: a pull consumer with DeliverLastPerSubject
// on the pattern's subject filter, which the server answers from its index
// of the last sequence per subject, one message per channel, in stream
// order. Last N reads backwards from the stream's end in windows of
// sequences (256, then four times wider each time) until the windows hold
// N messages on the pattern or reach the stream's first message; the
// server filters by subject, so a window costs only its messages on the
// pattern. End is the stream's last sequence when ReplayRecent was called.
func (b *Broker) ReplayRecent(ctx context.Context, pattern string, which brokers.Recent, h brokers.Handler) (brokers.ReplayResult, error) {
	if err := which.Check(); err != nil {
		return brokers.ReplayResult{}, fmt.Errorf("natsbroker: replay %q: %w", pattern, err)
	}
	r, err := b.newReplay(ctx, pattern, h)
	if err != nil {
		return brokers.ReplayResult{}, err
	}
	var res brokers.ReplayResult
	if which.PerChannel {
		res, err = r.latestPerSubject(ctx)
	} else {
		res, err = r.lastN(ctx, which.Last)
	}
	if err != nil {
		return res, b.connErr(ctx, "replay "+pattern, err)
	}
	return res, nil
}

// latestPerSubject hands h the last message of each subject on the filter
// stored up to the stream's current end.
func (r *replay) latestPerSubject(ctx context.Context) (brokers.ReplayResult, error) {
	r.perSubject, r.recent = true, true
	defer r.deleteConsumer(ctx)
	res, err := r.run(ctx)
	return brokers.ReplayResult{Last: res.Last, End: r.end}, err
}

// lastN hands h the last n messages on the filter stored up to the
// stream's current end, oldest first.
func (r *replay) lastN(ctx context.Context, n int) (brokers.ReplayResult, error) {
	si, err := r.streamState(ctx)
	if err != nil {
		return brokers.ReplayResult{}, err
	}
	res := brokers.ReplayResult{End: si.LastSeq}
	if si.Msgs == 0 || si.FirstSeq == 0 {
		return res, nil
	}
	var windows [][]brokers.Message // newest first
	need := n
	to, width := si.LastSeq, uint64(recentWindow)
	for need > 0 {
		from := si.FirstSeq
		if to >= from+width {
			from = to - width + 1
		}
		var ring []brokers.Message // the last `need` messages of [from, to]
		w := &replay{b: r.b, st: r.st, filter: r.filter, after: from - 1, stop: to, recent: true,
			h: func(m brokers.Message) { ring = brokers.KeepLast(append(ring, m), need, 2*need) }}
		_, err := w.run(ctx)
		w.deleteConsumer(ctx)
		if err != nil {
			return res, err
		}
		ring = brokers.KeepLast(ring, need, need)
		windows = append(windows, ring)
		need -= len(ring)
		if from <= si.FirstSeq {
			break
		}
		to, width = from-1, width*4
	}
	for _, w := range slices.Backward(windows) {
		for _, m := range w {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			r.h(m)
			res.Last = m.Seq
		}
	}
	return res, nil
}
