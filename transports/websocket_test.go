package transports

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"

	"github.com/cometgate/cometgate/gateway"
)

// The WebSocket tests talk to the real server through a deliberately
// low-level client: it writes every frame byte by byte (FIN, RSV, opcode,
// length encoding, mask) so it can send what a sloppy or hostile client
// would, and it reads the server's frames with gobwas/ws.

// wsFrame is one client frame as the test puts it on the wire.
type wsFrame struct {
	fin      bool
	rsv      byte // the three RSV bits, 0–7
	op       byte // the opcode, 0–15
	unmasked bool // clients must mask; set to break that rule
	payload  []byte
}

// bytes encodes the frame with the shortest length encoding (7, 16 or 64
// bits) and, unless unmasked, a random mask.
func (f wsFrame) bytes() []byte {
	b := []byte{(f.rsv&7)<<4 | f.op&0x0f}
	if f.fin {
		b[0] |= 0x80
	}
	var maskBit byte = 0x80
	if f.unmasked {
		maskBit = 0
	}
	n := len(f.payload)
	switch {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n <= 0xffff:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if f.unmasked {
		return append(b, f.payload...)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	b = append(b, key[:]...)
	for i, c := range f.payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// Opcodes, spelled out so the tests read like RFC 6455.
const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

func textFrame(s string) wsFrame { return wsFrame{fin: true, op: opText, payload: []byte(s)} }

func closeFrame(code uint16, reason string) wsFrame {
	return wsFrame{fin: true, op: opClose, payload: append(binary.BigEndian.AppendUint16(nil, code), reason...)}
}

// wsClient is one WebSocket session driven by the raw client.
type wsClient struct {
	t    testing.TB
	n    *testNode
	conn net.Conn
	br   *bufio.Reader
	sid  string
	sess *gateway.Session
	seq  uint64 // the last seq read; packets must continue it
}

const wsAcceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsUpgrade connects to the node and sends a WebSocket upgrade request for
// path with the extra headers hdr, immediately followed by early (frames a
// client pipelines before it has seen the answer). It returns the
// connection, a reader positioned after the response head, and the
// response (its body already read unless the status is 101).
func wsUpgrade(t testing.TB, n *testNode, path string, hdr http.Header, early []byte) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	addr := n.http.Listener.Addr().String()
	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	var key [16]byte
	_, _ = rand.Read(key[:])
	k := base64.StdEncoding.EncodeToString(key[:])
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", path, addr, k)
	for name, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", name, v)
		}
	}
	req.WriteString("\r\n")
	req.Write(early)
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatalf("upgrade request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return conn, br, resp
	}
	sum := sha1.Sum([]byte(k + wsAcceptGUID))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		t.Fatalf("Sec-WebSocket-Accept %q, want %q", got, want)
	}
	return conn, br, resp
}

// dialWS opens a WebSocket session and reads its hello.
func dialWS(t testing.TB, n *testNode) *wsClient {
	t.Helper()
	return dialWSWith(t, n, nil, nil)
}

func dialWSWith(t testing.TB, n *testNode, hdr http.Header, early []byte) *wsClient {
	t.Helper()
	conn, br, resp := wsUpgrade(t, n, "/ws", hdr, early)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade: %d %s", resp.StatusCode, body)
	}
	c := &wsClient{t: t, n: n, conn: conn, br: br}
	hello := c.next()
	if hello.T != gateway.TypeHello || hello.SID == "" || hello.seq() != 1 || hello.HB != 1 {
		t.Fatalf("first packet is not hello seq 1 hb 1: %+v", hello)
	}
	c.sid = hello.SID
	if c.sess = n.gw.Session(c.sid); c.sess == nil {
		t.Fatalf("session %s not found after hello", c.sid)
	}
	return c
}

