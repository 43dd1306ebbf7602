package transports

// The attack table: one row per attack a hostile page, client or network
// peer can try on one node, each asserting the exact refusal (HTTP status
// and JSON error code, callback or SockJS frame, WebSocket close code)
// and, after every row, that a victim on the same node was not touched:
// her WebSocket and long-poll sessions still receive every message in
// order. Attacks that need several nodes or a real browser are in
// cmd/cometgate/attacks_test.go.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/gateway"
)

// attackKey signs the tokens of the attack table's application (RS256):
// the node holds only the public half.
var attackKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func attackPublicPEM(t *testing.T, k *rsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// attackClaims are a valid token's claims for sub, granting patterns;
// mod changes or (with a nil value) removes claims.
func attackClaims(sub string, mod map[string]any, patterns ...string) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": sub, "iss": "app", "aud": "cometgate", "exp": time.Now().Add(time.Hour).Unix(),
		"cometgate": map[string]any{"subscribe": patterns, "publish": patterns},
	}
	for k, v := range mod {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// attackToken signs claims with m and key.
func attackToken(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// victimChannel is where the victim's messages go; only her token grants
// it.
const victimChannel = "secret.alice.inbox"

// attackEnv is a node under attack and its victim.
type attackEnv struct {
	n      *testNode
	alice  string // the victim's token
	mallry string // the attacker's own valid token (another subject)
	wsSID  string // the victim's WebSocket session
	sid    string // the victim's long-poll session
	feeds  []*victimFeed
	next   int // the next message number
	base   string
}

// startAttackNode starts the node the rows attack: RS256 tokens (issuer
// app, audience cometgate) where "secret.>" needs a grant and the rest
// is open; a SockJS pub/sub endpoint; the publish API with a key and
// loopback allowed (the quick start); loopback host names only. cfg and
// opts adjust it further. The victim, alice, holds a WebSocket and a
// long-poll session on victimChannel.
func startAttackNode(t *testing.T, adjust func(*gateway.Config, *Options)) *attackEnv {
	t.Helper()
	v, err := gateway.NewTokenVerifier(gateway.TokenOptions{
		PublicKeyPEM: attackPublicPEM(t, attackKey()), Issuer: "app", Audience: "cometgate", RequireExpiry: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	n := startNode(t, func(c *gateway.Config) {
		c.Rules = gateway.Rules{
			{Pattern: "secret.>", Subscribe: gateway.Token, Publish: gateway.Token},
			{Pattern: ">", Subscribe: gateway.Anyone, Publish: gateway.Anyone},
		}
		c.MaxFrameBytes = 4096
		c.MaxSubscriptions = 8
		if adjust != nil { // its Options part is applied below
			adjust(c, &Options{})
		}
	}, func(o *Options) {
		o.Tokens = v
		o.SockJS = []SockJSEndpoint{{Prefix: "/sockjs", Mode: SockJSPubSub, Websocket: true}}
		o.AllowLoopback = true
		o.APIKeys = []string{"server-k3y"}
		o.AllowedHosts = []string{"127.0.0.1", "localhost", "::1"}
		o.MaxBodyBytes = 8192
		// A target the cross-site rows ask for; never dialled.
		o.Bridge = []BridgeTarget{{Name: "echo", Address: "127.0.0.1:9", AllowNetworks: bridgeLoopback}}
		if adjust != nil {
			adjust(&gateway.Config{}, o) // its Config part was applied above

		}
	})
	e := &attackEnv{
		n:      n,
		alice:  attackToken(t, jwt.SigningMethodRS256, attackKey(), attackClaims("alice", nil, "secret.alice.>")),
		mallry: attackToken(t, jwt.SigningMethodRS256, attackKey(), attackClaims("mallory", nil, "secret.mallory.>")),
		base:   n.url(""),
	}
	c := dialWSWith(t, n, http.Header{"Authorization": {"Bearer " + e.alice}}, nil)
	c.sub(1, victimChannel)
	e.wsSID = c.sid
	pc := newPollClient(t, n, false)
	pc.token = e.alice
	subscribed(t, pollAdapter{pc}, victimChannel)
	e.sid = pc.sid
	e.feeds = []*victimFeed{wsFeed(t, c), pollFeed(t, pc)}
	e.intact(t)
	return e
}

// victimFeed carries what one of the victim's sessions receives, read by
// a goroutine that keeps the session alive between rows (it answers
// pings, holds a long-poll) and checks that seq numbers follow each
// other. The test's cleanup stops it.
type victimFeed struct {
	name string
	pkts chan packet // messages, and what ends or breaks the session (T "broken")
	stop chan struct{}
	done chan struct{}
	seq  uint64
}

func newVictimFeed(t *testing.T, name string, seq uint64, end func()) *victimFeed {
	f := &victimFeed{name: name, pkts: make(chan packet, 1024), stop: make(chan struct{}), done: make(chan struct{}), seq: seq}
	t.Cleanup(func() {
		close(f.stop)
		end()
		<-f.done
	})
	return f
}

// put hands p on unless it is transport chatter; false once stopped.
func (f *victimFeed) put(p packet) bool {
	if p.Seq != nil {
		if p.seq() != f.seq+1 {
			p = packet{T: "broken", Error: fmt.Sprintf("seq %d after %d", p.seq(), f.seq)}
		}
		f.seq = p.seq()
	}
	if p.T != gateway.TypeMsg && p.T != gateway.TypeErr && p.T != gateway.TypeClose && p.T != "broken" {
		return true
	}
	select {
	case f.pkts <- p:
		return p.T == gateway.TypeMsg
	case <-f.stop:
		return false
	}
}

func (f *victimFeed) fail(err error) { f.put(packet{T: "broken", Error: err.Error()}) }

// wsFeed reads the victim's WebSocket c.
func wsFeed(t *testing.T, c *wsClient) *victimFeed {
	_ = c.conn.SetDeadline(time.Time{})
	f := newVictimFeed(t, "WebSocket", c.seq, func() { _ = c.conn.Close() })
	go func() {
		defer close(f.done)
		for {
			h, err := ws.ReadHeader(c.br)
			if err != nil {
				f.fail(err)
				return
			}
			p := make([]byte, h.Length)
			if _, err := io.ReadFull(c.br, p); err != nil {
				f.fail(err)
				return
			}
			switch h.OpCode {
			case ws.OpPing:
				if _, err := c.conn.Write(wsFrame{fin: true, op: opPong, payload: p}.bytes()); err != nil {
					f.fail(err)
					return
				}
			case ws.OpText:
				var pkt packet
				if err := json.Unmarshal(p, &pkt); err != nil {
					f.fail(err)
					return
				}
				if !f.put(pkt) {
					return
				}
			case ws.OpClose:
				f.fail(fmt.Errorf("close frame %q", p))
				return
			}
		}
	}()
	return f
}

// pollFeed long-polls the victim's session c, one request after another.
func pollFeed(t *testing.T, c *pollClient) *victimFeed {
	ctx, cancel := context.WithCancel(context.Background())
	f := newVictimFeed(t, "long-poll", c.acked, cancel)
	go func() {
		defer close(f.done)
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.n.url(c.pollURL(f.seq)), nil)
			resp, err := c.n.client.Do(req)
			if err != nil {
				if ctx.Err() == nil {
					f.fail(err)
				}
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			var pkts []packet
			if err == nil && resp.StatusCode == http.StatusOK {
				err = json.Unmarshal(body, &pkts)
			} else if err == nil {
				err = fmt.Errorf("poll: %d %s", resp.StatusCode, body)
			}
			if err != nil {
				if ctx.Err() == nil {
					f.fail(err)
				}
				return
			}
			for _, p := range pkts {
				if !f.put(p) && p.T != gateway.TypeMsg {
					return
				}
			}
		}
	}()
	return f
}

// intact publishes the victim's next message and checks that both of her
// sessions receive it, and nothing else: every message in order, no
// error, no close.
func (e *attackEnv) intact(t *testing.T) {
	t.Helper()
	k := e.next
	e.next++
	if err := e.n.gw.Publish(context.Background(), victimChannel, fmt.Appendf(nil, `{"i":%d}`, k), ""); err != nil {
		t.Fatalf("publish to the victim: %v", err)
	}
	for _, f := range e.feeds {
		select {
		case p := <-f.pkts:
			if p.T != gateway.TypeMsg || p.Ch != victimChannel || p.index() != k {
				t.Fatalf("the victim's %s got %+v, want message %d", f.name, p, k)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("the victim's %s did not get message %d", f.name, k)
		}
	}
}

// jsonRefusal checks an HTTP refusal with a JSON body: the status, the
// code and the start of the error message.
func jsonRefusal(t *testing.T, status int, body string, wantStatus, wantCode int, wantMsg string) {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal([]byte(body), &e); err != nil || status != wantStatus || e.Code != wantCode || !strings.HasPrefix(e.Error, wantMsg) {
		t.Fatalf("got %d %s, want %d with code %d and error %q…", status, body, wantStatus, wantCode, wantMsg)
	}
}

// wsRefusal sends a WebSocket upgrade for path with the headers hdr
// ("Name", "value", …) and returns the refusal's status and body (the
// upgrade must not happen).
func (e *attackEnv) wsRefusal(t *testing.T, path string, hdr ...string) (int, string) {
	t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	_, _, resp := wsUpgrade(t, e.n, path, h, nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("%s upgraded, want a refusal", path)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("%s: a refusal with CORS headers: %v", path, resp.Header)
	}
	return resp.StatusCode, string(body)
}

// attack is one row: run performs the attack and asserts its exact
// refusal. node, when set, gives the row a node of its own, configured
// so, with a victim of its own.
type attack struct {
	name string
	node func(*gateway.Config, *Options)
	run  func(t *testing.T, e *attackEnv)
}

const evilOrigin = "http://evil.example"

// TestAttacks runs the attack table. Rows of the features being built
// alongside (token refresh and revocation, JWKS and kid, the auth
// webhook; frame, publish and new-session rate limits) go into their
// groups below.
func TestAttacks(t *testing.T) {
	noLeaks(t)
	shared := startAttackNode(t, nil)
	for _, a := range attackRows() {
		t.Run(a.name, func(t *testing.T) {
			e := shared
			if a.node != nil {
				e = startAttackNode(t, a.node)
			}
			a.run(t, e)
			e.intact(t)
		})
	}
}

func attackRows() []attack {
	var rows []attack
	rows = append(rows, tokenAttacks()...)
	rows = append(rows, crossSiteAttacks()...)
	rows = append(rows, sessionAttacks()...)
	rows = append(rows, outputAttacks()...)
	rows = append(rows, channelAttacks()...)
	rows = append(rows, resourceAttacks()...)
	rows = append(rows, bridgeAttacks()...)
	return rows
}

// tokenAttacks: tokens that must not authenticate, refused with 401 and
// code 4401 before any session or upgrade exists.
func tokenAttacks() []attack {
	refused := func(t *testing.T, e *attackEnv, tok string) {
		t.Helper()
		status, body := e.wsRefusal(t, "/ws?token="+url.QueryEscape(tok))
		jsonRefusal(t, status, body, http.StatusUnauthorized, 4401, "invalid token: ")
		status, body = e.n.do(t, http.MethodPost, "/poll?ch="+victimChannel, "", "Authorization", "Bearer "+tok)
		jsonRefusal(t, status, body, http.StatusUnauthorized, 4401, "invalid token: ")
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	return []attack{
		// A token signed with another key claims alice's channels.
		{"forged token", nil, func(t *testing.T, e *attackEnv) {
			refused(t, e, attackToken(t, jwt.SigningMethodRS256, other, attackClaims("alice", nil, "secret.>")))
		}},
		// alice's token with its claims edited (the signature no longer fits).
		{"tampered token", nil, func(t *testing.T, e *attackEnv) {
			parts := strings.Split(e.alice, ".")
			claims, _ := json.Marshal(attackClaims("alice", nil, "secret.>"))
			refused(t, e, parts[0]+"."+b64(claims)+"."+parts[2])
		}},
		// A token that expired (beyond the leeway).
		{"expired token", nil, func(t *testing.T, e *attackEnv) {
			refused(t, e, attackToken(t, jwt.SigningMethodRS256, attackKey(),
				attackClaims("alice", map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}, "secret.alice.>")))
		}},
		// A token without exp would bind a session for ever.
		{"token without expiry", nil, func(t *testing.T, e *attackEnv) {
			refused(t, e, attackToken(t, jwt.SigningMethodRS256, attackKey(), attackClaims("alice", map[string]any{"exp": nil}, "secret.alice.>")))
		}},
		// A token the application issued for another service.
		{"wrong audience", nil, func(t *testing.T, e *attackEnv) {
			refused(t, e, attackToken(t, jwt.SigningMethodRS256, attackKey(), attackClaims("alice", map[string]any{"aud": "billing"}, "secret.alice.>")))
		}},
		// A token of another issuer (signed with the same key elsewhere).
		{"wrong issuer", nil, func(t *testing.T, e *attackEnv) {
			refused(t, e, attackToken(t, jwt.SigningMethodRS256, attackKey(), attackClaims("alice", map[string]any{"iss": "evil"}, "secret.alice.>")))
		}},
		// alg none: no signature at all.
		{"alg none", nil, func(t *testing.T, e *attackEnv) {
			claims, _ := json.Marshal(attackClaims("alice", nil, "secret.>"))
			refused(t, e, b64([]byte(`{"alg":"none","typ":"JWT"}`))+"."+b64(claims)+".")
		}},
		// Algorithm confusion: HS256 keyed with the node's RSA public key,
		// which is no secret.
		{"HS256 with the RSA public key", nil, func(t *testing.T, e *attackEnv) {
			refused(t, e, attackToken(t, jwt.SigningMethodHS256, attackPublicPEM(t, attackKey()), attackClaims("alice", nil, "secret.>")))
		}},
		// A valid token for mallory does not grant alice's channel: the
		// subscription is refused in-band, the session stays.
		{"subscribe beyond the token's grants", nil, func(t *testing.T, e *attackEnv) {
			c := dialWSWith(t, e.n, http.Header{"Authorization": {"Bearer " + e.mallry}}, nil)
			c.send(textFrame(`{"op":"sub","id":7,"ch":"` + victimChannel + `"}`))
			if p := c.answer(7); p.T != gateway.TypeErr || p.Code != 403 {
				t.Fatalf("got %+v, want err 403", p)
			}
			c.send(textFrame(`{"op":"pub","id":8,"ch":"` + victimChannel + `","data":1}`))
			if p := c.answer(8); p.T != gateway.TypeErr || p.Code != 403 {
				t.Fatalf("got %+v, want err 403", p)
			}
		}},
	}
}

// crossSiteAttacks: a page of another site (Origin evil.example, or a
// script/iframe load that sends no Origin but the victim's cookie), a
// DNS-rebinding page, the publish API from a browser.
func crossSiteAttacks() []attack {
	origin := func(path, method string) attack {
		return attack{"cross-site " + method + " " + path, nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, method, path, "", "Origin", evilOrigin, "Cookie", tokenCookie+"="+e.alice)
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, "origin not allowed: "+evilOrigin)
		}}
	}
	upgrade := func(path string) attack {
		// Cross-site WebSocket hijacking: the browser sends the victim's
		// cookie with any site's upgrade.
		return attack{"cross-site WebSocket " + path, nil, func(t *testing.T, e *attackEnv) {
			status, body := e.wsRefusal(t, path, "Origin", evilOrigin, "Cookie", tokenCookie+"="+e.alice)
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, "origin not allowed: "+evilOrigin)
		}}
	}
	cookieOnly := "JSONP and htmlfile take a token only from ?token="
	rows := []attack{
		upgrade("/ws"),
		upgrade("/tcp/echo"),
		origin("/sse?ch="+victimChannel, http.MethodGet),
		origin("/poll?ch="+victimChannel, http.MethodPost),
		origin("/xhr_stream?ch="+victimChannel, http.MethodPost),
		// SockJS websocket: refused before the upgrade, in plain text as
		// sockjs-node answers its HTTP errors.
		{"cross-site SockJS websocket", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.wsRefusal(t, "/sockjs/000/"+sjsSID()+"/websocket", "Origin", evilOrigin, "Cookie", tokenCookie+"="+e.alice)
			if status != http.StatusForbidden || body != "origin not allowed: "+evilOrigin {
				t.Fatalf("got %d %q", status, body)
			}
		}},
		// SockJS XHR and the info request: refused without any
		// Access-Control-Allow-* header, so the page cannot read it.
		{"cross-site SockJS xhr and info", nil, func(t *testing.T, e *attackEnv) {
			for _, r := range []struct{ method, path string }{
				{http.MethodPost, "/sockjs/000/" + sjsSID() + "/xhr"},
				{http.MethodPost, "/sockjs/000/" + sjsSID() + "/xhr_streaming"},
				{http.MethodGet, "/sockjs/info"},
				{http.MethodOptions, "/sockjs/info"},
			} {
				resp := sjsDo(t, e.n.client, r.method, e.n.url(r.path), "", "Origin", evilOrigin, "Cookie", tokenCookie+"="+e.alice)
				if resp.status != http.StatusForbidden || resp.body != "origin not allowed: "+evilOrigin ||
					resp.get("Access-Control-Allow-Origin") != "" || resp.get("Access-Control-Allow-Credentials") != "" {
					t.Fatalf("%s %s: %d %v %q", r.method, r.path, resp.status, resp.header, resp.body)
				}
			}
		}},
		// Origin null (a sandboxed frame of any site) is no same origin.
		{"Origin null", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodPost, "/poll?ch="+victimChannel, "", "Origin", "null", "Cookie", tokenCookie+"="+e.alice)
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, "origin not allowed: null")
		}},
		// Where any Origin is allowed, null still gets no credentials
		// (SockJS info and XHR, native poll).
		{"Origin null where any origin is allowed", func(_ *gateway.Config, o *Options) { o.AllowedOrigins = []string{"*"} }, func(t *testing.T, e *attackEnv) {
			for _, p := range []string{"/sockjs/info", "/poll?ch=demo.a"} {
				method := http.MethodGet
				if strings.HasPrefix(p, "/poll") {
					method = http.MethodPost
				}
				resp := sjsDo(t, e.n.client, method, e.n.url(p), "", "Origin", "null")
				if resp.status != http.StatusOK || resp.get("Access-Control-Allow-Credentials") != "" ||
					(resp.get("Access-Control-Allow-Origin") != "null" && resp.get("Access-Control-Allow-Origin") != "*") {
					t.Fatalf("%s: %d %v", p, resp.status, resp.header)
				}
			}
		}},
		// Session riding through JSONP: another site's <script src> sends
		// the victim's cookie and no Origin, and names the callback.
		{"JSONP with the cookie", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodGet, "/jsonp?cb=steal&ch="+victimChannel, "", "Cookie", tokenCookie+"="+e.alice)
			want := `/**/steal([{"t":"close","code":4003,"reason":"` + cookieOnly
			if status != http.StatusOK || !strings.HasPrefix(body, want) || strings.Contains(body, `"sid"`) {
				t.Fatalf("got %d %s", status, body)
			}
		}},
		// The same through htmlfile (an <iframe>).
		{"htmlfile with the cookie", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodGet, "/htmlfile?cb=steal&ch="+victimChannel, "", "Cookie", tokenCookie+"="+e.alice)
			if status != http.StatusForbidden || !strings.Contains(body, `"t":"close","code":4003,"reason":"`+cookieOnly) || strings.Contains(body, `"sid"`) {
				t.Fatalf("got %d %s", status, body)
			}
		}},
		// Publishing as the victim with a script load of /jsonp_send.
		{"jsonp_send with the cookie", nil, func(t *testing.T, e *attackEnv) {
			d := url.QueryEscape(`{"op":"pub","id":1,"ch":"secret.alice.outbox","data":"as alice"}`)
			status, body := e.n.do(t, http.MethodGet, "/jsonp_send/"+e.sid+"?cb=steal&d="+d, "", "Cookie", tokenCookie+"="+e.alice)
			if status != http.StatusOK || !strings.HasPrefix(body, `/**/steal({"ok":false,"code":4003,"error":"`+cookieOnly) {
				t.Fatalf("got %d %s", status, body)
			}
		}},
		// SockJS jsonp and htmlfile: the same refusal as a close frame;
		// JSONP output starts with /**/ (Rosetta Flash).
		{"SockJS jsonp with the cookie", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodGet, "/sockjs/000/"+sjsSID()+"/jsonp?c=steal", "", "Cookie", tokenCookie+"="+e.alice)
			if status != http.StatusOK || !strings.HasPrefix(body, `/**/steal("c[4003,\"`+cookieOnly) {
				t.Fatalf("got %d %s", status, body)
			}
		}},
		{"SockJS htmlfile with the cookie", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodGet, "/sockjs/000/"+sjsSID()+"/htmlfile?c=steal", "", "Cookie", tokenCookie+"="+e.alice)
			if status != http.StatusOK || !strings.Contains(body, `c[4003,\"`+cookieOnly) || strings.Contains(body, "o\n") {
				t.Fatalf("got %d %s", status, body)
			}
		}},
		// DNS rebinding: the attacker's name resolves to the node.
		{"Host evil.example", nil, func(t *testing.T, e *attackEnv) {
			for _, r := range []struct{ method, path string }{
				{http.MethodGet, "/sse?ch=demo.a"}, {http.MethodPost, "/poll?ch=demo.a"}, {http.MethodGet, "/jsonp?cb=x"},
				{http.MethodPost, "/api/publish"}, {http.MethodGet, "/sockjs/info"},
			} {
				status, body := e.n.do(t, r.method, r.path, `{"channel":"demo.a","data":1}`, "Host", "evil.example", "Origin", "http://evil.example", "Content-Type", "application/json")
				jsonRefusal(t, status, body, http.StatusMisdirectedRequest, 4003, "host not allowed: evil.example")
			}
			status, body := e.n.do(t, http.MethodGet, "/ws", "", "Host", "evil.example", "Upgrade", "websocket", "Connection", "Upgrade",
				"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			jsonRefusal(t, status, body, http.StatusMisdirectedRequest, 4003, "host not allowed: evil.example")
		}},
		// An https page on the node's host and port is another origin
		// (a rebinding page served over TLS).
		{"https Origin on the http host", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodPost, "/poll?ch=demo.a", "", "Origin", "https://"+strings.TrimPrefix(e.base, "http://"))
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, "origin not allowed: https://")
		}},
		// The SockJS iframe page runs in the node's origin and obeys the
		// page that frames it: only the node's own pages may.
		{"SockJS iframe framed by another site", nil, func(t *testing.T, e *attackEnv) {
			resp := sjsDo(t, e.n.client, http.MethodGet, e.n.url("/sockjs/iframe.html"), "")
			if resp.status != http.StatusOK || resp.get("Content-Security-Policy") != "frame-ancestors 'self'" {
				t.Fatalf("iframe.html: %d %v", resp.status, resp.header)
			}
			// and it loads a pinned client with its integrity, not @1.
			if !strings.Contains(resp.body, `src="`+DefaultSockJSClientURL+`"`) || !strings.Contains(resp.body, `integrity="`+DefaultSockJSClientIntegrity+`"`) {
				t.Fatalf("iframe.html: %s", resp.body)
			}
		}},
		// The node's own pages (the demos publish on a click) cannot be
		// framed by another site to steal a click.
		{"demo pages framed by another site", func(_ *gateway.Config, o *Options) {
			o.Web = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "<!doctype html>") })
		}, func(t *testing.T, e *attackEnv) {
			resp := sjsDo(t, e.n.client, http.MethodGet, e.n.url("/auction.html"), "")
			if resp.status != http.StatusOK || resp.get("Content-Security-Policy") != "frame-ancestors 'self'" {
				t.Fatalf("a page: %d %v", resp.status, resp.header)
			}
		}},
		{"SockJS iframe framed where origins are listed", func(_ *gateway.Config, o *Options) { o.AllowedOrigins = []string{"https://app.example", "null"} }, func(t *testing.T, e *attackEnv) {
			resp := sjsDo(t, e.n.client, http.MethodGet, e.n.url("/sockjs/iframe.html"), "")
			if resp.get("Content-Security-Policy") != "frame-ancestors 'self' https://app.example" {
				t.Fatalf("iframe.html: %v", resp.header)
			}
		}},
	}
	// The publish API from a browser page of another site, on the
	// default config (loopback allowed without a key).
	api := func(name string, status, code int, msg string, hdr ...string) attack {
		return attack{"publish API: " + name, nil, func(t *testing.T, e *attackEnv) {
			got, body := e.n.do(t, http.MethodPost, "/api/publish", `{"channel":"demo.api","data":1}`, hdr...)
			jsonRefusal(t, got, body, status, code, msg)
		}}
	}
	crossSite := "a cross-site request to the publish API needs an API key"
	return append(rows,
		api("cross-site Origin", http.StatusForbidden, 4003, crossSite, "Content-Type", "application/json", "Origin", evilOrigin),
		api("Sec-Fetch-Site cross-site", http.StatusForbidden, 4003, crossSite, "Content-Type", "application/json", "Sec-Fetch-Site", "cross-site"),
		api("wrong key from another site", http.StatusForbidden, 4003, crossSite,
			"Content-Type", "application/json", "Origin", evilOrigin, "Authorization", "Bearer nope"),
		// A form or text/plain POST is what a page sends without a CORS
		// preflight.
		api("text/plain", http.StatusUnsupportedMediaType, 0, "Content-Type must be application/json", "Content-Type", "text/plain"),
		api("form", http.StatusUnsupportedMediaType, 0, "Content-Type must be application/json", "Content-Type", "application/x-www-form-urlencoded"),
	)
}

