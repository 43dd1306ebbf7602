package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cometgate/cometgate/gateway"
	"github.com/cometgate/cometgate/transports"
)

// testAnnounceInterval keeps node discovery and expiry to a fraction of a
// second in these tests.
const testAnnounceInterval = 200 * time.Millisecond

// clusterNode is a node started with a short announcement interval; table
// is its node table.
type clusterNode struct {
	*node
	id    string
	table *gateway.Nodes
}

// startClusterNode is startNode with the announcement interval
// shortened and the node table kept.
func startClusterNode(t *testing.T, id string, env ...string) *clusterNode {
	t.Helper()
	n := &clusterNode{id: id}
	n.node = launchNode(t, nil, append([]string{"COMETGATE_NODE_ID=" + id}, env...), hooks{
		announceInterval: testAnnounceInterval,
		nodes:            func(tab *gateway.Nodes) { n.table = tab },
	})
	if n.table == nil {
		t.Fatalf("node %s: forwarding is off\n%s", id, n.logs)
	}
	return n
}

// startPair starts node A on an embedded NATS server reachable over TCP and
// node B connected to it, and waits until each knows the other.
func startPair(t *testing.T, env ...string) (a, b *clusterNode) {
	t.Helper()
	// A 1s heartbeat completes a long-poll with nothing to say quickly.
	env = append([]string{"COMETGATE_SESSION_HEARTBEAT=1s"}, env...)
	a = startClusterNode(t, "nodea", append([]string{"COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0"}, env...)...)
	b = startClusterNode(t, "nodeb", append([]string{"COMETGATE_BROKER_KIND=nats",
		"COMETGATE_BROKER_NATS_URLS=" + a.emb.ClientURL()}, env...)...)
	waitKnown(t, a, b)
	waitKnown(t, b, a)
	return a, b
}