// send writes frames in one write.
func (c *wsClient) send(frames ...wsFrame) {
	c.t.Helper()
	var b []byte
	for _, f := range frames {
		b = append(b, f.bytes()...)
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// readFrame reads one server frame; server frames are never masked, carry
// no RSV bits, and (from this server) are never fragmented.
func (c *wsClient) readFrame() (ws.Header, []byte) {
	c.t.Helper()
	return readServerFrame(c.t, c.conn, c.br, false)
}

// readServerFrame reads one server frame: never masked nor fragmented,
// no RSV bits but RSV1 on a data frame where compressed says it may be.
func readServerFrame(t testing.TB, conn net.Conn, br *bufio.Reader, compressed bool) (ws.Header, []byte) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
	h, err := ws.ReadHeader(br)
	if err != nil {
		t.Fatalf("reading a frame header: %v", err)
	}
	rsvOK := h.Rsv == 0 || compressed && h.Rsv1() && !h.Rsv2() && !h.Rsv3() && !h.OpCode.IsControl()
	if h.Masked || !rsvOK || !h.Fin {
		t.Fatalf("bad server frame header %+v", h)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatalf("reading a %d-byte payload: %v", h.Length, err)
	}
	return h, p
}

// frame reads the next server frame that is not a heartbeat ping
// (answered on the way: a test that is slow under -race may see one).
func (c *wsClient) frame() (ws.Header, []byte) {
	c.t.Helper()
	for {
		h, p := c.readFrame()
		if h.OpCode != ws.OpPing {
			return h, p
		}
		_, _ = c.conn.Write(wsFrame{fin: true, op: opPong, payload: p}.bytes()) // may be closing
	}
}

// decode parses a text frame as a packet and checks that a packet with a
// seq continues the session's numbering.
func (c *wsClient) decode(p []byte) packet {
	c.t.Helper()
	var pkt packet
	if err := json.Unmarshal(p, &pkt); err != nil {
		c.t.Fatalf("text frame is not a packet: %q: %v", p, err)
	}
	if pkt.Seq != nil {
		if pkt.seq() != c.seq+1 {
			c.t.Fatalf("seq %d after %d (gap or duplicate): %s", pkt.seq(), c.seq, p)
		}
		c.seq = pkt.seq()
	}
	return pkt
}

// next returns the next packet, answering pings on the way.
func (c *wsClient) next() packet {
	c.t.Helper()
	for {
		h, p := c.readFrame()
		switch h.OpCode {
		case ws.OpText:
			return c.decode(p)
		case ws.OpPing:
			c.send(wsFrame{fin: true, op: opPong, payload: p})
		case ws.OpPong:
		default:
			c.t.Fatalf("unexpected frame %v %q", h.OpCode, p)
		}
	}
}

// until returns packets up to and including the first for which match
// holds; an err packet it did not ask for fails the test.
func (c *wsClient) until(match func(packet) bool) []packet {
	c.t.Helper()
	var got []packet
	for {
		p := c.next()
		got = append(got, p)
		if match(p) {
			return got
		}
		if p.T == gateway.TypeErr || p.T == gateway.TypeClose {
			c.t.Fatalf("unexpected %+v", p)
		}
	}
}

// answer waits for the ok (or err) packet answering request id.
func (c *wsClient) answer(id int64) packet {
	c.t.Helper()
	for {
		p := c.next()
		if (p.T == gateway.TypeOK || p.T == gateway.TypeErr) && p.ID == id {
			return p
		}
		if p.T == gateway.TypeClose {
			c.t.Fatalf("closed while waiting for the answer to %d: %+v", id, p)
		}
	}
}

// sub subscribes with a frame and waits for its ok.
func (c *wsClient) sub(id int64, ch string) {
	c.t.Helper()
	c.send(textFrame(fmt.Sprintf(`{"op":"sub","id":%d,"ch":%q}`, id, ch)))
	if p := c.answer(id); p.T != gateway.TypeOK || p.Ch != ch {
		c.t.Fatalf("sub %s: %+v", ch, p)
	}
}

// expectClose reads until the server's close frame and checks that it
// carries code, after a close packet with the same code (other packets may
// come before). Then it answers the close as a client does, checks that
// the server ends the connection with nothing more, and that the session
// ended with code. It returns the close frame's reason.
func (c *wsClient) expectClose(code int) string {
	c.t.Helper()
	var closePkt *packet
	for {
		h, p := c.readFrame()
		switch h.OpCode {
		case ws.OpText:
			pkt := c.decode(p)
			if pkt.T == gateway.TypeClose {
				closePkt = &pkt
			} else if closePkt != nil {
				c.t.Fatalf("packet %s after the close packet", p)
			}
			continue
		case ws.OpPing, ws.OpPong:
			continue
		case ws.OpClose:
		default:
			c.t.Fatalf("unexpected frame %v %q", h.OpCode, p)
		}
		if len(p) < 2 {
			c.t.Fatalf("close frame without a code: %q", p)
		}
		got, reason := int(binary.BigEndian.Uint16(p)), string(p[2:])
		if got != code {
			c.t.Fatalf("close frame code %d (%q), want %d", got, reason, code)
		}
		if !utf8.ValidString(reason) || len(p) > 125 {
			c.t.Fatalf("bad close frame payload %q", p)
		}
		if closePkt == nil {
			c.t.Fatalf("close frame %d %q without a close packet first", got, reason)
		}
		if closePkt.Code != code || closePkt.Reason != reason || closePkt.Reconnect != (code >= 3000 && code < 4000) {
			c.t.Fatalf("close packet %+v does not match the close frame %d %q", *closePkt, got, reason)
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
		_, _ = c.conn.Write(closeFrame(uint16(code), "").bytes()) // the server may be gone already
		c.expectEOF()
		c.waitEnded(code)
		return reason
	}
}

// expectEOF checks that the server sends nothing more and ends the
// connection.
func (c *wsClient) expectEOF() {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(waitTimeout))
	rest, err := io.ReadAll(c.br)
	if len(rest) > 0 {
		c.t.Fatalf("%d bytes after the close frame: %q", len(rest), rest)
	}
	if err != nil {
		c.t.Fatalf("connection did not end cleanly: %v", err)
	}
	_ = c.conn.Close()
}

// waitEnded waits for the session to end and checks its close code (0:
// the peer went away or closed it).
func (c *wsClient) waitEnded(code int) {
	c.t.Helper()
	select {
	case <-c.sess.Done():
	case <-time.After(waitTimeout):
		c.t.Fatalf("session %s did not end", c.sid)
	}
	if got := c.sess.Reason().Code; got != code {
		c.t.Fatalf("session ended with %d (%s), want %d", got, c.sess.Reason().Reason, code)
	}
}

// waitReaders waits until every connection reader of n has returned: with
// all of a test's connections closed, nothing of them may be left.
func waitReaders(t testing.TB, n *testNode) {
	t.Helper()
	done := make(chan struct{})
	go func() { // returns at the latest when the node shuts down
		n.srv.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("connection readers still running")
	}
}

// noLeaks checks, after the test and its node are gone, that no goroutine
// it started is left.
func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(opt); err != nil {
			t.Error(err)
		}
	})
}

