package transports

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/cometgate/cometgate/gateway"
)

// sjsWait bounds every wait in the SockJS tests; generous for -race on a
// busy machine. Nothing asserts how fast anything is.
const sjsWait = 20 * time.Second

// sjsNode is a node of startNode's (a gateway on a real embedded NATS
// server and the real transports.Server) with SockJS endpoints, and the
// SockJS tests' helpers.
type sjsNode struct{ *testNode }

// sjsTestEndpoints are the services the protocol's test suite expects:
// echo (response limit lowered to 4096 bytes, as the suite asks),
// disabled_websocket_echo, cookie_needed_echo, and a pubsub endpoint.
func sjsTestEndpoints() []SockJSEndpoint {
	return []SockJSEndpoint{
		{Prefix: "/echo", Mode: SockJSEcho, Websocket: true, ResponseLimit: 4096},
		{Prefix: "/disabled_websocket_echo", Mode: SockJSEcho, ResponseLimit: 4096},
		{Prefix: "/cookie_needed_echo", Mode: SockJSEcho, Websocket: true, CookieNeeded: true, ResponseLimit: 4096},
		{Prefix: "/pubsub", Mode: SockJSPubSub, Websocket: true},
	}
}

// sjsStartNode starts a node; adjust may change the configuration.
// Cleanup shuts it down in the production order (gateway, HTTP, broker).
func sjsStartNode(t *testing.T, eps []SockJSEndpoint, adjust func(*gateway.Config, *Options)) *sjsNode {
	t.Helper()
	o := Options{AllowedOrigins: []string{"*"}, SockJS: eps}
	n := startNode(t, func(c *gateway.Config) {
		// The gateway's own heartbeat and disconnect delay, whose timing
		// the SockJS protocol's tests expect, not startNode's short ones.
		c.Heartbeat, c.DisconnectDelay = 0, 0
		if adjust != nil {
			adjust(c, &o)
		}
	}, func(so *Options) {
		o.Gateway, o.Logger = so.Gateway, so.Logger
		*so = o
	})
	return &sjsNode{n}
}

func (n *sjsNode) endpoint(t *testing.T, cfg SockJSEndpoint) (*sockjsEndpoint, string) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ep := newSockJSEndpoint(n.srv.node, cfg.withDefaults())
	hs := httptest.NewServer(ep)
	t.Cleanup(hs.Close)
	return ep, hs.URL + cfg.Prefix
}

// sjsResp is a complete HTTP answer.
type sjsResp struct {
	status int
	header http.Header
	body   string
}

func (r sjsResp) get(name string) string { return r.header.Get(name) }

// do sends a request and reads the whole answer.
func (n *sjsNode) do(t *testing.T, method, url, body string, hdr ...string) sjsResp {
	t.Helper()
	return sjsDo(t, n.client, method, url, body, hdr...)
}

func sjsDo(t *testing.T, client *http.Client, method, url, body string, hdr ...string) sjsResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return sjsResp{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// sjsStream is a streaming answer read piece by piece.
type sjsStream struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// stream starts a request and returns once the answer's head arrived.
func (n *sjsNode) stream(t *testing.T, method, url string, hdr ...string) *sjsStream {
	t.Helper()
	return sjsOpenStream(t, n.client, method, url, hdr...)
}

func sjsOpenStream(t *testing.T, client *http.Client, method, url string, hdr ...string) *sjsStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("%s %s: %v", method, url, err)
	}
	st := &sjsStream{t: t, resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(st.close)
	return st
}

// read reads exactly n bytes.
func (st *sjsStream) read(n int) string {
	st.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(st.r, b); err != nil {
		st.t.Fatalf("reading %d bytes: %v", n, err)
	}
	return string(b)
}

