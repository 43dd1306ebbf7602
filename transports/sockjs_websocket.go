package transports

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// The SockJS websocket transports: /{server}/{session}/websocket carries
// SockJS frames (one per WebSocket text message) and takes a JSON array of
// messages (or one JSON string) per message; /websocket is the raw
// variant without SockJS framing, for programs that are not
// sockjs-client. Both enforce RFC 6455 as the native /ws transport does.
//
// A SockJS websocket session lives as long as its connection: it is not
// kept by the endpoint, and two connections may use the same session id at
// once, as the protocol allows. The upgrade request's goroutine writes the
// frames (run); a small reader goroutine reads the connection.

// sjsWSConn is one websocket connection of a SockJS endpoint.
type sjsWSConn struct {
	srv  *Server
	conn net.Conn

	// wsem is the write lock (a channel, so that closing can give up
	// waiting for a stuck write): one frame writer at a time.
	wsem      chan struct{}
	closeSent bool          // guarded by wsem: nothing is written after a close frame
	deadline  writeDeadline // guarded by wsem
	// clock adds pings to writes while the client is quiet (see peerClock).
	clock peerClock
}

func (c *sjsWSConn) lock()   { c.wsem <- struct{}{} }
func (c *sjsWSConn) unlock() { <-c.wsem }

var _ sjsOut = (*sjsWSConn)(nil)

// sjsWSPreconditions checks an upgrade request as SockJS servers do before
// the handshake proper; on failure it has answered.
func (ep *sockjsEndpoint) sjsWSPreconditions(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet {
		sjsMethodNotAllowed(w, "GET")
		return false
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		sjsPlain(w, http.StatusBadRequest, `Can "Upgrade" only to "WebSocket".`)
		return false
	}
	if !sjsHeaderHasToken(r.Header.Values("Connection"), "upgrade") {
		sjsPlain(w, http.StatusBadRequest, `"Connection" must be "Upgrade".`)
		return false
	}
	if ep.srv.gate.origin(r) != nil {
		sjsPlain(w, http.StatusForbidden, "origin not allowed")
		return false
	}
	// hybi-07 and hybi-08 (Firefox 6 and 7) differ from RFC 6455 in the
	// version number only; the protocol asks servers to accept them.
	switch r.Header.Get("Sec-WebSocket-Version") {
	case "7", "8":
		r.Header.Set("Sec-WebSocket-Version", "13")
	}
	return true
}

// sjsHeaderHasToken reports whether a comma-separated header holds token
// (Firefox sends "Connection: keep-alive, Upgrade").
func sjsHeaderHasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// upgrade completes the handshake; on failure gobwas has answered.
func (ep *sockjsEndpoint) upgrade(w http.ResponseWriter, r *http.Request) (*sjsWSConn, bool) {
	conn, rw, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		return nil, false
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		conn = withBuffered(conn, rw.Reader)
	}
	c := &sjsWSConn{srv: ep.srv, conn: conn, wsem: make(chan struct{}, 1)}
	c.clock.start(ep.cfg.HeartbeatDelay)
	return c, true
}