// TestWebSocketFragmented: a text message in three frames with a ping
// between two of them; the pong carries the ping's payload and comes at
// once, and the message is applied as a whole.
func TestWebSocketFragmented(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	msg := `{"op":"sub","id":1,"ch":"demo.frag"}`
	c.send(
		wsFrame{fin: false, op: opText, payload: []byte(msg[:10])},
		wsFrame{fin: true, op: opPing, payload: []byte("are you there?")},
		wsFrame{fin: false, op: opCont, payload: []byte(msg[10:20])},
		wsFrame{fin: true, op: opCont, payload: []byte(msg[20:])},
	)
	h, p := c.frame()
	if h.OpCode != ws.OpPong || string(p) != "are you there?" {
		t.Fatalf("want the pong first, got %v %q", h.OpCode, p)
	}
	if p := c.next(); p.T != gateway.TypeOK || p.ID != 1 || p.Ch != "demo.frag" {
		t.Fatalf("want ok 1 for the fragmented sub, got %+v", p)
	}
	n.publishN(t, "demo.frag", 7, 1)
	if p := c.next(); p.index() != 7 || p.Ch != "demo.frag" {
		t.Fatalf("want message 7, got %+v", p)
	}
	// An empty ping and an empty continuation are frames like any other.
	c.send(wsFrame{fin: false, op: opText, payload: []byte(`{"op":"ping",`)},
		wsFrame{fin: true, op: opPing},
		wsFrame{fin: false, op: opCont},
		wsFrame{fin: true, op: opCont, payload: []byte(`"id":2}`)})
	if h, p := c.frame(); h.OpCode != ws.OpPong || len(p) != 0 {
		t.Fatalf("want an empty pong, got %v %q", h.OpCode, p)
	}
	if p := c.answer(2); p.T != gateway.TypeOK {
		t.Fatalf("ping 2: %+v", p)
	}
	c.send(closeFrame(1000, "done"))
	if h, p := c.frame(); h.OpCode != ws.OpClose || !bytes.Equal(p, []byte{0x03, 0xe8}) {
		t.Fatalf("want the close echoed with 1000, got %v %q", h.OpCode, p)
	}
	c.expectEOF()
	c.waitEnded(0)
	waitReaders(t, n)
}

