package transports

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// The TCP bridge tests: the address policy and the dialer as units, then
// the native WebSocket bridge (/tcp/{name}) against real TCP servers on
// loopback (in-process targets, and Redis where a real protocol helps).

// bridgeLoopback lets a target reach this host, which the policy refuses
// by default.
var bridgeLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// tcpTarget is an in-process TCP server on loopback for the bridge to
// reach. serve handles each accepted connection on a goroutine of its
// own; with serve nil the connections go to accepted for the test to
// drive. Cleanup closes the listener and every connection and waits for
// the goroutines.
type tcpTarget struct {
	ln       net.Listener
	serve    func(net.Conn)
	accepted chan net.Conn
	done     chan struct{} // closed at cleanup: no more connections go to accepted

	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	remotes []string // the peer address of each accepted connection, in order
}

func startTarget(t *testing.T, serve func(net.Conn)) *tcpTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &tcpTarget{ln: ln, serve: serve, accepted: make(chan net.Conn, 16), done: make(chan struct{})}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		tg.acceptLoop()
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		close(tg.done)
		<-acceptDone
		tg.mu.Lock()
		for _, c := range tg.conns {
			_ = c.Close()
		}
		tg.mu.Unlock()
		tg.wg.Wait()
	})
	return tg
}

func (tg *tcpTarget) acceptLoop() {
	for {
		c, err := tg.ln.Accept()
		if err != nil {
			return
		}
		tg.mu.Lock()
		tg.conns = append(tg.conns, c)
		tg.remotes = append(tg.remotes, c.RemoteAddr().String())
		tg.mu.Unlock()
		if tg.serve == nil {
			select {
			case tg.accepted <- c:
			case <-tg.done: // closed at cleanup with the others
			}
			continue
		}
		tg.wg.Add(1)
		go func() {
			defer tg.wg.Done()
			defer c.Close()
			tg.serve(c)
		}()
	}
}

func (tg *tcpTarget) addr() string { return tg.ln.Addr().String() }

func (tg *tcpTarget) port() string {
	_, p, _ := net.SplitHostPort(tg.addr())
	return p
}

// conn returns the next connection the target accepted (serve nil).
func (tg *tcpTarget) conn(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-tg.accepted:
		return c
	case <-time.After(waitTimeout):
		t.Fatal("the target accepted no connection")
		return nil
	}
}

// untouched checks that nothing connected to the target so far: it
// connects itself and checks that the listener accepts that connection
// first (a listener accepts in arrival order).
func (tg *tcpTarget) untouched(t *testing.T) {
	t.Helper()
	c, err := net.DialTimeout("tcp", tg.addr(), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mine := c.LocalAddr().String()
	var first string
	waitFor(t, "the target to accept the probe", func() bool {
		tg.mu.Lock()
		defer tg.mu.Unlock()
		if len(tg.remotes) > 0 {
			first = tg.remotes[0]
		}
		return first != ""
	})
	if first != mine {
		t.Fatalf("something connected to the target (%s) before the probe (%s)", first, mine)
	}
	if tg.serve == nil {
		<-tg.accepted // the probe's; closed at cleanup
	}
}

func echoServe(c net.Conn) { _, _ = io.Copy(c, c) }

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	return a
}

// redisAddr returns the address of the real Redis the tests use, skipping
// the test when there is none (failing it in CI).
func redisAddr(t *testing.T) string {
	t.Helper()
	addr := "127.0.0.1:6379"
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis at %s not reachable: %v", addr, err)
		}
		t.Skipf("Redis at %s not reachable: %v", addr, err)
	}
	_ = c.Close()
	return addr
}

// The numbered stream the bulk tests send: consecutive big-endian uint32
// counters, so that a lost, repeated or reordered piece shows at its
// offset.
func seqByte(off int64) byte { return byte(uint32(off/4) >> (8 * (3 - off%4))) }

func appendSeq(dst []byte, off int64, n int) []byte {
	for i := range int64(n) {
		dst = append(dst, seqByte(off+i))
	}
	return dst
}

// checkSeq returns an error naming the first byte of p (at offset off of
// the stream) that is not the stream's.
func checkSeq(p []byte, off int64) error {
	for i, b := range p {
		if want := seqByte(off + int64(i)); b != want {
			return fmt.Errorf("stream offset %d: byte %#x, want %#x", off+int64(i), b, want)
		}
	}
	return nil
}

