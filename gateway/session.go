package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Transport is a session's downstream: the connection or request that
// carries packets to the client. Package transports implements it once per
// transport family.
//
// The session guarantees that WritePackets, WriteHeartbeat and Close are
// never called concurrently with each other: one writer at a time, started
// only while there is something to write, so an idle session has no
// goroutine of its own in the gateway.
type Transport interface {
	// Name names the transport in metrics and logs ("websocket", "sse").
	Name() string
	// WritePackets writes pkts in order, in one write where it can, and
	// returns the bytes written. The packets' bodies are shared with other
	// sessions and must not be modified or retained after return.
	WritePackets(pkts []Packet) (int, error)
	// WriteHeartbeat writes the transport's keep-alive (a WebSocket ping, an
	// SSE comment, an empty poll response).
	WriteHeartbeat() error
	// Close ends the downstream. For DisconnectGone nothing is sent. For
	// DisconnectReplaced (a newer request took over) the session goes on
	// and no close packet was written: the transport ends this request its
	// own way. Otherwise the session's close packet was already written by
	// WritePackets and the transport adds its own close (a WebSocket close
	// frame). Close may be called more than once, and concurrently with a
	// blocked write (to unblock it): it must be idempotent and safe for
	// that.
	Close(d Disconnect)
}

// Session is one client's session: its subscriptions, its outgoing queue and
// the numbering of its packets. It outlives the requests that carry it on
// the polling transports. All methods are safe for concurrent use.
type Session struct {
	g         *Gateway
	id        string
	transport string // transport family name, for metrics
	retain    bool   // keep written packets until acked (polling transports)
	done      chan struct{}
	remote    string
	onClose   func()
	principal *Principal  // nil: anonymous
	tokenEnd  *time.Timer // closes the session when its token expires
	// heartbeatEvery and disconnectDelay are the session's own intervals
	// (OpenOptions, else the gateway's).
	heartbeatEvery  time.Duration
	disconnectDelay time.Duration

	mu           sync.Mutex
	down         Transport // attached downstream, or nil
	oneShot      bool      // down completes after one write (long-poll)
	detachGen    uint64    // bumps at every attach/detach, for the expiry timer
	expiry       *time.Timer
	pending      []*Body // queued, not yet numbered
	pendingBytes int
	unacked      []Packet // written but not acknowledged (retain only)
	unackedBytes int
	resend       bool // write unacked again first: a new request attached
	nextSeq      uint64
	writing      bool // a writer (or heartbeat) goroutine is running
	wroteSince   bool // something was written since the last heartbeat tick
	closing      bool
	closePending bool // the close packet is queued and not yet written
	slow         bool // a slow-consumer close is on its way
	finished     bool
	reason       Disconnect
	subs         map[string]*subState
	lastN        uint64 // last upstream frame number applied
	pubQ         []Frame
	publishing   bool
	room         chan struct{} // closed when the queue drains below the replay limit
}

type subState struct {
	ready bool // the hub holds the subscription (false while subscribing)
	// History-backed subscriptions only (see resume.go):
	history   bool
	replaying bool               // a replay runs; live messages are not queued
	lastSeq   uint64             // position of the last message queued
	liveSeen  uint64             // newest live position seen while replaying
	cancel    context.CancelFunc // stops the replay
}

// ID is the session id: the node id, a dot, and 128 random bits.
func (s *Session) ID() string { return s.id }

// Retain reports whether the session keeps written packets until they are
// acknowledged (OpenOptions.Retain): only such a session can be carried by
// a series of requests, so the polling transports attach to no other.
func (s *Session) Retain() bool { return s.retain }

// Done is closed when the session has ended and released everything.
func (s *Session) Done() <-chan struct{} { return s.done }

// Principal is who the session acts for; nil for an anonymous session.
func (s *Session) Principal() *Principal { return s.principal }

