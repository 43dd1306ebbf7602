package gateway

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// The session's outgoing side: the queue (pending bodies, not yet
// numbered), the writer that numbers and writes them, and heartbeats.

// kickLocked hands the session to its write worker if no writer has it.
// s.mu must be held, so that the worker is counted before Shutdown can
// wait for it. w is the session's worker when it is the caller (a
// fan-out it runs, deliverShard), nil otherwise: the worker then takes
// the job into the batch it is working through, without the lock and
// the wake-up a post costs, once per delivery.
func (s *Session) kickLocked(w *writer) {
	if s.writing || s.down == nil {
		return
	}
	s.writing = true
	if w != nil {
		w.batch = append(w.batch, writeJob{s: s})
		return
	}
	s.g.writers.post(s.shard, writeJob{s: s})
}

// TryWriter is implemented by downstreams that can be written without
// waiting for the client (writers.go): a socket the node owns.
// TryWritePackets is WritePackets, except that when the kernel does not
// take every byte at once, the transport keeps the rest and returns
// ErrWriteBlocked (with the bytes of the whole write); the session then
// calls Flush, on a goroutine of its own, before any other write. Flush
// writes the rest, waiting as long as WritePackets would, and returns
// what it wrote. Close must make a Flush in progress return. now is the
// writer's reading of the clock for this write (Unix nanoseconds), for
// whatever the transport times (pings, liveness): the session reads it
// once per write for its own latency figure too, and a delivery's two
// clock readings were measurable in a fan-out.
type TryWriter interface {
	TryWritePackets(pkts []Packet, now int64) (int, error)
	Flush() (int, error)
}

// ErrWriteBlocked is what TryWritePackets returns when part of the write
// waits for Flush.
var ErrWriteBlocked = errors.New("gateway: write would block")

// overLocked reports whether queueing extra more bytes would pass the
// queue bound. A kernel backlog recorded at the last write may be stale
// (the client read it since): it is measured again before it can be what
// closes the session.
func (s *Session) overLocked(extra int) bool {
	if s.queuedLocked()+extra <= s.g.cfg.QueueBytes {
		return false
	}
	if s.kernelBytes > 0 {
		s.kernelBytes = 0
		if b, ok := s.down.(Backlogger); ok {
			s.kernelBytes = b.Backlog()
		}
	}
	return s.queuedLocked()+extra > s.g.cfg.QueueBytes
}

// queuedLocked is what counts against the queue bound: packets queued and,
// for a retaining session, packets written but not yet acknowledged (a
// client that never acks must not grow the server's memory without limit),
// and what the kernel still held after the last write.
func (s *Session) queuedLocked() int { return s.heldLocked() + s.kernelBytes }

// heldLocked is what the session itself holds: queued and unacknowledged.
// What waits for room (SendData, a replay) waits on this: only a write
// measures the kernel's part again, and the waiter may be what the next
// write needs.
func (s *Session) heldLocked() int { return s.pendingBytes + s.unackedBytes }

// queueLocked appends b to the queue and starts the writer (see
// kickLocked for w); s.mu must be held and the session open.
func (s *Session) queueLocked(b *Body, w *writer) {
	s.pending = append(s.pending, b)
	s.pendingBytes += len(b.json)
	s.kickLocked(w)
}

// push queues a session-specific packet (hello, ok, err, gap). These are not
// subject to the slow-consumer policies but count against the queue bound.
func (s *Session) push(b *Body) { s.pushFrom(b, nil) }

// pushFrom is push from a fan-out on worker w (see kickLocked).
func (s *Session) pushFrom(b *Body, w *writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateOpen {
		return
	}
	if s.overLocked(len(b.json)) {
		s.overflowLocked()
		return
	}
	s.queueLocked(b, w)
}

