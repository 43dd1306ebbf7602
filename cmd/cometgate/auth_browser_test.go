package main

// Browser tests of token authentication: web/cometgate.js with its token
// option, in chromium, against a node whose "secret.>" channels need a
// token (auth.mode jwt). They show that every transport presents the token
// on every request of its session (the node checks the follow-up requests
// of request-per-poll sessions against the session's subject), that a
// refused or expired token goes through the client's reconnect backoff and
// asks the token function again, and that an anonymous page is refused
// what the rules keep for tokens.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cometgate/cometgate/gateway"
)

// authHarnessJS defines window.A, which opens named clients and records
// what each sees. tokens is the list of tokens the token function hands
// out in turn (the last one again and again); mode is "sync" (the function
// returns the string), "async" (a Promise of it), "fixed" (options.token
// is the first token itself), "fetch" (tokens[0] is a URL that the
// function fetches a token from, as an application would, with ?n= the
// call's number) or "none" (no token option).
const authHarnessJS = `(() => {
  window.A = {
    c: {},
    open(name, opts, channel, tokens, mode) {
      const r = { states: [], msgs: [], subscribed: 0, subErrors: [], tokenCalls: 0 };
      A.c[name] = r;
      const o = Object.assign({ url: location.origin }, opts);
      if (mode === "fixed") {
        o.token = tokens[0];
      } else if (mode === "fetch") {
        o.token = () => fetch(tokens[0] + "?n=" + (++r.tokenCalls)).then((res) => res.text());
      } else if (mode !== "none") {
        o.token = () => {
          const tok = tokens[Math.min(r.tokenCalls, tokens.length - 1)];
          r.tokenCalls++;
          return mode === "async" ? new Promise((resolve) => setTimeout(() => resolve(tok), 10)) : tok;
        };
      }
      r.cg = new CometGate(o);
      r.cg.on("state", (state, info) => r.states.push({
        state: state, code: info.code || 0, reason: info.reason || "",
        delay: info.delay === undefined ? -1 : info.delay, sid: info.sessionId || "",
      }));
      r.sub = r.cg.subscribe(channel, (m) => r.msgs.push({ channel: m.channel, data: m.data }));
      r.sub.on("subscribed", () => r.subscribed++);
      r.sub.on("error", (e) => r.subErrors.push({ code: e.code, message: e.message, retrying: !!e.retrying }));
    },
    diag(name) {
      const r = A.c[name];
      return { state: r.cg.state, transport: r.cg.transport, states: r.states, received: r.msgs.length,
        subscribed: r.subscribed, subErrors: r.subErrors, tokenCalls: r.tokenCalls };
    },
  };
  return typeof CometGate;
})()`

