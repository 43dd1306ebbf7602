package transports

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// sjsState is a SockJS session's state.
type sjsState int

const (
	sjsOpen    sjsState = iota // messages flow
	sjsClosing                 // closed: every request gets the close frame until the session expires
	sjsClosed                  // gone: forgotten by the endpoint
)

// Frames every transport sends as they are.
var (
	sjsFrameOpen        = []byte("o")
	sjsFrameHeartbeat   = []byte("h")
	sjsFrameStillOpen   = appendSJSCloseFrame(nil, gateway.CodeAnotherReceiver, "Another connection still open")
	sjsFrameInterrupted = appendSJSCloseFrame(nil, gateway.CodeProtocolError, "Connection interrupted")
)

// errSJSClosed is returned to a sender once the session no longer takes
// messages.
var errSJSClosed = errors.New("transports: sockjs session closed")

// sjsOut writes the frames of one receiving request in its transport's
// framing and returns the bytes it wrote (what counts against the
// response limit). Only the request's own goroutine calls it.
type sjsOut interface {
	writeFrame(frame []byte) (int, error)
}

// sjsRecv is a receiving request attached to a session: the only writer of
// its response. The session pokes wake when it has something for it.
type sjsRecv struct {
	out     sjsOut
	oneShot bool // the response ends after one frame (polling)
	limit   int  // streaming: the response ends once it wrote this many bytes; 0: never
	wake    chan struct{}
}

func newSJSRecv(out sjsOut, oneShot bool, limit int) *sjsRecv {
	return &sjsRecv{out: out, oneShot: oneShot, limit: limit, wake: make(chan struct{}, 1)}
}

func (rv *sjsRecv) poke() {
	select {
	case rv.wake <- struct{}{}:
	default:
	}
}

// sjsSession is one SockJS session. Its messages wait in outbox (already
// quoted, comma-separated) until the attached request writes them; a
// session has at most one such request at a time, and none between polls.
// All methods are safe for concurrent use; writes to the client happen
// only on the attached request's goroutine (run).
type sjsSession struct {
	ep *sockjsEndpoint
	id string // "" for a websocket session, which the endpoint does not keep
	gw *gateway.Session
	// link is a tcp endpoint's connection to its target; nil otherwise.
	link *bridgeLink

	mu         sync.Mutex
	state      sjsState
	opened     bool     // the open frame went out
	recv       *sjsRecv // the attached request, or nil
	outbox     []byte
	room       chan struct{} // closed when the outbox drains or the session closes; nil when no sender waits
	closeFrame []byte
	expiry     *time.Timer
	expGen     uint64 // bumps whenever the expiry is re-armed or stopped
}

// sjsRefusal is why a session could not be opened: an HTTP status for
// transports that can answer with one before their response starts, and
// a close frame for the others.
type sjsRefusal struct {
	status int
	msg    string
	frame  []byte
}

var (
	sjsRefusedShutdown = &sjsRefusal{http.StatusServiceUnavailable, "server shutting down, reconnect to another node",
		appendSJSCloseFrame(nil, gateway.DisconnectShutdown.Code, gateway.DisconnectShutdown.Reason)}
	sjsRefusedTooMany = &sjsRefusal{http.StatusTooManyRequests, "too many sessions from this address",
		appendSJSCloseFrame(nil, gateway.DisconnectTooManySessions.Code, gateway.DisconnectTooManySessions.Reason)}
)

// sjsRefusalOf renders a refusal of the gate in SockJS terms.
func sjsRefusalOf(ref *refusal) *sjsRefusal {
	switch ref {
	case refusedShutdown:
		return sjsRefusedShutdown
	case refusedTooMany:
		return sjsRefusedTooMany
	}
	return &sjsRefusal{ref.status, ref.msg, appendSJSCloseFrame(nil, ref.code, ref.msg)}
}

// newSession opens the gateway session a SockJS session rides on. The
// caller registers the session (if it has an id) and then calls start.
func (ep *sockjsEndpoint) newSession(r *http.Request, id string) (*sjsSession, *sjsRefusal) {
	gs, ref := ep.srv.gate.open(r, sessionSpec{transport: "sockjs"})
	if ref != nil {
		return nil, sjsRefusalOf(ref)
	}
	s := &sjsSession{ep: ep, id: id, gw: gs}
	if ep.tcp {
		s.link = newBridgeLink()
	}
	return s, nil
}