// SendData queues a raw payload (a TypeData body, which the caller must
// not modify afterwards) for a session whose transport carries bytes
// rather than packets: a SockJS echo or tcp endpoint. It waits while the
// queue is full, so that a caller copying from a source (a TCP target)
// stops reading it: that is the backpressure. An empty queue takes a
// payload of any size. It fails with the session's reason once the
// session is closing, or with ctx's error.
func (s *Session) SendData(ctx context.Context, data []byte) error {
	b := dataBody(data)
	s.mu.Lock()
	for {
		if s.state != stateOpen {
			reason := s.reason
			s.mu.Unlock()
			return reason
		}
		queued := s.heldLocked()
		if queued == 0 || queued+len(b.json) <= s.g.cfg.QueueBytes {
			break
		}
		room := s.roomLocked()
		s.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
	}
	s.queueLocked(b, nil)
	s.mu.Unlock()
	return nil
}

// roomLocked returns the channel closed when the queue shrinks or the
// session stops being open; s.mu must be held.
func (s *Session) roomLocked() <-chan struct{} {
	if s.room == nil {
		s.room = make(chan struct{})
	}
	return s.room
}

// signalRoomLocked wakes whoever waits in roomLocked; s.mu must be held.
func (s *Session) signalRoomLocked() {
	if s.room != nil {
		close(s.room)
		s.room = nil
	}
}

// deliver queues a shared message body from e; it runs on the hub's
// fan-out path, on the session's worker w, and never blocks.
func (s *Session) deliver(b *Body, e *hubEntry, w *writer) {
	policy := e.policy
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateOpen {
		return
	}
	if b.seq != 0 && !s.admitLiveLocked(b) {
		return
	}
	if policy == SlowConflate && len(s.pending) > 0 {
		for i := len(s.pending) - 1; i >= 0; i-- {
			p := s.pending[i]
			if p.typ == TypeMsg && p.channel == b.channel && p.pattern == b.pattern {
				s.pending[i] = b
				s.pendingBytes += len(b.json) - len(p.json)
				if e.dropped != nil {
					e.dropped.Inc()
				}
				return
			}
		}
	}
	if policy == SlowDropOldest && s.overLocked(len(b.json)) {
		if n := s.dropOldestLocked(b.pattern, len(b.json)); n > 0 && e.dropped != nil {
			e.dropped.Add(float64(n))
		}
	}
	if s.overLocked(len(b.json)) {
		s.overflowLocked()
		return
	}
	s.queueLocked(b, w)
}

// dropOldestLocked drops the oldest queued messages of pattern until need
// more bytes fit, and queues one gap packet for the pattern (room for it is
// made too, or the gap itself would overflow the queue). It returns how
// many messages it dropped.
func (s *Session) dropOldestLocked(pattern string, need int) int {
	var gap *Body
	if !slices.ContainsFunc(s.pending, func(p *Body) bool { return p.typ == TypeGap && p.channel == pattern }) {
		gap = GapBody(pattern, "slow consumer: messages dropped", "")
		need += len(gap.json)
	}
	dropped := 0
	kept := s.pending[:0]
	for _, p := range s.pending {
		if s.queuedLocked()+need > s.g.cfg.QueueBytes && p.typ == TypeMsg && p.pattern == pattern {
			s.pendingBytes -= len(p.json)
			dropped++
			continue
		}
		kept = append(kept, p)
	}
	clear(s.pending[len(kept):])
	s.pending = kept
	if dropped > 0 && gap != nil {
		s.pending = append(s.pending, gap)
		s.pendingBytes += len(gap.json)
	}
	return dropped
}

// overflowLocked closes the session as a slow consumer; s.mu must be held.
// The caller may be the hub's fan-out, which holds the entry lock that
// ending (unsubscribing) takes, so whatever the close leaves to do runs on
// a goroutine of its own, counted before Shutdown can wait for it.
func (s *Session) overflowLocked() {
	var fx effects
	s.closeLocked(DisconnectSlow, &fx)
	if !fx.empty() {
		s.g.wg.Add(1)
		go func() {
			defer s.g.wg.Done()
			s.apply(&fx)
		}()
	}
}

// batchPool holds the packet slices writers assemble a write in: a writer
// exists only while a session has something to send, so its batch is
// borrowed for that long instead of being allocated at every start.
var batchPool = sync.Pool{New: func() any { b := make([]Packet, 0, 16); return &b }}