// Reason is why the session ended; valid after Done is closed.
func (s *Session) Reason() Disconnect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// Attach makes t the session's downstream and starts writing what is
// pending (for a retaining session, unacknowledged packets first). A
// different downstream already attached is closed with DisconnectReplaced.
// oneShot transports (long-poll responses) are detached after their first
// write (a heartbeat counts). A retaining session that was closed while no
// downstream was attached still accepts one, to deliver its close packet.
// Attach fails with DisconnectNotFound once the session has ended.
func (s *Session) Attach(t Transport, oneShot bool) error {
	s.mu.Lock()
	if s.finished || (s.closing && !s.closePending) {
		s.mu.Unlock()
		return DisconnectNotFound
	}
	old := s.down
	s.down, s.oneShot = t, oneShot
	s.detachGen++
	s.resend = s.retain && len(s.unacked) > 0
	if s.resend || len(s.pending) > 0 {
		s.kickLocked()
	}
	s.mu.Unlock()
	if old != nil && old != t {
		old.Close(DisconnectReplaced)
	}
	return nil
}

// Detach removes t if it is still the downstream. A retaining session then
// waits for the next request for up to the configured disconnect delay; any
// other session ends.
func (s *Session) Detach(t Transport) {
	s.mu.Lock()
	if t == nil || s.down != t {
		s.mu.Unlock()
		return
	}
	s.down = nil
	s.detachGen++
	gen := s.detachGen
	retain := s.retain
	s.mu.Unlock()
	if !retain {
		s.Close(disconnectGone)
		return
	}
	s.startExpiry(gen)
}

// Close ends the session with reason d: the close packet is written (unless
// the peer is gone), the downstream is closed, subscriptions are released.
// A retaining session without a downstream keeps its close packet for the
// next request, for at most the disconnect delay. Close does not wait; use
// Done. Calling it again has no effect.
func (s *Session) Close(d Disconnect) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing, s.reason = true, d
	s.signalRoomLocked() // SendData waiters fail now
	if d != disconnectGone && (s.down != nil || (s.retain && d != DisconnectExpired)) {
		if d == DisconnectSlow {
			clear(s.pending)
			s.pending, s.pendingBytes = s.pending[:0], 0 // the client resumes from its cursors
		}
		s.pending = append(s.pending, closeBody(d))
		s.closePending = true
		if s.down != nil {
			s.kickLocked() // the writer finishes the session
			s.mu.Unlock()
			return
		}
		gen, writing := s.detachGen, s.writing
		s.mu.Unlock()
		if !writing { // a running one-shot writer starts the expiry itself
			s.startExpiry(gen)
		}
		return
	}
	if s.writing {
		// The writer ends the session; closing its downstream unblocks it.
		down := s.down
		s.down = nil
		s.mu.Unlock()
		if down != nil {
			down.Close(d)
		}
		return
	}
	over, down, reason := s.endLocked()
	s.mu.Unlock()
	if over {
		s.end(reason, down)
	}
}

// endLocked decides, with s.mu held and no writer running, whether a
// closing session is over: its close packet was written, or there is no
// close packet, or it cannot be written any more. When it is, it detaches
// the downstream, which the caller passes to end.
func (s *Session) endLocked() (over bool, down Transport, reason Disconnect) {
	if !s.closing || s.finished {
		return false, nil, Disconnect{}
	}
	if s.closePending && s.down == nil && s.retain {
		return false, nil, Disconnect{} // the next Attach or the expiry ends it
	}
	down = s.down
	s.down = nil
	return true, down, s.reason
}

// end closes the given downstreams with reason and releases everything.
func (s *Session) end(reason Disconnect, downs ...Transport) {
	for i, d := range downs {
		if d != nil && (i == 0 || d != downs[0]) {
			d.Close(reason)
		}
	}
	s.finish()
}

// finish releases everything; it runs exactly once, after the last write.
func (s *Session) finish() {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	s.closing = true
	s.closePending = false
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	if s.tokenEnd != nil {
		s.tokenEnd.Stop()
		s.tokenEnd = nil
	}
	patterns := make([]string, 0, len(s.subs))
	for p, st := range s.subs {
		if st.ready {
			patterns = append(patterns, p)
		}
		if st.cancel != nil {
			st.cancel()
		}
	}
	s.signalRoomLocked()
	s.subs = nil
	s.pending, s.unacked, s.pubQ = nil, nil, nil
	s.pendingBytes, s.unackedBytes = 0, 0
	reason := s.reason
	s.mu.Unlock()
	for _, p := range patterns {
		s.g.hub.unsubscribe(s, p)
	}
	s.g.forget(s)
	s.g.metrics.sessionClosed(s.transport, reason)
	if s.onClose != nil {
		s.onClose()
	}
	close(s.done)
}

