package transports

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cometgate/cometgate/gateway"
)

// refusals is the value of cometgate_refusals_total{reason}.
func refusals(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cometgate_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no cometgate_refusals_total{reason=%q}", reason)
	return 0
}

// limitNode starts a node whose rate limits read clk and whose metrics
// go to reg.
func limitNode(t *testing.T, clk *gateway.ManualClock, reg *prometheus.Registry, cfg func(*gateway.Config), opts func(*Options)) *testNode {
	t.Helper()
	return startNode(t, func(c *gateway.Config) {
		c.Clock = clk.Read
		c.Metrics = gateway.NewMetrics(reg)
		if cfg != nil {
			cfg(c)
		}
	}, opts)
}

// TestWebSocketFloodClosed: a client that floods its WebSocket with tiny
// frames (10,000 pings in a row, while no time passes for the limiter) is
// closed with 4029 after exactly the burst of the default frame rate;
// another session on the node receives every message published meanwhile
// and goes on working.
func TestWebSocketFloodClosed(t *testing.T) {
	noLeaks(t)
	clk := &gateway.ManualClock{}
	reg := prometheus.NewRegistry()
	n := limitNode(t, clk, reg, nil, nil)
	other := dialWS(t, n)
	other.sub(1, "demo.flood")
	flooder := dialWS(t, n)

	const frames = 10000
	var flood []byte
	for range frames {
		flood = append(flood, textFrame(`{"op":"ping"}`).bytes()...)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// In pieces, as a script would send them; the server stops
		// reading once it closed the session, so later writes may fail.
		for i := 0; i < len(flood); i += 16 << 10 {
			if _, err := flooder.conn.Write(flood[i:min(i+16<<10, len(flood))]); err != nil {
				return
			}
		}
	}()
	const msgs = 300
	go func() {
		defer wg.Done()
		n.publishN(t, "demo.flood", 0, msgs)
	}()

	oks := 0
	var closePkt *packet
	for {
		h, p := flooder.readFrame()
		if h.OpCode == ws.OpClose {
			if len(p) < 2 || binary.BigEndian.Uint16(p) != 4029 {
				t.Fatalf("close frame %q, want code 4029", p)
			}
			if reason := string(p[2:]); reason != gateway.DisconnectFrameRate.Reason {
				t.Fatalf("close reason %q", reason)
			}
			break
		}
		if h.OpCode != ws.OpText {
			continue
		}
		pkt := flooder.decode(p)
		switch {
		case pkt.T == gateway.TypeOK:
			oks++
		case pkt.T == gateway.TypeClose:
			closePkt = &pkt
		}
	}
	if closePkt == nil || closePkt.Code != 4029 || closePkt.Reconnect {
		t.Fatalf("close packet %+v, want 4029 without reconnect", closePkt)
	}
	if burst := gateway.DefaultFrameRate.Burst; oks != burst {
		t.Errorf("%d frames answered before the close, want the burst %d", oks, burst)
	}
	_ = flooder.conn.Close()
	flooder.waitEnded(4029)

	got := 0
	for got < msgs {
		p := other.next()
		if p.T != gateway.TypeMsg {
			continue
		}
		if p.index() != got {
			t.Fatalf("message %d arrived as number %d", p.index(), got)
		}
		got++
	}
	wg.Wait()
	other.send(textFrame(`{"op":"ping","id":2}`))
	if p := other.answer(2); p.T != gateway.TypeOK {
		t.Fatalf("ping after the flood: %+v", p)
	}
	if v := refusals(t, reg, "frame_rate"); v != 1 {
		t.Errorf("frame_rate refusals %v, want 1", v)
	}
}