// until reads up to and including delim.
func (st *sjsStream) until(delim string) string {
	st.t.Helper()
	var sb strings.Builder
	for !strings.HasSuffix(sb.String(), delim) {
		c, err := st.r.ReadByte()
		if err != nil {
			st.t.Fatalf("reading up to %q: %v (got %q)", delim, err, sb.String())
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// eof checks that the answer ends here.
func (st *sjsStream) eof() {
	st.t.Helper()
	b, err := io.ReadAll(st.r)
	if err != nil {
		st.t.Fatalf("expected the end of the answer: %v", err)
	}
	if len(b) > 0 {
		st.t.Fatalf("expected the end of the answer, got %q", b)
	}
}

// close aborts the request, as a client that goes away.
func (st *sjsStream) close() {
	st.cancel()
	_ = st.resp.Body.Close()
}

// sjsPending is a request whose answer comes later (a poll that waits).
type sjsPending chan sjsResp

// async sends a request without waiting for its answer; cancel aborts it,
// as a client that goes away. A failed request yields status 0.
func (n *sjsNode) async(t *testing.T, method, url string) (sjsPending, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ch := make(sjsPending, 1)
	go func() {
		resp, err := n.client.Do(req)
		if err != nil {
			ch <- sjsResp{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			ch <- sjsResp{body: err.Error()}
			return
		}
		ch <- sjsResp{status: resp.StatusCode, header: resp.Header, body: string(b)}
	}()
	t.Cleanup(func() {
		cancel()
		<-ch // the goroutine has returned
		ch <- sjsResp{}
	})
	return ch, cancel
}

// wait returns the answer.
func (p sjsPending) wait(t *testing.T) sjsResp {
	t.Helper()
	r := <-p
	p <- r // Cleanup waits for it too
	return r
}

// sjsWS is a WebSocket client connection for the tests.
type sjsWS struct {
	t    *testing.T
	conn net.Conn
}

// dialWS opens a WebSocket to an http:// URL.
func sjsDialWS(t *testing.T, url string, hdr http.Header) *sjsWS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	defer cancel()
	d := ws.Dialer{}
	if hdr != nil {
		d.Header = ws.HandshakeHeaderHTTP(hdr)
	}
	conn, br, _, err := d.Dial(ctx, "ws"+strings.TrimPrefix(url, "http"))
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if br != nil {
		conn = withBuffered(conn, br) // the server's first frames may be in br already
		ws.PutReader(br)
	}
	c := &sjsWS{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.Close() })
	return c
}

func (c *sjsWS) send(s string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(sjsWait))
	if err := wsutil.WriteClientText(c.conn, []byte(s)); err != nil {
		c.t.Fatalf("websocket send: %v", err)
	}
}

// recv reads the next text message (answering pings on the way).
func (c *sjsWS) recv() string {
	c.t.Helper()
	s, err := c.tryRecv()
	if err != nil {
		c.t.Fatalf("websocket recv: %v", err)
	}
	return s
}

func (c *sjsWS) tryRecv() (string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(sjsWait))
	b, err := wsutil.ReadServerText(c.conn)
	return string(b), err
}

// closed checks that the server ends the connection (with a close frame
// or by closing it) without sending another message.
func (c *sjsWS) closed() {
	c.t.Helper()
	s, err := c.tryRecv()
	if err == nil {
		c.t.Fatalf("expected the connection to close, got message %q", s)
	}
}

// frame reads the next frame as it is (no pong is sent).
func (c *sjsWS) frame() ws.Frame {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(sjsWait))
	h, err := ws.ReadHeader(c.conn)
	if err != nil {
		c.t.Fatalf("websocket frame: %v", err)
	}
	if h.Masked || h.Length > 1<<20 {
		c.t.Fatalf("the server sent a frame masked (%v) or of %d bytes", h.Masked, h.Length)
	}
	f := ws.Frame{Header: h, Payload: make([]byte, h.Length)}
	if _, err := io.ReadFull(c.conn, f.Payload); err != nil {
		c.t.Fatalf("websocket frame payload: %v", err)
	}
	return f
}

// closedWith reads up to the server's close frame, which no message may
// precede, and returns its code and reason.
func (c *sjsWS) closedWith() (ws.StatusCode, string) {
	c.t.Helper()
	for {
		f := c.frame()
		switch f.Header.OpCode {
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			return code, reason
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			c.t.Fatalf("a message %q before the close frame", f.Payload)
		}
	}
}

// raw sends a request written by hand on a connection of its own and
// reads the answer's head; the connection closes with the test.
func (n *sjsNode) raw(t *testing.T, format string, args ...any) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(sjsWait))
	request := fmt.Sprintf(format, args...)
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%.60q: %v", request, err)
	}
	return resp
}
