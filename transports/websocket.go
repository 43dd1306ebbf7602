package transports

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// WebSocket: RFC 6455 on github.com/gobwas/ws.
//
// Why gobwas/ws: it upgrades by hijacking and then gets out of the way. The
// connection is a plain net.Conn with no library-owned buffers and no
// goroutine of its own, so an idle session costs one small reader goroutine
// and nothing else (measured at about 3.3 KiB of PSS per idle connection,
// against about 17 KiB for gorilla/websocket and 23 KiB for
// coder/websocket, whose read loops keep net/http's buffers alive), and a
// frame is written from bytes we built ourselves. The price is that the
// protocol rules a fuller library would enforce are enforced here:
// masking, control frames, fragmentation, close codes and UTF-8.

// wsConn is the Transport of one WebSocket session.
type wsConn struct {
	srv  *Server
	conn net.Conn
	sess *gateway.Session

	wmu       sync.Mutex // one frame writer at a time: the session's writer, pongs, close
	closeOnce sync.Once
	hdr       [ws.MaxHeaderSize - 2]byte // reader's header buffer
}

var _ gateway.Transport = (*wsConn)(nil)

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	sess := s.openSession(w, r, "websocket", false)
	if sess == nil {
		return
	}
	conn, rw, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		// gobwas answered the request already (400 with the reason).
		sess.Close(gateway.DisconnectGone())
		return
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		conn = withBuffered(conn, rw.Reader)
	}
	c := &wsConn{srv: s, conn: conn, sess: sess}
	if err := sess.Attach(c, false); err != nil {
		_ = conn.Close()
		return
	}
	// The handler returns so net/http drops its request state and buffers;
	// a fresh goroutine with a small stack reads the connection.
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		c.readLoop()
	}()
}

func (c *wsConn) Name() string { return "websocket" }

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

// WritePackets writes every packet as its own text frame, all in one write.
func (c *wsConn) WritePackets(pkts []gateway.Packet) (int, error) {
	size := 0
	for _, p := range pkts {
		size += p.Size() + 10
	}
	buf := getBuffer(size)
	b := *buf
	for _, p := range pkts {
		b = appendFrameHeader(b, ws.OpText, p.JSONLen())
		b = p.AppendJSON(b)
	}
	n, err := c.write(b)
	*buf = b
	putBuffer(buf)
	return n, err
}

func (c *wsConn) write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.srv.opts.WriteTimeout))
	return c.conn.Write(b)
}

func (c *wsConn) writeControl(op ws.OpCode, payload []byte) error {
	b := make([]byte, 0, 2+len(payload))
	b = appendFrameHeader(b, op, len(payload))
	b = append(b, payload...)
	_, err := c.write(b)
	return err
}

// WriteHeartbeat sends a ping; browsers answer it by themselves, which also
// keeps the read deadline moving.
func (c *wsConn) WriteHeartbeat() error { return c.writeControl(ws.OpPing, nil) }

// Close sends a close frame carrying d's code (unless the peer is gone or a
// write is stuck), then half-closes: the client reads the close frame and
// answers, and the reader goroutine closes the socket. Closing outright
// could reset the connection while the client still has unread data (the
// kernel answers unread input with RST), and the client would lose the
// close frame. For DisconnectGone the socket is closed at once.
func (c *wsConn) Close(d gateway.Disconnect) {
	c.closeOnce.Do(func() {
		if d.Code == 0 {
			_ = c.conn.Close()
			return
		}
		if c.wmu.TryLock() {
			_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			body := ws.NewCloseFrameBody(ws.StatusCode(d.Code), truncateReason(d.Reason))
			b := appendFrameHeader(make([]byte, 0, 2+len(body)), ws.OpClose, len(body))
			_, _ = c.conn.Write(append(b, body...))
			c.wmu.Unlock()
		}
		if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			_ = c.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
			return
		}
		_ = c.conn.Close()
	})
}

// lingerTimeout is how long a closing connection waits for the client's
// close frame before the socket is closed anyway.
const lingerTimeout = 2 * time.Second

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

// wsFail is a protocol failure found while reading: the WebSocket close code
// (1002 protocol error, 1007 invalid payload, 1009 too big) and its reason.
func wsFail(code int, reason string) gateway.Disconnect {
	return gateway.Disconnect{Code: code, Reason: reason}
}

