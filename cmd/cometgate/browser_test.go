package main

// Browser tests: web/cometgate.js and the demo pages in Debian's chromium,
// headless, driven over the DevTools protocol (chromedp, through a pipe: the
// browser opens no debugging port), against real in-process nodes. They
// cover what unit tests of the client cannot: the browser's own WebSocket,
// EventSource and fetch, same-origin rules, and pages that must load and
// work without a script error.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/cometgate/cometgate/brokers/brokertest"
)

// chromiumPath is Debian's chromium, which .ci/services.sh installs.
const chromiumPath = "/usr/bin/chromium"

// screenshotEnv names a file that TestBrowserDemoPages writes its
// screenshot of index.html to, for a person to look at.
const screenshotEnv = "CG_BROWSER_SCREENSHOT"

// browserTimeout bounds each wait for something to happen in the page.
const browserTimeout = 30 * time.Second

// tab is one headless chromium with one page, owned by a test. Its
// methods fail the test t.
type tab struct {
	t   *testing.T
	ctx context.Context
	log *consoleLog
}

// consoleLog is what the page wrote to its console.
type consoleLog struct {
	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
}

// in returns the same tab failing the (sub)test t.
func (b *tab) in(t *testing.T) *tab {
	return &tab{t: t, ctx: b.ctx, log: b.log}
}

// newTab starts a fresh chromium (its own profile in a temporary folder)
// and records what its page writes to the console. The test's cleanup
// closes the browser and waits for it.
func newTab(t *testing.T) *tab {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("browser tests need chromium at %s (.ci/services.sh installs it): %v", chromiumPath, err)
		}
		t.Skipf("browser tests need chromium at %s: apt-get install chromium", chromiumPath)
	}
	profile := t.TempDir()
	// Exactly these flags: chromedp's defaults are not used. chromedp adds
	// --remote-debugging-pipe and the first page, about:blank.
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
	)
	ctx, cancel := chromedp.NewContext(actx)
	b := &tab{t: t, ctx: ctx, log: &consoleLog{}}
	var wg sync.WaitGroup
	stop := func() {
		cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
		if err := chromedp.Cancel(cctx); err != nil {
			t.Logf("closing chromium: %v", err)
		}
		ccancel()
		cancel()
		acancel() // waits for the browser process
		wg.Wait()
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 900)); err != nil {
		stop()
		t.Fatalf("starting chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m, err := range messages {
			if err != nil {
				return
			}
			b.log.mu.Lock()
			b.log.messages = append(b.log.messages, m)
			b.log.mu.Unlock()
		}
	}()
	t.Cleanup(stop)
	return b
}

// do runs steps with a bound on their time.
func (b *tab) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v%s", err, b.consoleText())
	}
}

// eval evaluates a JavaScript expression (awaiting a promise) and decodes
// its JSON value into out.
func (b *tab) eval(expr string, out any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v%s", expr, err, b.consoleText())
	}
	if out == nil {
		return
	}
	if err := json.Unmarshal(raw, out); err != nil {
		b.t.Fatalf("evaluating %s: result %s: %v", expr, raw, err)
	}
}

// waitFor polls a JavaScript condition in the page until it is true. On
// timeout it fails with the value of diag, a JavaScript expression that
// describes the page's state.
func (b *tab) waitFor(cond, diag string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(browserTimeout)))
	if err != nil {
		var state string
		if diag != "" {
			dctx, dcancel := context.WithTimeout(b.ctx, 5*time.Second)
			s, derr := chromedp.Run(dctx, chromedp.Evaluate[string]("JSON.stringify("+diag+")"))
			dcancel()
			state = s
			if derr != nil {
				state = derr.Error()
			}
		}
		b.t.Fatalf("waiting for %s: %v\npage state: %s%s", cond, err, state, b.consoleText())
	}
}

// problems returns the console errors and uncaught exceptions so far,
// except those about the URLs in ignore.
func (b *tab) problems(ignore ...string) []string {
	b.log.mu.Lock()
	defer b.log.mu.Unlock()
	var out []string
	for _, m := range b.log.messages {
		if (m.Type == chromedp.ConsoleError || m.IsException()) && !slices.Contains(ignore, m.URL) {
			where := ""
			if m.URL != "" {
				where = fmt.Sprintf(" (%s:%d)", m.URL, m.Line+1)
			}
			out = append(out, m.String()+where)
		}
	}
	return out
}

// consoleText is the page's console, for failure messages.
func (b *tab) consoleText() string {
	b.log.mu.Lock()
	defer b.log.mu.Unlock()
	if len(b.log.messages) == 0 {
		return ""
	}
	var s strings.Builder
	s.WriteString("\nbrowser console:")
	for _, m := range b.log.messages {
		s.WriteString("\n  " + m.String())
	}
	return s.String()
}

// harnessJS loads the client into the current page from the page's origin
// (so the gateway sees a same-origin browser) and defines window.T, which
// records what a test client sees.
const harnessJS = `new Promise((resolve, reject) => {
  const s = document.createElement("script");
  s.src = "/cometgate.js";
  s.onload = resolve;
  s.onerror = () => reject(new Error("cannot load /cometgate.js"));
  document.documentElement.appendChild(s);
}).then(() => {
  ` + harnessT + `
  return typeof CometGate;
})`

