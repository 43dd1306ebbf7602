package transports

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// authSecret signs the tokens of these tests.
var authSecret = []byte("0123456789abcdef0123456789abcdef")

// startAuthNode is a node that verifies tokens: "secret.>" needs a token
// that grants it, "demo.>" is open to anyone.
func startAuthNode(t *testing.T, require bool) *testNode {
	t.Helper()
	v, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: authSecret})
	if err != nil {
		t.Fatal(err)
	}
	return startNode(t, func(c *gateway.Config) {
		c.Rules = gateway.Rules{
			{Pattern: "secret.>", Subscribe: gateway.Token, Publish: gateway.Token},
			{Pattern: "demo.>", Subscribe: gateway.Anyone, Publish: gateway.Anyone},
		}
	}, func(o *Options) {
		o.Tokens = v
		o.RequireToken = require
	})
}

func token(t *testing.T, sub string, grants ...string) string {
	t.Helper()
	tok, err := gateway.SignToken(authSecret, gateway.Principal{Subject: sub, Subscribe: grants, Publish: grants}, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dialWSToken opens a WebSocket session with tok in the query and reads
// its hello.
func dialWSToken(t *testing.T, n *testNode, tok string) *wsClient {
	t.Helper()
	conn, br, resp := wsUpgrade(t, n, "/ws?token="+url.QueryEscape(tok), nil, nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade with a token: %d", resp.StatusCode)
	}
	c := &wsClient{t: t, n: n, conn: conn, br: br}
	c.next() // hello
	return c
}

// TestAuthWebSocket: a token in the query grants its channels; without
// one a Token namespace is closed; a bad token is refused before the
// upgrade.
func TestAuthWebSocket(t *testing.T) {
	noLeaks(t)
	n := startAuthNode(t, false)
	alice := token(t, "alice", "secret.a")

	c := dialWSToken(t, n, alice)
	c.send(textFrame(`{"op":"sub","id":1,"ch":"secret.a"}`), textFrame(`{"op":"sub","id":2,"ch":"secret.b"}`))
	if p := c.answer(1); p.T != gateway.TypeOK {
		t.Errorf("a granted channel: %+v", p)
	}
	if p := c.answer(2); p.T != gateway.TypeErr || p.Code != 403 {
		t.Errorf("a channel the token does not grant: %+v", p)
	}

	anon := dialWS(t, n)
	anon.send(textFrame(`{"op":"sub","id":1,"ch":"secret.a"}`), textFrame(`{"op":"sub","id":2,"ch":"demo.a"}`))
	if p := anon.answer(1); p.T != gateway.TypeErr || p.Code != 403 {
		t.Errorf("anonymous on a token namespace: %+v", p)
	}
	if p := anon.answer(2); p.T != gateway.TypeOK {
		t.Errorf("anonymous on an open namespace: %+v", p)
	}

	bad := alice[:len(alice)-2] + "xx" // the signature no longer matches
	_, _, resp := wsUpgrade(t, n, "/ws?token="+url.QueryEscape(bad), nil, nil)
	var e errorBody
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusUnauthorized || e.Code != 4401 || !strings.HasPrefix(e.Error, "invalid token") || strings.Contains(e.Error, bad) {
		t.Errorf("a bad token: %d %+v", resp.StatusCode, e)
	}
}

// TestAuthRequired: with RequireToken an anonymous session is refused,
// in each transport's own way.
func TestAuthRequired(t *testing.T) {
	noLeaks(t)
	n := startAuthNode(t, true)
	_, _, resp := wsUpgrade(t, n, "/ws", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous WebSocket: %d", resp.StatusCode)
	}
	status, body := httpGet(t, n.client, n.url("/poll"))
	expectJSONError(t, status, body, http.StatusUnauthorized, 4401)
	status, body = httpGet(t, n.client, n.url("/jsonp?cb=cb"))
	if status != http.StatusOK || !strings.Contains(string(body), `"code":4401`) {
		t.Errorf("anonymous JSONP: %d %s", status, body)
	}
	// The cookie carries a token too.
	req, _ := http.NewRequest(http.MethodGet, n.url("/poll?ch=secret.x"), nil)
	req.AddCookie(&http.Cookie{Name: "cometgate_token", Value: token(t, "carol", "secret.>")})
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a token in the cookie: %d", resp.StatusCode)
	}
	waitFor(t, "the poll session to expire", func() bool { return n.gw.SessionCount() == 0 })
}

// TestAuthBindsSessions: a session opened with alice's token answers its
// follow-up requests only to alice: not to bob, not to a request without
// a token, on every request-per-poll path.
func TestAuthBindsSessions(t *testing.T) {
	noLeaks(t)
	n := startAuthNode(t, false)
	alice, bob := token(t, "alice", "secret.>"), token(t, "bob", "secret.>")
	q := func(tok string) string {
		if tok == "" {
			return ""
		}
		return "&token=" + url.QueryEscape(tok)
	}
	status, body := httpGet(t, n.client, n.url("/poll?ch=secret.x"+q(alice)))
	if status != http.StatusOK {
		t.Fatalf("open: %d %s", status, body)
	}
	var pkts []packet
	if err := json.Unmarshal(body, &pkts); err != nil || len(pkts) == 0 || pkts[0].SID == "" {
		t.Fatalf("open: %s", body)
	}
	sid := pkts[0].SID
	for _, tok := range []string{bob, ""} {
		status, body := httpGet(t, n.client, n.url("/poll/"+sid+"?ack=1"+q(tok)))
		expectJSONError(t, status, body, http.StatusForbidden, 4003)
		resp, err := n.client.Post(n.url("/session/"+sid+"/send?x=1"+q(tok)), "text/plain", strings.NewReader(`{"op":"ping","id":1}`))
		if err != nil {
			t.Fatal(err)
		}
		var e errorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || e.Code != 4003 {
			t.Errorf("send with another principal: %d %+v", resp.StatusCode, e)
		}
		status, body = httpGet(t, n.client, n.url("/jsonp_send/"+sid+"?cb=cb&d="+url.QueryEscape(`{"op":"ping","id":2}`)+q(tok)))
		if status != http.StatusOK || !strings.Contains(string(body), `"code":4003`) {
			t.Errorf("jsonp_send with another principal: %d %s", status, body)
		}
	}
	// Alice herself goes on (Authorization header this time).
	req, _ := http.NewRequest(http.MethodPost, n.url("/session/"+sid+"/send"), strings.NewReader(`{"op":"ping","id":3}`))
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("send by the owner: %d", resp.StatusCode)
	}
	status, body = httpGet(t, n.client, n.url("/poll/"+sid+"?ack=1"+q(alice)))
	if status != http.StatusOK || !strings.Contains(string(body), `"id":3`) {
		t.Errorf("poll by the owner: %d %s", status, body)
	}
}

