package main

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
)

// WebSocket client on github.com/gobwas/ws: the handshake is gobwas's, the
// frames are read by hand from a small bufio.Reader, so a connection costs
// one buffer of --read-buffer bytes and, for a frame that fits in it, no
// copy at all (the packet is a slice of the buffer).

func init() { registerTransport("ws", wsTransport{}) }

type wsTransport struct{}

var _ clientTransport = wsTransport{}

func (wsTransport) Open(ctx context.Context, o openOptions) (packetStream, error) {
	u := *o.Base
	u.Scheme = "ws"
	u.Path = "/ws"
	conn, err := o.Dial(ctx, hostPort(o.Base))
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	var status string
	d := ws.Dialer{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		OnStatusError: func(code int, reason []byte, resp io.Reader) {
			// One read, not ReadAll: the gateway keeps the connection
			// open after a refusal, so reading to the end would wait
			// for the open timeout. Its JSON error bodies are small and
			// come with the head.
			var body [512]byte
			n, _ := resp.Read(body[:])
			status = fmt.Sprintf("%d %s: %s", code, reason, bytes.TrimSpace(body[:n]))
		},
	}
	if o.Deflate {
		// The gateway answers with no context takeover both ways, so
		// every message inflates on its own and nothing is sent
		// compressed (the sub frame is small).
		d.Extensions = []httphead.Option{{Name: []byte("permessage-deflate")}}
	}
	br, hs, err := d.Upgrade(conn, &u)
	if err != nil {
		_ = conn.Close()
		if status != "" {
			return nil, fmt.Errorf("websocket handshake: %s", status)
		}
		return nil, fmt.Errorf("websocket handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	var rd io.Reader = conn
	var pre *bytes.Reader
	if br != nil {
		// Frames that came with the handshake response are read first.
		left, _ := br.Peek(br.Buffered())
		pre = bytes.NewReader(append([]byte(nil), left...))
		rd = io.MultiReader(pre, conn)
		ws.PutReader(br)
	}
	c := &wsStream{conn: conn, pre: pre, r: bufio.NewReaderSize(rd, o.ReadBuffer), deflate: len(hs.Extensions) > 0}
	if o.Deflate && !c.deflate {
		_ = conn.Close()
		return nil, errors.New("websocket handshake: the gateway declined permessage-deflate")
	}
	sub := []byte(`{"op":"sub","id":1,"ch":` + strconv.Quote(o.Channel) + `}`)
	if err := c.writeFrame(ws.OpText, sub); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("sending sub: %w", err)
	}
	return c, nil
}

// wsStream reads server frames. Only the reader goroutine writes (pongs,
// the sub frame before it starts), so writes need no lock.
type wsStream struct {
	conn    net.Conn
	pre     *bytes.Reader // bytes that came with the handshake, or nil
	r       *bufio.Reader
	discard int    // bytes of the previous frame still in r's buffer
	big     []byte // payloads that do not fit in r's buffer
	hdr     [ws.MaxHeaderSize]byte
	deflate bool // permessage-deflate was negotiated
}

// Next returns the payload of the next text or binary frame, answering
// pings on the way. A close frame ends the stream with errWSClosed.
func (c *wsStream) Next() ([]byte, error) {
	if c.discard > 0 {
		_, _ = c.r.Discard(c.discard)
		c.discard = 0
	}
	for {
		h, err := ws.ReadHeaderBuffer(c.r, c.hdr[:])
		if err != nil {
			return nil, err
		}
		if h.Length > 64<<20 {
			return nil, fmt.Errorf("websocket frame of %d bytes", h.Length)
		}
		n := int(h.Length)
		var p []byte
		if n <= c.r.Size() {
			p, err = c.r.Peek(n)
			if err != nil {
				return nil, err
			}
			c.discard = n
		} else {
			if cap(c.big) < n {
				c.big = make([]byte, n)
			}
			p = c.big[:n]
			if _, err := io.ReadFull(c.r, p); err != nil {
				return nil, err
			}
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpText, ws.OpBinary:
			if !h.Fin {
				return nil, errors.New("fragmented websocket message (the gateway sends whole frames)")
			}
			if h.Rsv1() {
				return inflateMessage(c.deflate, p)
			}
			return p, nil
		case ws.OpPing:
			pl := append([]byte(nil), p...)
			c.skip()
			if err := c.writeFrame(ws.OpPong, pl); err != nil {
				return nil, err
			}
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(p)
			c.skip()
			_ = c.writeFrame(ws.OpClose, ws.NewCloseFrameBody(code, ""))
			return nil, &wsClosedError{code: int(code), reason: reason}
		default:
			c.skip()
		}
	}
}

func (c *wsStream) skip() {
	if c.discard > 0 {
		_, _ = c.r.Discard(c.discard)
		c.discard = 0
	}
}

func (c *wsStream) writeFrame(op ws.OpCode, payload []byte) error {
	return writeClientFrame(c.conn, op, payload)
}

// writeClientFrame writes one masked client frame to the connection, or
// to the poller's descriptor of it (fdWriter), within 10 seconds.
func writeClientFrame(w io.Writer, op ws.OpCode, payload []byte) error {
	f := ws.MaskFrameInPlace(ws.NewFrame(op, true, append([]byte(nil), payload...)))
	b, err := ws.CompileFrame(f)
	if err != nil {
		return err
	}
	if conn, ok := w.(net.Conn); ok {
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	}
	_, err = w.Write(b)
	return err
}

func (c *wsStream) Close() error { return abortClose(c.conn) }

var _ pollable = (*wsStream)(nil)

// Handover gives the connection to the event loop (see pollable).
func (c *wsStream) Handover() (net.Conn, []byte, streamParser) {
	c.skip()
	rest, _ := c.r.Peek(c.r.Buffered())
	rest = append([]byte(nil), rest...)
	if c.pre != nil && c.pre.Len() > 0 {
		more := make([]byte, c.pre.Len())
		_, _ = c.pre.Read(more)
		rest = append(rest, more...)
	}
	return c.conn, rest, &wsParser{out: c.conn, deflate: c.deflate}
}

// wsParser cuts server frames out of the bytes the event loop reads, and
// answers the server's pings and close frames.
type wsParser struct {
	out     io.Writer // where answers go: the connection, then the poller's descriptor of it
	left    []byte    // an incomplete frame from the previous read
	deflate bool      // permessage-deflate was negotiated
}

func (p *wsParser) answerTo(w io.Writer) { p.out = w }

func (p *wsParser) Feed(b []byte, emit func([]byte)) error {
	if len(p.left) > 0 {
		p.left = append(p.left, b...)
		b = p.left
	}
	for len(b) >= 2 {
		fin, op, rsv1 := b[0]&0x80 != 0, ws.OpCode(b[0]&0x0f), b[0]&0x40 != 0
		masked := b[1]&0x80 != 0
		n, hl := uint64(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				break
			}
			n, hl = uint64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				break
			}
			n, hl = binary.BigEndian.Uint64(b[2:]), 10
		}
		if n >= 126 && hl == 2 {
			break // the extended length has not arrived
		}
		if n > 64<<20 {
			return fmt.Errorf("websocket frame of %d bytes", n)
		}
		if masked {
			hl += 4
		}
		if uint64(len(b)) < uint64(hl)+n {
			break
		}
		payload := b[hl : hl+int(n)]
		if masked {
			var key [4]byte
			copy(key[:], b[hl-4:hl])
			ws.Cipher(payload, key, 0)
		}
		b = b[hl+int(n):]
		switch op {
		case ws.OpText, ws.OpBinary:
			if !fin {
				return errors.New("fragmented websocket message (the gateway sends whole frames)")
			}
			if rsv1 {
				var err error
				if payload, err = inflateMessage(p.deflate, payload); err != nil {
					return err
				}
			}
			emit(payload)
		case ws.OpPing:
			if err := writeClientFrame(p.out, ws.OpPong, payload); err != nil {
				return err
			}
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(payload)
			_ = writeClientFrame(p.out, ws.OpClose, ws.NewCloseFrameBody(code, ""))
			return &wsClosedError{code: int(code), reason: reason}
		case ws.OpContinuation:
			return errors.New("websocket continuation frame (the gateway sends whole frames)")
		}
	}
	p.left = keepRest(p.left, b)
	return nil
}

