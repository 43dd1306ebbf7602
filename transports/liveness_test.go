package transports

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// TestBusyWebSocketStaysAlive: a session that receives a steady stream
// gets no idle heartbeats, yet the node must still hear from the client
// (pongs) to know it is there; a browser sends nothing on its own. The
// session must outlive several read-timeout periods (3 heartbeats + 5 s)
// while messages flow, the client only answering pings.
func TestBusyWebSocketStaysAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 12 s")
	}
	t.Parallel()
	n := startNode(t, nil, nil) // heartbeat 1 s: the read timeout is 8 s
	c := dialWS(t, n)
	c.send(textFrame(`{"op":"sub","id":1,"ch":"demo.busy"}`))
	c.until(func(p packet) bool { return p.T == gateway.TypeOK })
	// 120 messages, one every 100 ms: 12 s of traffic, longer than the
	// read timeout, and never an idle heartbeat interval.
	const total = 120
	pubErr := publishEvery(n.gw, "demo.busy", total, 100*time.Millisecond)
	for got := 0; got < total; got++ {
		if p := c.next(); p.T != gateway.TypeMsg || p.index() != got {
			t.Fatalf("after %d messages: %+v", got, p)
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
}

// TestBusySockJSWebSocketStaysAlive: the same over the SockJS websocket
// transport, whose heartbeat is a ping as well (no "h" frame, as
// sockjs-node's) and whose read timeout is three heartbeat delays plus 5 s.
func TestBusySockJSWebSocketStaysAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 15 s")
	}
	t.Parallel()
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/pubsub", Websocket: true, HeartbeatDelay: time.Second}}, nil)
	c := sjsDialWS(t, n.url("/pubsub/000/"+sjsSID()+"/websocket"), nil)
	if c.recv() != "o" {
		t.Fatal("open")
	}
	if p := sjsPackets(t, c.recv()); p[0].T != "hello" {
		t.Fatalf("hello %+v", p)
	}
	c.send(`["{\"op\":\"sub\",\"id\":1,\"ch\":\"demo.busy\"}"]`)
	if p := sjsPackets(t, c.recv()); p[0].T != "ok" {
		t.Fatalf("sub %+v", p)
	}
	const total = 150 // 15 s of traffic, longer than the 12 s read timeout
	pubErr := publishEvery(n.gw, "demo.busy", total, 100*time.Millisecond)
	for got := 0; got < total; {
		frame := c.recv() // answers pings on the way, as browsers do
		for _, p := range sjsPackets(t, frame) {
			if p.T != "msg" {
				t.Fatalf("after %d messages: %+v", got, p)
			}
			got++
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
}

// TestSilentWebSocketClientClosed: a client that answers no ping is cut
// off after the read timeout (3 heartbeats + 5 s: 8 s here). The poller
// has no read deadline running for an idle connection; the heartbeat
// write notices instead.
func TestSilentWebSocketClientClosed(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 8 s")
	}
	t.Parallel()
	n := startNode(t, nil, nil)
	c := dialWS(t, n)
	sid := c.sid
	_ = c.conn.SetReadDeadline(time.Now().Add(waitTimeout))
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			break // the node closed the connection
		}
		if _, err := c.br.Discard(int(h.Length)); err != nil {
			break
		}
		if h.OpCode != ws.OpPing {
			t.Fatalf("unexpected %v frame", h.OpCode)
		}
		// Pings stay unanswered.
	}
	waitFor(t, "the silent session to end", func() bool { return n.gw.Session(sid) == nil })
	waitReaders(t, n)
}

// TestReaderGoroutineFallback: where the poller cannot run (not Linux),
// each WebSocket and SSE connection has a reader goroutine instead; the
// sessions work the same.
func TestReaderGoroutineFallback(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	n.srv.pollMu.Lock()
	n.srv.noPoller = true
	n.srv.pollMu.Unlock()
	w := dialWS(t, n)
	w.send(textFrame(`{"op":"sub","id":1,"ch":"demo.fb"}`))
	w.until(func(p packet) bool { return p.T == gateway.TypeOK })
	s := openSSE(t, n, "ch=demo.fb", nil)
	if p := s.next(); p.T != gateway.TypeOK {
		t.Fatalf("sse sub: %+v", p)
	}
	if n.srv.poller != nil {
		t.Fatal("a poller started")
	}
	// Counted by what they run, not by how many goroutines the process
	// has (other tests' teardown comes and goes meanwhile).
	waitFor(t, "a reader goroutine for each connection", func() bool {
		return goroutinesIn("transports.(*wsConn).start.func1") == 1 && goroutinesIn("transports.(*sseConn).watch") == 1
	})
	n.publishN(t, "demo.fb", 0, 3)
	for i := range 3 {
		if p := w.next(); p.T != gateway.TypeMsg || p.index() != i {
			t.Fatalf("websocket message %d: %+v", i, p)
		}
		if p := s.next(); p.T != gateway.TypeMsg || p.index() != i {
			t.Fatalf("sse message %d: %+v", i, p)
		}
	}
	w.send(closeFrame(1000, ""))
	s.close()
	waitFor(t, "both sessions to end", func() bool { return n.gw.SessionCount() == 0 })
	waitReaders(t, n)
}

// publishEvery publishes total messages {"i":k} on ch, one per interval,
// and then sends the first error (or nil) on the channel it returns.
func publishEvery(gw *gateway.Gateway, ch string, total int, interval time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := range total {
			if err := gw.Publish(context.Background(), ch, fmt.Appendf(nil, `{"i":%d}`, i), ""); err != nil {
				done <- err
				return
			}
			<-tick.C
		}
		done <- nil
	}()
	return done
}

// goroutinesIn counts the goroutines whose stack holds function fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		k := runtime.Stack(buf, true)
		if k < len(buf) {
			buf = buf[:k]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn+"(") {
			count++
		}
	}
	return count
}