// TestPublishRateOverHTTP: the publish limit counts the pub frames of
// POST bodies (the path of SSE, XHR streaming and the SockJS senders):
// within the burst they are published, past it the session ends with
// 4029.
func TestPublishRateOverHTTP(t *testing.T) {
	noLeaks(t)
	clk := &gateway.ManualClock{}
	reg := prometheus.NewRegistry()
	n := limitNode(t, clk, reg, func(c *gateway.Config) {
		c.PublishRate = gateway.Rate{PerSecond: 1, Burst: 3}
	}, nil)
	c := openSSE(t, n, "", nil)
	postSend(t, n, c.sid, `[{"op":"pub","id":1,"ch":"demo.p","text":"a"},{"op":"pub","id":2,"ch":"demo.p","text":"b"},{"op":"pub","id":3,"ch":"demo.p","text":"c"}]`)
	for id := int64(1); id <= 3; id++ {
		if p := c.answer(id); p.T != gateway.TypeOK {
			t.Fatalf("publish %d: %+v", id, p)
		}
	}
	clk.Advance(time.Second) // one more
	postSend(t, n, c.sid, `[{"op":"pub","id":4,"ch":"demo.p","text":"d"},{"op":"ping","id":5}]`)
	// The ping's answer may come first: publishes wait for the broker.
	for answered := map[int64]bool{}; !answered[4] || !answered[5]; {
		p := c.next()
		if p.T != gateway.TypeOK {
			t.Fatalf("publish 4 and ping 5: %+v", p)
		}
		answered[p.ID] = true
	}
	postSend(t, n, c.sid, `{"op":"pub","id":6,"ch":"demo.p","text":"e"}`)
	p := c.next()
	if p.T != gateway.TypeClose || p.Code != 4029 || p.Reason != gateway.DisconnectPublishRate.Reason {
		t.Fatalf("want close 4029 %q, got %+v", gateway.DisconnectPublishRate.Reason, p)
	}
	c.expectEnd(0)
	if v := refusals(t, reg, "publish_rate"); v != 1 {
		t.Errorf("publish_rate refusals %v, want 1", v)
	}
}

// v6Node serves n's handler on the IPv6 loopback as well: requests come
// from ::1, which TrustedProxies names, and X-Forwarded-For says which
// client each one stands for.
func v6Node(t *testing.T, n *testNode) *testNode {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	s := httptest.NewUnstartedServer(n.srv)
	s.Listener = ln
	s.Start()
	t.Cleanup(s.Close)
	return &testNode{gw: n.gw, srv: n.srv, http: s, client: n.client}
}

// openFrom opens a long-poll session as the client addr (behind the
// trusted proxy) and returns the status, the parsed error body of a
// refusal and the Retry-After header.
func openFrom(t *testing.T, n *testNode, addr string) (int, errorBody, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, n.url("/poll?ch=demo.a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		req.Header.Set("X-Forwarded-For", addr)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var e errorBody
	if resp.StatusCode != http.StatusOK {
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatalf("refusal body %q: %v", body, err)
		}
	}
	return resp.StatusCode, e, resp.Header.Get("Retry-After")
}

// TestSessionsPerIPByPrefix: concurrent sessions count per IPv4 address
// and per IPv6 /64, behind a trusted proxy by the address it reports;
// the count goes down when a session ends.
func TestSessionsPerIPByPrefix(t *testing.T) {
	noLeaks(t)
	reg := prometheus.NewRegistry()
	n := v6Node(t, limitNode(t, &gateway.ManualClock{}, reg, nil, func(o *Options) {
		o.MaxSessionsPerIP = 2
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("::1/128")}
	}))
	for _, tc := range []struct {
		addr   string
		status int
	}{
		{"2001:db8:1:2::1", 200},
		{"2001:db8:1:2:ffff:ffff:ffff:fffe", 200},
		{"2001:db8:1:2::abcd", 429}, // the third of one /64
		{"2001:db8:1:3::1", 200},    // the next /64 is another client
		{"198.51.100.1", 200},
		{"198.51.100.1", 200},
		{"198.51.100.1", 429},
		{"198.51.100.2", 200}, // every IPv4 address is a client
		{"", 200},             // the proxy itself: ::1
	} {
		status, e, _ := openFrom(t, n, tc.addr)
		if status != tc.status || (status == 429 && e.Code != gateway.DisconnectTooManySessions.Code) {
			t.Fatalf("open from %q: %d %+v, want %d", tc.addr, status, e, tc.status)
		}
	}
	if v := refusals(t, reg, "ip_limit"); v != 2 {
		t.Errorf("ip_limit refusals %v, want 2", v)
	}
	// The sessions expire (no poll follows); then the /64 opens again.
	waitFor(t, "the sessions to expire", func() bool { return n.gw.SessionCount() == 0 })
	if status, e, _ := openFrom(t, n, "2001:db8:1:2::abcd"); status != 200 {
		t.Fatalf("open after the sessions ended: %d %+v", status, e)
	}
}