// harnessT defines window.T with the global CometGate.
const harnessT = `window.T = {
    states: [], msgs: [], subscribed: 0, subErrors: [], gaps: [],
    start(opts, channel, subOpts) {
      const cg = new CometGate(opts);
      T.cg = cg;
      cg.on("state", (state, info) => T.states.push({
        state: state, transport: info.transport || "", code: info.code || 0,
        reason: info.reason || "", sid: info.sessionId || "",
      }));
      T.sub = cg.subscribe(channel, (m) => T.msgs.push({
        channel: m.channel, pattern: m.pattern, kind: m.kind, seq: m.seq,
        u8: m.data instanceof Uint8Array,
        data: m.data instanceof Uint8Array ? Array.from(m.data) : m.data,
      }), subOpts);
      T.sub.on("subscribed", () => T.subscribed++);
      T.sub.on("error", (e) => T.subErrors.push({ code: e.code, message: e.message }));
      T.sub.on("gap", (g) => T.gaps.push(g));
    },
    diag() {
      return { state: T.cg && T.cg.state, transport: T.cg && T.cg.transport, sid: T.cg && T.cg.sessionId,
        states: T.states, received: T.msgs.length, subscribed: T.subscribed, subErrors: T.subErrors };
    },
  };`

// openClient navigates to base (a gateway's origin), loads the client and
// starts one on channel with the given options (a JavaScript object).
func (b *tab) openClient(base, channel, opts string) {
	b.t.Helper()
	// Any same-origin document will do; the client file itself is one.
	b.do(chromedp.Navigate(base + "/cometgate.js"))
	var typ string
	b.eval(harnessJS, &typ)
	if typ != "function" {
		b.t.Fatalf("CometGate is %q after loading /cometgate.js", typ)
	}
	b.eval(fmt.Sprintf("T.start(%s, %q), true", opts, channel), nil)
}

// pageMsg is a message as the test client recorded it.
type pageMsg struct {
	Channel string          `json:"channel"`
	Pattern string          `json:"pattern"`
	Kind    string          `json:"kind"`
	Seq     int             `json:"seq"`
	U8      bool            `json:"u8"`
	Data    json.RawMessage `json:"data"`
}

type pageState struct {
	State     string `json:"state"`
	Transport string `json:"transport"`
	Code      int    `json:"code"`
	Reason    string `json:"reason"`
	Sid       string `json:"sid"`
}

func (b *tab) messages() []pageMsg {
	b.t.Helper()
	var msgs []pageMsg
	b.eval("T.msgs", &msgs)
	return msgs
}

func (b *tab) states() []pageState {
	b.t.Helper()
	var st []pageState
	b.eval("T.states", &st)
	return st
}

// variant is message i of a mixed stream: JSON, text that is not JSON, and
// bytes that are not UTF-8, so that every payload form of the wire format
// reaches the browser.
type variant struct {
	body  string // the POST /api/publish body
	kind  string // the client's msg.kind
	want  any    // what the client's msg.data must equal, as decoded from JSON
	bytes bool
}

func mixedMessage(channel string, i int) variant {
	switch i % 3 {
	case 0:
		data := map[string]any{"i": float64(i), "s": `héllo ✓ "quoted" </script>`, "list": []any{1.5, true, nil}}
		body, _ := json.Marshal(map[string]any{"channel": channel, "data": data})
		return variant{body: string(body), kind: "json", want: data}
	case 1:
		text := fmt.Sprintf("line %d: ünïcödé <b>&amp;</b>\ttab", i)
		body, _ := json.Marshal(map[string]any{"channel": channel, "text": text})
		return variant{body: string(body), kind: "text", want: text}
	default:
		raw := []byte{byte(i), 0x00, 0xff, 0xfe, 0x80, '\n'}
		body, _ := json.Marshal(map[string]any{"channel": channel, "b64": base64.StdEncoding.EncodeToString(raw)})
		want := make([]any, len(raw))
		for k, c := range raw {
			want[k] = float64(c)
		}
		return variant{body: string(body), kind: "bytes", want: want, bytes: true}
	}
}

// checkMixed checks that msgs are exactly the mixed messages from..to-1,
// in order, and, when they all came in one session, that their packet
// numbers increase.
func checkMixed(t *testing.T, msgs []pageMsg, channel string, from, to int, oneSession bool) {
	t.Helper()
	if len(msgs) != to-from {
		t.Fatalf("received %d messages, want %d", len(msgs), to-from)
	}
	lastSeq := 0
	for k, m := range msgs {
		i := from + k
		v := mixedMessage(channel, i)
		var got any
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Fatalf("message %d: data %s: %v", i, m.Data, err)
		}
		if m.Channel != channel || m.Pattern != channel || m.Kind != v.kind || m.U8 != v.bytes || !reflect.DeepEqual(got, v.want) {
			t.Fatalf("message %d: got %+v (data %s), want kind %s data %v", i, m, m.Data, v.kind, v.want)
		}
		if oneSession && m.Seq <= lastSeq {
			t.Fatalf("message %d: seq %d after %d", i, m.Seq, lastSeq)
		}
		lastSeq = m.Seq
	}
}

func publishMixed(t *testing.T, n *node, channel string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if code, body := postPublish(t, n, mixedMessage(channel, i).body); code != 200 {
			t.Fatalf("publish %d: %d %s", i, code, body)
		}
	}
}