// kickLocked starts the writer if it is not running. s.mu must be held.
func (s *Session) kickLocked() {
	if s.writing || s.down == nil {
		return
	}
	s.writing = true
	s.g.wg.Add(1)
	go s.writeLoop()
}

// queuedLocked is what counts against the queue bound: packets queued and,
// for a retaining session, packets written but not yet acknowledged (a
// client that never acks must not grow the server's memory without limit).
func (s *Session) queuedLocked() int { return s.pendingBytes + s.unackedBytes }

// push queues a session-specific packet (hello, ok, err, gap). These are not
// subject to the slow-consumer policies but count against the queue bound.
func (s *Session) push(b *Body) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	if s.queuedLocked()+len(b.json) > s.g.cfg.QueueBytes {
		s.closeSlowLocked()
		return
	}
	s.pending = append(s.pending, b)
	s.pendingBytes += len(b.json)
	s.kickLocked()
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
		if s.closing {
			reason := s.reason
			s.mu.Unlock()
			return reason
		}
		queued := s.queuedLocked()
		if queued == 0 || queued+len(b.json) <= s.g.cfg.QueueBytes {
			break
		}
		if s.room == nil {
			s.room = make(chan struct{})
		}
		room := s.room
		s.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
	}
	s.pending = append(s.pending, b)
	s.pendingBytes += len(b.json)
	s.kickLocked()
	s.mu.Unlock()
	return nil
}

// deliver queues a shared message body; it runs on the hub's fan-out path
// and never blocks.
func (s *Session) deliver(b *Body, policy SlowPolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
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
				return
			}
		}
	}
	if s.queuedLocked()+len(b.json) > s.g.cfg.QueueBytes && policy == SlowDropOldest {
		s.dropOldestLocked(b.pattern, len(b.json))
	}
	if s.queuedLocked()+len(b.json) > s.g.cfg.QueueBytes {
		s.closeSlowLocked()
		return
	}
	s.pending = append(s.pending, b)
	s.pendingBytes += len(b.json)
	s.kickLocked()
}

// dropOldestLocked drops the oldest queued messages of pattern until need
// more bytes fit, and queues one gap packet for the pattern (room for it is
// made too, or the gap itself would overflow the queue).
func (s *Session) dropOldestLocked(pattern string, need int) {
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
}

// closeSlowLocked closes the session as a slow consumer from a goroutine of
// its own: the caller may be the hub's fan-out, which holds locks that
// closing (unsubscribing) needs. s.mu must be held, so that the goroutine is
// counted before Shutdown can wait for it; only the first call starts one.
func (s *Session) closeSlowLocked() {
	if s.slow {
		return
	}
	s.slow = true
	s.g.wg.Add(1)
	go func() {
		defer s.g.wg.Done()
		s.Close(DisconnectSlow)
	}()
}

// batchPool holds the packet slices writers assemble a write in: a writer
// exists only while a session has something to send, so its batch is
// borrowed for that long instead of being allocated at every start.
var batchPool = sync.Pool{New: func() any { b := make([]Packet, 0, 16); return &b }}

// maxPooledBatch keeps rare huge batches out of the pool.
const maxPooledBatch = 4096

// writeLoop is the session's writer goroutine.
func (s *Session) writeLoop() {
	defer s.g.wg.Done()
	s.writeRounds()
}