// TestNewSessionRatePerIP: an address opens new sessions at its rate and
// is refused past the burst with 429, code 3029 and the advice to come
// back when its bucket has refilled; other addresses are not affected;
// what the gate remembers of addresses that hold no session expires.
func TestNewSessionRatePerIP(t *testing.T) {
	noLeaks(t)
	clk := &gateway.ManualClock{}
	reg := prometheus.NewRegistry()
	rate := gateway.Rate{PerSecond: 0.5, Burst: 2}
	n := v6Node(t, limitNode(t, clk, reg, nil, func(o *Options) {
		o.NewSessionsPerIP = rate
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("::1/128")}
	}))
	a, b := "2001:db8:a::1", "2001:db8:a::2" // one /64
	for _, addr := range []string{a, b} {
		if status, e, _ := openFrom(t, n, addr); status != 200 {
			t.Fatalf("open from %s: %d %+v", addr, status, e)
		}
	}
	status, e, retry := openFrom(t, n, a)
	if status != http.StatusTooManyRequests || e.Code != gateway.DisconnectSessionRate.Code {
		t.Fatalf("third open: %d %+v, want 429 code 3029", status, e)
	}
	// A token is back in 2 s at 0.5/s; the advice adds up to the 4 s the
	// burst takes to refill.
	if e.Delay < 2000 || e.Delay >= 6000 {
		t.Errorf("delay %d ms, want 2000 to 6000", e.Delay)
	}
	if secs, err := strconv.Atoi(retry); err != nil || int64(secs) != (e.Delay+999)/1000 {
		t.Errorf("Retry-After %q does not round the delay %d ms up", retry, e.Delay)
	}
	if status, e, _ := openFrom(t, n, "2001:db8:b::1"); status != 200 {
		t.Fatalf("another /64 refused: %d %+v", status, e)
	}
	clk.Advance(2 * time.Second)
	if status, e, _ := openFrom(t, n, a); status != 200 {
		t.Fatalf("open after the refill: %d %+v", status, e)
	}
	if v := refusals(t, reg, "ip_rate"); v != 1 {
		t.Errorf("ip_rate refusals %v, want 1", v)
	}

	// Many addresses, one session each: once their sessions ended and
	// their buckets refilled, the gate forgets them.
	for i := range 50 {
		if status, e, _ := openFrom(t, n, fmt.Sprintf("2001:db8:c:%x::1", i)); status != 200 {
			t.Fatalf("open %d: %d %+v", i, status, e)
		}
	}
	if got := n.srv.gate.limits.addresses(); got < 50 {
		t.Fatalf("the gate remembers %d addresses, want at least 50", got)
	}
	waitFor(t, "the sessions to expire", func() bool { return n.gw.SessionCount() == 0 })
	clk.Advance(sweepEvery)
	if status, _, _ := openFrom(t, n, "2001:db8:d::1"); status != 200 {
		t.Fatal("open refused")
	}
	if got := n.srv.gate.limits.addresses(); got != 1 {
		t.Errorf("the gate remembers %d addresses after the sweep, want 1", got)
	}
}

