package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"
)

// wsTap is a TCP proxy in front of a node that reads the WebSocket
// connections going through it: the handshake's Sec-WebSocket-Extensions
// answer, and the data messages each way counted by whether their first
// frame has RSV1 (compressed). What Chromium and the node really put on
// the wire, which neither the page nor the node's own view shows.
type wsTap struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	answer string
	counts map[string]int // "server compressed", "client plain", ...
}

func newWSTap(t *testing.T, target string) *wsTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &wsTap{ln: ln, target: target, counts: map[string]int{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *wsTap) addr() string { return p.ln.Addr().String() }

func (p *wsTap) count(key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[key]
}

func (p *wsTap) extensions() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.answer
}

// serve relays one connection both ways, reading each direction's HTTP
// head and then its frames.
func (p *wsTap) serve(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.relay(up, c, "client")
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	p.relay(c, up, "server")
	_ = c.(*net.TCPConn).CloseWrite()
	<-done
}

// relay copies src to dst: the HTTP head, then frames, counted as from's.
func (p *wsTap) relay(dst, src net.Conn, from string) {
	br := bufio.NewReader(src)
	var head strings.Builder
	for {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			_, _ = io.WriteString(dst, head.String())
			return
		}
		if line == "\r\n" {
			break
		}
		if name, value, ok := strings.Cut(line, ":"); ok && from == "server" && http.CanonicalHeaderKey(strings.TrimSpace(name)) == "Sec-Websocket-Extensions" {
			p.mu.Lock()
			p.answer = strings.TrimSpace(value)
			p.mu.Unlock()
		}
	}
	if _, err := io.WriteString(dst, head.String()); err != nil {
		return
	}
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return
		}
		if h.OpCode == ws.OpText || h.OpCode == ws.OpBinary {
			kind := " plain"
			if h.Rsv1() {
				kind = " compressed"
			}
			p.mu.Lock()
			p.counts[from+kind]++
			p.mu.Unlock()
		}
		if ws.WriteHeader(dst, h) != nil {
			return
		}
		if _, err := io.CopyN(dst, br, h.Length); err != nil {
			return
		}
	}
}

// deflatePage is the page's own WebSocket client of the native wire
// format: it subscribes to CH and records what arrives.
const deflatePage = `window.W = {msgs: [], oks: [], errs: [], ext: null, closed: null};
W.ws = new WebSocket(URL);
W.ws.onopen = () => { W.ext = W.ws.extensions; };
W.ws.onmessage = (e) => {
  const p = JSON.parse(e.data);
  if (p.t === "hello") W.ws.send(JSON.stringify({op: "sub", id: 1, ch: CH}));
  if (p.t === "ok") W.oks.push(p.id);
  if (p.t === "err") W.errs.push(p);
  if (p.t === "msg") W.msgs.push({seq: p.seq, data: JSON.stringify(p.data)});
};
W.ws.onclose = (e) => { W.closed = e.code; };
true`

// deflateMessage is the JSON of message i: a few bytes, about 1 KB or
// about 30 KB, in turn.
func deflateMessage(i int) string {
	rows := []int{0, 12, 400}[i%3]
	var b strings.Builder
	fmt.Fprintf(&b, `{"i":%d,"rows":[`, i)
	for r := range rows {
		if r > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"region":"district-%d","votes":%d,"leader":"candidate-%d"}`, r, 1000+r*37+i, r%4)
	}
	b.WriteString("]}")
	return b.String()
}

// TestBrowserWebSocketDeflate: Chromium negotiates permessage-deflate on
// /ws (seen on the wire by a tap), gets messages of a few bytes to 30 KB
// intact and in order, the larger ones compressed and the smallest not,
// and the node reads the browser's compressed messages; one that
// inflates beyond session.max_frame_bytes closes with 1009.
func TestBrowserWebSocketDeflate(t *testing.T) {
	n := startNode(t, "COMETGATE_HTTP_ALLOWED_ORIGINS=*")
	tap := newWSTap(t, n.addr)
	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/cometgate.js")))
	b.eval(fmt.Sprintf("const URL = %q, CH = %q; %s", "ws://"+tap.addr()+"/ws", "demo.deflate", deflatePage), nil)
	b.waitFor(`W.oks.includes(1)`, "W")
	const want = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
	var ext string
	b.eval("W.ext", &ext)
	if ext != want || tap.extensions() != want {
		t.Fatalf("extensions: page %q, wire %q; want %q", ext, tap.extensions(), want)
	}

	const count = 60
	for i := range count {
		if code, body := postPublish(t, n, fmt.Sprintf(`{"channel":"demo.deflate","data":%s}`, deflateMessage(i))); code != 200 {
			t.Fatalf("publish %d: %d %s", i, code, body)
		}
	}
	b.waitFor(fmt.Sprintf("W.msgs.length >= %d", count), "{got: W.msgs.length, closed: W.closed, errs: W.errs}")
	var got []struct {
		Seq  int    `json:"seq"`
		Data string `json:"data"`
	}
	b.eval("W.msgs", &got)
	for i, m := range got[:count] {
		if m.Data != deflateMessage(i) {
			t.Fatalf("message %d: %.100s, want %.100s", i, m.Data, deflateMessage(i))
		}
		if i > 0 && m.Seq != got[i-1].Seq+1 {
			t.Fatalf("message %d: seq %d after %d", i, m.Seq, got[i-1].Seq)
		}
	}
	// Two thirds of the messages are over the threshold; the hello and
	// the small ones are not.
	if z, plain := tap.count("server compressed"), tap.count("server plain"); z < 2*count/3 || plain < count/3 {
		t.Fatalf("server sent %d compressed and %d plain data messages", z, plain)
	}

	// The page publishes a 20 KB body: the browser compresses it, the
	// node inflates it, and it comes back.
	big := "[" + strings.TrimSuffix(strings.Repeat(`{"k":"value"},`, 1500), ",") + "]"
	b.eval(fmt.Sprintf(`W.ws.send(JSON.stringify({op: "pub", id: 2, ch: "demo.deflate", data: %s})), true`, big), nil)
	b.waitFor(`W.oks.includes(2) && W.msgs.length > 60`, "{oks: W.oks, errs: W.errs, closed: W.closed}")
	var echo string
	b.eval("W.msgs[60].data", &echo)
	if echo != big {
		t.Fatalf("the page's publish came back as %.100s", echo)
	}
	if z := tap.count("client compressed"); z < 1 {
		t.Fatalf("chromium sent no compressed message (%d plain)", tap.count("client plain"))
	}

	// 100 KB that compress to little inflate beyond the 64 KiB limit.
	b.eval(`W.ws.send(JSON.stringify({op: "ping", id: 3, pad: "x".repeat(100000)})), true`, nil)
	b.waitFor(`W.closed !== null`, "W.closed")
	var closed int
	b.eval("W.closed", &closed)
	if closed != 1009 {
		t.Fatalf("closed with %d, want 1009", closed)
	}
	t.Logf("data messages on the wire: %d compressed and %d plain from the node, %d compressed and %d plain from chromium",
		tap.count("server compressed"), tap.count("server plain"), tap.count("client compressed"), tap.count("client plain"))
	if p := b.problems(n.url("/favicon.ico")); len(p) > 0 {
		t.Fatalf("console errors: %v", p)
	}
}