// writeRounds drains everything pending into one WritePackets call per
// round until nothing is left. s.writing is set on entry; on return it is
// cleared, or the session has been finished.
func (s *Session) writeRounds() {
	bp := batchPool.Get().(*[]Packet)
	defer func() {
		if cap(*bp) <= maxPooledBatch {
			batchPool.Put(bp)
		}
	}()
	batch := (*bp)[:0]
	defer func() { *bp = batch[:0] }()
	for {
		s.mu.Lock()
		down := s.down
		if down == nil || (len(s.pending) == 0 && !s.resend) {
			s.writing = false
			over, last, reason := s.endLocked()
			gen := s.detachGen
			s.mu.Unlock()
			switch {
			case over:
				s.end(reason, last)
			case down == nil:
				// Detached during the write: an expiry that fired
				// meanwhile saw the writer and did nothing.
				s.startExpiry(gen)
			}
			return
		}
		batch = batch[:0]
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
		if cap(s.pending) > 64 {
			s.pending = nil
		} else {
			s.pending = s.pending[:0]
		}
		s.pendingBytes = 0
		s.signalRoomLocked()
		s.closePending = false // if it was queued, it is in this batch
		s.wroteSince = true
		oneShot := s.oneShot
		if oneShot {
			s.down = nil // the request completes with this write
			s.detachGen++
		}
		s.mu.Unlock()

		n, err := down.WritePackets(batch)
		if err == nil {
			s.recordWrite(batch, msgs, n)
		}
		clear(batch)
		if !s.wrote(down, oneShot, err) {
			return
		}
	}
}

// wrote handles the end of a write (packets or heartbeat) to down, on the
// goroutine that wrote, with s.writing still set. It reports whether that
// goroutine should go on writing (writeRounds); otherwise the writer has
// stopped, and the session was finished if it is over.
func (s *Session) wrote(down Transport, oneShot bool, err error) bool {
	if err == nil && !oneShot {
		return true
	}
	s.mu.Lock()
	if s.down == down { // failed on the current downstream
		s.down = nil
		s.detachGen++
	}
	if err != nil && !s.retain && s.down == nil && !s.closing {
		// The packets are lost and nothing would carry the next ones.
		s.closing, s.reason = true, disconnectGone
	}
	if s.down != nil && (len(s.pending) > 0 || s.resend) {
		s.mu.Unlock() // a newer request attached meanwhile: write to it
		if err != nil {
			down.Close(disconnectGone)
		}
		return true
	}
	s.writing = false
	over, last, reason := s.endLocked()
	gen, detached := s.detachGen, s.down == nil
	s.mu.Unlock()
	if err != nil {
		s.g.log.Debug("write failed", slog.String("sid", s.id), slog.String("transport", down.Name()), slog.Any("err", err))
		down.Close(disconnectGone)
	}
	switch {
	case over && err == nil:
		s.end(reason, last, down)
	case over:
		s.end(reason, last)
	case detached:
		s.startExpiry(gen)
	}
	return false
}

func (s *Session) recordWrite(batch []Packet, msgs, n int) {
	m := s.g.metrics
	if m == nil {
		return
	}
	m.wrote(msgs, n)
	if msgs > 0 {
		now := time.Now()
		for _, p := range batch {
			if p.body.typ == TypeMsg {
				m.observeLatency(now.Sub(p.body.arrived).Seconds())
			}
		}
	}
}

// startExpiry ends a session that stays without a downstream for the
// disconnect delay. gen is the detach generation it was called for: any
// attach or detach since cancels it. A session has at most one expiry timer.
func (s *Session) startExpiry(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.detachGen != gen || s.down != nil {
		return
	}
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.expiry = time.AfterFunc(s.disconnectDelay, func() { s.expire(gen) })
}

// expire runs when the expiry timer for detach generation gen fires. A
// running writer re-arms the expiry when it stops, so it is left alone.
func (s *Session) expire(gen uint64) {
	s.mu.Lock()
	if s.finished || s.detachGen != gen || s.down != nil || s.writing {
		s.mu.Unlock()
		return
	}
	if !s.closing {
		s.mu.Unlock()
		s.Close(DisconnectExpired)
		return
	}
	s.closePending = false // nobody came for the close packet
	over, last, reason := s.endLocked()
	s.mu.Unlock()
	if over {
		s.end(reason, last)
	}
}

// heartbeat is called by the gateway's shared ticker. It writes a
// heartbeat when nothing else was written since the previous tick. On a
// one-shot downstream the heartbeat (an empty poll response) completes the
// request, so the downstream is detached like after any other write.
func (s *Session) heartbeat() {
	s.mu.Lock()
	if s.closing || s.down == nil || s.writing {
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
		s.down = nil
		s.detachGen++
	}
	s.writing = true
	s.g.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.g.wg.Done()
		err := down.WriteHeartbeat()
		if s.wrote(down, oneShot, err) {
			s.writeRounds() // something was queued meanwhile
		}
	}()
}