// sessionAttacks: acting on a session that is not one's own.
func sessionAttacks() []attack {
	other := "the session belongs to another principal"
	return []attack{
		// mallory, with a valid token of her own, polls alice's session.
		{"foreign session id: poll", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodPost, "/poll/"+e.sid+"?ack=0", "", "Authorization", "Bearer "+e.mallry)
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, other)
			status, body = e.n.do(t, http.MethodGet, "/xhr_stream/"+e.sid+"?ack=0", "", "Authorization", "Bearer "+e.mallry)
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, other)
		}},
		// A leaked session id alone (no token) is useless.
		{"foreign session id without a token", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodPost, "/poll/"+e.sid+"?ack=0", "")
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, other)
		}},
		// mallory sends frames on alice's session.
		{"foreign session id: send", nil, func(t *testing.T, e *attackEnv) {
			for _, sid := range []string{e.sid, e.wsSID} {
				status, body := e.n.do(t, http.MethodPost, "/session/"+sid+"/send", `{"op":"pub","id":1,"ch":"secret.alice.outbox","data":1}`,
					"Authorization", "Bearer "+e.mallry)
				jsonRefusal(t, status, body, http.StatusForbidden, 4003, other)
			}
		}},
		// Guessing session ids.
		{"unknown session id", nil, func(t *testing.T, e *attackEnv) {
			status, body := e.n.do(t, http.MethodPost, "/poll/n1.AAAAAAAAAAAAAAAAAAAAAA?ack=0", "")
			jsonRefusal(t, status, body, http.StatusNotFound, 4004, "session not found")
		}},
		// SockJS session ids are the client's: mallory attaches to alice's.
		{"foreign SockJS session id", nil, func(t *testing.T, e *attackEnv) {
			sid := sjsSID()
			base := "/sockjs/000/" + sid
			if r := sjsDo(t, e.n.client, http.MethodPost, e.n.url(base+"/xhr?token="+url.QueryEscape(e.alice)), ""); r.body != "o\n" {
				t.Fatalf("alice's SockJS session: %d %q", r.status, r.body)
			}
			r := sjsDo(t, e.n.client, http.MethodPost, e.n.url(base+"/xhr_send?token="+url.QueryEscape(e.mallry)), `["{\"op\":\"pub\",\"id\":1,\"ch\":\"secret.alice.outbox\",\"data\":1}"]`)
			// A sender learns nothing from a foreign id: as if there were
			// no such session.
			if r.status != http.StatusNotFound || r.body != "404 Error: Page not found\n" {
				t.Fatalf("xhr_send as mallory: %d %q", r.status, r.body)
			}
			r = sjsDo(t, e.n.client, http.MethodPost, e.n.url(base+"/xhr?token="+url.QueryEscape(e.mallry)), "")
			if r.status != http.StatusOK || !strings.HasPrefix(r.body, `c[4003,"`+other) {
				t.Fatalf("xhr as mallory: %d %q", r.status, r.body)
			}
			// alice's session is still hers.
			r = sjsDo(t, e.n.client, http.MethodPost, e.n.url(base+"/xhr_send?token="+url.QueryEscape(e.alice)), `["{\"op\":\"ping\",\"id\":2}"]`)
			if r.status != http.StatusNoContent {
				t.Fatalf("xhr_send as alice: %d %q", r.status, r.body)
			}
		}},
	}
}