// TestNodeAdmissionRate: a burst of opens on a node limited to 10 new
// sessions a second (burst 5) while no time passes: five are admitted
// and work; the others are refused with 503, code 3005 and a jittered
// retry hint, in each transport's framing (JSON with Retry-After, a JSONP
// callback's close packet, a SockJS close frame); a second later the
// node admits again.
func TestNodeAdmissionRate(t *testing.T) {
	noLeaks(t)
	clk := &gateway.ManualClock{}
	reg := prometheus.NewRegistry()
	n := limitNode(t, clk, reg, nil, func(o *Options) {
		o.NewSessionsPerNode = gateway.Rate{PerSecond: 10, Burst: 5}
		o.SockJS = []SockJSEndpoint{{Prefix: "/sockjs", Mode: SockJSPubSub}}
	})
	const opens = 20
	type result struct {
		status int
		e      errorBody
		retry  string
		sid    string
		acked  uint64
	}
	results := make([]result, opens)
	var wg sync.WaitGroup
	for i := range opens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := n.client.Get(n.url("/poll?ch=demo.n"))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			r := result{status: resp.StatusCode, retry: resp.Header.Get("Retry-After")}
			if r.status == http.StatusOK {
				var pkts []packet
				if err := json.Unmarshal(body, &pkts); err != nil || len(pkts) == 0 || pkts[0].T != gateway.TypeHello {
					t.Errorf("admitted open: %s", body)
					return
				}
				r.sid, r.acked = pkts[0].SID, pkts[len(pkts)-1].seq()
			} else if err := json.Unmarshal(body, &r.e); err != nil {
				t.Errorf("refusal body %q", body)
			}
			results[i] = r
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var admitted []*pollClient
	delays := map[int64]bool{}
	for _, r := range results {
		switch r.status {
		case http.StatusOK:
			admitted = append(admitted, &pollClient{t: t, n: n, sid: r.sid, acked: r.acked})
		case http.StatusServiceUnavailable:
			if r.e.Code != gateway.DisconnectNodeBusy.Code || r.e.Error != gateway.DisconnectNodeBusy.Reason {
				t.Errorf("refusal %+v", r.e)
			}
			// Wait one token (100 ms, advised as at least 1 s) plus a
			// jitter over the second the burst takes to refill.
			if r.e.Delay < 1000 || r.e.Delay >= 2000 {
				t.Errorf("delay %d ms, want 1000 to 2000", r.e.Delay)
			}
			if secs, err := strconv.Atoi(r.retry); err != nil || int64(secs) != (r.e.Delay+999)/1000 {
				t.Errorf("Retry-After %q for a delay of %d ms", r.retry, r.e.Delay)
			}
			delays[r.e.Delay] = true
		default:
			t.Fatalf("open: %d %+v", r.status, r.e)
		}
	}
	if len(admitted) != 5 {
		t.Fatalf("%d opens admitted, want the burst of 5", len(admitted))
	}
	if len(delays) < 2 {
		t.Errorf("every refusal advised the same delay: %v", delays)
	}
	if v := refusals(t, reg, "node_rate"); v != opens-5 {
		t.Errorf("node_rate refusals %v, want %d", v, opens-5)
	}

	// The callback and SockJS framings carry the same refusal.
	status, body := n.do(t, http.MethodGet, "/jsonp?cb=f&ch=demo.n", "")
	if status != http.StatusOK || !strings.Contains(body, `"code":3005`) || !strings.Contains(body, `"reconnect":true,"delay":`) {
		t.Errorf("JSONP refusal: %d %s", status, body)
	}
	status, body = n.do(t, http.MethodPost, "/sockjs/000/limits1/xhr", "")
	if status != http.StatusOK || !strings.HasPrefix(body, `c[3005,"`+gateway.DisconnectNodeBusy.Reason+` (retry in `) {
		t.Errorf("SockJS refusal: %d %s", status, body)
	}

	// The admitted sessions work.
	n.publishN(t, "demo.n", 0, 1)
	for _, c := range admitted {
		got := false
		for !got {
			for _, p := range c.poll() {
				got = got || p.index() == 0
			}
		}
	}
	clk.Advance(time.Second)
	if _, e, _ := openFrom(t, n, ""); e.Code != 0 {
		t.Fatalf("open a second later: %+v", e)
	}
}

