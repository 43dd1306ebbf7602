package transports

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/cometgate/cometgate/gateway"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for something that should happen; it is
// generous because the tests run under -race on busy machines. Nothing
// asserts how fast anything is.
const waitTimeout = 20 * time.Second

// testNode is a gateway on a real embedded NATS server and the real
// transports.Server on a real loopback listener.
type testNode struct {
	gw     *gateway.Gateway
	broker *natsbroker.Broker // what the gateway runs on, for messages that do not come through it
	srv    *Server
	http   *httptest.Server
	client *http.Client
}

// startNode starts a node; cfg and opts may adjust the configuration.
// Cleanup shuts it down in the production order (gateway, HTTP, broker).
func startNode(t testing.TB, cfg func(*gateway.Config), opts func(*Options)) *testNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// The broker's state reaches the gateway as in cmd/cometgate: through
	// a relay set once the gateway exists, then a catch-up. The broker
	// may become ready only after StartEmbedded returns (its connected
	// callback's round trip), and a gateway told nothing stays unready.
	var relay atomic.Pointer[gateway.Gateway]
	emb, err := natsbroker.StartEmbedded(ctx, natsbroker.EmbeddedOptions{OnState: func(st brokers.State) {
		if g := relay.Load(); g != nil {
			g.BrokerState(st)
		}
	}})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	gcfg := gateway.Config{
		NodeID:    "n1",
		Heartbeat: time.Second,
		// Short, because a node's shutdown waits this long for a
		// session's next request to carry its close packet.
		DisconnectDelay: 2 * time.Second,
		Rules: gateway.Rules{
			{Pattern: "demo.>", Subscribe: gateway.Anyone, Publish: gateway.Anyone},
		},
		Logger: slog.New(slog.DiscardHandler),
	}
	if cfg != nil {
		cfg(&gcfg)
	}
	gw, err := gateway.New(gcfg, emb.Broker())
	if err != nil {
		_ = emb.Close()
		t.Fatalf("gateway.New: %v", err)
	}
	relay.Store(gw)
	if emb.Broker().Ready() {
		gw.BrokerState(brokers.StateConnected)
	}
	o := Options{Gateway: gw, Logger: slog.New(slog.DiscardHandler)}
	if opts != nil {
		opts(&o)
	}
	srv := New(o)
	n := &testNode{gw: gw, broker: emb.Broker(), srv: srv, http: httptest.NewServer(srv), client: &http.Client{Transport: &http.Transport{}}}
	// Parked long-polls' connections come back to the same server, as
	// in cmd/cometgate. The listener is asked for here, not in the
	// goroutine: a node parks polls only once it exists, and a goroutine
	// that started late (a loaded machine) left a test's poll held
	// instead of parked, and the test waiting for it to park.
	var serving sync.WaitGroup
	reentry := srv.Reentry()
	serving.Go(func() { _ = n.http.Config.Serve(reentry) })
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := gw.Shutdown(sctx); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
		// The parked polls the shutdown answered go back to the server
		// before it closes (they are readers until then).
		srv.readers.Wait()
		// The re-entry listener closes, and its Serve returns, before
		// httptest's Close: that Serve registers each connection it
		// accepts with httptest (a WaitGroup Add), which must not
		// overlap Close's Wait.
		_ = reentry.Close()
		serving.Wait()
		n.client.CloseIdleConnections()
		n.http.Close()
		srv.Wait()
		if err := emb.Close(); err != nil {
			t.Errorf("embedded NATS close: %v", err)
		}
	})
	return n
}

func (n *testNode) url(path string) string { return n.http.URL + path }