// start attaches the session as its gateway session's downstream, for the
// whole life of both, and in tcp mode starts connecting to the target.
func (s *sjsSession) start() {
	if err := s.gw.Attach(sjsDown{s}, false); err != nil {
		s.close(gateway.DisconnectShutdown.Code, gateway.DisconnectShutdown.Reason)
		if s.link != nil {
			s.link.close()
		}
		return
	}
	if s.link != nil {
		srv := s.ep.srv
		srv.readers.Add(1)
		go func() {
			defer srv.readers.Done()
			s.runBridge()
		}()
	}
}

// runBridge connects to the target and then copies what it sends into the
// session until either side ends. Messages the client sends meanwhile
// wait for the connection (bridgeLink.write). The session ends with the
// bridge's reason (c[1000,"target closed the connection"], or
// c[3502,"target unreachable"], c[4403,"target address not allowed"],
// c[4003,"the token does not grant this target"]).
func (s *sjsSession) runBridge() {
	conn, err := s.ep.srv.bridge.dial(s.link.dialCtx, s.ep.cfg.Target, s.gw.Principal())
	if err != nil {
		s.link.failed(err)
	} else {
		s.link.connected(conn)
	}
	s.gw.Close(s.link.pump(0, s.sendBytes))
}

// sendBytes queues bytes from the target as one message, a byte string.
// It waits while the outbox is full: the target is not read meanwhile.
func (s *sjsSession) sendBytes(p []byte) error {
	text, quoted := getBuffer(2*len(p)), getBuffer(6*len(p)+2)
	defer putBuffer(text)
	defer putBuffer(quoted)
	*text = appendByteString(*text, p)
	*quoted = appendSJSQuote(*quoted, *text, false)
	msg := *quoted
	return s.enqueue(context.Background(), len(msg), func(dst []byte) []byte { return append(dst, msg...) })
}

// errNotByteString is what a tcp session ends with when the client sends
// a character above U+00FF, which is no byte.
var errNotByteString = gateway.Disconnect{Code: gateway.DisconnectProtocol.Code, Reason: "message is not a byte string (a character above U+00FF)"}

// session returns the session named id, opening one if there is none.
func (ep *sockjsEndpoint) session(r *http.Request, id string) (*sjsSession, *sjsRefusal) {
	ep.mu.Lock()
	if s := ep.sessions[id]; s != nil {
		ep.mu.Unlock()
		if ref := ep.srv.gate.join(r, s.gw); ref != nil {
			return nil, sjsRefusalOf(ref)
		}
		return s, nil
	}
	s, ref := ep.newSession(r, id)
	if ref != nil {
		ep.mu.Unlock()
		return nil, ref
	}
	ep.sessions[id] = s
	s.mu.Lock()
	s.armExpiryLocked() // a session nobody comes back for expires like any other
	s.mu.Unlock()
	ep.mu.Unlock()
	s.start()
	return s, nil
}

// lookup returns the live session named id, or nil, also when r does not
// act for the session's principal (a sender learns nothing from a
// foreign session id).
func (ep *sockjsEndpoint) lookup(r *http.Request, id string) *sjsSession {
	ep.mu.Lock()
	s := ep.sessions[id]
	ep.mu.Unlock()
	if s != nil && ep.srv.gate.join(r, s.gw) != nil {
		return nil
	}
	return s
}

func (ep *sockjsEndpoint) forget(s *sjsSession) {
	ep.mu.Lock()
	if ep.sessions[s.id] == s {
		delete(ep.sessions, s.id)
	}
	ep.mu.Unlock()
}

// receive handles one message from the client.
func (s *sjsSession) receive(ctx context.Context, msg []byte) error {
	if s.ep.echo {
		return s.enqueue(ctx, len(msg)+2, func(dst []byte) []byte { return appendSJSQuote(dst, msg, false) })
	}
	if s.link != nil {
		b, ok := parseByteString(msg)
		if !ok {
			s.gw.Close(errNotByteString)
			return errNotByteString
		}
		if err := s.link.write(ctx, b); err != nil {
			// The same reason runBridge ends with, whichever closes
			// first: a 4403 must not turn into a 3502, which tells the
			// client to come back, nor a target's orderly close into one.
			s.gw.Close(s.link.afterWriteError(err, s.gw.Done()))
			return err
		}
		return nil
	}
	s.gw.HandleFrame(ctx, msg)
	return nil
}