// waitKnown waits until n's table has other, at other's address.
func waitKnown(t *testing.T, n, other *clusterNode) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if u, ok := n.table.Lookup(other.id); ok {
			if u != "http://"+other.addr {
				t.Fatalf("%s knows %s at %s, want http://%s", n.id, other.id, u, other.addr)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never learnt of %s\n%s\n%s", n.id, other.id, n.logs, other.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// roundRobin is a plain round-robin load balancer in front of the nodes:
// each request goes to the next node, no stickiness.
type roundRobin struct {
	srv    *httptest.Server
	tr     *http.Transport
	next   atomic.Uint64
	counts []atomic.Int64 // requests per backend
}

func newRoundRobin(t *testing.T, nodes ...*clusterNode) *roundRobin {
	t.Helper()
	rr := &roundRobin{tr: &http.Transport{}, counts: make([]atomic.Int64, len(nodes))}
	targets := make([]*url.URL, len(nodes))
	for i, n := range nodes {
		targets[i], _ = url.Parse("http://" + n.addr)
	}
	proxy := &httputil.ReverseProxy{
		Transport:     rr.tr,
		FlushInterval: -1,
		Rewrite: func(pr *httputil.ProxyRequest) {
			i := int((rr.next.Add(1) - 1) % uint64(len(targets)))
			rr.counts[i].Add(1)
			pr.SetURL(targets[i])
			pr.Out.Host = pr.In.Host
		},
	}
	rr.srv = httptest.NewServer(proxy)
	t.Cleanup(func() {
		rr.srv.Close()
		rr.tr.CloseIdleConnections()
	})
	return rr
}

func (rr *roundRobin) url(path string) string { return rr.srv.URL + path }

// newTestClient is an HTTP client whose connections are closed at cleanup.
func newTestClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

type packet struct {
	Seq    uint64          `json:"seq"`
	T      string          `json:"t"`
	SID    string          `json:"sid"`
	ID     int             `json:"id"`
	Ch     string          `json:"ch"`
	Data   json.RawMessage `json:"data"`
	Code   int             `json:"code"`
	Reason string          `json:"reason"`
}

// pollOnce makes one long-polling request and returns its packets; any
// status but 200 fails the test.
func pollOnce(t *testing.T, c *http.Client, u string) []packet {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("GET %s: reading: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	var pkts []packet
	if err := json.Unmarshal(body, &pkts); err != nil {
		t.Fatalf("GET %s: %v: %s", u, err, body)
	}
	return pkts
}

// readXHRStream reads one XHR stream, passing each packet to f, until the
// stream ends or f returns false.
func readXHRStream(t *testing.T, c *http.Client, u string, f func(packet) bool) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" { // prelude, heartbeat
			continue
		}
		var p packet
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		if !f(p) {
			return
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading %s: %v", u, err)
	}
}

// publishVia publishes data on channel through the publish API at base.
func publishVia(c *http.Client, base, channel string, data int) error {
	body := fmt.Sprintf(`{"channel":%q,"data":%d}`, channel, data)
	resp, err := c.Post(base+"/api/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("publish %d: %d %s", data, resp.StatusCode, b)
	}
	return nil
}

// publishAll publishes 0..count-1 on channel, one after the other (each
// confirmed before the next, so their order is the broker's), alternately
// through each node (not through the balancer, whose turns then belong to
// the session's requests alone); it returns a channel that yields the
// first error or nil when done.
func publishAll(wg *sync.WaitGroup, c *http.Client, nodes []*clusterNode, channel string, count int) <-chan error {
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range count {
			if err := publishVia(c, nodes[i%len(nodes)].url(""), channel, i); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	return errc
}

// sequence checks a session's packets as they arrive: seq contiguous from
// 1, and msg payloads 0, 1, 2, … in order.
type sequence struct {
	t        *testing.T
	sid      string
	lastSeq  uint64
	msgs     int
	dups     int
	oks      map[int]bool
	channels map[string]int
}

func (s *sequence) add(p packet) {
	s.t.Helper()
	if p.Seq == 0 { // transport-level packet (no seq)
		s.t.Fatalf("transport-level packet: %+v", p)
	}
	if p.Seq <= s.lastSeq {
		s.dups++ // resent, unacknowledged: allowed by the protocol
		return
	}
	if p.Seq != s.lastSeq+1 {
		s.t.Fatalf("seq jumped from %d to %d: packets lost", s.lastSeq, p.Seq)
	}
	s.lastSeq = p.Seq
	switch p.T {
	case "hello":
		if s.sid != "" {
			s.t.Fatalf("a second hello: the session changed from %s to %s", s.sid, p.SID)
		}
		s.sid = p.SID
	case "msg":
		if s.channels == nil {
			s.channels = map[string]int{}
		}
		s.channels[p.Ch]++
		if p.Ch == "demo.rr" || p.Ch == "demo.xs" {
			if string(p.Data) != fmt.Sprint(s.msgs) {
				s.t.Fatalf("message %d: got data %s: out of order or lost", s.msgs, p.Data)
			}
			s.msgs++
		}
	case "ok":
		if s.oks == nil {
			s.oks = map[int]bool{}
		}
		s.oks[p.ID] = true
	case "close", "err":
		s.t.Fatalf("unexpected %s packet: %+v", p.T, p)
	}
}

func TestForwardLongPollingRoundRobin(t *testing.T) {
	a, b := startPair(t)
	rr := newRoundRobin(t, a, b)
	c := newTestClient(t)

	seq := &sequence{t: t}
	for _, p := range pollOnce(t, c, rr.url("/poll?ch=demo.rr")) {
		seq.add(p)
	}
	if !strings.HasPrefix(seq.sid, "nodea.") && !strings.HasPrefix(seq.sid, "nodeb.") {
		t.Fatalf("no hello with a session id of either node: sid %q", seq.sid)
	}
	owner, other := a, b
	if strings.HasPrefix(seq.sid, "nodeb.") {
		owner, other = b, a
	}

	const count = 200
	var wg sync.WaitGroup
	defer wg.Wait()
	pubErr := publishAll(&wg, newTestClient(t), []*clusterNode{a, b}, "demo.rr", count)
	polls := 0
	deadline := time.Now().Add(90 * time.Second)
	for seq.msgs < count {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d messages in %d polls", seq.msgs, count, polls)
		}
		select {
		case err := <-pubErr:
			if err != nil {
				t.Fatal(err)
			}
			pubErr = nil
		default:
		}
		polls++
		for _, p := range pollOnce(t, c, rr.url(fmt.Sprintf("/poll/%s?ack=%d", seq.sid, seq.lastSeq))) {
			seq.add(p)
		}
	}
	if pubErr != nil {
		if err := <-pubErr; err != nil {
			t.Fatal(err)
		}
	}
	if rr.counts[0].Load() < 2 || rr.counts[1].Load() < 2 {
		t.Fatalf("the balancer did not use both nodes: %d and %d requests", rr.counts[0].Load(), rr.counts[1].Load())
	}
	t.Logf("%d messages in %d polls, %d resent packets", seq.msgs, polls, seq.dups)

	// Upstream frames reach the session from either node: one send to the
	// owner, one to the other node (which forwards it).
	for i, n := range []*clusterNode{owner, other} {
		frame := fmt.Sprintf(`{"op":"pub","id":%d,"ch":"demo.rr","data":%d}`, 1001+i, count+i)
		resp, err := c.Post(n.url("/session/"+seq.sid+"/send"), "application/json", strings.NewReader(frame))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("send via %s: %d %s", n.id, resp.StatusCode, body)
		}
	}
	for !seq.oks[1001] || !seq.oks[1002] || seq.msgs < count+2 {
		if time.Now().After(deadline) {
			t.Fatalf("sends not answered: oks %v, %d messages", seq.oks, seq.msgs)
		}
		for _, p := range pollOnce(t, c, rr.url(fmt.Sprintf("/poll/%s?ack=%d", seq.sid, seq.lastSeq))) {
			seq.add(p)
		}
	}

	// The node that does not own the session forwarded, and counted it.
	if got := metricValue(t, c, other, `cometgate_forwarded_requests_total{result="ok"}`); got < 2 {
		t.Errorf("%s forwarded %v requests, want some", other.id, got)
	}
	if got := metricValue(t, c, owner, `cometgate_forwarded_requests_total{result="ok"}`); got != 0 {
		t.Errorf("the owner %s forwarded %v requests, want none", owner.id, got)
	}
}