// readLoop reads client frames until the connection ends, enforcing
// RFC 6455 for what a server must check.
func (c *wsConn) readLoop() {
	defer c.conn.Close()
	ctx := context.Background()
	hb := c.srv.gw.Config().Heartbeat
	maxFrame := c.srv.maxFrame
	var (
		payload []byte    // the current frame's payload
		frag    []byte    // a fragmented data message being assembled
		fragOp  ws.OpCode // its opcode, while inFrag
		inFrag  bool
	)
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(3*hb + 5*time.Second))
		h, err := ws.ReadHeaderBuffer(c.conn, c.hdr[:])
		if err != nil {
			c.readFailed(err)
			return
		}
		switch {
		case h.Rsv != 0:
			c.fail(wsFail(1002, "reserved bits set without a negotiated extension"))
			return
		case !h.Masked:
			c.fail(wsFail(1002, "client frames must be masked"))
			return
		case h.OpCode.IsReserved():
			c.fail(wsFail(1002, "reserved opcode"))
			return
		case h.OpCode.IsControl() && (!h.Fin || h.Length > 125):
			c.fail(wsFail(1002, "control frames must be final and at most 125 bytes"))
			return
		case h.Length > int64(maxFrame) || int64(len(frag))+h.Length > int64(maxFrame):
			c.fail(gateway.Disconnect{Code: gateway.DisconnectTooLarge.Code,
				Reason: "frame too large: the limit is " + strconv.Itoa(maxFrame) + " bytes"})
			return
		}
		n := int(h.Length)
		if cap(payload) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(c.conn, payload); err != nil {
			c.readFailed(err)
			return
		}
		ws.Cipher(payload, h.Mask, 0)

		var op ws.OpCode
		var data []byte
		switch h.OpCode {
		case ws.OpPing:
			if err := c.writeControl(ws.OpPong, payload); err != nil {
				c.readFailed(err)
				return
			}
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			c.peerClosed(payload)
			return
		case ws.OpContinuation:
			if !inFrag {
				c.fail(wsFail(1002, "continuation frame without a message to continue"))
				return
			}
			frag = append(frag, payload...)
			if !h.Fin {
				continue
			}
			op, data, inFrag = fragOp, frag, false
		default: // text or binary
			if inFrag {
				c.fail(wsFail(1002, "new data frame inside a fragmented message"))
				return
			}
			if !h.Fin {
				inFrag, fragOp = true, h.OpCode
				frag = append(frag[:0], payload...)
				continue
			}
			op, data = h.OpCode, payload
		}
		if op == ws.OpText && !utf8.Valid(data) {
			c.fail(wsFail(1007, "text frame is not valid UTF-8"))
			return
		}
		c.sess.HandleFrame(ctx, data)
		frag = frag[:0]
		if cap(payload) > 4096 {
			payload = nil // keep no large buffer on an idle connection
		}
		if cap(frag) > 4096 {
			frag = nil
		}
	}
}

// fail ends the session for a protocol violation, then reads and discards
// what the client still sends until it closes or lingerTimeout passes, so
// the close packet and frame reach it (see Close).
func (c *wsConn) fail(d gateway.Disconnect) {
	c.sess.Close(d)
	_ = c.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.Copy(io.Discard, c.conn)
}

// readFailed ends the session after a read error: the peer went away or
// stopped answering heartbeats.
func (c *wsConn) readFailed(err error) {
	if !errors.Is(err, net.ErrClosed) {
		c.srv.log.Debug("websocket read ended", "sid", c.sess.ID(), "err", err)
	}
	c.sess.Close(gateway.DisconnectGone())
}

// peerClosed answers a client's close frame with the same code, as RFC 6455
// asks, after checking the code and reason are well-formed.
func (c *wsConn) peerClosed(payload []byte) {
	if len(payload) == 1 {
		c.fail(wsFail(1002, "close frame payload of one byte"))
		return
	}
	code, reason := ws.ParseCloseFrameData(payload)
	if len(payload) >= 2 {
		if err := ws.CheckCloseFrameData(code, reason); err != nil {
			if !utf8.ValidString(reason) {
				c.fail(wsFail(1007, "close reason is not valid UTF-8"))
			} else {
				c.fail(wsFail(1002, "invalid close code"))
			}
			return
		}
	}
	// Echo the code (an empty close is answered with an empty close), then
	// end the session; the client asked for it, so no close packet.
	var echo []byte
	if len(payload) >= 2 {
		echo = payload[:2]
	}
	_ = c.writeControl(ws.OpClose, echo)
	c.sess.Close(gateway.DisconnectGone())
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

// CloseWrite half-closes the underlying connection (see wsConn.Close).
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
