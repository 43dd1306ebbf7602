package amqpbroker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

var _ brokers.History = (*Broker)(nil)

// ErrNoHistory is returned by Replay for a pattern that no stream covers
// entirely (HasHistory is false).
var ErrNoHistory = errors.New("amqpbroker: pattern has no history")

// maxReplays bounds the Replays running at once on one Broker: each holds
// an AMQP channel, and a connection has at most a few thousand (the
// negotiated channel-max). Further Replays wait for a slot.
const maxReplays = 256

// HasHistory implements brokers.History: it reports whether one stream's
// patterns cover every channel of pattern. An invalid pattern has none.
func (b *Broker) HasHistory(pattern string) bool {
	return checkPattern(pattern) == nil && b.streamFor(pattern) != nil
}

// HistoryGaps returns how many times a stream's live consumer could not
// resume exactly after the last record it delivered, after a reconnect:
// retention had removed records it had not delivered yet, or the stream
// had been deleted and created again. Each one is also logged, and every
// history subscription of the stream gets a Message with Gap set before
// the next record. Like a
// Replay gap it is conservative: the records removed may all have been
// on channels nobody here subscribed to.
func (b *Broker) HistoryGaps() uint64 { return b.historyGaps.Load() }

// endOffset returns an offset beyond every record the stream queue stored
// before the call: it consumes the stream from "next", writes an end
// marker (a record with markerHeader, through the default exchange, so
// only that stream receives it) on the same channel, and reads until the
// marker comes back; the marker's offset is the answer. The marker is
// written on the consuming channel because the server handles a channel's
// commands in order: the reader is attached before the marker is written,
// so it cannot miss it. The consumer is cancelled before endOffset
// returns; ch stays open and belongs to the caller.
//
// AMQP 0.9.1 offers nothing better: a stream's message count (in
// queue.declare-ok) is a statistic updated every few seconds, and a
// consumer is never told that it reached the end of the stream.
func (b *Broker) endOffset(ctx context.Context, ch *amqp.Channel, queue string) (int64, error) {
	id := markerID()
	tag := "cometgate-end-" + id
	dels, err := ch.Consume(queue, tag, false, false, false, false, amqp.Table{offsetHeader: "next"})
	if err != nil {
		return 0, fmt.Errorf("consume stream %q: %w", queue, err)
	}
	err = ch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{
		Headers:      amqp.Table{markerHeader: id},
		DeliveryMode: amqp.Persistent,
	})
	if err != nil {
		return 0, fmt.Errorf("write end marker to stream %q: %w", queue, err)
	}
	ctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	ackEvery := max(1, b.opts.Prefetch/2)
	for n := 1; ; n++ {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-dels:
		case <-ctx.Done():
			return 0, b.ctxErr(ctx)
		}
		if !ok {
			return 0, fmt.Errorf("stream %q: consumer ended before the end marker came back (stream deleted, or connection lost)", queue)
		}
		off, isRecord := streamOffset(&d)
		if isRecord && d.Headers[markerHeader] == id {
			if err := ch.Cancel(tag, false); err != nil {
				return 0, fmt.Errorf("cancel consumer on stream %q: %w", queue, err)
			}
			// The library closes dels once what it buffered is read.
			for range dels {
			}
			return off, nil
		}
		if n%ackEvery == 0 {
			// Other records written meanwhile: keep the credit flowing.
			if err := ch.Ack(d.DeliveryTag, true); err != nil {
				return 0, fmt.Errorf("stream %q: %w", queue, err)
			}
		}
	}
}