// metricValue reads one sample from a node's /metrics (0 when absent).
func metricValue(t *testing.T, c *http.Client, n *clusterNode, sample string) float64 {
	t.Helper()
	resp, err := c.Get(n.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("%s: %v", sample, err)
			}
			return f
		}
	}
	return 0
}

func TestForwardXHRStreamingRoundRobin(t *testing.T) {
	// Small streams: each ends after 4 KiB, so the client re-attaches many
	// times, alternately on each node.
	a, b := startPair(t, "COMETGATE_SESSION_STREAM_LIMIT_BYTES=4096")
	rr := newRoundRobin(t, a, b)
	c := newTestClient(t)
	seq := &sequence{t: t}

	// stream reads one XHR stream to its end (or to the last message),
	// feeding seq; onHello runs when the hello packet arrived.
	const count = 300
	stream := func(u string, onHello func()) {
		t.Helper()
		readXHRStream(t, c, u, func(p packet) bool {
			seq.add(p)
			if p.T == "hello" && onHello != nil {
				onHello()
			}
			return seq.msgs < count // the last stream stays open: the client closes it
		})
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	var pubErr <-chan error
	// Publishing starts once the session exists: its subscription is in
	// place before the hello goes out.
	stream(rr.url("/xhr_stream?ch=demo.xs"), func() {
		pubErr = publishAll(&wg, newTestClient(t), []*clusterNode{a, b}, "demo.xs", count)
	})
	if pubErr == nil {
		t.Fatal("no hello on the first stream")
	}
	streams := 1
	deadline := time.Now().Add(90 * time.Second)
	for seq.msgs < count {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d messages in %d streams", seq.msgs, count, streams)
		}
		streams++
		stream(rr.url(fmt.Sprintf("/xhr_stream/%s?ack=%d", seq.sid, seq.lastSeq)), nil)
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	// Streams alternate between the nodes: the one that does not own the
	// session forwarded every other one.
	if streams < 4 {
		t.Errorf("only %d streams: the test did not re-attach across nodes", streams)
	}
	other := a
	if strings.HasPrefix(seq.sid, "nodea.") {
		other = b
	}
	if got := metricValue(t, c, other, `cometgate_forwarded_requests_total{result="ok"}`); got < float64(streams/2) {
		t.Errorf("%s forwarded %v of %d streams", other.id, got, streams)
	}
	t.Logf("%d messages over %d streams, %d resent packets", seq.msgs, streams, seq.dups)
}

func TestForwardedRequestNotForwardedAgain(t *testing.T) {
	a, b := startPair(t)
	c := newTestClient(t)
	seq := &sequence{t: t}
	for _, p := range pollOnce(t, c, a.url("/poll?ch=demo.loop")) {
		seq.add(p)
	}
	if !strings.HasPrefix(seq.sid, "nodea.") {
		t.Fatalf("session %q not on node A", seq.sid)
	}
	status := func(n *clusterNode, path string, hdr bool) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, n.url(path), nil)
		if hdr {
			req.Header.Set(transports.HeaderForwarded, "nodex")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	// Without the header B forwards to A: the session answers (a
	// heartbeat after a while, or anything pending).
	path := fmt.Sprintf("/poll/%s?ack=%d", seq.sid, seq.lastSeq)
	if st, body := status(b, path, false); st != http.StatusOK {
		t.Fatalf("forwarded poll: %d %s", st, body)
	}
	// With it B does not forward: "session not found" as without
	// forwarding. The session on A is untouched.
	st, body := status(b, path, true)
	var e struct {
		Code int `json:"code"`
	}
	_ = json.Unmarshal([]byte(body), &e)
	if st != http.StatusNotFound || e.Code != gateway.DisconnectNotFound.Code {
		t.Fatalf("already-forwarded poll: %d %s; want 404 with code %d", st, body, gateway.DisconnectNotFound.Code)
	}
	for _, p := range []string{"/session/" + seq.sid + "/send", "/jsonp_send/" + seq.sid + "?cb=f&d=%7B%7D"} {
		method := http.MethodGet
		if strings.HasPrefix(p, "/session/") {
			method = http.MethodPost
		}
		req, _ := http.NewRequest(method, b.url(p), strings.NewReader(`{"op":"ping","id":1}`))
		req.Header.Set(transports.HeaderForwarded, "nodex")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), fmt.Sprint(gateway.DisconnectNotFound.Code)) {
			t.Errorf("%s %s with the header: %d %s; want code %d", method, p, resp.StatusCode, body, gateway.DisconnectNotFound.Code)
		}
	}
	// A session of a node nobody knows: not forwarded either.
	if st, _ := status(b, "/poll/nodez.AAAAAAAAAAAAAAAAAAAAAA", false); st != http.StatusNotFound {
		t.Errorf("poll for an unknown node's session: %d, want 404", st)
	}
}