const diagJS = "T.diag()"

// TestBrowserWebSocket: a page's client over WebSocket gets 100 messages
// published from Go, in order, with every payload form intact.
func TestBrowserWebSocket(t *testing.T) {
	n := startNode(t)
	b := newTab(t)
	b.openClient(n.url(""), "demo.browser", `{transports: ["websocket"]}`)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	var transport string
	b.eval("T.cg.transport", &transport)
	if transport != "websocket" {
		t.Fatalf("transport %q", transport)
	}

	publishMixed(t, n, "demo.browser", 0, 100)
	b.waitFor("T.msgs.length >= 100", diagJS)
	checkMixed(t, b.messages(), "demo.browser", 0, 100, true)

	// A publish from the page resolves with the server's ok and comes back.
	var ok map[string]any
	b.eval(`T.cg.publish("demo.browser", {from: "page"}).then((p) => p)`, &ok)
	if ok["t"] != "ok" {
		t.Fatalf("publish resolved with %v", ok)
	}
	b.waitFor("T.msgs.length >= 101", diagJS)
	if m := b.messages()[100]; m.Kind != "json" || string(m.Data) != `{"from":"page"}` {
		t.Fatalf("echo %+v %s", m, m.Data)
	}
	if p := b.problems(n.url("/favicon.ico")); len(p) > 0 {
		t.Fatalf("console errors: %v", p)
	}
}

// TestBrowserSSE: the same over EventSource, with the page's publishes
// (POST /session/{sid}/send) seen by an independent SSE subscriber.
func TestBrowserSSE(t *testing.T) {
	n := startNode(t)
	b := newTab(t)
	b.openClient(n.url(""), "demo.browser", `{transports: ["sse"]}`)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	var transport string
	b.eval("T.cg.transport", &transport)
	if transport != "sse" {
		t.Fatalf("transport %q", transport)
	}

	publishMixed(t, n, "demo.browser", 0, 100)
	b.waitFor("T.msgs.length >= 100", diagJS)
	checkMixed(t, b.messages(), "demo.browser", 0, 100, true)

	// Another subscriber, outside the browser.
	s := openSSE(t, n.url("/sse?ch=demo.browser"))
	next(t, s.packets, "ok")

	publishThree(t, b, "text from the page ✓")
	// One POST carries the three frames in order, so they arrive in order.
	if m := next(t, s.packets, "msg"); !reflect.DeepEqual(m["data"], map[string]any{"from": "page", "n": 1.0}) {
		t.Fatalf("first page publish arrived as %v", m)
	}
	if m := next(t, s.packets, "msg"); m["text"] != "text from the page ✓" {
		t.Fatalf("second page publish arrived as %v", m)
	}
	if m := next(t, s.packets, "msg"); m["b64"] != "AP8BgA==" {
		t.Fatalf("third page publish arrived as %v", m)
	}
	b.waitFor("T.msgs.length >= 103", diagJS)

	// A refused publish rejects with the server's code and ends nothing.
	var code any
	b.eval(`T.cg.publish("secret.x", 1).then(() => "resolved", (e) => e.code)`, &code)
	if code != 403.0 {
		t.Fatalf("publish to secret.x: %v, want 403", code)
	}
	var state string
	b.eval("T.cg.state", &state)
	if state != "connected" {
		t.Fatalf("state %q after a refused publish", state)
	}
	if p := b.problems(n.url("/favicon.ico")); len(p) > 0 {
		t.Fatalf("console errors: %v", p)
	}
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", brokertest.FreePort(t))
}

// TestBrowserReconnect: when its node shuts down (close 3000), the client
// goes "disconnected", keeps trying, and once a node is back at the same
// address it opens a new session, subscribes again and receives: over
// WebSocket, SSE, and the last resorts htmlfile and jsonp.
func TestBrowserReconnect(t *testing.T) {
	for _, transport := range []string{"websocket", "sse", "htmlfile", "jsonp"} {
		t.Run(transport, func(t *testing.T) {
			addr := freePort(t)
			a := startNode(t, "COMETGATE_HTTP_LISTEN="+addr)
			b := newTab(t)
			b.openClient(a.url(""), "demo.browser",
				fmt.Sprintf(`{transports: [%q], minReconnectDelay: 100, maxReconnectDelay: 500}`, transport))
			b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
			var firstSID string
			b.eval("T.cg.sessionId", &firstSID)
			publishMixed(t, a, "demo.browser", 0, 3)
			b.waitFor("T.msgs.length >= 3", diagJS)

			a.shutdown(t)
			b.waitFor(`(() => {
			  const i = T.states.findIndex((s) => s.state === "disconnected" && s.code === 3000);
			  return i >= 0 && T.states.slice(i + 1).some((s) => s.state === "connecting");
			})()`, diagJS)
			for _, s := range b.states() {
				if s.State == "closed" {
					t.Fatalf("the client gave up: %+v", b.states())
				}
			}

			bnode := startNode(t, "COMETGATE_HTTP_LISTEN="+addr)
			b.waitFor(`T.subscribed === 2 && T.cg.state === "connected"`, diagJS)
			// demo.browser has no history: the resubscription says the
			// session broke, and the node answers that messages published
			// meanwhile are lost. No loss is silent.
			b.waitFor(`T.gaps.length === 1 && /no history/.test(T.gaps[0].reason)`, diagJS)
			var sid string
			b.eval("T.cg.sessionId", &sid)
			if sid == "" || sid == firstSID {
				t.Fatalf("session after reconnect %q, before %q", sid, firstSID)
			}
			publishMixed(t, bnode, "demo.browser", 3, 9)
			b.waitFor("T.msgs.length >= 9", diagJS)
			checkMixed(t, b.messages(), "demo.browser", 0, 9, false)
			var subErrs []any
			b.eval("T.subErrors", &subErrs)
			if len(subErrs) > 0 {
				t.Fatalf("subscription errors: %v", subErrs)
			}
		})
	}
}