// maxPooledBatch keeps rare huge batches out of the pool.
const maxPooledBatch = 4096

// leaveWorker moves the session's writing from its worker to a goroutine
// of its own, for a downstream that is not a TryWriter; writing stays set
// throughout.
func (s *Session) leaveWorker() {
	s.g.wg.Add(1)
	go func() {
		defer s.g.wg.Done()
		s.writeRounds(nil, -1)
	}()
}

// writeRounds drains everything pending into one write per round until
// nothing is left. s.writing is set on entry and cleared when it returns,
// unless the session moved to a goroutine of its own or its write waits
// in its worker's batch (sendbatch.go). w is the worker that runs it
// (writers.go), nil on the session's own goroutine: a worker never waits
// for the client. backlog is the kernel's backlog measured after the last
// write, to record, or -1.
func (s *Session) writeRounds(w *writer, backlog int) {
	s.writeFrom(w, backlog, batchPool.Get().(*[]Packet), 0)
}

// writeRound is one round of writeFrom: what it took and wrote.
type writeRound struct {
	bp      *[]Packet // the pooled slice batch came from, the writer's until it stops
	batch   []Packet
	msgs    int // msg packets in batch
	oneShot bool
	watch   bool // the kernel's backlog was worth watching before the write
	now     time.Time
	rounds  int // rounds a worker made in a row before this one
}

// putBatch gives a stopping writer's batch slice back to the pool.
func putBatch(bp *[]Packet, batch []Packet) {
	if cap(batch) <= maxPooledBatch {
		*bp = batch[:0]
		batchPool.Put(bp)
	}
}

// writeFrom is writeRounds from its round number rounds, with bp the
// batch slice the writer holds.
func (s *Session) writeFrom(w *writer, backlog int, bp *[]Packet, rounds int) {
	batch := (*bp)[:0]
	for {
		s.mu.Lock()
		if backlog >= 0 {
			s.kernelBytes = backlog
			backlog = -1
		}
		down := s.down
		if down == nil || (len(s.pending) == 0 && !s.resend) {
			var fx effects
			s.writing = false
			s.settleLocked(&fx)
			s.mu.Unlock()
			putBatch(bp, batch)
			s.applyFrom(w, &fx)
			return
		}
		tw, try := down.(TryWriter)
		if w != nil && !try {
			s.mu.Unlock()
			putBatch(bp, batch)
			s.leaveWorker()
			return
		}
		r := writeRound{bp: bp, rounds: rounds}
		r.batch, r.msgs = s.takeLocked(batch[:0])
		r.oneShot = s.oneShot
		if r.oneShot {
			s.detachLocked() // the request completes with this write
		}
		r.watch = s.kernelBytes > s.g.cfg.QueueBytes/backlogEvery
		s.mu.Unlock()

		var n int
		var err error
		if w != nil {
			r.now = w.now()
			bw, batched := tw.(BatchWriter)
			if q := w.sends; batched && q != nil && !q.full() {
				if n, err = bw.QueuePackets(r.batch, r.now.UnixNano(), q); err == ErrWriteQueued {
					qw := &q.writes[len(q.writes)-1]
					qw.s, qw.down, qw.bw, qw.round = s, down, bw, r
					return // the worker completes it (endQueued)
				}
			} else {
				n, err = tw.TryWritePackets(r.batch, r.now.UnixNano())
			}
		} else {
			n, err = down.WritePackets(r.batch)
			r.now = time.Now() // after: this write may have waited for the client
		}
		var more bool
		if backlog, more = s.endRound(w, down, &r, n, err); !more {
			putBatch(bp, r.batch)
			return
		}
		batch, rounds = r.batch, r.rounds+1
	}
}

// endQueued completes a write its worker queued (writeFrom), with what
// the socket took of it or the error that kept it from being made, and
// goes on writing the session.
func (s *Session) endQueued(w *writer, qw *queuedWrite, sent int, err error) {
	r := qw.round
	n, err := qw.bw.EndQueued(sent, err)
	backlog, more := s.endRound(w, qw.down, &r, n, err)
	if !more {
		putBatch(r.bp, r.batch)
		return
	}
	*r.bp = r.batch[:0]
	s.writeFrom(w, backlog, r.bp, r.rounds+1)
}

