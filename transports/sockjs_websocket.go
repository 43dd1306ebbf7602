package transports

import (
	"bytes"
	"context"
	"net/http"
	"strings"

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

// sjsWSPreconditions checks an upgrade request as sockjs-node 0.3.24 does
// before the handshake proper (lib/trans-websocket.js): a request that is
// no websocket upgrade (faye-websocket's isWebSocket: GET, a Connection
// header with the token upgrade, Upgrade: websocket) gets 400 "Not a valid
// websocket request", and the raw websocket takes RFC 6455 only
// (Sec-WebSocket-Version 8 or 13). On failure it has answered.
func (ep *sockjsEndpoint) sjsWSPreconditions(w http.ResponseWriter, r *http.Request, raw bool) bool {
	if r.Method != http.MethodGet {
		sjsMethodNotAllowed(w, "GET")
		return false
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || !sjsHeaderHasToken(r.Header.Values("Connection"), "upgrade") {
		sjsPlain(w, http.StatusBadRequest, "Not a valid websocket request")
		return false
	}
	version := r.Header.Get("Sec-WebSocket-Version")
	if raw && version != "8" && version != "13" {
		sjsPlain(w, http.StatusBadRequest, "Only supported WebSocket protocol is RFC 6455.")
		return false
	}
	if ref := ep.n.gate.origin(r); ref != nil {
		sjsRefuse(w, ref)
		return false
	}
	// hybi-07 and hybi-08 (Firefox 6 and 7) differ from RFC 6455 in the
	// version number only; the protocol asks servers to accept them on
	// the session websocket (sockjs-protocol 0.3.3's test_headersSanity).
	switch version {
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

// wsLimits are what the endpoint's websockets accept: messages up to a
// send body's size, UTF-8 in binary messages too (a SockJS message is
// text whatever frame carries it).
func (ep *sockjsEndpoint) wsLimits() wsLimits {
	return wsLimits{maxMessage: ep.maxBody(), tooLarge: gateway.CodeMessageTooBig, utf8Binary: true}
}

// serveWebSocket serves /{server}/{session}/websocket. Its session lives
// as long as its connection: it is not kept by the endpoint, and two
// connections may use the same session id at once, as the protocol
// allows.
func (ep *sockjsEndpoint) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if !ep.sjsWSPreconditions(w, r, false) {
		return
	}
	var link *bridgeLink
	var onClose func()
	if ep.tcp {
		link = newBridgeLink()
		onClose = link.close
	}
	sess, ref := ep.n.gate.open(r, sessionSpec{transport: "sockjs", heartbeat: ep.cfg.HeartbeatDelay, onClose: onClose})
	lim := ep.wsLimits()
	lim.deflate = !ep.echo && !ep.tcp // packets: compressed bodies are shared
	c, _ := ep.n.upgradeWS(w, r, ep.cfg.HeartbeatDelay, lim)
	if c == nil {
		if sess != nil {
			sess.Close(gateway.DisconnectGone())
		}
		return
	}
	if ref != nil {
		// Refused: say why in SockJS terms, then close. The upgrade's
		// headers are gone: the advice is in the reason.
		c.refuse(appendMessage(nil, ws.OpText, appendSJSCloseFrame(nil, ref.code, ref.sjsReason(http.Header{}))),
			gateway.Disconnect{Code: gateway.CodeNormal, Reason: "Normal closure"})
		return
	}
	codec := &sjsCodec{ep: ep, mode: sjsSessionMode{sess: sess, pubsub: !ep.echo && !ep.tcp, link: link}}
	attachWS(c, sess, codec)
	ep.closeNew(sess) // a close endpoint: o, c[code,"reason"], then close 1000
	if link != nil {
		ep.startBridge(sess, link)
	}
}

// refuse ends a connection whose session was refused: it writes msg (the
// refusal in the transport's framing), then closes with d, reading
// nothing but the client's close.
func (c *wsConn) refuse(msg []byte, d gateway.Disconnect) {
	c.owner = wsRefused{}
	c.watch(false)
	c.start()
	_, _ = c.write(msg)
	c.close(d)
}

// wsRefused owns a connection that was refused: it reads nothing but the
// client's close.
type wsRefused struct{}

func (wsRefused) message([]byte, bool) bool { return false }
func (wsRefused) ended(gateway.Disconnect)  {}

// sjsBrokenFraming ends a websocket session whose client sent a message
// that is not JSON. sockjs-node 0.3.24 (lib/trans-websocket.js,
// WebSocketReceiver.didMessage: didClose(3000, 'Broken framing.')) sends
// no c[...] frame for it and closes the websocket with 3000 and this
// reason, and so does cometgate: appendSJSFrames renders no frame for it,
// closeFrame passes it on. It is SockJS's code, not a "reconnect" of
// cometgate's close-code table: no client reads it as a close packet.
var sjsBrokenFraming = gateway.Disconnect{Code: 3000, Reason: "Broken framing."}

// sjsCodec is the SockJS framing on a websocket: each SockJS frame one
// text message, compressed when the connection negotiated
// permessage-deflate and it holds a body large enough.
type sjsCodec struct {
	ep     *sockjsEndpoint
	mode   sjsSessionMode
	opened bool // the open frame went out; only the session's writer touches it
	// spans are where the a[...] frame being built holds bodies; only
	// the session's writer touches them.
	spans []sjsBodySpan
}

var _ wsCodec = (*sjsCodec)(nil)

func (*sjsCodec) name() string { return "sockjs" }

func (c *sjsCodec) appendPackets(b []byte, pkts []gateway.Packet, z *wsDeflate) []byte {
	if z == nil {
		b, _ = appendSJSFrames(b, pkts, c.mode, c.wasOpened, false, nil, func(b, frame []byte) []byte {
			return appendMessage(b, ws.OpText, frame)
		})
		return b
	}
	b, _ = appendSJSFrames(b, pkts, c.mode, c.wasOpened, false, &c.spans, func(b, frame []byte) []byte {
		return appendSJSDeflated(b, frame, c.spans, z)
	})
	if cap(c.spans) > 64 {
		c.spans = nil // keep no large slice on an idle session
	}
	return b
}

// appendSJSDeflated appends a SockJS frame as one text message: the
// bodies it holds (spans) that are large enough compressed once for
// every session (gateway.Body.Derived), what is around them as stored
// blocks (deflateAsm); uncompressed when no body is worth it.
func appendSJSDeflated(b, frame []byte, spans []sjsBodySpan, z *wsDeflate) []byte {
	tmp := getBuffer(len(frame)/2 + 64)
	defer putBuffer(tmp)
	var a deflateAsm
	pos := 0
	for _, s := range spans {
		// The window bound is on what was compressed: the quoted body.
		if !z.compresses(s.end - s.start) {
			continue
		}
		zb := s.body.Derived(derivedDeflateSJS, deflateSJSBody)
		if zb == nil {
			continue
		}
		*tmp = a.literal(*tmp, frame[pos:s.start])
		*tmp = a.body(*tmp, zb)
		pos = s.end
	}
	if pos == 0 {
		return appendMessage(b, ws.OpText, frame)
	}
	*tmp = a.end(a.literal(*tmp, frame[pos:]))
	return append(appendFrameHeaderRSV1(b, ws.OpText, len(*tmp)), *tmp...)
}

// deflateSJSBody compresses a body's JSON quoted as a SockJS message
// string, without its quotes: what appendSJSFrames writes for it.
func deflateSJSBody(json []byte) []byte {
	q := appendSJSQuote(nil, json, false)
	return deflateBody(q[1 : len(q)-1])
}

func (c *sjsCodec) wasOpened() bool {
	was := c.opened
	c.opened = true
	return was
}

// heartbeat is a ping alone: sockjs-node 0.3.24's websocket receiver
// pings an RFC 6455 client instead of sending "h" frames
// (WebSocketReceiver.heartbeat; "h" only where the protocol version has no
// ping).
func (*sjsCodec) heartbeat() []byte { return nil }

// closeFrame: the session's own close went out as a c[...] frame; the
// websocket closes normally after it, as sockjs-node's didClose() does
// (1000 "Normal closure"). Broken framing closes with its own code and no
// c[...] frame, as sockjs-node's. A violation of RFC 6455 closes with its
// code, as on every websocket.
func (*sjsCodec) closeFrame(d gateway.Disconnect) gateway.Disconnect {
	switch {
	case d == sjsBrokenFraming:
		return d
	case d.Code < 3000 && d.Code != gateway.CodeNormal && d != sjsInterrupted:
		return d
	}
	return gateway.Disconnect{Code: gateway.CodeNormal, Reason: "Normal closure"}
}

// receive takes a JSON array of messages (or one JSON string) and hands
// each to the session; broken framing ends the session, and what the
// peer still sends is read and dropped while it closes.
func (c *sjsCodec) receive(t *wsSession, data []byte, polled bool) bool {
	msgs, err := parseSJSWebSocketMessage(data)
	if err != nil {
		t.sess.Close(sjsBrokenFraming)
		return true
	}
	handOff(polled, func() {
		for _, m := range msgs {
			if c.ep.receive(context.Background(), t.sess, c.mode.link, m) != nil {
				break
			}
		}
	})
	return true
}

// serveRawWebSocket serves /websocket: WebSocket messages without SockJS
// framing. In pubsub mode that is exactly the native /ws transport (one
// client frame or packet per message), in tcp mode the native bridge
// (/tcp/{target}: the bytes in binary messages). In echo mode every
// message comes back as a text message through the session's queue; the
// gateway session gives the connection the node's lifecycle and its
// pings.
func (ep *sockjsEndpoint) serveRawWebSocket(w http.ResponseWriter, r *http.Request) {
	if !ep.sjsWSPreconditions(w, r, true) {
		return
	}
	switch {
	case ep.tcp:
		bridgeHandler{ep.n}.serveTarget(w, r, ep.cfg.Target)
		return
	case !ep.echo:
		wsHandler{ep.n}.ServeHTTP(w, r)
		return
	}
	sess, ref := ep.n.gate.open(r, sessionSpec{transport: "sockjs"})
	if ref != nil {
		sjsRefuse(w, ref)
		return
	}
	c, _ := ep.n.upgradeWS(w, r, ep.n.heartbeat, ep.wsLimits())
	if c == nil {
		sess.Close(gateway.DisconnectGone())
		return
	}
	attachWS(c, sess, rawEchoCodec{})
	ep.closeNew(sess) // a close endpoint: closed with its code and reason, no message
}

// rawEchoCodec is the raw echo websocket's framing: the session's data
// bodies (the client's own messages) as text messages, nothing else.
type rawEchoCodec struct{}

func (rawEchoCodec) name() string { return "sockjs" }

func (rawEchoCodec) appendPackets(b []byte, pkts []gateway.Packet, _ *wsDeflate) []byte {
	for _, p := range pkts {
		if data := p.Body().Data(); p.Type() == gateway.TypeData {
			b = appendMessage(b, ws.OpText, data)
		}
	}
	return b
}

func (rawEchoCodec) heartbeat() []byte { return nil }

func (rawEchoCodec) closeFrame(d gateway.Disconnect) gateway.Disconnect { return d }

func (rawEchoCodec) receive(t *wsSession, data []byte, _ bool) bool {
	// The reader reuses data; the queue keeps what it is given. Reading
	// goes on after a failure (the session is closing) until the client
	// answers the close frame.
	_ = t.sess.SendData(context.Background(), bytes.Clone(data))
	return true
}
