package transports

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// WebSocket: RFC 6455 on github.com/gobwas/ws.
//
// Why gobwas/ws: it upgrades by hijacking and then gets out of the way. The
// connection is a plain net.Conn with no library-owned buffers and no
// goroutine of its own, so an idle connection costs what the poller's
// registration costs and nothing else (measured at about 3.3 KiB of PSS per
// idle session with a reader goroutine, against about 17 KiB for
// gorilla/websocket and 23 KiB for coder/websocket, whose read loops keep
// net/http's buffers alive; less again on the poller), and a frame is
// written from bytes we built ourselves. The price is that the protocol
// rules a fuller library would enforce are enforced here: masking, control
// frames, fragmentation, close codes and UTF-8 (wsframes.go).
//
// wsConn is the one WebSocket connection type of the node. Every WebSocket
// the node serves is one: the native /ws transport and the SockJS websocket
// transports (a wsSession: a gateway session's packets in a codec's
// framing) and the TCP bridge (a wsBridge: a byte stream). It owns the
// wire: the write lock, write deadlines, pings on busy connections, the
// close handshake, and reading, on the node's poller while the connection
// is idle (Linux) or on a small reader goroutine. What the connection
// carries is its owner's business (wsOwner).

// wsOwner is what a connection carries. Its methods are called by the
// connection's reader, one at a time.
type wsOwner interface {
	// message handles one complete data message (text or binary); false
	// stops reading. polled says it runs on the poller's short-lived
	// goroutine, which may use as much stack as it likes; otherwise it
	// runs on the connection's long-lived reader goroutine.
	message(data []byte, polled bool) bool
	// ended reports that reading is over and why: the peer went away
	// (DisconnectGone), closed the connection, or broke the protocol
	// (the close code to end with). It is called once.
	ended(d gateway.Disconnect)
}

// wsConn is one WebSocket connection: see the comment above. Every idle
// WebSocket holds one, so its fields are ordered to pack: it fits the
// allocator's 320-byte class.
type wsConn struct {
	// What every write touches comes first, in the first two cache lines
	// (the object is 64-byte aligned in its class; TestWSConnLayout): a
	// fan-out writes thousands of connections whose memory is out of the
	// caches, and each line a write touches is a wait on memory (the
	// write workers prefetch those two lines, wsSession.HotMemory).
	conn net.Conn
	// deflate is the permessage-deflate the handshake agreed on, nil for
	// none (wsdeflate.go).
	deflate *wsDeflate
	// wmu is the write lock (one frame writer at a time: the session's
	// writer, pongs, the close frame). closeSent, guarded by it, makes
	// every write after the close frame fail with errCloseSent. A
	// mutex, not a channel: the same word in the connection without a
	// 96-byte channel beside it, and no channel operation on each
	// delivery (2% of a fan-out's CPU was the channel's, its cache line
	// cold on every session). Closing, which must be able to give up on
	// a stuck write, waits for it with lockWithin.
	wmu sync.Mutex
	out sockOut // guarded by wmu
	// reg is set when the poller watches the connection instead of a
	// reader goroutine; finish then ends the connection, once.
	reg *pollReg
	n   *node
	// clock adds pings to writes while the client is quiet.
	clock     peerClock
	closeSent bool
	// flushLocks: the rest waiting for flush was not written at all,
	// because the write lock was held; flush takes it. Only the session's
	// writer touches it.
	flushLocks bool
	// idled: the last readEvent ended because in found the connection
	// idle, not because reading is over.
	idled bool
	owner wsOwner
	// raw is the socket's descriptor access (rawConn), asked for once:
	// the write workers' tries and the kernel backlog go through it; nil
	// when the connection is not a plain socket.
	raw syscall.RawConn

	// frames holds the reader's state (limit, close code for a message
	// over it, partial messages), on the poller and on a goroutine alike.
	frames wsFrames
	// in is the reader of a busy connection that the poller watches
	// while it is idle (the bridge; bridge_reader.go), nil for others.
	in *bridgeReader
	// lingerUntil is the read deadline (Unix nanoseconds) set when the
	// connection started closing, 0 before. From then on the reader no
	// longer extends its deadline at each frame, so a client that ignores
	// the close frame and keeps sending cannot hold the connection (and
	// a node's shutdown, which waits for readers).
	lingerUntil atomic.Int64
	closeOnce   sync.Once
	finishOnce  sync.Once
	endOnce     sync.Once
}