// Replay implements brokers.History. It reads the stream on a channel of
// its own with a consumer of its own, from the offset of the client's
// cursor, and hands every message on a channel matching pattern to h, in
// order, with Seq = offset + 1 (see the package doc). It stops at the end
// of the stream as it was when Replay was called, which it learns with
// an end marker (see the package doc); the consumer is cancelled and the
// channel closed before Replay returns, and h is not called after that.
// Records are acknowledged only after h returned, so a blocking h holds
// the stream back at the prefetch window.
//
// Gaps: the oldest records of a stream are removed by retention, a segment
// at a time. The replay starts at the cursor's own record: while that one
// is still stored nothing after it has been removed. When it is gone and
// the first record the server delivers is not the one right after it,
// Result.Gap is set with Oldest = that record's Seq. Offsets of a stream
// are not contiguous (RabbitMQ writes bookkeeping chunks that take
// offsets but are never delivered) and one stream holds many channels, so
// a gap may be reported although nothing on pattern was removed; a loss
// is never silent. A cursor beyond the stream's end (the stream was
// deleted and created again, and its offsets started over) is a gap
// too, and the replay starts from the oldest record. after == 0 means
// from the oldest record, never a gap.
//
// Replay needs the connection: while disconnected it fails at once with
// an error wrapping brokers.ErrUnavailable, and so it does when the
// connection is lost during the replay. It returns ctx's error when ctx
// ends. At most maxReplays run at once per Broker; more wait for a turn.
func (b *Broker) Replay(ctx context.Context, pattern string, after uint64, h brokers.Handler) (brokers.ReplayResult, error) {
	return b.withReplay(ctx, pattern, h, func(r *replay) (brokers.ReplayResult, error) {
		r.after = after
		return r.run(ctx)
	})
}