// HandleFrame applies one client frame. Errors are answered with an err
// packet; a frame that cannot be decoded at all gets an err packet with code
// 400 too, so a client bug never ends its session.
func (s *Session) HandleFrame(ctx context.Context, data []byte) {
	if len(data) > s.g.cfg.MaxFrameBytes {
		s.Close(DisconnectTooLarge)
		return
	}
	f, err := DecodeFrame(data)
	if err != nil {
		s.Reject(f, err)
		return
	}
	s.Apply(ctx, f)
}

// Reject answers a frame that could not be decoded with an err packet.
func (s *Session) Reject(f Frame, err error) {
	var fe *FrameError
	if errors.As(err, &fe) {
		s.push(errBody(fe.ID, "", 400, fe.Error()))
		return
	}
	s.push(errBody(f.ID, "", 400, err.Error()))
}

// Apply applies one decoded frame.
func (s *Session) Apply(ctx context.Context, f Frame) {
	if f.N != 0 {
		s.mu.Lock()
		switch {
		case f.N <= s.lastN:
			s.mu.Unlock()
			return // a retried POST: applied already
		case f.N != s.lastN+1:
			want := s.lastN + 1
			s.mu.Unlock()
			s.push(errBody(f.ID, f.Ch, 409, fmt.Sprintf("upstream frame n=%d out of order, expected %d", f.N, want)))
			return
		}
		s.lastN = f.N
		s.mu.Unlock()
	}
	switch f.Op {
	case OpSub:
		s.subscribe(ctx, f.ID, f.Ch, f.Cursor)
	case OpUnsub:
		s.unsubscribe(f.ID, f.Ch)
	case OpPub:
		s.enqueuePublish(f)
	case OpAck:
		s.ack(f.Seq)
	case OpPing:
		s.push(okBody(f.ID, ""))
	}
}

// Subscribe subscribes the session to pattern as if the client had sent a
// sub frame without id (transports use it for subscriptions named in the
// URL). The answer is an ok or err packet carrying the channel.
func (s *Session) Subscribe(ctx context.Context, pattern, cursor string) {
	s.subscribe(ctx, 0, pattern, cursor)
}

func (s *Session) subscribe(ctx context.Context, id int64, pattern, cursor string) {
	if err := ValidatePattern(pattern); err != nil {
		s.push(errBody(id, pattern, 422, err.Error()))
		return
	}
	ns := s.g.cfg.Rules.ForSubscribe(pattern, s.principal)
	if ns == nil {
		s.push(errBody(id, pattern, 403, fmt.Sprintf("permission denied: subscribe to %q", pattern)))
		return
	}
	after, err := parseCursor(cursor)
	if err != nil {
		s.push(errBody(id, pattern, 400, err.Error()))
		return
	}
	history := s.g.hasHistory(pattern)
	s.mu.Lock()
	switch {
	case s.closing:
		s.mu.Unlock()
		return
	case s.subs[pattern] != nil:
		s.mu.Unlock()
		s.push(errBody(id, pattern, 409, fmt.Sprintf("already subscribed to %q", pattern)))
		return
	case len(s.subs) >= s.g.cfg.MaxSubscriptions:
		s.mu.Unlock()
		s.push(errBody(id, pattern, 429, fmt.Sprintf("at most %d subscriptions per session", s.g.cfg.MaxSubscriptions)))
		return
	}
	if s.subs == nil {
		s.subs = make(map[string]*subState)
	}
	st := &subState{history: history, lastSeq: after, replaying: history && cursor != ""}
	s.subs[pattern] = st
	s.mu.Unlock()

	err = s.g.hub.subscribe(ctx, s, pattern, ns.Slow, func() {
		s.push(subOKBody(id, pattern, history))
		if cursor != "" && !history {
			s.push(GapBody(pattern, "channel has no history: recovery is not possible", ""))
		}
	})
	s.mu.Lock()
	if err != nil {
		delete(s.subs, pattern)
		s.mu.Unlock()
		s.push(errBody(id, pattern, 503, "subscribe failed: "+err.Error()))
		return
	}
	st.ready = true
	gone := s.finished
	if !gone && st.replaying {
		s.startReplayLocked(pattern, st)
	}
	s.mu.Unlock()
	if gone {
		s.g.hub.unsubscribe(s, pattern) // the session ended while subscribing
	}
}

