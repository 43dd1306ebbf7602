package transports

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// bridgeHandler answers GET /tcp/{target}: the native WebSocket way into the
// TCP bridge (see bridge.go). The node connects to the target before it
// upgrades, so that a refusal is an HTTP status with a JSON body
// ({"error":…,"code":…}: 404 unknown target, 400 a subprotocol offer it
// cannot answer, 403 address not allowed or target not granted, 502
// unreachable, 503 busy) rather than a WebSocket that opens and closes at
// once.
// After the upgrade each data message from the browser (binary or text) is
// written to the target as its bytes, and what the target sends comes
// back as binary messages; when the target closes, so does the WebSocket
// (1000 "target closed the connection"). With the subprotocol "base64"
// (websockify's text mode) every message carries base64 text instead, both
// ways. A message over the target's MaxMessageBytes closes with 1009.
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
	t, ok := h.bridge.target(name)
	if !ok {
		writeBridgeRefusal(w, bridgeUnknown)
		return
	}
	lim := wsLimits{maxMessage: t.maxMessage(), tooLarge: gateway.CodeMessageTooBig, protocols: t.subprotocols()}
	// upgradeWS negotiates; asking first refuses an offer the bridge
	// cannot answer before the target sees a connection.
	if _, refused := lim.protocols.negotiate(r.Header); refused != nil {
		writeOfferRefusal(w, refused)
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
	link := newConnectedLink(target)
	c, proto := h.upgradeWS(w, r, h.heartbeat, lim)
	if c == nil {
		link.close()
		sess.Close(gateway.DisconnectGone())
		return
	}
	b := &wsBridge{c: c, sess: sess, link: link, base64: proto == bridgeBase64}
	c.owner = b
	c.watch(true)
	if err := sess.Attach(b, false); err != nil {
		link.close()
		c.abandon()
		return
	}
	c.start()
	// The pump counts as one of the node's readers until it ends.
	h.readers.Add(1)
	// Binary: the frame header goes in the read buffer's headroom; bulk
	// reads may take bridgeBulkChunk. Base64 encodes into a buffer of its
	// own, bridgeChunk at a time.
	send, headroom, chunk := b.writeBinary, maxServerHeader, bridgeBulkChunk
	if b.base64 {
		send, headroom, chunk = b.writeBase64, 0, bridgeChunk
	}
	link.pumpAsync(h.node, headroom, chunk, send, func(d gateway.Disconnect) {
		sess.Close(d)
		h.readers.Done()
	})
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
	// base64 is websockify's text mode (subprotocol "base64"): messages
	// carry base64 text both ways.
	base64 bool
	// decoded holds a base64 message's bytes (the reader's).
	decoded []byte
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
// target does not read: backpressure. In base64 mode a message that is
// not base64 closes the connection with 1007.
func (b *wsBridge) message(data []byte, _ bool) bool {
	if b.base64 {
		var err error
		if b.decoded, err = decodeBase64Message(b.decoded, data); err != nil {
			b.c.fail(gateway.Disconnect{Code: gateway.CodeInvalidPayload, Reason: err.Error()})
			return false
		}
		data = b.decoded
		defer func() {
			if cap(b.decoded) > bridgeChunk {
				b.decoded = nil // keep no big buffer for a rare big message
			}
		}()
	}
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

// writeBase64 writes the target's bytes as one text message of their
// base64 (websockify's text mode), in one write, from a pooled buffer (an
// idle session holds none).
func (b *wsBridge) writeBase64(p []byte) error {
	n := base64.StdEncoding.EncodedLen(len(p))
	buf := getBuffer(maxServerHeader + n)
	defer putBuffer(buf)
	frame := (*buf)[:maxServerHeader+n]
	base64.StdEncoding.Encode(frame[maxServerHeader:], p)
	start := maxServerHeader - frameHeaderLen(n)
	appendFrameHeader(frame[start:start], ws.OpText, n)
	_, err := b.c.write(frame[start:])
	return err
}

// decodeBase64Message decodes a message of websockify's text mode: the
// standard base64 alphabet with padding (RFC 4648 section 4; line breaks
// are skipped), into dst's storage. Its error says where the text stops
// being base64.
func decodeBase64Message(dst, msg []byte) ([]byte, error) {
	n := base64.StdEncoding.DecodedLen(len(msg))
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	m, err := base64.StdEncoding.Decode(dst[:n], msg)
	if err != nil {
		return dst[:0], fmt.Errorf("message is not base64 (the subprotocol is base64): %w", err)
	}
	return dst[:m], nil
}