// TestBridgeRefusedAddr: the address policy's table.
func TestBridgeRefusedAddr(t *testing.T) {
	for _, s := range []string{
		"127.0.0.1", "127.255.255.254", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
		"169.254.169.254", "fe80::1", "fe80::1%eth0", "fd00:ec2::254", "100.64.0.1",
		"0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "240.0.0.1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
		"64:ff9b::a00:1", "64:ff9b:1::1", "2002:7f00:1::1", "198.18.0.1", "198.19.255.255",
		"192.0.0.8", "100::1", "::7f00:1", "fec0::1", "2001:0:4136:e378::1",
	} {
		if why := refusedAddr(netip.MustParseAddr(s)); why == "" {
			t.Errorf("%s: allowed, want refused", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "1.1.1.1", "2606:4700::1111", "93.184.216.34", "::ffff:8.8.8.8", "100.128.0.1", "198.20.0.1"} {
		if why := refusedAddr(netip.MustParseAddr(s)); why != "" {
			t.Errorf("%s: refused (%s), want allowed", s, why)
		}
	}
	if refusedAddr(netip.Addr{}) == "" {
		t.Error("the zero Addr is allowed")
	}
}

func TestBridgeTargetValidate(t *testing.T) {
	good := []BridgeTarget{
		{Name: "redis", Address: "127.0.0.1:6379"},
		{Name: "a.b-c_D9", Address: "chat.example:6667"},
		{Name: strings.Repeat("x", 64), Address: "[::1]:1", AllowNetworks: bridgeLoopback},
	}
	for _, tg := range good {
		if err := tg.Validate(); err != nil {
			t.Errorf("%+v: %v", tg, err)
		}
	}
	bad := []BridgeTarget{
		{Name: "", Address: "127.0.0.1:1"},
		{Name: strings.Repeat("x", 65), Address: "127.0.0.1:1"},
		{Name: "a/b", Address: "127.0.0.1:1"},
		{Name: "a", Address: "127.0.0.1"},
		{Name: "a", Address: "127.0.0.1:0"},
		{Name: "a", Address: "127.0.0.1:65536"},
		{Name: "a", Address: ":80"},
		{Name: "a", Address: "h:1", AllowNetworks: []netip.Prefix{{}}},
	}
	for _, tg := range bad {
		if err := tg.Validate(); err == nil {
			t.Errorf("%+v: accepted", tg)
		}
	}
	ok := []BridgeTarget{{Name: "a", Address: "h:1"}}
	if err := ValidateBridge(append(ok, BridgeTarget{Name: "a", Address: "h:2"}), nil); err == nil {
		t.Error("a repeated name is accepted")
	}
	if err := ValidateBridge(ok, []SockJSEndpoint{{Prefix: "/x", Mode: SockJSTCP, Target: "b"}}); err == nil {
		t.Error("a tcp endpoint naming no target is accepted")
	}
	if err := ValidateBridge(ok, []SockJSEndpoint{{Prefix: "/x", Mode: SockJSTCP, Target: "a"}}); err != nil {
		t.Error(err)
	}
}

// dialerLog records what a bridgeDialer logs.
type dialerLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *dialerLog) log(msg string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprint(append([]any{msg}, args...)...))
}

