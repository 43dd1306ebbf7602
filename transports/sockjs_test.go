package transports

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// Protocol tests modelled on the sockjs-protocol 0.3.3 test suite: the
// same URLs, requests and expectations, against a real node.

func sjsSID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sjsContentType(t *testing.T, r sjsResp, want string) {
	t.Helper()
	if got := strings.ReplaceAll(r.get("Content-Type"), " ", ""); got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
}

func sjsCheckNotCached(t *testing.T, h http.Header) {
	t.Helper()
	if got := h.Get("Cache-Control"); got != "no-store, no-cache, no-transform, must-revalidate, max-age=0" {
		t.Errorf("Cache-Control = %q", got)
	}
	if h.Get("Expires") != "" || h.Get("Last-Modified") != "" {
		t.Errorf("Expires %q / Last-Modified %q on a private answer", h.Get("Expires"), h.Get("Last-Modified"))
	}
}

// sjsCheckCORS checks the CORS headers of an answer to a request from an
// allowed origin ("" for none): sockjs-node's and the current protocol
// tests' (verify_cors), except that null never gets credentials.
func sjsCheckCORS(t *testing.T, h http.Header, origin string) {
	t.Helper()
	want, creds := origin, "true"
	switch origin {
	case "":
		want, creds = "*", ""
	case "null":
		creds = ""
	}
	if got := h.Get("Access-Control-Allow-Origin"); got != want {
		t.Errorf("Access-Control-Allow-Origin = %q, want %q", got, want)
	}
	if got := h.Get("Access-Control-Allow-Credentials"); got != creds {
		t.Errorf("Access-Control-Allow-Credentials = %q, want %q", got, creds)
	}
	if got := h.Get("Vary"); got != "Origin" {
		t.Errorf("Vary = %q, want Origin", got)
	}
}

func sjsCheckNoCookie(t *testing.T, r sjsResp) {
	t.Helper()
	if c := r.get("Set-Cookie"); c != "" {
		t.Errorf("unexpected Set-Cookie %q", c)
	}
}

// sjsCheck404 checks a 404 with sockjs-node's body.
func sjsCheck404(t *testing.T, r sjsResp, what string) {
	t.Helper()
	if r.status != http.StatusNotFound || r.body != "404 Error: Page not found\n" || r.get("Content-Type") != "text/plain; charset=UTF-8" {
		t.Errorf("%s: %d %q %q, want 404 \"404 Error: Page not found\\n\"", what, r.status, r.get("Content-Type"), r.body)
	}
}

// sjsCheck405 checks a bare 405 whose Allow lists the methods in
// sockjs-node's order.
func sjsCheck405(t *testing.T, r sjsResp, allow, what string) {
	t.Helper()
	if r.status != http.StatusMethodNotAllowed || r.get("Allow") != allow || r.get("Content-Type") != "" || r.body != "" {
		t.Errorf("%s: got %d Allow=%q Content-Type=%q body=%q, want a bare 405 with Allow %q", what, r.status, r.get("Allow"), r.get("Content-Type"), r.body, allow)
	}
}

func sjsCheckOptions(t *testing.T, n *sjsNode, url, methods string) {
	t.Helper()
	for _, origin := range []string{"", "test", "null"} {
		var hdr []string
		if origin != "" {
			hdr = []string{"Origin", origin}
		}
		r := n.do(t, http.MethodOptions, url, "", hdr...)
		if r.status != http.StatusNoContent || r.body != "" {
			t.Errorf("OPTIONS %s (origin %q): %d %q", url, origin, r.status, r.body)
		}
		cc := r.get("Cache-Control")
		if !strings.Contains(cc, "public") || !regexp.MustCompile(`max-age=[1-9][0-9]{6}`).MatchString(cc) {
			t.Errorf("OPTIONS %s: Cache-Control %q is not long and public", url, cc)
		}
		if r.get("Expires") == "" {
			t.Errorf("OPTIONS %s: no Expires", url)
		}
		if age, _ := strconv.Atoi(r.get("Access-Control-Max-Age")); age <= 1000000 {
			t.Errorf("OPTIONS %s: Access-Control-Max-Age %q", url, r.get("Access-Control-Max-Age"))
		}
		if got := r.get("Access-Control-Allow-Methods"); got != methods {
			t.Errorf("OPTIONS %s: methods %q, want %q", url, got, methods)
		}
		sjsCheckCORS(t, r.header, origin)
	}
}

func TestSockJSGreeting(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	for _, u := range []string{"/echo", "/echo/"} {
		r := n.do(t, http.MethodGet, n.url(u), "")
		if r.status != http.StatusOK || r.body != "Welcome to SockJS!\n" {
			t.Errorf("GET %s: %d %q", u, r.status, r.body)
		}
		sjsContentType(t, r, "text/plain;charset=UTF-8")
		sjsCheckNoCookie(t, r)
	}
	for _, suffix := range []string{"/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a/"} {
		sjsCheck404(t, n.do(t, http.MethodGet, n.url("/echo"+suffix), ""), suffix)
	}
	sjsCheck405(t, n.do(t, http.MethodPost, n.url("/echo"), "x"), "GET", "POST greeting")
}

// sjsIframeBody is the current protocol tests' pattern of the iframe page
// (sockjs-protocol.py, IframePage.iframe_body).
var sjsIframeBody = regexp.MustCompile(`^<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="(?P<sockjs_url>[^"]*)"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe\(\);
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>$`)

func TestSockJSIframe(t *testing.T) {
	eps := sjsTestEndpoints()
	eps[0].ClientURL = "/static/sockjs.min.js?v=1&x=\"y\""
	n := sjsStartNode(t, eps, nil)
	for _, suffix := range []string{"/iframe.html", "/iframe-a.html", "/iframe-.html", "/iframe-0.1.2.html",
		"/iframe-0.1.2abc-dirty.2144.html", "/iframe-a.html?t=1234", "/iframe-0.1.2.html?t=123414",
		"/iframe-0.1.2abc-dirty.2144.html?t=qweqweq123"} {
		r := n.do(t, http.MethodGet, n.url("/echo"+suffix), "")
		if r.status != http.StatusOK {
			t.Fatalf("%s: status %d", suffix, r.status)
		}
		sjsContentType(t, r, "text/html;charset=UTF-8")
		cc := r.get("Cache-Control")
		if !strings.Contains(cc, "public") || !regexp.MustCompile(`max-age=[1-9][0-9]{6}`).MatchString(cc) {
			t.Errorf("%s: Cache-Control %q", suffix, cc)
		}
		if r.get("Expires") == "" || r.get("ETag") == "" || r.get("Last-Modified") != "" {
			t.Errorf("%s: Expires %q ETag %q Last-Modified %q", suffix, r.get("Expires"), r.get("ETag"), r.get("Last-Modified"))
		}
		m := sjsIframeBody.FindStringSubmatch(strings.TrimSpace(r.body))
		if m == nil {
			t.Fatalf("%s: body does not match the protocol's page:\n%s", suffix, r.body)
		}
		// The configured URL, HTML-escaped so it cannot end the attribute.
		if want := "/static/sockjs.min.js?v=1&amp;x=&#34;y&#34;"; m[1] != want {
			t.Errorf("sockjs_url = %q, want %q", m[1], want)
		}
		sjsCheckNoCookie(t, r)
	}
	for _, suffix := range []string{"/iframe.htm", "/iframe", "/IFRAME.HTML", "/IFRAME", "/iframe.HTML", "/iframe.xml", "/iframe-/.html"} {
		sjsCheck404(t, n.do(t, http.MethodGet, n.url("/echo"+suffix), ""), suffix)
	}

	// Cacheability: a stable ETag, and 304 for If-None-Match.
	r1 := n.do(t, http.MethodGet, n.url("/echo/iframe.html"), "")
	r2 := n.do(t, http.MethodGet, n.url("/echo/iframe.html"), "")
	if r1.get("ETag") == "" || r1.get("ETag") != r2.get("ETag") {
		t.Errorf("ETags %q and %q", r1.get("ETag"), r2.get("ETag"))
	}
	r := n.do(t, http.MethodGet, n.url("/echo/iframe.html"), "", "If-None-Match", r1.get("ETag"))
	if r.status != http.StatusNotModified || r.get("Content-Type") != "" || r.body != "" {
		t.Errorf("If-None-Match: %d Content-Type %q body %q", r.status, r.get("Content-Type"), r.body)
	}
	// Another endpoint with the default client has another page: the
	// pinned release with its integrity, byte for byte.
	r3 := n.do(t, http.MethodGet, n.url("/pubsub/iframe.html"), "")
	if r3.get("ETag") == r1.get("ETag") {
		t.Errorf("default client URL page: ETag %q", r3.get("ETag"))
	}
	// The protocol's page, whose script element carries the pinned URL
	// and its integrity: with the attributes taken out, the protocol's
	// pattern matches it whole.
	const script = `<script src="https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js"` +
		` integrity="sha384-svdnwiXBL+Js+yUneJSRFy24NgGiOfDM/vkQl/vCeVrcbYD6yW8EwPr1FnxTEZsR" crossorigin="anonymous"></script>`
	if strings.Count(r3.body, "\n  "+script+"\n") != 1 {
		t.Errorf("default iframe page without %s:\n%s", script, r3.body)
	}
	if m := sjsIframeBody.FindStringSubmatch(strings.Replace(r3.body, `" integrity="`+DefaultSockJSClientIntegrity+`" crossorigin="anonymous`, "", 1)); m == nil || m[1] != DefaultSockJSClientURL {
		t.Errorf("default iframe page does not match the protocol's pattern less its integrity:\n%s", r3.body)
	}

	// A configured client with its own integrity; the default URL named
	// explicitly keeps the default integrity.
	n2 := sjsStartNode(t, []SockJSEndpoint{
		{Prefix: "/own", Mode: SockJSEcho, ClientURL: "/static/sockjs.min.js", ClientIntegrity: " sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=  " + DefaultSockJSClientIntegrity},
		{Prefix: "/cdn", Mode: SockJSEcho, ClientURL: DefaultSockJSClientURL},
	}, nil)
	r4 := n2.do(t, http.MethodGet, n2.url("/own/iframe.html"), "")
	if !strings.Contains(r4.body, `  <script src="/static/sockjs.min.js" integrity="sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU= `+DefaultSockJSClientIntegrity+`" crossorigin="anonymous"></script>
`) {
		t.Errorf("own client with integrity: %s", r4.body)
	}
	if r5 := n2.do(t, http.MethodGet, n2.url("/cdn/iframe.html"), ""); r5.body != r3.body {
		t.Errorf("the default URL named explicitly: %s", r5.body)
	}
}