// TestMaxSessions: a node that holds its MaxSessions refuses the next
// with 503, code 3005 "node full" and a retry hint of 1 to 5 s, and
// admits again once a session ended.
func TestMaxSessions(t *testing.T) {
	noLeaks(t)
	reg := prometheus.NewRegistry()
	n := limitNode(t, &gateway.ManualClock{}, reg, nil, func(o *Options) { o.MaxSessions = 2 })
	a := openSSE(t, n, "", nil)
	openSSE(t, n, "", nil)
	status, e, retry := openFrom(t, n, "")
	if status != http.StatusServiceUnavailable || e.Code != gateway.DisconnectNodeFull.Code || e.Error != gateway.DisconnectNodeFull.Reason {
		t.Fatalf("third session: %d %+v", status, e)
	}
	if secs, err := strconv.Atoi(retry); err != nil || e.Delay < 1000 || e.Delay >= 5000 || int64(secs) != (e.Delay+999)/1000 {
		t.Errorf("retry hint: Retry-After %q, delay %d ms", retry, e.Delay)
	}
	if v := refusals(t, reg, "global_limit"); v != 1 {
		t.Errorf("global_limit refusals %v, want 1", v)
	}
	a.close()
	waitFor(t, "the first session to end", func() bool { return n.gw.SessionCount() == 1 })
	if status, e, _ := openFrom(t, n, ""); status != http.StatusOK {
		t.Fatalf("open after a session ended: %d %+v", status, e)
	}
}

// TestRefusalsCountedOnce: each refusal counts once, under its own
// reason, whichever check found it.
func TestRefusalsCountedOnce(t *testing.T) {
	noLeaks(t)
	reg := prometheus.NewRegistry()
	n := limitNode(t, &gateway.ManualClock{}, reg, nil, func(o *Options) {
		o.AllowedHosts = []string{"127.0.0.1"}
		o.AllowLoopback = true
	})
	if status, _ := n.do(t, http.MethodGet, "/poll?ch=demo.a", "", "Origin", "http://evil.example"); status != http.StatusForbidden {
		t.Fatalf("foreign origin: %d", status)
	}
	if status, _ := n.do(t, http.MethodPost, "/api/publish", `{"channel":"demo.a","data":1}`,
		"Origin", "http://evil.example", "Content-Type", "application/json"); status != http.StatusForbidden {
		t.Fatalf("cross-site publish: %d", status)
	}
	if status, _ := n.do(t, http.MethodGet, "/poll?ch=demo.a", "", "Host", "evil.example"); status != http.StatusMisdirectedRequest {
		t.Fatalf("foreign host: %d", status)
	}
	for reason, want := range map[string]float64{"origin": 1, "api_key": 1, "host": 1, "ip_rate": 0} {
		if v := refusals(t, reg, reason); v != want {
			t.Errorf("%s refusals %v, want %v", reason, v, want)
		}
	}
}