func (l *dialerLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// fakeResolver answers lookups from answers: the first call gets
// answers[0], later ones the last entry. It counts the calls.
type fakeResolver struct {
	t       *testing.T
	host    string
	answers [][]netip.Addr
	err     error
	calls   atomic.Int32
}

func (r *fakeResolver) lookup(_ context.Context, network, host string) ([]netip.Addr, error) {
	n := int(r.calls.Add(1))
	if network != "ip" || host != r.host {
		r.t.Errorf("lookup(%q, %q), want (ip, %q)", network, host, r.host)
	}
	if r.err != nil {
		return nil, r.err
	}
	return r.answers[min(n, len(r.answers))-1], nil
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// TestBridgeDialerPolicy: the dialer checks the resolved addresses, not
// the name, dials only what it checked, resolves once per connection, and
// tells the browser nothing of the network (details go to the log).
func TestBridgeDialerPolicy(t *testing.T) {
	const host = "svc.internal.example"
	type result struct {
		conn net.Conn
		err  error
	}
	dial := func(t *testing.T, targets []BridgeTarget, r *fakeResolver, lg *dialerLog, name string) result {
		t.Helper()
		d := newBridgeDialer(targets, waitTimeout, lg.log)
		if r != nil {
			d.lookup = r.lookup
		} else {
			d.lookup = func(context.Context, string, string) ([]netip.Addr, error) {
				t.Error("lookup called for an IP literal or an unknown target")
				return nil, errors.New("no lookup expected")
			}
		}
		c, err := d.dial(t.Context(), name, nil)
		if c != nil {
			t.Cleanup(func() { _ = c.Close() })
		}
		return result{c, err}
	}
	// browserSafe checks that an error carries none of the details.
	browserSafe := func(t *testing.T, err error, details ...string) {
		t.Helper()
		if _, ok := err.(gateway.Disconnect); !ok {
			t.Fatalf("error %T %v is not a bridge disconnect", err, err)
		}
		for _, s := range details {
			if strings.Contains(err.Error(), s) {
				t.Errorf("the browser-facing error %q carries %q", err, s)
			}
		}
	}

	t.Run("name resolving to loopback is refused", func(t *testing.T) {
		tg := startTarget(t, echoServe)
		r := &fakeResolver{t: t, host: host, answers: [][]netip.Addr{addrs("127.0.0.1")}}
		lg := &dialerLog{}
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":" + tg.port()}}, r, lg, "svc")
		if res.err != bridgeRefused {
			t.Fatalf("got %v, want %v", res.err, bridgeRefused)
		}
		browserSafe(t, res.err, "127.0.0.1", tg.port(), host)
		if !strings.Contains(lg.String(), "127.0.0.1") || !strings.Contains(lg.String(), "loopback") {
			t.Errorf("the log does not name the refused address and why: %q", lg)
		}
		tg.untouched(t)
	})

	t.Run("allowed network connects", func(t *testing.T) {
		tg := startTarget(t, echoServe)
		r := &fakeResolver{t: t, host: host, answers: [][]netip.Addr{addrs("127.0.0.1")}}
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":" + tg.port(), AllowNetworks: bridgeLoopback}}, r, &dialerLog{}, "svc")
		if res.err != nil {
			t.Fatal(res.err)
		}
		if got := res.conn.RemoteAddr().String(); got != tg.addr() {
			t.Fatalf("connected to %s, want %s", got, tg.addr())
		}
		echoRoundTrip(t, res.conn)
	})

	t.Run("IPv4-mapped answer in an allowed network", func(t *testing.T) {
		tg := startTarget(t, echoServe)
		r := &fakeResolver{t: t, host: host, answers: [][]netip.Addr{addrs("::ffff:127.0.0.1")}}
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":" + tg.port(), AllowNetworks: bridgeLoopback}}, r, &dialerLog{}, "svc")
		if res.err != nil {
			t.Fatal(res.err)
		}
		echoRoundTrip(t, res.conn)
	})

	t.Run("mixed answers dial only the allowed one", func(t *testing.T) {
		tg := startTarget(t, echoServe)
		r := &fakeResolver{t: t, host: host, answers: [][]netip.Addr{addrs("10.0.0.1", "127.0.0.1")}}
		lg := &dialerLog{}
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":" + tg.port(), AllowNetworks: bridgeLoopback}}, r, lg, "svc")
		if res.err != nil {
			t.Fatalf("%v (log: %s)", res.err, lg)
		}
		if got := res.conn.RemoteAddr().String(); got != tg.addr() {
			t.Fatalf("connected to %s, want %s", got, tg.addr())
		}
		// 10.0.0.1 was refused before any connect: the log says so, and
		// no connect failed (a dial of it would have failed or timed out).
		log := lg.String()
		if !strings.Contains(log, "refused") || !strings.Contains(log, "10.0.0.1") || strings.Contains(log, "connecting") {
			t.Errorf("log %q", log)
		}
		if r.calls.Load() != 1 {
			t.Errorf("%d lookups", r.calls.Load())
		}
	})

	t.Run("answers are pinned per connection", func(t *testing.T) {
		// A rebinding resolver: the first answer passes the check, every
		// later one points at the metadata service. One connection makes
		// exactly one lookup, so the second answer cannot redirect it.
		tg := startTarget(t, echoServe)
		r := &fakeResolver{t: t, host: host, answers: [][]netip.Addr{addrs("127.0.0.1"), addrs("169.254.169.254")}}
		targets := []BridgeTarget{{Name: "svc", Address: host + ":" + tg.port(), AllowNetworks: bridgeLoopback}}
		res := dial(t, targets, r, &dialerLog{}, "svc")
		if res.err != nil {
			t.Fatal(res.err)
		}
		if n := r.calls.Load(); n != 1 {
			t.Fatalf("%d lookups for one connection, want 1", n)
		}
		if got := res.conn.RemoteAddr().String(); got != tg.addr() {
			t.Fatalf("connected to %s, want %s", got, tg.addr())
		}
		echoRoundTrip(t, res.conn)
		// The next connection resolves again and sees the new answer.
		res = dial(t, targets, r, &dialerLog{}, "svc")
		if res.err != bridgeRefused {
			t.Fatalf("after the answer changed: %v, want %v", res.err, bridgeRefused)
		}
		if n := r.calls.Load(); n != 2 {
			t.Fatalf("%d lookups for two connections, want 2", n)
		}
	})

	t.Run("IP literal is checked without a lookup", func(t *testing.T) {
		tg := startTarget(t, echoServe)
		res := dial(t, []BridgeTarget{{Name: "svc", Address: tg.addr()}}, nil, &dialerLog{}, "svc")
		if res.err != bridgeRefused {
			t.Fatalf("got %v, want %v", res.err, bridgeRefused)
		}
		browserSafe(t, res.err, "127.0.0.1", tg.port())
		tg.untouched(t)
		res = dial(t, []BridgeTarget{{Name: "meta", Address: "169.254.169.254:80", AllowNetworks: bridgeLoopback}}, nil, &dialerLog{}, "meta")
		if res.err != bridgeRefused {
			t.Fatalf("metadata service: got %v, want %v", res.err, bridgeRefused)
		}
	})

	t.Run("unknown target", func(t *testing.T) {
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":1"}}, nil, &dialerLog{}, "other")
		if res.err != bridgeUnknown {
			t.Fatalf("got %v, want %v", res.err, bridgeUnknown)
		}
	})

	t.Run("name that does not resolve", func(t *testing.T) {
		r := &fakeResolver{t: t, host: host, err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
		lg := &dialerLog{}
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":1"}}, r, lg, "svc")
		if res.err != bridgeUnreachable {
			t.Fatalf("got %v, want %v", res.err, bridgeUnreachable)
		}
		browserSafe(t, res.err, host)
		if !strings.Contains(lg.String(), "no such host") {
			t.Errorf("the log lacks the resolver's error: %q", lg)
		}
	})

	t.Run("closed port", func(t *testing.T) {
		addr := closedAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		r := &fakeResolver{t: t, host: host, answers: [][]netip.Addr{addrs("127.0.0.1")}}
		lg := &dialerLog{}
		res := dial(t, []BridgeTarget{{Name: "svc", Address: host + ":" + port, AllowNetworks: bridgeLoopback}}, r, lg, "svc")
		if res.err != bridgeUnreachable {
			t.Fatalf("got %v, want %v", res.err, bridgeUnreachable)
		}
		browserSafe(t, res.err, "127.0.0.1", port, host, "refused")
		if !strings.Contains(lg.String(), addr) {
			t.Errorf("the log does not name the address: %q", lg)
		}
	})
}