func TestSockJSEndpointValidateClient(t *testing.T) {
	for _, tc := range []struct {
		e    SockJSEndpoint
		want string // "" valid, else a part of the error
	}{
		{SockJSEndpoint{Prefix: "/s", ClientURL: "/c.js", ClientIntegrity: DefaultSockJSClientIntegrity}, ""},
		{SockJSEndpoint{Prefix: "/s", ClientURL: "/c.js", ClientIntegrity: "sha512-" + strings.Repeat("A", 86) + "=="}, ""},
		{SockJSEndpoint{Prefix: "/s", ClientIntegrity: DefaultSockJSClientIntegrity}, "client_integrity: only with client_url"},
		{SockJSEndpoint{Prefix: "/s", ClientURL: "/c.js", ClientIntegrity: "md5-1B2M2Y8AsgTpgAmY7PhCfg=="}, "client_integrity"},
		{SockJSEndpoint{Prefix: "/s", ClientURL: "/c.js", ClientIntegrity: "sha384-abc"}, "client_integrity"},
		{SockJSEndpoint{Prefix: "/s", ClientURL: "/c.js", ClientIntegrity: `sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=" onload="x`}, "client_integrity"},
	} {
		err := tc.e.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.e, err, tc.want)
		}
	}
}

func TestSockJSInfo(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	var entropies []uint64
	for range 2 {
		r := n.do(t, http.MethodGet, n.url("/echo/info"), "")
		if r.status != http.StatusOK {
			t.Fatalf("info: %d", r.status)
		}
		sjsContentType(t, r, "application/json;charset=UTF-8")
		sjsCheckNoCookie(t, r)
		sjsCheckNotCached(t, r.header)
		sjsCheckCORS(t, r.header, "")
		var info struct {
			Websocket    *bool    `json:"websocket"`
			CookieNeeded *bool    `json:"cookie_needed"`
			Origins      []string `json:"origins"`
			Entropy      *uint64  `json:"entropy"`
		}
		if err := json.Unmarshal([]byte(r.body), &info); err != nil {
			t.Fatalf("info body %q: %v", r.body, err)
		}
		if info.Websocket == nil || !*info.Websocket || info.CookieNeeded == nil || *info.CookieNeeded ||
			len(info.Origins) != 1 || info.Origins[0] != "*:*" || info.Entropy == nil || *info.Entropy > 1<<32-1 {
			t.Errorf("info %s", r.body)
		}
		// Byte for byte as sockjs-node writes it (its key order).
		if want := fmt.Sprintf(`{"websocket":true,"origins":["*:*"],"cookie_needed":false,"entropy":%d}`, *info.Entropy); r.body != want {
			t.Errorf("info body %s, want %s", r.body, want)
		}
		entropies = append(entropies, *info.Entropy)
	}
	if entropies[0] == entropies[1] {
		t.Errorf("entropy repeated: %d", entropies[0])
	}
	sjsCheckOptions(t, n, n.url("/echo/info"), "OPTIONS, GET")

	for prefix, want := range map[string]string{
		"/disabled_websocket_echo": `"websocket":false`,
		"/cookie_needed_echo":      `"cookie_needed":true`,
	} {
		r := n.do(t, http.MethodGet, n.url(prefix+"/info"), "")
		if !strings.Contains(r.body, want) {
			t.Errorf("%s/info = %s, want %s", prefix, r.body, want)
		}
		sjsCheckNoCookie(t, r)
	}
}

func TestSockJSSessionURLs(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	for _, part := range []string{"/a/a", "/_/_", "/1/1", "/abcdefgh_i-j%20/abcdefg_i-j%20"} {
		r := n.do(t, http.MethodPost, n.url("/echo"+part+"/xhr"), "")
		if r.status != http.StatusOK || r.body != "o\n" {
			t.Errorf("%s: %d %q", part, r.status, r.body)
		}
	}
	for _, suffix := range []string{"//", "/a./a", "/a/a.", "/./.", "/", "///", "/" + strings.Repeat("x", sjsMaxIDLen+1) + "/a"} {
		sjsCheck404(t, n.do(t, http.MethodGet, n.url("/echo"+suffix+"/xhr"), ""), "GET "+suffix)
		sjsCheck404(t, n.do(t, http.MethodPost, n.url("/echo"+suffix+"/xhr"), ""), "POST "+suffix)
	}
	sjsCheck404(t, n.do(t, http.MethodPost, n.url("/echo/a/a/nosuchtransport"), ""), "unknown transport")

	// The server id is for load balancers: the session is the same.
	sid := sjsSID()
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr"), ""); r.body != "o\n" {
		t.Fatalf("open: %q", r.body)
	}
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr_send"), `["a"]`); r.status != http.StatusNoContent || r.body != "" {
		t.Fatalf("send: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodPost, n.url("/echo/999/"+sid+"/xhr"), ""); r.status != http.StatusOK || r.body != "a[\"a\"]\n" {
		t.Fatalf("poll: %d %q", r.status, r.body)
	}
}

func TestSockJSProtocolSimpleSession(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	trans := n.url("/echo/000/" + sjsSID())
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.status != http.StatusOK || r.body != "o\n" {
		t.Fatalf("open: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodPost, trans+"/xhr_send", `["a"]`); r.status != http.StatusNoContent || r.body != "" {
		t.Fatalf("send: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.status != http.StatusOK || r.body != "a[\"a\"]\n" {
		t.Fatalf("poll: %d %q", r.status, r.body)
	}
	sjsCheck404(t, n.do(t, http.MethodPost, n.url("/echo/000/bad_session/xhr_send"), `["a"]`), "send to a bad session")

	// Two receiving requests may not wait on one session: the second
	// gets 2010 and the first goes on.
	r1, _ := n.async(t, http.MethodPost, trans+"/xhr")
	ep := sjsEndpointOf(t, n, "/echo")
	waitAttached(t, ep, trans)
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.status != http.StatusOK || r.body != "c[2010,\"Another connection still open\"]\n" {
		t.Fatalf("second poll: %d %q", r.status, r.body)
	}
	n.do(t, http.MethodPost, trans+"/xhr_send", `["b"]`)
	if r := r1.wait(t); r.status != http.StatusOK || r.body != "a[\"b\"]\n" {
		t.Fatalf("first poll got %d %q", r.status, r.body)
	}
}

// sjsEndpointOf finds the endpoint the node serves at prefix, through the
// router (the tests look inside sessions).
func sjsEndpointOf(t *testing.T, n *sjsNode, prefix string) *sockjsEndpoint {
	t.Helper()
	var found *sockjsEndpoint
	_ = chi.Walk(n.srv.router, func(_, route string, h http.Handler, _ ...func(http.Handler) http.Handler) error {
		if ep, ok := h.(*sockjsEndpoint); ok && route == prefix+"/*" {
			found = ep
		}
		return nil
	})
	if found == nil {
		t.Fatalf("no endpoint at %s", prefix)
	}
	return found
}

// waitAttached waits until the session of a session URL has a receiving
// request attached.
func waitAttached(t *testing.T, ep *sockjsEndpoint, trans string) {
	t.Helper()
	sid := trans[strings.LastIndex(trans, "/")+1:]
	sjsWaitFor(t, "a receiving request on "+sid, func() bool {
		s := ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false)
		if s == nil {
			return false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.receiving
	})
}

func sjsWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(sjsWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A session closed by the server answers every request with its close
// frame until it expires.
func TestSockJSCloseSession(t *testing.T) {
	n := sjsStartNode(t, nil, nil)
	// The delay only has to outlast the gap between two requests here.
	ep, base := n.endpoint(t, SockJSEndpoint{Prefix: "/close", Mode: SockJSEcho, DisconnectDelay: 3 * time.Second})
	sid := sjsSID()
	trans := base + "/000/" + sid
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("open: %q", r.body)
	}
	ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false).sess.Close(gateway.Disconnect{Code: 3000, Reason: "Go away!"})
	for range 2 {
		if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.status != http.StatusOK || r.body != "c[3000,\"Go away!\"]\n" {
			t.Fatalf("after close: %d %q", r.status, r.body)
		}
	}
	if r := n.do(t, http.MethodPost, trans+"/xhr_send", `["x"]`); r.status != http.StatusNoContent {
		t.Errorf("send to a closing session: %d", r.status)
	}
	// Once it expired, the id names a new session.
	sjsWaitFor(t, "the closed session to expire", func() bool { return ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false) == nil })
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("after expiry: %q", r.body)
	}

	// A streaming request attached when the session closes gets the close
	// frame and ends; the next one gets it too.
	sid = sjsSID()
	trans = base + "/000/" + sid
	st := n.stream(t, http.MethodPost, trans+"/xhr_streaming")
	st.read(2049)
	if got := st.until("\n"); got != "o\n" {
		t.Fatalf("open frame %q", got)
	}
	ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false).sess.Close(gateway.Disconnect{Code: 3000, Reason: "Go away!"})
	if got := st.until("\n"); got != "c[3000,\"Go away!\"]\n" {
		t.Fatalf("close frame %q", got)
	}
	st.eof()
	st2 := n.stream(t, http.MethodPost, trans+"/xhr_streaming")
	st2.read(2049)
	if got := st2.until("\n"); got != "c[3000,\"Go away!\"]\n" {
		t.Fatalf("second request: %q", got)
	}
	st2.eof()
}

func TestSockJSXHRPolling(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	for _, suffix := range []string{"/xhr", "/xhr_send", "/xhr_streaming"} {
		sjsCheckOptions(t, n, n.url("/echo/abc/abc"+suffix), "OPTIONS, POST")
	}
	url := n.url("/echo/000/" + sjsSID())
	r := n.do(t, http.MethodPost, url+"/xhr", "")
	if r.status != http.StatusOK || r.body != "o\n" {
		t.Fatalf("open: %d %q", r.status, r.body)
	}
	sjsContentType(t, r, "application/javascript;charset=UTF-8")
	sjsCheckCORS(t, r.header, "")
	sjsCheckNotCached(t, r.header)

	r = n.do(t, http.MethodPost, url+"/xhr_send", `["x"]`, "Origin", "http://page.example")
	if r.status != http.StatusNoContent || r.body != "" {
		t.Fatalf("send: %d %q", r.status, r.body)
	}
	sjsContentType(t, r, "text/plain;charset=UTF-8")
	sjsCheckCORS(t, r.header, "http://page.example")
	sjsCheckNotCached(t, r.header)
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "a[\"x\"]\n" {
		t.Fatalf("poll: %q", r.body)
	}
	sjsCheck405(t, n.do(t, http.MethodGet, url+"/xhr", ""), "POST, OPTIONS", "GET xhr")
	sjsCheck405(t, n.do(t, http.MethodGet, url+"/xhr_send", ""), "POST, OPTIONS", "GET xhr_send")

	// Sending to a session that does not exist.
	sjsCheck404(t, n.do(t, http.MethodPost, n.url("/echo/000/"+sjsSID()+"/xhr_send"), `["x"]`), "invalid session")

	// Invalid and missing JSON.
	url = n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	for body, want := range map[string]string{`["x`: "Broken JSON encoding.", ``: "Payload expected.",
		`{"a":1}`: "Payload expected.", `"x"`: "Payload expected.", `null`: "Payload expected."} {
		r := n.do(t, http.MethodPost, url+"/xhr_send", body)
		if r.status != http.StatusInternalServerError || !strings.Contains(r.body, want) {
			t.Errorf("send %q: %d %q, want 500 %q", body, r.status, r.body, want)
		}
	}
	if r := n.do(t, http.MethodPost, url+"/xhr_send", `["a"]`); r.status != http.StatusNoContent {
		t.Fatalf("send after errors: %d", r.status)
	}
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "a[\"a\"]\n" {
		t.Fatalf("poll: %q", r.body)
	}

	// Any content type.
	url = n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	ctypes := []string{"text/plain", "T", "application/json", "application/xml", "",
		"application/json; charset=utf-8", "text/xml; charset=utf-8", "text/xml"}
	for _, ct := range ctypes {
		if r := n.do(t, http.MethodPost, url+"/xhr_send", `["a"]`, "Content-Type", ct); r.status != http.StatusNoContent {
			t.Errorf("content type %q: %d", ct, r.status)
		}
	}
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "a["+strings.Repeat(`"a",`, len(ctypes)-1)+`"a"]`+"\n" {
		t.Fatalf("poll: %q", r.body)
	}

	// Access-Control-Request-Headers is echoed.
	for hdr, want := range map[string]string{"a, b, c": "a, b, c", "": ""} {
		r := n.do(t, http.MethodPost, n.url("/echo/000/"+sjsSID()+"/xhr"), "", "Access-Control-Request-Headers", hdr)
		sjsCheckCORS(t, r.header, "")
		if got := r.get("Access-Control-Allow-Headers"); got != want {
			t.Errorf("Access-Control-Allow-Headers = %q, want %q", got, want)
		}
	}

	// A send body over the limit.
	big := `["` + strings.Repeat("x", 1<<20) + `"]`
	if r := n.do(t, http.MethodPost, url+"/xhr_send", big); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("huge send: %d", r.status)
	}
}