// enqueue adds messages to the outbox: fill appends them, quoted and
// comma-separated, and size estimates their length. A full outbox makes
// the sender wait until the client took what is there (the gateway's own
// queue and slow-consumer policy then apply to what comes next); an empty
// one takes anything. It fails once the session is closed or ctx ends.
func (s *sjsSession) enqueue(ctx context.Context, size int, fill func([]byte) []byte) error {
	limit := s.ep.srv.gw.Config().QueueBytes
	for {
		s.mu.Lock()
		if s.state != sjsOpen {
			s.mu.Unlock()
			return errSJSClosed
		}
		if len(s.outbox) == 0 || len(s.outbox)+size <= limit {
			if len(s.outbox) > 0 {
				s.outbox = append(s.outbox, ',')
			}
			s.outbox = fill(s.outbox)
			rv := s.recv
			s.mu.Unlock()
			if rv != nil {
				rv.poke()
			}
			return nil
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
	}
}

// releaseRoomLocked wakes the senders waiting for room.
func (s *sjsSession) releaseRoomLocked() {
	if s.room != nil {
		close(s.room)
		s.room = nil
	}
}

// takeLocked moves the outbox into an "a" frame appended to buf.
func (s *sjsSession) takeLocked(buf []byte) []byte {
	if len(s.outbox) == 0 {
		return buf
	}
	buf = append(buf, 'a', '[')
	buf = append(buf, s.outbox...)
	buf = append(buf, ']')
	if cap(s.outbox) > 4096 {
		s.outbox = nil // an idle session keeps no big buffer
	} else {
		s.outbox = s.outbox[:0]
	}
	s.releaseRoomLocked()
	return buf
}

// close closes the session with c[code,reason]: the attached request (or
// the next one) gets what is still queued and then the close frame, and
// every request after it gets the close frame until the session expires.
// It reports whether this call closed it. It does not touch the gateway
// session; callers that end the SockJS side close that themselves.
func (s *sjsSession) close(code int, reason string) bool {
	s.mu.Lock()
	if s.state != sjsOpen {
		s.mu.Unlock()
		return false
	}
	s.state = sjsClosing
	s.closeFrame = appendSJSCloseFrame(nil, code, reason)
	s.releaseRoomLocked()
	rv := s.recv
	s.mu.Unlock()
	if rv != nil {
		rv.poke()
	}
	return true
}

// interrupt closes the session because its request broke off (the client
// went away or stopped reading); SockJS says so with 1002. The gateway
// session ends too: nothing would carry its packets.
func (s *sjsSession) interrupt() {
	s.mu.Lock()
	if s.state == sjsOpen {
		s.state = sjsClosing
		s.closeFrame = sjsFrameInterrupted
		s.releaseRoomLocked()
	}
	s.mu.Unlock()
	s.gw.Close(gateway.DisconnectGone())
}

// end finishes a websocket session when its connection is gone.
func (s *sjsSession) end() {
	s.mu.Lock()
	s.state = sjsClosed
	s.outbox = nil
	s.releaseRoomLocked()
	s.mu.Unlock()
	s.gw.Close(gateway.DisconnectGone())
}

// armExpiryLocked (re)starts the disconnect delay of a session without a
// receiving request. Websocket sessions end with their connection instead.
func (s *sjsSession) armExpiryLocked() {
	if s.id == "" || s.recv != nil || s.state == sjsClosed {
		return
	}
	s.stopExpiryLocked()
	gen := s.expGen
	s.expiry = time.AfterFunc(s.ep.cfg.DisconnectDelay, func() { s.expire(gen) })
}

func (s *sjsSession) stopExpiryLocked() {
	s.expGen++
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
}

// expire ends a session that stayed without a receiving request for the
// disconnect delay: it is forgotten (the next request with its id opens a
// new one) and its gateway session ends.
func (s *sjsSession) expire(gen uint64) {
	s.mu.Lock()
	if gen != s.expGen || s.recv != nil || s.state == sjsClosed {
		s.mu.Unlock()
		return
	}
	s.state = sjsClosed
	s.expiry = nil
	s.outbox = nil
	s.releaseRoomLocked()
	s.mu.Unlock()
	s.ep.forget(s)
	s.gw.Close(gateway.DisconnectGone())
}

// run carries the session over one receiving request until the response
// ends: the open frame first if the session is new, then messages and
// heartbeats, the close frame when the session closes. ctx ends when the
// client goes away. It reports false, having written nothing, when the
// session expired meanwhile; the caller then opens a new one.
func (s *sjsSession) run(ctx context.Context, rv *sjsRecv) bool {
	s.mu.Lock()
	switch {
	case s.state == sjsClosed:
		s.mu.Unlock()
		return false
	case s.recv != nil:
		s.mu.Unlock()
		_, _ = rv.out.writeFrame(sjsFrameStillOpen)
		return true
	}
	s.stopExpiryLocked()
	s.recv = rv
	// The first response starts with the open frame even when the session
	// closed already (a tcp session whose target refused the connection or
	// sent its bytes and closed before this request got here): a SockJS
	// client takes nothing before "o", then come what was queued and the
	// close frame.
	sendOpen := !s.opened
	s.opened = true
	s.mu.Unlock()

	buf := getBuffer(512)
	defer putBuffer(buf)
	written := 0
	// wrote accounts for a frame written and reports whether the response
	// goes on.
	wrote := func(n int, err error) bool {
		if err != nil {
			s.detach(rv, true)
			return false
		}
		written += n
		if rv.oneShot || (rv.limit > 0 && written >= rv.limit) {
			s.detach(rv, false)
			return false
		}
		return true
	}
	if sendOpen && !wrote(rv.out.writeFrame(sjsFrameOpen)) {
		return true
	}
	delay := s.ep.cfg.HeartbeatDelay
	hb := time.NewTimer(delay)
	defer hb.Stop()
	for {
		s.mu.Lock()
		frame := s.takeLocked((*buf)[:0])
		closeFrame := s.closeFrame
		closing := s.state != sjsOpen
		s.mu.Unlock()
		*buf = frame
		switch {
		case len(frame) > 0:
			if !wrote(rv.out.writeFrame(frame)) {
				return true
			}
			hb.Reset(delay)
			continue
		case closing:
			_, _ = rv.out.writeFrame(closeFrame)
			s.detach(rv, false)
			return true
		}
		select {
		case <-rv.wake:
		case <-hb.C:
			if !wrote(rv.out.writeFrame(sjsFrameHeartbeat)) {
				return true
			}
			hb.Reset(delay)
		case <-ctx.Done():
			s.detach(rv, true)
			return true
		}
	}
}

// detach ends rv's turn. A request that broke off interrupts the session;
// one that ended normally leaves it waiting for the next request.
func (s *sjsSession) detach(rv *sjsRecv, broken bool) {
	s.mu.Lock()
	if s.recv == rv {
		s.recv = nil
	}
	s.armExpiryLocked()
	s.mu.Unlock()
	if broken {
		s.interrupt()
	}
}

// sjsDown is the gateway side of a SockJS session: the downstream of its
// gateway session for the whole life of both. In pubsub mode every packet
// becomes one SockJS message; in echo and tcp mode the gateway carries only
// the session's lifecycle and its packets (hello, close) are not sent. Its
// heartbeats are the SockJS "h" frames, sent by the receiving requests on
// the endpoint's own delay.
type sjsDown struct{ s *sjsSession }

var _ gateway.Transport = sjsDown{}

func (d sjsDown) Name() string { return "sockjs" }

// WritePackets quotes each packet's JSON as a SockJS message. It waits
// while the session's outbox is full, until the client takes it or the
// session closes (Close unblocks it).
func (d sjsDown) WritePackets(pkts []gateway.Packet) (int, error) {
	if d.s.ep.echo || d.s.link != nil {
		return 0, nil
	}
	size := 0
	for _, p := range pkts {
		size += p.Size() + 16
	}
	tmp := getBuffer(512)
	defer putBuffer(tmp)
	n := 0
	err := d.s.enqueue(context.Background(), size, func(dst []byte) []byte {
		start := len(dst)
		for i, p := range pkts {
			if i > 0 {
				dst = append(dst, ',')
			}
			*tmp = p.AppendJSON((*tmp)[:0])
			dst = appendSJSQuote(dst, *tmp, false)
		}
		n = len(dst) - start
		return dst
	})
	return n, err
}

// WriteHeartbeat does nothing: SockJS heartbeats are the receiving
// requests' own.
func (d sjsDown) WriteHeartbeat() error { return nil }

// Close closes the SockJS session with the gateway's reason, so the client
// sees the same code and reason as in the close packet (which pubsub mode
// already delivered as the last message).
func (d sjsDown) Close(r gateway.Disconnect) {
	if d.s.link != nil {
		d.s.link.close()
	}
	if r.Code == 0 {
		d.s.close(1002, "Connection interrupted")
		return
	}
	d.s.close(r.Code, r.Reason)
}