// wsLimits are what a connection accepts from its client.
type wsLimits struct {
	maxMessage int // the largest message
	tooLarge   int // the close code for one over it
	// utf8Binary checks binary messages for UTF-8 too (a SockJS message
	// is text whatever frame carries it).
	utf8Binary bool
	// protocols are the subprotocols the endpoint speaks (see
	// wsSubprotocols). nil ignores the client's offer and answers none,
	// as the SockJS reference server does.
	protocols *wsSubprotocols
	// deflate offers permessage-deflate as the node's Options.Compression
	// says (the packet transports; the bridge does not compress).
	deflate bool
}

// upgradeWS answers the WebSocket handshake and returns the connection,
// keeping the bytes a client sent along with the handshake. heartbeat is
// the session's: pings go out when the client has been quiet that long,
// and three of them unanswered end the connection. The subprotocol is
// negotiated here (lim.protocols), for every WebSocket alike: an offer the
// endpoint cannot answer is refused with 400 {"error":…,"code":4000}
// before the upgrade. So is permessage-deflate (lim.deflate, see
// wsdeflate.go). When the handshake fails gobwas has answered it (400
// with the reason) and upgradeWS returns nil. Otherwise it returns the
// connection and the subprotocol agreed ("" for none).
func (n *node) upgradeWS(w http.ResponseWriter, r *http.Request, heartbeat time.Duration, lim wsLimits) (*wsConn, string) {
	proto, refused := lim.protocols.negotiate(r.Header)
	if refused != nil {
		writeOfferRefusal(w, refused)
		return nil, ""
	}
	var u ws.HTTPUpgrader
	u.Header = http.Header{}
	if proto != "" {
		// Written as a header rather than through gobwas's Protocol
		// callback, so that one parser (parseSubprotocols) reads the
		// offer: gobwas's is laxer (it takes "a b" for two tokens).
		u.Header.Set("Sec-WebSocket-Protocol", proto)
	}
	var z *wsDeflate
	if lim.deflate {
		var answer string
		if answer, z = negotiateDeflate(r.Header.Values("Sec-WebSocket-Extensions"), n.opts.Compression); z != nil {
			u.Header.Set("Sec-WebSocket-Extensions", answer)
		}
	}
	conn, rw, _, err := u.Upgrade(r, w)
	if err != nil {
		return nil, ""
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		conn = withBuffered(conn, rw.Reader)
	}
	c := &wsConn{
		n:       n,
		conn:    conn,
		raw:     rawConn(conn),
		deflate: z,
	}
	c.frames = wsFrames{conn: conn, limit: int32(min(lim.maxMessage, math.MaxInt32)), tooLarge: int32(lim.tooLarge), utf8Binary: lim.utf8Binary, inflate: z != nil}
	c.clock.start(heartbeat)
	return c, proto
}

// Subprotocols (RFC 6455 section 4.2.2, Sec-WebSocket-Protocol). A browser
// that offers subprotocols fails the connection when the answer names none
// (the WHATWG WebSocket standard: "If protocols is not the empty list and
// ... the empty byte sequence, then fail the WebSocket connection"), with
// nothing but code 1006 for the page to see. So an endpoint that cannot
// answer an offer refuses it before the upgrade, with 400 and a JSON body
// that says which were offered and which it speaks: the same failure for
// the page, but one that the browser's network panel, a proxy's log and a
// non-browser client can read.

// wsSubprotocols are the subprotocols an endpoint speaks, in tiers of
// preference, the most preferred first. The answer is the first
// subprotocol the client offered within the first tier that holds any
// offered one: within a tier the client's order decides. No offer gets no
// answer, and is fine. An endpoint that speaks none has no tiers and
// refuses every offer.
type wsSubprotocols struct {
	tiers [][]string
}

