package transports

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// serveBridge answers GET /tcp/{target}: the native WebSocket way into the
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
func (s *Server) serveBridge(w http.ResponseWriter, r *http.Request) {
	s.serveBridgeTo(w, r, chi.URLParam(r, "target"))
}

// serveBridgeTo bridges a WebSocket to the target called name.
func (s *Server) serveBridgeTo(w http.ResponseWriter, r *http.Request, name string) {
	if !s.bridge.has(name) {
		writeBridgeRefusal(w, bridgeUnknown)
		return
	}
	sess, ref := s.gate.open(r, sessionSpec{transport: "tcp"})
	if ref != nil {
		ref.writeJSON(w)
		return
	}
	target, err := s.bridge.dial(r.Context(), name, sess.Principal())
	if err != nil {
		sess.Close(gateway.DisconnectGone())
		d, _ := err.(gateway.Disconnect)
		writeBridgeRefusal(w, d)
		return
	}
	link := newBridgeLink()
	link.connected(target)
	c := s.upgradeWS(w, r, sess, link)
	if c == nil {
		link.close()
		return
	}
	if err := sess.Attach(c, false); err != nil {
		link.close()
		_ = c.conn.Close()
		return
	}
	s.readers.Add(2)
	go func() {
		defer s.readers.Done()
		c.readLoop()
	}()
	go func() {
		defer s.readers.Done()
		c.sess.Close(link.pump(maxServerHeader, c.writeBinary))
	}()
}

// writeBridgeRefusal answers a request the bridge refuses with d, before
// any upgrade.
func writeBridgeRefusal(w http.ResponseWriter, d gateway.Disconnect) {
	writeJSON(w, bridgeStatus(d), errorBody{Error: d.Reason, Code: d.Code})
}

// maxServerHeader is the longest header of a server frame.
const maxServerHeader = 10

// writeBinary writes frame[maxServerHeader:] as one binary message, its
// header put in the room before it, in one write.
func (c *wsConn) writeBinary(frame []byte) error {
	n := len(frame) - maxServerHeader
	start := maxServerHeader - frameHeaderLen(n)
	appendFrameHeader(frame[start:start], ws.OpBinary, n)
	_, err := c.write(frame[start:])
	return err
}