// echoRoundTrip checks that c reaches an echo server.
func echoRoundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping\n" {
		t.Fatalf("echo: %q %v", b, err)
	}
}

// bridgeClient is a WebSocket client of /tcp/{name}, on the raw client of
// the WebSocket tests.
type bridgeClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

// dialBridge opens /tcp/{name} and fails the test unless it upgrades.
func dialBridge(t *testing.T, n *testNode, name string) *bridgeClient {
	t.Helper()
	conn, br, resp := wsUpgrade(t, n, "/tcp/"+name, nil, nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade /tcp/%s: %d %s", name, resp.StatusCode, body)
	}
	_ = conn.SetDeadline(time.Time{})
	return &bridgeClient{t: t, conn: conn, br: br}
}

// bridgeRefusal asks for /tcp/{name} and returns the status and JSON body
// of the refusal.
func bridgeRefusal(t *testing.T, n *testNode, name string, hdr http.Header) (int, errorBody, string) {
	t.Helper()
	_, _, resp := wsUpgrade(t, n, "/tcp/"+name, hdr, nil)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("/tcp/%s upgraded, want a refusal", name)
	}
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("/tcp/%s: %d with Content-Type %q: %s", name, resp.StatusCode, ct, body)
	}
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("/tcp/%s: body %q: %v", name, body, err)
	}
	return resp.StatusCode, e, string(body)
}