func TestForwardForgetsSilentNode(t *testing.T) {
	a, b := startPair(t)
	c := newTestClient(t)
	// A session on B, seen through A.
	seq := &sequence{t: t}
	for _, p := range pollOnce(t, c, b.url("/poll?ch=demo.gone")) {
		seq.add(p)
	}
	path := fmt.Sprintf("/poll/%s?ack=%d", seq.sid, seq.lastSeq)
	if pkts := pollOnce(t, c, a.url(path)); len(pkts) > 0 {
		t.Fatalf("unexpected packets %+v", pkts)
	}

	b.shutdown(t)
	// B's announcements stopped: A forgets it within three intervals and
	// answers "session not found" (the client starts over) rather than
	// 502 (owner unreachable), which it may answer meanwhile.
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.Get(a.url(path))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			if !strings.Contains(string(body), fmt.Sprint(gateway.DisconnectNotFound.Code)) {
				t.Fatalf("404 without code %d: %s", gateway.DisconnectNotFound.Code, body)
			}
			break
		}
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("poll for a stopped node's session: %d %s", resp.StatusCode, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("A still forwards to the stopped node B\n%s", a.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := a.table.Lookup(b.id); ok {
		t.Error("A still knows B")
	}
}

// TestForwardSockJSRoundRobin: a SockJS session over XHR polling behind a
// round-robin balancer. The client chooses the session id, so no request
// names a node: the node the first request reaches asks the other whether
// it has the session, opens it, and every later request that lands on the
// other node is forwarded to it. Exactly one open frame, every message in
// order, nothing lost.
func TestForwardSockJSRoundRobin(t *testing.T) {
	a, b := startPair(t)
	rr := newRoundRobin(t, a, b)
	c := newTestClient(t)
	url := rr.url("/sockjs/000/" + fmt.Sprintf("rr%d", time.Now().UnixNano()))
	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := c.Post(url+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if st, body := post("/xhr", ""); st != http.StatusOK || body != "o\n" {
		t.Fatalf("open: %d %q", st, body)
	}
	seq := &sequence{t: t}
	poll := func() {
		t.Helper()
		st, body := post("/xhr", "")
		if st != http.StatusOK {
			t.Fatalf("poll: %d %q", st, body)
		}
		for _, frame := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
			switch {
			case frame == "h":
			case strings.HasPrefix(frame, "a["):
				var msgs []string
				if err := json.Unmarshal([]byte(frame[1:]), &msgs); err != nil {
					t.Fatalf("frame %q: %v", frame, err)
				}
				for _, m := range msgs {
					var p packet
					if err := json.Unmarshal([]byte(m), &p); err != nil {
						t.Fatalf("message %q: %v", m, err)
					}
					seq.add(p)
				}
			default:
				// "o" again: a second node opened the same id.
				t.Fatalf("unexpected frame %q", frame)
			}
		}
	}
	if st, body := post("/xhr_send", `["{\"op\":\"sub\",\"id\":1,\"ch\":\"demo.rr\"}"]`); st != http.StatusNoContent {
		t.Fatalf("send: %d %q", st, body)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !seq.oks[1] {
		if time.Now().After(deadline) {
			t.Fatal("the subscription was not answered")
		}
		poll()
	}
	const count = 100
	var wg sync.WaitGroup
	defer wg.Wait()
	pubErr := publishAll(&wg, newTestClient(t), []*clusterNode{a, b}, "demo.rr", count)
	for seq.msgs < count {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d messages", seq.msgs, count)
		}
		poll()
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	if rr.counts[0].Load() < 2 || rr.counts[1].Load() < 2 {
		t.Fatalf("the balancer did not use both nodes: %d and %d requests", rr.counts[0].Load(), rr.counts[1].Load())
	}
	if seq.dups != 0 {
		t.Errorf("%d packets came twice", seq.dups)
	}
}

// TestForwardClusterKey: nodes sharing node.cluster_key find each other
// and forward; an announcement forged on the broker (unsigned) is ignored
// and counted, so it cannot steer forwarding (and the browsers' cookies
// it carries) anywhere.
func TestForwardClusterKey(t *testing.T) {
	key := "COMETGATE_NODE_CLUSTER_KEY=" + strings.Repeat("c", 32)
	a, b := startPair(t, key)
	nc, err := nats.Connect(a.emb.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	forged := `{"id":"evil","url":"http://127.0.0.1:9"}`
	if err := nc.Publish(gateway.NodesChannel, []byte(forged)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t)
	deadline := time.Now().Add(20 * time.Second)
	for metricValue(t, c, a, `cometgate_node_messages_rejected_total{reason="unsigned"}`) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the forged announcement was not counted as rejected")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if u, ok := a.table.Lookup("evil"); ok {
		t.Fatalf("the forged node is known at %s", u)
	}
	// Forwarding between the two works, signed.
	seq := &sequence{t: t}
	for _, p := range pollOnce(t, c, b.url("/poll?ch=demo.rr")) {
		seq.add(p)
	}
	if !strings.HasPrefix(seq.sid, "nodeb.") {
		t.Fatalf("sid %q", seq.sid)
	}
	if err := publishVia(c, a.url(""), "demo.rr", 0); err != nil {
		t.Fatal(err)
	}
	for seq.msgs < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no message through the forwarding node")
		}
		for _, p := range pollOnce(t, c, a.url(fmt.Sprintf("/poll/%s?ack=%d", seq.sid, seq.lastSeq))) {
			seq.add(p)
		}
	}
}
