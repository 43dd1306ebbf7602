package transports

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// staticNodes is a fixed NodeDirectory: urls are the nodes it knows;
// asked about a suspect, it says the nodes in dead are gone (they did not
// answer) and the others live.
type staticNodes struct {
	urls map[string]string
	dead map[string]bool
}

func (d staticNodes) Find(_ context.Context, id string) (string, bool, error) {
	u, ok := d.urls[id]
	return u, ok, nil
}

func (d staticNodes) Suspect(ctx context.Context, id string) (string, bool, error) {
	if d.dead[id] {
		return "", false, nil
	}
	return d.Find(ctx, id)
}

func (d staticNodes) WhoOwns(context.Context, string) (string, string, string, error) {
	return "", "", "", nil
}

func (staticNodes) SetOwnerFunc(func(string) (bool, bool)) {}

func (staticNodes) Owned(string) {}

func (staticNodes) Ready() bool { return true }

// recorded is what the fake owner node saw of a forwarded request.
type recorded struct {
	method, uri, host, body string
	header                  http.Header
}

func TestForwardProxiesToOwner(t *testing.T) {
	var mu sync.Mutex
	var got []recorded
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, recorded{r.Method, r.RequestURI, r.Host, string(b), r.Header.Clone()})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `[{"seq":7,"t":"hello"}]`)
	}))
	defer owner.Close()
	// A port nothing listens on: the owner is unreachable.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()

	n := startNode(t, nil, func(o *Options) {
		o.Nodes = staticNodes{
			urls: map[string]string{"n2": owner.URL, "n3": deadURL, "n5": deadURL, "n1": owner.URL},
			dead: map[string]bool{"n5": true},
		}
	})
	do := func(method, path, body string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, n.url(path), strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := n.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	browser := map[string]string{"Origin": "http://app.example", "Cookie": "auth=xyz"}

	// Every sid route of a session of n2 goes to n2 as it came.
	routes := []struct{ method, path, body string }{
		{"POST", "/poll/n2.abc?ack=3", `[{"op":"ping","id":1}]`},
		{"GET", "/xhr_stream/n2.abc?ack=4", ""},
		{"GET", "/htmlfile/n2.abc?cb=f&ack=5", ""},
		{"GET", "/jsonp/n2.abc?cb=f", ""},
		{"GET", "/jsonp_send/n2.abc?cb=f&d=%7B%7D", ""},
		{"POST", "/session/n2.abc/send", `{"op":"ping","id":2}`},
	}
	for _, r := range routes {
		st, body := do(r.method, r.path, r.body, browser)
		if st != http.StatusOK || body != `[{"seq":7,"t":"hello"}]` {
			t.Errorf("%s %s: %d %s; want the owner's answer", r.method, r.path, st, body)
		}
	}
	mu.Lock()
	if len(got) != len(routes) {
		t.Fatalf("owner got %d requests, want %d", len(got), len(routes))
	}
	for i, r := range routes {
		g := got[i]
		if g.method != r.method || g.uri != r.path || g.body != r.body {
			t.Errorf("forwarded %s %s %q; want %s %s %q", g.method, g.uri, g.body, r.method, r.path, r.body)
		}
		if g.host != strings.TrimPrefix(n.http.URL, "http://") {
			t.Errorf("Host %q: the owner checks Origin against the Host the browser used", g.host)
		}
		if g.header.Get("Origin") != "http://app.example" || g.header.Get("Cookie") != "auth=xyz" {
			t.Errorf("Origin %q, Cookie %q not kept", g.header.Get("Origin"), g.header.Get("Cookie"))
		}
		if g.header.Get(HeaderForwarded) != "n1" {
			t.Errorf("%s = %q, want n1", HeaderForwarded, g.header.Get(HeaderForwarded))
		}
	}
	got = nil
	mu.Unlock()

	notFound := func(what string, st int, body string) {
		t.Helper()
		var e errorBody
		_ = json.Unmarshal([]byte(body), &e)
		if st != http.StatusNotFound || e.Code != gateway.DisconnectNotFound.Code {
			t.Errorf("%s: %d %s; want 404 with code %d", what, st, body, gateway.DisconnectNotFound.Code)
		}
	}
	// Not forwarded: already forwarded once, a node nobody knows, this
	// node's own id (its session is gone), a malformed id.
	st, body := do("GET", "/poll/n2.abc", "", map[string]string{HeaderForwarded: "n9"})
	notFound("already forwarded", st, body)
	st, body = do("GET", "/poll/n4.abc", "", nil)
	notFound("unknown node", st, body)
	st, body = do("GET", "/poll/n1.abc", "", nil)
	notFound("own node", st, body)
	st, body = do("GET", "/poll/nodot", "", nil)
	notFound("id without a node", st, body)
	mu.Lock()
	if len(got) != 0 {
		t.Errorf("owner got %d requests that must not be forwarded", len(got))
	}
	mu.Unlock()

	// A live local session is served here even if its node token were
	// known elsewhere.
	c := newPollClient(t, n, false)
	c.open("demo.fwd")
	if !strings.HasPrefix(c.sid, "n1.") {
		t.Fatalf("sid %q", c.sid)
	}
	if st, body := do("POST", "/session/"+c.sid+"/send", `{"op":"ping","id":3}`, nil); st != http.StatusNoContent {
		t.Errorf("local send: %d %s", st, body)
	}

	// The owner is unreachable but says it lives when asked: 502 with a
	// JSON error.
	st, body = do("GET", "/poll/n3.abc", "", nil)
	var e errorBody
	if err := json.Unmarshal([]byte(body), &e); st != http.StatusBadGateway || err != nil || !strings.Contains(e.Error, "unreachable") {
		t.Errorf("unreachable owner: %d %s; want 502 with a JSON error", st, body)
	}
	// The owner is unreachable and does not answer when asked (it
	// crashed): its sessions are gone, in the transport's own framing.
	st, body = do("GET", "/poll/n5.abc", "", nil)
	notFound("crashed owner", st, body)
	st, body = do("GET", "/jsonp/n5.abc?cb=f", "", nil)
	if st != http.StatusOK || !strings.HasPrefix(body, "/**/f(") || !strings.Contains(body, `"code":4004`) {
		t.Errorf("crashed owner over JSONP: %d %s", st, body)
	}

	// After StopForwarding (shutdown) nothing is forwarded, and a request
	// for another node's session is told to try again (503 without a
	// close code): its session may well live on, and 3000 or 4004 would
	// end it.
	n.srv.StopForwarding(context.Background())
	st, body = do("GET", "/poll/n2.abc", "", nil)
	e = errorBody{}
	if err := json.Unmarshal([]byte(body), &e); st != http.StatusServiceUnavailable || err != nil || e.Code != 0 {
		t.Errorf("after StopForwarding: %d %s; want 503 without a close code", st, body)
	}
	mu.Lock()
	if len(got) != 0 {
		t.Errorf("owner got %d requests after StopForwarding", len(got))
	}
	mu.Unlock()
}

