package transports

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// SockJS sessions ride on the gateway's session layer like every other
// transport: one queue, one expiry, one resend rule. A SockJS session over
// HTTP is a retaining gateway session (as for the native polling
// transports), opened with the endpoint's heartbeat and disconnect delay;
// each receiving request (xhr, xhr_streaming, eventsource, htmlfile,
// jsonp) attaches to it as an httpDown in a SockJS framing (sjsFraming).
// A SockJS websocket session is a gateway session carried by a wsConn in
// the SockJS codec (sockjs_websocket.go).
//
// The protocol has no acknowledgements, but the next receiving request of
// a session proves that the previous response arrived: a client makes one
// only after the previous one ended. So a response's packets stay
// retained until the next request comes, which acknowledges them before
// it attaches; a response lost on the way (or cut short) is written again.
//
// What the endpoint keeps of a session besides the gateway session
// (sjsEntry) is the protocol's own bookkeeping: whether the open frame
// went out, whether a receiving request holds the session (SockJS allows
// one; another gets c[2010,...]), what the last complete response
// carried, and after the session ended its close frame, which answers
// every request for the id until the disconnect delay passes.

// Frames every transport sends as they are.
var (
	sjsFrameOpen        = []byte("o")
	sjsFrameHeartbeat   = []byte("h")
	sjsFrameStillOpen   = appendSJSCloseFrame(nil, gateway.CodeAnotherReceiver, "Another connection still open")
	sjsFrameInterrupted = appendSJSCloseFrame(nil, gateway.CodeProtocolError, "Connection interrupted")
)

// sjsInterrupted ends a session whose receiving request broke off (the
// client went away or stopped reading), as SockJS servers do.
var sjsInterrupted = gateway.Disconnect{Code: gateway.CodeProtocolError, Reason: "Connection interrupted"}

// sjsEntry is what an endpoint keeps of one SockJS session over HTTP.
type sjsEntry struct {
	ep   *sockjsEndpoint
	id   string
	sess *gateway.Session
	link *bridgeLink // tcp mode: the connection to the target
	// onOpen runs once, when the open frame goes out: a tcp session's
	// bridge starts then (see open), not before.
	onOpen func()

	mu        sync.Mutex
	receiving bool   // a receiving request holds the session
	turn      uint64 // bumps at every claim
	opened    bool   // the open frame went out
	acked     uint64 // the last seq a complete response carried
	// closeFrame is set once the session ended: its close frame, which
	// answers every request for the id until gone.
	closeFrame []byte
	gone       time.Time
	// closeOut: the close frame went to a request (in the session's last
	// response, or answering one after the end). drained: the session
	// ended because the node shuts down, so the node waits for its close
	// frame to go out before it leaves the cluster (AwaitSockJSCloses).
	closeOut bool
	drained  bool
}

// sjsSessionMode is what a session of an endpoint carries; the framings
// and codecs need it.
type sjsSessionMode struct {
	sess   *gateway.Session
	pubsub bool        // packets are messages; else only data bodies are
	link   *bridgeLink // tcp: messages from the client go to the target
}