func (c *bridgeClient) send(frames ...wsFrame) {
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

func binFrame(p []byte) wsFrame { return wsFrame{fin: true, op: opBinary, payload: p} }

// next returns the next data or close frame, answering pings on the way.
func (c *bridgeClient) next() (ws.OpCode, []byte) {
	c.t.Helper()
	for {
		h, p := readServerFrame(c.t, c.conn, c.br, false)
		switch h.OpCode {
		case ws.OpPing:
			c.send(wsFrame{fin: true, op: opPong, payload: p})
		case ws.OpPong:
		default:
			return h.OpCode, p
		}
	}
}

// read returns the next n bytes from the target, and in how many
// messages they came; each must be binary.
func (c *bridgeClient) read(n int) ([]byte, int) {
	c.t.Helper()
	var got []byte
	msgs := 0
	for len(got) < n {
		op, p := c.next()
		if op != ws.OpBinary {
			c.t.Fatalf("after %d of %d bytes: frame %v %q, want binary", len(got), n, op, p)
		}
		got = append(got, p...)
		msgs++
	}
	if len(got) > n {
		c.t.Fatalf("%d bytes, want %d: %q", len(got), n, got)
	}
	return got, msgs
}

// expectClose reads the rest of what the target sent, then a close frame
// with code and reason; it answers the close, checks that the server ends
// the connection, and returns the bytes.
func (c *bridgeClient) expectClose(code int, reason string) []byte {
	c.t.Helper()
	var got []byte
	for {
		op, p := c.next()
		if op == ws.OpBinary {
			got = append(got, p...)
			continue
		}
		if op != ws.OpClose {
			c.t.Fatalf("frame %v %q, want binary or close", op, p)
		}
		if len(p) < 2 {
			c.t.Fatalf("close frame without a code: %q", p)
		}
		if gc, gr := int(binary.BigEndian.Uint16(p)), string(p[2:]); gc != code || gr != reason {
			c.t.Fatalf("close %d %q, want %d %q", gc, gr, code, reason)
		}
		break
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
	_, _ = c.conn.Write(closeFrame(uint16(code), "").bytes()) // the server may be gone already
	_ = c.conn.SetReadDeadline(time.Now().Add(waitTimeout))
	rest, err := io.ReadAll(c.br)
	if len(rest) > 0 || err != nil {
		c.t.Fatalf("after the close frame: %q, %v", rest, err)
	}
	_ = c.conn.Close()
	return got
}

// startBridgeNode starts a node whose bridge has targets.
func startBridgeNode(t *testing.T, targets []BridgeTarget, cfg func(*gateway.Config), opts func(*Options)) *testNode {
	t.Helper()
	if err := ValidateBridge(targets, nil); err != nil {
		t.Fatal(err)
	}
	return startNode(t, cfg, func(o *Options) {
		o.Bridge = targets
		if opts != nil {
			opts(o)
		}
	})
}

// TestBridgeRedis: a real protocol through the native bridge.
func TestBridgeRedis(t *testing.T) {
	noLeaks(t)
	n := startBridgeNode(t, []BridgeTarget{{Name: "redis", Address: redisAddr(t), AllowNetworks: bridgeLoopback}}, nil, nil)
	c := dialBridge(t, n, "redis")

	c.send(binFrame([]byte("PING\r\n")))
	if got, _ := c.read(7); string(got) != "+PONG\r\n" {
		t.Fatalf("PING: %q", got)
	}

	// One command in four messages, split inside tokens.
	cmd := "*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n"
	c.send(binFrame([]byte(cmd[:3])), binFrame([]byte(cmd[3:9])), binFrame([]byte(cmd[9:20])), binFrame([]byte(cmd[20:])))
	if got, _ := c.read(11); string(got) != "$5\r\nhello\r\n" {
		t.Fatalf("split ECHO: %q", got)
	}

	// One message in three fragments with a ping between two.
	c.send(wsFrame{op: opBinary, payload: []byte("*2\r\n$4\r\nEC")},
		wsFrame{fin: true, op: opPing, payload: []byte("p")},
		wsFrame{op: opCont, payload: []byte("HO\r\n$5\r\nwor")},
		wsFrame{fin: true, op: opCont, payload: []byte("ld\r\n")})
	for {
		op, p := c.next()
		if op == ws.OpPong {
			continue
		}
		if op != ws.OpBinary || string(p) != "$5\r\nworld\r\n" {
			t.Fatalf("fragmented ECHO: %v %q", op, p)
		}
		break
	}

	// A text message is written as its bytes (UTF-8).
	c.send(textFrame("*2\r\n$4\r\nECHO\r\n$6\r\nh\u00e9llo\r\n"))
	if got, _ := c.read(12); string(got) != "$6\r\nh\u00e9llo\r\n" {
		t.Fatalf("text ECHO: %q", got)
	}

	// SET and GET of 1 MiB of random bytes, each way in many messages.
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	key := "cometgate:bridge-test:" + hex.EncodeToString(rnd[:])
	value := make([]byte, 1<<20)
	_, _ = rand.Read(value)
	var set []byte
	set = fmt.Appendf(set, "*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", len(key), key, len(value))
	set = append(set, value...)
	set = append(set, "\r\n$2\r\nEX\r\n$3\r\n120\r\n"...)
	var frames []wsFrame
	for p := set; len(p) > 0; {
		k := min(len(p), 60000)
		frames = append(frames, binFrame(p[:k]))
		p = p[k:]
	}
	c.send(frames...)
	if got, _ := c.read(5); string(got) != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	c.send(binFrame(fmt.Appendf(nil, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(key), key)))
	head := fmt.Sprintf("$%d\r\n", len(value))
	got, msgs := c.read(len(head) + len(value) + 2)
	if string(got[:len(head)]) != head || !bytes.Equal(got[len(head):len(got)-2], value) || string(got[len(got)-2:]) != "\r\n" {
		t.Fatalf("GET: %d bytes do not match the value", len(got))
	}
	if msgs < 2 {
		t.Errorf("1 MiB came in %d message(s)", msgs)
	}
	c.send(binFrame(fmt.Appendf(nil, "*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n", len(key), key)))
	if got, _ := c.read(4); string(got) != ":1\r\n" {
		t.Fatalf("DEL: %q", got)
	}

	// QUIT: Redis answers and closes, so does the bridge.
	c.send(binFrame([]byte("QUIT\r\n")))
	if got := c.expectClose(1000, "target closed the connection"); string(got) != "+OK\r\n" {
		t.Fatalf("QUIT: %q", got)
	}
	waitNoSessions(t, n)
}

// TestBridgeRefusals: what the node refuses before the upgrade, as JSON,
// with nothing opened and nothing of the network told.
func TestBridgeRefusals(t *testing.T) {
	noLeaks(t)
	local := startTarget(t, echoServe)
	echo := startTarget(t, echoServe)
	closed := closedAddr(t)
	n := startBridgeNode(t, []BridgeTarget{
		{Name: "local", Address: local.addr()}, // loopback, not allowed
		{Name: "closed", Address: closed, AllowNetworks: bridgeLoopback},
		{Name: "echo", Address: echo.addr(), AllowNetworks: bridgeLoopback},
	}, nil, func(o *Options) {
		o.AllowedOrigins = []string{"https://app.example"}
		o.MaxSessionsPerIP = 1
	})
	open := 0 // bridged sessions the test holds
	check := func(name string, hdr http.Header, status int, want errorBody) {
		t.Helper()
		got, e, body := bridgeRefusal(t, n, name, hdr)
		if got != status || e.Code != want.Code || !strings.HasPrefix(e.Error, want.Error) {
			t.Errorf("/tcp/%s: %d %s, want %d %+v", name, got, body, status, want)
		}
		for _, s := range []string{"127.0.0.1", local.port(), echo.port(), closed} {
			if strings.Contains(body, s) {
				t.Errorf("/tcp/%s: the refusal %s names %q", name, body, s)
			}
		}
		waitFor(t, "the refused session to end", func() bool { return n.gw.SessionCount() == open })
	}
	check("nope", nil, http.StatusNotFound, errorBody{Error: "unknown TCP target", Code: 4404})
	check("a%2Fb", nil, http.StatusNotFound, errorBody{Error: "unknown TCP target", Code: 4404})
	check("local", nil, http.StatusForbidden, errorBody{Error: "target address not allowed", Code: 4403})
	local.untouched(t)
	check("closed", nil, http.StatusBadGateway, errorBody{Error: "target unreachable", Code: 3502})
	check("echo", http.Header{"Origin": {"http://evil.example"}}, http.StatusForbidden, errorBody{Error: "origin not allowed", Code: 4003})
	echo.untouched(t)

	// The exact body of a refusal.
	_, _, resp := wsUpgrade(t, n, "/tcp/nope", nil, nil)
	if body, _ := io.ReadAll(resp.Body); string(body) != `{"error":"unknown TCP target","code":4404}`+"\n" {
		t.Errorf("body %q", body)
	}

	// The per-address limit counts bridged sessions like any other.
	c := dialBridge(t, n, "echo")
	open = 1
	check("echo", nil, http.StatusTooManyRequests, errorBody{Error: "too many sessions", Code: 4029})
	c.send(closeFrame(1000, ""))
	if op, _ := c.next(); op != ws.OpClose {
		t.Fatalf("frame %v, want the close answer", op)
	}
	waitNoSessions(t, n)
	c = dialBridge(t, n, "echo") // the address's slot is free again
	c.send(binFrame([]byte("x")))
	if got, _ := c.read(1); string(got) != "x" {
		t.Fatalf("echo %q", got)
	}
}

// TestBridgeClose: the target closing ends the WebSocket with 1000 after
// every byte it sent; the client closing ends the target's connection.
func TestBridgeClose(t *testing.T) {
	noLeaks(t)
	payload := appendSeq(nil, 0, 300<<10)
	bye := startTarget(t, func(c net.Conn) {
		_, _ = c.Write(payload)
	})
	targetEOF := make(chan error, 1)
	sink := startTarget(t, func(c net.Conn) {
		_ = c.SetReadDeadline(time.Now().Add(2 * waitTimeout))
		n, err := io.Copy(io.Discard, c)
		if err == nil && n != 3 {
			err = fmt.Errorf("%d bytes, want 3", n)
		}
		targetEOF <- err
	})
	n := startBridgeNode(t, []BridgeTarget{
		{Name: "bye", Address: bye.addr(), AllowNetworks: bridgeLoopback},
		{Name: "sink", Address: sink.addr(), AllowNetworks: bridgeLoopback},
	}, nil, nil)

	c := dialBridge(t, n, "bye")
	got := c.expectClose(1000, "target closed the connection")
	if !bytes.Equal(got, payload) {
		t.Fatalf("%d bytes before the close, want the %d the target sent (%v)", len(got), len(payload), checkSeq(got, 0))
	}
	waitNoSessions(t, n)

	c = dialBridge(t, n, "sink")
	c.send(binFrame([]byte("abc")))
	c.send(closeFrame(1000, "bye"))
	if op, p := c.next(); op != ws.OpClose || binary.BigEndian.Uint16(p) != 1000 {
		t.Fatalf("frame %v %q, want the close answer", op, p)
	}
	select {
	case err := <-targetEOF:
		if err != nil {
			t.Fatalf("the target's connection: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the target's connection did not end")
	}
	waitNoSessions(t, n)
	waitReaders(t, n)
}

// stallLimit bounds what the connections between a stalled side and the
// bridge may hold (kernel socket buffers, which autotune up to some MiB
// each): far less than an unbounded queue would take.
const stallLimit = 64 << 20

// TestBridgeBackpressureDown: a target that writes without end to a
// client that does not read is stopped by the bridge (its writes stall),
// and loses nothing: the client then reads the stream in order.
func TestBridgeBackpressureDown(t *testing.T) {
	noLeaks(t)
	var written atomic.Int64
	tg := startTarget(t, func(c net.Conn) {
		buf := make([]byte, 0, 16<<10)
		var off int64
		for {
			buf = appendSeq(buf[:0], off, 16<<10)
			k, err := c.Write(buf)
			off += int64(k)
			written.Store(off)
			if err != nil {
				return
			}
		}
	})
	// Long heartbeat and write timeout: the client stays silent and does
	// not read while the test waits for the stall.
	n := startBridgeNode(t, []BridgeTarget{{Name: "flood", Address: tg.addr(), AllowNetworks: bridgeLoopback}},
		func(c *gateway.Config) { c.Heartbeat = 10 * time.Second },
		func(o *Options) { o.WriteTimeout = 2 * waitTimeout })
	c := dialBridge(t, n, "flood")

	stalled := waitStall(t, "the target's writes", written.Load)
	t.Logf("the target stalled after %d bytes", stalled)

	// Read well past the stall point: everything comes, in order.
	var off int64
	for off < stalled+4<<20 {
		op, p := c.next()
		if op != ws.OpBinary {
			t.Fatalf("at %d: frame %v %q", off, op, p)
		}
		if err := checkSeq(p, off); err != nil {
			t.Fatal(err)
		}
		off += int64(len(p))
	}
	_ = c.conn.Close()
	waitNoSessions(t, n)
}

// waitStall waits until progress() stops growing (the same value at ten
// polls in a row) and returns it; it fails the test when the value passes
// stallLimit.
func waitStall(t *testing.T, what string, progress func() int64) int64 {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	last, same := int64(-1), 0
	for same < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not stall (at %d bytes)", what, last)
		}
		time.Sleep(20 * time.Millisecond)
		v := progress()
		if v > stallLimit {
			t.Fatalf("%s reached %d bytes without stalling: no backpressure", what, v)
		}
		if v == last && v > 0 {
			same++
		} else {
			last, same = v, 0
		}
	}
	return last
}

// TestBridgeBackpressureUp: a client that writes without end to a target
// that does not read is stopped (a write of its blocks), and loses
// nothing: the target then reads all of it, in order.
func TestBridgeBackpressureUp(t *testing.T) {
	noLeaks(t)
	tg := startTarget(t, nil)
	n := startBridgeNode(t, []BridgeTarget{{Name: "slow", Address: tg.addr(), AllowNetworks: bridgeLoopback}}, nil, nil)
	c := dialBridge(t, n, "slow")
	target := tg.conn(t)

	const msgSize = 32 << 10
	var sent int64 // payload bytes of the messages written, the last one maybe in part
	var rest []byte
	for rest == nil {
		if sent > stallLimit {
			t.Fatalf("%d bytes written while the target reads nothing: no backpressure", sent)
		}
		frame := binFrame(appendSeq(nil, sent, msgSize)).bytes()
		sent += msgSize
		// A write that cannot finish within a second is blocked: nothing
		// makes room while the target does not read.
		_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		k, err := c.conn.Write(frame)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("write: %v", err)
			}
			rest = frame[k:]
		}
	}
	t.Logf("a write blocked after %d bytes", sent)

	read := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		var off int64
		for off < sent {
			_ = target.SetReadDeadline(time.Now().Add(waitTimeout))
			k, err := target.Read(buf[:min(int64(len(buf)), sent-off)])
			if err := checkSeq(buf[:k], off); err != nil {
				read <- err
				return
			}
			off += int64(k)
			if err != nil && off < sent {
				read <- fmt.Errorf("after %d of %d bytes: %v", off, sent, err)
				return
			}
		}
		read <- nil
	}()
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
	if _, err := c.conn.Write(rest); err != nil {
		t.Fatalf("finishing the blocked write: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}

	// The client goes away: the target's connection ends.
	_ = c.conn.Close()
	_ = target.SetReadDeadline(time.Now().Add(waitTimeout))
	if k, err := target.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the target read %d, %v after the client left, want EOF", k, err)
	}
	waitNoSessions(t, n)
}