// keepRest keeps the unparsed rest b (which may alias left) in left.
func keepRest(left, b []byte) []byte {
	if len(b) == 0 {
		if cap(left) > 64<<10 {
			return nil
		}
		return left[:0]
	}
	return append(left[:0], b...) // copy: b may alias left's tail
}

// wsClosedError is the end of a stream by a close frame.
type wsClosedError struct {
	code   int
	reason string
}

func (e *wsClosedError) Error() string {
	return fmt.Sprintf("websocket closed by the server: %d %s", e.code, e.reason)
}

// Compressed messages (RFC 7692): the gateway compresses each message on
// its own, so one pooled decompressor inflates any of them.

// deflateTail completes a compressed message for compress/flate: the
// 00 00 ff ff RFC 7692 removes, then an empty final block.
var deflateTail = []byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}

var inflaters = sync.Pool{New: func() any { return flate.NewReader(nil) }}

// inflateMessage inflates the payload of a message whose first frame had
// RSV1, which only a connection that negotiated deflate may receive.
func inflateMessage(negotiated bool, p []byte) ([]byte, error) {
	if !negotiated {
		return nil, errors.New("compressed websocket message without permessage-deflate")
	}
	fr := inflaters.Get().(io.ReadCloser)
	defer inflaters.Put(fr)
	if err := fr.(flate.Resetter).Reset(io.MultiReader(bytes.NewReader(p), bytes.NewReader(deflateTail)), nil); err != nil {
		return nil, err
	}
	out, err := io.ReadAll(fr)
	if err != nil {
		return nil, fmt.Errorf("inflating a websocket message: %w", err)
	}
	return out, nil
}