// negotiate chooses the subprotocol to answer h's offer with, "" for none,
// or the refusal (code 4000) for an offer that is malformed or holds no
// subprotocol the endpoint speaks. A nil p ignores the offer.
func (p *wsSubprotocols) negotiate(h http.Header) (string, *gateway.Disconnect) {
	values := h.Values("Sec-WebSocket-Protocol")
	if len(values) == 0 || p == nil {
		return "", nil
	}
	offered, err := parseSubprotocols(values)
	if err != nil {
		return "", &gateway.Disconnect{Code: gateway.DisconnectProtocol.Code, Reason: err.Error()}
	}
	if len(offered) == 0 {
		return "", nil
	}
	for _, tier := range p.tiers {
		for _, o := range offered {
			if slices.Contains(tier, o) {
				return o, nil
			}
		}
	}
	speaks := "none"
	if all := slices.Concat(p.tiers...); len(all) > 0 {
		speaks = strings.Join(all, ", ")
	}
	return "", &gateway.Disconnect{Code: gateway.DisconnectProtocol.Code,
		Reason: fmt.Sprintf("unsupported subprotocol: offered %s; this endpoint speaks %s", strings.Join(offered, ", "), speaks)}
}

// parseSubprotocols reads the values of a request's Sec-WebSocket-Protocol
// headers: comma-separated lists of tokens (RFC 6455 section 4.1, RFC 9110
// section 5.6.1), in order. Whitespace around the commas and empty
// elements are allowed, as the list syntax asks; anything else that is
// not a token is an error that says where.
func parseSubprotocols(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		for elem := range strings.SplitSeq(v, ",") {
			tok := strings.Trim(elem, " \t")
			if tok == "" {
				continue
			}
			if i := strings.IndexFunc(tok, func(r rune) bool { return r >= utf8.RuneSelf || !isTokenChar(byte(r)) }); i >= 0 {
				return nil, fmt.Errorf("malformed Sec-WebSocket-Protocol header: %q is not a token (at byte %d)", tok, i)
			}
			out = append(out, tok)
		}
	}
	return out, nil
}

// isTokenChar reports whether c may appear in an HTTP token (tchar).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// validSubprotocol reports whether s is one subprotocol name (a token).
func validSubprotocol(s string) bool {
	p, err := parseSubprotocols([]string{s})
	return err == nil && len(p) == 1 && p[0] == s
}

// writeOfferRefusal answers a handshake whose subprotocol offer the
// endpoint refuses (see wsSubprotocols), before any upgrade.
func writeOfferRefusal(w http.ResponseWriter, d *gateway.Disconnect) {
	writeJSON(w, http.StatusBadRequest, errorBody{Error: d.Reason, Code: d.Code})
}

// watch prepares reading, before the connection's session may write to
// it (and so close it): the connection counts as one of the node's
// readers from now until it is closed, and an idle one is handed to the
// poller where there is one. Busy connections (the bridge) are read
// through a buffer: one system call for many small frames rather than
// three per frame. Where the poller and raw socket I/O are available, a
// busy connection's poller goroutine stays with it while it is in use and
// hands it back to the poller once idle (bridgeReader); elsewhere it gets
// a reader goroutine of its own. Then start, or abandon if the session
// could not take the connection.
func (c *wsConn) watch(busy bool) {
	c.n.readers.Add(1)
	if !busy {
		c.reg = c.n.watchIdle(c.conn, c.onInput)
		return
	}
	raw := c.conn
	var pre []byte
	if b, ok := raw.(*bufferedConn); ok {
		raw, pre = b.Conn, b.buf
	}
	if in := newBridgeReader(raw, pre, c.readTimeout(), &c.lingerUntil); in != nil {
		if c.reg = c.n.watchIdle(raw, c.onInput); c.reg != nil {
			// One fdConn for both ways (write uses in's): its read
			// and write states are apart, and writes take a lock of
			// their own.
			c.in = in
			c.frames.conn, c.frames.buffered = in, in
			// Nothing is left for bufferedConn to replay: in has it.
			c.conn = raw
			return
		}
	}
	c.frames.conn = bufio.NewReaderSize(c.conn, 4096)
}

// start starts reading; the owner is set and its session has the
// connection attached.
func (c *wsConn) start() {
	if c.reg == nil {
		go func() {
			defer c.n.readers.Done()
			defer c.conn.Close()
			for !c.readEvent(false) {
			}
		}()
		return
	}
	if hasBuffered(c.conn) || (c.in != nil && len(c.in.pre) > 0) {
		c.reg.run(c.onInput) // frames sent along with the upgrade
		return
	}
	if err := c.reg.arm(); err != nil {
		c.end(gateway.DisconnectGone())
		c.finish()
	}
}