func TestSockJSXHRStreaming(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	url := n.url("/echo/000/" + sjsSID())
	st := n.stream(t, http.MethodPost, url+"/xhr_streaming")
	if st.resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", st.resp.StatusCode)
	}
	r := sjsResp{header: st.resp.Header}
	sjsContentType(t, r, "application/javascript;charset=UTF-8")
	sjsCheckCORS(t, st.resp.Header, "")
	sjsCheckNotCached(t, st.resp.Header)
	if got := st.read(2049); got != strings.Repeat("h", 2048)+"\n" {
		t.Fatalf("prelude %q", got)
	}
	if got := st.until("\n"); got != "o\n" {
		t.Fatalf("open %q", got)
	}
	if r := n.do(t, http.MethodPost, url+"/xhr_send", `["x"]`); r.status != http.StatusNoContent {
		t.Fatalf("send: %d", r.status)
	}
	if got := st.until("\n"); got != "a[\"x\"]\n" {
		t.Fatalf("message %q", got)
	}
	st.close()

	// The response ends after 4096 bytes (framing included).
	url = n.url("/echo/000/" + sjsSID())
	st = n.stream(t, http.MethodPost, url+"/xhr_streaming")
	st.read(2049)
	st.until("\n")
	msg := `"` + strings.Repeat("x", 128) + `"`
	for i := range 31 {
		if r := n.do(t, http.MethodPost, url+"/xhr_send", "["+msg+"]"); r.status != http.StatusNoContent {
			t.Fatalf("send %d: %d", i, r.status)
		}
		if got := st.until("\n"); got != "a["+msg+"]\n" {
			t.Fatalf("message %d: %q", i, got)
		}
	}
	st.eof()
	// The session goes on in the next request.
	n.do(t, http.MethodPost, url+"/xhr_send", `["after"]`)
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "a[\"after\"]\n" {
		t.Fatalf("after recycling: %q", r.body)
	}
}

func TestSockJSEventSource(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	url := n.url("/echo/000/" + sjsSID())
	st := n.stream(t, http.MethodGet, url+"/eventsource")
	if got := st.resp.Header.Get("Content-Type"); got != "text/event-stream" {
		t.Errorf("Content-Type %q, want exactly text/event-stream", got)
	}
	sjsCheckNotCached(t, st.resp.Header)
	if got := st.read(2); got != "\r\n" {
		t.Fatalf("prelude %q", got)
	}
	if got := st.until("\r\n\r\n"); got != "data: o\r\n\r\n" {
		t.Fatalf("open %q", got)
	}
	n.do(t, http.MethodPost, url+"/xhr_send", `["x"]`)
	if got := st.until("\r\n\r\n"); got != "data: a[\"x\"]\r\n\r\n" {
		t.Fatalf("message %q", got)
	}
	n.do(t, http.MethodPost, url+"/xhr_send", `["  \u0000\n\r "]`)
	if got := st.until("\r\n\r\n"); got != `data: a["  \u0000\n\r "]`+"\r\n\r\n" {
		t.Fatalf("special characters %q", got)
	}
	// sockjs-client decodes the data with decodeURI: "%" goes as %25.
	n.do(t, http.MethodPost, url+"/xhr_send", `["100% %41"]`)
	if got := st.until("\r\n\r\n"); got != `data: a["100%25 %2541"]`+"\r\n\r\n" {
		t.Fatalf("percent %q", got)
	}
	st.close()

	url = n.url("/echo/000/" + sjsSID())
	st = n.stream(t, http.MethodGet, url+"/eventsource")
	st.read(2)
	st.until("\r\n\r\n")
	msg := `"` + strings.Repeat("x", 4096) + `"`
	n.do(t, http.MethodPost, url+"/xhr_send", "["+msg+"]")
	if got := st.until("\r\n\r\n"); got != "data: a["+msg+"]\r\n\r\n" {
		t.Fatalf("long message %.40q", got)
	}
	st.eof()
}