// TestStopForwardingAnswersForwardsInFlight: a poll this node forwards and
// its owner holds is answered when forwarding stops (503, try again,
// without a close code), and StopForwarding returns only after that answer
// went out: the node's connections may be closed right after it, and the
// client still reads a whole answer rather than a cut connection (which
// a SockJS client takes as the end of a session that lives on).
func TestStopForwardingAnswersForwardsInFlight(t *testing.T) {
	held := make(chan struct{})
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held <- struct{}{}
		<-r.Context().Done() // the owner has nothing to say: a long-poll waiting
	}))
	defer owner.Close()
	n := startNode(t, nil, func(o *Options) {
		o.Nodes = staticNodes{urls: map[string]string{"n2": owner.URL}}
	})
	type answer struct {
		status int
		retry  string
		body   []byte
		err    error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := n.client.Get(n.url("/poll/n2.abc"))
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), b, err}
	}()
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	n.srv.StopForwarding(ctx)
	if ctx.Err() != nil {
		t.Fatal("StopForwarding waited out its context: the forward in flight did not answer")
	}
	n.http.CloseClientConnections() // what a shutdown out of time does next
	a := <-got
	var e errorBody
	if a.err != nil || a.status != http.StatusServiceUnavailable || a.retry == "" || json.Unmarshal(a.body, &e) != nil || e.Code != 0 {
		t.Fatalf("forward in flight when forwarding stopped: %d %q %s %v; want 503 with Retry-After and a JSON error without a close code",
			a.status, a.retry, a.body, a.err)
	}
}

// TestForwardClusterKey: with a cluster key, a forwarded request carries
// the forwarding node's signature, and a node refuses a request that says
// it was forwarded but is not signed with the key (or signed long ago).
func TestForwardClusterKey(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	var mu sync.Mutex
	var seen *http.Request
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Clone(context.Background())
		mu.Unlock()
		_, _ = io.WriteString(w, `[]`)
	}))
	defer owner.Close()
	n := startNode(t, nil, func(o *Options) {
		o.ClusterKey = key
		o.Nodes = staticNodes{urls: map[string]string{"n2": owner.URL}}
	})
	resp, err := n.client.Get(n.url("/poll/n2.abc?ack=1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	if seen == nil || !verifyForwarded(key, seen) {
		t.Errorf("the forwarded request does not verify: %v", seen.Header)
	}
	if verifyForwarded([]byte(strings.Repeat("x", 32)), seen) {
		t.Error("the signature verifies under another key")
	}
	mu.Unlock()

	c := newPollClient(t, n, false)
	c.open("demo.sig")
	for name, sig := range map[string]string{
		"unsigned":  "",
		"bad":       "1.AAAA",
		"other key": forwardSig([]byte(strings.Repeat("x", 32)), "n2", time.Now().Unix(), http.MethodGet, "/poll/"+c.sid+"?ack=1"),
		"stale":     forwardSig(key, "n2", time.Now().Add(-time.Hour).Unix(), http.MethodGet, "/poll/"+c.sid+"?ack=1"),
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, n.url("/poll/"+c.sid+"?ack=1"), nil)
			req.Header.Set(HeaderForwarded, "n2")
			if sig != "" {
				req.Header.Set(HeaderForwardedSig, sig)
			}
			resp, err := n.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			expectJSONError(t, resp.StatusCode, body, http.StatusForbidden, gateway.DisconnectForbidden.Code)
		})
	}
	// Signed with the key, now: served.
	req, _ := http.NewRequest(http.MethodGet, n.url("/poll/"+c.sid+"?ack=1"), nil)
	req.Header.Set(HeaderForwarded, "n2")
	req.Header.Set(HeaderForwardedSig, forwardSig(key, "n2", time.Now().Unix(), http.MethodGet, "/poll/"+c.sid+"?ack=1"))
	resp, err = n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a signed forwarded poll: %d", resp.StatusCode)
	}
}

// TestForwardPeerNetworks: a node announced at an address outside the
// peer networks is never dialled.
func TestForwardPeerNetworks(t *testing.T) {
	var hits atomic.Int64
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer owner.Close()
	n := startNode(t, nil, func(o *Options) {
		o.PeerNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		o.Nodes = staticNodes{urls: map[string]string{"n2": owner.URL}}
	})
	resp, err := n.client.Get(n.url("/poll/n2.abc"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "peer networks") || hits.Load() != 0 {
		t.Errorf("owner outside the peer networks: %d %s, %d requests reached it", resp.StatusCode, body, hits.Load())
	}
}