// abandon gives up a connection that was watched but never started: its
// session could not take it.
func (c *wsConn) abandon() {
	if c.reg != nil {
		c.finish()
		return
	}
	_ = c.conn.Close()
	c.n.readers.Done()
}

// end tells the owner, once, that reading is over.
func (c *wsConn) end(d gateway.Disconnect) {
	c.endOnce.Do(func() { c.owner.ended(d) })
}

// onInput reads what arrived on a polled connection: the frames it can
// read, then it re-arms the registration. The poller runs it on a
// goroutine of its own, one at a time per connection. A frame that
// arrives in pieces is waited for (in Go's poller) within the same read
// deadline a reader goroutine has.
func (c *wsConn) onInput() {
	for {
		if c.readEvent(true) {
			if c.idled {
				c.idled = false
				break // a busy connection is idle now: back to the poller
			}
			if c.in != nil {
				c.in.done()
			}
			c.finish()
			return
		}
		if c.in == nil && !hasBuffered(c.conn) {
			break
		}
	}
	// An idle connection keeps no payload buffer: the next frame, maybe
	// a pong a heartbeat from now, allocates its own. Nor the buffer of
	// an inflated message (permessage-deflate).
	c.frames.payload, c.frames.plain = nil, nil
	if err := c.reg.arm(); err != nil {
		c.end(gateway.DisconnectGone())
		c.finish()
	}
}

// readEvent reads the next frame and handles it: control frames here,
// data messages by the owner. It reports whether reading is over: the
// connection failed or was closed, or the owner stopped it.
func (c *wsConn) readEvent(polled bool) (over bool) {
	if c.in == nil { // in sets its own deadlines, lazily
		_ = c.conn.SetReadDeadline(time.Now().Add(c.readTimeout()))
		if until := c.lingerUntil.Load(); until != 0 {
			// Closing: the linger deadline stands. (Set after ours when
			// linger ran concurrently: it stores before it sets.)
			_ = c.conn.SetReadDeadline(time.Unix(0, until))
		}
	}
	ev, bad, err := c.frames.next()
	switch {
	case err == errReadIdle:
		c.idled = true
		return true
	case err != nil:
		c.readFailed(err)
		return true
	case bad != nil:
		c.fail(gateway.Disconnect{Code: bad.code, Reason: bad.reason})
		return true
	}
	c.clock.heard()
	switch ev.op {
	case ws.OpPing:
		// After our close frame no pong goes out; the reader goes on
		// waiting for the client's close.
		if err := c.writeControl(ws.OpPong, ev.data); err != nil && !errors.Is(err, errCloseSent) {
			c.readFailed(err)
			return true
		}
	case ws.OpPong:
	case ws.OpClose:
		c.peerClosed(ev.data)
		return true
	default:
		return !c.owner.message(ev.data, polled)
	}
	return false
}

// finish ends a polled connection: it leaves the poller and is closed.
func (c *wsConn) finish() {
	c.finishOnce.Do(func() {
		c.reg.remove()
		_ = c.conn.Close()
		c.n.readers.Done()
	})
}

// closeConn closes the socket now: a polled connection finishes.
func (c *wsConn) closeConn() {
	if c.reg != nil {
		c.finish()
		return
	}
	_ = c.conn.Close()
}

// errPeerSilent ends a polled session whose client answered no ping for
// the read timeout: no reader is waiting with a deadline to notice.
var errPeerSilent = errors.New("transports: the client answered no ping")

// readTimeout bounds the wait for a frame: three heartbeats (whose pings
// a live client answers) and some slack. Derived rather than stored: an
// idle connection's size matters (PERFORMANCE.md).
func (c *wsConn) readTimeout() time.Duration {
	return 3*time.Duration(c.clock.every) + 5*time.Second
}

// checkAlive fails a write to a polled connection whose client has been
// silent too long; now is the time in Unix nanoseconds.
func (c *wsConn) checkAlive(now int64) error {
	if c.reg != nil && now-c.clock.lastRead.Load() > int64(c.readTimeout()) {
		return errPeerSilent
	}
	return nil
}