func TestSockJSHTMLFile(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	head := `<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.callback;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>`
	url := n.url("/echo/000/" + sjsSID())
	st := n.stream(t, http.MethodGet, url+"/htmlfile?c=%63allback")
	sjsContentType(t, sjsResp{header: st.resp.Header}, "text/html;charset=UTF-8")
	sjsCheckNotCached(t, st.resp.Header)
	d := st.until("\r\n\r\n")
	if strings.TrimSpace(d) != head || len(d) <= 1024 {
		t.Fatalf("head (%d bytes):\n%s", len(d), d)
	}
	// Byte for byte as sockjs-node pads it: 1024-len+13 spaces, len counted
	// with the template's "{{ callback }}" (14 bytes) rather than the name.
	if want := head + strings.Repeat(" ", 1024-(len(head)-len("callback")+len("{{ callback }}"))+13) + "\r\n\r\n"; d != want {
		t.Fatalf("head:\n%q\nwant\n%q", d, want)
	}
	if len(d) != 1035 {
		t.Fatalf("head of %d bytes, want 1035 (sockjs-node's for the name \"callback\")", len(d))
	}
	if got := st.until("</script>\r\n"); got != "<script>\np(\"o\");\n</script>\r\n" {
		t.Fatalf("open %q", got)
	}
	n.do(t, http.MethodPost, url+"/xhr_send", `["x"]`)
	if got := st.until("</script>\r\n"); got != "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n" {
		t.Fatalf("message %q", got)
	}
	// Nothing a message holds can end the script element.
	n.do(t, http.MethodPost, url+"/xhr_send", `["</script><script>alert(1)</script>"]`)
	got := st.until("</script>\r\n")
	if strings.Count(got, "</script>") != 1 || strings.Contains(got, "<script>alert") {
		t.Fatalf("a message broke out of the script: %q", got)
	}
	st.close()

	// The protocol's test_invalid_callback, and cometgate's bounds.
	for q, want := range map[string]string{"": `"callback" parameter required`, "?c=a(1)": `invalid "callback" parameter`,
		"?c=%20": `invalid "callback" parameter`, "?c=*": `invalid "callback" parameter`, "?c=abc(": `invalid "callback" parameter`,
		"?c=abc%28": `invalid "callback" parameter`,
		"?c=" + strings.Repeat("a", sjsMaxHTMLFileCallbackLen+1): `invalid "callback" parameter`, "?c=": `invalid "callback" parameter`} {
		r := n.do(t, http.MethodGet, n.url("/echo/a/a/htmlfile"+q), "")
		if r.status != http.StatusInternalServerError || r.body != want {
			t.Errorf("htmlfile%s: %d %q", q, r.status, r.body)
		}
	}
	// sockjs-node takes "-" too.
	st = n.stream(t, http.MethodGet, n.url("/echo/000/"+sjsSID()+"/htmlfile?c=a-b_c.d"))
	if d := st.until("\r\n\r\n"); !strings.Contains(d, "var c = parent.a-b_c.d;\n") {
		t.Fatalf("head %q", d)
	}
	st.close()

	url = n.url("/echo/000/" + sjsSID())
	st = n.stream(t, http.MethodGet, url+"/htmlfile?callback=callback")
	st.until("\r\n\r\n")
	st.until("</script>\r\n")
	msg := strings.Repeat("x", 4096)
	n.do(t, http.MethodPost, url+"/xhr_send", `["`+msg+`"]`)
	if got := st.until("</script>\r\n"); got != "<script>\np(\"a[\\\""+msg+"\\\"]\");\n</script>\r\n" {
		t.Fatalf("long message %.60q", got)
	}
	st.eof()
}

func TestSockJSJSONP(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	form := []string{"Content-Type", "application/x-www-form-urlencoded"}
	url := n.url("/echo/000/" + sjsSID())
	r := n.do(t, http.MethodGet, url+"/jsonp?c=%63allback", "")
	if r.status != http.StatusOK || r.body != "/**/callback(\"o\");\r\n" {
		t.Fatalf("open: %d %q", r.status, r.body)
	}
	sjsContentType(t, r, "application/javascript;charset=UTF-8")
	if r.get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("X-Content-Type-Options %q", r.get("X-Content-Type-Options"))
	}
	sjsCheckNotCached(t, r.header)
	r = n.do(t, http.MethodPost, url+"/jsonp_send", "d=%5B%22x%22%5D", form...)
	if r.status != http.StatusOK || r.body != "ok" {
		t.Fatalf("send: %d %q", r.status, r.body)
	}
	sjsContentType(t, r, "text/plain;charset=UTF-8")
	sjsCheckNotCached(t, r.header)
	if r := n.do(t, http.MethodGet, url+"/jsonp?c=%63allback", ""); r.body != "/**/callback(\"a[\\\"x\\\"]\");\r\n" {
		t.Fatalf("poll: %q", r.body)
	}
	sjsCheck405(t, n.do(t, http.MethodPost, url+"/jsonp?c=x", ""), "GET", "POST jsonp")

	// The protocol's test_invalid_callback, and sockjs-node's 32 bytes.
	for q, want := range map[string]string{"": `"callback" parameter required`,
		"?c=alert(document.cookie)//": `invalid "callback" parameter`, "?callback=%3Cscript%3E": `invalid "callback" parameter`,
		"?c=%20": `invalid "callback" parameter`, "?c=*": `invalid "callback" parameter`, "?c=abc(": `invalid "callback" parameter`,
		"?c=abc%28": `invalid "callback" parameter`, "?c=" + strings.Repeat("a", 33): `invalid "callback" parameter`} {
		r := n.do(t, http.MethodGet, n.url("/echo/a/a/jsonp"+q), "")
		if r.status != http.StatusInternalServerError || r.body != want {
			t.Errorf("jsonp%s: %d %q", q, r.status, r.body)
		}
	}
	if r := n.do(t, http.MethodGet, n.url("/echo/000/"+sjsSID()+"/jsonp?c="+strings.Repeat("a", 31)+"-"), ""); r.body != "/**/"+strings.Repeat("a", 31)+"-(\"o\");\r\n" {
		t.Errorf("32-byte callback: %q", r.body)
	}

	// Invalid and missing JSON.
	url = n.url("/echo/000/" + sjsSID())
	if r := n.do(t, http.MethodGet, url+"/jsonp?c=x", ""); r.body != "/**/x(\"o\");\r\n" {
		t.Fatalf("open: %q", r.body)
	}
	r = n.do(t, http.MethodPost, url+"/jsonp_send", "d=%5B%22x", form...)
	if r.status != http.StatusInternalServerError || !strings.Contains(r.body, "Broken JSON encoding.") {
		t.Errorf("broken: %d %q", r.status, r.body)
	}
	for _, data := range []string{"", "d=", "p=p"} {
		r := n.do(t, http.MethodPost, url+"/jsonp_send", data, form...)
		if r.status != http.StatusInternalServerError || !strings.Contains(r.body, "Payload expected.") {
			t.Errorf("send %q: %d %q", data, r.status, r.body)
		}
	}
	if r := n.do(t, http.MethodPost, url+"/jsonp_send", `["x"]`, "Content-Type", "application/octet-stream"); r.status != http.StatusInternalServerError {
		t.Errorf("unsupported content type: %d", r.status)
	}
	n.do(t, http.MethodPost, url+"/jsonp_send", "d=%5B%22b%22%5D", form...)
	if r := n.do(t, http.MethodGet, url+"/jsonp?c=x", ""); r.body != "/**/x(\"a[\\\"b\\\"]\");\r\n" {
		t.Fatalf("poll: %q", r.body)
	}

	// Form and text/plain bodies.
	url = n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodGet, url+"/jsonp?c=x", "")
	if r := n.do(t, http.MethodPost, url+"/jsonp_send", "d=%5B%22abc%22%5D", form...); r.body != "ok" {
		t.Fatalf("form: %q", r.body)
	}
	if r := n.do(t, http.MethodPost, url+"/jsonp_send", `["%61bc"]`, "Content-Type", "text/plain"); r.body != "ok" {
		t.Fatalf("text: %q", r.body)
	}
	if r := n.do(t, http.MethodGet, url+"/jsonp?c=x", ""); r.body != "/**/x(\"a[\\\"abc\\\",\\\"%61bc\\\"]\");\r\n" {
		t.Fatalf("poll: %q", r.body)
	}
	sjsCheck404(t, n.do(t, http.MethodPost, n.url("/echo/000/"+sjsSID()+"/jsonp_send"), "d=%5B%22x%22%5D", form...), "unknown session")
}

func TestSockJSJSONPClose(t *testing.T) {
	n := sjsStartNode(t, nil, nil)
	ep, base := n.endpoint(t, SockJSEndpoint{Prefix: "/close", Mode: SockJSEcho})
	sid := sjsSID()
	url := base + "/000/" + sid
	if r := n.do(t, http.MethodGet, url+"/jsonp?c=x", ""); r.body != "/**/x(\"o\");\r\n" {
		t.Fatalf("open: %q", r.body)
	}
	ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false).sess.Close(gateway.Disconnect{Code: 3000, Reason: "Go away!"})
	for range 2 {
		if r := n.do(t, http.MethodGet, url+"/jsonp?c=x", ""); r.body != "/**/x(\"c[3000,\\\"Go away!\\\"]\");\r\n" {
			t.Fatalf("close: %q", r.body)
		}
	}
}