func (s *Session) unsubscribe(id int64, pattern string) {
	s.mu.Lock()
	st := s.subs[pattern]
	if st == nil || !st.ready {
		s.mu.Unlock()
		s.push(errBody(id, pattern, 404, fmt.Sprintf("not subscribed to %q", pattern)))
		return
	}
	delete(s.subs, pattern)
	if st.cancel != nil {
		st.cancel()
	}
	s.mu.Unlock()
	s.g.hub.unsubscribe(s, pattern)
	s.push(okBody(id, pattern))
}

// ack drops retained packets up to seq.
func (s *Session) ack(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for i < len(s.unacked) && s.unacked[i].Seq <= seq {
		s.unackedBytes -= len(s.unacked[i].body.json)
		i++
	}
	if i > 0 {
		clear(s.unacked[:i])
		s.unacked = s.unacked[i:]
		if len(s.unacked) == 0 {
			s.unacked = nil
		}
		s.signalRoomLocked()
	}
}

// maxPendingPublishes bounds the publishes a session may have waiting for
// broker confirmation; more are refused with 429.
const maxPendingPublishes = 64

// enqueuePublish queues a client publish. One publisher goroutine per
// session runs while publishes are pending, so a session's publishes reach
// the broker in the order it sent them without blocking its read loop.
func (s *Session) enqueuePublish(f Frame) {
	if err := ValidateChannel(f.Ch); err != nil {
		s.push(errBody(f.ID, f.Ch, 422, err.Error()))
		return
	}
	if !s.g.cfg.Rules.MayPublish(f.Ch, s.principal) || f.Ch == NodesChannel {
		s.push(errBody(f.ID, f.Ch, 403, fmt.Sprintf("permission denied: publish to %q", f.Ch)))
		return
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	if len(s.pubQ) >= maxPendingPublishes {
		s.mu.Unlock()
		s.push(errBody(f.ID, f.Ch, 429, fmt.Sprintf("at most %d publishes may await confirmation", maxPendingPublishes)))
		return
	}
	s.pubQ = append(s.pubQ, f)
	if !s.publishing {
		s.publishing = true
		s.g.wg.Add(1)
		go s.publishLoop()
	}
	s.mu.Unlock()
}

func (s *Session) publishLoop() {
	defer s.g.wg.Done()
	for {
		s.mu.Lock()
		if len(s.pubQ) == 0 || s.closing {
			s.pubQ = nil
			s.publishing = false
			s.mu.Unlock()
			return
		}
		f := s.pubQ[0]
		s.pubQ[0] = Frame{}
		s.pubQ = s.pubQ[1:]
		s.mu.Unlock()

		data, contentType, err := decodePayload(&f)
		if err != nil {
			s.push(errBody(f.ID, f.Ch, 400, "bad payload: "+err.Error()))
			continue
		}
		if len(data) > s.g.cfg.MaxFrameBytes {
			s.push(errBody(f.ID, f.Ch, 413, fmt.Sprintf("payload of %d bytes exceeds %d", len(data), s.g.cfg.MaxFrameBytes)))
			continue
		}
		err = s.g.publish(s.g.ctx, "client", f.Ch, data, contentType)
		if err != nil {
			s.push(errBody(f.ID, f.Ch, 503, "publish failed: "+err.Error()))
			continue
		}
		s.push(okBody(f.ID, f.Ch))
	}
}

// abort ends the session at once: the downstream is closed without a close
// packet (it had its chance) so a blocked writer returns and finishes the
// session.
func (s *Session) abort() {
	s.mu.Lock()
	if !s.closing {
		s.closing, s.reason = true, disconnectGone
	}
	s.signalRoomLocked()
	s.closePending = false
	down := s.down
	s.down = nil
	var over bool
	if !s.writing {
		over, _, _ = s.endLocked()
	}
	s.mu.Unlock()
	if down != nil {
		down.Close(disconnectGone)
	}
	if over {
		s.finish()
	}
}