// TestAuthSockJS: SockJS sessions take the token too, and a SockJS
// session bound to alice ignores bob's requests.
func TestAuthSockJS(t *testing.T) {
	noLeaks(t)
	v, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: authSecret})
	if err != nil {
		t.Fatal(err)
	}
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/pubsub", Websocket: true}}, func(c *gateway.Config, o *Options) {
		c.Rules = gateway.Rules{{Pattern: "secret.>", Subscribe: gateway.Token, Publish: gateway.Token}}
		o.Tokens = v
		o.RequireToken = true
	})
	alice, bob := token(t, "alice", "secret.>"), token(t, "bob", "secret.>")
	base := n.url("/pubsub/000/" + sjsSID())
	if r := n.do(t, http.MethodPost, base+"/xhr", ""); !strings.Contains(r.body, "4401") {
		t.Errorf("an anonymous SockJS session: %q", r.body)
	}
	url := n.url("/pubsub/000/"+sjsSID()) + "/xhr?token=" + alice
	if r := n.do(t, http.MethodPost, url, ""); r.body != "o\n" {
		t.Fatalf("open with a token: %q", r.body)
	}
	other := strings.Replace(url, alice, bob, 1)
	if r := n.do(t, http.MethodPost, other, ""); !strings.Contains(r.body, "4003") {
		t.Errorf("bob polling alice's session: %q", r.body)
	}
	send := strings.Replace(other, "/xhr?", "/xhr_send?", 1)
	if r := n.do(t, http.MethodPost, send, `["x"]`); r.status != http.StatusNotFound {
		t.Errorf("bob sending to alice's session: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodPost, url, ""); !strings.Contains(r.body, "hello") {
		t.Errorf("alice's next poll: %q", r.body)
	}
}