func TestSockJSCookie(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	check := func(what string, h http.Header, want string) {
		t.Helper()
		c := h.Get("Set-Cookie")
		parts := strings.Split(c, ";")
		if len(parts) < 2 || strings.TrimSpace(parts[0]) != "JSESSIONID="+want || strings.ToLower(strings.TrimSpace(parts[1])) != "path=/" {
			t.Errorf("%s: Set-Cookie %q, want JSESSIONID=%s; path=/", what, c, want)
		}
	}
	base := n.url("/cookie_needed_echo")
	url := base + "/000/" + sjsSID()
	r := n.do(t, http.MethodPost, url+"/xhr", "")
	if r.body != "o\n" {
		t.Fatalf("open: %q", r.body)
	}
	check("xhr", r.header, "dummy")
	r = n.do(t, http.MethodPost, base+"/000/"+sjsSID()+"/xhr", "", "Cookie", "JSESSIONID=abcdef")
	check("xhr with a cookie", r.header, "abcdef")
	r = n.do(t, http.MethodPost, base+"/000/"+sjsSID()+"/xhr", "", "Cookie", "JSESSIONID="+strings.Repeat("x", 300))
	check("xhr with an oversized cookie", r.header, "dummy")
	st := n.stream(t, http.MethodPost, base+"/000/"+sjsSID()+"/xhr_streaming")
	check("xhr_streaming", st.resp.Header, "dummy")
	st.close()
	st = n.stream(t, http.MethodGet, base+"/000/"+sjsSID()+"/eventsource")
	check("eventsource", st.resp.Header, "dummy")
	st.close()
	st = n.stream(t, http.MethodGet, base+"/000/"+sjsSID()+"/htmlfile?c=%63allback")
	check("htmlfile", st.resp.Header, "dummy")
	st.close()
	url = base + "/000/" + sjsSID()
	r = n.do(t, http.MethodGet, url+"/jsonp?c=%63allback", "")
	check("jsonp", r.header, "dummy")
	if r.body != "/**/callback(\"o\");\r\n" {
		t.Fatalf("jsonp open: %q", r.body)
	}
	r = n.do(t, http.MethodPost, url+"/jsonp_send", "d=%5B%22x%22%5D", "Content-Type", "application/x-www-form-urlencoded")
	if r.body != "ok" {
		t.Fatalf("jsonp_send: %q", r.body)
	}
	check("jsonp_send", r.header, "dummy")
	r = n.do(t, http.MethodPost, url+"/xhr_send", `["y"]`)
	check("xhr_send", r.header, "dummy")

	// sockjs-node's h_sid runs first on every session URL but the
	// websocket and on the preflights, so errors and 404s carry the
	// cookie too; the greeting, /info, iframe.html and the websocket
	// carry none.
	for _, path := range []string{"/info", "/a/a/xhr", "/a/a/xhr_send", "/a/a/xhr_streaming"} {
		check("OPTIONS "+path, n.do(t, http.MethodOptions, base+path, "").header, "dummy")
	}
	check("xhr_send, bad body", n.do(t, http.MethodPost, url+"/xhr_send", `["x`).header, "dummy")
	check("xhr_send, unknown session", n.do(t, http.MethodPost, base+"/000/"+sjsSID()+"/xhr_send", `["x"]`).header, "dummy")
	check("jsonp_send, unknown session", n.do(t, http.MethodPost, base+"/000/"+sjsSID()+"/jsonp_send", "d=%5B%5D", "Content-Type", "application/x-www-form-urlencoded").header, "dummy")
	r = n.do(t, http.MethodGet, base+"/000/"+sjsSID()+"/jsonp", "")
	check("jsonp, no callback", r.header, "dummy")
	sjsCheckNotCached(t, r.header)
	r = n.do(t, http.MethodGet, base+"/000/"+sjsSID()+"/htmlfile?c=a(", "")
	check("htmlfile, bad callback", r.header, "dummy")
	sjsCheckNotCached(t, r.header)
	sjsCheckNoCookie(t, n.do(t, http.MethodGet, base, ""))
	resp := n.raw(t, "GET /cookie_needed_echo/000/%s/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n", sjsSID())
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Set-Cookie") != "" {
		t.Errorf("websocket: %d, Set-Cookie %q", resp.StatusCode, resp.Header.Get("Set-Cookie"))
	}

	// Without CookieNeeded: no cookie anywhere.
	r = n.do(t, http.MethodPost, n.url("/echo/000/"+sjsSID()+"/xhr"), "")
	sjsCheckNoCookie(t, r)
	sjsCheckNoCookie(t, n.do(t, http.MethodGet, base+"/info", ""))
	sjsCheckNoCookie(t, n.do(t, http.MethodGet, base+"/iframe.html", ""))
}

func TestSockJSWebSocket(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	c := sjsDialWS(t, n.url("/echo/000/"+sjsSID()+"/websocket"), nil)
	if got := c.recv(); got != "o" {
		t.Fatalf("open %q", got)
	}
	c.send("")   // ignored
	c.send("[]") // ignored: no messages (the current protocol's test_empty_frame)
	c.send(`["a"]`)
	if got := c.recv(); got != `a["a"]` {
		t.Fatalf("echo %q", got)
	}
	c.send(`"single"`)
	if got := c.recv(); got != `a["single"]` {
		t.Fatalf("single-string message: %q", got)
	}

	// A session id may be used by two connections at once, and again.
	url := n.url("/echo/000/" + sjsSID() + "/websocket")
	w1, w2 := sjsDialWS(t, url, nil), sjsDialWS(t, url, nil)
	if w1.recv() != "o" || w2.recv() != "o" {
		t.Fatal("open frames")
	}
	w1.send(`["a"]`)
	w2.send(`["b"]`)
	if a, b := w1.recv(), w2.recv(); a != `a["a"]` || b != `a["b"]` {
		t.Fatalf("reuse: %q %q", a, b)
	}
	_ = w1.conn.Close()
	_ = w2.conn.Close()
	w3 := sjsDialWS(t, url, nil)
	w3.recv()
	w3.send(`["c"]`)
	if got := w3.recv(); got != `a["c"]` {
		t.Fatalf("after reuse %q", got)
	}

	// Broken JSON ends the connection as sockjs-node's does: no c[...]
	// frame, the websocket closed with 3000 "Broken framing.".
	b := sjsDialWS(t, n.url("/echo/000/"+sjsSID()+"/websocket"), nil)
	b.recv()
	b.send(`["a`)
	if code, reason := b.closedWith(); code != 3000 || reason != "Broken framing." {
		t.Fatalf("broken framing: closed with %d %q", code, reason)
	}

	// Disabled websocket: 404, and info says so.
	sjsCheck404(t, n.do(t, http.MethodGet, n.url("/disabled_websocket_echo/0/0/websocket"), ""), "disabled websocket")
	sjsCheck404(t, n.do(t, http.MethodGet, n.url("/disabled_websocket_echo/websocket"), ""), "disabled raw websocket")
}

func TestSockJSWebSocketClose(t *testing.T) {
	n := sjsStartNode(t, nil, nil)
	ep, base := n.endpoint(t, SockJSEndpoint{Prefix: "/close", Mode: SockJSEcho, Websocket: true})
	_ = ep
	c := sjsDialWS(t, base+"/000/"+sjsSID()+"/websocket", nil)
	if got := c.recv(); got != "o" {
		t.Fatalf("open %q", got)
	}
	// Websocket sessions are not kept by the endpoint; close it through
	// its gateway session, as a node shutdown does.
	sjsWaitFor(t, "the gateway session", func() bool { return n.gw.SessionCount() == 1 })
	// The shutdown is waited for here: canceling its context as the test
	// returns, while the gateway still waited for the session's last
	// goroutines (the client sees the close frame before they end),
	// failed the shutdown, and the node's cleanup with it (a CI run).
	sctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- n.gw.Shutdown(sctx) }()
	if got := c.recv(); got != `c[3000,"server shutting down"]` {
		t.Fatalf("close frame %q", got)
	}
	c.closed()
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestSockJSWebSocketHTTPErrors(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	// sockjs-node's answer to what is no upgrade (faye-websocket's
	// isWebSocket), on the session and the raw websocket.
	url := n.url("/echo/0/0/websocket")
	for _, u := range []string{url, n.url("/echo/websocket")} {
		for _, hdr := range [][]string{nil, {"Upgrade", "WebSocket", "Connection", "close"}, {"Upgrade", "h2c", "Connection", "Upgrade"}} {
			r := n.do(t, http.MethodGet, u, "", hdr...)
			if r.status != http.StatusBadRequest || r.body != "Not a valid websocket request" {
				t.Errorf("GET %s %v: %d %q", u, hdr, r.status, r.body)
			}
		}
	}
	sjsCheck405(t, n.do(t, http.MethodPost, url, "", "Upgrade", "WebSocket", "Connection", "Upgrade"), "GET", "POST upgrade")
	sjsCheck405(t, n.do(t, http.MethodPost, url, ""), "GET", "POST")
	sjsCheck405(t, n.do(t, http.MethodPost, n.url("/echo/websocket"), ""), "GET", "POST raw")

	// Hybi-07, hybi-08 and RFC 6455 handshakes, and Firefox 6's
	// "Connection: keep-alive, Upgrade".
	for _, tc := range []struct{ version, connection string }{{"7", "Upgrade"}, {"8", "Upgrade"}, {"13", "Upgrade"}, {"7", "keep-alive, Upgrade"}} {
		resp := n.raw(t, "GET /echo/000/%s/websocket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: %s\r\n"+
			"Sec-WebSocket-Version: %s\r\nSec-WebSocket-Origin: http://asd\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n",
			sjsSID(), n.http.Listener.Addr(), tc.connection, tc.version)
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "HSmrc0sMlYUkAGmm5OPpG2HaGWk=" ||
			!strings.EqualFold(resp.Header.Get("Connection"), "upgrade") || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
			resp.Header.Get("Content-Length") != "" {
			t.Errorf("version %s / %s: %d %v", tc.version, tc.connection, resp.StatusCode, resp.Header)
		}
	}

	// The raw websocket takes RFC 6455 only (8 or 13), as sockjs-node's.
	for _, version := range []string{"7", "", "12"} {
		r := n.do(t, http.MethodGet, n.url("/echo/websocket"), "", "Upgrade", "websocket", "Connection", "Upgrade",
			"Sec-WebSocket-Version", version, "Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw==")
		if r.status != http.StatusBadRequest || r.body != "Only supported WebSocket protocol is RFC 6455." {
			t.Errorf("raw websocket version %q: %d %q", version, r.status, r.body)
		}
	}
	if resp := n.raw(t, "GET /echo/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n"); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("raw websocket version 8: %d", resp.StatusCode)
	}

	// Origins the node does not allow are refused before the handshake.
	n2 := sjsStartNode(t, sjsTestEndpoints(), func(_ *gateway.Config, o *Options) { o.AllowedOrigins = []string{"http://good.example"} })
	r := n2.do(t, http.MethodGet, n2.url("/echo/0/0/websocket"), "", "Upgrade", "websocket", "Connection", "Upgrade",
		"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw==", "Origin", "http://evil.example")
	if r.status != http.StatusForbidden {
		t.Errorf("cross-site websocket: %d", r.status)
	}
}

func TestSockJSRawWebSocket(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	c := sjsDialWS(t, n.url("/echo/websocket"), nil)
	c.send("Hello world!\uffff")
	if got := c.recv(); got != "Hello world!\uffff" {
		t.Fatalf("echo %q", got)
	}
	// Pubsub: the native wire format, frame for frame.
	p := sjsDialWS(t, n.url("/pubsub/websocket"), nil)
	if hello := p.recv(); !strings.Contains(hello, `"t":"hello"`) {
		t.Fatalf("hello %q", hello)
	}
	p.send(`{"op":"ping","id":7}`)
	if got := p.recv(); !strings.Contains(got, `"t":"ok","id":7`) {
		t.Fatalf("ping answer %q", got)
	}
}

