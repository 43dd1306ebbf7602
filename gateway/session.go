package gateway

import (
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
