package transports

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/cometgate/cometgate/gateway"
)

// do sends a request with the given headers ("Name", "value", …) and
// returns the status and body.
func (n *testNode) do(t *testing.T, method, path, body string, hdr ...string) (int, string) {
	t.Helper()
	return n.doUntil(t, method, path, body, "", hdr...)
}

// doUntil is do for a response that may stream: it stops reading once the
// body holds until ("" reads to the end).
func (n *testNode) doUntil(t *testing.T, method, path, body, until string, hdr ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, n.url(path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for until == "" || !strings.Contains(b.String(), until) {
		k, err := resp.Body.Read(buf)
		b.Write(buf[:k])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

// TestCallbackTransportsRefuseTheCookie: JSONP and htmlfile (native and
// SockJS) do not authenticate with the token cookie, which any site can
// make a browser send with a script or iframe load: a request that
// carries it and no token is refused with a clear reason, in the
// transport's own framing. A token in the query works, and so does the
// cookie once the node allows it.
func TestCallbackTransportsRefuseTheCookie(t *testing.T) {
	alice := token(t, "alice", "secret.>")
	cookie := tokenCookie + "=" + alice
	for _, allow := range []bool{false, true} {
		v, err := gateway.NewTokenVerifier(gateway.TokenOptions{HMACSecret: authSecret})
		if err != nil {
			t.Fatal(err)
		}
		n := startNode(t, func(c *gateway.Config) {
			c.Rules = gateway.Rules{{Pattern: "secret.>", Subscribe: gateway.Token, Publish: gateway.Token}}
		}, func(o *Options) {
			o.Tokens, o.CallbackCookie = v, allow
			o.SockJS = []SockJSEndpoint{{Prefix: "/sockjs", Mode: SockJSPubSub}}
		})
		for _, path := range []string{"/jsonp?cb=steal&ch=secret.a", "/htmlfile?cb=steal&ch=secret.a"} {
			// A stream (htmlfile) stays open: read up to the hello, or
			// to the end of a refusal.
			status, body := n.doUntil(t, http.MethodGet, path, "", `"t":"hello"`, "Cookie", cookie)
			// JSONP refuses with 200 (a script runs nothing else), htmlfile
			// with the refusal's status; both call the callback.
			refused := strings.Contains(body, `"code":4003`) && strings.Contains(body, "take a token only from ?token=")
			wantStatus := http.StatusOK
			if !allow && strings.HasPrefix(path, "/htmlfile") {
				wantStatus = http.StatusForbidden
			}
			if status != wantStatus || refused == allow || (allow && !strings.Contains(body, `"t":"hello"`)) {
				t.Errorf("callback cookie allowed %v: %s with the cookie: %d %.300s", allow, path, status, body)
			}
			status, body = n.doUntil(t, http.MethodGet, path+"&token="+url.QueryEscape(alice), "", `"t":"hello"`, "Cookie", cookie)
			if status != http.StatusOK || !strings.Contains(body, `"t":"hello"`) {
				t.Errorf("%s with a token in the query: %d %.300s", path, status, body)
			}
		}
		sid := sjsSID()
		status, body := n.do(t, http.MethodGet, "/sockjs/000/"+sid+"/jsonp?c=steal", "", "Cookie", cookie)
		refused := strings.Contains(body, `c[4003,`)
		if status != http.StatusOK || refused == allow {
			t.Errorf("callback cookie allowed %v: SockJS jsonp with the cookie: %d %q", allow, status, body)
		}
		// An XHR receiver sends Origin on cross-origin requests: the
		// cookie is taken there.
		status, body = n.do(t, http.MethodPost, "/sockjs/000/"+sjsSID()+"/xhr", "", "Cookie", cookie)
		if status != http.StatusOK || body != "o\n" {
			t.Errorf("SockJS xhr with the cookie: %d %q", status, body)
		}
	}
}

// TestAllowedHosts: a request for a host the node does not serve gets 421
// (DNS rebinding), on every transport and the API; health and metrics
// answer any host.
func TestAllowedHosts(t *testing.T) {
	n := startNode(t, nil, func(o *Options) {
		o.AllowedHosts = []string{"localhost", "127.0.0.1", "::1"}
		o.Metrics = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	})
	for _, path := range []string{"GET /ws", "GET /sse?ch=demo.a", "POST /poll?ch=demo.a", "GET /jsonp?cb=x", "POST /api/publish", "GET /tcp/x"} {
		method, path, _ := strings.Cut(path, " ")
		status, body := n.do(t, method, path, "", "Host", "evil.example:8080", "Origin", "http://evil.example:8080")
		var e errorBody
		if status != http.StatusMisdirectedRequest || json.Unmarshal([]byte(body), &e) != nil || !strings.HasPrefix(e.Error, "host not allowed") {
			t.Errorf("%s for evil.example: %d %s", path, status, body)
		}
	}
	if status, body := n.do(t, http.MethodPost, "/poll?ch=demo.a", "", "Host", "LOCALHOST:1234"); status != http.StatusOK {
		t.Errorf("poll for localhost: %d %s", status, body)
	}
	if status, body := n.do(t, http.MethodPost, "/poll?ch=demo.a", "", "Host", "[::1]:80"); status != http.StatusOK {
		t.Errorf("poll for [::1]: %d %s", status, body)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if status, body := n.do(t, http.MethodGet, path, "", "Host", "10.1.2.3:8080"); status != http.StatusOK {
			t.Errorf("%s by address: %d %s", path, status, body)
		}
	}
}

// TestSameOriginScheme: with no allowed origins configured, the page's
// own origin means its scheme too: an https page may not use an http
// node (a rebinding page served over TLS), unless a trusted proxy says
// the browser did come over https.
func TestSameOriginScheme(t *testing.T) {
	n := startNode(t, nil, func(o *Options) {
		o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	})
	host := strings.TrimPrefix(n.http.URL, "http://")
	if status, body := n.do(t, http.MethodPost, "/poll?ch=demo.a", "", "Origin", "http://"+host); status != http.StatusOK {
		t.Errorf("same origin: %d %s", status, body)
	}
	status, body := n.do(t, http.MethodPost, "/poll?ch=demo.a", "", "Origin", "https://"+host)
	expectJSONError(t, status, []byte(body), http.StatusForbidden, gateway.DisconnectForbidden.Code)
	if status, body := n.do(t, http.MethodPost, "/poll?ch=demo.a", "", "Origin", "https://"+host, "X-Forwarded-Proto", "https"); status != http.StatusOK {
		t.Errorf("https through a trusted proxy: %d %s", status, body)
	}
}

// TestPublishAPICrossSite: a browser page of another site cannot publish
// through the API without a key, even from the node's own machine (where
// AllowLoopback lets curl in); the API wants JSON, which a cross-site form
// or text/plain POST cannot send without a preflight.
func TestPublishAPICrossSite(t *testing.T) {
	n := startNode(t, nil, func(o *Options) {
		o.AllowLoopback = true
		o.APIKeys = []string{"k3y"}
	})
	body := `{"channel":"demo.api","data":1}`
	json := "application/json"
	for _, tc := range []struct {
		name   string
		hdr    []string
		status int
	}{
		{"loopback, no key", []string{"Content-Type", json}, http.StatusOK},
		{"loopback, JSON with a charset", []string{"Content-Type", json + "; charset=utf-8"}, http.StatusOK},
		{"text/plain", []string{"Content-Type", "text/plain"}, http.StatusUnsupportedMediaType},
		{"form", []string{"Content-Type", "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
		{"no content type", nil, http.StatusUnsupportedMediaType},
		{"cross-site Origin", []string{"Content-Type", json, "Origin", "http://evil.example"}, http.StatusForbidden},
		{"Sec-Fetch-Site cross-site", []string{"Content-Type", json, "Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"cross-site with a key", []string{"Content-Type", json, "Origin", "http://evil.example", "Authorization", "Bearer k3y"}, http.StatusOK},
		{"wrong key from loopback", []string{"Content-Type", json, "Authorization", "Bearer nope"}, http.StatusOK},
	} {
		status, got := n.do(t, http.MethodPost, "/api/publish", body, tc.hdr...)
		if status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, status, got, tc.status)
		}
	}
}

// TestClientAddress: X-Forwarded-For is believed only from trusted
// proxies, right to left up to the first address that is not one; IPv6
// clients are counted by /64.
func TestClientAddress(t *testing.T) {
	g := &gate{proxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	for _, tc := range []struct {
		peer, xff, want string
	}{
		{"203.0.113.9:1234", "", "203.0.113.9"},
		{"203.0.113.9:1234", "198.51.100.1", "203.0.113.9"}, // not a trusted proxy: its header is the client's
		{"10.0.0.2:1234", "198.51.100.1", "198.51.100.1"},
		{"10.0.0.2:1234", "1.2.3.4, 198.51.100.1, 10.0.0.7", "198.51.100.1"}, // 1.2.3.4 is what the client claimed
		{"10.0.0.2:1234", "garbage", "10.0.0.2"},
		{"10.0.0.2:1234", "10.0.0.9", "10.0.0.9"},
		{"[::ffff:10.0.0.2]:1234", "2001:db8::1", "2001:db8::1"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tc.peer
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := g.clientAddr(r); got != netip.MustParseAddr(tc.want) {
			t.Errorf("peer %s, X-Forwarded-For %q: %v, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
	if a, b := ipKey(netip.MustParseAddr("2001:db8:1:2::1")), ipKey(netip.MustParseAddr("2001:db8:1:2:ffff::9")); a != b {
		t.Errorf("one /64 counts as two clients: %v %v", a, b)
	}
	if a, b := ipKey(netip.MustParseAddr("2001:db8:1:2::1")), ipKey(netip.MustParseAddr("2001:db8:1:3::1")); a == b {
		t.Errorf("two /64s count as one client: %v", a)
	}
	if a, b := ipKey(netip.MustParseAddr("127.0.0.1")), ipKey(netip.MustParseAddr("127.0.0.2")); a == b {
		t.Errorf("two IPv4 addresses count as one client: %v", a)
	}
}

// TestNullOriginNoCredentials: the "null" Origin (a sandboxed frame, a
// local file) is never answered with credentials, even where any origin
// is allowed.
func TestNullOriginNoCredentials(t *testing.T) {
	n := startNode(t, nil, func(o *Options) { o.AllowedOrigins = []string{"*"} })
	req, _ := http.NewRequest(http.MethodPost, n.url("/poll?ch=demo.a"), nil)
	req.Header.Set("Origin", "null")
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Credentials") != "" {
		t.Errorf("poll: credentials for Origin null: %v", resp.Header)
	}
	sreq, _ := http.NewRequest(http.MethodGet, n.url("/sse?ch=demo.a"), nil)
	sreq.Header.Set("Origin", "null")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sresp, err := n.client.Do(sreq.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	if sresp.Header.Get("Access-Control-Allow-Credentials") != "" || sresp.Header.Get("Access-Control-Allow-Origin") != "null" {
		t.Errorf("sse: %v", sresp.Header)
	}
}