// write writes b, complete frames, under the write lock and within the
// write timeout.
func (c *wsConn) write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		return 0, errCloseSent
	}
	now := time.Now().UnixNano()
	if c.in != nil { // the bridge: its raw socket I/O (rawio_linux.go)
		c.out.deadline.extend(c.conn, now, c.n.opts.WriteTimeout)
		return c.in.fd.Write(b)
	}
	return c.out.write(c.conn, b, now, c.n.opts.WriteTimeout)
}

// writeFrames writes frames a codec built (b) at now (Unix nanoseconds),
// adding a ping when the client has been quiet for a heartbeat (see
// peerClock). It fails, having written nothing, on a polled connection
// whose client went silent. With try set it does not wait
// (gateway.TryWriter): if the kernel does not take everything, buf
// becomes the connection's and the write lock stays held until flush.
// With q set as well, the send goes on q (gateway.BatchWriter), buf is
// the connection's and the lock stays held until endQueued.
func (c *wsConn) writeFrames(buf *[]byte, now int64, try bool, q *gateway.SendQueue) (int, error) {
	if err := c.checkAlive(now); err != nil {
		return 0, err
	}
	if c.clock.pingDue(now) {
		*buf = appendFrameHeader(*buf, ws.OpPing, 0)
	}
	if !try {
		return c.write(*buf)
	}
	if !c.wmu.TryLock() {
		// Another write holds the lock (a pong, the close frame, the
		// bridge), and it may wait for the client up to the write
		// timeout: a write worker must not wait with it. The whole
		// write goes to flush, which takes the lock itself.
		c.out.rest, c.flushLocks = buf, true
		return len(*buf), gateway.ErrWriteBlocked
	}
	if c.closeSent {
		c.wmu.Unlock()
		return 0, errCloseSent
	}
	if q != nil && c.raw != nil {
		return c.out.queue(q, c.raw, buf)
	}
	n, err := c.out.try(c.raw, buf)
	if err != gateway.ErrWriteBlocked {
		c.wmu.Unlock()
	}
	return n, err
}

// flush writes the rest of a try that would have waited, and releases
// the write lock that try kept (or takes it first, when try found it
// held).
func (c *wsConn) flush() (int, error) {
	if c.flushLocks {
		c.flushLocks = false
		c.wmu.Lock()
		if c.closeSent {
			putBuffer(c.out.rest)
			c.out.rest = nil
			c.wmu.Unlock()
			return 0, errCloseSent
		}
	}
	defer c.wmu.Unlock()
	return c.out.flush(c.conn, c.n.opts.WriteTimeout)
}

// writeHeartbeat writes what a codec gives as its keep-alive (a SockJS
// "h" frame, or nothing) followed by a ping, which a browser answers by
// itself: that keeps the read deadline moving.
func (c *wsConn) writeHeartbeat(frames []byte) error {
	if err := c.checkAlive(time.Now().UnixNano()); err != nil {
		return err
	}
	c.clock.pinged()
	buf := getBuffer(len(frames) + 2)
	defer putBuffer(buf)
	*buf = appendFrameHeader(append(*buf, frames...), ws.OpPing, 0)
	_, err := c.write(*buf)
	return err
}

func (c *wsConn) writeControl(op ws.OpCode, payload []byte) error {
	b := make([]byte, 0, 2+len(payload))
	b = appendFrameHeader(b, op, len(payload))
	b = append(b, payload...)
	_, err := c.write(b)
	return err
}

// errCloseSent is what a write returns once the close frame went out.
var errCloseSent = errors.New("transports: websocket close frame already sent")

// sendClose writes a close frame carrying body, once; every later write
// fails. It waits up to a second for a write in progress (a pong, say) to
// finish, so the frame is neither skipped nor interleaved with it, and
// reports whether the frame went out.
func (c *wsConn) sendClose(body []byte) bool {
	if !lockWithin(&c.wmu, time.Second) {
		return false // a write is stuck; the caller closes the socket
	}
	defer c.wmu.Unlock()
	if c.closeSent {
		return false
	}
	c.closeSent = true
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	b := appendFrameHeader(make([]byte, 0, 2+len(body)), ws.OpClose, len(body))
	_, err := c.conn.Write(append(b, body...))
	return err == nil
}

