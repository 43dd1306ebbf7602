//go:build linux

package transports

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// rawPoller is a long-polling client on one TCP connection of its own,
// with no goroutine: the test counts the node's goroutines in the same
// process.
type rawPoller struct {
	*pollClient
	conn net.Conn
	br   *bufio.Reader
}

func dialRawPoller(t *testing.T, c *pollClient) *rawPoller {
	t.Helper()
	conn, err := net.Dial("tcp", c.n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	return &rawPoller{pollClient: c, conn: conn, br: bufio.NewReader(conn)}
}

// send writes the next poll's request (with extra header lines) without
// waiting for its answer.
func (p *rawPoller) send(extra string) {
	p.t.Helper()
	if _, err := fmt.Fprintf(p.conn, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", p.pollURL(p.acked), extra); err != nil {
		p.t.Fatalf("sending a poll: %v", err)
	}
}

// receive reads a poll's response and its packets, checking the seq.
func (p *rawPoller) receive() (*http.Response, []packet) {
	p.t.Helper()
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		p.t.Fatalf("reading a poll's response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		p.t.Fatalf("poll response %d %q: %v", resp.StatusCode, body, err)
	}
	pkts := p.decode(body)
	for _, pk := range pkts {
		if pk.Seq != nil {
			if pk.seq() != p.acked+1 {
				p.t.Fatalf("seq %d after %d: %s", pk.seq(), p.acked, body)
			}
			p.acked = pk.seq()
		}
	}
	return resp, pkts
}

// expectMsg reads a response that must carry message k alone.
func (p *rawPoller) expectMsg(k int) *http.Response {
	p.t.Helper()
	resp, pkts := p.receive()
	if len(pkts) != 1 || pkts[0].index() != k {
		p.t.Fatalf("want message %d, got %+v", k, pkts)
	}
	return resp
}

// waitParked waits until the node has n parked long-polls.
func waitParked(t *testing.T, n *testNode, want int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d parked long-polls", want), func() bool { return n.srv.parked.Load() == want })
}

// TestParkedPollNoGoroutine: long-polls held for sessions that have
// nothing to say cost the node no goroutine; their answers keep the
// connection alive for the client's next request, which is parked again.
func TestParkedPollNoGoroutine(t *testing.T) {
	const polls = 40
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = time.Minute }, nil)
	clients := make([]*rawPoller, polls)
	for i := range clients {
		c := newPollClient(t, n, i%2 == 1) // JSONP polls park too
		subscribed(t, pollAdapter{c}, "demo.park")
		clients[i] = dialRawPoller(t, c)
	}
	before := settledGoroutines(t, 0)
	for _, c := range clients {
		c.send("")
	}
	waitParked(t, n, polls)
	// A held request used to cost two goroutines (net/http's and the
	// handler's wait): 2×polls more. Parked, the count comes back to what
	// it was (a little slack for the node's own short-lived ones).
	settledGoroutines(t, before+5)

	for round := range 2 {
		n.publishN(t, "demo.park", round, 1)
		for _, c := range clients {
			resp := c.expectMsg(round)
			if resp.Close {
				t.Fatalf("round %d: the server closes a keep-alive connection", round)
			}
			if resp.Header.Get("Content-Type") == "" || resp.Header.Get("Cache-Control") != "no-store, no-transform" {
				t.Fatalf("round %d: the parked response lost its headers: %v", round, resp.Header)
			}
			// The next request on the same connection: served by net/http
			// again, and parked again.
			c.send("")
		}
		waitParked(t, n, polls)
	}
	settledGoroutines(t, before+5)
}