// session returns the entry of session id, opening the session when
// there is none (a closed one whose close frame still answers is
// returned as it is). The request must act for a live session's
// principal; callback marks the callback transports (sessionSpec).
func (ep *sockjsEndpoint) session(r *http.Request, id string, callback bool) (*sjsEntry, *refusal) {
	ep.mu.Lock()
	e := ep.entryLocked(id)
	if e != nil {
		ep.mu.Unlock()
		if e.closed() {
			return e, nil
		}
		if ref := ep.n.gate.join(r, e.sess, callback); ref != nil {
			return nil, ref
		}
		return e, nil
	}
	e = &sjsEntry{ep: ep, id: id}
	var link *bridgeLink
	if ep.tcp {
		link = newBridgeLink()
	}
	sess, ref := ep.n.gate.open(r, sessionSpec{
		transport:       "sockjs",
		retain:          true,
		heartbeat:       ep.cfg.HeartbeatDelay,
		disconnectDelay: ep.cfg.DisconnectDelay,
		onClose:         e.ended,
		callback:        callback,
	})
	if ref != nil {
		ep.mu.Unlock()
		return nil, ref
	}
	e.sess, e.link = sess, link
	ep.sessions[id] = e
	ep.sweepLocked()
	ep.mu.Unlock()
	if nodes := ep.n.opts.Nodes; nodes != nil && ep.n.fwd != nil {
		// The others learn the owner now, not when they first ask: while
		// the broker is down nobody can be asked, and a node that knew
		// no owner would open a second session under this id.
		nodes.Owned(ep.sjsKey(id))
	}
	if link != nil {
		// The target is connected once the open frame is on its way, so
		// that nothing it sends shares the session's first write: a
		// polling response carries one frame, and what the open frame's
		// response could not carry of a first write that also took the
		// close packet (a target that sends and hangs up at once) would
		// be lost with the session.
		e.onOpen = func() { ep.startBridge(sess, link) }
	}
	return e, nil
}

// lookup returns the entry of session id, live or closed, or nil; and nil
// when r does not act for a live session's principal (a sender learns
// nothing from a foreign session id).
func (ep *sockjsEndpoint) lookup(r *http.Request, id string, callback bool) *sjsEntry {
	ep.mu.Lock()
	e := ep.entryLocked(id)
	ep.mu.Unlock()
	if e != nil && !e.closed() && ep.n.gate.join(r, e.sess, callback) != nil {
		return nil
	}
	return e
}

// entryLocked returns the entry of id, forgetting a closed one whose
// time is up.
func (ep *sockjsEndpoint) entryLocked(id string) *sjsEntry {
	e := ep.sessions[id]
	if e != nil && e.expired(time.Now()) {
		delete(ep.sessions, id)
		return nil
	}
	return e
}

// sweepLocked forgets closed sessions whose time is up, at most once per
// disconnect delay (lookups forget them too, one at a time).
func (ep *sockjsEndpoint) sweepLocked() {
	now := time.Now()
	if now.Sub(ep.swept) < ep.cfg.DisconnectDelay {
		return
	}
	ep.swept = now
	for id, e := range ep.sessions {
		if e.expired(now) {
			delete(ep.sessions, id)
		}
	}
}

// ended runs when the gateway session has ended (OpenOptions.OnClose): the
// link to a target closes, and the id keeps answering with the session's
// close frame for a disconnect delay, unless the session expired (its id
// then names a new session at once, as in every SockJS server).
func (e *sjsEntry) ended() {
	if e.link != nil {
		e.link.close()
	}
	reason := e.sess.Reason()
	e.ep.mu.Lock()
	defer e.ep.mu.Unlock()
	if e.ep.sessions[e.id] != e {
		return
	}
	if reason == gateway.DisconnectExpired {
		delete(e.ep.sessions, e.id)
		return
	}
	frame := sjsFrameInterrupted
	if reason.Code != 0 {
		frame = appendSJSCloseFrame(nil, reason.Code, reason.Reason)
	}
	e.mu.Lock()
	e.closeFrame, e.gone = frame, time.Now()
	e.drained = reason == gateway.DisconnectShutdown
	e.mu.Unlock()
}

// markCloseOut records that the session's close frame went to a request.
func (e *sjsEntry) markCloseOut() {
	e.mu.Lock()
	was := e.closeOut
	e.closeOut = true
	e.mu.Unlock()
	if !was {
		select {
		case e.ep.n.sjsCloseOut <- struct{}{}:
		default:
		}
	}
}

// closeAwaited reports whether the node must wait for the session's close
// frame before it leaves: the drain ended the session, the frame has not
// gone out, and the id still answers with it; until when it answers.
func (e *sjsEntry) closeAwaited(now time.Time) (bool, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	until := e.gone.Add(e.ep.cfg.DisconnectDelay)
	return e.closeFrame != nil && e.drained && !e.closeOut && now.Before(until), until
}

