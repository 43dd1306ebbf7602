package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"

	"github.com/cometgate/cometgate/gateway"
)

// Authentication as an operator sets it up: auth.mode jwt with a shared
// secret, a namespace whose permissions are "token", tokens printed by
// "cometgate token", and browsers presenting them on every transport.

// authSecret is the test configuration's HMAC secret (32 bytes or more).
const authSecret = "cometgate-auth-test-secret-0123456789"

// authConfig writes a configuration with JWT authentication: secret.>
// needs a token's grants, demo.> is open to anyone.
func authConfig(t *testing.T) string {
	t.Helper()
	return writeAuthConfig(t, authSecret, "  issuer: test-app\n  audience: cometgate\n")
}

// writeAuthConfig writes authConfig's configuration with secret and the
// lines authExtra added to its auth section, and returns its path.
func writeAuthConfig(t *testing.T, secret, authExtra string) string {
	t.Helper()
	yaml := fmt.Sprintf(`auth:
  mode: jwt
  hmac_secret: %q
%schannels:
  - pattern: "secret.>"
    subscribe: token
    publish: token
  - pattern: "demo.>"
    subscribe: anyone
    publish: anyone
`, secret, authExtra)
	path := writeTemp(t, "auth.yaml", yaml)
	return path
}

// makeToken runs "cometgate token --config cfg ARGS" and returns the
// token it printed.
func makeToken(t *testing.T, cfg string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), append([]string{"token", "--config", cfg}, args...), nil, &out, &errOut); err != nil {
		t.Fatalf("cometgate token %v: %v\n%s", args, err, errOut.String())
	}
	tok, ok := strings.CutSuffix(out.String(), "\n")
	if !ok || tok == "" || strings.ContainsAny(tok, "\n ") {
		t.Fatalf("cometgate token printed %q, want one token and a newline", out.String())
	}
	return tok
}

// dialWSWith opens a WebSocket session at path (with its query) sending
// extra handshake headers.
func dialWSWith(t *testing.T, n *node, path string, header http.Header) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(header)}
	conn, br, _, err := d.Dial(ctx, "ws://"+n.addr+path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if br != nil {
		return &bufferedConn{Conn: conn, r: br}
	}
	return conn
}

// wsUpgrade is the header of a WebSocket handshake request, for checking
// what a node answers instead of upgrading.
func wsUpgrade() http.Header {
	return http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
}

// errorReply is a JSON refusal: {"error":…,"code":…}.
type errorReply struct {
	Error string `json:"error"`
	Code  int    `json:"code"`
}

// request makes one request and returns its status and, when the body is
// a JSON object, the refusal it holds.
func request(t *testing.T, method, url string, header http.Header, body string) (int, errorReply) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	c := newTestClient(t)
	c.Timeout = 10 * time.Second
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e errorReply
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, url, b, err)
		}
	}
	return resp.StatusCode, e
}

// wantRefusal checks a refusal's status and code.
func wantRefusal(t *testing.T, what string, status int, e errorReply, wantStatus, wantCode int) {
	t.Helper()
	if status != wantStatus || e.Code != wantCode || e.Error == "" {
		t.Errorf("%s: %d %+v, want %d with code %d", what, status, e, wantStatus, wantCode)
	}
}

// answer returns the ok or err packet answering request id.
func answer(t *testing.T, packets <-chan map[string]any, id int) map[string]any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case p, ok := <-packets:
			if !ok {
				t.Fatalf("stream ended while waiting for the answer to %d", id)
			}
			if (p["t"] == "ok" || p["t"] == "err") && p["id"] == float64(id) {
				return p
			}
		case <-timeout:
			t.Fatalf("no answer to request %d within 10s", id)
		}
	}
}

// wantAnswer sends frame (request id) and checks that the answer is typ
// ("ok", or "err" with code 403).
func wantAnswer(t *testing.T, conn net.Conn, packets <-chan map[string]any, id int, frame, typ string) {
	t.Helper()
	sendWS(t, conn, frame)
	a := answer(t, packets, id)
	if a["t"] != typ || (typ == "err" && a["code"] != 403.0) {
		t.Errorf("%s: answer %v, want %s", frame, a, typ)
	}
}

