package transports

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// appServer is the application's auth webhook, a real HTTP server: it
// knows the browser by its "app_session" cookie, and the test sets what
// it answers.
type appServer struct {
	*httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	seen  http.Header // the last call's headers
	reply func(w http.ResponseWriter, session string)
}

func newAppServer(t *testing.T) *appServer {
	t.Helper()
	a := &appServer{}
	a.reply = func(w http.ResponseWriter, session string) {
		if session != "s-alice" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, `{"sub":"alice","exp":%d,"cometgate":{"subscribe":["secret.a"],"publish":["secret.a"]}}`, time.Now().Add(time.Hour).Unix())
	}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.calls.Add(1)
		a.mu.Lock()
		a.seen = r.Header.Clone()
		reply := a.reply
		a.mu.Unlock()
		session := ""
		if c, err := r.Cookie("app_session"); err == nil {
			session = c.Value
		}
		reply(w, session)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *appServer) setReply(f func(w http.ResponseWriter, session string)) {
	a.mu.Lock()
	a.reply = f
	a.mu.Unlock()
}

func startWebhookNode(t *testing.T, app *appServer, require bool, ttl time.Duration) *testNode {
	t.Helper()
	return startNode(t, func(c *gateway.Config) {
		c.Rules = gateway.Rules{
			{Pattern: "secret.>", Subscribe: gateway.Token, Publish: gateway.Token},
			{Pattern: "demo.>", Subscribe: gateway.Anyone, Publish: gateway.Anyone},
		}
	}, func(o *Options) {
		o.Webhook = &WebhookOptions{URL: app.URL + "/cometgate-auth", Headers: []string{"X-App-Tenant"}, Timeout: 500 * time.Millisecond, CacheTTL: ttl}
		o.RequireToken = require
	})
}

// pollAs opens a long-poll session with the cookie (and tenant header)
// and returns the status and body.
func pollAs(t *testing.T, n *testNode, session string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, n.url("/poll?ch=secret.a"), nil)
	if session != "" {
		req.AddCookie(&http.Cookie{Name: "app_session", Value: session})
	}
	req.Header.Set("X-App-Tenant", "shop")
	req.Header.Set("X-Not-Forwarded", "x")
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestAuthWebhook: the application's answer to the browser's cookies is
// the session's principal (its grants apply), answers are cached for the
// TTL, the application's refusal leaves the browser anonymous (or refused
// when a principal is required), and every failure refuses with the
// reason (fail closed).
func TestAuthWebhook(t *testing.T) {
	noLeaks(t)
	app := newAppServer(t)
	n := startWebhookNode(t, app, false, time.Hour)

	status, body := pollAs(t, n, "s-alice")
	if status != http.StatusOK || !strings.Contains(string(body), `"ch":"secret.a"`) || strings.Contains(string(body), `"t":"err"`) {
		t.Fatalf("alice's cookie: %d %s", status, body)
	}
	app.mu.Lock()
	seen := app.seen
	app.mu.Unlock()
	if seen.Get("Cookie") != "app_session=s-alice" || seen.Get("X-App-Tenant") != "shop" || seen.Get("X-Not-Forwarded") != "" {
		t.Errorf("the webhook got headers %v: want the cookie and X-App-Tenant only", seen)
	}
	// Cached: the same cookie costs no second call.
	pollAs(t, n, "s-alice")
	if c := app.calls.Load(); c != 1 {
		t.Errorf("%d webhook calls for two requests with one cookie, want 1", c)
	}
	// Unknown to the application: anonymous, refused the token channel.
	status, body = pollAs(t, n, "s-mallory")
	if status != http.StatusOK || !strings.Contains(string(body), `"code":403`) {
		t.Errorf("an unknown browser, principal not required: %d %s", status, body)
	}

	// Required: the application's refusal and each failure refuse, saying why.
	req := startWebhookNode(t, app, true, time.Nanosecond)
	status, body = pollAs(t, req, "s-mallory")
	expectJSONError(t, status, body, http.StatusUnauthorized, 4401)
	if !strings.Contains(string(body), "the application refused (status 401)") {
		t.Errorf("refusal %s", body)
	}
	failures := []struct {
		name  string
		reply func(w http.ResponseWriter, session string)
		msg   string
	}{
		{"status 500", func(w http.ResponseWriter, _ string) { w.WriteHeader(http.StatusInternalServerError) }, "auth webhook: status 500"},
		{"not JSON", func(w http.ResponseWriter, _ string) { fmt.Fprint(w, "<html>login</html>") }, "auth webhook: bad answer"},
		{"no sub", func(w http.ResponseWriter, _ string) { fmt.Fprint(w, `{"cometgate":{"subscribe":[">"]}}`) }, `the answer has no \"sub\"`},
		{"bad grant", func(w http.ResponseWriter, _ string) { fmt.Fprint(w, `{"sub":"a","cometgate":{"subscribe":["a..b"]}}`) }, `the answer grant \"a..b\"`},
		{"expired", func(w http.ResponseWriter, _ string) { fmt.Fprint(w, `{"sub":"a","exp":1}`) }, `the answer's \"exp\" is past`},
		{"timeout", func(w http.ResponseWriter, _ string) { time.Sleep(time.Second) }, "no answer within 500ms"},
	}
	for _, f := range failures {
		app.setReply(f.reply)
		status, body := pollAs(t, req, "s-alice")
		expectJSONError(t, status, body, http.StatusUnauthorized, 4401)
		if !strings.Contains(string(body), f.msg) {
			t.Errorf("%s: refusal %s, want it to say %s", f.name, body, f.msg)
		}
	}
	// Callback transports do not ask the webhook: the cookies of a script
	// load do not show which site made it.
	calls := app.calls.Load()
	jreq, _ := http.NewRequest(http.MethodGet, req.url("/jsonp?cb=cb&ch=secret.a"), nil)
	jreq.AddCookie(&http.Cookie{Name: "app_session", Value: "s-alice"})
	resp, err := req.client.Do(jreq)
	if err != nil {
		t.Fatal(err)
	}
	jbody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(jbody), "do not authenticate through the auth webhook") || app.calls.Load() != calls {
		t.Errorf("JSONP with the cookie: %s (webhook calls %d → %d)", jbody, calls, app.calls.Load())
	}
	waitFor(t, "the poll sessions to expire", func() bool { return n.gw.SessionCount() == 0 && req.gw.SessionCount() == 0 })
}