// TestBridgeShutdown: draining the node closes a bridged WebSocket with
// 3000 and the target's connection.
func TestBridgeShutdown(t *testing.T) {
	noLeaks(t)
	tg := startTarget(t, nil)
	n := startBridgeNode(t, []BridgeTarget{{Name: "t", Address: tg.addr(), AllowNetworks: bridgeLoopback}}, nil, nil)
	c := dialBridge(t, n, "t")
	target := tg.conn(t)
	if _, err := target.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.read(5); string(got) != "hello" {
		t.Fatalf("got %q", got)
	}
	shut := make(chan error, 1)
	go func() { shut <- n.gw.Shutdown(t.Context()) }()
	if got := c.expectClose(gateway.DisconnectShutdown.Code, gateway.DisconnectShutdown.Reason); len(got) != 0 {
		t.Fatalf("%q before the close", got)
	}
	_ = target.SetReadDeadline(time.Now().Add(waitTimeout))
	if k, err := target.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the target read %d, %v, want EOF", k, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	waitNoSessions(t, n)
	waitReaders(t, n)
	// A drained node refuses new bridges as it refuses other sessions.
	status, e, _ := bridgeRefusal(t, n, "t", nil)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("after the shutdown: %d %+v", status, e)
	}
}

// waitNoSessions waits until every session of n has ended.
func waitNoSessions(t *testing.T, n *testNode) {
	t.Helper()
	waitFor(t, "no sessions", func() bool { return n.gw.SessionCount() == 0 })
}