func TestSockJSJSONEncoding(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	// The server escapes what browsers mangle.
	var raw, esc strings.Builder
	esc.WriteByte('"')
	for r := rune(255); r < 65536; r++ {
		if r >= 0xd800 && r <= 0xdfff {
			continue // surrogates are not characters in UTF-8
		}
		if r >= 0x200c && r <= 0x200f || r >= 0x2028 && r <= 0x202f || r >= 0x2060 && r <= 0x206f || r >= 0xfff0 {
			raw.WriteRune(r)
			fmt.Fprintf(&esc, `\u%04x`, r)
		}
	}
	esc.WriteByte('"')
	url := n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	if r := n.do(t, http.MethodPost, url+"/xhr_send", `["`+raw.String()+`"]`); r.status != http.StatusNoContent {
		t.Fatalf("send: %d", r.status)
	}
	r := n.do(t, http.MethodPost, url+"/xhr", "")
	if got := strings.TrimSpace(r.body); got != "a["+esc.String()+"]" {
		t.Fatalf("server encoding:\n got %.200q\nwant %.200q", got, "a["+esc.String()+"]")
	}

	// The server decodes what clients escape.
	var cli strings.Builder
	cli.WriteByte('"')
	for r := 0; r < 65536; r++ {
		if r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0xad || r >= 0x600 && r <= 0x604 || r >= 0x2000 && r <= 0x20ff || r >= 0xfff0 {
			fmt.Fprintf(&cli, `\u%04x`, r)
		}
	}
	cli.WriteByte('"')
	url = n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	if r := n.do(t, http.MethodPost, url+"/xhr_send", "["+cli.String()+"]"); r.status != http.StatusNoContent {
		t.Fatalf("send: %d", r.status)
	}
	r = n.do(t, http.MethodPost, url+"/xhr", "")
	body := strings.TrimSpace(r.body)
	var got, want []string
	if err := json.Unmarshal([]byte(body[1:]), &got); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	if err := json.Unmarshal([]byte("["+cli.String()+"]"), &want); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != want[0] {
		t.Fatalf("client escapes did not come back as sent")
	}
}

func TestSockJSHandlingClose(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	ep := sjsEndpointOf(t, n, "/echo")

	// A second streaming request gets 2010 and ends.
	url := n.url("/echo/000/" + sjsSID())
	r1 := n.stream(t, http.MethodPost, url+"/xhr_streaming")
	r1.read(2049)
	if got := r1.until("\n"); got != "o\n" {
		t.Fatalf("open %q", got)
	}
	r2 := n.stream(t, http.MethodPost, url+"/xhr_streaming")
	r2.read(2049)
	if got := r2.until("\n"); got != "c[2010,\"Another connection still open\"]\n" {
		t.Fatalf("second %q", got)
	}
	r2.eof()

	// Aborting the first interrupts the session: 1002 from then on.
	r1.close()
	sid := url[strings.LastIndex(url, "/")+1:]
	sjsWaitFor(t, "the session to notice the abort", func() bool {
		s := ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false)
		return s.sess.Reason() == sjsInterrupted
	})
	r3 := n.stream(t, http.MethodPost, url+"/xhr_streaming")
	r3.read(2049)
	if got := r3.until("\n"); got != "c[1002,\"Connection interrupted\"]\n" {
		t.Fatalf("after abort %q", got)
	}
	r3.eof()

	// The same for polling.
	url = n.url("/echo/000/" + sjsSID())
	sid = url[strings.LastIndex(url, "/")+1:]
	n.do(t, http.MethodPost, url+"/xhr", "")
	_, abort := n.async(t, http.MethodPost, url+"/xhr")
	waitAttached(t, ep, url)
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "c[2010,\"Another connection still open\"]\n" {
		t.Fatalf("second poll %q", r.body)
	}
	abort()
	sjsWaitFor(t, "the session to notice the abort", func() bool {
		s := ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false)
		return s.sess.Reason() == sjsInterrupted
	})
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "c[1002,\"Connection interrupted\"]\n" {
		t.Fatalf("after abort %q", r.body)
	}
}

func TestSockJSHeartbeat(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/hb", Mode: SockJSEcho, Websocket: true, HeartbeatDelay: 200 * time.Millisecond}}, nil)
	url := n.url("/hb/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	// An idle poll ends with a heartbeat.
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "h\n" {
		t.Fatalf("idle poll %q", r.body)
	}
	st := n.stream(t, http.MethodGet, n.url("/hb/000/"+sjsSID()+"/eventsource"))
	st.read(2)
	st.until("\r\n\r\n")
	for range 3 {
		if got := st.until("\r\n\r\n"); got != "data: h\r\n\r\n" {
			t.Fatalf("heartbeat %q", got)
		}
	}
	// On a websocket the heartbeat is a ping, and no "h" frame, as
	// sockjs-node's.
	c := sjsDialWS(t, n.url("/hb/000/"+sjsSID()+"/websocket"), nil)
	c.recv()
	for range 3 {
		if f := c.frame(); f.Header.OpCode != ws.OpPing {
			t.Fatalf("websocket heartbeat: %v %q", f.Header.OpCode, f.Payload)
		}
	}
}

func TestSockJSExpiry(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/x", Mode: SockJSPubSub, DisconnectDelay: 200 * time.Millisecond}}, nil)
	ep := sjsEndpointOf(t, n, "/x")
	sid := sjsSID()
	url := n.url("/x/000/" + sid)
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("open: %q", r.body)
	}
	// Nobody comes back: the session and its gateway session end.
	sjsWaitFor(t, "the session to expire", func() bool {
		return ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false) == nil && n.gw.SessionCount() == 0
	})
	sjsCheck404(t, n.do(t, http.MethodPost, url+"/xhr_send", `["x"]`), "send after expiry")
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("same id after expiry: %q", r.body)
	}
	// A session opened and never polled again expires too.
	n.do(t, http.MethodPost, n.url("/x/000/"+sjsSID()+"/xhr"), "")
	sjsWaitFor(t, "every session to expire", func() bool { return n.gw.SessionCount() == 0 })
}

func TestSockJSHTTP11Streaming(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(sjsWait))
	br := bufio.NewReader(conn)
	// The greeting has a length and the connection stays open.
	for range 2 {
		fmt.Fprintf(conn, "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 19)
		if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != "Welcome to SockJS!\n" || resp.ContentLength != 19 {
			t.Fatalf("greeting %q %v len %d", b, err, resp.ContentLength)
		}
		resp.Body.Close()
	}
	// A stream is chunked.
	fmt.Fprintf(conn, "POST /echo/000/%s/xhr_streaming HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", sjsSID())
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.Header.Get("Content-Length") != "" {
		t.Fatalf("streaming answer: TE %v Content-Length %q", resp.TransferEncoding, resp.Header.Get("Content-Length"))
	}
	b := make([]byte, 2049+2)
	if _, err := io.ReadFull(resp.Body, b); err != nil || string(b[2049:]) != "o\n" {
		t.Fatalf("stream %q: %v", b[2040:], err)
	}

	// HTTP/1.0 has no chunking: the stream ends with the connection.
	resp = n.raw(t, "POST /echo/000/%s/xhr_streaming HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", sjsSID())
	if len(resp.TransferEncoding) != 0 || resp.Header.Get("Content-Length") != "" || !resp.Close {
		t.Fatalf("HTTP/1.0 stream: TE %v Content-Length %q close %v", resp.TransferEncoding, resp.Header.Get("Content-Length"), resp.Close)
	}
	if _, err := io.ReadFull(resp.Body, b); err != nil || b[0] != 'h' || string(b[2049:]) != "o\n" {
		t.Fatalf("HTTP/1.0 stream %q: %v", b[2040:], err)
	}
}

// The routes as sockjs-node 0.3.24 dispatches them (lib/sockjs.js): one
// trailing "/" is allowed on every URL, the path is matched as sent
// (percent-encoded), the methods of a known URL are in Allow.
func TestSockJSRoutes(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	if r := n.do(t, http.MethodGet, n.url("/echo/info/"), ""); r.status != http.StatusOK || !strings.HasPrefix(r.body, `{"websocket":true,`) {
		t.Errorf("info/: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodGet, n.url("/echo/iframe.html/"), ""); r.status != http.StatusOK {
		t.Errorf("iframe.html/: %d", r.status)
	}
	// The route's unescaped "." takes any character before "html".
	if r := n.do(t, http.MethodGet, n.url("/echo/iframe-html"), ""); r.status != http.StatusOK {
		t.Errorf("iframe-html: %d", r.status)
	}
	for _, suffix := range []string{"/info//", "/iframe.html//", "/iframe%41.html", "/a/a/xhr//", "/IFRAME.HTML/", "/a/b/c/d/xhr"} {
		sjsCheck404(t, n.do(t, http.MethodGet, n.url("/echo"+suffix), ""), suffix)
	}
	sid := sjsSID()
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr/"), ""); r.body != "o\n" {
		t.Fatalf("xhr/: %q", r.body)
	}
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr_send/"), `["a"]`); r.status != http.StatusNoContent {
		t.Fatalf("xhr_send/: %d", r.status)
	}
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr"), ""); r.body != "a[\"a\"]\n" {
		t.Fatalf("poll: %q", r.body)
	}
	// Ids are taken as sent: "%2E" is no dot, "%2F" no slash.
	for _, id := range []string{"a%2Eb", "a%2Fb"} {
		if r := n.do(t, http.MethodPost, n.url("/echo/000/"+id+"/xhr"), ""); r.status != http.StatusOK || r.body != "o\n" {
			t.Errorf("session %s: %d %q", id, r.status, r.body)
		}
	}

	allow := map[string]string{
		"/info": "OPTIONS, GET", "/iframe.html": "GET", "/websocket": "GET",
		"/a/a/xhr": "POST, OPTIONS", "/a/a/xhr_send": "POST, OPTIONS", "/a/a/xhr_streaming": "POST, OPTIONS",
		"/a/a/eventsource": "GET", "/a/a/htmlfile": "GET", "/a/a/jsonp": "GET", "/a/a/jsonp_send": "POST",
		"/a/a/websocket": "GET",
	}
	for path, methods := range allow {
		method := http.MethodPut
		sjsCheck405(t, n.do(t, method, n.url("/echo"+path), ""), methods, method+" "+path)
	}
	sjsCheck405(t, n.do(t, http.MethodHead, n.url("/echo"), ""), "GET", "HEAD greeting")

	// An endpoint without websockets: GET is a cacheable 404, and other
	// methods 405.
	for _, path := range []string{"/websocket", "/0/0/websocket", "/0/0/websocket/"} {
		r := n.do(t, http.MethodGet, n.url("/disabled_websocket_echo"+path), "")
		sjsCheck404(t, r, "disabled "+path)
		if !strings.HasPrefix(r.get("Cache-Control"), "public, max-age=") || r.get("Expires") == "" {
			t.Errorf("disabled %s: Cache-Control %q Expires %q", path, r.get("Cache-Control"), r.get("Expires"))
		}
		sjsCheck405(t, n.do(t, http.MethodPost, n.url("/disabled_websocket_echo"+path), ""), "GET", "POST disabled "+path)
	}
}

