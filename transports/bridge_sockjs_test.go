package transports

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/cometgate/cometgate/gateway"
)

// The TCP bridge through SockJS endpoints in tcp mode: each message is a
// byte string (one character per byte, U+0000 to U+00FF), both ways.

// sjsByteString is p as a byte string.
func sjsByteString(p []byte) string {
	rs := make([]rune, len(p))
	for i, b := range p {
		rs[i] = rune(b)
	}
	return string(rs)
}

// sjsSendBody is an xhr_send body carrying p as one message.
func sjsSendBody(t *testing.T, p []byte) string {
	t.Helper()
	q, err := json.Marshal(sjsByteString(p))
	if err != nil {
		t.Fatal(err)
	}
	return "[" + string(q) + "]"
}

// sjsMessageBytes decodes the messages of an "a" frame as byte strings.
func sjsMessageBytes(t *testing.T, frame string) []byte {
	t.Helper()
	var out []byte
	for _, m := range sjsFrameMessages(t, frame) {
		for _, r := range m {
			if r > 0xFF {
				t.Fatalf("message %q has %U, not a byte", m, r)
			}
			out = append(out, byte(r))
		}
	}
	return out
}

// byePayload is what the bye target sends before it closes: every byte
// value, then a numbered stream.
var byePayload = appendSeq(allBytes(), 0, 40<<10)

// bridgeSJSNode is a node with tcp endpoints for these targets: echo, bye
// (sends byePayload and closes), closed (nothing listens) and local (on
// loopback, which its target does not allow).
func bridgeSJSNode(t *testing.T) *sjsNode {
	t.Helper()
	echo := startTarget(t, echoServe)
	bye := startTarget(t, func(c net.Conn) { _, _ = c.Write(byePayload) })
	local := startTarget(t, echoServe)
	targets := []BridgeTarget{
		{Name: "echo", Address: echo.addr(), AllowNetworks: bridgeLoopback},
		{Name: "bye", Address: bye.addr(), AllowNetworks: bridgeLoopback},
		{Name: "closed", Address: closedAddr(t), AllowNetworks: bridgeLoopback},
		{Name: "local", Address: local.addr()},
	}
	eps := []SockJSEndpoint{
		{Prefix: "/tcpecho", Mode: SockJSTCP, Target: "echo", Websocket: true},
		{Prefix: "/tcpbye", Mode: SockJSTCP, Target: "bye", Websocket: true},
		{Prefix: "/tcpclosed", Mode: SockJSTCP, Target: "closed"},
		{Prefix: "/tcplocal", Mode: SockJSTCP, Target: "local", Websocket: true},
	}
	if err := ValidateBridge(targets, eps); err != nil {
		t.Fatal(err)
	}
	return sjsStartNode(t, eps, func(_ *gateway.Config, o *Options) { o.Bridge = targets })
}

// sjsXHRStream reads a session's xhr_streaming responses, opening the
// next one when one ends (at the endpoint's response limit).
type sjsXHRStream struct {
	t   *testing.T
	n   *sjsNode
	url string // the session's URL
	st  *sjsStream
}

// sjsOpenXHRStream opens a new session's first xhr_streaming response and
// reads its open frame.
func sjsOpenXHRStream(t *testing.T, n *sjsNode, url string) *sjsXHRStream {
	t.Helper()
	x := &sjsXHRStream{t: t, n: n, url: url}
	x.connect()
	if got := x.st.until("\n"); got != "o\n" {
		t.Fatalf("first frame %q, want the open frame", got)
	}
	return x
}

func (x *sjsXHRStream) connect() {
	x.t.Helper()
	x.st = x.n.stream(x.t, http.MethodPost, x.url+"/xhr_streaming")
	if x.st.resp.StatusCode != http.StatusOK {
		x.t.Fatalf("xhr_streaming: %d", x.st.resp.StatusCode)
	}
	if got := x.st.read(2049); got != strings.Repeat("h", 2048)+"\n" {
		x.t.Fatalf("prelude %q", got[:16])
	}
}

// frame returns the next frame that is not a heartbeat, opening the next
// response when one ended.
func (x *sjsXHRStream) frame() string {
	x.t.Helper()
	for {
		line, err := x.st.r.ReadString('\n')
		switch {
		case err == io.EOF && line == "":
			x.st.close()
			x.connect()
			continue
		case err != nil:
			x.t.Fatalf("reading the stream: %v (got %q)", err, line)
		case line == "h\n":
			continue
		}
		return line
	}
}