// AwaitSockJSCloses waits until every SockJS session over HTTP that the
// drain ended has given its close frame to a request, or until ctx ends
// (or the ids stop answering with it). A polling response carries one
// frame, so a session closed with messages still to send ends before its
// close frame goes out: the frame answers the client's next request,
// which may come to this node from any other. So a node that shuts down
// calls this after Gateway.Shutdown and before it says goodbye to the
// cluster (gateway.Nodes.Close) and stops listening; otherwise the others
// find no owner for the id, one of them opens a new session under it, and
// the client, told "o" a second time, gives the session up without the
// close 3000 that says why.
func (s *Server) AwaitSockJSCloses(ctx context.Context) {
	for {
		now := time.Now()
		var next time.Time
		for _, ep := range s.sjsEps {
			ep.mu.Lock()
			for _, e := range ep.sessions {
				if wait, until := e.closeAwaited(now); wait && (next.IsZero() || until.Before(next)) {
					next = until
				}
			}
			ep.mu.Unlock()
		}
		if next.IsZero() {
			return
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-s.sjsCloseOut:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		t.Stop()
	}
}

// closed returns whether the session has ended.
func (e *sjsEntry) closed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closeFrame != nil
}

func (e *sjsEntry) expired(now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closeFrame != nil && now.Sub(e.gone) >= e.ep.cfg.DisconnectDelay
}

// claim makes the caller the session's receiving request for a turn;
// false when another one holds it. It returns the seq to acknowledge:
// what the previous complete response carried, which this request proves
// arrived.
func (e *sjsEntry) claim() (turn, ack uint64, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.receiving {
		return 0, 0, false
	}
	e.receiving = true
	e.turn++
	return e.turn, e.acked, true
}

// endTurn ends a receiving request's turn, if it still has it (only the
// first call does), and records that its response carried every packet up
// to seq carried (0: none to record).
func (e *sjsEntry) endTurn(turn, carried uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.receiving && e.turn == turn {
		e.receiving = false
	}
	e.acked = max(e.acked, carried)
}

// markOpened records that the open frame goes out now, and reports
// whether it had already.
func (e *sjsEntry) markOpened() bool {
	e.mu.Lock()
	was := e.opened
	e.opened = true
	e.mu.Unlock()
	if !was && e.onOpen != nil {
		e.onOpen()
	}
	return was
}

func (e *sjsEntry) mode() sjsSessionMode {
	return sjsSessionMode{sess: e.sess, pubsub: !e.ep.echo && !e.ep.tcp, link: e.link}
}

// receive handles one message from the client of a session of the
// endpoint: a client frame (pubsub), a message to send back (echo), or
// bytes for the target (tcp). It fails once the session is closing, or
// when ctx ends while it waits (for room in the queue, for the target).
func (ep *sockjsEndpoint) receive(ctx context.Context, sess *gateway.Session, link *bridgeLink, msg []byte) error {
	switch {
	case ep.echo:
		return sess.SendData(ctx, msg)
	case link != nil:
		b, ok := parseByteString(msg)
		if !ok {
			sess.Close(errNotByteString)
			return errNotByteString
		}
		if err := link.write(ctx, b); err != nil {
			// The same reason the bridge's pump ends with, whichever
			// closes first: a 4403 must not turn into a 3502, which
			// tells the client to come back, nor a target's orderly
			// close into one.
			d := link.afterWriteError(err, sess.Done())
			sess.Close(d)
			return d
		}
		return nil
	}
	sess.HandleFrame(ctx, msg)
	return nil
}

// errNotByteString is what a tcp session ends with when the client sends
// a character above U+00FF, which is no byte.
var errNotByteString = gateway.Disconnect{Code: gateway.DisconnectProtocol.Code, Reason: "message is not a byte string (a character above U+00FF)"}