// TestBridgeMaxConnections: a target's MaxConnections bounds the node's
// open connections to it; one more is refused with 503 (3503, retry
// later) and the target never sees it; a closed bridge gives its slot
// back.
func TestBridgeMaxConnections(t *testing.T) {
	noLeaks(t)
	echo := startTarget(t, echoServe)
	n := startBridgeNode(t, []BridgeTarget{{Name: "echo", Address: echo.addr(), AllowNetworks: bridgeLoopback, MaxConnections: 2}}, nil, nil)
	a, b := dialBridge(t, n, "echo"), dialBridge(t, n, "echo")
	for _, c := range []*bridgeClient{a, b} {
		c.send(binFrame([]byte("x")))
		if got, _ := c.read(1); string(got) != "x" {
			t.Fatalf("echo %q", got)
		}
	}
	status, e, body := bridgeRefusal(t, n, "echo", nil)
	if status != http.StatusServiceUnavailable || e.Code != 3503 || e.Error != "target busy" {
		t.Fatalf("a third bridge: %d %s", status, body)
	}
	waitFor(t, "the refused session to end", func() bool { return n.gw.SessionCount() == 2 })
	a.send(closeFrame(1000, ""))
	if op, _ := a.next(); op != ws.OpClose {
		t.Fatalf("frame %v, want the close answer", op)
	}
	waitFor(t, "the closed bridge to end", func() bool { return n.gw.SessionCount() == 1 })
	// The slot comes back when the target connection is closed, which may
	// follow the session's end by a moment.
	waitFor(t, "the slot to be given back", func() bool { return n.srv.bridge.open["echo"].Load() == 1 })
	c := dialBridge(t, n, "echo")
	c.send(binFrame([]byte("y")))
	if got, _ := c.read(1); string(got) != "y" {
		t.Fatalf("echo %q", got)
	}
}