// TestWebSocketUTF8: a rune split between two fragments is valid (the
// message is checked whole); invalid UTF-8 in a text message or in a close
// reason fails the connection with 1007; binary messages are not text and
// are not checked.
func TestWebSocketUTF8(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)

	t.Run("split rune", func(t *testing.T) {
		c := dialWS(t, n)
		c.sub(1, "demo.utf")
		msg := []byte(`{"op":"pub","id":2,"ch":"demo.utf","text":"h€llo 𝄞"}`)
		cut := bytes.Index(msg, []byte("𝄞")) + 2 // inside the 4-byte rune
		c.send(wsFrame{op: opText, payload: msg[:cut]}, wsFrame{fin: true, op: opCont, payload: msg[cut:]})
		var gotMsg, gotOK bool
		for !gotMsg || !gotOK {
			p := c.next()
			switch {
			case p.T == gateway.TypeOK && p.ID == 2:
				gotOK = true
			case p.T == gateway.TypeMsg:
				if p.Text == nil || *p.Text != "h€llo 𝄞" {
					t.Fatalf("message text %+v", p)
				}
				gotMsg = true
			default:
				t.Fatalf("unexpected %+v", p)
			}
		}
		c.send(closeFrame(1000, ""))
		if h, _ := c.frame(); h.OpCode != ws.OpClose {
			t.Fatalf("want close, got %v", h.OpCode)
		}
		c.expectEOF()
		c.waitEnded(0)
	})

	t.Run("binary is not checked", func(t *testing.T) {
		c := dialWS(t, n)
		c.send(wsFrame{fin: true, op: opBinary, payload: []byte("{\"op\":\"ping\",\"id\":3,\"x\":\"\xff\"}")})
		if p := c.answer(3); p.T != gateway.TypeOK {
			t.Fatalf("binary ping: %+v", p)
		}
		c.send(closeFrame(1000, ""))
		c.frame()
		c.expectEOF()
		c.waitEnded(0)
	})

	for _, tc := range []struct {
		name   string
		frames []wsFrame
	}{
		{"text message", []wsFrame{textFrame("{\"op\":\"ping\",\"id\":1,\"x\":\"\xc3\x28\"}")}},
		{"overlong encoding", []wsFrame{textFrame("{\"op\":\"ping\",\"id\":1,\"x\":\"\xc0\xaf\"}")}},
		{"surrogate", []wsFrame{textFrame("{\"op\":\"ping\",\"id\":1,\"x\":\"\xed\xa0\x80\"}")}},
		{"rune cut at the end of a fragmented message", []wsFrame{
			{op: opText, payload: []byte(`{"op":"ping","id":1}`)},
			{fin: true, op: opCont, payload: []byte("\xe2\x82")},
		}},
		{"close reason", []wsFrame{closeFrame(1000, "bye \xff")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWS(t, n)
			c.send(tc.frames...)
			c.expectClose(1007)
		})
	}
	waitReaders(t, n)
}

