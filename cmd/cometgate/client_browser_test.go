package main

// Browser tests of the packaged client (web/cometgate.mjs, the
// last-resort transports htmlfile and jsonp, the buffering-proxy
// fallback), with the harness of browser_test.go.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cometgate/cometgate/transports"
)

// TestBrowserESModule: import("/cometgate.mjs") gives the CometGate that
// cometgate.js defines (named and default export, the same object as the
// global), a client made from it receives, and a page of another origin
// can import the module from the gateway.
func TestBrowserESModule(t *testing.T) {
	n := startNode(t)
	b := newTab(t)
	// A same-origin document without the client in it.
	b.do(chromedp.Navigate(n.url("/style.css")))
	var got struct {
		Before string   `json:"before"`
		Named  string   `json:"named"`
		Same   bool     `json:"same"`
		Global bool     `json:"global"`
		Keys   []string `json:"keys"`
		Error  bool     `json:"error"`
	}
	b.eval(`(async () => {
	  const before = typeof CometGate;
	  const m = await import("/cometgate.mjs");
	  return { before, named: typeof m.CometGate, same: m.default === m.CometGate,
	    global: globalThis.CometGate === m.CometGate, keys: Object.keys(m).sort(),
	    error: typeof m.CometGate.Error === "function" && new m.CometGate.Error(503, "x") instanceof Error };
	})()`, &got)
	if got.Before != "undefined" || got.Named != "function" || !got.Same || !got.Global || !got.Error ||
		len(got.Keys) != 2 || got.Keys[0] != "CometGate" || got.Keys[1] != "default" {
		t.Fatalf("import(\"/cometgate.mjs\"): %+v", got)
	}
	b.eval(harnessT+` true`, nil)
	b.eval(`T.start({transports: ["websocket"]}, "demo.esm"), true`, nil)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	publishMixed(t, n, "demo.esm", 0, 20)
	b.waitFor("T.msgs.length >= 20", diagJS)
	checkMixed(t, b.messages(), "demo.esm", 0, 20, true)

	// Another origin (another port) imports the module from the gateway:
	// module scripts load only with CORS.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><title>another origin</title>"))
	}))
	t.Cleanup(other.Close)
	b.do(chromedp.Navigate(other.URL + "/"))
	var typ string
	b.eval(`import(`+strconv.Quote(n.url("/cometgate.mjs"))+`).then((m) => typeof m.CometGate)`, &typ)
	if typ != "function" {
		t.Fatalf("a page of another origin imports CometGate as %q", typ)
	}
	if p := b.problems(n.url("/favicon.ico"), other.URL+"/favicon.ico"); len(p) > 0 {
		t.Fatalf("console errors: %v", p)
	}
}