// startBridge connects a tcp session to the endpoint's target and then
// copies what the target sends into the session, each read one message (a
// byte string), until either side ends: the native bridge's pump
// (bridgeLink.pumpAsync), so an idle session's target waits in the node's
// poller, with no goroutine. SendData waits while the session's queue is
// full, and the target is not read meanwhile: backpressure. Messages the
// client sends meanwhile wait for the connection (bridgeLink.write). The
// session ends with the bridge's reason (c[1000,"target closed the
// connection"], or c[3502,"target unreachable"], c[4403,"target address
// not allowed"], c[4003,"the token does not grant this target"]).
func (ep *sockjsEndpoint) startBridge(sess *gateway.Session, link *bridgeLink) {
	n := ep.n
	n.readers.Add(1)
	go func() {
		defer n.readers.Done()
		conn, err := n.bridge.dial(link.dialCtx, ep.cfg.Target, sess.Principal())
		if err != nil {
			link.failed(err)
		} else {
			link.connected(conn)
		}
		// The pump counts as one of the node's readers until it ends.
		n.readers.Add(1)
		link.pumpAsync(n, 0, bridgeChunk, func(p []byte) error {
			return sess.SendData(context.Background(), appendByteString(make([]byte, 0, len(p)+len(p)/4), p))
		}, func(d gateway.Disconnect) {
			sess.Close(d)
			n.readers.Done()
		})
	}()
}

// appendSJSFrames renders a batch of a session's packets as SockJS frames,
// each passed to emit (which appends it in the transport's framing): the
// open frame for the hello packet unless wasOpened says it went out
// already (and records that it goes now), messages (the packets
// themselves in pubsub mode, data bodies in every mode) in one a[...]
// frame, and c[code,"reason"] for the close packet. With single, one frame
// is rendered at most (a polling response carries one). It returns the seq
// of the last packet the frames account for: packets after it were not
// rendered and go out again with the next request. spans, when not nil,
// receives where the a[...] frame passed to emit holds each packet's body
// (quoted, as sjsBodySpan says), and is emptied after that frame.
func appendSJSFrames(b []byte, pkts []gateway.Packet, mode sjsSessionMode, wasOpened func() bool, single bool, spans *[]sjsBodySpan, emit func(b, frame []byte) []byte) ([]byte, uint64) {
	tmp := getBuffer(512)
	defer putBuffer(tmp)
	msgs := getBuffer(512)
	defer putBuffer(msgs)
	*msgs = append((*msgs)[:0], 'a', '[')
	n := 0
	add := func(p []byte) {
		if n > 0 {
			*msgs = append(*msgs, ',')
		}
		*msgs = appendSJSQuote(*msgs, p, false)
		n++
	}
	addPacket := func(p gateway.Packet) {
		*tmp = p.AppendJSON((*tmp)[:0])
		start := len(*msgs)
		add(*tmp)
		if spans != nil {
			// Quoting is per character, so the quoted packet is the
			// quoted prefix `{\"seq\":N,` (its two quotes escaped)
			// followed by the quoted body, then the closing quote.
			start += len(`,"`) + len(p.AppendPrefix((*tmp)[:0])) + 2
			if n == 1 {
				start-- // no comma before the first
			}
			*spans = append(*spans, sjsBodySpan{start: start, end: len(*msgs) - 1, body: p.Body()})
		}
	}
	emitMsgs := func(b []byte) []byte {
		b = emit(b, append(*msgs, ']'))
		if spans != nil {
			*spans = (*spans)[:0]
		}
		return b
	}
	var rendered uint64
loop:
	for _, p := range pkts {
		switch p.Type() {
		case gateway.TypeHello:
			if !wasOpened() {
				b = emit(b, sjsFrameOpen)
				if single {
					if !mode.pubsub {
						rendered = p.Seq // nothing else of it goes out
					}
					return b, rendered
				}
			}
			if mode.pubsub {
				addPacket(p)
			}
		case gateway.TypeClose:
			if single && n > 0 {
				break loop // the close frame goes with the next response
			}
			if mode.pubsub {
				addPacket(p)
			}
			if n > 0 {
				b = emitMsgs(b)
			}
			d := mode.sess.Reason()
			if d == sjsBrokenFraming {
				return b, p.Seq // the websocket's own close says it
			}
			return emit(b, appendSJSCloseFrame((*tmp)[:0], d.Code, d.Reason)), p.Seq
		case gateway.TypeData:
			add(p.Body().Data())
		default:
			if mode.pubsub {
				addPacket(p)
			}
		}
		rendered = p.Seq
	}
	if n > 0 {
		b = emitMsgs(b)
	}
	return b, rendered
}