// TestAuthWebhookAfterRevocation: a revocation makes the node ask the
// application again instead of using the answer it cached before; the
// application decides anew (a fresh answer is issued after the
// revocation, so it admits).
func TestAuthWebhookAfterRevocation(t *testing.T) {
	noLeaks(t)
	app := newAppServer(t)
	n := startWebhookNode(t, app, true, time.Hour)
	if err := n.gw.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	if status, body := pollAs(t, n, "s-alice"); status != http.StatusOK {
		t.Fatalf("alice's cookie: %d %s", status, body)
	}
	if err := n.gw.Revoke(context.Background(), "alice", "logged out everywhere"); err != nil {
		t.Fatal(err)
	}
	cached := &gateway.Principal{Subject: "alice", IssuedAt: time.Now().Add(-time.Millisecond)}
	waitFor(t, "the revocation to be held", func() bool { _, revoked := n.gw.Revoked(cached); return revoked })
	// The application still knows her: asked again, it admits.
	if status, body := pollAs(t, n, "s-alice"); status != http.StatusOK || strings.Contains(string(body), `"t":"err"`) {
		t.Errorf("alice's cookie after the revocation: %d %s", status, body)
	}
	if c := app.calls.Load(); c != 2 {
		t.Errorf("%d webhook calls, want 2: the answer cached before the revocation must not be used", c)
	}
	// The fresh answer is cached in turn.
	pollAs(t, n, "s-alice")
	if c := app.calls.Load(); c != 2 {
		t.Errorf("%d webhook calls after a third request, want 2", c)
	}
	// The application no longer knows her, and she is revoked again:
	// refused (a principal is required).
	app.setReply(func(w http.ResponseWriter, _ string) { w.WriteHeader(http.StatusUnauthorized) })
	// Issued after the first revocation, before the second: refused once
	// the second is held. (A time read at each check would be after it.)
	between := &gateway.Principal{Subject: "alice", IssuedAt: time.Now()}
	if err := n.gw.Revoke(context.Background(), "alice", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second revocation to be held", func() bool {
		_, revoked := n.gw.Revoked(between)
		return revoked
	})
	status, body := pollAs(t, n, "s-alice")
	expectJSONError(t, status, body, http.StatusUnauthorized, 4401)
	waitFor(t, "the poll sessions to expire", func() bool { return n.gw.SessionCount() == 0 })
}