// outputAttacks: input that tries to run script in the node's origin.
func outputAttacks() []attack {
	return []attack{
		// A callback name that is code.
		{"callback injection", nil, func(t *testing.T, e *attackEnv) {
			for _, p := range []string{"/jsonp?cb=alert(1)//", "/htmlfile?cb=x%3Balert(1)", "/jsonp_send/" + e.sid + "?cb=a%3Cscript%3E&d=%7B%7D"} {
				status, body := e.n.do(t, http.MethodGet, p, "")
				jsonRefusal(t, status, body, http.StatusBadRequest, 4000, "")
			}
			status, body := e.n.do(t, http.MethodGet, "/sockjs/000/"+sjsSID()+"/jsonp?c=alert(1)//", "")
			if status != http.StatusInternalServerError || body != `invalid "callback" parameter` {
				t.Fatalf("SockJS jsonp: %d %q", status, body)
			}
		}},
		// Message data that closes the script element or the string.
		{"script injection through message data", nil, func(t *testing.T, e *attackEnv) {
			const evil = `</script><script>alert(1)</script><!-- ` + "\u2028\u2029"
			jp := newPollClient(t, e.n, true)
			jp.open("demo.inject")
			hf := newStreamClient(t, e.n, true)
			hf.open("demo.inject")
			sse := openSSE(t, e.n, "ch=demo.inject", nil)
			defer sse.close()
			data, _ := json.Marshal(evil)
			status, body := e.n.do(t, http.MethodPost, "/api/publish", `{"channel":"demo.inject","data":`+string(data)+`}`, "Content-Type", "application/json")
			if status != http.StatusOK {
				t.Fatalf("publish: %d %s", status, body)
			}
			// JSONP: no < > or line separators in the script.
			for got := 0; got == 0; {
				_, raw := jp.get(jp.pollURL(jp.acked))
				if strings.ContainsAny(string(raw), "<>\u2028\u2029") || !strings.HasPrefix(string(raw), "/**/") {
					t.Fatalf("JSONP: %q", raw)
				}
				for _, p := range jp.decode(raw) {
					jp.acked = p.seq()
					var s string
					if p.T == gateway.TypeMsg && json.Unmarshal(p.Data, &s) == nil && s == evil {
						got++
					}
				}
			}
			// htmlfile: one script element per packet.
			for {
				p := hf.next()
				if strings.Count(hf.line, "<") != 2 || strings.ContainsAny(hf.line, "\u2028\u2029") {
					t.Fatalf("htmlfile: %q", hf.line)
				}
				if p.T == gateway.TypeMsg {
					break
				}
			}
			hf.drop()
			// SSE: one data line, nothing that ends the event.
			for {
				p := sse.next()
				if p.T == gateway.TypeMsg {
					var s string
					if json.Unmarshal(p.Data, &s) != nil || s != evil {
						t.Fatalf("SSE: %+v", p)
					}
					break
				}
			}
		}},
	}
}