// endRound handles the result of round r's write to down (n bytes, or
// err), on the goroutine that wrote. It returns the kernel's backlog if
// it measured it (or -1), and whether that goroutine should take the
// next round; otherwise the writer has stopped or moved to a goroutine of
// its own.
func (s *Session) endRound(w *writer, down Transport, r *writeRound, n int, err error) (int, bool) {
	backlog := -1
	blocked := err == ErrWriteBlocked
	if blocked {
		err = nil
	}
	if err == nil {
		s.recordWrite(w, r.batch, r.msgs, n, r.now)
		// The kernel's backlog is measured (a system call) after a
		// write that would have waited, while the last measure found a
		// backlog worth watching, after a session's first write, and
		// otherwise once a sixteenth of the queue bound was written
		// since the last measure: what a client that stopped reading
		// has in the kernel unseen is bounded in bytes, the unit of the
		// bound it is held to, and a fan-out of small messages (a
		// measure every eighth write cost an eighth of a system call
		// per delivery) pays for one measure in hundreds.
		s.unmeasured += n
		if b, ok := down.(Backlogger); ok && (blocked || r.watch || s.unmeasured >= s.g.cfg.QueueBytes/backlogEvery) {
			s.unmeasured = 0
			backlog = b.Backlog()
		}
	}
	clear(r.batch)
	r.batch = r.batch[:0]
	if blocked || (w != nil && (err != nil || r.oneShot)) {
		// What follows may wait: the rest of the write, or closing the
		// downstream (a close frame). Not on a worker.
		s.g.wg.Add(1)
		go s.finishWrite(down, r.oneShot, blocked, err, backlog)
		return -1, false
	}
	if !s.wrote(down, r.oneShot, err) {
		return -1, false
	}
	if w != nil && r.rounds+1 == maxWorkerRounds {
		// More arrived while writing (a SockJS session's byte stream,
		// say): the session goes to the back of its worker's queue,
		// still the writer's, so that the others on the worker get
		// their turn.
		s.g.writers.post(s.shard, writeJob{s: s})
		return -1, false
	}
	return backlog, true
}

// backlogEvery: the kernel's backlog is measured at least once per
// QueueBytes/backlogEvery bytes written (see writeRounds).
const backlogEvery = 16

// maxWorkerRounds is how many writes a worker makes to one session in a
// row before the others on the worker get theirs.
const maxWorkerRounds = 4

// finishWrite ends, on a goroutine of its own, a write a worker began:
// flushes its rest when it was blocked, and goes on writing the session
// (see writeRounds).
func (s *Session) finishWrite(down Transport, oneShot, blocked bool, err error, backlog int) {
	defer s.g.wg.Done()
	if blocked {
		_, err = down.(TryWriter).Flush()
	}
	if s.wrote(down, oneShot, err) {
		s.writeRounds(nil, backlog)
	}
}

// applyFrom applies fx for a writer: on a worker, effects that close a
// downstream or end the session (which may wait for a write or a lock)
// run on a goroutine of their own.
func (s *Session) applyFrom(w *writer, fx *effects) {
	if w == nil || fx.empty() {
		s.apply(fx)
		return
	}
	later := *fx
	s.g.wg.Add(1)
	go func() {
		defer s.g.wg.Done()
		s.apply(&later)
	}()
}