// TestBrowserFallback: where /ws is refused (a proxy in front of the node
// answers 403), the default client falls back to SSE at once, receives and
// publishes.
func TestBrowserFallback(t *testing.T) {
	n := startNode(t)
	target, err := url.Parse(n.url(""))
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	var refused atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			refused.Add(1)
			http.Error(w, "no WebSocket here", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		proxy.CloseClientConnections()
		proxy.Close()
	})

	b := newTab(t)
	// connectTimeout is longer than the wait: the fallback must come from
	// the refused handshake, not from the timeout.
	b.openClient(proxy.URL, "demo.browser", `{transports: ["websocket", "sse"], connectTimeout: 120000}`)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	var transport string
	b.eval("T.cg.transport", &transport)
	if transport != "sse" {
		t.Fatalf("transport %q, want sse", transport)
	}
	if refused.Load() == 0 {
		t.Fatal("the client never tried /ws")
	}
	publishMixed(t, n, "demo.browser", 0, 30)
	b.waitFor("T.msgs.length >= 30", diagJS)
	checkMixed(t, b.messages(), "demo.browser", 0, 30, true)

	var ok map[string]any
	b.eval(`T.cg.publish("demo.browser", {via: "proxy"})`, &ok)
	if ok["t"] != "ok" {
		t.Fatalf("publish resolved with %v", ok)
	}
	b.waitFor("T.msgs.length >= 31", diagJS)

	// The stream breaks without a close packet (the proxy drops every
	// connection): the browser's EventSource reconnects by itself into a
	// new session, and the client follows it: a publish made meanwhile
	// waits for the new session instead of going to the dead one.
	var firstSID string
	b.eval("T.cg.sessionId", &firstSID)
	proxy.CloseClientConnections()
	b.waitFor(`T.cg.state === "connecting"`, diagJS)
	b.eval(`T.held = T.cg.publish("demo.browser", {held: true}), true`, nil)
	b.waitFor(`T.subscribed === 2 && T.cg.state === "connected" && T.cg.sessionId !== `+strconv.Quote(firstSID), diagJS)
	b.eval(`T.held`, &ok)
	if ok["t"] != "ok" {
		t.Fatalf("publish made while reconnecting resolved with %v", ok)
	}
	for _, s := range b.states() {
		if s.State == "disconnected" || s.State == "closed" {
			t.Fatalf("the client gave the session up instead of following the EventSource: %+v", b.states())
		}
	}
	publishMixed(t, n, "demo.browser", 31, 40)
	// The held publish may or may not come back: the new session's
	// subscription and the publish race.
	notHeld := `T.msgs.slice(31).filter((m) => !(m.data && m.data.held))`
	b.waitFor(notHeld+".length >= 9", diagJS)
	var msgs []pageMsg
	b.eval(notHeld, &msgs)
	checkMixed(t, msgs, "demo.browser", 31, 40, true)
}