// publishN publishes n messages {"i":k} on ch through the gateway's API
// path, each confirmed by the broker before the next.
func (n *testNode) publishN(t *testing.T, ch string, from, count int) {
	t.Helper()
	for k := from; k < from+count; k++ {
		if err := n.gw.Publish(context.Background(), ch, fmt.Appendf(nil, `{"i":%d}`, k), ""); err != nil {
			t.Errorf("publish %d: %v", k, err)
			return
		}
	}
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// packet is a decoded server→client packet. Seq is nil for
// transport-level packets.
type packet struct {
	Seq       *uint64         `json:"seq"`
	T         string          `json:"t"`
	ID        int64           `json:"id"`
	Ch        string          `json:"ch"`
	SID       string          `json:"sid"`
	HB        int             `json:"hb"`
	Data      json.RawMessage `json:"data"`
	Text      *string         `json:"text"`
	Code      int             `json:"code"`
	Reason    string          `json:"reason"`
	Reconnect bool            `json:"reconnect"`
	Error     string          `json:"error"`
}

func (p packet) seq() uint64 {
	if p.Seq == nil {
		return 0
	}
	return *p.Seq
}

// index returns k of a {"i":k} message, or -1.
func (p packet) index() int {
	var v struct {
		I *int `json:"i"`
	}
	if p.T != gateway.TypeMsg || json.Unmarshal(p.Data, &v) != nil || v.I == nil {
		return -1
	}
	return *v.I
}

// pollClient drives one of the batch transports (long-polling, JSONP).
type pollClient struct {
	t     *testing.T
	n     *testNode
	jsonp bool
	cb    string
	token string // sent as ?token= with every request when set
	sid   string
	acked uint64 // the highest seq received, sent as ack=
}

func newPollClient(t *testing.T, n *testNode, jsonp bool) *pollClient {
	return &pollClient{t: t, n: n, jsonp: jsonp, cb: "app.cb_1"}
}

func (c *pollClient) path() string {
	if c.jsonp {
		return "/jsonp"
	}
	return "/poll"
}

// open opens the session and returns the first response.
func (c *pollClient) open(channels ...string) []packet {
	c.t.Helper()
	q := url.Values{"ch": channels}
	if c.jsonp {
		q.Set("cb", c.cb)
	}
	if c.token != "" {
		q.Set("token", c.token)
	}
	status, body := c.get(c.path() + "?" + q.Encode())
	if status != http.StatusOK {
		c.t.Fatalf("open: %d %s", status, body)
	}
	pkts := c.decode(body)
	if len(pkts) == 0 || pkts[0].T != gateway.TypeHello || pkts[0].SID == "" || pkts[0].seq() != 1 {
		c.t.Fatalf("open: first response does not start with hello seq 1: %s", body)
	}
	c.sid = pkts[0].SID
	c.acked = pkts[len(pkts)-1].seq()
	return pkts
}

// pollURL is the next poll's path with ack.
func (c *pollClient) pollURL(ack uint64) string {
	q := url.Values{"ack": {strconv.FormatUint(ack, 10)}}
	if c.jsonp {
		q.Set("cb", c.cb)
	}
	if c.token != "" {
		q.Set("token", c.token)
	}
	return c.path() + "/" + c.sid + "?" + q.Encode()
}

// poll makes the next request, acknowledging what it holds, and checks
// that the packets continue the seq without a gap.
func (c *pollClient) poll() []packet {
	c.t.Helper()
	status, body := c.get(c.pollURL(c.acked))
	if status != http.StatusOK {
		c.t.Fatalf("poll: %d %s", status, body)
	}
	pkts := c.decode(body)
	for _, p := range pkts {
		if p.Seq == nil {
			c.t.Fatalf("poll: packet without seq: %s", body)
		}
		if p.seq() != c.acked+1 {
			c.t.Fatalf("poll: seq %d after %d (gap or duplicate): %s", p.seq(), c.acked, body)
		}
		c.acked = p.seq()
	}
	return pkts
}

func (c *pollClient) get(path string) (int, []byte) {
	c.t.Helper()
	return httpGet(c.t, c.n.client, c.n.url(path))
}

func httpGet(t *testing.T, client *http.Client, u string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", u, err)
	}
	checkCommonHeaders(t, resp)
	return resp.StatusCode, body
}

// checkCommonHeaders checks what every response of the family carries.
func checkCommonHeaders(t *testing.T, resp *http.Response) {
	t.Helper()
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store, no-transform" {
		t.Errorf("%s: Cache-Control %q", resp.Request.URL.Path, cc)
	}
	if xa := resp.Header.Get("X-Accel-Buffering"); xa != "no" {
		t.Errorf("%s: X-Accel-Buffering %q", resp.Request.URL.Path, xa)
	}
}

// decode parses a poll body ([…]) or a JSONP body (/**/cb([…]);).
func (c *pollClient) decode(body []byte) []packet {
	c.t.Helper()
	if c.jsonp {
		body = unwrapJSONP(c.t, c.cb, body)
	}
	var pkts []packet
	if err := json.Unmarshal(body, &pkts); err != nil {
		c.t.Fatalf("bad batch %q: %v", body, err)
	}
	return pkts
}

func unwrapJSONP(t *testing.T, cb string, body []byte) []byte {
	t.Helper()
	inner, ok := bytes.CutPrefix(body, []byte("/**/"+cb+"("))
	if ok {
		inner, ok = bytes.CutSuffix(inner, []byte(");"))
	}
	if !ok {
		t.Fatalf("not a call of %s: %q", cb, body)
	}
	return inner
}

// streamClient drives one of the streaming transports (XHR streaming,
// htmlfile); it opens the next stream by itself when one ends.
type streamClient struct {
	t       *testing.T
	n       *testNode
	html    bool
	cb      string
	sid     string
	acked   uint64 // the highest seq received, sent as ack= on the next stream
	resp    *http.Response
	cancel  context.CancelFunc
	br      *bufio.Reader
	streams int    // responses opened
	beats   int    // heartbeats seen
	line    string // the last line read, raw
}

func newStreamClient(t *testing.T, n *testNode, html bool) *streamClient {
	c := &streamClient{t: t, n: n, html: html, cb: "top.cg.$recv"}
	t.Cleanup(c.drop)
	return c
}