// TestBrowserCallbackTransports: the client forced onto htmlfile (a
// hidden iframe whose document streams, recycled every 8 KiB here) and
// onto JSONP (script polls, /jsonp_send upstream) through a proxy:
// messages arrive in order with every payload form, the page's publishes
// resolve once the broker confirmed them (a refused one rejects), and
// when every request fails for a while (the proxy drops the connections
// and answers 503) the client attaches to its session again and gets
// what was published meanwhile, in order, once.
func TestBrowserCallbackTransports(t *testing.T) {
	for _, transport := range []string{"htmlfile", "jsonp"} {
		t.Run(transport, func(t *testing.T) {
			// The node keeps a session without requests longer than the
			// test may take to publish during the outage. A browser
			// neither ends nor reports an iframe document whose
			// connection broke mid-stream: the client notices by the
			// silence (two heartbeat intervals and 10 s), so the
			// heartbeat is short here.
			n := startNode(t, "COMETGATE_SESSION_STREAM_LIMIT_BYTES=8192", "COMETGATE_SESSION_DISCONNECT_DELAY=60s",
				"COMETGATE_SESSION_HEARTBEAT=1s")
			p := newPollProxy(t, n)
			b := newTab(t)
			b.openClient(p.srv.URL, "demo.browser", fmt.Sprintf(`{transports: [%q], resumeWindow: 60000}`, transport))
			b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
			var got, sid string
			b.eval("T.cg.transport", &got)
			if got != transport {
				t.Fatalf("transport %q, want %q", got, transport)
			}
			b.eval("T.cg.sessionId", &sid)

			publishMixed(t, n, "demo.browser", 0, 100)
			b.waitFor("T.msgs.length >= 100", diagJS)
			checkMixed(t, b.messages(), "demo.browser", 0, 100, true)
			if transport == "htmlfile" {
				if c := p.count("/htmlfile/"); c < 1 {
					t.Fatalf("%d next streams for 100 messages with an 8 KiB stream limit", c)
				}
			} else if c := p.count("/jsonp/"); c < 2 {
				t.Fatalf("%d next polls", c)
			}

			checkPagePublishes(t, b, 100)

			// A burst of publishes larger than one upstream request takes
			// (jsonp: about 6,000 URL characters per /jsonp_send): all
			// resolve, and they come back in the order they were made.
			sends := p.count("/jsonp_send/")
			var burst []map[string]any
			b.eval(`Promise.all(Array.from({length: 40}, (_, i) => T.cg.publishText("demo.browser", i + ":" + "é".repeat(200))))`, &burst)
			if len(burst) != 40 {
				t.Fatalf("the burst resolved with %d answers", len(burst))
			}
			b.waitFor("T.msgs.length >= 143", diagJS)
			for i, m := range b.messages()[103:143] {
				var text string
				if err := json.Unmarshal(m.Data, &text); err != nil || m.Kind != "text" || text != fmt.Sprintf("%d:%s", i, strings.Repeat("é", 200)) {
					t.Fatalf("burst message %d came back as %s %.40s", i, m.Kind, m.Data)
				}
			}
			if transport == "jsonp" && p.count("/jsonp_send/")-sends < 3 {
				t.Fatalf("a burst of about 50,000 URL characters went in %d /jsonp_send requests", p.count("/jsonp_send/")-sends)
			}
			if pr := b.problems(p.srv.URL + "/favicon.ico"); len(pr) > 0 {
				t.Fatalf("console errors: %v", pr)
			}

			// The outage: the held request breaks, and every request of
			// the family fails until the proxy recovers.
			before := len(b.states())
			p.fail.Store(true)
			p.srv.CloseClientConnections()
			b.waitFor(`T.cg.state === "connecting"`, diagJS)
			publishMixed(t, n, "demo.browser", 143, 200)
			p.fail.Store(false)
			b.waitFor("T.msgs.length >= 200", diagJS)
			publishMixed(t, n, "demo.browser", 200, 201)
			b.waitFor(`T.msgs.length >= 201 && T.cg.state === "connected"`, diagJS)
			msgs := b.messages()
			checkMixed(t, msgs[143:], "demo.browser", 143, 201, true)
			keptSession(t, b, sid, before)
		})
	}
}

// bufferingProxy is a reverse proxy that buffers every response body
// until it ends, as a proxy with response buffering on does: the status
// and headers go to the browser at once, the body only when complete. A
// poll's response ends and gets through; an SSE or XHR stream brings
// nothing. It refuses WebSocket upgrades (502), holds next polls until
// releasePolls, and records the session an XHR stream opened.
type bufferingProxy struct {
	srv       *httptest.Server
	target    *url.URL
	transport *http.Transport
	release   chan struct{}

	mu        sync.Mutex
	counts    map[string]int // by pathKind
	streamSID string
}

func newBufferingProxy(t *testing.T, n *node) *bufferingProxy {
	t.Helper()
	target, err := url.Parse(n.url(""))
	if err != nil {
		t.Fatal(err)
	}
	p := &bufferingProxy{target: target, transport: &http.Transport{}, release: make(chan struct{}), counts: map[string]int{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		p.releasePolls()
		p.srv.CloseClientConnections()
		p.srv.Close()
		p.transport.CloseIdleConnections()
	})
	return p
}

func (p *bufferingProxy) releasePolls() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.release:
	default:
		close(p.release)
	}
}

func (p *bufferingProxy) count(kind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[kind]
}

func (p *bufferingProxy) sid() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.streamSID
}