// CORS answers follow the node's allowed Origins (the admission gate): an
// Origin the node does not allow gets 403 and no Access-Control-Allow-*
// header, on every URL that answers CORS; null is answered without
// credentials even where it is allowed.
func TestSockJSCORSOrigins(t *testing.T) {
	type req struct{ method, path, body string }
	corsURLs := func(sid string) []req {
		return []req{
			{http.MethodGet, "/echo/info", ""},
			{http.MethodOptions, "/echo/info", ""},
			{http.MethodOptions, "/echo/a/a/xhr", ""},
			{http.MethodOptions, "/echo/a/a/xhr_send", ""},
			{http.MethodOptions, "/echo/a/a/xhr_streaming", ""},
			{http.MethodPost, "/echo/000/" + sjsSID() + "/xhr", ""}, // a new session: answered at once
			{http.MethodPost, "/echo/000/" + sid + "/xhr_send", `["x"]`},
		}
	}
	noCORS := func(t *testing.T, what string, h http.Header) {
		t.Helper()
		for k := range h {
			if strings.HasPrefix(k, "Access-Control-Allow-") {
				t.Errorf("%s: %s: %q on a refused answer", what, k, h.Get(k))
			}
		}
	}

	n := sjsStartNode(t, sjsTestEndpoints(), func(_ *gateway.Config, o *Options) { o.AllowedOrigins = []string{"http://good.example"} })
	sid := sjsSID()
	for _, origin := range []string{"http://evil.example", "null", "http://good.example.evil.example"} {
		for _, q := range corsURLs(sid) {
			r := n.do(t, q.method, n.url(q.path), q.body, "Origin", origin)
			what := q.method + " " + q.path + " from " + origin
			if r.status != http.StatusForbidden || r.body != "origin not allowed: "+origin {
				t.Errorf("%s: %d %q, want 403", what, r.status, r.body)
			}
			noCORS(t, what, r.header)
		}
		st := n.stream(t, http.MethodGet, n.url("/echo/000/"+sjsSID()+"/eventsource"), "Origin", origin)
		if st.resp.StatusCode != http.StatusForbidden {
			t.Errorf("eventsource from %s: %d", origin, st.resp.StatusCode)
		}
		noCORS(t, "eventsource from "+origin, st.resp.Header)
		st.close()
	}
	// The allowed one is echoed with credentials, on the same URLs.
	n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr"), "")
	for _, q := range corsURLs(sid) {
		r := n.do(t, q.method, n.url(q.path), q.body, "Origin", "http://good.example")
		if r.status >= 300 {
			t.Fatalf("%s %s: %d %q", q.method, q.path, r.status, r.body)
		}
		sjsCheckCORS(t, r.header, "http://good.example")
	}

	// With every Origin allowed: null gets null, without credentials
	// (eventsource: "*", as sockjs-node's eventsource); no Origin gets "*",
	// without credentials.
	n = sjsStartNode(t, sjsTestEndpoints(), nil)
	sid = sjsSID()
	n.do(t, http.MethodPost, n.url("/echo/000/"+sid+"/xhr"), "")
	for _, origin := range []string{"null", ""} {
		for _, q := range corsURLs(sid) {
			var hdr []string
			if origin != "" {
				hdr = []string{"Origin", origin}
			}
			r := n.do(t, q.method, n.url(q.path), q.body, hdr...)
			if r.status >= 300 {
				t.Fatalf("%s %s: %d %q", q.method, q.path, r.status, r.body)
			}
			sjsCheckCORS(t, r.header, origin)
		}
	}
	st := n.stream(t, http.MethodGet, n.url("/echo/000/"+sjsSID()+"/eventsource"), "Origin", "null")
	if got, creds := st.resp.Header.Get("Access-Control-Allow-Origin"), st.resp.Header.Get("Access-Control-Allow-Credentials"); got != "*" || creds != "" {
		t.Errorf("eventsource from null: %q credentials %q, want * and none", got, creds)
	}
	st.close()
	st = n.stream(t, http.MethodGet, n.url("/echo/000/"+sjsSID()+"/eventsource"), "Origin", "http://page.example")
	sjsCheckCORS(t, st.resp.Header, "http://page.example")
	st.close()
	// The protocol's test_options_null_origin: 204 (or 200), no body, null.
	r := n.do(t, http.MethodOptions, n.url("/echo/info"), "", "Origin", "null", "Access-Control-Request-Method", "POST")
	if r.status != http.StatusNoContent || r.body != "" || r.get("Access-Control-Allow-Origin") != "null" {
		t.Errorf("OPTIONS info from null: %d %q %q", r.status, r.body, r.get("Access-Control-Allow-Origin"))
	}
}

// sjsCloseEndpoint is the protocol test suite's "close" service.
func sjsCloseEndpoint() SockJSEndpoint {
	return SockJSEndpoint{Prefix: "/close", Mode: SockJSClose, Websocket: true, CloseCode: 3000, CloseReason: "Go away!"}
}

// A close endpoint opens every session and closes it at once, on every
// transport, as the protocol tests' close service (Protocol.test_closeSession,
// HandlingClose.test_close_frame, Http10/Http11.test_streaming,
// Websocket.test_close, RawWebsocket.test_close, JsonPolling.test_close).
func TestSockJSCloseMode(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{sjsCloseEndpoint(), {Prefix: "/bye", Mode: SockJSClose, Websocket: true}}, nil)
	const closed = `c[3000,"Go away!"]`

	trans := n.url("/close/000/" + sjsSID())
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.status != http.StatusOK || r.body != "o\n" {
		t.Fatalf("open: %d %q", r.status, r.body)
	}
	for range 2 {
		if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.status != http.StatusOK || r.body != closed+"\n" {
			t.Fatalf("after open: %d %q", r.status, r.body)
		}
	}
	// A send to the closed session is taken and dropped, as sockjs-node's.
	if r := n.do(t, http.MethodPost, trans+"/xhr_send", `["x"]`); r.status != http.StatusNoContent {
		t.Errorf("send: %d %q", r.status, r.body)
	}

	trans = n.url("/close/000/" + sjsSID())
	if r := n.do(t, http.MethodGet, trans+"/jsonp?c=x", ""); r.body != "/**/x(\"o\");\r\n" {
		t.Fatalf("jsonp open: %q", r.body)
	}
	for range 2 {
		if r := n.do(t, http.MethodGet, trans+"/jsonp?c=x", ""); r.body != "/**/x(\"c[3000,\\\"Go away!\\\"]\");\r\n" {
			t.Fatalf("jsonp: %q", r.body)
		}
	}

	// A stream gets both frames and ends; the next one the close frame.
	trans = n.url("/close/000/" + sjsSID())
	r1 := n.stream(t, http.MethodPost, trans+"/xhr_streaming")
	r1.read(2049)
	if got := r1.until("\n"); got != "o\n" {
		t.Fatalf("open %q", got)
	}
	if got := r1.until("\n"); got != closed+"\n" {
		t.Fatalf("close %q", got)
	}
	r1.eof()
	r2 := n.stream(t, http.MethodPost, trans+"/xhr_streaming")
	r2.read(2049)
	if got := r2.until("\n"); got != closed+"\n" {
		t.Fatalf("second request %q", got)
	}
	r2.eof()

	es := n.stream(t, http.MethodGet, n.url("/close/000/"+sjsSID()+"/eventsource"))
	if got := es.read(2) + es.until("\r\n\r\n") + es.until("\r\n\r\n"); got != "\r\ndata: o\r\n\r\ndata: "+closed+"\r\n\r\n" {
		t.Fatalf("eventsource %q", got)
	}
	es.eof()
	hf := n.stream(t, http.MethodGet, n.url("/close/000/"+sjsSID()+"/htmlfile?c=cb"))
	hf.until("\r\n\r\n")
	if got := hf.until("</script>\r\n") + hf.until("</script>\r\n"); got != "<script>\np(\"o\");\n</script>\r\n<script>\np(\"c[3000,\\\"Go away!\\\"]\");\n</script>\r\n" {
		t.Fatalf("htmlfile %q", got)
	}
	hf.eof()

	// HTTP/1.0: the stream ends with the connection.
	resp := n.raw(t, "POST /close/000/%s/xhr_streaming HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", sjsSID())
	body, err := io.ReadAll(resp.Body)
	if err != nil || len(resp.TransferEncoding) != 0 || string(body) != strings.Repeat("h", 2048)+"\no\n"+closed+"\n" {
		t.Fatalf("HTTP/1.0 stream: TE %v %q %v", resp.TransferEncoding, body, err)
	}

	// The session websocket: o, the close frame, then a normal closure.
	c := sjsDialWS(t, n.url("/close/000/"+sjsSID()+"/websocket"), nil)
	if got := c.recv(); got != "o" {
		t.Fatalf("websocket open %q", got)
	}
	if got := c.recv(); got != closed {
		t.Fatalf("websocket close frame %q", got)
	}
	if code, reason := c.closedWith(); code != 1000 || reason != "Normal closure" {
		t.Fatalf("websocket closed with %d %q", code, reason)
	}
	// The raw websocket: closed with the code and reason, no message.
	raw := sjsDialWS(t, n.url("/close/websocket"), nil)
	if code, reason := raw.closedWith(); code != 3000 || reason != "Go away!" {
		t.Fatalf("raw websocket closed with %d %q", code, reason)
	}

	// The defaults: sockjs-node's close().
	if r := n.do(t, http.MethodPost, n.url("/bye/000/"+sjsSID()+"/xhr_streaming"), ""); !strings.HasSuffix(r.body, "o\nc[1000,\"Normal closure\"]\n") {
		t.Fatalf("default close: %q", r.body)
	}
	sjsWaitFor(t, "every session to end", func() bool { return n.gw.SessionCount() == 0 })

	// The admission gate still decides.
	n2 := sjsStartNode(t, []SockJSEndpoint{sjsCloseEndpoint()}, func(_ *gateway.Config, o *Options) { o.AllowedOrigins = []string{"http://good.example"} })
	if r := n2.do(t, http.MethodPost, n2.url("/close/000/"+sjsSID()+"/xhr"), "", "Origin", "http://evil.example"); r.status != http.StatusForbidden {
		t.Errorf("close endpoint, foreign origin: %d %q", r.status, r.body)
	}
}

