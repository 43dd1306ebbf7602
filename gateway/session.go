package gateway

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Transport is a session's downstream: the connection or request that
// carries packets to the client. Package transports implements it once per
// transport family.
//
// WritePackets and WriteHeartbeat are never called concurrently with each
// other: they run on the session's one writer. Close may be called at any
// time, from any goroutine, more than once: while a write is blocked (it
// must then make that write return), concurrently with another Close, and
// even just before a write the writer had already decided on (that write
// should then fail at once). Close may also run inside the Session method
// the transport called (Attach closes the downstream it replaces; Close
// and Detach may end the session), so a transport must not hold a lock
// that its Close takes while it calls them. Name may be called at any time.
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
	// frame). It must be idempotent and safe for concurrent use (see
	// Transport).
	Close(d Disconnect)
}

// Backlogger is implemented by transports that can tell how many bytes
// they wrote that the kernel still holds, unsent or unacknowledged by the
// peer (Linux: SIOCOUTQ). The session counts them toward
// Config.QueueBytes, so a client that stopped reading meets its
// slow-consumer policy at the configured size rather than a socket buffer
// (several MiB) later. Backlog is called by the session's writer after
// each write, and under the session's lock when a delivery would
// overflow; it must be quick and must not call the session.
type Backlogger interface {
	Backlog() int
}

// Session is one client's session: its subscriptions, its outgoing queue and
// the numbering of its packets. It outlives the requests that carry it on
// the polling transports. All methods are safe for concurrent use.
//
// The fields every delivery and write touches (the lock, the state, the
// writer's bookkeeping, the gateway, the metrics and the shard) come
// first, in the object's first two cache lines, and what a write's
// prefetch reads in the third (a Session is in the 448-byte size class,
// whose objects start a line; TestSessionLayout checks all three): a
// fan-out visits thousands of sessions whose memory is no longer in the
// processor's caches, and each line a delivery touches is a wait on
// memory (prefetch.go). Spread from byte 120 to 272 they took four
// lines.
type Session struct {
	mu     sync.Mutex
	state  sessionState
	retain bool // keep written packets until acked (polling transports)

	// The downstream and the writer's bookkeeping (session_writer.go),
	// guarded by mu.
	oneShot      bool     // down completes after one write (long-poll)
	writing      bool     // a writer (a worker, a goroutine or a heartbeat) has the session
	resend       bool     // write unacked again first: a new request attached
	wroteSince   bool     // something was written since the last heartbeat tick
	released     bool     // end has run: done is closed once made (cold; here it fits the padding)
	shard        int      // the session's write worker (writers.go); set at Open
	g            *Gateway // set at Open
	metrics      *transportMetrics
	down         Transport // attached downstream, or nil
	pending      []*Body   // queued, not yet numbered
	pendingBytes int
	unackedBytes int
	kernelBytes  int // what the kernel still held after the last write measured (Backlogger)
	unmeasured   int // bytes written since the backlog was last measured; the writer's own
	nextSeq      uint64
	room         chan struct{} // closed when the queue shrinks (SendData, replays wait on it)
	// The first two cache lines end here.
	// downMemory is where the memory of down that a write touches lies
	// (HotMemory; zero without a downstream or without the method), for
	// the write worker to have the processor fetch it ahead of the write
	// (prefetchJobs). Stored under mu, loaded by the worker without
	// it, so atomic; an address gone stale is harmless, a prefetch being
	// only a hint.
	downMemory [3]atomic.Uintptr
	// pendingOne is pending's first backing array: a session that is
	// written as fast as it is given messages never holds more than one,
	// and here it lies in a line the fan-out fetches ahead (a backing
	// array of its own was one more wait on memory per delivery).
	pendingOne [1]*Body
	unacked    []Packet // written but not acknowledged (retain only)

	id        string
	transport string // transport family name, for metrics and logs
	remote    string // for logs
	opened    time.Time
	done      chan struct{} // made by the first Done: most sessions are never waited for
	onClose   func()
	// principal is who the session acts for (nil: anonymous). A refresh
	// replaces it, with s.mu held; readers load it without.
	principal atomic.Pointer[Principal]
	reauth    func(token string) (*Principal, error) // OpenOptions.Reauth
	// heartbeatEvery and disconnectDelay are the session's own intervals
	// (OpenOptions, else the gateway's).
	heartbeatEvery  time.Duration
	disconnectDelay time.Duration

	reason    Disconnect  // set when the state leaves stateOpen
	tokenEnd  *time.Timer // closes the session when its token expires
	expiry    *time.Timer // armed while there is neither downstream nor writer
	detachGen uint64      // bumps at every attach/detach, for the expiry timer

	// What the client asked for (session_frames.go, resume.go).
	subs       subList
	lastN      uint64 // last upstream frame number applied
	frames     Bucket // frames the client sent (Config.FrameRate)
	pubs       Bucket // publishes the client sent (Config.PublishRate)
	pubQ       []Frame
	publishing bool // the publisher goroutine is running

	// The fields above take 448 bytes, a size class whose objects start
	// a line (TestSessionLayout).
}