// TestBrowserDemoPages loads the console page (index.html), uses it as a
// person would and fails on any console error or uncaught exception. It
// also screenshots it after it received a message, and checks that the
// picture is a rendered page (set CG_BROWSER_SCREENSHOT=FILE.png to keep
// it). The three demos have tests of their own (demo_browser_test.go).
func TestBrowserDemoPages(t *testing.T) {
	n := startNode(t)
	browser := newTab(t)
	noProblems := func(t *testing.T, b *tab, page string) {
		t.Helper()
		if p := b.problems(); len(p) > 0 {
			t.Fatalf("%s: console errors:\n  %s", page, strings.Join(p, "\n  "))
		}
	}
	logText := `Array.from(document.querySelectorAll("#log li"), (li) => li.textContent)`

	t.Run("index", func(t *testing.T) {
		b := browser.in(t)
		b.do(chromedp.Navigate(n.url("/")))
		b.waitFor(`document.getElementById("state").textContent === "connected · websocket"`, `document.getElementById("state").textContent`)
		b.waitFor(`document.querySelector("#chips .chip:not(.pending)") !== null`, `document.getElementById("chips").outerHTML`)

		// A message from the server side...
		if code, body := postPublish(t, n, `{"channel":"demo.x","data":{"price":42,"from":"Go"}}`); code != 200 {
			t.Fatalf("publish: %d %s", code, body)
		}
		b.waitFor(logText+`.some((s) => s.includes('{"price":42,"from":"Go"}'))`, logText)
		// ...and one from the page's own form, confirmed by the broker.
		b.do(chromedp.Click(chromedp.CSS(`#pub-form button[type="submit"]`)))
		b.waitFor(`document.getElementById("pub-result").textContent.includes("confirmed by the broker")`, `document.getElementById("pub-result").textContent`)
		b.waitFor(logText+`.some((s) => s.includes('{"hello":"world"}'))`, logText)

		sctx, scancel := context.WithTimeout(b.ctx, browserTimeout)
		shot, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
		scancel()
		if err != nil {
			t.Fatal(err)
		}
		checkScreenshot(t, shot)
		if path := os.Getenv(screenshotEnv); path != "" {
			if err := os.WriteFile(path, shot, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("screenshot of index.html: %s", path)
		}

		// Switching the transport starts a new client that subscribes again.
		b.do(chromedp.SetValue(chromedp.ID("transport"), "sse"))
		b.eval(`document.getElementById("transport").dispatchEvent(new Event("change")), true`, nil)
		b.waitFor(`document.getElementById("state").textContent === "connected · sse"`, `document.getElementById("state").textContent`)
		b.waitFor(logText+`.filter((s) => s.includes("subscribed to demo.x")).length >= 2`, logText)
		if code, body := postPublish(t, n, `{"channel":"demo.x","text":"over sse"}`); code != 200 {
			t.Fatalf("publish: %d %s", code, body)
		}
		b.waitFor(logText+`.some((s) => s.includes('text "over sse"'))`, logText)

		// The request-per-poll transports are in the selector too.
		for i, transport := range []string{"xhr_stream", "poll"} {
			b.do(chromedp.SetValue(chromedp.ID("transport"), transport))
			b.eval(`document.getElementById("transport").dispatchEvent(new Event("change")), true`, nil)
			b.waitFor(`document.getElementById("state").textContent === "connected · `+transport+`"`, `document.getElementById("state").textContent`)
			b.waitFor(logText+fmt.Sprintf(`.filter((s) => s.includes("subscribed to demo.x")).length >= %d`, 3+i), logText)
			if code, body := postPublish(t, n, fmt.Sprintf(`{"channel":"demo.x","text":"over %s"}`, transport)); code != 200 {
				t.Fatalf("publish: %d %s", code, body)
			}
			b.waitFor(logText+fmt.Sprintf(`.some((s) => s.includes('text "over %s"'))`, transport), logText)
		}
		noProblems(t, b, "index.html")
	})

}

// checkScreenshot checks that a PNG is a 1280×900 picture with enough
// distinct colours to be a rendered page with text, not a blank or an
// error page.
func checkScreenshot(t *testing.T, shot []byte) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 {
		t.Fatalf("screenshot is %v, want 1280×900", b)
	}
	colours := map[[4]uint32]bool{}
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y += 2 {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x += 2 {
			r, g, bl, a := img.At(x, y).RGBA()
			colours[[4]uint32{r, g, bl, a}] = true
		}
	}
	if len(colours) < 50 {
		t.Fatalf("screenshot has %d colours: the page did not render", len(colours))
	}
}

// pollProxy is a reverse proxy between the browser and a node, for the
// request-per-poll transports. It counts requests by kind, refuses the
// paths in refuse (403, as a proxy that forbids WebSocket and SSE does),
// answers 503 to every request of the family while fail is set (a load
// balancer without a healthy backend), and, once armed, breaks one
// response of the family in the middle of its msg packets: a connection
// lost while the response was on its way.
type pollProxy struct {
	srv    *httptest.Server
	refuse []string
	fail   atomic.Bool

	mu      sync.Mutex
	counts  map[string]int // by pathKind
	armed   bool
	cutSeqs []int  // seqs of the msg packets the broken response did not deliver
	cutURL  string // the broken request, as the browser named it
	// lowerAck: make the next request of the family acknowledge this many
	// packets less than it does (an acknowledgement lost on the way), so
	// that the node sends packets again that the page holds already.
	lowerAck int
	lowered  string // the request whose ack was lowered, as "ack=N→M"
}

func newPollProxy(t *testing.T, n *node, refuse ...string) *pollProxy {
	t.Helper()
	target, err := url.Parse(n.url(""))
	if err != nil {
		t.Fatal(err)
	}
	p := &pollProxy{refuse: refuse, counts: map[string]int{}}
	// NewSingleHostReverseProxy keeps the browser's Host header, so the
	// node sees the page's origin as its own.
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = p.modify
	// The broken responses and the requests the browser aborts are logged
	// as proxy errors: expected here.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := pathKind(r.URL.Path)
		p.mu.Lock()
		p.counts[kind]++
		p.mu.Unlock()
		if slices.Contains(p.refuse, r.URL.Path) {
			http.Error(w, "not through this proxy", http.StatusForbidden)
			return
		}
		if p.fail.Load() && (kind == "/session/send" || slices.ContainsFunc(pollFamilies, func(f string) bool { return strings.HasPrefix(kind, f) })) {
			http.Error(w, "no backend available", http.StatusServiceUnavailable)
			return
		}
		if kind == "/poll/" || kind == "/xhr_stream/" {
			p.rewriteAck(r)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.srv.CloseClientConnections()
		p.srv.Close()
	})
	return p
}

// pollFamilies are the request-per-poll families' paths.
var pollFamilies = []string{"/poll", "/xhr_stream", "/htmlfile", "/jsonp", "/jsonp_send"}