func TestSockJSEndpointValidateClose(t *testing.T) {
	for _, tc := range []struct {
		e    SockJSEndpoint
		want string // "" valid, else a part of the error
	}{
		{sjsCloseEndpoint(), ""},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose}, ""},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseCode: 1000}, ""},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseCode: 4999, CloseReason: strings.Repeat("é", 61) + "x"}, ""},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseCode: 2999}, "close_code: 2999"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseCode: 1002}, "close_code: 1002"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseCode: 5000}, "close_code: 5000"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseCode: -1}, "close_code"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseReason: strings.Repeat("x", 124)}, "close_reason"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, CloseReason: "\xff"}, "close_reason"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSClose, Target: "redis"}, "target"},
		{SockJSEndpoint{Prefix: "/s", Mode: SockJSEcho, CloseCode: 3000}, "only a close endpoint"},
		{SockJSEndpoint{Prefix: "/s", CloseReason: "bye"}, "only a close endpoint"},
		{SockJSEndpoint{Prefix: "/s", Mode: "shut"}, "not one of pubsub, echo, tcp, close"},
	} {
		err := tc.e.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.e, err, tc.want)
		}
	}
}

// A request that comes as soon as the response carrying the close frame
// ended gets the close frame, although the session may still be finishing
// then (it used to get c[1002,"Connection interrupted"] now and then).
func TestSockJSCloseFrameRightAfterClose(t *testing.T) {
	n := sjsStartNode(t, nil, nil)
	ep, base := n.endpoint(t, SockJSEndpoint{Prefix: "/close", Mode: SockJSEcho})
	for i := range 100 {
		sid := sjsSID()
		trans := base + "/000/" + sid
		if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "o\n" {
			t.Fatalf("open: %q", r.body)
		}
		poll, _ := n.async(t, http.MethodPost, trans+"/xhr")
		waitAttached(t, ep, trans)
		ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false).sess.Close(gateway.Disconnect{Code: 3000, Reason: "Go away!"})
		if r := poll.wait(t); r.body != "c[3000,\"Go away!\"]\n" {
			t.Fatalf("%d: the poll that held the session: %q", i, r.body)
		}
		if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "c[3000,\"Go away!\"]\n" {
			t.Fatalf("%d: the next poll: %q", i, r.body)
		}
	}
}

// The send answers as sockjs-node's xhr_send and jsonp_send give them: the
// body is checked first (so a bad body to an unknown session is a 500,
// not a 404), with its media type as sockjs-node reads it.
func TestSockJSSendAnswers(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	form := []string{"Content-Type", "application/x-www-form-urlencoded"}
	unknown := n.url("/echo/000/" + sjsSID())
	for _, tc := range []struct {
		path, body string
		hdr        []string
		status     int
		answer     string
	}{
		{"/xhr_send", `["x`, nil, 500, "Broken JSON encoding."},
		{"/xhr_send", ``, nil, 500, "Payload expected."},
		{"/xhr_send", `  `, nil, 500, "Broken JSON encoding."}, // JSON.parse("  ") throws
		{"/xhr_send", "\f[\"x\"]", nil, 500, "Broken JSON encoding."},
		{"/xhr_send", `["x"]`, []string{"Content-Type", "application/x-www-form-urlencoded"}, 500, "Payload expected."},
		{"/xhr_send", `["x"]`, []string{"Content-Type", "Text/Plain"}, 500, "Payload expected."},
		{"/xhr_send", `["x"]`, nil, 404, "404 Error: Page not found\n"},
		{"/jsonp_send", "d=%5B%22x", form, 500, "Broken JSON encoding."},
		{"/jsonp_send", "d=", form, 500, "Payload expected."},
		{"/jsonp_send", `["x"]`, []string{"Content-Type", "application/json"}, 500, "Payload expected."},
		{"/jsonp_send", `""`, []string{"Content-Type", "text/plain"}, 500, "Payload expected."},
		{"/jsonp_send", `"[\"x"`, []string{"Content-Type", "text/plain"}, 500, "Broken JSON encoding."},
		{"/jsonp_send", "d=%5B%22x%22%5D", form, 404, "404 Error: Page not found\n"},
	} {
		r := n.do(t, http.MethodPost, unknown+tc.path, tc.body, tc.hdr...)
		if r.status != tc.status || r.body != tc.answer {
			t.Errorf("%s %q %v: %d %q, want %d %q", tc.path, tc.body, tc.hdr, r.status, r.body, tc.status, tc.answer)
		}
	}

	// A text/plain jsonp_send body that is a JSON string is read again,
	// as sockjs-node's.
	url := n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodGet, url+"/jsonp?c=x", "")
	if r := n.do(t, http.MethodPost, url+"/jsonp_send", `"[\"quoted\"]"`, "Content-Type", "text/plain;charset=UTF-8"); r.status != http.StatusOK || r.body != "ok" {
		t.Fatalf("quoted body: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodPost, url+"/jsonp_send", `d=%22%5B%5C%22x%5C%22%5D%22`, form...); r.status != 500 || r.body != "Payload expected." {
		t.Fatalf("quoted form field: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodGet, url+"/jsonp?c=x", ""); r.body != "/**/x(\"a[\\\"quoted\\\"]\");\r\n" {
		t.Fatalf("poll: %q", r.body)
	}

	// A websocket message of whitespace alone is no empty message: broken
	// framing, as sockjs-node's JSON.parse says.
	c := sjsDialWS(t, n.url("/echo/000/"+sjsSID()+"/websocket"), nil)
	c.recv()
	c.send("  ")
	if code, reason := c.closedWith(); code != 3000 || reason != "Broken framing." {
		t.Fatalf("whitespace message: closed with %d %q", code, reason)
	}
}

// Messages are quoted byte for byte as sockjs-node's utils.quote does:
// only its ranges escaped, characters beyond U+FFFF as surrogate pairs.
func TestSockJSQuoting(t *testing.T) {
	n := sjsStartNode(t, sjsTestEndpoints(), nil)
	url := n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	msg := "\u2000\u200b\u200c\u20ac\u2070\u206f\ufeff\ufff0\U0001f600 é\u007f\u0001\u2028"
	body, _ := json.Marshal([]string{msg})
	if r := n.do(t, http.MethodPost, url+"/xhr_send", string(body)); r.status != http.StatusNoContent {
		t.Fatalf("send: %d", r.status)
	}
	want := "a[\"\u2000\u200b\\u200c\u20ac\u2070\\u206f\ufeff\\ufff0\\ud83d\\ude00 é\u007f\\u0001\\u2028\"]\n"
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != want {
		t.Fatalf("quoted as\n%q\nwant\n%q", r.body, want)
	}
}

// A closed session keeps answering with its close frame for a disconnect
// delay after the last request that asked, as sockjs-node re-arms its
// timer at every receiving request.
func TestSockJSClosedSessionLifetime(t *testing.T) {
	n := sjsStartNode(t, nil, nil)
	ep, base := n.endpoint(t, SockJSEndpoint{Prefix: "/close", Mode: SockJSClose, CloseCode: 3000, CloseReason: "Go away!", DisconnectDelay: 2 * time.Second})
	sid := sjsSID()
	trans := base + "/000/" + sid
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("open: %q", r.body)
	}
	// Past the delay in all, each poll well within it of the previous.
	for i := range 6 {
		if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "c[3000,\"Go away!\"]\n" {
			t.Fatalf("poll %d: %q", i, r.body)
		}
		time.Sleep(500 * time.Millisecond)
	}
	sjsWaitFor(t, "the closed session to be forgotten", func() bool { return ep.lookup(httptest.NewRequest(http.MethodGet, "/", nil), sid, false) == nil })
	if r := n.do(t, http.MethodPost, trans+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("after the delay: %q", r.body)
	}
}
