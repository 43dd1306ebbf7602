package transports

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/cometgate/cometgate/gateway"
)

// sseEvent is one event of the stream: its fields as the EventSource
// parser sees them.
type sseEvent struct {
	id      string
	hasID   bool
	data    []string
	retry   string
	comment bool // a comment line (":…") was part of it
}

// sseClient reads one EventSource stream.
type sseClient struct {
	t      *testing.T
	n      *testNode
	resp   *http.Response
	br     *bufio.Reader
	cancel context.CancelFunc
	sid    string
	sess   *gateway.Session
	seq    uint64   // the last seq read
	beats  int      // heartbeat comments seen
	ids    []string // every id line seen
	lastID string   // the id of the last packet's event, "" without one
	cur    string   // the last packet's "cur"
}

// openSSE opens /sse?query with extra headers, checks the response head
// and the retry hint, and reads hello.
func openSSE(t *testing.T, n *testNode, query string, hdr http.Header) *sseClient {
	t.Helper()
	resp, cancel := sseRequest(t, n, query, hdr)
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET /sse?%s: %d %s", query, resp.StatusCode, body)
	}
	c := &sseClient{t: t, n: n, resp: resp, br: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(c.close)
	// A retry hint drawn per stream, between 1 and 5 s: a failed node's
	// EventSources do not all come back at once.
	if ev := c.event(); len(ev.data) != 0 || !retryHint(ev.retry) {
		t.Fatalf("the stream does not start with a retry hint of 1000-4999 ms: %+v", ev)
	}
	hello := c.next()
	if hello.T != gateway.TypeHello || hello.SID == "" || hello.seq() != 1 {
		t.Fatalf("first packet is not hello seq 1: %+v", hello)
	}
	c.sid = hello.SID
	if c.sess = n.gw.Session(c.sid); c.sess == nil {
		t.Fatalf("session %s not found after hello", c.sid)
	}
	return c
}

func sseRequest(t *testing.T, n *testNode, query string, hdr http.Header) (*http.Response, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url("/sse?"+query), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := n.client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /sse: %v", err)
	}
	return resp, cancel
}

// close drops the stream, as a browser tab that went away.
func (c *sseClient) close() {
	if c.resp != nil {
		c.cancel()
		c.resp.Body.Close()
		c.resp = nil
	}
}

// event reads the next event (up to its blank line).
func (c *sseClient) event() sseEvent {
	c.t.Helper()
	var ev sseEvent
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading the stream: %v (got %q)", err, line)
		}
		line = strings.TrimSuffix(line, "\n")
		if strings.Contains(line, "\r") {
			c.t.Fatalf("CR in an event line %q", line)
		}
		if line == "" {
			return ev
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			ev.comment = true
		case "id":
			ev.id, ev.hasID = value, true
			c.ids = append(c.ids, value)
		case "data":
			ev.data = append(ev.data, value)
		case "retry":
			ev.retry = value
		default:
			c.t.Fatalf("unexpected field in %q", line)
		}
	}
}

// next returns the next packet, skipping heartbeats, and checks that its
// seq continues the session's numbering.
func (c *sseClient) next() packet {
	c.t.Helper()
	for {
		ev := c.event()
		if len(ev.data) == 0 {
			if !ev.comment || ev.hasID || ev.retry != "" {
				c.t.Fatalf("event without data: %+v", ev)
			}
			c.beats++
			continue
		}
		if len(ev.data) != 1 || ev.comment {
			c.t.Fatalf("a packet is one data line: %+v", ev)
		}
		var p packet
		var cur struct {
			Cur string `json:"cur"`
		}
		if err := json.Unmarshal([]byte(ev.data[0]), &p); err != nil || json.Unmarshal([]byte(ev.data[0]), &cur) != nil {
			c.t.Fatalf("bad packet %q: %v", ev.data[0], err)
		}
		c.lastID, c.cur = "", cur.Cur
		if ev.hasID {
			c.lastID = ev.id
		}
		if p.Seq == nil || p.seq() != c.seq+1 {
			c.t.Fatalf("seq %d after %d (gap or duplicate): %s", p.seq(), c.seq, ev.data[0])
		}
		c.seq = p.seq()
		return p
	}
}