// TestWebSocketProtocolErrors: every frame RFC 6455 forbids a client to
// send fails the connection with 1002, after the close packet.
func TestWebSocketProtocolErrors(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	ping := []byte(`{"op":"ping","id":1}`)
	cases := []struct {
		name   string
		frames []wsFrame
	}{
		{"unmasked text", []wsFrame{{fin: true, op: opText, unmasked: true, payload: ping}}},
		{"unmasked ping", []wsFrame{{fin: true, op: opPing, unmasked: true}}},
		{"RSV1", []wsFrame{{fin: true, rsv: 4, op: opText, payload: ping}}},
		{"RSV2", []wsFrame{{fin: true, rsv: 2, op: opText, payload: ping}}},
		{"RSV3", []wsFrame{{fin: true, rsv: 1, op: opText, payload: ping}}},
		{"RSV on a continuation", []wsFrame{{op: opText, payload: ping[:5]}, {fin: true, rsv: 4, op: opCont, payload: ping[5:]}}},
		{"ping of 126 bytes", []wsFrame{{fin: true, op: opPing, payload: bytes.Repeat([]byte{'x'}, 126)}}},
		{"close of 126 bytes", []wsFrame{{fin: true, op: opClose, payload: append([]byte{0x03, 0xe8}, bytes.Repeat([]byte{'x'}, 124)...)}}},
		{"fragmented ping", []wsFrame{{fin: false, op: opPing, payload: []byte("a")}}},
		{"fragmented close", []wsFrame{{fin: false, op: opClose, payload: []byte{0x03, 0xe8}}}},
		{"continuation without a message", []wsFrame{{fin: true, op: opCont, payload: ping}}},
		{"unfinished continuation without a message", []wsFrame{{fin: false, op: opCont, payload: ping}}},
		{"continuation after a complete message", []wsFrame{textFrame(`{"op":"ping","id":1}`), {fin: true, op: opCont, payload: ping}}},
		{"text inside a fragmented message", []wsFrame{{op: opText, payload: ping[:5]}, textFrame(`{"op":"ping","id":2}`)}},
		{"binary inside a fragmented message", []wsFrame{{op: opText, payload: ping[:5]}, {fin: true, op: opBinary, payload: ping}}},
		{"unfinished text inside a fragmented message", []wsFrame{{op: opBinary, payload: ping[:5]}, {op: opText, payload: ping[5:]}}},
		{"close payload of one byte", []wsFrame{{fin: true, op: opClose, payload: []byte{0x03}}}},
	}
	for op := byte(3); op <= 0xf; op++ {
		if op >= 8 && op <= 0xa {
			continue
		}
		cases = append(cases, struct {
			name   string
			frames []wsFrame
		}{fmt.Sprintf("reserved opcode %#x", op), []wsFrame{{fin: true, op: op, payload: []byte("x")}}})
	}
	// Codes a close frame may not carry: never used (0–999), reserved by
	// RFC 6455 for "no code" and "abnormal" and TLS (1005, 1006, 1015),
	// not assigned (1004, 1016–2999), and outside every range (5000+).
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, struct {
			name   string
			frames []wsFrame
		}{fmt.Sprintf("close code %d", code), []wsFrame{closeFrame(code, "")}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWS(t, n)
			c.send(tc.frames...)
			if reason := c.expectClose(1002); reason == "" {
				t.Fatalf("the close frame gives no reason")
			}
		})
	}
	waitReaders(t, n)
}

// TestWebSocketClientClose: a client's close with a valid code is echoed
// with that code, and the server then closes the connection; the session
// ends without a close packet (the client asked for it).
func TestWebSocketClientClose(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	for _, tc := range []struct {
		name    string
		payload []byte
		echo    []byte
	}{
		{"1000", closeFrame(1000, "").payload, []byte{0x03, 0xe8}},
		{"1000 with a reason", closeFrame(1000, "bye — à bientôt").payload, []byte{0x03, 0xe8}},
		{"1001", closeFrame(1001, "").payload, []byte{0x03, 0xe9}},
		{"3001", closeFrame(3001, "app code").payload, []byte{0x0b, 0xb9}},
		{"4999", closeFrame(4999, "").payload, []byte{0x13, 0x87}},
		{"empty", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWS(t, n)
			c.sub(1, "demo.cc")
			c.send(wsFrame{fin: true, op: opClose, payload: tc.payload})
			h, p := c.frame()
			if h.OpCode != ws.OpClose || !bytes.Equal(p, tc.echo) {
				t.Fatalf("want close %x, got %v %x", tc.echo, h.OpCode, p)
			}
			c.expectEOF()
			c.waitEnded(0)
		})
	}
	waitReaders(t, n)
	if got := n.gw.SessionCount(); got != 0 {
		t.Fatalf("%d sessions left", got)
	}
}

// TestWebSocketBinary: a binary frame carries the same JSON as a text
// frame.
func TestWebSocketBinary(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	c.send(wsFrame{fin: true, op: opBinary, payload: []byte(`{"op":"sub","id":4,"ch":"demo.bin"}`)})
	if p := c.answer(4); p.T != gateway.TypeOK || p.Ch != "demo.bin" {
		t.Fatalf("binary sub: %+v", p)
	}
	// Fragmented binary too.
	c.send(wsFrame{op: opBinary, payload: []byte(`{"op":"ping",`)}, wsFrame{fin: true, op: opCont, payload: []byte(`"id":5}`)})
	if p := c.answer(5); p.T != gateway.TypeOK {
		t.Fatalf("fragmented binary ping: %+v", p)
	}
	// A bad frame is answered with err 400 and does not end the session.
	c.send(wsFrame{fin: true, op: opBinary, payload: []byte("not json")})
	if p := c.next(); p.T != gateway.TypeErr || p.Code != 400 {
		t.Fatalf("want err 400, got %+v", p)
	}
	n.publishN(t, "demo.bin", 1, 1)
	if p := c.next(); p.index() != 1 {
		t.Fatalf("want message 1, got %+v", p)
	}
}