// pathKind names a request without its session id: "/poll" opens a
// session, "/poll/" is a next poll, "/session/send" an upstream POST.
func pathKind(path string) string {
	for _, fam := range []string{"/poll/", "/xhr_stream/", "/htmlfile/", "/jsonp/", "/jsonp_send/"} {
		if strings.HasPrefix(path, fam) {
			return fam
		}
	}
	if strings.HasPrefix(path, "/session/") && strings.HasSuffix(path, "/send") {
		return "/session/send"
	}
	return path
}

func (p *pollProxy) count(kind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[kind]
}

// rewriteAck lowers r's ack=N when lowerAck asks for it.
func (p *pollProxy) rewriteAck(r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q := r.URL.Query()
	ack, err := strconv.Atoi(q.Get("ack"))
	if p.lowerAck == 0 || err != nil || ack <= p.lowerAck {
		return
	}
	q.Set("ack", strconv.Itoa(ack-p.lowerAck))
	r.URL.RawQuery = q.Encode()
	p.lowered = fmt.Sprintf("ack=%d→%d", ack, ack-p.lowerAck)
	p.lowerAck = 0
}

// loweredAck reports the request whose ack was lowered; "" if none was.
func (p *pollProxy) loweredAck() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lowered
}

// arm makes the proxy break the next response that carries msg packets.
func (p *pollProxy) arm() {
	p.mu.Lock()
	p.armed = true
	p.mu.Unlock()
}

// cut returns the seqs the broken response lost and its URL; nil and ""
// before it broke one.
func (p *pollProxy) cut() ([]int, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.cutSeqs), p.cutURL
}

// takeCut disarms the proxy and records what the response to r lost;
// false if it was not armed.
func (p *pollProxy) takeCut(r *http.Request, seqs []int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed {
		return false
	}
	p.armed, p.cutSeqs, p.cutURL = false, seqs, p.srv.URL+r.URL.RequestURI()
	return true
}

// errCut is what a broken response's body returns to the reverse proxy,
// which then aborts the connection to the browser mid-response.
var errCut = errors.New("test proxy: response broken on purpose")

func (p *pollProxy) modify(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	p.mu.Lock()
	armed := p.armed
	p.mu.Unlock()
	if !armed {
		return nil
	}
	switch kind := pathKind(resp.Request.URL.Path); kind {
	case "/poll/":
		// A poll response is one JSON array with a Content-Length: the
		// browser gets half of it, and then the connection drops.
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		var packets []struct {
			Seq int    `json:"seq"`
			T   string `json:"t"`
		}
		if err := json.Unmarshal(body, &packets); err != nil {
			return fmt.Errorf("poll response %q: %w", body, err)
		}
		var seqs []int
		for _, pk := range packets {
			if pk.T == "msg" {
				seqs = append(seqs, pk.Seq)
			}
		}
		if len(seqs) == 0 || !p.takeCut(resp.Request, seqs) {
			resp.Body = io.NopCloser(bytes.NewReader(body))
			return nil
		}
		resp.Body = &brokenBody{r: bytes.NewReader(body[:len(body)/2])}
	case "/xhr_stream/":
		resp.Body = &cutStream{body: resp.Body, p: p, r: resp.Request}
	}
	return nil
}

// brokenBody returns what r holds, then errCut.
type brokenBody struct {
	r *bytes.Reader
}

func (b *brokenBody) Read(buf []byte) (int, error) {
	if b.r.Len() == 0 {
		return 0, errCut
	}
	return b.r.Read(buf)
}

func (b *brokenBody) Close() error { return nil }

// cutStream passes an XHR stream through until it has passed three whole
// msg packets; then it stops in the middle of the next msg packet (its
// line never ends) and fails, if the proxy is still armed.
type cutStream struct {
	body io.ReadCloser
	p    *pollProxy
	r    *http.Request
	msgs int
	cut  bool
}

var (
	msgMark = []byte(`,"t":"msg"`)
	seqMark = []byte(`{"seq":`)
)

func (c *cutStream) Read(b []byte) (int, error) {
	if c.cut {
		return 0, errCut
	}
	n, err := c.body.Read(b)
	chunk := b[:n]
	for off := 0; ; {
		i := bytes.Index(chunk[off:], msgMark)
		if i < 0 {
			break
		}
		i += off
		// The packet's start, when it is in this chunk: {"seq":N,"t":"msg"…
		if start := bytes.LastIndex(chunk[:i], seqMark); start >= 0 && c.msgs >= 3 {
			if seq, perr := strconv.Atoi(string(chunk[start+len(seqMark) : i])); perr == nil && c.p.takeCut(c.r, []int{seq}) {
				c.cut = true
				return i, nil
			}
		}
		c.msgs++
		off = i + 1
	}
	return n, err
}

func (c *cutStream) Close() error { return c.body.Close() }