// close ends the connection with a close frame carrying d's code and
// reason, then half-closes: the client reads the close frame and
// answers, and the reader closes the socket (after lingerTimeout at the
// latest). Closing outright could reset the connection while the client
// still has unread data (the kernel answers unread input with RST), and
// the client would lose the close frame. For DisconnectGone, or when the
// close frame cannot be written (the peer is gone, a write is stuck), the
// socket is closed at once, which also unblocks a stuck write. Only the
// first call does anything.
func (c *wsConn) close(d gateway.Disconnect) {
	c.closeOnce.Do(func() {
		if d.Code == 0 {
			c.closeConn()
			return
		}
		body := ws.NewCloseFrameBody(ws.StatusCode(d.Code), truncateReason(d.Reason))
		if !c.sendClose(body) {
			c.closeConn()
			return
		}
		if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			c.linger()
			return
		}
		c.closeConn()
	})
}

// linger bounds what is left of the connection's life: the reader waits
// for the client's close until lingerTimeout from now, and no longer.
func (c *wsConn) linger() {
	until := time.Now().Add(lingerTimeout)
	c.lingerUntil.Store(until.UnixNano())
	_ = c.conn.SetReadDeadline(until)
	if c.reg != nil {
		// No reader is waiting to see the deadline pass.
		time.AfterFunc(lingerTimeout, c.finish)
	}
}

// lingerTimeout is how long a closing connection waits for the client's
// close frame before the socket is closed anyway.
const lingerTimeout = 2 * time.Second

// fail ends the connection for a protocol violation, then reads and
// discards what the client still sends until it closes or lingerTimeout
// passes, so the close frame (and whatever the owner sends before it)
// reaches it (see close).
func (c *wsConn) fail(d gateway.Disconnect) {
	c.end(d)
	c.linger()
	_, _ = io.Copy(io.Discard, c.conn)
}

// readFailed ends reading after a read error: the peer went away or
// stopped answering heartbeats.
func (c *wsConn) readFailed(err error) {
	if !errors.Is(err, net.ErrClosed) {
		c.n.log.Debug("websocket read ended", "err", err)
	}
	c.end(gateway.DisconnectGone())
}

// peerClosed answers a client's close frame with the same code, as RFC
// 6455 asks, after checking the code and reason are well-formed (an
// empty close is answered with an empty close). The owner then ends as
// gone: the client asked for it, so nothing more is sent. When our close
// frame went out first, the client's close is the answer to it and is
// not echoed.
func (c *wsConn) peerClosed(payload []byte) {
	if code, reason := checkClosePayload(payload); code != 0 {
		c.fail(gateway.Disconnect{Code: code, Reason: reason})
		return
	}
	var echo []byte
	if len(payload) >= 2 {
		echo = payload[:2]
	}
	c.sendClose(echo)
	c.end(gateway.DisconnectGone())
}

// checkClosePayload checks a client's close frame payload (RFC 6455 5.5.1,
// 7.4): empty, or a code a peer may send followed by a UTF-8 reason: a
// code in the ranges a close frame may carry (1000–2999 as RFC 6455
// defines them, 3000–4999 for applications; gobwas lets 5000 and above
// through). It returns 0 when the payload is fine, else the close code to
// fail the connection with (1002, or 1007 for a reason that is not UTF-8)
// and why.
func checkClosePayload(payload []byte) (int, string) {
	switch len(payload) {
	case 0:
		return 0, ""
	case 1:
		return gateway.CodeProtocolError, "close frame payload of one byte"
	}
	code, reason := ws.ParseCloseFrameData(payload)
	switch {
	case !utf8.ValidString(reason):
		return gateway.CodeInvalidPayload, "close reason is not valid UTF-8"
	case code >= 5000 || ws.CheckCloseFrameData(code, reason) != nil:
		return gateway.CodeProtocolError, "invalid close code " + strconv.Itoa(int(code))
	}
	return 0, ""
}

// writeDeadline sets a connection's write deadline lazily. Setting one
// modifies a runtime timer (under a lock, on a deeper stack than the
// write itself); done for every write it was among the top costs of a
// fan-out profile after write(2). Renewing it only once it is less than
// half a timeout away still bounds every write, by between half a timeout
// and a whole one.
type writeDeadline struct{ until int64 } // Unix nanoseconds; guarded by the writer's lock

