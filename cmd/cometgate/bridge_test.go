package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// The TCP bridge as an operator runs it: cometgate serve --config with
// bridge targets, a real Redis behind one of them and an echo server
// behind another, reached by a plain WebSocket client, by SockJS over
// HTTP, and by cometgate.js's TCPSocket in headless chromium.

const redisAddr = "127.0.0.1:6379"

// needRedis skips (or, under CI, fails) a test when Redis is not running.
func needRedis(t *testing.T) {
	t.Helper()
	c, err := net.DialTimeout("tcp", redisAddr, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis at %s: %v (.ci/services.sh starts it)", redisAddr, err)
		}
		t.Skipf("Redis at %s: %v", redisAddr, err)
	}
	_ = c.Close()
}

// echoServer is a TCP server on loopback that sends back what it reads.
// Its cleanup closes it and waits for its goroutines.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// startBridgeNode runs serve with a config file holding the bridge
// targets "redis" and "echo" and a SockJS endpoint in tcp mode for each.
func startBridgeNode(t *testing.T, echoAddr string) *node {
	t.Helper()
	yaml := fmt.Sprintf(`bridge:
  targets:
    - name: redis
      address: %q
      allow_networks: [127.0.0.0/8]
    - name: echo
      address: %q
      allow_networks: [127.0.0.0/8]
    - name: not-allowed
      address: %q
sockjs:
  - prefix: /sockjs-redis
    mode: tcp
    target: redis
  - prefix: /sockjs-echo-tcp
    mode: tcp
    target: echo
`, redisAddr, echoAddr, echoAddr)
	cfg := writeTemp(t, "bridge.yaml", yaml)
	return startNodeArgs(t, []string{"--config", cfg})
}

func dialBridge(t *testing.T, n *node, target string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+n.addr+"/tcp/"+target)
	if err != nil {
		t.Fatalf("dial /tcp/%s: %v", target, err)
	}
	if br != nil {
		conn = &bufferedConn{Conn: conn, r: br}
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// readBridge reads binary messages until want bytes arrived.
func readBridge(t *testing.T, conn net.Conn, want int) []byte {
	t.Helper()
	var got []byte
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for len(got) < want {
		b, op, err := wsutil.ReadServerData(conn)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), want, err)
		}
		if op != ws.OpBinary {
			t.Fatalf("a %v message; the bridge sends binary ones", op)
		}
		got = append(got, b...)
	}
	return got
}

func TestBridgeRedisOverWebSocket(t *testing.T) {
	needRedis(t)
	n := startBridgeNode(t, echoServer(t))
	conn := dialBridge(t, n, "redis")
	key := fmt.Sprintf("cometgate-test-%d", time.Now().UnixNano())
	value := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16) // 64 KiB, several frames back
	cmd := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(key), key, len(value), value)
	// The command split over frames at arbitrary points, as a page would
	// write a stream.
	for i := 0; i < len(cmd); i += 10000 {
		if err := wsutil.WriteClientBinary(conn, []byte(cmd[i:min(i+10000, len(cmd))])); err != nil {
			t.Fatal(err)
		}
	}
	if got := readBridge(t, conn, 5); string(got) != "+OK\r\n" {
		t.Fatalf("SET answered %q", got)
	}
	if err := wsutil.WriteClientBinary(conn, fmt.Appendf(nil, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n", len(key), key, len(key), key)); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("$%d\r\n%s\r\n:1\r\n", len(value), value)
	if got := readBridge(t, conn, len(want)); string(got) != want {
		t.Fatalf("GET answered %d bytes, not the %d set", len(got), len(want))
	}
	// QUIT: Redis answers and closes; the bridge closes the WebSocket.
	if err := wsutil.WriteClientBinary(conn, []byte("QUIT\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := readBridge(t, conn, 5); string(got) != "+OK\r\n" {
		t.Fatalf("QUIT answered %q", got)
	}
	_, _, err := wsutil.ReadServerData(conn)
	var ce wsutil.ClosedError
	if !errors.As(err, &ce) || ce.Code != 1000 || ce.Reason != "target closed the connection" {
		t.Fatalf("after QUIT: %v, want close 1000 target closed the connection", err)
	}
}

func TestBridgeRefusalsAreJSON(t *testing.T) {
	n := startBridgeNode(t, echoServer(t))
	for _, tc := range []struct {
		target string
		status int
		body   string
	}{
		{"nope", http.StatusNotFound, `{"error":"unknown TCP target","code":4404}`},
		{"not-allowed", http.StatusForbidden, `{"error":"target address not allowed","code":4403}`},
	} {
		req, _ := http.NewRequest(http.MethodGet, n.url("/tcp/"+tc.target), nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || strings.TrimSpace(string(body)) != tc.body {
			t.Errorf("/tcp/%s: %d %s, want %d %s", tc.target, resp.StatusCode, body, tc.status, tc.body)
		}
	}
}

// TestBridgeSockJSOverHTTP: the same Redis through the SockJS endpoint in
// tcp mode, over xhr_streaming and xhr_send: byte strings both ways.
func TestBridgeSockJSOverHTTP(t *testing.T) {
	needRedis(t)
	n := startBridgeNode(t, echoServer(t))
	base := n.url("/sockjs-redis/000/s1")
	resp, err := http.Post(base+"/xhr_streaming", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	frames := make(chan string, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(frames)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if line = strings.TrimSpace(line); strings.HasPrefix(line, "o") || strings.HasPrefix(line, "a") || strings.HasPrefix(line, "c") {
				frames <- line
			}
		}
	}()
	defer func() { resp.Body.Close(); wg.Wait() }()
	next := func() string {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatal("the stream ended")
			}
			return f
		case <-time.After(20 * time.Second):
			t.Fatal("no frame")
		}
		return ""
	}
	if f := next(); f != "o" {
		t.Fatalf("first frame %q", f)
	}
	// ÿ is the byte 0xff: a byte string carries every byte value.
	key := fmt.Sprintf("cometgate-test-sjs-%d", time.Now().UnixNano())
	body := fmt.Sprintf(`["SET %s \u00ff\u00e9x\r\n","GET %s\r\nDEL %s\r\n"]`, key, key, key)
	sresp, err := http.Post(base+"/xhr_send", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	sresp.Body.Close()
	if sresp.StatusCode != http.StatusNoContent {
		t.Fatalf("xhr_send: %s", sresp.Status)
	}
	var got string
	for !strings.Contains(got, ":1") {
		got += next()
	}
	// The reply bytes are 0xff 0xe9 'x', which come back as the characters
	// U+00FF U+00E9: JSON-quoted inside a[...] frames.
	if !strings.Contains(got, `+OK\r\n`) || !strings.Contains(got, "$3\\r\\n\u00ff\u00e9x\\r\\n") {
		t.Fatalf("frames %q", got)
	}
}

// TestBridgeConfigErrors: a SockJS tcp endpoint must name a bridge target,
// and the error says which key is wrong.
func TestBridgeConfigErrors(t *testing.T) {
	cfg := writeTemp(t, "c.yaml", "sockjs:\n  - prefix: /chat\n    mode: tcp\n    target: chat\n")
	err := serve(context.Background(), []string{"--config", cfg}, []string{"COMETGATE_HTTP_LISTEN=127.0.0.1:0"}, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), `sockjs[0].target: must name one of bridge.targets, got "chat"`) {
		t.Fatalf("err = %v", err)
	}
}