// withReplay checks the arguments of a Replay or ReplayRecent, takes a
// replay slot and a channel of its own, and runs fn with them; the
// channel is closed when fn returns.
func (b *Broker) withReplay(ctx context.Context, pattern string, h brokers.Handler, fn func(*replay) (brokers.ReplayResult, error)) (brokers.ReplayResult, error) {
	if h == nil {
		return brokers.ReplayResult{}, errors.New("amqpbroker: replay: nil handler")
	}
	if b.closing.Load() {
		return brokers.ReplayResult{}, fmt.Errorf("amqpbroker: replay: %w", brokers.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return brokers.ReplayResult{}, fmt.Errorf("amqpbroker: replay: %w", err)
	}
	if err := checkPattern(pattern); err != nil {
		return brokers.ReplayResult{}, err
	}
	st := b.streamFor(pattern)
	if st == nil {
		return brokers.ReplayResult{}, fmt.Errorf("%w: %q", ErrNoHistory, pattern)
	}
	s := b.live()
	if s == nil {
		return brokers.ReplayResult{}, fmt.Errorf("amqpbroker: replay %q: %w", pattern, brokers.ErrUnavailable)
	}
	select {
	case b.replays <- struct{}{}:
		defer func() { <-b.replays }()
	case <-ctx.Done():
		return brokers.ReplayResult{}, fmt.Errorf("amqpbroker: replay %q: %w", pattern, ctx.Err())
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return brokers.ReplayResult{}, b.replayErr(ctx, s, pattern, err)
	}
	defer ch.Close()
	res, err := fn(&replay{b: b, ch: ch, queue: st.spec.Name, pattern: pattern, h: h})
	if err != nil {
		return res, b.replayErr(ctx, s, pattern, err)
	}
	return res, nil
}

// replayErr maps an error of a replay to the contract's errors.
func (b *Broker) replayErr(ctx context.Context, s *session, pattern string, err error) error {
	switch {
	case b.closing.Load():
		return fmt.Errorf("amqpbroker: replay %q: %w", pattern, brokers.ErrClosed)
	case ctx.Err() != nil:
		return fmt.Errorf("amqpbroker: replay %q: %w", pattern, ctx.Err())
	case errors.Is(err, brokers.ErrUnavailable):
		return fmt.Errorf("amqpbroker: replay %q: %w", pattern, err)
	case s.conn.IsClosed(), errors.Is(err, amqp.ErrClosed):
		return fmt.Errorf("amqpbroker: replay %q: %w: %w", pattern, brokers.ErrUnavailable, err)
	}
	return fmt.Errorf("amqpbroker: replay %q: %w", pattern, err)
}

// replay is the state of one Replay call.
type replay struct {
	b       *Broker
	ch      *amqp.Channel
	queue   string
	pattern string
	after   uint64
	h       brokers.Handler
}

func (r *replay) run(ctx context.Context) (brokers.ReplayResult, error) {
	var res brokers.ReplayResult
	end, err := r.start(ctx)
	if err != nil {
		return res, err
	}
	// Records at or before skip are not replayed; the first record tells
	// whether there is a gap (check) or where the reset history starts
	// (reset).
	var start any = "first"
	skip := int64(-1)
	check, reset := false, false
	switch {
	case r.after == 0:
	case r.after > uint64(end):
		// The cursor's record would come after the end marker just
		// written: the stream is not the one the cursor was taken from.
		res.Gap, reset = true, true
	default:
		skip = int64(r.after) - 1 // the cursor's own record
		start, check = skip, true
	}
	if skip+1 >= end {
		// Nothing stored after the cursor (with reset: nothing but
		// the marker).
		if reset {
			res.Oldest = seqOf(end)
		}
		return res, nil
	}
	first := true
	err = r.consume(ctx, start, func(off int64, d *amqp.Delivery) (bool, error) {
		if first {
			first = false
			switch {
			case reset:
				res.Oldest = seqOf(off)
			case check && off != skip && off > skip+1:
				// The cursor's record is gone, and so may be what
				// followed it.
				res.Gap, res.Oldest = true, seqOf(off)
			}
		}
		if off >= end {
			return true, nil // stored after Replay was called
		}
		if off <= skip {
			return false, nil
		}
		if m, ok := r.message(d, off); ok {
			r.h(m)
			res.Last = m.Seq
		}
		return false, ctx.Err()
	})
	return res, err
}

// start sets the replay's prefetch and returns the stream's end: the
// offset of an end marker written now (see endOffset).
func (r *replay) start(ctx context.Context) (int64, error) {
	if err := r.ch.Qos(r.b.opts.Prefetch, 0, false); err != nil {
		return 0, fmt.Errorf("set prefetch: %w", err)
	}
	return r.b.endOffset(ctx, r.ch, r.queue)
}

// message turns a record into the Message it carries, unless it is an
// end marker or its channel does not match the replay's pattern.
func (r *replay) message(d *amqp.Delivery, off int64) (brokers.Message, bool) {
	if isMarker(d) {
		return brokers.Message{}, false
	}
	channel, ok := r.b.keys.channel(d.RoutingKey)
	if !ok || !brokers.MatchChannel(r.pattern, channel) {
		return brokers.Message{}, false
	}
	delete(d.Headers, offsetHeader)
	return brokers.Message{Channel: channel, Data: d.Body, Seq: seqOf(off), Header: headerMap(d), ID: d.MessageId}, true
}

// consume reads the stream from start (an x-stream-offset value) with a
// consumer of its own and calls visit for each record, in order, until
// visit says to stop (or fails); records are acknowledged as they are
// read, so a blocking visit holds the stream back at the prefetch
// window. The consumer is cancelled before consume returns. A record that
// ends the read must exist (an end marker), or consume waits for one.
func (r *replay) consume(ctx context.Context, start any, visit func(off int64, d *amqp.Delivery) (stop bool, err error)) error {
	tag := "cometgate-replay-" + markerID()
	dels, err := r.ch.Consume(r.queue, tag, false, false, false, false, amqp.Table{offsetHeader: start})
	if err != nil {
		return fmt.Errorf("consume stream %q: %w", r.queue, err)
	}
	// Cancelled before the channel closes (see stopStream); the library
	// then drops what it buffered for the consumer when the channel
	// closes.
	defer func() { _ = r.ch.Cancel(tag, false) }()
	ackEvery := max(1, r.b.opts.Prefetch/2)
	var lastTag uint64
	unacked := 0
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-dels:
		default:
			if unacked > 0 {
				if err := r.ch.Ack(lastTag, true); err != nil {
					return err
				}
				unacked = 0
			}
			select {
			case d, ok = <-dels:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if !ok {
			return fmt.Errorf("%w: stream %q: the replay's consumer ended (stream deleted, or connection lost)", brokers.ErrUnavailable, r.queue)
		}
		lastTag = d.DeliveryTag
		if unacked++; unacked >= ackEvery {
			if err := r.ch.Ack(lastTag, true); err != nil {
				return err
			}
			unacked = 0
		}
		off, isRecord := streamOffset(&d)
		if !isRecord {
			continue
		}
		if stop, err := visit(off, &d); stop || err != nil {
			return err
		}
	}
}

// ---------------------------------------------------------------------
// Live delivery: one consumer per stream with history subscriptions.

// streamConsumer is the live consumer of one stream in one session, on a
// channel of its own.
type streamConsumer struct {
	st       *stream
	ch       *amqp.Channel
	tag      string
	stopping atomic.Bool   // set before the Broker cancels the consumer on purpose
	done     chan struct{} // closed when the dispatcher returns
}

// ensureStream makes sure the current session, if there is one, has a
// live consumer on st. Like ensureBound it returns nil when disconnected
// or when the connection is lost meanwhile: the next session starts a
// consumer for every stream with subscriptions before it reports
// StateConnected.
func (b *Broker) ensureStream(ctx context.Context, st *stream) error {
	// If Subscribe gives up, the supervisor stops the consumer again.
	return b.topoOp(ctx,
		func(s *session) bool { return s.scons[st] != nil },
		func(s *session) error { return b.startStream(b.ctx, s, st) })
}

// startStream starts the live consumer of st in s. The caller holds the
// semaphore. It returns nil when s's connection is lost meanwhile.
//
// A consumer with a position (it delivered records before a reconnect)
// resumes at its last record, so that nothing published meanwhile is
// lost and nothing is delivered twice; one without starts after the
// stream's current end, so every message published after Subscribe
// returned is delivered. The end is found with an end marker (endOffset),
// which also tells when the position lies beyond the end: the stream was
// deleted and created again, and the consumer starts over from its
// oldest record.
func (b *Broker) startStream(ctx context.Context, s *session, st *stream) error {
	ch, err := s.conn.Channel()
	if err != nil {
		if s.conn.IsClosed() {
			return nil
		}
		return fmt.Errorf("open channel: %w", err)
	}
	fail := func(err error) error {
		_ = ch.Close()
		if s.conn.IsClosed() {
			return nil
		}
		return err
	}
	if err := ch.Qos(b.opts.Prefetch, 0, false); err != nil {
		return fail(fmt.Errorf("set prefetch: %w", err))
	}
	end, err := b.endOffset(ctx, ch, st.spec.Name)
	if err != nil {
		return fail(err)
	}
	pos := st.pos.Load()
	var start any = pos
	skip, check, recreated := pos, true, false
	switch {
	case pos < 0:
		// The marker is the position: a reconnect before the first
		// message resumes right after it.
		start, skip, check = end, end, false
		st.pos.Store(end)
	case pos >= end:
		b.historyGap(st, "the stream was deleted and created again (its offsets started over): delivering it from its oldest record", pos)
		start, skip, check, recreated = "first", -1, false, true
	}
	tag := "cometgate-live-" + markerID()
	dels, err := ch.Consume(st.spec.Name, tag, false, false, false, false, amqp.Table{offsetHeader: start})
	if err != nil {
		return fail(fmt.Errorf("consume stream %q: %w", st.spec.Name, err))
	}
	sc := &streamConsumer{st: st, ch: ch, tag: tag, done: make(chan struct{})}
	s.scons[st] = sc
	s.wg.Add(1)
	go b.streamDispatch(s, sc, dels, skip, check, recreated)
	return nil
}

// stopStream stops the live consumer sc of s, which no subscription needs
// any more, and forgets its position. The caller holds the semaphore.
func (b *Broker) stopStream(s *session, sc *streamConsumer) {
	sc.stopping.Store(true)
	// Cancelling first keeps the server's statistics right: RabbitMQ
	// 3.10 does not count a stream consumer as gone when only its channel
	// closes. It also ends the dispatcher: once the server confirmed the
	// cancel, the library closes the deliveries channel after handing out
	// what it buffered.
	//
	// The channel is closed only after the dispatcher returned, because
	// the dispatcher acknowledges on it, and nothing may follow a
	// channel.close on its channel: RabbitMQ forgets the channel as soon
	// as it handles the close, so an acknowledgement written after it
	// arrives on an unknown channel, which the server answers by closing
	// the whole connection (504 CHANNEL_ERROR "expected 'channel.open'").
	// The library does not prevent it: a channel counts as closed only
	// once close-ok came back.
	if err := sc.ch.Cancel(sc.tag, false); err != nil && !sc.ch.IsClosed() {
		// The cancel went wrong without the channel ending (which
		// would have ended the deliveries too): closing it is then the
		// only way to stop the dispatcher.
		_ = sc.ch.Close()
	}
	<-sc.done
	_ = sc.ch.Close()
	delete(s.scons, sc.st)
	sc.st.pos.Store(-1)
}

// stopIdleStreams stops the live consumers of s whose streams have no
// subscription left.
func (b *Broker) stopIdleStreams(s *session) {
	select {
	case b.topo <- struct{}{}:
	case <-b.ctx.Done():
		return
	}
	defer func() { <-b.topo }()
	if b.tsess != s {
		return
	}
	for st, sc := range s.scons {
		b.mu.RLock()
		idle := len(st.plist) == 0
		b.mu.RUnlock()
		if idle {
			b.stopStream(s, sc)
		}
	}
}

func (b *Broker) historyGap(st *stream, why string, last int64) {
	b.historyGaps.Add(1)
	b.log.Warn("history subscription resumed with a gap: "+why,
		slog.String("stream", st.spec.Name), slog.Int64("last_offset_delivered", last))
}

// streamDispatch delivers the records of a stream's live consumer until
// it ends: to every history subscription whose pattern matches the
// record's channel, with Seq = offset + 1. Records at or before skip are
// not delivered (the server starts a consumer exactly at the offset asked
// for, but a position is never delivered twice). With check, the first
// record must be skip or the one after it, or retention removed records
// that were not delivered yet (a gap, logged and counted). With
// recreated, startStream found a gap already (the stream was recreated).
// Either gap is also reported to every history subscription of the
// stream, with a Gap marker delivered right before the first record (the
// end marker written by startStream guarantees there is one). An end that
// the Broker did not ask for (the stream was deleted, the channel or the
// connection closed) makes the supervisor reconnect.
func (b *Broker) streamDispatch(s *session, sc *streamConsumer, dels <-chan amqp.Delivery, skip int64, check, recreated bool) {
	defer s.wg.Done()
	defer close(sc.done)
	st := sc.st
	ackEvery := max(1, b.opts.Prefetch/2)
	var (
		targets []*subscription
		lastTag uint64
		unacked int
	)
	ack := func() {
		if unacked > 0 {
			// An error means the channel is closed: dels ends next.
			_ = sc.ch.Ack(lastTag, true)
			unacked = 0
		}
	}
	first := true
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-dels:
		default:
			ack()
			d, ok = <-dels
		}
		if !ok {
			break
		}
		lastTag = d.DeliveryTag
		unacked++
		if off, isRecord := streamOffset(&d); isRecord {
			if first {
				first = false
				gap := recreated
				if check && off != skip && off > skip+1 {
					b.historyGap(st, "retention removed records that were not delivered yet", skip)
					gap = true
				}
				if gap {
					targets = b.deliverGap(st, seqOf(off), targets)
				}
			}
			if off > skip {
				if !isMarker(&d) {
					targets = b.deliverStream(st, &d, off, targets)
				}
				skip = off
				st.pos.Store(off)
			}
		}
		if unacked >= ackEvery {
			ack()
		}
	}
	if !sc.stopping.Load() {
		select {
		case s.lost <- fmt.Errorf("the live consumer of stream %q ended (stream deleted?)", st.spec.Name):
		default:
		}
	}
}