func TestAuthWebSocket(t *testing.T) {
	cfg := authConfig(t)
	// A session outlives its token by the leeway: a short one keeps the
	// expiry subtest short.
	n := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_AUTH_LEEWAY=1s")
	alice := makeToken(t, cfg, "--sub", "alice", "--subscribe", "secret.alice.>", "--publish", "secret.alice.chat")
	bob := makeToken(t, cfg, "--sub", "bob", "--subscribe", "secret.bob.>,secret.shared")

	t.Run("granted", func(t *testing.T) {
		conn := dialWSWith(t, n, "/ws?token="+alice, nil)
		packets, _ := wsPackets(t, conn)
		next(t, packets, "hello")
		wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.alice.>"}`, "ok")
		wantAnswer(t, conn, packets, 2, `{"op":"sub","id":2,"ch":"secret.bob.x"}`, "err")
		// A wildcard wider than the grant is refused too.
		wantAnswer(t, conn, packets, 3, `{"op":"sub","id":3,"ch":"secret.>"}`, "err")
		wantAnswer(t, conn, packets, 4, `{"op":"sub","id":4,"ch":"demo.x"}`, "ok")
		// Publishing needs a publish grant: alice has one for
		// secret.alice.chat only, although she may subscribe to more.
		// The confirmation and the delivery back may come in either order.
		sendWS(t, conn, `{"op":"pub","id":5,"ch":"secret.alice.chat","text":"hi"}`)
		got := map[string]bool{}
		for len(got) < 2 {
			select {
			case p := <-packets:
				switch {
				case p["id"] == 5.0:
					if p["t"] != "ok" {
						t.Fatalf("publish answer %v", p)
					}
					got["ok"] = true
				case p["t"] == "msg" && p["ch"] == "secret.alice.chat" && p["text"] == "hi":
					got["msg"] = true
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("publish on a granted channel: got %v", got)
			}
		}
		wantAnswer(t, conn, packets, 6, `{"op":"pub","id":6,"ch":"secret.alice.x","text":"no"}`, "err")
	})

	t.Run("subscribe grant without publish grant", func(t *testing.T) {
		conn := dialWSWith(t, n, "/ws?token="+bob, nil)
		packets, _ := wsPackets(t, conn)
		next(t, packets, "hello")
		wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.shared"}`, "ok")
		wantAnswer(t, conn, packets, 2, `{"op":"pub","id":2,"ch":"secret.shared","text":"no"}`, "err")
	})

	t.Run("anonymous", func(t *testing.T) {
		conn := dialWS(t, n)
		packets, _ := wsPackets(t, conn)
		next(t, packets, "hello")
		wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.alice.x"}`, "err")
		wantAnswer(t, conn, packets, 2, `{"op":"pub","id":2,"ch":"secret.alice.chat","text":"no"}`, "err")
		wantAnswer(t, conn, packets, 3, `{"op":"sub","id":3,"ch":"demo.x"}`, "ok")
		wantAnswer(t, conn, packets, 4, `{"op":"pub","id":4,"ch":"demo.x","text":"yes"}`, "ok")
	})

	t.Run("cookie", func(t *testing.T) {
		conn := dialWSWith(t, n, "/ws", http.Header{"Cookie": {"cometgate_token=" + alice}})
		packets, _ := wsPackets(t, conn)
		next(t, packets, "hello")
		wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.alice.x"}`, "ok")
	})

	t.Run("bad tokens refused before the upgrade", func(t *testing.T) {
		wrongKey, err := gateway.SignToken([]byte(strings.Repeat("w", 32)), gateway.Principal{Subject: "alice"}, "test-app", "cometgate", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		expired, err := gateway.SignToken([]byte(authSecret), gateway.Principal{Subject: "alice"}, "test-app", "cometgate", -time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		otherIssuer, err := gateway.SignToken([]byte(authSecret), gateway.Principal{Subject: "alice"}, "other-app", "cometgate", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// A token without "exp" would bind a session for ever.
		noExp, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": "alice", "iss": "test-app", "aud": "cometgate",
		}).SignedString([]byte(authSecret))
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ name, token, says string }{
			{"garbage", "not-a-token", "invalid token"},
			{"no exp", noExp, "exp"},
			{"wrong key", wrongKey, "signature"},
			{"expired", expired, "expired"},
			{"other issuer", otherIssuer, "iss"},
		} {
			status, e := request(t, http.MethodGet, n.url("/ws?token="+tc.token), wsUpgrade(), "")
			wantRefusal(t, tc.name, status, e, http.StatusUnauthorized, 4401)
			if !strings.Contains(e.Error, tc.says) {
				t.Errorf("%s: error %q does not say %q", tc.name, e.Error, tc.says)
			}
			if tc.token != "not-a-token" && strings.Contains(e.Error, tc.token) {
				t.Errorf("%s: error %q echoes the token", tc.name, e.Error)
			}
		}
		// The same through a real WebSocket client: no upgrade.
		_, _, _, err = ws.Dial(context.Background(), "ws://"+n.addr+"/ws?token="+expired)
		var se ws.StatusError
		if !errors.As(err, &se) || int(se) != http.StatusUnauthorized {
			t.Errorf("ws.Dial with an expired token: %v, want status 401", err)
		}
	})

	t.Run("token expires while connected", func(t *testing.T) {
		short := makeToken(t, cfg, "--sub", "alice", "--subscribe", "secret.alice.>", "--ttl", "2s")
		conn := dialWSWith(t, n, "/ws?token="+short, nil)
		packets, closeCode := wsPackets(t, conn)
		next(t, packets, "hello")
		wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.alice.x"}`, "ok")
		// next waits at most 10 s; the token lives at most 2 s, and the
		// session 1 s (the leeway) longer.
		expectClose(t, packets, closeCode, 3004, true)
	})
}

func TestAuthRequired(t *testing.T) {
	cfg := authConfig(t)
	n := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_AUTH_REQUIRED=true")
	alice := makeToken(t, cfg, "--sub", "alice")

	status, e := request(t, http.MethodGet, n.url("/ws"), wsUpgrade(), "")
	wantRefusal(t, "anonymous /ws", status, e, http.StatusUnauthorized, 4401)
	status, e = request(t, http.MethodGet, n.url("/sse?ch=demo.x"), nil, "")
	wantRefusal(t, "anonymous /sse", status, e, http.StatusUnauthorized, 4401)
	status, e = request(t, http.MethodGet, n.url("/poll?ch=demo.x"), nil, "")
	wantRefusal(t, "anonymous /poll", status, e, http.StatusUnauthorized, 4401)

	// A token without grants still opens a session: it reaches what
	// anyone may.
	conn := dialWSWith(t, n, "/ws?token="+alice, nil)
	packets, _ := wsPackets(t, conn)
	next(t, packets, "hello")
	wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"demo.x"}`, "ok")
	wantAnswer(t, conn, packets, 2, `{"op":"sub","id":2,"ch":"secret.alice.x"}`, "err")
}

func TestAuthSSE(t *testing.T) {
	cfg := authConfig(t)
	n := startNodeArgs(t, []string{"--config", cfg})
	alice := makeToken(t, cfg, "--sub", "alice", "--subscribe", "secret.alice.>")

	s := openSSE(t, n.url("/sse?ch=secret.alice.x&token="+alice))
	next(t, s.packets, "hello")
	if ok := next(t, s.packets, "ok"); ok["ch"] != "secret.alice.x" {
		t.Fatalf("ok %v", ok)
	}
	// The publish API is not subject to channel permissions.
	if code, body := postPublish(t, n, `{"channel":"secret.alice.x","text":"for alice"}`); code != 200 {
		t.Fatalf("publish: %d %s", code, body)
	}
	if m := next(t, s.packets, "msg"); m["text"] != "for alice" {
		t.Fatalf("msg %v", m)
	}

	// A bearer header works where the client can set one.
	s = openSSEWith(t, n.url("/sse?ch=secret.alice.y"), http.Header{"Authorization": {"Bearer " + alice}})
	next(t, s.packets, "hello")
	if ok := next(t, s.packets, "ok"); ok["ch"] != "secret.alice.y" {
		t.Fatalf("ok %v", ok)
	}

	// Anonymous: the session opens, the subscription is refused.
	s = openSSE(t, n.url("/sse?ch=secret.alice.x"))
	next(t, s.packets, "hello")
	if e := next(t, s.packets, "err"); e["code"] != 403.0 {
		t.Fatalf("err %v", e)
	}

	status, e := request(t, http.MethodGet, n.url("/sse?ch=demo.x&token=nope"), nil, "")
	wantRefusal(t, "/sse with a bad token", status, e, http.StatusUnauthorized, 4401)
}

// TestAuthLongPollingBinding: a session opened with a token answers only
// requests that present a token of the same subject.
func TestAuthLongPollingBinding(t *testing.T) {
	cfg := authConfig(t)
	n := startNodeArgs(t, []string{"--config", cfg})
	alice := makeToken(t, cfg, "--sub", "alice", "--subscribe", "secret.alice.>")
	bob := makeToken(t, cfg, "--sub", "bob", "--subscribe", "secret.>")
	c := newTestClient(t)

	open := pollOnce(t, c, n.url("/poll?ch=secret.alice.x&token="+alice))
	if len(open) < 2 || open[0].T != "hello" || open[1].T != "ok" {
		t.Fatalf("open: %+v", open)
	}
	sid, ack := open[0].SID, open[len(open)-1].Seq

	pollURL := func(token string) string {
		u := n.url(fmt.Sprintf("/poll/%s?ack=%d", sid, ack))
		if token != "" {
			u += "&token=" + token
		}
		return u
	}
	sendURL := n.url("/session/" + sid + "/send")
	for _, tc := range []struct{ name, token string }{{"bob", bob}, {"no token", ""}} {
		status, e := request(t, http.MethodGet, pollURL(tc.token), nil, "")
		wantRefusal(t, "poll with "+tc.name, status, e, http.StatusForbidden, 4003)
		var h http.Header
		if tc.token != "" {
			h = http.Header{"Authorization": {"Bearer " + tc.token}}
		}
		status, e = request(t, http.MethodPost, sendURL, h, `{"op":"sub","id":9,"ch":"secret.alice.y"}`)
		wantRefusal(t, "send with "+tc.name, status, e, http.StatusForbidden, 4003)
	}
	status, e := request(t, http.MethodGet, pollURL("garbage"), nil, "")
	wantRefusal(t, "poll with a bad token", status, e, http.StatusUnauthorized, 4401)

	// Alice's own requests work: by bearer header and by cookie.
	status, e = request(t, http.MethodPost, sendURL, http.Header{"Authorization": {"Bearer " + alice}}, `{"op":"sub","id":5,"ch":"secret.alice.y"}`)
	if status != http.StatusNoContent {
		t.Fatalf("send with alice's token: %d %+v", status, e)
	}
	status, _ = request(t, http.MethodPost, sendURL, http.Header{"Cookie": {"cometgate_token=" + alice}}, `{"op":"sub","id":6,"ch":"secret.bob.x"}`)
	if status != http.StatusNoContent {
		t.Fatalf("send with alice's cookie: %d", status)
	}
	got := map[int]string{}
	for len(got) < 2 {
		for _, p := range pollOnce(t, c, pollURL(alice)) {
			ack = max(ack, p.Seq)
			if p.T == "ok" || p.T == "err" {
				got[p.ID] = p.T
			}
		}
	}
	if got[5] != "ok" || got[6] != "err" {
		t.Fatalf("answers %v, want 5 ok and 6 err", got)
	}
	// None of the refused requests reached the session: no answer to 9.
	if _, ok := got[9]; ok {
		t.Fatalf("a refused send was applied: %v", got)
	}
}

// TestTokenCommand: what "cometgate token" prints verifies with the
// configuration's secret, issuer and audience, and carries the grants.
func TestTokenCommand(t *testing.T) {
	cfg := authConfig(t)
	tok := makeToken(t, cfg, "--sub", "alice", "--subscribe", "a.>", "--subscribe", "b.*, c", "--publish", "c", "--ttl", "90m")
	v, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: []byte(authSecret), Issuer: "test-app", Audience: "cometgate", RequireExpiry: true})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("the printed token does not verify: %v", err)
	}
	if p.Subject != "alice" || strings.Join(p.Subscribe, " ") != "a.> b.* c" || strings.Join(p.Publish, " ") != "c" {
		t.Errorf("principal %+v", p)
	}
	if left := time.Until(p.Expires); left < 88*time.Minute || left > 90*time.Minute {
		t.Errorf("expires in %s, want about 90m", left)
	}
	// Another secret does not verify it.
	other, _ := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: []byte(strings.Repeat("o", 32))})
	if _, err := other.Verify(tok); err == nil {
		t.Error("the token verifies with another secret")
	}

	// The secret may come from the environment, as for serve.
	path := writeTemp(t, "env.yaml", "auth:\n  mode: jwt\n")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"token", "--config", path, "--sub", "bob"}, []string{"COMETGATE_AUTH_HMAC_SECRET=" + authSecret}, &out, io.Discard); err != nil {
		t.Fatalf("secret from the environment: %v", err)
	}
	plain, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: []byte(authSecret)})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := plain.Verify(strings.TrimSpace(out.String())); err != nil || p.Subject != "bob" {
		t.Errorf("token signed with the secret from the environment: %+v, %v", p, err)
	}

	keyFile, _ := writeKeyPair(t)
	pubCfg := writeTemp(t, "pub.yaml", "auth:\n  mode: jwt\n  public_key_file: "+keyFile+"\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"auth none", []string{"token", "--sub", "alice"}, "auth.mode"},
		{"public key only", []string{"token", "--config", pubCfg, "--sub", "alice"}, "no HMAC secret"},
		{"no subject", []string{"token", "--config", cfg}, "usage"},
		{"argument", []string{"token", "--config", cfg, "--sub", "alice", "extra"}, "usage"},
		{"bad pattern", []string{"token", "--config", cfg, "--sub", "alice", "--subscribe", "a..b"}, `pattern "a..b"`},
		{"bad ttl", []string{"token", "--config", cfg, "--sub", "alice", "--ttl", "-1m"}, "--ttl"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), tc.args, nil, &out, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to mention %q", tc.name, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%s: printed %q on error", tc.name, out.String())
		}
	}
}

// writeKeyPair writes a fresh Ed25519 public key as PEM and returns its
// path and the private key, which signs test tokens.
func writeKeyPair(t *testing.T) (string, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := writeTemp(t, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	return path, priv
}

// TestAuthPublicKey: a node configured with a public key file accepts
// tokens the application signed with the private key (EdDSA here), and
// a key file that does not load stops start-up naming the key.
func TestAuthPublicKey(t *testing.T) {
	keyFile, priv := writeKeyPair(t)
	yaml := fmt.Sprintf(`auth:
  mode: jwt
  public_key_file: %q
channels:
  - pattern: "secret.>"
    subscribe: token
    publish: nobody
`, keyFile)
	cfg := writeTemp(t, "pub.yaml", yaml)
	n := startNodeArgs(t, []string{"--config", cfg})
	tok, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"sub": "carol", "exp": time.Now().Add(time.Hour).Unix(),
		"cometgate": map[string]any{"subscribe": []string{"secret.carol"}},
	}).SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}
	conn := dialWSWith(t, n, "/ws", http.Header{"Authorization": {"Bearer " + tok}})
	packets, _ := wsPackets(t, conn)
	next(t, packets, "hello")
	wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.carol"}`, "ok")
	wantAnswer(t, conn, packets, 2, `{"op":"sub","id":2,"ch":"secret.dave"}`, "err")
	// An HMAC token is refused by a public-key node (no algorithm confusion).
	hs, _ := gateway.SignToken([]byte(strings.Repeat("k", 32)), gateway.Principal{Subject: "carol"}, "", "", time.Hour)
	status, e := request(t, http.MethodGet, n.url("/ws?token="+hs), wsUpgrade(), "")
	wantRefusal(t, "HS256 token on a public-key node", status, e, http.StatusUnauthorized, 4401)

	notPEM := writeTemp(t, "bad.pem", "not a key")
	for _, file := range []string{notPEM, filepath.Join(t.TempDir(), "missing.pem")} {
		err := serve(context.Background(), []string{"--config", cfg},
			[]string{"COMETGATE_HTTP_LISTEN=127.0.0.1:0", "COMETGATE_AUTH_PUBLIC_KEY_FILE=" + file}, io.Discard, io.Discard, nil)
		if err == nil || !strings.Contains(err.Error(), "auth.public_key_file") {
			t.Errorf("start-up with key file %s: %v, want an error naming auth.public_key_file", filepath.Base(file), err)
		}
	}
}