// answer waits for the ok or err packet answering request id.
func (c *sseClient) answer(id int64) packet {
	c.t.Helper()
	for {
		p := c.next()
		if (p.T == gateway.TypeOK || p.T == gateway.TypeErr) && p.ID == id {
			return p
		}
		if p.T == gateway.TypeClose {
			c.t.Fatalf("closed while waiting for the answer to %d: %+v", id, p)
		}
	}
}

// expectEnd checks that the stream ends (after a close packet with code,
// unless code is 0) and that the session is over.
func (c *sseClient) expectEnd(code int) {
	c.t.Helper()
	if code != 0 {
		p := c.next()
		if p.T != gateway.TypeClose || p.Code != code {
			c.t.Fatalf("want close %d, got %+v", code, p)
		}
	}
	rest, err := io.ReadAll(c.br)
	if err != nil || len(rest) != 0 {
		c.t.Fatalf("stream did not end cleanly: %q %v", rest, err)
	}
	select {
	case <-c.sess.Done():
	case <-time.After(waitTimeout):
		c.t.Fatalf("session %s did not end", c.sid)
	}
}

// TestSSEHeaders: an event stream that proxies neither cache nor
// transform nor buffer, and that starts with a retry hint.
func TestSSEHeaders(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "ch=demo.h", nil)
	h := c.resp.Header
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "text/event-stream" || params["charset"] != "utf-8" {
		t.Errorf("Content-Type %q", h.Get("Content-Type"))
	}
	if cc := h.Get("Cache-Control"); cc != "no-store, no-transform" {
		t.Errorf("Cache-Control %q", cc)
	}
	if xa := h.Get("X-Accel-Buffering"); xa != "no" {
		t.Errorf("X-Accel-Buffering %q", xa)
	}
	if nosniff := h.Get("X-Content-Type-Options"); nosniff != "nosniff" {
		t.Errorf("X-Content-Type-Options %q", nosniff)
	}
	if c.resp.ContentLength != -1 || len(c.resp.TransferEncoding) != 0 || !c.resp.Close {
		t.Errorf("want a plain stream to the end of the connection: length %d, encoding %v, close %v",
			c.resp.ContentLength, c.resp.TransferEncoding, c.resp.Close)
	}
	if h.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("CORS headers without an Origin: %v", h)
	}
}

// TestSSEThousandInOrder: 1,000 messages arrive in order with contiguous
// seq; a channel without history gives no event ids.
func TestSSEThousandInOrder(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "ch=demo.t", nil)
	if p := c.next(); p.T != gateway.TypeOK || p.Ch != "demo.t" || p.ID != 0 {
		t.Fatalf("want ok for the URL subscription, got %+v", p)
	}
	const total = 1000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.publishN(t, "demo.t", 0, total)
	}()
	for want := 0; want < total; want++ {
		if p := c.next(); p.T != gateway.TypeMsg || p.index() != want {
			wg.Wait()
			t.Fatalf("want message %d, got %+v", want, p)
		}
	}
	wg.Wait()
	if c.seq != total+2 {
		t.Fatalf("last seq %d, want %d", c.seq, total+2)
	}
	if len(c.ids) != 0 {
		t.Fatalf("id lines on a channel without history: %q", c.ids)
	}
	// The client going away ends the session.
	sess := c.sess
	c.close()
	select {
	case <-sess.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("session did not end when the client went away")
	}
	waitReaders(t, n)
}

// TestSSEURLSubscriptions: each ch= is answered, in URL order, with ok (or
// err) carrying the channel.
func TestSSEURLSubscriptions(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "ch=demo.a&ch=demo.*&ch=secret.x&ch=demo.a&ch=bad..name", nil)
	want := []struct {
		t    string
		ch   string
		code int
	}{
		{gateway.TypeOK, "demo.a", 0},
		{gateway.TypeOK, "demo.*", 0},
		{gateway.TypeErr, "secret.x", 403},
		{gateway.TypeErr, "demo.a", 409},
		{gateway.TypeErr, "bad..name", 422},
	}
	for _, w := range want {
		if p := c.next(); p.T != w.t || p.Ch != w.ch || p.Code != w.code || p.ID != 0 {
			t.Fatalf("want %s %s %d, got %+v", w.t, w.ch, w.code, p)
		}
	}
	n.publishN(t, "demo.b", 1, 1)
	if p := c.next(); p.T != gateway.TypeMsg || p.Ch != "demo.b" || p.index() != 1 {
		t.Fatalf("want message 1 on demo.b through demo.*, got %+v", p)
	}

	// More channels than a session may subscribe: refused up front.
	resp, cancel := sseRequest(t, n, strings.Repeat("ch=demo.x&", 129), nil)
	defer cancel()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("129 channels: %d %s", resp.StatusCode, body)
	}
}