// takeLocked appends to batch, numbered, everything pending (after the
// unacknowledged packets, when a newly attached request needs them again)
// and empties the queue; it returns the batch and the number of msg
// packets in it. s.mu must be held.
func (s *Session) takeLocked(batch []Packet) ([]Packet, int) {
	if s.resend {
		batch = append(batch, s.unacked...)
		s.resend = false
	}
	msgs := 0
	for _, b := range s.pending {
		s.nextSeq++
		p := Packet{Seq: s.nextSeq, body: b}
		batch = append(batch, p)
		if s.retain {
			s.unacked = append(s.unacked, p)
			s.unackedBytes += len(b.json)
		}
		if b.typ == TypeMsg {
			msgs++
		}
	}
	clear(s.pending)
	// A queue that outgrew pendingOne left its first body there (append
	// copied it away): without this, a session that once had two
	// packets queued at once (its hello and a subscription's ok) would
	// keep its hello for good.
	s.pendingOne[0] = nil
	switch c := cap(s.pending); {
	case c > 64:
		s.pending = s.pendingOne[:0] // a burst's backing array is not kept for good
	case c == 2:
		// Outgrown by two packets at once, as at the start (the hello
		// and an ok): back to the inline slot, which the fan-out
		// prefetches, rather than an array of its own for good.
		s.pending = s.pendingOne[:0]
	default:
		s.pending = s.pending[:0]
	}
	s.pendingBytes = 0
	s.signalRoomLocked()
	if s.state == stateFlushing {
		s.state = s.state.next(evTaken) // the close packet is the last of this batch
	}
	s.wroteSince = true
	return batch, msgs
}

// wrote handles the end of a write (packets or heartbeat) to down, on the
// goroutine that wrote, with s.writing still set. It reports whether that
// goroutine should go on writing (writeRounds); otherwise the writer has
// stopped and the session has settled.
func (s *Session) wrote(down Transport, oneShot bool, err error) bool {
	if err == nil && !oneShot {
		return true
	}
	var fx effects
	s.mu.Lock()
	if s.down == down { // failed on the current downstream
		s.detachLocked()
	}
	if err != nil && !s.retain && s.down == nil {
		// The packets are lost and nothing would carry the next ones.
		s.abortLocked(disconnectGone, &fx)
	}
	if s.down != nil && (len(s.pending) > 0 || s.resend) {
		s.mu.Unlock() // a newer request attached meanwhile: write to it
		if err != nil {
			down.Close(disconnectGone)
		}
		return true
	}
	s.writing = false
	s.settleLocked(&fx)
	if fx.end && err == nil {
		fx.close[0], fx.reason = down, s.reason // the close packet went in this write
	}
	s.mu.Unlock()
	if err != nil {
		s.g.log.Debug("write failed", slog.String("sid", s.id), slog.String("transport", down.Name()), slog.Any("err", err))
		down.Close(disconnectGone)
	}
	s.apply(&fx)
	return false
}

// recordWrite counts a write of n bytes, made at now, carrying msgs
// messages of batch: in worker w's tally (metrics_tally.go), or at once
// when w is nil.
func (s *Session) recordWrite(w *writer, batch []Packet, msgs, n int, now time.Time) {
	tm := s.metrics
	if tm == nil {
		return
	}
	var t *deliveryTally
	if w != nil {
		t = w.tally(tm)
		t.deliveries += msgs
		t.bytes += n
	} else {
		tm.wrote(msgs, n)
	}
	if msgs > 0 {
		for _, p := range batch {
			if p.body.typ == TypeMsg {
				// A worker's clock is read every few writes
				// (writer.now): a body that arrived since its last
				// reading counts as written at once.
				seconds := max(now.Sub(p.body.arrived), 0).Seconds()
				if t != nil {
					t.latency.observe(seconds)
				} else {
					tm.latency.observe(seconds)
				}
			}
		}
	}
}

// heartbeat is called by the ticker for the session's heartbeat interval.
// It writes a heartbeat when nothing else was written since the previous
// tick, on a goroutine that is the session's writer for that time. On a
// one-shot downstream the heartbeat (an empty poll response) completes the
// request, so the downstream is detached like after any other write.
func (s *Session) heartbeat() {
	s.mu.Lock()
	if s.state != stateOpen || s.down == nil || s.writing {
		s.mu.Unlock()
		return
	}
	if s.wroteSince {
		s.wroteSince = false
		s.mu.Unlock()
		return
	}
	down, oneShot := s.down, s.oneShot
	if oneShot {
		s.detachLocked()
	}
	s.writing = true
	s.g.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.g.wg.Done()
		err := down.WriteHeartbeat()
		if s.wrote(down, oneShot, err) {
			s.writeRounds(nil, -1) // something was queued meanwhile
		}
	}()
}