// TestRefusalInBand: a WebSocket client that asks for it (refusal=close)
// is refused after the upgrade, with a close packet that carries the
// code, the reason and the retry advice, then a close frame with the
// code; an EventSource client, with a stream of that one close packet:
// what a browser can read. A page of another Origin is still refused
// with 403, and a client that does not ask gets the JSON refusal.
func TestRefusalInBand(t *testing.T) {
	noLeaks(t)
	clk := &gateway.ManualClock{}
	reg := prometheus.NewRegistry()
	v, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: authSecret})
	if err != nil {
		t.Fatal(err)
	}
	n := limitNode(t, clk, reg, nil, func(o *Options) {
		o.NewSessionsPerIP = gateway.Rate{PerSecond: 0.5, Burst: 1}
		o.Tokens = v
		o.RequireToken = true
	})
	inband := func(path string) (*wsClient, map[string]any) {
		t.Helper()
		conn, br, resp := wsUpgrade(t, n, path, nil, nil)
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("%s: %d, want the upgrade", path, resp.StatusCode)
		}
		c := &wsClient{t: t, n: n, conn: conn, br: br}
		h, p := c.readFrame()
		var raw map[string]any
		if h.OpCode != ws.OpText || json.Unmarshal(p, &raw) != nil {
			t.Fatalf("%s: first frame %v %q, want a close packet", path, h.OpCode, p)
		}
		return c, raw
	}

	inbandSSE := func(path string) map[string]any {
		t.Helper()
		resp, err := n.client.Get(n.url(path))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		data, ok := strings.CutPrefix(string(body), "retry: 600000\n\ndata: ")
		var raw map[string]any
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" ||
			!ok || !strings.HasSuffix(data, "\n\n") || json.Unmarshal([]byte(data), &raw) != nil {
			t.Fatalf("%s: %d %q %q, want one event with a close packet", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		return raw
	}

	// No token where one is required: 4401, no retry advice.
	c, raw := inband("/ws?refusal=close")
	if raw["t"] != "close" || raw["code"] != 4401.0 || raw["reason"] != gateway.DisconnectUnauthorized.Reason || raw["reconnect"] != false || raw["delay"] != nil {
		t.Errorf("close packet %v", raw)
	}
	closeFrameCode(t, c, 4401)
	if raw := inbandSSE("/sse?refusal=close"); raw["t"] != "close" || raw["code"] != 4401.0 || raw["reconnect"] != false || raw["delay"] != nil {
		t.Errorf("SSE close packet %v", raw)
	}

	// Past the address's rate: 3029 with the advice to come back.
	ok := token(t, "alice", "demo.>")
	dialWSToken(t, n, ok)
	c, raw = inband("/ws?refusal=close&token=" + ok)
	if raw["code"] != float64(gateway.DisconnectSessionRate.Code) || raw["reconnect"] != true {
		t.Errorf("close packet %v", raw)
	}
	if d, _ := raw["delay"].(float64); d < 2000 {
		t.Errorf("delay %v, want the time the address's bucket needs (2 s or more)", raw["delay"])
	}
	closeFrameCode(t, c, gateway.DisconnectSessionRate.Code)
	raw = inbandSSE("/sse?refusal=close&token=" + ok)
	if d, _ := raw["delay"].(float64); raw["code"] != float64(gateway.DisconnectSessionRate.Code) || d < 2000 {
		t.Errorf("SSE close packet %v", raw)
	}

	// Not asked for, or another Origin: refused before the upgrade.
	_, _, resp := wsUpgrade(t, n, "/ws", nil, nil)
	var e errorBody
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusUnauthorized || e.Code != 4401 {
		t.Errorf("without refusal=close: %d %+v", resp.StatusCode, e)
	}
	_, _, resp = wsUpgrade(t, n, "/ws?refusal=close", http.Header{"Origin": {"https://evil.example"}}, nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("another Origin with refusal=close: %d, want 403 before the upgrade", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, n.url("/sse?refusal=close"), nil)
	req.Header.Set("Origin", "https://evil.example")
	if resp, err := n.client.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("an EventSource of another Origin with refusal=close: %v %v, want 403", resp, err)
	} else {
		resp.Body.Close()
	}
	if status, body := httpGetRaw(t, n, "/sse"); status != http.StatusUnauthorized {
		t.Errorf("an EventSource without refusal=close: %d %s, want 401", status, body)
	}
}

// closeFrameCode reads c's close frame and checks its code.
func closeFrameCode(t *testing.T, c *wsClient, code int) {
	t.Helper()
	h, p := c.readFrame()
	if h.OpCode != ws.OpClose || len(p) < 2 || int(binary.BigEndian.Uint16(p)) != code {
		t.Fatalf("frame %v %q, want a close frame with code %d", h.OpCode, p, code)
	}
}