// TestSSESend: requests go by POST /session/{sid}/send and are answered on
// the stream.
func TestSSESend(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "", nil)
	postSend(t, n, c.sid, `{"op":"sub","id":1,"ch":"demo.s"}`)
	if p := c.answer(1); p.T != gateway.TypeOK || p.Ch != "demo.s" {
		t.Fatalf("sub: %+v", p)
	}
	postSend(t, n, c.sid, `[{"op":"pub","id":2,"ch":"demo.s","text":"hello"},{"op":"ping","id":3}]`)
	var gotMsg, got2, got3 bool
	for !gotMsg || !got2 || !got3 {
		p := c.next()
		switch {
		case p.T == gateway.TypeMsg && p.Text != nil && *p.Text == "hello":
			gotMsg = true
		case p.T == gateway.TypeOK && p.ID == 2:
			got2 = true
		case p.T == gateway.TypeOK && p.ID == 3:
			got3 = true
		default:
			t.Fatalf("unexpected %+v", p)
		}
	}
	postSend(t, n, c.sid, `{"op":"unsub","id":4,"ch":"demo.s"}`)
	if p := c.answer(4); p.T != gateway.TypeOK || p.Ch != "demo.s" {
		t.Fatalf("unsub: %+v", p)
	}
	postSend(t, n, c.sid, `{"op":"unsub","id":5,"ch":"demo.s"}`)
	if p := c.answer(5); p.T != gateway.TypeErr || p.Code != 404 {
		t.Fatalf("second unsub: %+v", p)
	}
	// A bad frame is answered on the stream; the session goes on.
	postSend(t, n, c.sid, `{"op":"jump","id":6}`)
	if p := c.answer(6); p.T != gateway.TypeErr || p.Code != 400 {
		t.Fatalf("bad op: %+v", p)
	}
	// A body that is not JSON at all is refused by the request.
	resp, err := n.client.Post(n.url("/session/"+c.sid+"/send"), "text/plain", strings.NewReader("nope"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("non-JSON body: %d %s", resp.StatusCode, body)
	}
	// An unknown session is 404 with code 4004.
	resp, err = n.client.Post(n.url("/session/n1.nope/send"), "text/plain", strings.NewReader(`{"op":"ping","id":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	expectJSONError(t, resp.StatusCode, body, http.StatusNotFound, 4004)
	// Neither refused request reached the session: the next answer on the
	// stream is the next request's.
	postSend(t, n, c.sid, `{"op":"ping","id":7}`)
	if p := c.next(); p.T != gateway.TypeOK || p.ID != 7 {
		t.Fatalf("want ok 7, got %+v", p)
	}
}

// TestSSEHeartbeat: an idle stream gets comment lines at the heartbeat
// interval (1s here).
func TestSSEHeartbeat(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "ch=demo.idle", nil)
	if p := c.next(); p.T != gateway.TypeOK {
		t.Fatalf("sub: %+v", p)
	}
	for c.beats < 2 {
		ev := c.event()
		if !ev.comment || len(ev.data) != 0 || ev.hasID {
			t.Fatalf("idle stream sent %+v", ev)
		}
		c.beats++
	}
}

// TestSSEOrigin: a page from another site may not open a stream unless
// its Origin is allowed; allowed cross-origin streams get CORS headers
// with credentials.
func TestSSEOrigin(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, func(o *Options) { o.AllowedOrigins = []string{"https://app.example"} })
	for _, origin := range []string{"https://evil.example", "http://app.example", "null"} {
		resp, cancel := sseRequest(t, n, "ch=demo.o", http.Header{"Origin": {origin}})
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		var e errorBody
		if resp.StatusCode != http.StatusForbidden || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "origin not allowed") {
			t.Fatalf("origin %s: %d %s", origin, resp.StatusCode, body)
		}
	}
	if c := n.gw.SessionCount(); c != 0 {
		t.Fatalf("refused streams left %d sessions", c)
	}
	c := openSSE(t, n, "ch=demo.o", http.Header{"Origin": {"https://app.example"}})
	h := c.resp.Header
	if h.Get("Access-Control-Allow-Origin") != "https://app.example" || h.Get("Access-Control-Allow-Credentials") != "true" ||
		!slices.Contains(h.Values("Vary"), "Origin") {
		t.Fatalf("CORS headers of an allowed origin: %v", h)
	}
	// The send endpoint checks the Origin too.
	req, _ := http.NewRequest(http.MethodPost, n.url("/session/"+c.sid+"/send"), strings.NewReader(`{"op":"ping","id":1}`))
	req.Header.Set("Origin", "https://evil.example")
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("send from another origin: %d", resp.StatusCode)
	}

	t.Run("same host by default", func(t *testing.T) {
		n := startNode(t, nil, nil)
		openSSE(t, n, "", http.Header{"Origin": {"http://" + n.http.Listener.Addr().String()}})
		openSSE(t, n, "", nil)
		resp, cancel := sseRequest(t, n, "", http.Header{"Origin": {"http://evil.example"}})
		defer cancel()
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("cross-site origin: %d", resp.StatusCode)
		}
	})
}

// TestSSEShutdown: a node going away ends the stream with close 3000.
func TestSSEShutdown(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "ch=demo.s", nil)
	c.next() // ok
	shut := make(chan error, 1)
	go func() { shut <- n.gw.Shutdown(context.Background()) }()
	c.expectEnd(gateway.DisconnectShutdown.Code)
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	waitReaders(t, n)
}

// TestSSEResumeCursors: where each URL subscription resumes from.
func TestSSEResumeCursors(t *testing.T) {
	chs := []string{"demo.a", "demo.b", "demo.c"}
	for _, tc := range []struct {
		name     string
		target   string
		lastID   string
		channels []string
		want     []string
	}{
		{"no cursors", "/sse?ch=demo.a&ch=demo.b&ch=demo.c", "", chs, []string{"", "", ""}},
		{"cursor params", "/sse?ch=demo.a&ch=demo.b&ch=demo.c&cursor.demo.a=4&cursor.demo.c=9", "", chs, []string{"4", "", "9"}},
		{"Last-Event-ID wins", "/sse?cursor.demo.a=4&cursor.demo.b=5&cursor.demo.c=9", "41,42,43", chs, []string{"41", "42", "43"}},
		{"an empty id keeps the param", "/sse?cursor.demo.a=4&cursor.demo.b=5&cursor.demo.c=9", "41,,43", chs, []string{"41", "5", "43"}},
		{"wrong count: fewer", "/sse?cursor.demo.a=4&cursor.demo.c=9", "41,43", chs, []string{"4", "", "9"}},
		{"wrong count: more", "/sse?cursor.demo.b=5", "1,2,3,4", chs, []string{"", "5", ""}},
		{"lastEventId param", "/sse?cursor.demo.a=4&lastEventId=7,8,9", "", chs, []string{"7", "8", "9"}},
		{"header before lastEventId", "/sse?lastEventId=7,8,9", "1,2,3", chs, []string{"1", "2", "3"}},
		{"lastEventId of the wrong count", "/sse?cursor.demo.b=5&lastEventId=7", "", chs, []string{"", "5", ""}},
		{"one channel", "/sse?cursor.demo.a=4", "12", chs[:1], []string{"12"}},
		{"no channels", "/sse", "12", nil, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tc.target, nil)
			if tc.lastID != "" {
				r.Header.Set("Last-Event-ID", tc.lastID)
			}
			if got := sseResumeCursors(r, tc.channels); !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSSEClientGone: a client that drops the stream ends its session, and
// the connection's watcher returns; the session's packets are not kept.
func TestSSEClientGone(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	c := openSSE(t, n, "ch=demo.g", nil)
	sid := c.sid
	c.next()
	c.close()
	waitFor(t, "the session to end", func() bool { return n.gw.Session(sid) == nil })
	waitReaders(t, n)
	resp, err := n.client.Post(n.url("/session/"+sid+"/send"), "text/plain", strings.NewReader(`{"op":"ping","id":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	expectJSONError(t, resp.StatusCode, body, http.StatusNotFound, 4004)
}

// startHistoryNode is startNode with a JetStream stream storing demo.h.>,
// so that those channels have history and cursors.
func startHistoryNode(t *testing.T) *testNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	emb, err := natsbroker.StartEmbedded(ctx, natsbroker.EmbeddedOptions{Streams: []natsbroker.StreamSpec{
		{Name: "demo_h", Patterns: []string{"demo.h.>"}, Memory: true, Create: true},
	}})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	gw, err := gateway.New(gateway.Config{
		NodeID:          "n1",
		Heartbeat:       time.Second,
		DisconnectDelay: 2 * time.Second,
		Rules:           gateway.Rules{{Pattern: "demo.>", Subscribe: gateway.Anyone, Publish: gateway.Anyone}},
		Logger:          slog.New(slog.DiscardHandler),
	}, emb.Broker())
	if err != nil {
		_ = emb.Close()
		t.Fatalf("gateway.New: %v", err)
	}
	srv := New(Options{Gateway: gw, Logger: slog.New(slog.DiscardHandler)})
	n := &testNode{gw: gw, srv: srv, http: httptest.NewServer(srv), client: &http.Client{Transport: &http.Transport{}}}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := gw.Shutdown(sctx); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
		n.client.CloseIdleConnections()
		n.http.Close()
		srv.Wait()
		if err := emb.Close(); err != nil {
			t.Errorf("embedded NATS close: %v", err)
		}
	})
	return n
}

