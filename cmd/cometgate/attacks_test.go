package main

// The attack table's rows that need what one in-process handler cannot
// give: a real browser on another origin, several nodes on one broker,
// the node's own http.Server. The rows on one node's handlers are in
// transports/attacks_test.go. Each row asserts the exact refusal and that
// a victim on the same node still receives every message in order.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/cometgate/cometgate/gateway"
)

// sseVictim is a session that must not notice an attack: an SSE stream
// on channels of a node; intact publishes the next numbered message on
// each channel and checks that it is the next message the stream gets.
type sseVictim struct {
	n        *node
	s        *sseStream
	channels []string
	next     int
}

func newSSEVictim(t *testing.T, n *node, query string, channels ...string) *sseVictim {
	t.Helper()
	v := &sseVictim{n: n, s: openSSE(t, n.url("/sse?"+query)), channels: channels}
	for range channels {
		next(t, v.s.packets, "ok")
	}
	v.intact(t)
	return v
}

func (v *sseVictim) intact(t *testing.T) {
	t.Helper()
	k := v.next
	v.next++
	for _, ch := range v.channels {
		if status, body := postPublish(t, v.n, fmt.Sprintf(`{"channel":%q,"data":{"i":%d}}`, ch, k)); status != http.StatusOK {
			t.Fatalf("publish: %d %s", status, body)
		}
		p := next(t, v.s.packets, "msg")
		data, _ := p["data"].(map[string]any)
		if p["ch"] != ch || data == nil || data["i"] != float64(k) {
			t.Fatalf("the victim got %v, want message %d on %s", p, k, ch)
		}
	}
}

// crossSiteJS runs in a page of another origin (the same site: another
// port of 127.0.0.1, so the browser sends the node's cookies with it)
// and tries what such a page can against the node at NODE, recording
// what it could see of each attempt.
const crossSiteJS = `(async () => {
  const node = NODE, out = {};
  const body = (d) => JSON.stringify({ channel: "demo.api", data: d });
  // A text/plain POST needs no preflight; no-cors: the page cannot read it.
  try {
    await fetch(node + "/api/publish", { method: "POST", mode: "no-cors", credentials: "include",
      headers: { "Content-Type": "text/plain" }, body: body("evil-plain") });
    out.plain = "sent";
  } catch (e) { out.plain = "failed"; }
  // JSON needs a CORS preflight.
  try {
    const r = await fetch(node + "/api/publish", { method: "POST", headers: { "Content-Type": "application/json" }, body: body("evil-json") });
    out.json = "read " + r.status;
  } catch (e) { out.json = "blocked"; }
  // A form POST into a frame.
  await new Promise((resolve) => {
    const f = document.createElement("iframe");
    f.name = "sink";
    document.body.appendChild(f);
    f.onload = resolve;
    const form = document.createElement("form");
    form.method = "POST"; form.action = node + "/api/publish"; form.enctype = "text/plain"; form.target = "sink";
    const i = document.createElement("input");
    i.name = '{"channel":"demo.api","data":"evil-form","x":"'; i.value = '"}';
    form.appendChild(i);
    document.body.appendChild(form);
    form.submit();
  });
  out.form = "sent";
  // Session riding with script loads: the cookie goes along, no Origin.
  const script = (src, cb) => new Promise((resolve) => {
    window[cb] = (p) => resolve(p);
    const s = document.createElement("script");
    s.src = src;
    s.onerror = () => resolve("script error");
    document.head.appendChild(s);
  });
  out.jsonp = await script(node + "/jsonp?cb=steal&ch=secret.alice.inbox", "steal");
  out.sockjs = await script(node + "/sockjs/000/" + Math.random().toString(36).slice(2) + "/jsonp?c=steal2", "steal2");
  // Credentialed requests the browser marks with the page's Origin.
  try {
    const r = await fetch(node + "/poll?ch=secret.alice.inbox", { method: "POST", credentials: "include" });
    out.poll = "read " + r.status + " " + await r.text();
  } catch (e) { out.poll = "blocked"; }
  try {
    const r = await fetch(node + "/sockjs/info", { credentials: "include" });
    out.info = "read " + r.status;
  } catch (e) { out.info = "blocked"; }
  out.ws = await new Promise((resolve) => {
    const ws = new WebSocket(node.replace("http", "ws") + "/ws?ch=secret.alice.inbox");
    ws.onopen = () => resolve("open");
    ws.onclose = (e) => resolve("closed " + e.code);
  });
  return out;
})()`