// settledGoroutines waits until the process runs at most limit goroutines
// (limit 0: until the count stops moving) and returns the count.
func settledGoroutines(t *testing.T, limit int) int {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	last, stable := -1, 0
	for {
		g := runtime.NumGoroutine()
		switch {
		case limit > 0 && g <= limit:
			return g
		case limit == 0 && g == last:
			if stable++; stable == 20 {
				return g
			}
		default:
			last, stable = g, 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, want at most %d", g, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestParkedPollConnectionClose: a parked poll whose request asked to
// close the connection is answered with "Connection: close", and closed.
func TestParkedPollConnectionClose(t *testing.T) {
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = time.Minute }, nil)
	c := newPollClient(t, n, false)
	subscribed(t, pollAdapter{c}, "demo.close")
	p := dialRawPoller(t, c)
	p.send("Connection: close\r\n")
	waitParked(t, n, 1)
	n.publishN(t, "demo.close", 0, 1)
	if resp := p.expectMsg(0); !resp.Close {
		t.Fatal(`the response to "Connection: close" does not say it closes`)
	}
	if _, err := p.br.ReadByte(); err != io.EOF {
		t.Fatalf("after the response: %v, want EOF", err)
	}
}

// TestParkedPollClientGone: a client that goes away while its poll is
// parked ends the request at once (no goroutine notices it later); the
// session waits for its next request, as for a held poll, and that
// request gets what was published meanwhile.
func TestParkedPollClientGone(t *testing.T) {
	n := startNode(t, func(c *gateway.Config) {
		c.Heartbeat = time.Minute
		c.DisconnectDelay = 5 * time.Second // the node's shutdown waits for it
	}, nil)
	c := newPollClient(t, n, false)
	subscribed(t, pollAdapter{c}, "demo.gone")
	sess := n.gw.Session(c.sid)
	p := dialRawPoller(t, c)
	p.send("")
	waitParked(t, n, 1)
	if sess.Waiting(nil) {
		t.Fatal("the parked poll is not the session's downstream")
	}
	p.conn.Close()
	waitParked(t, n, 0)
	waitFor(t, "the session to lose its downstream", func() bool { return sess.Waiting(nil) })
	if n.gw.Session(c.sid) == nil {
		t.Fatal("the session ended with its request")
	}
	n.publishN(t, "demo.gone", 0, 1)
	if pkts := c.poll(); len(pkts) != 1 || pkts[0].index() != 0 {
		t.Fatalf("the next poll got %+v", pkts)
	}
	// A poll parked at shutdown gets the session's close packet (and
	// the node's shutdown need not wait for the disconnect delay), and
	// its connection ends with it, as every connection of a draining
	// node does (TestDrainClosesConnectionsAfterResponses).
	p = dialRawPoller(t, c)
	p.send("")
	waitParked(t, n, 1)
	if err := n.gw.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, pkts := p.receive()
	if len(pkts) != 1 || pkts[0].T != gateway.TypeClose || pkts[0].Code != gateway.DisconnectShutdown.Code {
		t.Fatalf("the poll parked at shutdown got %+v", pkts)
	}
	if !resp.Close {
		t.Error("the parked poll's answer during the drain does not say the connection closes")
	}
	if _, err := p.br.ReadByte(); err != io.EOF {
		t.Errorf("after the parked poll's answer: %v, want EOF", err)
	}
}

// TestParkedPollPipelined: a request the client sent behind a poll
// before its answer (HTTP/1.1 pipelining) is not lost: it is served after
// the parked poll's response, on the same connection.
func TestParkedPollPipelined(t *testing.T) {
	// Parked at once (the others wait for Options.ParkAfter).
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = time.Minute }, func(o *Options) { o.ParkAfter = -1 })
	c := newPollClient(t, n, false)
	subscribed(t, pollAdapter{c}, "demo.pipe")
	p := dialRawPoller(t, c)
	// Both requests in one write: net/http reads the second with the
	// first, so the first is parked with the second's bytes in hand.
	path := p.pollURL(p.acked)
	if _, err := fmt.Fprintf(p.conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET %s HTTP/1.1\r\nHost: x\r\n\r\n", path, path); err != nil {
		t.Fatal(err)
	}
	waitParked(t, n, 1)
	n.publishN(t, "demo.pipe", 0, 1)
	p.expectMsg(0)
	// The second acknowledged nothing new: it gets message 0 again, with
	// its seq.
	seq := p.acked
	p.acked--
	p.expectMsg(0)
	if p.acked != seq {
		t.Fatalf("the resent message has seq %d, want %d", p.acked, seq)
	}
	// And the connection serves a third.
	p.send("")
	waitParked(t, n, 1)
	n.publishN(t, "demo.pipe", 1, 1)
	p.expectMsg(1)
}