// seqsOnce checks that each of seqs is the seq of exactly one message the
// page received.
func seqsOnce(t *testing.T, msgs []pageMsg, seqs []int) {
	t.Helper()
	for _, s := range seqs {
		n := 0
		for _, m := range msgs {
			if m.Seq == s {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("packet seq %d (in the broken response) arrived %d times", s, n)
		}
	}
}

// TestBrowserRequestPerPoll: the page's client over XHR streaming and over
// long-polling alone, through a proxy: 200 messages published from Go
// arrive in order (the XHR streams recycle every 8 KiB on the way), the
// page publishes (resolved once the broker confirmed), a refused publish
// rejects without harm, and a response the proxy breaks mid-way loses and
// duplicates nothing: the client attaches again with its ack, the node
// sends what was not acknowledged again, and the session stays the same.
func TestBrowserRequestPerPoll(t *testing.T) {
	for _, transport := range []string{"xhr_stream", "poll"} {
		t.Run(transport, func(t *testing.T) {
			n := startNode(t, "COMETGATE_SESSION_STREAM_LIMIT_BYTES=8192")
			p := newPollProxy(t, n)
			b := newTab(t)
			b.openClient(p.srv.URL, "demo.browser", fmt.Sprintf(`{transports: [%q]}`, transport))
			b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
			var got string
			b.eval("T.cg.transport", &got)
			if got != transport {
				t.Fatalf("transport %q, want %q", got, transport)
			}
			var sid string
			b.eval("T.cg.sessionId", &sid)
			if p.count("/"+transport) != 1 {
				t.Fatalf("%d requests opened a session, want 1", p.count("/"+transport))
			}

			publishMixed(t, n, "demo.browser", 0, 200)
			b.waitFor("T.msgs.length >= 200", diagJS)
			checkMixed(t, b.messages(), "demo.browser", 0, 200, true)
			if transport == "xhr_stream" {
				// 200 messages are about 20 KiB: more than two streams of
				// 8 KiB (prelude included).
				if c := p.count("/xhr_stream/"); c < 2 {
					t.Fatalf("%d next streams for 200 messages with an 8 KiB stream limit", c)
				}
			}

			checkPagePublishes(t, b, 200)

			// A broken response.
			before := len(b.states())
			p.arm()
			publishMixed(t, n, "demo.browser", 203, 403)
			b.waitFor("T.msgs.length >= 403", diagJS)
			cut, cutURL := p.cut()
			if len(cut) == 0 {
				t.Fatal("the proxy broke no response")
			}
			// One more message: a duplicate of an earlier one would come
			// before it.
			publishMixed(t, n, "demo.browser", 403, 404)
			b.waitFor("T.msgs.length >= 404", diagJS)
			msgs := b.messages()
			checkMixed(t, msgs[:200], "demo.browser", 0, 200, true)
			checkMixed(t, msgs[203:], "demo.browser", 203, 404, true)
			seqsOnce(t, msgs, cut)
			keptSession(t, b, sid, before)
			b.waitFor(`T.cg.state === "connected"`, diagJS)
			// An acknowledgement lost on the way: the node sends the last 5
			// packets again, and the page drops them.
			p.mu.Lock()
			p.lowerAck = 5
			p.mu.Unlock()
			publishMixed(t, n, "demo.browser", 404, 504)
			b.waitFor("T.msgs.length >= 504", diagJS)
			if p.loweredAck() == "" {
				t.Fatal("the proxy lowered no ack")
			}
			publishMixed(t, n, "demo.browser", 504, 505)
			b.waitFor("T.msgs.length >= 505", diagJS)
			msgs = b.messages()
			checkMixed(t, msgs[203:], "demo.browser", 203, 505, true)
			keptSession(t, b, sid, before)
			t.Logf("broke %s (seqs %v), lowered %s", cutURL, cut, p.loweredAck())

			// The broken response is a network error in the console.
			if pr := b.problems(p.srv.URL+"/favicon.ico", cutURL); len(pr) > 0 {
				t.Fatalf("console errors: %v", pr)
			}
		})
	}
}

// publishThree makes the page's client publish {"from":"page","n":1},
// text and the bytes 0 255 1 128 to demo.browser at once, and checks that
// each resolves with the node's ok.
func publishThree(t *testing.T, b *tab, text string) {
	t.Helper()
	var oks []map[string]any
	b.eval(fmt.Sprintf(`Promise.all([
	  T.cg.publish("demo.browser", {from: "page", n: 1}),
	  T.cg.publishText("demo.browser", %s),
	  T.cg.publishBytes("demo.browser", new Uint8Array([0, 255, 1, 128])),
	])`, strconv.Quote(text)), &oks)
	if len(oks) != 3 {
		t.Fatalf("publishes resolved with %v", oks)
	}
	for _, ok := range oks {
		if ok["t"] != "ok" {
			t.Fatalf("publishes resolved with %v", oks)
		}
	}
}

// keptSession checks that the page's client is still in session sid and
// has not been "disconnected" or "closed" since its state number before.
func keptSession(t *testing.T, b *tab, sid string, before int) {
	t.Helper()
	var after string
	b.eval("T.cg.sessionId", &after)
	if after != sid {
		t.Fatalf("session %q, was %q: the session was not kept", after, sid)
	}
	for _, s := range b.states()[before:] {
		if s.State == "disconnected" || s.State == "closed" {
			t.Fatalf("the client left its session: %+v", b.states())
		}
	}
}

// checkPagePublishes: the page's client publishes JSON, text (with a
// "</script>" in it, for the callback transports) and bytes at once; each
// publish resolves with the node's ok (after the broker confirmed it),
// they come back as messages from, from+1 and from+2 in the order they
// were made, and a refused publish rejects with 403 and ends nothing.
func checkPagePublishes(t *testing.T, b *tab, from int) {
	t.Helper()
	publishThree(t, b, "text from the page ✓ </script>")
	b.waitFor(fmt.Sprintf("T.msgs.length >= %d", from+3), diagJS)
	echo := b.messages()[from:]
	wantEcho := []struct {
		kind string
		data any
	}{
		{"json", map[string]any{"from": "page", "n": 1.0}},
		{"text", "text from the page ✓ </script>"},
		{"bytes", []any{0.0, 255.0, 1.0, 128.0}},
	}
	for i, w := range wantEcho {
		var data any
		if err := json.Unmarshal(echo[i].Data, &data); err != nil || echo[i].Kind != w.kind || !reflect.DeepEqual(data, w.data) {
			t.Fatalf("page publish %d came back as %s %s, want %s %v", i, echo[i].Kind, echo[i].Data, w.kind, w.data)
		}
	}
	var code any
	b.eval(`T.cg.publish("secret.x", 1).then(() => "resolved", (e) => e.code)`, &code)
	if code != 403.0 {
		t.Fatalf("publish to secret.x: %v, want 403", code)
	}
}

// TestBrowserFallbackToXHRStream: behind a proxy that refuses /ws and /sse
// (403), the default client ends up on XHR streaming at once, receives
// and publishes.
func TestBrowserFallbackToXHRStream(t *testing.T) {
	n := startNode(t)
	p := newPollProxy(t, n, "/ws", "/sse")
	b := newTab(t)
	// connectTimeout is longer than the wait: the fallback must come from
	// the refusals, not from the timeout. No transports option: the
	// default order.
	b.openClient(p.srv.URL, "demo.browser", `{connectTimeout: 120000}`)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	var transport string
	b.eval("T.cg.transport", &transport)
	if transport != "xhr_stream" {
		t.Fatalf("transport %q, want xhr_stream", transport)
	}
	if p.count("/ws") == 0 || p.count("/sse") == 0 {
		t.Fatalf("the client did not try /ws (%d) and /sse (%d) first", p.count("/ws"), p.count("/sse"))
	}
	if p.count("/poll") != 0 {
		t.Fatal("the client went on to long-polling although XHR streaming works")
	}
	publishMixed(t, n, "demo.browser", 0, 30)
	b.waitFor("T.msgs.length >= 30", diagJS)
	checkMixed(t, b.messages(), "demo.browser", 0, 30, true)

	var ok map[string]any
	b.eval(`T.cg.publish("demo.browser", {via: "xhr_stream"})`, &ok)
	if ok["t"] != "ok" {
		t.Fatalf("publish resolved with %v", ok)
	}
	b.waitFor("T.msgs.length >= 31", diagJS)
}

// TestBrowserPollSessionGone: when the node forgot a long-polling session
// (nothing reached it for longer than its disconnect delay), the client's
// next poll gets 404 (4004); the client opens a new session and subscribes
// again from its cursor, so a channel with history loses nothing of what
// was published meanwhile.
func TestBrowserPollSessionGone(t *testing.T) {
	cfg := historyConfig(t, "jetstream", "cgtest_poll_gone")
	n := startNodeArgs(t, []string{"--config", cfg},
		"COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0", "COMETGATE_SESSION_DISCONNECT_DELAY=1s")
	p := newPollProxy(t, n)
	b := newTab(t)
	// The client keeps trying its session longer than the node keeps it.
	b.openClient(p.srv.URL, "demo.h.poll", `{transports: ["poll"], resumeWindow: 20000, minReconnectDelay: 100, maxReconnectDelay: 500}`)
	b.waitFor(`T.subscribed === 1 && T.cg.state === "connected"`, diagJS)
	var sid string
	b.eval("T.cg.sessionId", &sid)
	publishMixed(t, n, "demo.h.poll", 0, 10)
	b.waitFor("T.msgs.length >= 10", diagJS)

	// The proxy loses the held poll and then answers 503 to everything:
	// the client retries its session...
	p.fail.Store(true)
	p.srv.CloseClientConnections()
	b.waitFor(`T.cg.state === "connecting"`, diagJS)
	publishMixed(t, n, "demo.h.poll", 10, 20)
	// ...until the node has forgotten it.
	deadline := time.Now().Add(browserTimeout)
	for sessions(t, n) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the node kept the session")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.fail.Store(false)

	b.waitFor(`T.subscribed === 2 && T.cg.state === "connected" && T.cg.sessionId !== `+strconv.Quote(sid), diagJS)
	gone := false
	for _, s := range b.states() {
		if s.State == "closed" {
			t.Fatalf("the client gave up: %+v", b.states())
		}
		if s.State == "disconnected" && s.Code == 3002 && strings.Contains(s.Reason, "session not found") {
			gone = true
		}
	}
	if !gone {
		t.Fatalf("no 4004 (session not found) seen: %+v", b.states())
	}
	b.waitFor("T.msgs.length >= 20", diagJS)
	publishMixed(t, n, "demo.h.poll", 20, 25)
	b.waitFor("T.msgs.length >= 25", diagJS)
	checkMixed(t, b.messages(), "demo.h.poll", 0, 25, false)
	var gaps []any
	b.eval("T.gaps", &gaps)
	if len(gaps) > 0 {
		t.Fatalf("gaps: %v", gaps)
	}
}

// sessions is the node's session count from /readyz.
func sessions(t *testing.T, n *node) int {
	t.Helper()
	resp, err := http.Get(n.url("/readyz"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Sessions int `json:"sessions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v.Sessions
}