// channelAttacks: the nodes' own channel, whatever the rules grant (the
// attack node has a catch-all ">" rule for anyone).
func channelAttacks() []attack {
	return []attack{
		{"subscribe to the nodes' channel", nil, func(t *testing.T, e *attackEnv) {
			c := dialWS(t, e.n)
			c.send(textFrame(`{"op":"sub","id":1,"ch":"` + gateway.NodesChannel + `"}`))
			if p := c.answer(1); p.T != gateway.TypeErr || p.Code != 403 {
				t.Fatalf("got %+v", p)
			}
			// In-band on a transport that subscribes from its URL.
			status, body := e.n.do(t, http.MethodPost, "/poll?ch="+gateway.NodesChannel, "")
			if status != http.StatusOK || !strings.Contains(body, `{"seq":2,"t":"err","ch":"cometgate-nodes","code":403,"error":"permission denied: subscribe to \"cometgate-nodes\""}`) {
				t.Fatalf("got %d %s", status, body)
			}
		}},
		// A catch-all subscription sees everything but the nodes' traffic.
		{"catch-all subscription and announcements", func(c *gateway.Config, _ *Options) {
			c.Rules = gateway.Rules{{Pattern: ">", Subscribe: gateway.Anyone, Publish: gateway.Anyone}}
		}, func(t *testing.T, e *attackEnv) {
			c := dialWS(t, e.n)
			c.sub(1, ">")
			ctx := context.Background()
			if err := e.n.broker.Publish(ctx, brokers.Message{Channel: gateway.NodesChannel, Data: []byte(`{"id":"x","url":"http://10.0.0.9:1"}`)}); err != nil {
				t.Fatal(err)
			}
			if err := e.n.broker.Publish(ctx, brokers.Message{Channel: "demo.after", Data: []byte(`1`)}); err != nil {
				t.Fatal(err)
			}
			for {
				p := c.next()
				if p.T != gateway.TypeMsg {
					continue
				}
				if p.Ch != "demo.after" {
					t.Fatalf("got %+v before demo.after: the announcement reached the browser", p)
				}
				break
			}
		}},
		{"publish on the nodes' channel", nil, func(t *testing.T, e *attackEnv) {
			c := dialWS(t, e.n)
			c.send(textFrame(`{"op":"pub","id":1,"ch":"` + gateway.NodesChannel + `","data":{"id":"x","url":"http://169.254.169.254"}}`))
			if p := c.answer(1); p.T != gateway.TypeErr || p.Code != 403 {
				t.Fatalf("got %+v", p)
			}
			status, body := e.n.do(t, http.MethodPost, "/api/publish", `{"channel":"`+gateway.NodesChannel+`","data":{}}`,
				"Content-Type", "application/json", "Authorization", "Bearer server-k3y")
			jsonRefusal(t, status, body, http.StatusForbidden, 4003, `channel "cometgate-nodes" is reserved for the gateway nodes`)
		}},
	}
}

