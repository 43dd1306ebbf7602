package transports

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// bridgeHandler answers GET /tcp/{target}: the native WebSocket way into the
// TCP bridge (see bridge.go). The node connects to the target before it
// upgrades, so that a refusal is an HTTP status with a JSON body
// ({"error":…,"code":…}: 404 unknown target, 403 address not allowed or
// target not granted, 502 unreachable, 503 busy) rather than a WebSocket
// that opens and closes at once.
// After the upgrade each data message from the browser (binary or text) is
// written to the target as its bytes, and what the target sends comes
// back as binary messages; when the target closes, so does the WebSocket
// (1000 "target closed the connection").
//
// The session is a gateway session like any other (Origin check, per
// address limit, drain on shutdown, heartbeat pings) that carries no
// packets.
type bridgeHandler struct{ *node }

func (h bridgeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.serveTarget(w, r, chi.URLParam(r, "target"))
}

// serveTarget bridges a WebSocket to the target called name.
func (h bridgeHandler) serveTarget(w http.ResponseWriter, r *http.Request, name string) {
	if !h.bridge.has(name) {
		writeBridgeRefusal(w, bridgeUnknown)
		return
	}
	sess, ref := h.gate.open(r, sessionSpec{transport: "tcp"})
	if ref != nil {
		ref.writeJSON(w)
		return
	}
	target, err := h.bridge.dial(r.Context(), name, sess.Principal())
	if err != nil {
		sess.Close(gateway.DisconnectGone())
		d, _ := err.(gateway.Disconnect)
		writeBridgeRefusal(w, d)
		return
	}
	link := newBridgeLink()
	link.connected(target)
	c := h.upgradeWS(w, r, h.heartbeat, wsLimits{maxMessage: h.maxFrame, tooLarge: gateway.CodeMessageTooBig})
	if c == nil {
		link.close()
		sess.Close(gateway.DisconnectGone())
		return
	}
	b := &wsBridge{c: c, sess: sess, link: link}
	c.owner = b
	c.watch(true)
	if err := sess.Attach(b, false); err != nil {
		link.close()
		c.abandon()
		return
	}
	c.start()
	h.readers.Add(1)
	go func() {
		defer h.readers.Done()
		sess.Close(link.pump(maxServerHeader, b.writeBinary))
	}()
}

// wsBridge is a TCP bridge over a WebSocket: a session of its own kind
// that carries no packets, only the target's bytes (binary messages
// down) and the browser's (any data message up, written to the target
// as its bytes). Its gateway session gives it the node's lifecycle: the
// admission gate, drain on shutdown, heartbeat pings.
type wsBridge struct {
	c    *wsConn
	sess *gateway.Session
	link *bridgeLink
}

var (
	_ gateway.Transport = (*wsBridge)(nil)
	_ wsOwner           = (*wsBridge)(nil)
)

func (b *wsBridge) Name() string { return "tcp" }

// WritePackets sends nothing: the stream is the target's bytes only. The
// close packet's code and reason go out in the close frame.
func (b *wsBridge) WritePackets([]gateway.Packet) (int, error) { return 0, nil }

func (b *wsBridge) WriteHeartbeat() error { return b.c.writeHeartbeat(nil) }

// Close closes the link to the target, then the WebSocket.
func (b *wsBridge) Close(d gateway.Disconnect) {
	b.link.close()
	b.c.close(d)
}

// message writes the browser's bytes to the target; it blocks while the
// target does not read: backpressure.
func (b *wsBridge) message(data []byte, _ bool) bool {
	if err := b.link.write(context.Background(), data); err != nil {
		b.c.fail(b.link.afterWriteError(err, b.sess.Done()))
		return false
	}
	return true
}

func (b *wsBridge) ended(d gateway.Disconnect) { b.sess.Close(d) }

// writeBridgeRefusal answers a request the bridge refuses with d, before
// any upgrade.
func writeBridgeRefusal(w http.ResponseWriter, d gateway.Disconnect) {
	writeJSON(w, bridgeStatus(d), errorBody{Error: d.Reason, Code: d.Code})
}

// maxServerHeader is the longest header of a server frame.
const maxServerHeader = 10

// writeBinary writes frame[maxServerHeader:] as one binary message, its
// header put in the room before it, in one write.
func (b *wsBridge) writeBinary(frame []byte) error {
	n := len(frame) - maxServerHeader
	start := maxServerHeader - frameHeaderLen(n)
	appendFrameHeader(frame[start:start], ws.OpBinary, n)
	_, err := b.c.write(frame[start:])
	return err
}