// sessionState is where a session is in its life. It changes only with
// s.mu held, only forward, and only as the table says (sessionEvent):
//
//	state      close      cut        taken      idle
//	open       flushing   closing    -          open
//	flushing   flushing   closing    closing    flushing
//	closing    closing    closing    -          ended
//	ended      ended      ended      ended      ended
//
// ("-": cannot happen, nothing changes.) Invariants:
//   - reason is set when the state leaves open and never changes after.
//   - Only an open session queues packets, applies frames, publishes,
//     replays and gets heartbeats. In flushing, the close packet is the
//     last packet queued.
//   - Attach succeeds in open and flushing (a retaining session's next
//     request collects the close packet), and fails after.
//   - closing never outlasts the writer: the transition that leaves a
//     closing session without a writer (idle) is made under the same hold
//     of s.mu as the check, so exactly one goroutine ends the session.
//   - ended: everything is released and Done is closed (right after, by
//     the goroutine that made the transition).
//   - The expiry timer is armed only in open and flushing, while the
//     session has neither a downstream nor a writer.
type sessionState uint8

const (
	stateOpen     sessionState = iota // serving the client
	stateFlushing                     // closing; the close packet waits for a write
	stateClosing                      // closing; nothing more will be written
	stateEnded                        // released; Done is closed
	numStates
)

var stateNames = [numStates]string{"open", "flushing", "closing", "ended"}

func (st sessionState) String() string { return stateNames[st] }

// sessionEvent is what moves a session along the table of sessionState.
type sessionEvent uint8

const (
	// evClose: Close with a reason that has a close packet (not
	// DisconnectGone) and a way to deliver it: a downstream, or a
	// retaining session's next request (not after DisconnectExpired).
	evClose sessionEvent = iota
	// evCut: stop writing now, without a close packet: Close otherwise,
	// abort (Shutdown gave up waiting), the disconnect delay passed
	// without a downstream, or a session that does not retain lost its
	// downstream.
	evCut
	// evTaken: the writer took the close packet into a write.
	evTaken
	// evIdle: no writer runs (it stopped, or none ran).
	evIdle
	numEvents
)

var eventNames = [numEvents]string{"close", "cut", "taken", "idle"}

func (ev sessionEvent) String() string { return eventNames[ev] }

// transitions is the table of sessionState, as data.
var transitions = [numStates][numEvents]sessionState{
	stateOpen:     {evClose: stateFlushing, evCut: stateClosing, evTaken: stateOpen, evIdle: stateOpen},
	stateFlushing: {evClose: stateFlushing, evCut: stateClosing, evTaken: stateClosing, evIdle: stateFlushing},
	stateClosing:  {evClose: stateClosing, evCut: stateClosing, evTaken: stateClosing, evIdle: stateEnded},
	stateEnded:    {evClose: stateEnded, evCut: stateEnded, evTaken: stateEnded, evIdle: stateEnded},
}

// next is the state after ev.
func (st sessionState) next(ev sessionEvent) sessionState { return transitions[st][ev] }

// effects are what a transition leaves to do once s.mu is released:
// closing a downstream may block until its write returns, and ending takes
// the hub's locks and runs the OnClose callback.
type effects struct {
	close    [2]Transport // downstreams to close with reason (nil: none)
	reason   Disconnect
	end      bool     // the session reached stateEnded
	patterns []string // with end: hub subscriptions to release
}

func (fx *effects) empty() bool { return !fx.end && fx.close[0] == nil && fx.close[1] == nil }

// apply does what a transition left to do; s.mu must not be held.
func (s *Session) apply(fx *effects) {
	if fx.empty() { // most transitions: a write round that ends with nothing left
		return
	}
	for i, d := range fx.close {
		if d != nil && (i == 0 || d != fx.close[0]) {
			d.Close(fx.reason)
		}
	}
	if fx.end {
		s.end(fx.patterns)
	}
}

// ID is the session id: the node id, a dot, and 128 random bits.
func (s *Session) ID() string { return s.id }

// Retain reports whether the session keeps written packets until they are
// acknowledged (OpenOptions.Retain): only such a session can be carried by
// a series of requests, so the polling transports attach to no other.
func (s *Session) Retain() bool { return s.retain }