// TestWebSocketTooLarge: a message over MaxFrameBytes, in one frame or
// summed over fragments, ends the session with 1009, the close packet
// before the close frame. Exactly the limit is fine, and control frames
// in the middle of a fragmented message do not count towards it.
func TestWebSocketTooLarge(t *testing.T) {
	noLeaks(t)
	const limit = 256
	n := startNode(t, func(c *gateway.Config) { c.MaxFrameBytes = limit }, nil)
	// pad makes a ping frame of exactly size bytes (JSON allows trailing
	// spaces).
	pad := func(id, size int) []byte {
		b := fmt.Appendf(nil, `{"op":"ping","id":%d}`, id)
		return append(b, bytes.Repeat([]byte{' '}, size-len(b))...)
	}

	t.Run("at the limit", func(t *testing.T) {
		c := dialWS(t, n)
		c.send(wsFrame{fin: true, op: opText, payload: pad(1, limit)})
		if p := c.answer(1); p.T != gateway.TypeOK {
			t.Fatalf("ping of %d bytes: %+v", limit, p)
		}
		msg := pad(2, limit)
		c.send(wsFrame{op: opText, payload: msg[:100]},
			wsFrame{op: opCont, payload: msg[100:200]},
			wsFrame{fin: true, op: opPing, payload: bytes.Repeat([]byte{'p'}, 125)},
			wsFrame{fin: true, op: opCont, payload: msg[200:]})
		if h, p := c.frame(); h.OpCode != ws.OpPong || len(p) != 125 {
			t.Fatalf("want a 125-byte pong, got %v %d", h.OpCode, len(p))
		}
		if p := c.answer(2); p.T != gateway.TypeOK {
			t.Fatalf("fragmented ping of %d bytes: %+v", limit, p)
		}
	})

	t.Run("one frame", func(t *testing.T) {
		c := dialWS(t, n)
		c.send(wsFrame{fin: true, op: opText, payload: pad(1, limit+1)})
		if reason := c.expectClose(gateway.CodeMessageTooBig); !strings.Contains(reason, "256") {
			t.Fatalf("reason %q does not name the limit", reason)
		}
	})

	t.Run("fragments", func(t *testing.T) {
		c := dialWS(t, n)
		msg := pad(1, 3*100)
		c.send(wsFrame{op: opText, payload: msg[:100]}, wsFrame{op: opCont, payload: msg[100:200]})
		c.send(wsFrame{fin: true, op: opCont, payload: msg[200:]})
		c.expectClose(gateway.CodeMessageTooBig)
	})

	t.Run("declared length", func(t *testing.T) {
		// The header alone decides: the server does not wait for (or
		// allocate) a payload it will refuse.
		c := dialWS(t, n)
		f := wsFrame{fin: true, op: opText, payload: make([]byte, 1<<20)}.bytes()
		c.conn.Write(f[:14])
		c.expectClose(gateway.CodeMessageTooBig)
	})
	waitReaders(t, n)
}

// TestWebSocketLengthEncodings: the 7-, 16- and 64-bit length encodings,
// at their edges, both ways.
func TestWebSocketLengthEncodings(t *testing.T) {
	noLeaks(t)
	n := startNode(t, func(c *gateway.Config) { c.MaxFrameBytes = 1 << 20 }, nil)
	c := dialWS(t, n)
	for i, size := range []int{20, 125, 126, 127, 1000, 65535, 65536, 70000} {
		msg := fmt.Appendf(nil, `{"op":"ping","id":%d}`, i+1)
		msg = append(msg, bytes.Repeat([]byte{' '}, size-len(msg))...)
		c.send(wsFrame{fin: true, op: opText, payload: msg})
		if p := c.answer(int64(i + 1)); p.T != gateway.TypeOK {
			t.Fatalf("ping of %d bytes: %+v", size, p)
		}
	}
	// Server frames of each encoding: messages whose packets are short,
	// between 126 and 65535 bytes, and longer.
	c.sub(100, "demo.big")
	for i, size := range []int{10, 200, 70000} {
		text := strings.Repeat("é", size/2)
		c.send(textFrame(fmt.Sprintf(`{"op":"pub","id":%d,"ch":"demo.big","text":%q}`, 200+i, text)))
		var gotOK, gotMsg bool
		for !gotOK || !gotMsg {
			h, p := c.frame()
			if h.OpCode != ws.OpText {
				t.Fatalf("unexpected %v", h.OpCode)
			}
			pkt := c.decode(p)
			switch {
			case pkt.T == gateway.TypeOK && pkt.ID == int64(200+i):
				gotOK = true
			case pkt.T == gateway.TypeMsg:
				if pkt.Text == nil || *pkt.Text != text {
					t.Fatalf("message of %d bytes garbled", size)
				}
				gotMsg = true
			default:
				t.Fatalf("unexpected %+v", pkt)
			}
		}
	}
}