// deliverGap hands a Gap marker to every history subscription of st:
// their patterns may have lost records. seq is the first position
// delivered after the gap. targets is scratch space, returned for reuse.
func (b *Broker) deliverGap(st *stream, seq uint64, targets []*subscription) []*subscription {
	b.mu.RLock()
	for _, p := range st.plist {
		targets = append(targets, p.subs...)
	}
	b.mu.RUnlock()
	for _, s := range targets {
		s.deliver(brokers.Message{Gap: true, Seq: seq})
	}
	clear(targets)
	return targets[:0]
}

// deliverStream hands one stream record to every history subscription of
// st whose pattern matches its channel. targets is scratch space,
// returned for reuse.
func (b *Broker) deliverStream(st *stream, d *amqp.Delivery, off int64, targets []*subscription) []*subscription {
	ch, ok := b.keys.channel(d.RoutingKey)
	if !ok {
		b.dropped.Add(1)
		b.log.Debug("ignoring a stream record whose routing key is not a channel", slog.String("routing_key", d.RoutingKey))
		return targets
	}
	b.mu.RLock()
	for _, p := range st.plist {
		if brokers.MatchChannel(p.name, ch) {
			targets = append(targets, p.subs...)
		}
	}
	b.mu.RUnlock()
	if len(targets) == 0 {
		// Another pattern's channel, or the zero-word match of "#".
		return targets
	}
	delete(d.Headers, offsetHeader)
	fanOut(targets, d, ch, seqOf(off))
	clear(targets)
	return targets[:0]
}
