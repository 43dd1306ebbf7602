package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/cometgate/cometgate/brokers/natsbroker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is a cometgate node running in-process for a test.
type node struct {
	addr string
	emb  *natsbroker.Embedded
	logs *syncBuffer
	stop context.CancelFunc
	done chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startNode runs serve with the given extra environment on random ports.
func startNode(t *testing.T, env ...string) *node {
	t.Helper()
	return startNodeArgs(t, nil, env...)
}

// startNodeArgs runs serve with command-line args (such as --config) and
// extra environment.
func startNodeArgs(t *testing.T, args []string, env ...string) *node {
	t.Helper()
	return launchNode(t, args, env, hooks{})
}

// launchNode runs serve on random ports with command-line args, extra
// environment and the hooks in h (launchNode sets listening itself), and
// stops the node when the test ends. The start-up of every node the tests
// run through serve.
func launchNode(t *testing.T, args, env []string, h hooks) *node {
	t.Helper()
	// The demo backend publishes hundreds of prices a second: only the
	// tests of the demos turn it on (the last occurrence of a variable
	// wins).
	environ := append([]string{"COMETGATE_HTTP_LISTEN=127.0.0.1:0", "COMETGATE_HTTP_SHUTDOWN_TIMEOUT=5s", "COMETGATE_DEMO_ENABLED=off"}, env...)
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{logs: &syncBuffer{}, stop: cancel, done: make(chan error, 1)}
	ready := make(chan struct{})
	h.listening = func(addr string, emb *natsbroker.Embedded) {
		n.addr, n.emb = addr, emb
		close(ready)
	}
	go func() { n.done <- serve(ctx, args, environ, n.logs, n.logs, &h) }()
	select {
	case <-ready:
	case err := <-n.done:
		t.Fatalf("serve returned before listening: %v\n%s", err, n.logs)
	case <-time.After(30 * time.Second):
		t.Fatalf("node did not start\n%s", n.logs)
	}
	t.Cleanup(func() { n.shutdown(t) })
	return n
}

// writeTemp writes content to a new file called name in a temporary
// directory and returns its path.
func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (n *node) shutdown(t *testing.T) {
	t.Helper()
	n.stop()
	select {
	case err, ok := <-n.done:
		if ok && err != nil {
			t.Errorf("serve: %v", err)
		}
		if ok {
			close(n.done)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("node did not stop\n%s", n.logs)
	}
}

func (n *node) url(path string) string { return "http://" + n.addr + path }

// sseStream reads packets from an SSE response.
type sseStream struct {
	resp    *http.Response
	packets chan map[string]any
}

func openSSE(t *testing.T, url string) *sseStream {
	t.Helper()
	return openSSEWith(t, url, nil)
}

// openSSEWith opens an SSE stream with extra request headers (such as
// Last-Event-ID). A packet preceded by an id line carries it as "_id".
func openSSEWith(t *testing.T, url string, header http.Header) *sseStream {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("Content-Type %q", ct)
	}
	s := &sseStream{resp: resp, packets: make(chan map[string]any, 1024)}
	go func() {
		defer close(s.packets)
		sc := bufio.NewScanner(resp.Body)
		id := ""
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "id: "); ok {
				id = v
				continue
			}
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok {
				continue
			}
			var p map[string]any
			if err := json.Unmarshal([]byte(data), &p); err != nil {
				t.Errorf("bad packet %q: %v", data, err)
				return
			}
			if id != "" {
				p["_id"] = id
				id = ""
			}
			s.packets <- p
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return s
}

// next returns the next packet of type typ, skipping others.
func next(t *testing.T, packets <-chan map[string]any, typ string) map[string]any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case p, ok := <-packets:
			if !ok {
				t.Fatalf("stream ended while waiting for %q", typ)
			}
			if p["t"] == typ {
				return p
			}
		case <-timeout:
			t.Fatalf("no %q packet within 10s", typ)
		}
	}
}