// bytes reads frames until they carried n bytes.
func (x *sjsXHRStream) bytes(n int) []byte {
	x.t.Helper()
	var got []byte
	for len(got) < n {
		got = append(got, sjsMessageBytes(x.t, x.frame())...)
	}
	if len(got) > n {
		x.t.Fatalf("%d bytes, want %d", len(got), n)
	}
	return got
}

func allBytes() []byte {
	p := make([]byte, 256)
	for i := range p {
		p[i] = byte(i)
	}
	return p
}

// TestBridgeSockJSXHR: the tcp mode over xhr_streaming and xhr_send.
func TestBridgeSockJSXHR(t *testing.T) {
	n := bridgeSJSNode(t)

	t.Run("every byte value", func(t *testing.T) {
		url := n.url("/tcpecho/000/" + sjsSID())
		x := sjsOpenXHRStream(t, n, url)
		want := allBytes()
		for _, p := range [][]byte{want, append([]byte("plain ASCII\r\n"), 0xff, 0x00, 0x80)} {
			if r := n.do(t, http.MethodPost, url+"/xhr_send", sjsSendBody(t, p)); r.status != http.StatusNoContent {
				t.Fatalf("send: %d %s", r.status, r.body)
			}
			if got := x.bytes(len(p)); !bytes.Equal(got, p) {
				t.Fatalf("echo:\n got %q\nwant %q", got, p)
			}
		}
		if hasPoller() {
			// As the native bridge's: an idle target waits in the node's
			// poller.
			waitFor(t, "the target's pump parked", func() bool {
				return goroutinesIn("transports.(*bridgeLink).pump") == 0 && goroutinesIn("transports.(*bridgeLink).pumpParking") == 0
			})
		}
	})

	t.Run("not a byte string", func(t *testing.T) {
		url := n.url("/tcpecho/000/" + sjsSID())
		x := sjsOpenXHRStream(t, n, url)
		n.do(t, http.MethodPost, url+"/xhr_send", `["ok \u00ff"]`)
		if got := x.bytes(4); string(got) != "ok \xff" {
			t.Fatalf("echo %q", got)
		}
		// The first message goes to the target; the second ends the
		// session (what the target answers to the first may or may not
		// come before the close frame).
		n.do(t, http.MethodPost, url+"/xhr_send", `["fine", "bad \u0100"]`)
		f := x.frame()
		if strings.HasPrefix(f, "a") {
			if got := sjsMessageBytes(t, f); string(got) != "fine" {
				t.Fatalf("echo %q", got)
			}
			f = x.frame()
		}
		if got := f; got != `c[4000,"message is not a byte string (a character above U+00FF)"]`+"\n" {
			t.Fatalf("close frame %q", got)
		}
		x.st.eof()
	})

	t.Run("target unreachable", func(t *testing.T) {
		x := sjsOpenXHRStream(t, n, n.url("/tcpclosed/000/"+sjsSID()))
		if got := x.frame(); got != `c[3502,"target unreachable"]`+"\n" {
			t.Fatalf("close frame %q", got)
		}
		x.st.eof()
	})

	t.Run("target address not allowed", func(t *testing.T) {
		x := sjsOpenXHRStream(t, n, n.url("/tcplocal/000/"+sjsSID()))
		if got := x.frame(); got != `c[4403,"target address not allowed"]`+"\n" {
			t.Fatalf("close frame %q", got)
		}
		x.st.eof()
	})

	t.Run("target closes", func(t *testing.T) {
		x := sjsOpenXHRStream(t, n, n.url("/tcpbye/000/"+sjsSID()))
		if got := x.bytes(len(byePayload)); !bytes.Equal(got, byePayload) {
			t.Fatalf("%d bytes do not match what the target sent", len(got))
		}
		if got := x.frame(); got != `c[1000,"target closed the connection"]`+"\n" {
			t.Fatalf("close frame %q", got)
		}
		x.st.eof()
	})

	t.Run("target closes, polling", func(t *testing.T) {
		url := n.url("/tcpbye/000/" + sjsSID())
		if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "o\n" {
			t.Fatalf("first poll %q", r.body)
		}
		var got []byte
		for {
			r := n.do(t, http.MethodPost, url+"/xhr", "")
			if strings.HasPrefix(r.body, "c") {
				if r.body != `c[1000,"target closed the connection"]`+"\n" {
					t.Fatalf("close frame %q", r.body)
				}
				break
			}
			got = append(got, sjsMessageBytes(t, r.body)...)
		}
		if !bytes.Equal(got, byePayload) {
			t.Fatalf("%d bytes before the close do not match what the target sent", len(got))
		}
	})
}