// TestAuthBridgeAccess: bridge.targets[].access: token opens the target
// only for a token whose "tcp" grant names it ("cometgate token --tcp").
func TestAuthBridgeAccess(t *testing.T) {
	cfg := authConfig(t)
	base, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("bridge:\n  targets:\n    - name: echo\n      address: %q\n      allow_networks: [127.0.0.0/8]\n      access: token\n", echoServer(t))
	if err := os.WriteFile(cfg, append(base, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNodeArgs(t, []string{"--config", cfg})
	for _, tc := range []struct{ name, query string }{
		{"anonymous", ""},
		{"no tcp grant", "?token=" + makeToken(t, cfg, "--sub", "bob", "--subscribe", "secret.>")},
	} {
		status, e := request(t, http.MethodGet, n.url("/tcp/echo"+tc.query), wsUpgrade(), "")
		wantRefusal(t, tc.name, status, e, http.StatusForbidden, 4003)
	}
	conn := dialBridge(t, n, "echo?token="+makeToken(t, cfg, "--sub", "alice", "--tcp", "echo"))
	if err := wsutil.WriteClientBinary(conn, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if got := readBridge(t, conn, 2); string(got) != "hi" {
		t.Fatalf("echo %q", got)
	}
}

// TestAuthKeyRotation: a node with auth.keys accepts tokens of each key
// by their "kid" ("cometgate token --kid" for the HMAC ones), refuses a
// token whose "kid" no key has and a token without "kid", and a key file
// that does not load stops start-up naming its entry.
func TestAuthKeyRotation(t *testing.T) {
	keyFile, priv := writeKeyPair(t)
	yaml := fmt.Sprintf(`auth:
  mode: jwt
  keys:
    - id: old
      hmac_secret: %q
    - id: new
      hmac_secret: %q
    - id: app
      public_key_file: %q
      algorithm: EdDSA
channels:
  - pattern: "secret.>"
    subscribe: token
    publish: nobody
`, authSecret, strings.Repeat("n", 32), keyFile)
	cfg := writeTemp(t, "keys.yaml", yaml)
	n := startNodeArgs(t, []string{"--config", cfg})
	ed := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"sub": "carol", "exp": time.Now().Add(time.Hour).Unix(),
		"cometgate": map[string]any{"subscribe": []string{"secret.carol"}},
	})
	ed.Header["kid"] = "app"
	edTok, err := ed.SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{
		"old": makeToken(t, cfg, "--sub", "carol", "--subscribe", "secret.carol", "--kid", "old"),
		"new": makeToken(t, cfg, "--sub", "carol", "--subscribe", "secret.carol", "--kid", "new"),
		"app": edTok,
	} {
		conn := dialWSWith(t, n, "/ws", http.Header{"Authorization": {"Bearer " + tok}})
		packets, _ := wsPackets(t, conn)
		next(t, packets, "hello")
		wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.carol"}`, "ok")
		_ = conn.Close()
		t.Logf("key %s: accepted", name)
	}
	p := gateway.Principal{Subject: "carol"}
	retired, _ := gateway.SignTokenKID([]byte(strings.Repeat("r", 32)), "retired", p, "", "", time.Hour)
	noKID, _ := gateway.SignToken([]byte(authSecret), p, "", "", time.Hour)
	for _, tt := range []struct{ name, token, msg string }{
		{"unknown kid", retired, `no key has the token's \"kid\" (\"retired\")`},
		{"no kid", noKID, `the token has no \"kid\" and 3 keys are configured`},
	} {
		status, e := request(t, http.MethodGet, n.url("/ws?token="+tt.token), wsUpgrade(), "")
		wantRefusal(t, tt.name, status, e, http.StatusUnauthorized, 4401)
		if !strings.Contains(e.Error, strings.ReplaceAll(tt.msg, `\"`, `"`)) {
			t.Errorf("%s: refusal %q, want it to say %s", tt.name, e.Error, tt.msg)
		}
	}
	// The application signs with the public key's private half: the
	// command has no secret for it.
	err = run(context.Background(), []string{"token", "--config", cfg, "--sub", "x", "--kid", "app"}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `auth.keys has no entry "app" with an hmac_secret`) {
		t.Errorf("token --kid app: %v", err)
	}
	bad := writeTemp(t, "bad-keys.yaml", strings.Replace(yaml, keyFile, filepath.Join(t.TempDir(), "missing.pem"), 1))
	err = serve(context.Background(), []string{"--config", bad}, []string{"COMETGATE_HTTP_LISTEN=127.0.0.1:0"}, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "auth.keys[2].public_key_file") {
		t.Errorf("start-up with a missing key file: %v, want an error naming auth.keys[2].public_key_file", err)
	}
}

// TestAuthJWKS: a node with auth.jwks.url verifies tokens with the keys a
// real server publishes, and, when the set cannot be fetched, refuses
// them saying so (fail closed).
func TestAuthJWKS(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"idp-1","use":"sig","x":%q}]}`, base64.RawURLEncoding.EncodeToString(pub))
	}))
	defer jwks.Close()
	yaml := fmt.Sprintf(`auth:
  mode: jwt
  jwks:
    url: %q