// resourceAttacks: bounds on what one client may make the node hold.
// Rate limits (frames and publishes per second, new sessions per second)
// get their rows here with the rate-limit work.
func resourceAttacks() []attack {
	return []attack{
		// A frame over the limit ends that session with 1009, alone.
		{"oversize WebSocket frame", nil, func(t *testing.T, e *attackEnv) {
			c := dialWS(t, e.n)
			c.send(textFrame(`{"op":"pub","id":1,"ch":"demo.big","data":"` + strings.Repeat("x", 5000) + `"}`))
			if reason := c.expectClose(gateway.CodeMessageTooBig); !strings.Contains(reason, "4096") {
				t.Fatalf("reason %q", reason)
			}
		}},
		{"oversize bodies", nil, func(t *testing.T, e *attackEnv) {
			big := strings.Repeat(" ", 8*4096+1)
			status, body := e.n.do(t, http.MethodPost, "/poll?ch=demo.a", big)
			jsonRefusal(t, status, body, http.StatusRequestEntityTooLarge, 4001, "body exceeds")
			status, body = e.n.do(t, http.MethodPost, "/api/publish", `{"channel":"demo.a","data":"`+strings.Repeat("x", 8192)+`"}`, "Content-Type", "application/json")
			jsonRefusal(t, status, body, http.StatusRequestEntityTooLarge, 4001, "body exceeds 8192 bytes")
		}},
		// More sessions from one address than allowed.
		{"sessions flood from one address", func(_ *gateway.Config, o *Options) { o.MaxSessionsPerIP = 3 }, func(t *testing.T, e *attackEnv) {
			c := newPollClient(t, e.n, false)
			c.open("demo.a") // the victim holds two
			status, body := e.n.do(t, http.MethodPost, "/poll?ch=demo.a", "")
			jsonRefusal(t, status, body, http.StatusTooManyRequests, 4029, "too many sessions")
			st, rb := e.wsRefusal(t, "/ws")
			jsonRefusal(t, st, rb, http.StatusTooManyRequests, 4029, "too many sessions")
		}},
		// More subscriptions on one session than allowed.
		{"subscriptions flood", nil, func(t *testing.T, e *attackEnv) {
			c := dialWS(t, e.n)
			for i := 1; i <= 8; i++ {
				c.sub(int64(i), fmt.Sprintf("demo.s%d", i))
			}
			c.send(textFrame(`{"op":"sub","id":9,"ch":"demo.s9"}`))
			if p := c.answer(9); p.T != gateway.TypeErr || p.Code != 429 {
				t.Fatalf("got %+v", p)
			}
		}},
		// A body trickled byte by byte: the request is answered 408 once
		// the body timeout passes, instead of holding the connection.
		{"slowloris body", func(_ *gateway.Config, o *Options) { o.ReadBodyTimeout = 500 * time.Millisecond }, func(t *testing.T, e *attackEnv) {
			for _, p := range []string{"/poll?ch=demo.a", "/api/publish", "/session/" + e.sid + "/send", "/sockjs/000/" + sjsSID() + "/xhr_send"} {
				conn, err := net.Dial("tcp", e.n.http.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{", p, e.alice)
				_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				body, _ := io.ReadAll(resp.Body)
				conn.Close()
				if strings.HasPrefix(p, "/sockjs") {
					if resp.StatusCode != http.StatusRequestTimeout || !strings.HasPrefix(string(body), "request body not received within") {
						t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
					}
					continue
				}
				jsonRefusal(t, resp.StatusCode, string(body), http.StatusRequestTimeout, 4000, "request body not received within 500ms")
			}
			// The bound is on the body only: a long-poll that sent one is
			// then held for as long as it needs (here until the 1 s
			// heartbeat answers it with an empty batch; a deadline left on
			// the connection would cancel it first, with no answer).
			c := newPollClient(t, e.n, false)
			c.open("demo.a")
			status, body := e.n.do(t, http.MethodPost, c.pollURL(c.acked), "")
			if status != http.StatusOK || body != "[]" {
				t.Fatalf("a held POST poll: %d %q", status, body)
			}
		}},
		// A session opened and never come back to ends after the
		// disconnect delay, and frees its place.
		{"abandoned session", nil, func(t *testing.T, e *attackEnv) {
			c := newPollClient(t, e.n, false)
			c.open("demo.a")
			sess := e.n.gw.Session(c.sid)
			if sess == nil {
				t.Fatal("no session")
			}
			select {
			case <-sess.Done():
			case <-time.After(waitTimeout):
				t.Fatal("the abandoned session did not end")
			}
			if r := sess.Reason(); r.Code != gateway.DisconnectExpired.Code {
				t.Fatalf("ended with %+v", r)
			}
		}},
	}
}

// bridgeAttacks: the TCP bridge as a way into the node's network (SSRF).
// TCP has no redirects to follow; names are resolved and checked at each
// connect, and only the checked address is dialled.
func bridgeAttacks() []attack {
	targets := func(_ *gateway.Config, o *Options) {
		o.Bridge = []BridgeTarget{
			{Name: "metadata", Address: "169.254.169.254:80"},
			{Name: "rebound", Address: "rebound.attacker.example:80"},
			{Name: "loopback", Address: "localhost:1"},
		}
		if err := ValidateBridge(o.Bridge, nil); err != nil {
			panic(err)
		}
	}
	return []attack{
		{"bridge: unknown target", nil, func(t *testing.T, e *attackEnv) {
			for _, name := range []string{"nope", "127.0.0.1:22", "a%2Fb"} {
				status, body := e.wsRefusal(t, "/tcp/"+name)
				jsonRefusal(t, status, body, http.StatusNotFound, 4404, "unknown TCP target")
			}
		}},
		// Allow-listed names whose addresses the policy refuses: a
		// metadata address, a name that resolves there, loopback.
		{"bridge: refused addresses", targets, func(t *testing.T, e *attackEnv) {
			e.n.srv.bridge.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
				if host == "rebound.attacker.example" {
					return []netip.Addr{netip.MustParseAddr("169.254.169.254")}, nil
				}
				return net.DefaultResolver.LookupNetIP(context.Background(), "ip", host)
			}
			for _, name := range []string{"metadata", "rebound", "loopback"} {
				status, body := e.wsRefusal(t, "/tcp/"+name)
				jsonRefusal(t, status, body, http.StatusForbidden, 4403, "target address not allowed")
				if strings.Contains(body, "169.254") || strings.Contains(body, "127.0.0.1") {
					t.Fatalf("the refusal names the address: %s", body)
				}
			}
		}},
	}
}