// TestBridgeSockJSWebSocket: the tcp mode over the SockJS websocket
// transport, and the raw /websocket, which is the native bridge.
func TestBridgeSockJSWebSocket(t *testing.T) {
	n := bridgeSJSNode(t)

	t.Run("sockjs framing", func(t *testing.T) {
		c := sjsDialWS(t, n.url("/tcpecho/000/"+sjsSID()+"/websocket"), nil)
		if got := c.recv(); got != "o" {
			t.Fatalf("open %q", got)
		}
		want := allBytes()
		c.send(sjsSendBody(t, want))
		var got []byte
		for len(got) < len(want) {
			got = append(got, sjsMessageBytes(t, c.recv())...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("echo:\n got %q\nwant %q", got, want)
		}
		c.send(`["\u0100"]`)
		if got := c.recv(); got != `c[4000,"message is not a byte string (a character above U+00FF)"]` {
			t.Fatalf("close frame %q", got)
		}
		c.closed()
	})

	t.Run("sockjs framing, target closes", func(t *testing.T) {
		c := sjsDialWS(t, n.url("/tcpbye/000/"+sjsSID()+"/websocket"), nil)
		if got := c.recv(); got != "o" {
			t.Fatalf("open %q", got)
		}
		var got []byte
		for {
			f := c.recv()
			if strings.HasPrefix(f, "c") {
				if f != `c[1000,"target closed the connection"]` {
					t.Fatalf("close frame %q", f)
				}
				break
			}
			got = append(got, sjsMessageBytes(t, f)...)
		}
		if !bytes.Equal(got, byePayload) {
			t.Fatalf("%d bytes before the close do not match what the target sent", len(got))
		}
		c.closed()
	})

	t.Run("raw", func(t *testing.T) {
		c := sjsDialWS(t, n.url("/tcpecho/websocket"), nil)
		want := allBytes()
		_ = c.conn.SetDeadline(time.Now().Add(sjsWait))
		if err := wsutil.WriteClientBinary(c.conn, want); err != nil {
			t.Fatal(err)
		}
		var got []byte
		for len(got) < len(want) {
			p, op, err := wsutil.ReadServerData(c.conn)
			if err != nil {
				t.Fatal(err)
			}
			if op != ws.OpBinary {
				t.Fatalf("%v message, want binary", op)
			}
			got = append(got, p...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("echo:\n got %q\nwant %q", got, want)
		}
	})

	t.Run("raw refusal", func(t *testing.T) {
		r := n.do(t, http.MethodGet, n.url("/tcplocal/websocket"), "", "Upgrade", "websocket", "Connection", "Upgrade",
			"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw==")
		if r.status != http.StatusForbidden || r.body != `{"error":"target address not allowed","code":4403}`+"\n" {
			t.Fatalf("%d %q", r.status, r.body)
		}
	})
}

// TestBridgeSockJSDialReason: a message that waits for the connection to
// the target does not change how the session ends when connecting fails:
// the client gets the dial's reason (here 4403, which tells it not to
// retry), not 3502 (which would make it reconnect again and again).
func TestBridgeSockJSDialReason(t *testing.T) {
	tg := startTarget(t, echoServe)
	targets := []BridgeTarget{{Name: "slow", Address: "slow.example:" + tg.port()}}
	eps := []SockJSEndpoint{{Prefix: "/tcpslow", Mode: SockJSTCP, Target: "slow"}}
	n := sjsStartNode(t, eps, func(_ *gateway.Config, o *Options) { o.Bridge = targets })
	// The name resolves to loopback, which the target does not allow, once
	// the test lets the lookup answer.
	entered := make(chan struct{}, 1)
	var release chan struct{}
	n.srv.bridge.lookup = func(ctx context.Context, _, _ string) ([]netip.Addr, error) {
		entered <- struct{}{}
		select {
		case <-release:
			return addrs("127.0.0.1"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for i := range 20 {
		release = make(chan struct{})
		url := n.url("/tcpslow/000/" + sjsSID())
		x := sjsOpenXHRStream(t, n, url)
		<-entered
		sent := make(chan error, 1)
		go func() {
			resp, err := n.client.Post(url+"/xhr_send", "text/plain", strings.NewReader(`["CONNECT\n\n\u0000"]`))
			if err == nil {
				resp.Body.Close()
			}
			sent <- err
		}()
		// Give the message time to reach the session and wait for the
		// connection; the outcome must not depend on whether it did.
		time.Sleep(10 * time.Millisecond)
		close(release)
		if got := x.frame(); got != `c[4403,"target address not allowed"]`+"\n" {
			t.Fatalf("round %d: close frame %q", i, got)
		}
		if err := <-sent; err != nil {
			t.Fatalf("round %d: send: %v", i, err)
		}
		x.st.close()
	}
	tg.untouched(t)
}