// Done is closed when the session has ended and released everything.
func (s *Session) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		// Made when first asked for: a channel is 96 bytes, a quarter
		// of an idle session's own object, and few sessions are ever
		// waited for (a bridge's failed write, a node's drain).
		s.done = make(chan struct{})
		if s.released {
			close(s.done)
		}
	}
	return s.done
}

// Principal is who the session acts for; nil for an anonymous session.
// A refresh frame replaces it with the fresh token's.
func (s *Session) Principal() *Principal { return s.principal.Load() }

// Reason is why the session ended, or is ending: it is set when the
// session starts closing, and is the zero Disconnect until then.
func (s *Session) Reason() Disconnect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// Waiting reports whether t is the session's downstream and nothing
// waits to be written to it: a request attached now would be held until
// something arrives. A writer may still be running, finishing with the
// previous downstream (a client polls again as soon as it has the
// bytes), or have just taken what was pending for t. So the answer is a
// guess that may be stale at once; a transport uses it to choose how to
// hold a request, never for correctness.
func (s *Session) Waiting(t Transport) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down == t && len(s.pending) == 0 && !s.resend
}

// Attach makes t the session's downstream and starts writing what is
// pending (for a retaining session, unacknowledged packets first). A
// different downstream already attached is closed with DisconnectReplaced.
// oneShot transports (long-poll responses) are detached after their first
// write (a heartbeat counts). A retaining session that was closed while no
// downstream was attached still accepts one, to deliver its close packet.
// Attach fails with DisconnectNotFound once the session has nothing more
// to write (it is closing without a close packet waiting, or has ended).
func (s *Session) Attach(t Transport, oneShot bool) error {
	s.mu.Lock()
	if s.state >= stateClosing {
		s.mu.Unlock()
		return DisconnectNotFound
	}
	old := s.down
	s.down, s.oneShot = t, oneShot
	s.storeDownMemory(t)
	s.detachGen++
	s.disarmExpiryLocked()
	s.resend = s.retain && len(s.unacked) > 0
	if s.resend || len(s.pending) > 0 {
		s.kickLocked(nil)
	}
	s.mu.Unlock()
	if old != nil && old != t {
		old.Close(DisconnectReplaced)
	}
	return nil
}

// Detach removes t if it is still the downstream. A retaining session then
// waits for its next request for up to its disconnect delay (counted from
// the end of a write in progress); any other session ends.
func (s *Session) Detach(t Transport) {
	s.mu.Lock()
	if t == nil || s.down != t {
		s.mu.Unlock()
		return
	}
	s.detachLocked()
	var fx effects
	if s.retain {
		s.settleLocked(&fx)
	} else {
		s.abortLocked(disconnectGone, &fx)
	}
	s.mu.Unlock()
	s.apply(&fx)
}

// detachLocked forgets the downstream; s.mu must be held.
func (s *Session) detachLocked() {
	s.down = nil
	s.storeDownMemory(nil)
	s.detachGen++
}

// Close ends the session with reason d. The close packet (for any d but
// DisconnectGone) is written to the downstream or, by a retaining session
// without one, kept for its next request for at most its disconnect delay;
// then the downstream is closed with d and the subscriptions are released.
// A session with no way to deliver the close packet ends at once.
// DisconnectSlow first drops what is queued (the client resumes from its
// cursors). Close does not wait; use Done. Only the first call has an
// effect.
func (s *Session) Close(d Disconnect) {
	var fx effects
	s.mu.Lock()
	s.closeLocked(d, &fx)
	s.mu.Unlock()
	s.apply(&fx)
}

// closeLocked is Close with s.mu held; fx collects what is left to do.
func (s *Session) closeLocked(d Disconnect, fx *effects) {
	if s.state != stateOpen {
		return
	}
	if d == disconnectGone || (s.down == nil && (!s.retain || d == DisconnectExpired)) {
		s.abortLocked(d, fx) // nothing can carry a close packet
		return
	}
	s.reason = d
	s.signalRoomLocked() // SendData waiters fail now
	if d == DisconnectSlow {
		clear(s.pending)
		s.pending, s.pendingBytes = s.pending[:0], 0
	}
	s.pending = append(s.pending, closeBody(d))
	s.state = s.state.next(evClose)
	if s.down != nil {
		s.kickLocked(nil)
		return
	}
	// The next request collects the close packet; the wait for it starts
	// now, even if the session was already waiting.
	s.disarmExpiryLocked()
	s.settleLocked(fx)
}