// bridgeGoroutines counts the goroutines reading a bridged session's
// sides: the browser's (on the poller's goroutine) and the target's (the
// pump).
func bridgeGoroutines() int {
	buf := make([]byte, 1<<20)
	st := string(buf[:runtime.Stack(buf, true)])
	return strings.Count(st, "transports.(*bridgeLink).pumpParking") + strings.Count(st, "transports.(*wsConn).onInput")
}

// hasPoller reports whether this platform has the node's poller.
func hasPoller() bool {
	p, err := newPoller()
	if err != nil {
		return false
	}
	p.close()
	return true
}

// TestBridgeIdle: a bridged session whose sides are both silent for
// bridgeIdleAfter keeps no goroutine for either (both wait in the
// node's poller) and takes up again when either sends; a frame that
// arrives in pieces further apart than that is not cut; a target that
// closes, or a browser that does, ends a parked session as a busy one.
func TestBridgeIdle(t *testing.T) {
	noLeaks(t)
	if !hasPoller() {
		t.Skip("no poller on this platform")
	}
	old := bridgeIdleAfter
	bridgeIdleAfter = 50 * time.Millisecond
	t.Cleanup(func() { bridgeIdleAfter = old })

	tg := startTarget(t, nil)
	n := startBridgeNode(t, []BridgeTarget{{Name: "t", Address: tg.addr(), AllowNetworks: bridgeLoopback}}, nil, nil)
	c := dialBridge(t, n, "t")
	target := tg.conn(t)
	_ = target.SetDeadline(time.Now().Add(2 * waitTimeout))
	got := func(msg string) {
		t.Helper()
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(target, b); err != nil || string(b) != msg {
			t.Fatalf("target read %q, %v; want %q", b, err, msg)
		}
	}
	up := func(msg string) {
		t.Helper()
		c.send(binFrame([]byte(msg)))
		got(msg)
	}
	down := func(msg string) {
		t.Helper()
		if _, err := target.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.read(len(msg)); string(got) != msg {
			t.Fatalf("browser read %q, want %q", got, msg)
		}
	}
	parked := func() {
		t.Helper()
		waitFor(t, "both sides parked in the poller", func() bool { return bridgeGoroutines() == 0 })
	}

	up("ping")
	down("pong")
	parked()
	down("from the target first")
	up("then the browser")
	parked()
	up("from the browser first")
	parked()

	// One frame in two writes, further apart than the idle time.
	whole := binFrame([]byte("a frame in pieces")).bytes()
	for i, piece := range [][]byte{whole[:5], whole[5:]} {
		if i > 0 {
			time.Sleep(4 * bridgeIdleAfter)
		}
		if _, err := c.conn.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	got("a frame in pieces")
	parked()

	// The target closes while parked.
	_ = target.Close()
	if got := c.expectClose(1000, "target closed the connection"); len(got) != 0 {
		t.Fatalf("%q before the close", got)
	}
	waitNoSessions(t, n)

	// The browser closes while parked.
	c = dialBridge(t, n, "t")
	target = tg.conn(t)
	_ = target.SetDeadline(time.Now().Add(2 * waitTimeout))
	up("hello")
	down("hello")
	parked()
	c.send(closeFrame(1000, "bye"))
	if op, p := c.next(); op != ws.OpClose || binary.BigEndian.Uint16(p) != 1000 {
		t.Fatalf("frame %v %q, want the close answer", op, p)
	}
	if k, err := target.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the target read %d, %v, want EOF", k, err)
	}
	_ = c.conn.Close()
	waitNoSessions(t, n)
	waitReaders(t, n)
}