func postPublish(t *testing.T, n *node, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(n.url("/api/publish"), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestQuickStart is the README's quick start: SSE on demo.x receives a
// message from the publish API and one from a NATS client talking to the
// embedded server's listener.
func TestQuickStart(t *testing.T) {
	n := startNode(t, "COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0")
	if n.emb == nil || n.emb.ClientURL() == "" {
		t.Fatal("embedded NATS listener not enabled")
	}
	s := openSSE(t, n.url("/sse?ch=demo.x"))
	hello := next(t, s.packets, "hello")
	if sid, _ := hello["sid"].(string); sid == "" {
		t.Fatalf("hello without sid: %v", hello)
	}
	if ok := next(t, s.packets, "ok"); ok["ch"] != "demo.x" {
		t.Fatalf("ok for %v", ok)
	}

	if code, body := postPublish(t, n, `{"channel":"demo.x","data":{"price":42}}`); code != 200 {
		t.Fatalf("publish: %d %s", code, body)
	}
	msg := next(t, s.packets, "msg")
	if msg["ch"] != "demo.x" || msg["data"].(map[string]any)["price"] != 42.0 {
		t.Fatalf("msg %v", msg)
	}

	nc, err := nats.Connect(n.emb.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("demo.x", []byte("from nats")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	msg = next(t, s.packets, "msg")
	if msg["text"] != "from nats" {
		t.Fatalf("msg %v", msg)
	}

	// A text that looks like JSON stays text: the content type travels
	// with the message through the broker.
	if code, body := postPublish(t, n, `{"channel":"demo.x","text":"42"}`); code != 200 {
		t.Fatalf("publish: %d %s", code, body)
	}
	if msg := next(t, s.packets, "msg"); msg["text"] != "42" {
		t.Fatalf("msg %v", msg)
	}

	// The command-line publisher goes through the same API.
	var out bytes.Buffer
	if err := run(context.Background(), []string{"publish", "--url", n.url(""), "demo.x", "from the cli"}, nil, &out, io.Discard); err != nil {
		t.Fatalf("cometgate publish: %v", err)
	}
	if msg := next(t, s.packets, "msg"); msg["text"] != "from the cli" {
		t.Fatalf("msg %v", msg)
	}

	// Shutdown tells the client to reconnect elsewhere.
	n.shutdown(t)
	cl := next(t, s.packets, "close")
	if cl["code"] != 3000.0 || cl["reconnect"] != true {
		t.Fatalf("close %v", cl)
	}
}

// TestDefaultConfigTakesNoNATSPort: the default embedded server listens on
// no TCP port at all.
func TestDefaultConfigTakesNoNATSPort(t *testing.T) {
	n := startNode(t)
	if url := n.emb.ClientURL(); url != "" {
		t.Fatalf("default embedded server listens on %s", url)
	}
	// And the publish API works from loopback without a key.
	if code, body := postPublish(t, n, `{"channel":"demo.x","text":"hi"}`); code != 200 {
		t.Fatalf("publish: %d %s", code, body)
	}
}

func dialWS(t *testing.T, n *node) net.Conn {
	t.Helper()
	conn, br, _, err := ws.Dial(context.Background(), "ws://"+n.addr+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if br != nil {
		// The server's first frames arrived with the handshake response.
		return &bufferedConn{Conn: conn, r: br}
	}
	return conn
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r.Buffered() > 0 {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

// wsPackets reads text frames into packets until the connection ends; the
// WebSocket close code, if any, is sent on closeCode.
func wsPackets(t *testing.T, conn net.Conn) (<-chan map[string]any, <-chan int) {
	packets := make(chan map[string]any, 1024)
	closeCode := make(chan int, 1)
	go func() {
		defer close(packets)
		for {
			data, op, err := wsutil.ReadServerData(conn)
			if err != nil {
				var ce wsutil.ClosedError
				if errors.As(err, &ce) {
					closeCode <- int(ce.Code)
				}
				return
			}
			if op != ws.OpText {
				continue
			}
			var p map[string]any
			if err := json.Unmarshal(data, &p); err != nil {
				t.Errorf("bad packet %q", data)
				return
			}
			packets <- p
		}
	}()
	return packets, closeCode
}

func sendWS(t *testing.T, conn net.Conn, frame string) {
	t.Helper()
	if err := wsutil.WriteClientText(conn, []byte(frame)); err != nil {
		t.Fatal(err)
	}
}

func TestWebSocketSession(t *testing.T) {
	n := startNode(t)
	conn := dialWS(t, n)
	packets, closeCode := wsPackets(t, conn)
	if h := next(t, packets, "hello"); h["seq"] != 1.0 {
		t.Fatalf("hello %v", h)
	}
	sendWS(t, conn, `{"op":"sub","id":1,"ch":"demo.ws"}`)
	if ok := next(t, packets, "ok"); ok["id"] != 1.0 {
		t.Fatalf("ok %v", ok)
	}
	sendWS(t, conn, `{"op":"sub","id":2,"ch":"demo..bad"}`)
	if e := next(t, packets, "err"); e["id"] != 2.0 || e["code"] != 422.0 || !strings.Contains(e["error"].(string), "must not be empty") {
		t.Fatalf("err %v", e)
	}
	sendWS(t, conn, `{"op":"sub","id":3,"ch":"secret.x"}`)
	if e := next(t, packets, "err"); e["id"] != 3.0 || e["code"] != 403.0 {
		t.Fatalf("err %v", e)
	}
	sendWS(t, conn, `not json`)
	if e := next(t, packets, "err"); e["code"] != 400.0 {
		t.Fatalf("err %v", e)
	}
	// A browser publish is confirmed after the broker took it, and comes
	// back to the subscriber.
	sendWS(t, conn, `{"op":"pub","id":4,"ch":"demo.ws","data":[1,2,3]}`)
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case p := <-packets:
			switch {
			case p["t"] == "ok" && p["id"] == 4.0:
				got["ok"] = true
			case p["t"] == "msg" && p["ch"] == "demo.ws":
				got["msg"] = true
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("publish answers: %v", got)
		}
	}
	n.shutdown(t)
	if cl := next(t, packets, "close"); cl["code"] != 3000.0 {
		t.Fatalf("close %v", cl)
	}
	select {
	case code := <-closeCode:
		if code != 3000 {
			t.Fatalf("websocket close code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no websocket close frame")
	}
}

func TestWebSocketOversizeFrame(t *testing.T) {
	n := startNode(t, "COMETGATE_SESSION_MAX_FRAME_BYTES=1024")
	conn := dialWS(t, n)
	packets, closeCode := wsPackets(t, conn)
	next(t, packets, "hello")
	sendWS(t, conn, `{"op":"ping","id":1,"pad":"`+strings.Repeat("x", 2000)+`"}`)
	expectClose(t, packets, closeCode, 1009, false)
}

// expectClose reads the close packet (code, reconnect) and then the
// WebSocket close frame with the same code.
func expectClose(t *testing.T, packets <-chan map[string]any, closeCode <-chan int, code int, reconnect bool) {
	t.Helper()
	if cl := next(t, packets, "close"); cl["code"] != float64(code) || cl["reconnect"] != reconnect {
		t.Fatalf("close %v, want code %d with reconnect %v", cl, code, reconnect)
	}
	select {
	case c := <-closeCode:
		if c != code {
			t.Fatalf("websocket close code %d, want %d", c, code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no websocket close frame")
	}
}

func TestPublishAPIErrors(t *testing.T) {
	n := startNode(t, "COMETGATE_API_ALLOW_LOOPBACK=false", "COMETGATE_API_KEYS=k1")
	cases := []struct {
		name, auth, body string
		status           int
		contentType      string // "" is application/json
	}{
		{"no key", "", `{"channel":"demo.x","data":1}`, 401, ""},
		{"form", "Bearer k1", `{"channel":"demo.x","data":1}`, 415, "application/x-www-form-urlencoded"},
		{"wrong key", "Bearer nope", `{"channel":"demo.x","data":1}`, 401, ""},
		{"ok", "Bearer k1", `{"channel":"demo.x","data":1}`, 200, ""},
		{"not json", "Bearer k1", `channel=demo.x`, 400, ""},
		{"no payload", "Bearer k1", `{"channel":"demo.x"}`, 400, ""},
		{"two payloads", "Bearer k1", `{"channel":"demo.x","data":1,"text":"a"}`, 400, ""},
		{"wildcard", "Bearer k1", `{"channel":"demo.*","data":1}`, 422, ""},
		{"bad b64", "Bearer k1", `{"channel":"demo.x","b64":"!!"}`, 400, ""},
		{"unknown field", "Bearer k1", `{"channel":"demo.x","data":1,"chanel":2}`, 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, n.url("/api/publish"), strings.NewReader(tc.body))
			req.Header.Set("Content-Type", cmp.Or(tc.contentType, "application/json"))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("response is not JSON: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %v", resp.StatusCode, tc.status, body)
			}
			if tc.status != 200 && body["error"] == "" {
				t.Fatalf("error body without message: %v", body)
			}
		})
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	n := startNode(t)
	// Ready once the node heard the cluster's answers to its question
	// "who is there?" (a fraction of a second after start).
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(n.url("/readyz"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("/readyz: %d %s", resp.StatusCode, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/nope": 404} {
		resp, err := http.Get(n.url(path))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d: %s", path, resp.StatusCode, want, b)
		}
		if path == "/metrics" && !bytes.Contains(b, []byte("cometgate_broker_up 1")) {
			t.Errorf("/metrics lacks cometgate_broker_up 1")
		}
	}
}

func TestUnknownConfigKeyFailsStartup(t *testing.T) {
	err := serve(context.Background(), nil, []string{"COMETGATE_HTTP_LISEN=x"}, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "COMETGATE_HTTP_LISEN") {
		t.Fatalf("err = %v", err)
	}
}

// TestShutdownClosesIdleNewConnections: a connection that never sent a
// request (browsers open spare ones) must not hold up shutdown.
func TestShutdownClosesIdleNewConnections(t *testing.T) {
	n := startNode(t)
	c, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Wait until the server has accepted it (a request on another
	// connection proves the accept loop ran past it).
	if resp, err := http.Get(n.url("/healthz")); err == nil {
		resp.Body.Close()
	}
	n.shutdown(t)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("spare connection still open after shutdown")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("spare connection not closed by shutdown")
	}
}

// TestSockJSEndpointsServed: the default configuration serves a pubsub and
// an echo SockJS endpoint.
func TestSockJSEndpointsServed(t *testing.T) {
	n := startNode(t)
	for _, path := range []string{"/sockjs/info", "/sockjs-echo/info"} {
		resp, err := http.Get(n.url(path))
		if err != nil {
			t.Fatal(err)
		}
		var info map[string]any
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || info["websocket"] != true {
			t.Fatalf("GET %s: %d %v %v", path, resp.StatusCode, info, err)
		}
	}
}