// sjsBodySpan is where a SockJS frame holds a packet's body: frame[start:end]
// is the body's JSON quoted as a SockJS message string (without its
// quotes), the same bytes for every session that sends the body, which
// is what lets the websocket compress it once (sjsCodec).
type sjsBodySpan struct {
	start, end int
	body       *gateway.Body
}

// Sessions across nodes. A client chooses its SockJS session id, so the id
// names no node, and behind a round-robin balancer each request of a
// session may land on any node. The node a session's first request
// reaches opens it, after asking the cluster (gateway.Nodes.WhoOwns)
// whether another node owns that id already: every node answers, so the
// question costs one round trip through the broker, and only when there
// are other nodes. A request for a session that is not here goes to the
// node that owns it (forwarded like the native request-per-poll
// transports); every node hears each answer, so the next request for the
// same session, wherever it lands, is forwarded without asking. Two nodes
// asked about the same new id at once both say they are claiming it, and
// the one with the lower id opens it. A request forwarded here is served
// here.

// sjsKey is the cluster-wide key of session id of an endpoint.
func (ep *sockjsEndpoint) sjsKey(id string) string { return ep.cfg.Prefix + "/" + id }

// sjsOwns answers the cluster's question about key for the endpoints of
// this node.
func sjsOwns(eps []*sockjsEndpoint, key string) (owns, claiming bool) {
	for _, ep := range eps {
		id, ok := strings.CutPrefix(key, ep.cfg.Prefix+"/")
		if !ok || strings.Contains(id, "/") {
			continue
		}
		ep.mu.Lock()
		e := ep.entryLocked(id)
		claiming = ep.claims[id] > 0
		ep.mu.Unlock()
		// A closed session still answering with its close frame is
		// this node's too: its requests must come here for that frame.
		return e != nil, claiming
	}
	return false, false
}

// route sends r, a request for session id that this node does not have,
// to the node that has it, and reports whether it answered r. opening
// says r would open the session if nobody has it; until the caller
// releases the claim (the returned func), this node answers the
// cluster's questions about id as claiming it.
func (ep *sockjsEndpoint) route(w http.ResponseWriter, r *http.Request, id string, opening bool) (answered bool, release func()) {
	release = func() {}
	nodes := ep.n.opts.Nodes
	if ep.n.fwd == nil || nodes == nil || r.Header.Get(HeaderForwarded) != "" {
		return false, release
	}
	ep.mu.Lock()
	here := ep.entryLocked(id) != nil
	if !here && opening {
		ep.claims[id]++
		release = func() {
			ep.mu.Lock()
			if ep.claims[id]--; ep.claims[id] <= 0 {
				delete(ep.claims, id)
			}
			ep.mu.Unlock()
		}
	}
	ep.mu.Unlock()
	if here {
		return false, release
	}
	owner, url, claimant, err := nodes.WhoOwns(r.Context(), ep.sjsKey(id))
	switch {
	case err != nil:
		// The broker is down: nobody can be asked. The session is served
		// here (opened, or not found).
		return false, release
	case owner != "":
		return ep.n.forwardTo(w, r, owner, url), release
	case claimant != "":
		return ep.n.forwardTo(w, r, claimant, ""), release
	}
	return false, release
}