// TestWebSocketPipelined: frames sent right behind the upgrade request,
// before the client saw the answer, are read (net/http may have buffered
// them).
func TestWebSocketPipelined(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	early := append(textFrame(`{"op":"sub","id":1,"ch":"demo.early"}`).bytes(), textFrame(`{"op":"ping","id":2}`).bytes()...)
	c := dialWSWith(t, n, nil, early)
	if p := c.next(); p.T != gateway.TypeOK || p.ID != 1 {
		t.Fatalf("want ok 1, got %+v", p)
	}
	if p := c.next(); p.T != gateway.TypeOK || p.ID != 2 {
		t.Fatalf("want ok 2, got %+v", p)
	}
}

// TestWebSocketThousandInOrder: 1,000 messages published through the
// gateway arrive in order over one WebSocket with contiguous seq.
func TestWebSocketThousandInOrder(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	c.sub(1, "demo.t")
	const total = 1000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.publishN(t, "demo.t", 0, total)
	}()
	for want := 0; want < total; want++ {
		p := c.next() // checks seq
		if p.T != gateway.TypeMsg || p.Ch != "demo.t" || p.index() != want {
			wg.Wait()
			t.Fatalf("want message %d, got %+v", want, p)
		}
	}
	wg.Wait()
	if c.seq != total+2 { // hello, ok, then the messages
		t.Fatalf("last seq %d, want %d", c.seq, total+2)
	}
}

// TestWebSocketUpstream: a pub from a WebSocket is answered with ok once
// the broker confirmed it, and another session subscribed to the channel
// receives it.
func TestWebSocketUpstream(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	reader := dialWS(t, n)
	reader.sub(1, "demo.chat")
	writer := dialWS(t, n)
	writer.send(textFrame(`{"op":"pub","id":9,"ch":"demo.chat","data":{"bid":120}}`))
	if p := writer.answer(9); p.T != gateway.TypeOK || p.Ch != "demo.chat" {
		t.Fatalf("pub: %+v", p)
	}
	if p := reader.next(); p.T != gateway.TypeMsg || p.Ch != "demo.chat" || string(p.Data) != `{"bid":120}` {
		t.Fatalf("delivery: %+v", p)
	}
	// Refused publishes are answered, not dropped, and end nothing.
	writer.send(textFrame(`{"op":"pub","id":10,"ch":"secret.x","text":"no"}`))
	if p := writer.answer(10); p.T != gateway.TypeErr || p.Code != 403 {
		t.Fatalf("pub outside the rules: %+v", p)
	}
	writer.send(textFrame(`{"op":"pub","id":11,"ch":"demo.chat","text":"hi"}`))
	if p := writer.answer(11); p.T != gateway.TypeOK {
		t.Fatalf("pub: %+v", p)
	}
	if p := reader.next(); p.T != gateway.TypeMsg || p.Text == nil || *p.Text != "hi" {
		t.Fatalf("delivery: %+v", p)
	}
}

// TestWebSocketHeartbeat: an idle WebSocket gets ping frames at the
// heartbeat interval (1s here); answering them keeps it open.
func TestWebSocketHeartbeat(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	for pings := 0; pings < 2; {
		h, p := c.readFrame()
		if h.OpCode != ws.OpPing {
			t.Fatalf("idle connection got %v %q", h.OpCode, p)
		}
		pings++
		c.send(wsFrame{fin: true, op: opPong, payload: p})
	}
	c.send(textFrame(`{"op":"ping","id":1}`))
	if p := c.answer(1); p.T != gateway.TypeOK {
		t.Fatalf("ping: %+v", p)
	}
}

// TestWebSocketShutdown: a node going away closes every WebSocket with
// 3000 (reconnect), the close packet first.
func TestWebSocketShutdown(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	c.sub(1, "demo.s")
	shut := make(chan error, 1)
	go func() { shut <- n.gw.Shutdown(t.Context()) }()
	c.expectClose(gateway.DisconnectShutdown.Code)
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	waitReaders(t, n)
}