// TestSSEResumeID: a msg on a URL subscription with history sets the event
// id to the cursors of every URL subscription, in URL order ("" for one
// without a cursor yet, or without history); other packets set none. A
// new stream with that id as Last-Event-ID resumes each subscription
// from its cursor.
func TestSSEResumeID(t *testing.T) {
	noLeaks(t)
	n := startHistoryNode(t)
	c := openSSE(t, n, "ch=demo.h.a&ch=demo.x&ch=demo.h.b", nil)
	for i := 0; i < 3; i++ {
		if p := c.next(); p.T != gateway.TypeOK || c.lastID != "" {
			t.Fatalf("want ok without an id, got %+v id %q", p, c.lastID)
		}
	}
	msg := func(ch string, i int) (cur, id string) {
		t.Helper()
		n.publishN(t, ch, i, 1)
		p := c.next()
		if p.T != gateway.TypeMsg || p.Ch != ch || p.index() != i {
			t.Fatalf("want message %d on %s, got %+v", i, ch, p)
		}
		return c.cur, c.lastID
	}
	curA, id := msg("demo.h.a", 1)
	if curA == "" || id != curA+",," {
		t.Fatalf("cur %q id %q", curA, id)
	}
	if cur, id := msg("demo.x", 2); cur != "" || id != "" {
		t.Fatalf("a channel without history: cur %q id %q", cur, id)
	}
	curB, id := msg("demo.h.b", 3)
	if curB == "" || id != curA+",,"+curB {
		t.Fatalf("cur %q id %q", curB, id)
	}
	// An answer on the stream carries no id: EventSource keeps the last.
	postSend(t, n, c.sid, `{"op":"ping","id":1}`)
	if p := c.answer(1); p.T != gateway.TypeOK || c.lastID != "" {
		t.Fatalf("ping answer %+v with id %q", p, c.lastID)
	}
	last := id
	c.close()

	// Missed while away: two on demo.h.a, one on demo.h.b.
	n.publishN(t, "demo.h.a", 4, 2)
	n.publishN(t, "demo.h.b", 6, 1)
	r := openSSE(t, n, "ch=demo.h.a&ch=demo.x&ch=demo.h.b", http.Header{"Last-Event-ID": {last}})
	got := map[string][]int{}
	for len(got["demo.h.a"]) < 2 || len(got["demo.h.b"]) < 1 {
		p := r.next()
		switch p.T {
		case gateway.TypeOK:
		case gateway.TypeMsg:
			got[p.Ch] = append(got[p.Ch], p.index())
		default:
			t.Fatalf("unexpected %+v", p)
		}
	}
	if !slices.Equal(got["demo.h.a"], []int{4, 5}) || !slices.Equal(got["demo.h.b"], []int{6}) || len(got["demo.x"]) != 0 {
		t.Fatalf("resumed with %v, want exactly what was missed", got)
	}
	if ids := strings.Split(r.ids[len(r.ids)-1], ","); len(ids) != 3 || ids[1] != "" || ids[0] == curA || ids[2] == curB {
		t.Fatalf("resume id after the replay %q", r.ids[len(r.ids)-1])
	}
}

// retryHint reports whether an SSE retry field is a whole number of
// milliseconds from 1000 to 4999.
func retryHint(v string) bool {
	ms, err := strconv.Atoi(v)
	return err == nil && ms >= 1000 && ms < 5000
}