// TestAuthBridgeGrant: a bridge target with RequireGrant opens only for a
// session whose token names it in its "tcp" grant, natively and over
// SockJS; other targets stay open to anyone.
func TestAuthBridgeGrant(t *testing.T) {
	noLeaks(t)
	v, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: authSecret})
	if err != nil {
		t.Fatal(err)
	}
	echo := startTarget(t, echoServe)
	n := startBridgeNode(t, []BridgeTarget{
		{Name: "guarded", Address: echo.addr(), AllowNetworks: bridgeLoopback, RequireGrant: true},
		{Name: "open", Address: echo.addr(), AllowNetworks: bridgeLoopback},
	}, nil, func(o *Options) {
		o.Tokens = v
		o.SockJS = []SockJSEndpoint{{Prefix: "/guarded-sjs", Mode: SockJSTCP, Target: "guarded"}}
	})
	grant := func(sub string, targets ...string) string {
		tok, err := gateway.SignToken(authSecret, gateway.Principal{Subject: sub, TCP: targets}, "", "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct{ name, query string }{
		{"anonymous", ""},
		{"a token without the grant", "?token=" + grant("bob", "open")},
	} {
		status, e, body := bridgeRefusal(t, n, "guarded"+tc.query, nil)
		if status != http.StatusForbidden || e.Code != 4003 || e.Error != "the token does not grant this target" {
			t.Errorf("%s: %d %s", tc.name, status, body)
		}
	}
	waitFor(t, "the refused sessions to end", func() bool { return n.gw.SessionCount() == 0 })
	c := dialBridge(t, n, "guarded?token="+url.QueryEscape(grant("alice", "guarded")))
	c.send(binFrame([]byte("g")))
	if got, _ := c.read(1); string(got) != "g" {
		t.Fatalf("echo %q", got)
	}
	o := dialBridge(t, n, "open")
	o.send(binFrame([]byte("o")))
	if got, _ := o.read(1); string(got) != "o" {
		t.Fatalf("echo %q", got)
	}
	// SockJS: the session opens (SockJS has no refusal before "o") and
	// closes with the reason.
	resp, err := n.client.Post(n.url("/guarded-sjs/000/"+sjsSID()+"/xhr"), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	var frames strings.Builder
	for i := 0; i < 3 && !strings.Contains(frames.String(), "c["); i++ {
		b := make([]byte, 512)
		k, _ := resp.Body.Read(b)
		frames.Write(b[:k])
		if !strings.Contains(frames.String(), "c[") {
			resp.Body.Close()
			resp, err = n.client.Post(resp.Request.URL.String(), "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	resp.Body.Close()
	if !strings.Contains(frames.String(), `c[4003,"the token does not grant this target"]`) {
		t.Errorf("anonymous SockJS session on a guarded target: %q", frames.String())
	}
}

// TestAuthAfterRevocation: a revocation ends alice's session, and her
// token from before it is then refused in every way a transport answers
// (401 with code 4010 before an upgrade, a close packet in a callback, an
// err packet for a refresh frame); a token issued after it is admitted.
func TestAuthAfterRevocation(t *testing.T) {
	noLeaks(t)
	n := startAuthNode(t, false)
	if err := n.gw.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := token(t, "alice", "secret.a")
	c := dialWSToken(t, n, old)
	if err := n.gw.Revoke(context.Background(), "alice", "banned"); err != nil {
		t.Fatal(err)
	}
	revokedBy := time.Now()
	const reason = "access revoked: banned"
	if p := c.next(); p.T != gateway.TypeClose || p.Code != 4010 || p.Reason != reason || p.Reconnect {
		t.Errorf("alice's session: %+v, want a close with 4010", p)
	}

	_, _, resp := wsUpgrade(t, n, "/ws?token="+url.QueryEscape(old), nil, nil)
	var e errorBody
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusUnauthorized || e.Code != 4010 || e.Error != reason {
		t.Errorf("the token from before the revocation: %d %+v", resp.StatusCode, e)
	}
	status, body := httpGet(t, n.client, n.url("/jsonp?cb=cb&token="+url.QueryEscape(old)))
	if status != http.StatusOK || !strings.Contains(string(body), `"code":4010`) || !strings.Contains(string(body), reason) {
		t.Errorf("JSONP with the token from before the revocation: %d %s", status, body)
	}

	// "iat" counts whole seconds: a token of the next second on is
	// issued after the revocation.
	time.Sleep(time.Until(revokedBy.Truncate(time.Second).Add(time.Second)))
	c = dialWSToken(t, n, token(t, "alice", "secret.a"))
	c.send(textFrame(`{"op":"refresh","id":1,"token":"` + old + `"}`))
	if p := c.answer(1); p.T != gateway.TypeErr || p.Code != 401 || !strings.Contains(p.Error, reason) {
		t.Errorf("a refresh with the token from before the revocation: %+v", p)
	}
	c.send(textFrame(`{"op":"refresh","id":2,"token":"`+token(t, "alice", "secret.a")+`"}`), textFrame(`{"op":"sub","id":3,"ch":"secret.a"}`))
	if p := c.answer(2); p.T != gateway.TypeOK {
		t.Errorf("a refresh with a token issued after the revocation: %+v", p)
	}
	if p := c.answer(3); p.T != gateway.TypeOK {
		t.Errorf("subscribing after the refresh: %+v", p)
	}
}