// TestWebSocketLingerBounded: after the server sent its close frame, a
// client that ignores it and keeps sending frames cannot keep the
// connection (and its reader goroutine) alive: the server closes it after
// the linger time, so a node's shutdown is not held up.
func TestWebSocketLingerBounded(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	if err := n.gw.Shutdown(t.Context()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for {
		h, _ := c.frame()
		if h.OpCode == ws.OpClose {
			break
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the stubborn client: a pong and a message every 100ms
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			b := append(wsFrame{fin: true, op: opPong}.bytes(), textFrame(`{"op":"ping","id":1}`).bytes()...)
			if _, err := c.conn.Write(b); err != nil {
				return
			}
		}
	}()
	waitReaders(t, n)
	close(stop)
	wg.Wait()
}

// TestWebSocketCloseUnderPings: the close frame is sent even while the
// reader is answering a flood of pings (the close must wait for the pong
// being written, not give up).
func TestWebSocketCloseUnderPings(t *testing.T) {
	noLeaks(t)
	for i := 0; i < 20; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			n := startNode(t, nil, nil)
			c := dialWS(t, n)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				ping := wsFrame{fin: true, op: opPing, payload: bytes.Repeat([]byte{'p'}, 125)}.bytes()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := c.conn.Write(ping); err != nil {
						return
					}
				}
			}()
			shut := make(chan error, 1)
			go func() { shut <- n.gw.Shutdown(t.Context()) }()
			var closed bool
			for !closed {
				_ = c.conn.SetReadDeadline(time.Now().Add(waitTimeout))
				h, err := ws.ReadHeader(c.br)
				if err != nil {
					close(stop)
					wg.Wait()
					t.Fatalf("round %d: no close frame before %v", i, err)
				}
				if _, err := io.CopyN(io.Discard, c.br, h.Length); err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
				closed = h.OpCode == ws.OpClose
			}
			close(stop)
			wg.Wait()
			_ = c.conn.Close()
			if err := <-shut; err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			waitReaders(t, n)
		})
	}
}

// TestWebSocketOrigin: a browser page from another site may not open a
// WebSocket (cross-site WebSocket hijacking) unless its Origin is allowed;
// requests without Origin (not from a browser) and from the same host
// are accepted.
func TestWebSocketOrigin(t *testing.T) {
	noLeaks(t)
	refused := func(t *testing.T, n *testNode, origin string) {
		t.Helper()
		_, _, resp := wsUpgrade(t, n, "/ws", http.Header{"Origin": {origin}}, nil)
		body, _ := io.ReadAll(resp.Body)
		var e errorBody
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Content-Type") != "application/json" ||
			json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "origin not allowed") {
			t.Fatalf("origin %s: %d %q %s", origin, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if c := n.gw.SessionCount(); c != 0 {
			t.Fatalf("a refused upgrade left %d sessions", c)
		}
	}
	accepted := func(t *testing.T, n *testNode, origin string) {
		t.Helper()
		var hdr http.Header
		if origin != "" {
			hdr = http.Header{"Origin": {origin}}
		}
		c := dialWSWith(t, n, hdr, nil)
		c.send(closeFrame(1000, ""))
		c.frame()
		c.expectEOF()
		c.waitEnded(0)
	}

	t.Run("default", func(t *testing.T) {
		n := startNode(t, nil, nil)
		refused(t, n, "http://evil.example")
		refused(t, n, "null")
		refused(t, n, "http://127.0.0.1.evil.example")
		accepted(t, n, "")
		accepted(t, n, "http://"+n.http.Listener.Addr().String())
	})
	t.Run("allowed list", func(t *testing.T) {
		n := startNode(t, nil, func(o *Options) { o.AllowedOrigins = []string{"https://app.example"} })
		accepted(t, n, "https://app.example")
		accepted(t, n, "")
		refused(t, n, "http://evil.example")
		refused(t, n, "http://app.example") // another scheme is another origin
	})
	t.Run("not an upgrade", func(t *testing.T) {
		n := startNode(t, nil, nil)
		status, body := httpGetRaw(t, n, "/ws")
		if status != http.StatusBadRequest {
			t.Fatalf("plain GET /ws: %d %s", status, body)
		}
		waitFor(t, "the session of a failed upgrade to end", func() bool { return n.gw.SessionCount() == 0 })
	})
}

// httpGetRaw is a GET that checks nothing but returns status and body.
func httpGetRaw(t *testing.T, n *testNode, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, n.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, body
}