func (p *bufferingProxy) serve(w http.ResponseWriter, r *http.Request) {
	kind := pathKind(r.URL.Path)
	p.mu.Lock()
	p.counts[kind]++
	p.mu.Unlock()
	if r.URL.Path == "/ws" {
		http.Error(w, "no WebSocket through this proxy", http.StatusBadGateway)
		return
	}
	if kind == "/poll/" {
		select {
		case <-p.release:
		case <-r.Context().Done():
			return
		}
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
	// r.Host stays: the node sees the page's origin as its own.
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		http.Error(w, "upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if sid := resp.Header.Get(transports.HeaderSession); sid != "" && r.URL.Path == "/xhr_stream" {
		p.mu.Lock()
		p.streamSID = sid
		p.mu.Unlock()
	}
	for k, vs := range resp.Header {
		if k == "Connection" || k == "Transfer-Encoding" {
			continue
		}
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_ = http.NewResponseController(w).Flush()
	// The buffering: the body goes out once it is complete. A stream the
	// browser gives up ends with its request (out carries its context).
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return
	}
	_, _ = w.Write(body)
}

// TestBrowserBufferingProxy: behind a proxy that buffers response bodies
// (and refuses WebSocket), the default client tries sse, which opens and
// brings nothing, then xhr_stream, which opens a session and brings
// nothing either; after bufferingTimeout each it moves on, and long-
// polling attaches to the XHR stream's session: the messages published
// while that stream was held (the node had them queued for the session)
// arrive, in order, in that one session, and so does everything after.
func TestBrowserBufferingProxy(t *testing.T) {
	n := startNode(t)
	p := newBufferingProxy(t, n)
	b := newTab(t)
	// connectTimeout is longer than the test waits: the moves must come
	// from bufferingTimeout.
	b.openClient(p.srv.URL, "demo.browser", `{connectTimeout: 120000, bufferingTimeout: 2000}`)

	// The XHR stream opened its session (and subscribed demo.browser
	// before the headers went out); its body is held by the proxy.
	deadline := time.Now().Add(browserTimeout)
	for p.sid() == "" {
		if time.Now().After(deadline) {
			var diag any
			b.eval(diagJS, &diag)
			t.Fatalf("no XHR stream opened a session through the proxy; page: %v", diag)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sid := p.sid()
	publishMixed(t, n, "demo.browser", 0, 20)
	// The next poll waited at the proxy until now.
	p.releasePolls()
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected" && T.msgs.length >= 20`, diagJS)
	var transport, got string
	b.eval("T.cg.transport", &transport)
	b.eval("T.cg.sessionId", &got)
	if transport != "poll" || got != sid {
		t.Fatalf("on %s in session %q, want poll in the XHR stream's session %q", transport, got, sid)
	}
	publishMixed(t, n, "demo.browser", 20, 30)
	b.waitFor("T.msgs.length >= 30", diagJS)
	checkMixed(t, b.messages(), "demo.browser", 0, 30, true)
	// Each transport was tried once, in the default order, without a
	// new session after the XHR stream's.
	if p.count("/ws") != 1 || p.count("/sse") != 1 || p.count("/xhr_stream") != 1 || p.count("/poll") != 0 || p.count("/poll/") == 0 {
		t.Fatalf("requests: /ws %d, /sse %d, /xhr_stream %d, /poll %d, /poll/ %d; want 1, 1, 1, 0 and some",
			p.count("/ws"), p.count("/sse"), p.count("/xhr_stream"), p.count("/poll"), p.count("/poll/"))
	}
	for _, s := range b.states() {
		if s.State == "disconnected" || s.State == "closed" {
			t.Fatalf("the client went %s: %+v", s.State, b.states())
		}
	}

	var ok map[string]any
	b.eval(`T.cg.publish("demo.browser", {via: "poll"})`, &ok)
	if ok["t"] != "ok" {
		t.Fatalf("publish resolved with %v", ok)
	}
	b.waitFor("T.msgs.length >= 31", diagJS)
}

// TestBrowserCurrentState: subscribe(channel, fn, {latest: true}) on a
// channel with history starts with its last message, then live, on a
// streaming, a callback and a WebSocket transport; {last: 3} starts with
// the last three. Nothing is duplicated or missing at the switch.
func TestBrowserCurrentState(t *testing.T) {
	cfg := historyConfig(t, "jetstream", "cgtest_current_state")
	n := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0")
	for _, transport := range []string{"websocket", "sse", "jsonp"} {
		t.Run(transport, func(t *testing.T) {
			ch := "demo.h.state." + transport
			publishMixed(t, n, ch, 0, 5)
			b := newTab(t)
			b.do(chromedp.Navigate(n.url("/cometgate.js")))
			var typ string
			b.eval(harnessJS, &typ)
			b.eval(fmt.Sprintf(`T.start({transports: [%q]}, %q, {latest: true}), true`, transport, ch), nil)
			b.waitFor(`T.subscribed === 1 && T.cg.state === "connected" && T.msgs.length >= 1`, diagJS)
			publishMixed(t, n, ch, 5, 8)
			b.waitFor("T.msgs.length >= 4", diagJS)
			checkMixed(t, b.messages(), ch, 4, 8, true)

			if transport != "websocket" {
				return
			}
			var got []pageMsg
			b.eval(fmt.Sprintf(`new Promise((resolve) => {
			  const got = [];
			  new CometGate({transports: ["websocket"]}).subscribe(%q, (m) => {
			    got.push({channel: m.channel, pattern: m.pattern, kind: m.kind, seq: m.seq,
			      u8: m.data instanceof Uint8Array, data: m.data instanceof Uint8Array ? Array.from(m.data) : m.data});
			    if (got.length === 3) resolve(got);
			  }, {last: 3});
			})`, ch), &got)
			checkMixed(t, got, ch, 5, 8, true)
			var err string
			b.eval(`(() => { try { T.cg.subscribe("demo.h.x", {latest: true, last: 2}); return "accepted"; } catch (e) { return e.message; } })()`, &err)
			if !strings.Contains(err, "exclude") {
				t.Fatalf("latest and last together: %q", err)
			}
		})
	}
}

// TestBrowserRetryHint: a refused open that says when to come back (the
// limit on new sessions per address, 429 with a delay of at least a
// second) sends the client to its backoff for at least that long instead
// of to its next transport, which would be refused the same; then it
// connects. Over WebSocket and SSE the client reads the refusal in-band
// (a browser hides the answer to a refused upgrade or event stream).
func TestBrowserRetryHint(t *testing.T) {
	n := startNode(t, "COMETGATE_LIMITS_NEW_SESSIONS_PER_IP_PER_SECOND=1", "COMETGATE_LIMITS_NEW_SESSIONS_PER_IP_BURST=1")
	browser := newTab(t)
	browser.do(chromedp.Navigate(n.url("/")))
	browser.waitFor(`typeof CometGate === "function"`, `typeof CometGate`)
	browser.eval(authHarnessJS, nil)
	for _, first := range []string{"xhr_stream", "websocket", "sse"} {
		t.Run(first, func(t *testing.T) {
			b := browser.in(t)
			// Three clients at once, from one address with room for one
			// new session a second: at least two are refused.
			opts := fmt.Sprintf(`{transports: [%q, "poll"], minReconnectDelay: 50, maxReconnectDelay: 5000}`, first)
			names := []string{first + "1", first + "2", first + "3"}
			list, _ := json.Marshal(names)
			b.eval(fmt.Sprintf(`%s.forEach((name) => A.open(name, %s, "demo.retry", [], "none")), true`, list, opts), nil)
			refused := 0
			for _, name := range names {
				b.waitFor(fmt.Sprintf(`A.c[%q].cg.state === "connected" && A.c[%q].subscribed === 1`, name, name), diagOf(name))
				for _, s := range b.authStates(name) {
					if s.State != "disconnected" {
						continue
					}
					// The first transport's refusal, not the next one's
					// ("poll refused: …"), nor "no transport could connect".
					if s.Code != 3029 || s.Delay < 1000 || strings.Contains(s.Reason, "poll refused") {
						t.Fatalf("%s: %+v, want the %s refusal (3029) and a wait of at least its delay (1 s or more): %+v", name, s, first, b.authStates(name))
					}
					refused++
					break
				}
			}
			if refused < 2 {
				t.Fatalf("%d of 3 clients refused, want at least 2", refused)
			}
			for _, name := range names {
				b.closeAuthClient(name)
			}
		})
	}
}