func (c *streamClient) path() string {
	if c.html {
		return "/htmlfile"
	}
	return "/xhr_stream"
}

// connect opens a stream: a new session when sid is "", else the next
// stream of the session with ack.
func (c *streamClient) connect(channels ...string) {
	c.t.Helper()
	q := url.Values{}
	if len(channels) > 0 {
		q["ch"] = channels
	}
	if c.html {
		q.Set("cb", c.cb)
	}
	p := c.path()
	if c.sid != "" {
		p += "/" + c.sid
		q.Set("ack", strconv.FormatUint(c.acked, 10))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	method := http.MethodPost
	if c.html {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, c.n.url(p+"?"+q.Encode()), nil)
	if err != nil {
		cancel()
		c.t.Fatal(err)
	}
	resp, err := c.n.client.Do(req)
	if err != nil {
		cancel()
		c.t.Fatalf("%s %s: %v", method, p, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		c.t.Fatalf("%s %s: %d %s", method, p, resp.StatusCode, body)
	}
	checkCommonHeaders(c.t, resp)
	c.resp, c.cancel, c.br = resp, cancel, bufio.NewReader(resp.Body)
	c.streams++
	c.readPrelude()
}

func (c *streamClient) readPrelude() {
	c.t.Helper()
	if !c.html {
		if ct := c.resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			c.t.Fatalf("Content-Type %q", ct)
		}
		pre := make([]byte, 2048)
		if _, err := io.ReadFull(c.br, pre); err != nil {
			c.t.Fatalf("reading prelude: %v", err)
		}
		if !bytes.Equal(pre, append(bytes.Repeat([]byte{' '}, 2047), '\n')) {
			c.t.Fatalf("prelude is not 2047 spaces and a newline: %q", pre[:64])
		}
		return
	}
	if ct := c.resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		c.t.Fatalf("Content-Type %q", ct)
	}
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading htmlfile prelude: %v", err)
		}
		if strings.Contains(line, "<body>") {
			break
		}
	}
	pad, err := c.br.ReadString('\n')
	if err != nil || len(pad) < 1024 || strings.TrimSpace(pad) != "" {
		c.t.Fatalf("htmlfile padding: %d bytes, %v", len(pad), err)
	}
}

// drop closes the current stream, as a client whose connection broke.
func (c *streamClient) drop() {
	if c.resp != nil {
		c.cancel()
		c.resp.Body.Close()
		c.resp = nil
	}
}

// read returns the next line of the stream as a packet, or beat for a
// heartbeat. When a stream ends it opens the next one if reopen is set,
// else it returns ok false.
func (c *streamClient) read(reopen bool) (p packet, beat, ok bool) {
	c.t.Helper()
	if c.resp == nil {
		if !reopen {
			return p, false, false
		}
		c.connect()
	}
	line, err := c.br.ReadString('\n')
	if err == io.EOF && line == "" {
		c.drop()
		return c.read(reopen)
	}
	if err != nil {
		c.t.Fatalf("reading stream: %v (got %q)", err, line)
	}
	c.line = line
	payload, beat := c.unframe(line)
	if beat {
		c.beats++
		return p, true, true
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		c.t.Fatalf("bad packet line %q: %v", line, err)
	}
	return p, false, true
}

// unframe extracts the packet JSON of one line; beat reports a heartbeat.
func (c *streamClient) unframe(line string) (payload []byte, beat bool) {
	c.t.Helper()
	line = strings.TrimSuffix(line, "\n")
	if !c.html {
		return []byte(line), line == ""
	}
	inner, ok := strings.CutPrefix(line, "<script>p(")
	if ok {
		inner, ok = strings.CutSuffix(inner, ");</script>")
	}
	if !ok {
		c.t.Fatalf("not a packet script: %q", line)
	}
	return []byte(inner), inner == "null"
}

// next returns the next packet with a seq and checks it continues the
// seq without a gap; it reopens streams as they end.
func (c *streamClient) next() packet {
	c.t.Helper()
	var p packet
	for beat := true; beat; {
		p, beat, _ = c.read(true)
	}
	if p.Seq == nil {
		c.t.Fatalf("unexpected transport-level packet %+v", p)
	}
	if p.seq() != c.acked+1 {
		c.t.Fatalf("seq %d after %d (gap or duplicate)", p.seq(), c.acked)
	}
	c.acked = p.seq()
	return p
}

// open opens the session and returns hello.
func (c *streamClient) open(channels ...string) packet {
	c.t.Helper()
	c.connect(channels...)
	p := c.next()
	if p.T != gateway.TypeHello || p.SID == "" {
		c.t.Fatalf("first packet %+v is not hello", p)
	}
	c.sid = p.SID
	return p
}

// postSend posts frames to /session/{sid}/send.
func postSend(t *testing.T, n *testNode, sid, frames string) {
	t.Helper()
	resp, err := n.client.Post(n.url("/session/"+sid+"/send"), "text/plain", strings.NewReader(frames))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("send: %d %s", resp.StatusCode, body)
	}
}