channels:
  - pattern: "secret.>"
    subscribe: token
    publish: nobody
`, jwks.URL+"/jwks.json")
	cfg := writeTemp(t, "jwks.yaml", yaml)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"sub": "carol", "exp": time.Now().Add(time.Hour).Unix(),
		"cometgate": map[string]any{"subscribe": []string{"secret.carol"}},
	})
	tok.Header["kid"] = "idp-1"
	signed, err := tok.SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}

	n := startNodeArgs(t, []string{"--config", cfg})
	conn := dialWSWith(t, n, "/ws", http.Header{"Authorization": {"Bearer " + signed}})
	packets, _ := wsPackets(t, conn)
	next(t, packets, "hello")
	wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.carol"}`, "ok")

	// A node that cannot fetch the set refuses every token, with why.
	failing.Store(true)
	down := startNodeArgs(t, []string{"--config", cfg})
	status, e := request(t, http.MethodGet, down.url("/ws?token="+signed), wsUpgrade(), "")
	wantRefusal(t, "JWKS down", status, e, http.StatusUnauthorized, 4401)
	if !strings.Contains(e.Error, "could not be fetched: status 503") {
		t.Errorf("refusal %q, want it to say the key set could not be fetched", e.Error)
	}
}

// TestAuthWebhookConfig: auth.mode webhook from a config file: the node
// asks the application's URL (a real server) with the browser's cookie,
// and the answer's grants apply.
func TestAuthWebhookConfig(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := r.Cookie("shop"); err != nil || c.Value != "carol-session" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"sub":"carol","cometgate":{"subscribe":["secret.carol"]}}`)
	}))
	defer app.Close()
	cfg := writeTemp(t, "webhook.yaml", fmt.Sprintf(`auth:
  mode: webhook
  required: true
  webhook:
    url: %q
channels:
  - pattern: "secret.>"
    subscribe: token
    publish: nobody
`, app.URL))
	n := startNodeArgs(t, []string{"--config", cfg})
	conn := dialWSWith(t, n, "/ws", http.Header{"Cookie": {"shop=carol-session"}})
	packets, _ := wsPackets(t, conn)
	next(t, packets, "hello")
	wantAnswer(t, conn, packets, 1, `{"op":"sub","id":1,"ch":"secret.carol"}`, "ok")
	wantAnswer(t, conn, packets, 2, `{"op":"sub","id":2,"ch":"secret.dave"}`, "err")
	status, e := request(t, http.MethodGet, n.url("/ws"), wsUpgrade(), "")
	wantRefusal(t, "no cookie", status, e, http.StatusUnauthorized, 4401)
	if !strings.Contains(e.Error, "the application refused (status 401)") {
		t.Errorf("refusal %q", e.Error)
	}
}