// TestParkedStreamNoGoroutine: XHR streams and htmlfile streams are
// parked after their head like SSE streams: no goroutine while they
// wait, packets written as chunks, and a client that goes away ends its
// stream at once.
func TestParkedStreamNoGoroutine(t *testing.T) {
	const streams = 20
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = time.Minute }, nil)
	before := settledGoroutines(t, 0)
	bodies := make([]*bufio.Reader, streams)
	conns := make([]net.Conn, streams)
	for i := range bodies {
		path := "/xhr_stream?ch=demo.st"
		if i%2 == 1 {
			path = "/htmlfile?ch=demo.st&cb=cb"
		}
		conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		_ = conn.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusOK || resp.TransferEncoding == nil {
			t.Fatalf("stream %d: %v %+v", i, err, resp)
		}
		conns[i], bodies[i] = conn, bufio.NewReader(resp.Body)
		readUntil(t, bodies[i], `"t":"ok"`) // subscribed
	}
	waitParked(t, n, streams)
	settledGoroutines(t, before+5)

	n.publishN(t, "demo.st", 0, 1)
	for _, br := range bodies {
		readUntil(t, br, `{"i":0}`)
	}
	conns[0].Close()
	waitParked(t, n, streams-1)
}

// readUntil reads lines of a stream's body until one contains s.
func readUntil(t *testing.T, br *bufio.Reader, s string) {
	t.Helper()
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a stream for %s: %v", s, err)
		}
		if strings.Contains(line, s) {
			return
		}
	}
}

// TestParkedPollReplaced: a parked poll that a newer poll of its session
// replaces is answered with the transport-level close (3003) on its own
// connection, which stays open for the client's next request; the newer
// poll, parked in turn, carries the session.
func TestParkedPollReplaced(t *testing.T) {
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = time.Minute }, nil)
	c := newPollClient(t, n, false)
	subscribed(t, pollAdapter{c}, "demo.repl")
	older, newer := dialRawPoller(t, c), dialRawPoller(t, c)
	older.send("")
	waitParked(t, n, 1)
	newer.send("")
	resp, pkts := older.receive()
	expectControlClose(t, pkts, gateway.DisconnectReplaced.Code)
	if resp.Close {
		t.Fatal("the replaced poll's connection is closed")
	}
	waitParked(t, n, 1)
	n.publishN(t, "demo.repl", 0, 1)
	newer.expectMsg(0)
	// The older connection serves the next poll (the two share the
	// client's ack).
	older.send("")
	waitParked(t, n, 1)
	n.publishN(t, "demo.repl", 1, 1)
	older.expectMsg(1)
}

// TestDrainClosesConnectionsAfterResponses: once the node drains, each
// response ends its connection: a parked poll's (the end of
// TestParkedPollClientGone), a poll's held on a goroutine since before
// the drain, a plain request's. So no client or balancer holds an idle
// connection to the node when its HTTP server stops: closing an idle
// connection races with the next request sent on it, and a request that
// is not idempotent then fails.
func TestDrainClosesConnectionsAfterResponses(t *testing.T) {
	// Polls are held, never parked.
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = time.Minute }, func(o *Options) { o.ParkAfter = time.Hour })
	c := newPollClient(t, n, false)
	subscribed(t, pollAdapter{c}, "demo.drain")
	sess := n.gw.Session(c.sid)
	p := dialRawPoller(t, c)
	p.send("")
	waitFor(t, "the poll to be the session's downstream", func() bool { return !sess.Waiting(nil) })
	if err := n.gw.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, pkts := p.receive()
	if len(pkts) != 1 || pkts[0].T != gateway.TypeClose || !resp.Close {
		t.Errorf("the poll held since before the drain got %+v, close %v; want the drain's close packet and the connection closed after it", pkts, resp.Close)
	}
	if _, err := p.br.ReadByte(); err != io.EOF {
		t.Errorf("after the held poll's answer: %v, want EOF", err)
	}

	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(conn, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close {
		t.Errorf("/readyz while draining: %d, close %v; want 503 and the connection closed after it", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the response: %v, want EOF", err)
	}
}