// serveWebSocket serves /{server}/{session}/websocket.
func (ep *sockjsEndpoint) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if !ep.sjsWSPreconditions(w, r) {
		return
	}
	s, ref := ep.newSession(r, "")
	c, ok := ep.upgrade(w, r)
	if !ok {
		if s != nil {
			s.end()
		}
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if ref != nil {
		// Refused: say why in SockJS terms, then close.
		ep.srv.readers.Add(1)
		go func() {
			defer ep.srv.readers.Done()
			c.readMessages(0, lingerTimeout, func([]byte) bool { return false })
		}()
		_, _ = c.writeFrame(ref.frame)
		c.closeWith(1000, "Normal closure")
		return
	}
	s.start()
	idle := 2*ep.cfg.HeartbeatDelay + 10*time.Second
	ep.srv.readers.Add(1)
	go func() {
		defer ep.srv.readers.Done()
		defer cancel() // the writer below stops when the connection is gone
		c.readMessages(ep.maxBody(), idle, func(data []byte) bool {
			msgs, err := parseSJSWebSocketMessage(data)
			if err != nil {
				// Broken framing ends the session; what the peer
				// still sends is read and dropped while it closes.
				if s.close(1002, "Broken framing.") {
					s.gw.Close(gateway.DisconnectGone())
				}
				return true
			}
			for _, m := range msgs {
				if s.receive(ctx, m) != nil {
					break
				}
			}
			return true
		})
	}()
	s.run(ctx, newSJSRecv(c, false, 0))
	// The session closed (its close frame went out), the peer went away,
	// or a write failed: end the connection and the session.
	c.closeWith(1000, "Normal closure")
	s.end()
}

// serveRawWebSocket serves /websocket: WebSocket messages without SockJS
// framing. In pubsub mode that is exactly the native /ws transport (one
// client frame or packet per message), in tcp mode the native bridge
// (/tcp/{target}: the bytes in binary messages). In echo mode every
// message comes back as a text message; a gateway session gives the
// connection the node's lifecycle and its pings.
func (ep *sockjsEndpoint) serveRawWebSocket(w http.ResponseWriter, r *http.Request) {
	if !ep.sjsWSPreconditions(w, r) {
		return
	}
	switch {
	case ep.tcp:
		ep.srv.serveBridgeTo(w, r, ep.cfg.Target)
		return
	case !ep.echo:
		ep.srv.serveWebSocket(w, r)
		return
	}
	srv := ep.srv
	gs, ref := srv.gate.open(r, sessionSpec{transport: "sockjs"})
	if ref != nil {
		if ref.retry {
			w.Header().Set("Retry-After", "1")
		}
		sjsPlain(w, ref.status, ref.msg)
		return
	}
	c, ok := ep.upgrade(w, r)
	if !ok {
		gs.Close(gateway.DisconnectGone())
		return
	}
	if err := gs.Attach(sjsRawEcho{c}, false); err != nil {
		_ = c.conn.Close()
		return
	}
	hb := srv.gw.Config().Heartbeat
	srv.readers.Add(1)
	go func() {
		defer srv.readers.Done()
		c.readMessages(ep.maxBody(), 3*hb+5*time.Second, func(data []byte) bool {
			_, err := c.writeMessage(ws.OpText, data, false)
			return err == nil
		})
		gs.Close(gateway.DisconnectGone())
	}()
}

// sjsRawEcho is the gateway downstream of a raw echo connection: the
// gateway's packets are not sent (the connection carries only what the
// client sent), its heartbeats are pings and its close a close frame.
type sjsRawEcho struct{ c *sjsWSConn }

var _ gateway.Transport = sjsRawEcho{}

func (t sjsRawEcho) Name() string                               { return "sockjs" }
func (t sjsRawEcho) WritePackets([]gateway.Packet) (int, error) { return 0, nil }
func (t sjsRawEcho) WriteHeartbeat() error {
	_, err := t.c.writeMessage(ws.OpPing, nil, false)
	return err
}

func (t sjsRawEcho) Close(d gateway.Disconnect) {
	if d.Code == 0 {
		_ = t.c.conn.Close()
		return
	}
	t.c.closeWith(d.Code, d.Reason)
}

// writeFrame writes one SockJS frame as a text message. A heartbeat also
// carries a ping, and so does any frame while the client has been quiet
// for a heartbeat delay (a busy session sends no heartbeats): browsers
// answer it, which keeps the read deadline moving, so a peer that
// vanished is noticed and a live one is not cut off.
func (c *sjsWSConn) writeFrame(frame []byte) (int, error) {
	ping := len(frame) == 1 && frame[0] == 'h'
	if ping {
		c.clock.pinged()
	} else {
		ping = c.clock.pingDue()
	}
	return c.writeMessage(ws.OpText, frame, ping)
}

