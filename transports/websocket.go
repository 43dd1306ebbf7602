package transports

import (
	"context"
	"net/http"
	"time"
	"unsafe"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// The native WebSocket transport, GET /ws: one packet per text message
// down, one client frame per message up (PROTOCOL.md has the wire format). The
// connection is a wsConn (wsconn.go); wsSession makes it a session's
// downstream in a codec's framing, which is also how the SockJS websocket
// transports are carried (sockjs_websocket.go).

// wsSession is the gateway Transport of a session carried by a WebSocket.
// The session's writer calls WritePackets and WriteHeartbeat, one at a
// time; Close may come from any goroutine.
type wsSession struct {
	c     *wsConn
	sess  *gateway.Session
	codec wsCodec
}

var (
	_ gateway.Transport   = (*wsSession)(nil)
	_ gateway.Backlogger  = (*wsSession)(nil)
	_ gateway.BatchWriter = (*wsSession)(nil)
	_ gateway.HotMemory   = (*wsSession)(nil)
	_ wsOwner             = (*wsSession)(nil)
)

// wsCodec is how a session's packets and messages look on a WebSocket.
type wsCodec interface {
	// name names the transport in metrics and logs.
	name() string
	// appendPackets appends pkts as complete frames, compressed as z
	// says (nil: not at all). Only the session's writer calls it, one
	// call at a time.
	appendPackets(b []byte, pkts []gateway.Packet, z *wsDeflate) []byte
	// heartbeat returns the frames a heartbeat sends before its ping
	// (none for the native transport: the ping is the heartbeat).
	heartbeat() []byte
	// closeFrame is the code and reason of the close frame that ends the
	// connection when the session ends with d (d.Code is not 0).
	closeFrame(d gateway.Disconnect) gateway.Disconnect
	// receive handles a message from the client (see wsOwner.message).
	receive(t *wsSession, data []byte, polled bool) bool
}

func (t *wsSession) Name() string { return t.codec.name() }

// WritePackets writes the packets' frames in one write (with a ping when
// the client has been quiet, see peerClock).
func (t *wsSession) WritePackets(pkts []gateway.Packet) (int, error) {
	return t.writePackets(pkts, time.Now().UnixNano(), false, nil)
}

// TryWritePackets is WritePackets for the gateway's write workers: it
// does not wait for the client (gateway.TryWriter).
func (t *wsSession) TryWritePackets(pkts []gateway.Packet, now int64) (int, error) {
	return t.writePackets(pkts, now, true, nil)
}

// QueuePackets is TryWritePackets for a worker that batches its sends
// (gateway.BatchWriter).
func (t *wsSession) QueuePackets(pkts []gateway.Packet, now int64, q *gateway.SendQueue) (int, error) {
	return t.writePackets(pkts, now, true, q)
}

// EndQueued completes a write QueuePackets queued.
func (t *wsSession) EndQueued(sent int, err error) (int, error) {
	return t.c.out.endQueued(sent, err, &t.c.wmu)
}

// Flush writes what a TryWritePackets left.
func (t *wsSession) Flush() (int, error) { return t.c.flush() }

// writePackets writes pkts at now (Unix nanoseconds), without waiting
// for the client with try set, and queued on q when it is not nil.
func (t *wsSession) writePackets(pkts []gateway.Packet, now int64, try bool, q *gateway.SendQueue) (int, error) {
	size := 0
	for _, p := range pkts {
		size += p.Size() + 16
	}
	buf := getBuffer(size + 16)
	*buf = t.codec.appendPackets(*buf, pkts, t.c.deflate)
	if len(*buf) == 0 {
		putBuffer(buf)
		return 0, t.c.checkAlive(now)
	}
	n, err := t.c.writeFrames(buf, now, try, q)
	if err != gateway.ErrWriteBlocked && err != gateway.ErrWriteQueued {
		putBuffer(buf) // otherwise the connection keeps it until Flush or EndQueued
	}
	return n, err
}

// HotMemory is where the memory a write touches lies: this object and
// the connection's first two lines (gateway.HotMemory; wsConn keeps what
// a write touches there).
func (t *wsSession) HotMemory() [3]uintptr {
	c := uintptr(unsafe.Pointer(t.c))
	return [3]uintptr{uintptr(unsafe.Pointer(t)), c, c + 64}
}

// Backlog is what the kernel still holds of the connection's writes: a
// client that stopped reading meets the slow-consumer policy at the
// session's queue size, not a socket buffer later.
func (t *wsSession) Backlog() int { return socketBacklog(t.c.raw) }

// WriteHeartbeat sends a ping (after the codec's own heartbeat frame, if
// it has one); browsers answer pings by themselves, which keeps the read
// deadline moving.
func (t *wsSession) WriteHeartbeat() error { return t.c.writeHeartbeat(t.codec.heartbeat()) }

// Close ends the connection with a close frame (see wsConn.close); the
// session's close packet, if any, went out before it.
func (t *wsSession) Close(d gateway.Disconnect) {
	if d.Code != 0 {
		d = t.codec.closeFrame(d)
	}
	t.c.close(d)
}

func (t *wsSession) message(data []byte, polled bool) bool {
	return t.codec.receive(t, data, polled)
}

func (t *wsSession) ended(d gateway.Disconnect) { t.sess.Close(d) }

// attachWS makes c the downstream of sess through codec and starts
// reading it. busy asks for a reader goroutine instead of the poller.
func attachWS(c *wsConn, sess *gateway.Session, codec wsCodec) {
	t := &wsSession{c: c, sess: sess, codec: codec}
	c.owner = t
	c.watch(false)
	if err := sess.Attach(t, false); err != nil {
		c.abandon()
		return
	}
	c.start()
}

// wsHandler serves GET /ws.
type wsHandler struct{ *node }

func (h wsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sess, ref := h.gate.open(r, sessionSpec{transport: "websocket"})
	if ref != nil {
		h.refuseWS(w, r, ref)
		return
	}
	c, _ := h.upgradeWS(w, r, h.heartbeat, wsLimits{maxMessage: h.maxFrame, tooLarge: gateway.CodeMessageTooBig, protocols: nativeProtocols, deflate: true})
	if c == nil {
		sess.Close(gateway.DisconnectGone())
		return
	}
	// The handler returns so net/http drops its request state and
	// buffers; the poller (or a small reader goroutine) reads from now on.
	attachWS(c, sess, nativeCodec{})
}

// refuseWS answers a refused request for a WebSocket session. A browser
// cannot read the status or the body of a refused upgrade (its WebSocket
// reports code 1006, whatever the reason), so a client that asks for it
// with refusal=close in the query (cometgate.js does) is refused in-band:
// the upgrade, a transport-level close packet with the code, the reason
// and the retry advice (as JSONP and htmlfile carry it), and a close
// frame with the code. A page from an Origin the node does not allow
// (403) is refused before any upgrade all the same, and so is every
// client that does not ask: with the JSON refusal and its status.
func (h wsHandler) refuseWS(w http.ResponseWriter, r *http.Request, ref *refusal) {
	if !h.gate.inBand(r) {
		ref.writeJSON(w)
		return
	}
	c, _ := h.upgradeWS(w, r, h.heartbeat, wsLimits{maxMessage: h.maxFrame, tooLarge: gateway.CodeMessageTooBig, protocols: nativeProtocols})
	if c == nil {
		return
	}
	// The upgrade's headers are gone: the advice is in the packet.
	c.refuse(appendMessage(nil, ws.OpText, ref.closePacket(http.Header{})), gateway.Disconnect{Code: ref.code, Reason: ref.msg})
}

// nativeProtocols: the native transport speaks no subprotocol, and
// refuses an offer (400 before the upgrade) rather than leave the
// browser to fail the connection without a word (see wsSubprotocols).
var nativeProtocols = &wsSubprotocols{}

// nativeCodec is the native transport's framing: each packet its own
// text message, compressed when the connection negotiated
// permessage-deflate and the body is large enough.
type nativeCodec struct{}

func (nativeCodec) name() string { return "websocket" }

func (nativeCodec) appendPackets(b []byte, pkts []gateway.Packet, z *wsDeflate) []byte {
	for _, p := range pkts {
		if z.compresses(p.Body().Size()) {
			var ok bool
			if b, ok = appendDeflatedPacket(b, p); ok {
				continue
			}
		}
		b = appendFrameHeader(b, ws.OpText, p.JSONLen())
		b = p.AppendJSON(b)
	}
	return b
}

func (nativeCodec) heartbeat() []byte { return nil }

func (nativeCodec) closeFrame(d gateway.Disconnect) gateway.Disconnect { return d }

func (nativeCodec) receive(t *wsSession, data []byte, polled bool) bool {
	handOff(polled, func() { t.sess.HandleFrame(context.Background(), data) })
	return true
}

// handOff runs fn, on a goroutine of its own when the caller is a
// connection's long-lived reader goroutine, and waits for it. A Go stack
// never shrinks below what its deepest call needed: handling a frame (JSON
// decoding, subscribing through the hub) would leave every idle reader
// holding a 4-8 KiB stack. Handing the work off keeps the reader's stack
// at the minimum, for the price of a goroutine start per client message
// (client messages are rare next to deliveries). The poller's goroutines
// end after their input, so they run fn themselves.
func handOff(polled bool, fn func()) {
	if polled {
		fn()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}