type authState struct {
	State  string `json:"state"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
	Delay  int    `json:"delay"`
	Sid    string `json:"sid"`
}

type authMsg struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// startAuthNode runs a node with jwt authentication, "secret.>" for token
// holders and "demo.>" for anyone, and authExtra added to its auth section.
// It returns the node and its HMAC secret.
func startAuthNode(t *testing.T, authExtra string, env ...string) (*node, []byte) {
	t.Helper()
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	secret := hex.EncodeToString(raw)
	cfg := writeAuthConfig(t, secret, authExtra)
	return startNodeArgs(t, []string{"--config", cfg}, env...), []byte(secret)
}

// alice is the principal of the tokens the browser tests sign.
var alice = gateway.Principal{Subject: "alice", Subscribe: []string{"secret.>"}, Publish: []string{"secret.>"}}

func signAlice(t *testing.T, secret []byte, ttl time.Duration) string {
	t.Helper()
	tok, err := gateway.SignToken(secret, alice, "", "", ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// openAuthClient starts client name in the page (see authHarnessJS).
func (b *tab) openAuthClient(name, opts, channel string, tokens []string, mode string) {
	b.t.Helper()
	list, err := json.Marshal(tokens)
	if err != nil {
		b.t.Fatal(err)
	}
	b.eval(fmt.Sprintf("A.open(%q, %s, %q, %s, %q), true", name, opts, channel, list, mode), nil)
}

func (b *tab) authStates(name string) []authState {
	b.t.Helper()
	var st []authState
	b.eval(fmt.Sprintf("A.c[%q].states", name), &st)
	return st
}

func (b *tab) authMsgs(name string) []authMsg {
	b.t.Helper()
	var msgs []authMsg
	b.eval(fmt.Sprintf("A.c[%q].msgs", name), &msgs)
	return msgs
}

func (b *tab) closeAuthClient(name string) {
	b.t.Helper()
	b.eval(fmt.Sprintf("A.c[%q].cg.close(), true", name), nil)
}

// authPadding makes the published messages big enough that 40 of them
// outgrow an 8 KiB xhr_stream stream: the client opens follow-up streams.
var authPadding = strings.Repeat("p", 200)

func publishSecret(t *testing.T, n *node, channel string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		body := fmt.Sprintf(`{"channel":%q,"data":{"i":%d,"pad":%q}}`, channel, i, authPadding)
		if code, resp := postPublish(t, n, body); code != 200 {
			t.Fatalf("publish %d: %d %s", i, code, resp)
		}
	}
}

// checkSecret checks that msgs start with messages from..to-1 of channel,
// in order.
func checkSecret(t *testing.T, msgs []authMsg, channel string, from, to int) {
	t.Helper()
	if len(msgs) < to-from {
		t.Fatalf("received %d messages, want %d", len(msgs), to-from)
	}
	for k := 0; k < to-from; k++ {
		var d struct {
			I   int    `json:"i"`
			Pad string `json:"pad"`
		}
		m := msgs[k]
		if err := json.Unmarshal(m.Data, &d); err != nil || m.Channel != channel || d.I != from+k || d.Pad != authPadding {
			t.Fatalf("message %d: %s %s (%v)", from+k, m.Channel, m.Data, err)
		}
	}
}

func diagOf(name string) string { return fmt.Sprintf("A.diag(%q)", name) }

// TestAuthBrowser: over each transport a page whose client has alice's
// token subscribes to and publishes on a token-only channel; an anonymous
// client of the same page is refused both.
func TestAuthBrowser(t *testing.T) {
	n, secret := startAuthNode(t, "", "COMETGATE_SESSION_STREAM_LIMIT_BYTES=8192")
	token := signAlice(t, secret, time.Hour)
	browser := newTab(t)
	browser.do(chromedp.Navigate(n.url("/")))
	browser.waitFor(`typeof CometGate === "function"`, `typeof CometGate`)
	var typ string
	browser.eval(authHarnessJS, &typ)
	if typ != "function" {
		t.Fatalf("CometGate is %q in the page", typ)
	}

	const count = 40
	for i, transport := range []string{"websocket", "sse", "xhr_stream", "poll"} {
		t.Run(transport, func(t *testing.T) {
			b := browser.in(t)
			channel := "secret." + transport
			alice := "alice-" + transport
			mode := "sync"
			if i%2 == 1 {
				mode = "async"
			}
			b.openAuthClient(alice, fmt.Sprintf(`{transports: [%q]}`, transport), channel, []string{token}, mode)
			b.waitFor(fmt.Sprintf(`A.c[%q].subscribed === 1 && A.c[%q].cg.state === "connected"`, alice, alice), diagOf(alice))
			var got string
			b.eval(fmt.Sprintf("A.c[%q].cg.transport", alice), &got)
			if got != transport {
				t.Fatalf("transport %q, want %q", got, transport)
			}

			publishSecret(t, n, channel, 0, count)
			b.waitFor(fmt.Sprintf(`A.c[%q].msgs.length >= %d`, alice, count), diagOf(alice))
			checkSecret(t, b.authMsgs(alice), channel, 0, count)

			// The page's own publish: over SSE and the request-per-poll
			// transports it goes by POST, which must present the token too.
			var ok map[string]any
			b.eval(fmt.Sprintf(`A.c[%q].cg.publish(%q, {from: "page"})`, alice, channel), &ok)
			if ok["t"] != "ok" {
				t.Fatalf("publish from the page resolved with %v", ok)
			}
			b.waitFor(fmt.Sprintf(`A.c[%q].msgs.length >= %d`, alice, count+1), diagOf(alice))
			if m := b.authMsgs(alice)[count]; m.Channel != channel || string(m.Data) != `{"from":"page"}` {
				t.Fatalf("echo of the page's publish: %s %s", m.Channel, m.Data)
			}
			var calls int
			b.eval(fmt.Sprintf("A.c[%q].tokenCalls", alice), &calls)
			if calls != 1 {
				t.Fatalf("the token function was called %d times for one connection", calls)
			}
			if st := b.authStates(alice); st[len(st)-1].State != "connected" {
				t.Fatalf("states %+v", st)
			}

			// Without a token the same channel is refused, for good.
			anon := "anon-" + transport
			b.openAuthClient(anon, fmt.Sprintf(`{transports: [%q]}`, transport), channel, nil, "none")
			b.waitFor(fmt.Sprintf(`A.c[%q].subErrors.length === 1`, anon), diagOf(anon))
			var errs []struct {
				Code     int  `json:"code"`
				Retrying bool `json:"retrying"`
			}
			b.eval(fmt.Sprintf("A.c[%q].subErrors", anon), &errs)
			if errs[0].Code != 403 || errs[0].Retrying {
				t.Fatalf("anonymous subscription error %+v, want 403, final", errs[0])
			}
			var pubCode any
			b.eval(fmt.Sprintf(`A.c[%q].cg.publish(%q, 1).then(() => "ok", (e) => e.code)`, anon, channel), &pubCode)
			if pubCode != float64(403) {
				t.Fatalf("anonymous publish: %v, want 403", pubCode)
			}
			b.closeAuthClient(alice)
			b.closeAuthClient(anon)
		})
	}
	if p := browser.problems(n.url("/favicon.ico")); len(p) > 0 {
		t.Fatalf("console errors: %v", p)
	}
}

// TestAuthBrowserRefusedToken: a token the node refuses (4401) sends the
// client through its backoff, not into a loop, and the token function is
// asked again: when it gives a good token the client connects. A refused
// fixed token is final over HTTP, where the client sees the 401.
func TestAuthBrowserRefusedToken(t *testing.T) {
	n, secret := startAuthNode(t, "")
	good := signAlice(t, secret, time.Hour)
	other := make([]byte, 32)
	if _, err := rand.Read(other); err != nil {
		t.Fatal(err)
	}
	bad := signAlice(t, []byte(hex.EncodeToString(other)), time.Hour)

	browser := newTab(t)
	browser.do(chromedp.Navigate(n.url("/")))
	browser.waitFor(`typeof CometGate === "function"`, `typeof CometGate`)
	browser.eval(authHarnessJS, nil)

	const minDelay = 100
	// WebSocket and SSE: the client asks to be refused in-band, and reads
	// 4401 from the close packet. poll: from the 401's body.
	for _, transport := range []string{"websocket", "sse", "poll"} {
		t.Run(transport, func(t *testing.T) {
			b := browser.in(t)
			name := "refused-" + transport
			opts := fmt.Sprintf(`{transports: [%q], minReconnectDelay: %d, maxReconnectDelay: 400}`, transport, minDelay)
			b.openAuthClient(name, opts, "secret.x", []string{bad, bad, good}, "async")
			b.waitFor(fmt.Sprintf(`A.c[%q].subscribed === 1 && A.c[%q].cg.state === "connected"`, name, name), diagOf(name))
			var calls int
			b.eval(fmt.Sprintf("A.c[%q].tokenCalls", name), &calls)
			if calls != 3 {
				t.Fatalf("token function called %d times, want 3 (two refused tokens, then the good one)", calls)
			}
			refusals := 0
			for _, s := range b.authStates(name) {
				switch s.State {
				case "closed":
					t.Fatalf("the client closed: %+v", s)
				case "disconnected":
					refusals++
					if s.Code != 4401 || s.Delay < minDelay {
						t.Fatalf("disconnected %+v, want code 4401 after a backoff delay of at least %d ms", s, minDelay)
					}
					if !strings.Contains(s.Reason, "invalid token") {
						t.Fatalf("reason %q does not say the token was refused", s.Reason)
					}
				}
			}
			if refusals != 2 {
				t.Fatalf("%d disconnects, want 2: %+v", refusals, b.authStates(name))
			}
			b.closeAuthClient(name)
		})
	}

	t.Run("fixed", func(t *testing.T) {
		b := browser.in(t)
		b.openAuthClient("fixed", `{transports: ["poll"], minReconnectDelay: 100}`, "secret.x", []string{bad}, "fixed")
		b.waitFor(`A.c["fixed"].cg.state === "closed"`, diagOf("fixed"))
		st := b.authStates("fixed")
		if last := st[len(st)-1]; last.Code != 4401 {
			t.Fatalf("closed with %+v, want 4401", last)
		}
	})
}

// TestAuthBrowserTokenExpiry: when the session's token expires the node
// closes it with 3004; the client reconnects, asks the token function
// again, and its subscription carries on in the new session.
func TestAuthBrowserTokenExpiry(t *testing.T) {
	// No leeway: the node ends a session at its token's "exp" plus the
	// leeway (30 s by default).
	n, secret := startAuthNode(t, "  leeway: 0s\n")
	// The application signs a token when the page asks for it, as a real
	// one would: the first one short, so that it expires while the page
	// watches (signed before the browser started, it could expire before
	// the first connection on a busy machine). JWT expiry has a
	// resolution of a second: the first ends in 4 to 5 s.
	issuer := tokenIssuer(t, secret, func(n string) (time.Duration, bool) {
		switch n {
		case "1":
			return 5 * time.Second, true
		case "2":
			// The client asks for a fresh token before the first one
			// expires, to refresh in-band: this one is refused, so the
			// session ends at the first token's expiry.
			return 0, false
		}
		return time.Hour, true
	})

	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/")))
	b.waitFor(`typeof CometGate === "function"`, `typeof CometGate`)
	b.eval(authHarnessJS, nil)
	b.openAuthClient("exp", `{transports: ["websocket"], minReconnectDelay: 100, maxReconnectDelay: 400}`, "secret.exp", []string{issuer.URL + "/token"}, "fetch")
	b.waitFor(`A.c["exp"].subscribed === 1 && A.c["exp"].cg.state === "connected"`, diagOf("exp"))
	publishSecret(t, n, "secret.exp", 0, 1)
	b.waitFor(`A.c["exp"].msgs.length >= 1`, diagOf("exp"))

	b.waitFor(`A.c["exp"].subscribed === 2 && A.c["exp"].cg.state === "connected"`, diagOf("exp"))
	var calls int
	b.eval(`A.c["exp"].tokenCalls`, &calls)
	if calls != 3 {
		t.Fatalf("token function called %d times, want 3 (the first token, the refused refresh, the reconnect)", calls)
	}
	var sids []string
	expired := false
	for _, s := range b.authStates("exp") {
		if s.State == "disconnected" && s.Code == 3004 {
			expired = true
		}
		if s.State == "connected" {
			sids = append(sids, s.Sid)
		}
	}
	if !expired || len(sids) != 2 || sids[0] == sids[1] {
		t.Fatalf("want a 3004 disconnect between two sessions: %+v", b.authStates("exp"))
	}
	publishSecret(t, n, "secret.exp", 1, 2)
	b.waitFor(`A.c["exp"].msgs.length >= 2`, diagOf("exp"))
	checkSecret(t, b.authMsgs("exp"), "secret.exp", 0, 2)
	b.closeAuthClient("exp")
}

// tokenIssuer is the application's token endpoint of the browser tests:
// for the n-th call of a client's token function (?n=), ttl says how long
// the token it signs for alice lives, or that it answers a string that is
// no token.
func tokenIssuer(t *testing.T, secret []byte, ttl func(n string) (time.Duration, bool)) *httptest.Server {
	t.Helper()
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		d, ok := ttl(r.URL.Query().Get("n"))
		if !ok {
			_, _ = io.WriteString(w, "not-a-token")
			return
		}
		tok, err := gateway.SignToken(secret, alice, "", "", d)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, tok)
	}))
	t.Cleanup(issuer.Close)
	return issuer
}

// TestAuthBrowserRefresh: a page whose token function hands out a fresh
// token before the first one expires keeps its WebSocket session and its
// long-poll session past that expiry: the client sends the new token
// in-band, the poll's follow-up requests carry it, and no session ends.
func TestAuthBrowserRefresh(t *testing.T) {
	n, secret := startAuthNode(t, "  leeway: 0s\n")
	// The first token of each client is short: JWT expiry has a
	// resolution of a second, so it ends 4 to 5 s after it was signed.
	var firstExp atomic.Int64
	issuer := tokenIssuer(t, secret, func(n string) (time.Duration, bool) {
		if n != "1" {
			return time.Hour, true
		}
		exp := time.Now().Add(5 * time.Second).Unix()
		for old := firstExp.Load(); exp > old && !firstExp.CompareAndSwap(old, exp); old = firstExp.Load() {
		}
		return 5 * time.Second, true
	})

	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/")))
	b.waitFor(`typeof CometGate === "function"`, `typeof CometGate`)
	b.eval(authHarnessJS, nil)
	clients := map[string]string{"ws": "websocket", "poll": "poll"}
	for name, transport := range clients {
		b.openAuthClient(name, fmt.Sprintf(`{transports: [%q], minReconnectDelay: 100, maxReconnectDelay: 400}`, transport),
			"secret."+name, []string{issuer.URL + "/token"}, "fetch")
	}
	for name, transport := range clients {
		b.waitFor(fmt.Sprintf(`A.c[%q].subscribed === 1 && A.c[%q].cg.transport === %q`, name, name, transport), diagOf(name))
	}
	// Each client refreshes in-band (its second token call) ...
	for name := range clients {
		b.waitFor(fmt.Sprintf(`A.c[%q].tokenCalls >= 2`, name), diagOf(name))
	}
	// ... and is still in its first session once the first tokens expired.
	expMs := firstExp.Load()*1000 + 1000
	b.waitFor(fmt.Sprintf(`Date.now() > %d`, expMs), `Date.now()`)
	for i, name := range []string{"ws", "poll"} {
		publishSecret(t, n, "secret."+name, i, i+1)
		b.waitFor(fmt.Sprintf(`A.c[%q].msgs.length >= 1`, name), diagOf(name))
		checkSecret(t, b.authMsgs(name), "secret."+name, i, i+1)
		var sids []string
		for _, s := range b.authStates(name) {
			if s.State == "disconnected" || s.State == "closed" {
				t.Errorf("%s: the session ended: %+v", name, b.authStates(name))
			}
			if s.State == "connected" {
				sids = append(sids, s.Sid)
			}
		}
		if len(sids) != 1 {
			t.Errorf("%s: sessions %q, want one across the refresh", name, sids)
		}
		b.closeAuthClient(name)
	}
}