// abort ends the session without ceremony: a close packet still queued is
// dropped and the downstream is closed with d, which makes a blocked write
// return; the session ends when no writer runs any more. Shutdown aborts
// the sessions it gave up waiting for; the expiry, and the loss of the
// downstream of a session that does not retain, abort too.
func (s *Session) abort(d Disconnect) {
	var fx effects
	s.mu.Lock()
	s.abortLocked(d, &fx)
	s.mu.Unlock()
	s.apply(&fx)
}

// abortLocked is abort with s.mu held (evCut); d becomes the reason if the
// session was open.
func (s *Session) abortLocked(d Disconnect, fx *effects) {
	if s.state == stateEnded {
		return
	}
	if s.state == stateOpen {
		s.reason = d
	}
	s.state = s.state.next(evCut)
	s.signalRoomLocked()
	if s.down != nil {
		fx.close[0], fx.reason = s.down, d
		s.detachLocked()
	}
	s.settleLocked(fx)
}

// settleLocked ends every transition that may leave the session without a
// writer (evIdle), with s.mu held: a closing session ends; an open or
// flushing one without a downstream waits for the next, for at most its
// disconnect delay. A running writer settles when it stops.
func (s *Session) settleLocked(fx *effects) {
	switch {
	case s.writing:
	case s.state == stateClosing:
		s.state = s.state.next(evIdle)
		if s.down != nil {
			fx.close[1], fx.reason = s.down, s.reason
			s.detachLocked()
		}
		fx.end, fx.patterns = true, s.endLocked()
	case s.state < stateClosing && s.down == nil && s.expiry == nil:
		gen := s.detachGen
		s.expiry = time.AfterFunc(s.disconnectDelay, func() { s.expire(gen) })
	}
}

// disarmExpiryLocked stops the expiry timer; s.mu must be held.
func (s *Session) disarmExpiryLocked() {
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
}

// expire runs when the expiry timer armed at detach generation gen fires.
// An Attach since then has stopped the timer, but may have come too late
// to stop this call.
func (s *Session) expire(gen uint64) {
	var fx effects
	s.mu.Lock()
	if s.detachGen == gen && s.down == nil && s.state < stateClosing {
		s.expiry = nil
		// An open session expires; a flushing one's close packet was not
		// collected in time.
		s.abortLocked(DisconnectExpired, &fx)
	}
	s.mu.Unlock()
	s.apply(&fx)
}

// endLocked is the half of end that runs with s.mu held, right after the
// session became ended: it lets go of everything but the hub
// subscriptions, whose patterns it returns for end.
func (s *Session) endLocked() []string {
	s.disarmExpiryLocked()
	if s.tokenEnd != nil {
		s.tokenEnd.Stop()
		s.tokenEnd = nil
	}
	patterns := make([]string, 0, len(s.subs))
	for _, st := range s.subs {
		if st.ready {
			patterns = append(patterns, st.pattern)
		}
		if st.cancel != nil {
			st.cancel()
		}
	}
	s.signalRoomLocked()
	s.subs = nil
	s.pending, s.unacked, s.pubQ = nil, nil, nil
	s.pendingBytes, s.unackedBytes = 0, 0
	return patterns
}

// end is the terminal step, run once by the goroutine that made the
// session ended: it releases the hub subscriptions and the session's place
// in the gateway, and closes Done.
func (s *Session) end(patterns []string) {
	for _, p := range patterns {
		s.g.hub.unsubscribe(s, p)
	}
	s.g.forget(s)
	reason := s.Reason()
	s.g.metrics.sessionClosed(s.metrics, s.transport, reason)
	s.logEvent("session closed",
		slog.Duration("duration", time.Since(s.opened)),
		slog.Int("code", reason.Code),
		slog.String("reason", reason.Reason))
	if s.onClose != nil {
		s.onClose()
	}
	s.mu.Lock()
	s.released = true
	if s.done != nil {
		close(s.done)
	}
	s.mu.Unlock()
}

// logEvent logs a session's open or close at Info level, when that level
// is enabled: one line each, which is what an operator follows a client
// by (sid, transport, address, subject; duration and code at the close).
func (s *Session) logEvent(msg string, attrs ...slog.Attr) {
	ctx := context.Background()
	if !s.g.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	subject := ""
	if p := s.Principal(); p != nil {
		subject = p.Subject
	}
	s.g.log.LogAttrs(ctx, slog.LevelInfo, msg, append([]slog.Attr{
		slog.String("sid", s.id),
		slog.String("transport", s.transport),
		slog.String("remote", s.remote),
		slog.String("subject", subject),
	}, attrs...)...)
}