func (d *writeDeadline) extend(conn net.Conn, now int64, timeout time.Duration) {
	if d.until-now > int64(timeout)/2 {
		return
	}
	d.until = now + int64(timeout)
	_ = conn.SetWriteDeadline(time.Unix(0, d.until))
}

// peerClock decides when a write should carry a ping. The gateway sends
// heartbeats only on idle sessions, and a browser sends nothing on its
// own, so on a busy connection the node would never hear from a live
// client and its read deadline would end the session. Instead, a write
// carries a ping (two bytes, in the same system call) whenever the client
// has been quiet for a heartbeat interval and no ping went out in it; the
// browser's pong then moves the read deadline.
type peerClock struct {
	every    int64        // the interval, in nanoseconds
	lastRead atomic.Int64 // Unix nanoseconds of the last frame read
	lastPing atomic.Int64 // and of the last ping sent
}

// start begins the clock as if the client had just been heard.
func (p *peerClock) start(every time.Duration) {
	p.every = int64(every)
	p.heard()
}

// heard records a frame from the client.
func (p *peerClock) heard() { p.lastRead.Store(time.Now().UnixNano()) }

// pinged records a ping sent.
func (p *peerClock) pinged() { p.lastPing.Store(time.Now().UnixNano()) }

// pingDue reports whether the write being assembled at now (Unix
// nanoseconds) should carry a ping, and if so records it as sent.
func (p *peerClock) pingDue(now int64) bool {
	if now-p.lastRead.Load() < p.every || now-p.lastPing.Load() < p.every {
		return false
	}
	p.lastPing.Store(now)
	return true
}

// frameHeaderLen is the size of a server frame header for a payload of n
// bytes (servers do not mask).
func frameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	}
	return 10
}

func appendFrameHeader(dst []byte, op ws.OpCode, n int) []byte {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		return append(dst, byte(n))
	case n <= 0xffff:
		return append(dst, 126, byte(n>>8), byte(n))
	}
	return append(dst, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// appendMessage appends payload as one unfragmented message.
func appendMessage(dst []byte, op ws.OpCode, payload []byte) []byte {
	return append(appendFrameHeader(dst, op, len(payload)), payload...)
}

// truncateReason keeps a close reason within the 123 bytes a control frame
// leaves for it, without splitting a UTF-8 sequence.
func truncateReason(s string) string {
	if len(s) <= 123 {
		return s
	}
	s = s[:123]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// hasBuffered reports whether conn holds bytes read with the upgrade
// request that were not consumed yet.
func hasBuffered(conn net.Conn) bool {
	b, ok := conn.(*bufferedConn)
	return ok && len(b.buf) > 0
}

// bufferedConn replays bytes that net/http had read past the upgrade request
// before reading the connection itself.
type bufferedConn struct {
	net.Conn
	buf []byte
}

func withBuffered(conn net.Conn, r *bufio.Reader) net.Conn {
	b, _ := r.Peek(r.Buffered())
	return &bufferedConn{Conn: conn, buf: append([]byte(nil), b...)}
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the underlying connection (see wsConn.close).
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Buffers: a write assembles all pending frames in a pooled buffer, so an
// idle connection holds none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuffer(size int) *[]byte {
	b := bufPool.Get().(*[]byte)
	if cap(*b) < size {
		*b = make([]byte, 0, size)
	}
	*b = (*b)[:0]
	return b
}

func putBuffer(b *[]byte) {
	if cap(*b) > 1<<20 {
		return // a rare huge batch: let it go
	}
	bufPool.Put(b)
}

// lockWithin takes mu if it can within d, and reports whether it did. It
// serves the one wait that must be able to give up, closing behind a
// write that may be stuck on its client (which the caller then ends by
// closing the socket); it is rare, and short unless the write is stuck,
// so it polls, backing off from 50 µs to 10 ms, rather than making every
// write pay for a lock that can be waited on with a timeout.
func lockWithin(mu *sync.Mutex, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for pause := 50 * time.Microsecond; ; pause = min(2*pause, 10*time.Millisecond) {
		if mu.TryLock() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(pause, left))
	}
}