// TestAttacksBrowser: a page of another origin, in chromium, cannot use
// the victim's cookie on the default configuration (plus JWT auth): its
// JSONP and SockJS jsonp script loads get a refusal in their callback,
// its publishes through the API (text/plain fetch, form, JSON with CORS)
// publish nothing, and its credentialed requests and WebSocket are
// refused. The victim, alice's own SSE session, sees none of it.
func TestAttacksBrowser(t *testing.T) {
	b := newTab(t)
	n, secret := startAuthNode(t, "")
	tok := signAlice(t, secret, time.Hour)
	victim := newSSEVictim(t, n, "ch=secret.alice.inbox&ch=demo.api&token="+tok, "secret.alice.inbox", "demo.api")
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<!doctype html><title>another site</title><body></body>")
	}))
	t.Cleanup(evil.Close)
	// alice's own page (the node's origin) keeps her token in the cookie.
	b.do(chromedp.Navigate(n.url("/")))
	b.eval(`document.cookie = "cometgate_token=`+tok+`; path=/"; document.cookie`, nil)
	b.do(chromedp.Navigate(evil.URL + "/"))
	var out map[string]any
	b.eval(strings.Replace(crossSiteJS, "NODE", fmt.Sprintf("%q", "http://"+n.addr), 1), &out)

	cookieOnly := "JSONP and htmlfile take a token only from ?token="
	jsonp, _ := out["jsonp"].([]any)
	if len(jsonp) != 1 {
		t.Fatalf("JSONP: %v", out["jsonp"])
	}
	if p, _ := jsonp[0].(map[string]any); p["t"] != "close" || p["code"] != float64(4003) || !strings.HasPrefix(p["reason"].(string), cookieOnly) || p["sid"] != nil {
		t.Errorf("JSONP: %v", p)
	}
	if s, _ := out["sockjs"].(string); !strings.HasPrefix(s, `c[4003,"`+cookieOnly) {
		t.Errorf("SockJS jsonp: %v", out["sockjs"])
	}
	for k, want := range map[string]string{"plain": "sent", "form": "sent", "json": "blocked", "poll": "blocked", "info": "blocked", "ws": "closed 1006"} {
		if out[k] != want {
			t.Errorf("%s: %v, want %s", k, out[k], want)
		}
	}
	// Nothing of the page's reached the channel: the victim's next
	// message on demo.api is the next one of hers.
	victim.intact(t)
}

// TestAttacksSlowHeaders: a client that trickles its request headers is
// cut off after http.read_header_timeout without an answer; the node's
// other sessions go on.
func TestAttacksSlowHeaders(t *testing.T) {
	n := startNode(t, "COMETGATE_HTTP_READ_HEADER_TIMEOUT=300ms")
	victim := newSSEVictim(t, n, "ch=demo.v", "demo.v")
	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /sse?ch=demo.v HTTP/1.1\r\nHost: "+n.addr+"\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	rest, err := io.ReadAll(conn)
	if err != nil || len(rest) != 0 {
		t.Fatalf("the node answered %q (%v), want the connection closed", rest, err)
	}
	victim.intact(t)
}

// clusterVictim is a long-poll session on node b, polled through node a:
// every poll is a forwarded, signed request.
type clusterVictim struct {
	a, b *clusterNode
	c    *http.Client
	seq  *sequence
}

func (v *clusterVictim) intact(t *testing.T) {
	t.Helper()
	v.seq.t = t
	k := v.seq.msgs
	if err := publishVia(v.c, v.b.url(""), "demo.rr", k); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for v.seq.msgs <= k {
		if time.Now().After(deadline) {
			t.Fatalf("the victim did not get message %d", k)
		}
		for _, p := range pollOnce(t, v.c, v.a.url(fmt.Sprintf("/poll/%s?ack=%d", v.seq.sid, v.seq.lastSeq))) {
			v.seq.add(p)
		}
	}
}