// writeMessage writes one unfragmented message (and a ping after it),
// within the write timeout.
func (c *sjsWSConn) writeMessage(op ws.OpCode, payload []byte, ping bool) (int, error) {
	buf := getBuffer(len(payload) + 16)
	b := appendFrameHeader(*buf, op, len(payload))
	b = append(b, payload...)
	if ping {
		b = appendFrameHeader(b, ws.OpPing, 0)
	}
	*buf = b
	defer putBuffer(buf)
	c.lock()
	defer c.unlock()
	if c.closeSent {
		return 0, net.ErrClosed
	}
	c.deadline.extend(c.conn, c.srv.opts.WriteTimeout)
	return c.conn.Write(b)
}

// closeWith sends a close frame (once), then half-closes the connection:
// the reader drains what the peer still sends until it closes or
// lingerTimeout passes, and closes the socket. If a write stays stuck for
// a second, the socket is closed instead, which unblocks it.
func (c *sjsWSConn) closeWith(code int, reason string) {
	select {
	case c.wsem <- struct{}{}:
	case <-time.After(time.Second):
		_ = c.conn.Close()
		return
	}
	if c.closeSent {
		c.unlock()
		return
	}
	c.closeSent = true
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	body := ws.NewCloseFrameBody(ws.StatusCode(code), truncateReason(reason))
	b := appendFrameHeader(make([]byte, 0, 4+len(body)), ws.OpClose, len(body))
	_, err := c.conn.Write(append(b, body...))
	c.unlock()
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		_ = c.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
		return
	}
	_ = c.conn.Close()
}

// readMessages reads the client's messages until the connection ends,
// enforcing what RFC 6455 asks of a server: masking, control frames,
// fragmentation, close codes, UTF-8 (binary messages are taken too, and
// must be UTF-8 as well: a SockJS message is text). onMessage gets each
// complete message and returns false to stop reading. idle bounds the wait
// for the next frame. It closes the connection when it returns.
func (c *sjsWSConn) readMessages(maxMsg int, idle time.Duration, onMessage func([]byte) bool) {
	defer c.conn.Close()
	r := &wsFrames{conn: c.conn, limit: maxMsg, tooLarge: gateway.CodeMessageTooBig, utf8Binary: true}
	for {
		if idle > 0 {
			c.lock()
			lingering := c.closeSent
			c.unlock()
			if !lingering { // closeWith set the linger deadline
				_ = c.conn.SetReadDeadline(time.Now().Add(idle))
			}
		}
		ev, bad, err := r.next()
		switch {
		case err != nil:
			return
		case bad != nil:
			c.fail(bad.code, bad.reason)
			return
		}
		c.clock.heard()
		switch ev.op {
		case ws.OpPing:
			if _, err := c.writeMessage(ws.OpPong, ev.data, false); err != nil {
				return
			}
		case ws.OpPong:
		case ws.OpClose:
			c.peerClosed(ev.data)
			return
		default:
			if !onMessage(ev.data) {
				return
			}
		}
	}
}

// fail closes the connection for a protocol violation and drains what the
// peer still sends until lingerTimeout, so that the close frame reaches it.
func (c *sjsWSConn) fail(code int, reason string) {
	c.closeWith(code, reason)
	_ = c.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.Copy(io.Discard, c.conn)
}

// peerClosed answers the peer's close frame with its code, as RFC 6455
// asks, after checking it is well-formed.
func (c *sjsWSConn) peerClosed(payload []byte) {
	if code, reason := checkClosePayload(payload); code != 0 {
		c.fail(code, reason)
		return
	}
	if len(payload) < 2 {
		c.closeWith(1000, "")
		return
	}
	code, _ := ws.ParseCloseFrameData(payload)
	c.closeWith(int(code), "")
}