// TestAttacksCluster: with node.cluster_key, announcements forged on the
// broker (unsigned, signed with another key, a real one tampered with,
// or signed but naming a metadata address) are ignored and counted, and
// a request that claims to come from another node without its signature
// is refused; forwarding between the two real nodes goes on. Stale
// signatures are covered by gateway's TestNodesClusterKey, which owns
// the clock.
func TestAttacksCluster(t *testing.T) {
	key := strings.Repeat("c", 32)
	a, b := startPair(t, "COMETGATE_NODE_CLUSTER_KEY="+key)
	c := newTestClient(t)
	v := &clusterVictim{a: a, b: b, c: c, seq: &sequence{t: t}}
	for _, p := range pollOnce(t, c, b.url("/poll?ch=demo.rr")) {
		v.seq.add(p)
	}
	v.intact(t)
	nc, err := nats.Connect(a.emb.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	// announce starts a node table of its own on the broker that
	// announces id at url, signed with k: a node that is not one.
	announce := func(t *testing.T, id, url string, k []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		br, err := natsbroker.Connect(ctx, natsbroker.Options{URLs: []string{a.emb.ClientURL()}})
		if err != nil {
			t.Fatal(err)
		}
		tab, err := gateway.StartNodes(ctx, gateway.NodesOptions{Broker: br, SelfID: id, SelfURL: url,
			Interval: testAnnounceInterval, ClusterKey: k, PeerNetworks: gateway.DefaultPeerNetworks})
		if err != nil {
			_ = br.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = tab.Close()
			_ = br.Close()
		})
	}
	// rejected waits until both real nodes counted one more message
	// rejected for reason than before, and checks that neither knows id.
	rejected := func(t *testing.T, reason, id string, attack func()) {
		t.Helper()
		sample := fmt.Sprintf(`cometgate_node_messages_rejected_total{reason=%q}`, reason)
		before := []float64{metricValue(t, c, a, sample), metricValue(t, c, b, sample)}
		attack()
		deadline := time.Now().Add(20 * time.Second)
		for i, n := range []*clusterNode{a, b} {
			for metricValue(t, c, n, sample) <= before[i] {
				if time.Now().After(deadline) {
					t.Fatalf("%s: no message rejected as %q", n.id, reason)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if u, ok := n.table.Lookup(id); ok {
				t.Fatalf("%s knows the forged node %s at %s", n.id, id, u)
			}
		}
	}
	publishRaw := func(t *testing.T, data string) {
		if err := nc.Publish(gateway.NodesChannel, []byte(data)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	for _, row := range []struct {
		name string
		run  func(t *testing.T)
	}{
		// Anyone who can publish on the broker announces a node.
		{"unsigned announcement", func(t *testing.T) {
			rejected(t, "unsigned", "evil", func() { publishRaw(t, `{"id":"evil","url":"http://127.0.0.1:9"}`) })
		}},
		// A node table with a key of its own.
		{"announcement signed with another key", func(t *testing.T) {
			rejected(t, "bad signature", "evil2", func() { announce(t, "evil2", "http://127.0.0.1:9", []byte(strings.Repeat("x", 32))) })
		}},
		// A real node's signed announcement, its URL changed.
		{"tampered announcement", func(t *testing.T) {
			sub, err := nc.SubscribeSync(gateway.NodesChannel)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			var real string
			for !strings.Contains(real, `\"id\":\"nodeb\"`) && !strings.Contains(real, `"id":"nodeb"`) {
				m, err := sub.NextMsg(20 * time.Second)
				if err != nil {
					t.Fatalf("no announcement of nodeb: %v", err)
				}
				real = string(m.Data)
			}
			var env map[string]json.RawMessage
			if err := json.Unmarshal([]byte(real), &env); err != nil || env["msg"] == nil {
				t.Fatalf("announcement %s: %v", real, err)
			}
			forged := strings.Replace(real, b.addr, "169.254.169.254:80", 1)
			if forged == real {
				t.Fatalf("announcement %s does not name %s", real, b.addr)
			}
			before, _ := a.table.Lookup("nodeb")
			rejected(t, "bad signature", "evil-none", func() { publishRaw(t, forged) })
			if u, _ := a.table.Lookup("nodeb"); u != before {
				t.Fatalf("nodeb moved from %s to %s", before, u)
			}
		}},
		// Signed with the cluster key, but at the cloud metadata address.
		{"signed announcement of a metadata address", func(t *testing.T) {
			rejected(t, "address not in the peer networks", "meta", func() { announce(t, "meta", "http://169.254.169.254", []byte(key)) })
		}},
		// A request that claims another node forwarded it (which skips the
		// forwarding node's own checks) needs that node's signature.
		{"forwarded request without a signature", func(t *testing.T) {
			for _, sig := range []string{"", "1.AAAA"} {
				req, _ := http.NewRequest(http.MethodGet, b.url(fmt.Sprintf("/poll/%s?ack=%d", v.seq.sid, v.seq.lastSeq)), nil)
				req.Header.Set("X-Cometgate-Forwarded", "nodea")
				if sig != "" {
					req.Header.Set("X-Cometgate-Signature", sig)
				}
				status, e := request(t, req.Method, req.URL.String(), req.Header, "")
				wantRefusal(t, "unsigned forwarded poll", status, e, http.StatusForbidden, 4003)
			}
		}},
	} {
		t.Run(row.name, func(t *testing.T) {
			row.run(t)
			v.intact(t)
		})
	}
}
