package transports

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/cometgate/cometgate/gateway"
)

// SockJS: the SockJS protocol 0.3.4 as its reference server, sockjs-node
// 0.3.24, speaks it and as the current sockjs-protocol test suite
// (sockjs-protocol.py, the one sockjs-node's tests run) checks it, so that
// the unmodified sockjs-client library works against cometgate with each
// of its transports.
//
// An endpoint lives under its prefix and answers the URLs the protocol
// defines: the greeting ({prefix} and {prefix}/), /info, /iframe*.html,
// the session URLs /{server}/{session}/{transport} for websocket, xhr,
// xhr_send, xhr_streaming, eventsource, htmlfile, jsonp and jsonp_send,
// and the raw /websocket. Routes, headers, status codes and bodies, the
// JSESSIONID cookie and the framing (o, h, a[...], c[code,"reason"]) are
// sockjs-node 0.3.24's, byte for byte where the tests pin them
// (sockjs_test.go), with these deliberate differences:
//
//   - Security. CORS answers follow the node's allowed Origins (an Origin
//     the admission gate refuses gets 403 and no Access-Control-Allow-*;
//     sockjs-node answers every Origin), and Origin null never gets
//     credentials (sjsCORS). The iframe page loads a pinned sockjs-client
//     with its integrity (DefaultSockJSClientURL), which the protocol's
//     pattern for the page does not foresee, and escapes the URL. htmlfile
//     frames have "<", ">" and "&" escaped, so a message cannot end the
//     script element. An empty callback is refused, an htmlfile callback
//     is bounded (128 bytes), ids to 128 bytes; the JSESSIONID value is
//     echoed only when it is a plain cookie value (else "dummy"). Error
//     and refusal bodies are text/plain with nosniff (sockjs-node sends
//     none), streams carry X-Accel-Buffering: no, and the iframe page's
//     304 keeps its ETag, as RFC 9110 asks.
//   - The session layer. A SockJS session is a gateway session
//     (sockjs_session.go): heartbeats come from the gateway's shared
//     ticker, so an idle receiver gets "h" one to two heartbeat delays
//     after its last frame (sockjs-node: a timer per session, exactly one
//     delay). A receiving request that breaks off ends the session with
//     c[1002,"Connection interrupted"] for its next request, which the
//     protocol allows (HandlingClose.test_abort_*); sockjs-node 0.3.24
//     forgets the session, and the next request silently opens a new one.
//   - WebSocket. Every WebSocket is cometgate's one connection type
//     (wsconn.go): RFC 6455 and hybi-07/08 only (sockjs-node also takes
//     hixie-76, which no browser has spoken since 2012), pings on busy
//     connections too, and a client that answers nothing for three
//     heartbeat delays and 5 s is cut off without a frame (sockjs-node
//     closes 10 s after an unanswered ping with c[3000,"No response from
//     heartbeat"]). The raw /websocket of a pubsub endpoint is the native
//     /ws, of a tcp endpoint the bridge.
//   - /chunking_test, protocol 0.1's, which /info replaced (sockjs-node
//     still serves it for clients of that age), is not served.
//
// A SockJS session is a gateway session like any other (sockjs_session.go
// has the design): the admission gate opens it, its queue, expiry and
// resend rule are the gateway's, and its receiving requests and websockets
// are downstreams in SockJS framings. In pubsub mode every SockJS message
// from the client is one client frame of the wire format (PROTOCOL.md), and
// every packet is one SockJS message; in echo mode the client's messages
// come back through the session's queue as they went; in tcp mode they
// carry a byte stream to and from a bridge target; in close mode every
// session closes as soon as it opened. A response's messages are kept
// until the client's next request proves they arrived, so a response lost
// on the way is sent again.

// The SockJS endpoint modes: what the endpoint carries.
const (
	// SockJSPubSub carries the gateway's wire format: each SockJS message
	// from the client is one client frame, each packet one SockJS message.
	SockJSPubSub = "pubsub"
	// SockJSEcho sends every message back, so that a page or an operator can
	// check which transports get through a network.
	SockJSEcho = "echo"
	// SockJSTCP carries a byte stream to a TCP target of the bridge (see
	// bridge.go): each SockJS message is a "byte string", one character
	// per byte (U+0000 to U+00FF), both ways.
	SockJSTCP = "tcp"
	// SockJSClose opens every new session (the admission gate still
	// decides) and closes it at once with CloseCode and CloseReason: the
	// open frame, then c[code,"reason"], as the "close" service of the
	// protocol's test suite (sockjs-node's test server: conn.close(3000,
	// "Go away!") on every connection). An operator can retire an endpoint
	// this way, telling sockjs-client why.
	SockJSClose = "close"
)

// DefaultSockJSClientURL is the sockjs-client script that iframe.html loads
// when an endpoint names none: one pinned release on the CDN sockjs-node
// uses, loaded with DefaultSockJSClientIntegrity, so that a CDN serving
// other bytes cannot run code in the node's origin. sockjs-client's iframe
// transports need the page and the iframe to run the same release: pages
// that load another one (or networks without access to the CDN) set
// SockJSEndpoint.ClientURL (and ClientIntegrity). The browser test
// installs this release from npm and checks the hash
// (cmd/cometgate/sockjs_browser_test.go).
const DefaultSockJSClientURL = "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js"

// DefaultSockJSClientIntegrity is the Subresource Integrity of
// DefaultSockJSClientURL: the sha384 of dist/sockjs.min.js in the npm
// package sockjs-client@1.6.1 (registry shasum
// 350b8eda42d6d52ddc030c39943364c11dcad806).
const DefaultSockJSClientIntegrity = "sha384-svdnwiXBL+Js+yUneJSRFy24NgGiOfDM/vkQl/vCeVrcbYD6yW8EwPr1FnxTEZsR"

// SockJS defaults, the values SockJS servers conventionally use.
const (
	defaultSockJSResponseLimit   = 128 << 10
	defaultSockJSHeartbeatDelay  = 25 * time.Second
	defaultSockJSDisconnectDelay = 5 * time.Second
)

// SockJSEndpoint configures one SockJS endpoint. The zero values of the
// numbers mean the SockJS defaults; note that the zero value of Websocket
// turns the websocket transport off (configuration files default it on).
type SockJSEndpoint struct {
	// Prefix is the endpoint's URL path, e.g. "/sockjs": one or more
	// segments of letters, digits and "-._~", no trailing slash. Its first
	// segment may not be one the node already serves (ws, sse, session,
	// api, healthz, readyz, metrics, poll, xhr, htmlfile, jsonp).
	Prefix string
	// Mode is what the endpoint carries: SockJSPubSub (the default),
	// SockJSEcho, SockJSTCP, or SockJSClose.
	Mode string
	// Target names the allow-listed TCP target of a tcp endpoint.
	Target string
	// CloseCode and CloseReason are what a close endpoint closes every
	// session with; only a close endpoint has them. The code is 1000 or
	// 3000-4999 (what an application may close a SockJS connection with),
	// the reason at most 123 bytes of UTF-8 (what a WebSocket close frame
	// holds); 0 and "" mean 1000 and "Normal closure", sockjs-node's
	// defaults for close().
	CloseCode   int
	CloseReason string
	// Websocket enables the websocket transports (/{s}/{s}/websocket and
	// the raw /websocket); /info tells clients whether it is on.
	Websocket bool
	// CookieNeeded sets the JSESSIONID cookie on every session URL, for
	// load balancers that stick sessions by it; /info tells clients.
	CookieNeeded bool
	// ResponseLimit is the number of bytes after which a streaming response
	// (xhr_streaming, eventsource, htmlfile) ends and the client opens a
	// new one, so that the browser can free what it received; 0 means
	// 128 KiB.
	ResponseLimit int
	// HeartbeatDelay is the interval of heartbeats: an "h" frame on a
	// receiving request, a ping on a websocket; 0 means 25 s. A receiver
	// that had nothing else gets one one to two delays after its last
	// frame (the gateway's shared ticker).
	HeartbeatDelay time.Duration
	// DisconnectDelay is how long a session may stay without a receiving
	// request before it ends (and how long a closed session keeps
	// answering with its close frame); 0 means 5 s.
	DisconnectDelay time.Duration
	// ClientURL is the sockjs-client script the iframe page loads (the
	// iframe transports need it): an absolute http(s) URL or a path on
	// this host. "" means DefaultSockJSClientURL, with
	// DefaultSockJSClientIntegrity.
	ClientURL string
	// ClientIntegrity is the Subresource Integrity of ClientURL's script
	// ("sha384-…", space-separated when there are several), which the
	// iframe page's script element then carries with
	// crossorigin="anonymous"; "" loads ClientURL without one. It needs
	// ClientURL.
	ClientIntegrity string
}

// reservedSockJSSegments are first path segments the node serves itself.
var reservedSockJSSegments = map[string]bool{
	"ws": true, "sse": true, "session": true, "api": true, "healthz": true,
	"readyz": true, "metrics": true, "poll": true, "xhr": true,
	"htmlfile": true, "jsonp": true, "debug": true, "tcp": true,
}

// withDefaults fills the zero values.
func (e SockJSEndpoint) withDefaults() SockJSEndpoint {
	if e.Mode == "" {
		e.Mode = SockJSPubSub
	}
	if e.ResponseLimit == 0 {
		e.ResponseLimit = defaultSockJSResponseLimit
	}
	if e.HeartbeatDelay == 0 {
		e.HeartbeatDelay = defaultSockJSHeartbeatDelay
	}
	if e.DisconnectDelay == 0 {
		e.DisconnectDelay = defaultSockJSDisconnectDelay
	}
	if e.ClientURL == "" {
		e.ClientURL = DefaultSockJSClientURL
	}
	if e.ClientURL == DefaultSockJSClientURL && e.ClientIntegrity == "" {
		e.ClientIntegrity = DefaultSockJSClientIntegrity
	}
	if e.Mode == SockJSClose {
		if e.CloseCode == 0 {
			e.CloseCode = gateway.CodeNormal
		}
		if e.CloseReason == "" {
			e.CloseReason = "Normal closure"
		}
	}
	return e
}

// Validate checks one endpoint's options; the error names the option.
func (e SockJSEndpoint) Validate() error {
	if err := validateSockJSPrefix(e.Prefix); err != nil {
		return err
	}
	if e.ClientIntegrity != "" && e.ClientURL == "" {
		return fmt.Errorf("sockjs %s: client_integrity: only with client_url (the default client has its own)", e.Prefix)
	}
	if err := validateSRI(e.ClientIntegrity); err != nil {
		return fmt.Errorf("sockjs %s: client_integrity: %w", e.Prefix, err)
	}
	if e.Mode != SockJSClose && (e.CloseCode != 0 || e.CloseReason != "") {
		return fmt.Errorf("sockjs %s: close_code, close_reason: only a close endpoint has them", e.Prefix)
	}
	e = e.withDefaults()
	switch e.Mode {
	case SockJSPubSub, SockJSEcho, SockJSClose:
		if e.Target != "" {
			return fmt.Errorf("sockjs %s: target: only a tcp endpoint has a target", e.Prefix)
		}
	case SockJSTCP:
		if e.Target == "" {
			return fmt.Errorf("sockjs %s: target: a tcp endpoint needs the name of a bridge target", e.Prefix)
		}
	default:
		return fmt.Errorf("sockjs %s: mode: %q is not one of pubsub, echo, tcp, close", e.Prefix, e.Mode)
	}
	if e.Mode == SockJSClose {
		if c := e.CloseCode; c != gateway.CodeNormal && (c < 3000 || c > 4999) {
			return fmt.Errorf("sockjs %s: close_code: %d is not 1000 or 3000-4999", e.Prefix, c)
		}
		if r := e.CloseReason; !utf8.ValidString(r) || len(r) > 123 {
			return fmt.Errorf("sockjs %s: close_reason: must be UTF-8 of at most 123 bytes", e.Prefix)
		}
	}
	switch {
	case e.ResponseLimit < 0:
		return fmt.Errorf("sockjs %s: response_limit: must not be negative", e.Prefix)
	case e.HeartbeatDelay < 0:
		return fmt.Errorf("sockjs %s: heartbeat_delay: must not be negative", e.Prefix)
	case e.HeartbeatDelay < 100*time.Millisecond:
		return fmt.Errorf("sockjs %s: heartbeat_delay: %v is too short (at least 100ms)", e.Prefix, e.HeartbeatDelay)
	case e.DisconnectDelay < 0:
		return fmt.Errorf("sockjs %s: disconnect_delay: must not be negative", e.Prefix)
	case e.DisconnectDelay < 100*time.Millisecond:
		return fmt.Errorf("sockjs %s: disconnect_delay: %v is too short (at least 100ms)", e.Prefix, e.DisconnectDelay)
	}
	if err := validateSockJSClientURL(e.ClientURL); err != nil {
		return fmt.Errorf("sockjs %s: client_url: %w", e.Prefix, err)
	}
	return nil
}

// ValidateSockJS checks a list of endpoints: each one, and that no prefix
// repeats or contains another. Call it at start-up, before New, so that a
// bad configuration stops the node with this error; New itself cannot
// fail, and refuses a bad endpoint by logging this error and answering its
// prefix with 500.
func ValidateSockJS(eps []SockJSEndpoint) error {
	for i, e := range eps {
		if err := e.Validate(); err != nil {
			return err
		}
		if err := sjsOverlap(eps[:i], e); err != nil {
			return err
		}
	}
	return nil
}

// sjsOverlap checks that e's prefix neither repeats nor contains (nor is
// contained in) one of earlier.
func sjsOverlap(earlier []SockJSEndpoint, e SockJSEndpoint) error {
	for _, o := range earlier {
		if o.Prefix == e.Prefix || strings.HasPrefix(e.Prefix, o.Prefix+"/") || strings.HasPrefix(o.Prefix, e.Prefix+"/") {
			return fmt.Errorf("sockjs %s: prefix overlaps the endpoint at %s", e.Prefix, o.Prefix)
		}
	}
	return nil
}

func validateSockJSPrefix(p string) error {
	if p == "" || p[0] != '/' || strings.HasSuffix(p, "/") {
		return fmt.Errorf("sockjs prefix %q: must start with / and not end with /", p)
	}
	for i, seg := range strings.Split(p[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("sockjs prefix %q: empty or dot segment", p)
		}
		for j := 0; j < len(seg); j++ {
			c := seg[j]
			if !sjsIsAlnum(c) && c != '-' && c != '.' && c != '_' && c != '~' {
				return fmt.Errorf("sockjs prefix %q: only letters, digits and -._~ may appear in a segment", p)
			}
		}
		if i == 0 && reservedSockJSSegments[strings.ToLower(seg)] {
			return fmt.Errorf("sockjs prefix %q: /%s is served by the node itself", p, seg)
		}
	}
	return nil
}

func validateSockJSClientURL(s string) error {
	if strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//") {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q must be an absolute http(s) URL or a path starting with /", s)
	}
	return nil
}

// validateSRI checks Subresource Integrity metadata: space-separated
// hash-algorithm-base64 tokens (sha256, sha384, sha512) whose digests
// have the algorithm's length.
func validateSRI(s string) error {
	for _, tok := range strings.Fields(s) {
		alg, b64, ok := strings.Cut(tok, "-")
		size := map[string]int{"sha256": 32, "sha384": 48, "sha512": 64}[alg]
		if d, err := base64.StdEncoding.DecodeString(b64); !ok || size == 0 || err != nil || len(d) != size {
			return fmt.Errorf("%q is not sha256-, sha384- or sha512- with the digest in base64", tok)
		}
	}
	return nil
}

// mountSockJS mounts every configured endpoint on r (New calls it), and
// tells the cluster which of their sessions this node owns.
func mountSockJS(r chi.Router, n *node) {
	var eps []*sockjsEndpoint
	defer func() {
		n.sjsEps = eps
		if n.opts.Nodes != nil && len(eps) > 0 {
			n.opts.Nodes.SetOwnerFunc(func(key string) (owns, claiming bool) { return sjsOwns(eps, key) })
		}
	}()
	for i, e := range n.opts.SockJS {
		if err := sjsOverlap(n.opts.SockJS[:i], e); err != nil {
			n.log.Error("sockjs endpoint refused", "prefix", e.Prefix, "err", err)
			continue // its prefix belongs to another endpoint
		}
		err := e.Validate()
		if err == nil && e.Mode == SockJSTCP && !n.bridge.has(e.Target) {
			err = fmt.Errorf("sockjs %s: target: %q is not one of the bridge targets", e.Prefix, e.Target)
		}
		if err != nil {
			n.log.Error("sockjs endpoint refused", "prefix", e.Prefix, "err", err)
			if validateSockJSPrefix(e.Prefix) != nil {
				continue // nowhere to answer
			}
			msg := "sockjs endpoint misconfigured: " + err.Error()
			refuse := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				sjsPlain(w, http.StatusInternalServerError, msg)
			})
			r.Handle(e.Prefix, refuse)
			r.Handle(e.Prefix+"/*", refuse)
			continue
		}
		ep := newSockJSEndpoint(n, e.withDefaults())
		eps = append(eps, ep)
		r.Handle(e.Prefix, ep)
		r.Handle(e.Prefix+"/*", ep)
	}
}

// sockjsEndpoint serves one SockJS endpoint.
type sockjsEndpoint struct {
	n    *node
	cfg  SockJSEndpoint
	echo bool // echo, and close: a close endpoint's sessions are echo sessions closed at once
	tcp  bool // a bridge endpoint: each session has a link to cfg.Target
	// closeWith is what a close endpoint closes every new session with;
	// nil for the other modes.
	closeWith *gateway.Disconnect
	iframe    []byte // the iframe page
	etag      string

	mu       sync.Mutex
	sessions map[string]*sjsEntry // the sessions over HTTP by id, live and recently closed
	swept    time.Time            // when closed sessions were last forgotten
	claims   map[string]int       // ids this node is asking the cluster about, to open them
}

func newSockJSEndpoint(n *node, cfg SockJSEndpoint) *sockjsEndpoint {
	src := html.EscapeString(cfg.ClientURL) + `"`
	if sri := strings.Join(strings.Fields(cfg.ClientIntegrity), " "); sri != "" {
		src += ` integrity="` + sri + `" crossorigin="anonymous"`
	}
	page := []byte(strings.Replace(sjsIframeTemplate, `{{ sockjs_url }}"`, src, 1))
	var closeWith *gateway.Disconnect
	if cfg.Mode == SockJSClose {
		closeWith = &gateway.Disconnect{Code: cfg.CloseCode, Reason: cfg.CloseReason}
	}
	sum := sha256.Sum256(page)
	return &sockjsEndpoint{
		n:         n,
		cfg:       cfg,
		echo:      cfg.Mode == SockJSEcho || cfg.Mode == SockJSClose,
		tcp:       cfg.Mode == SockJSTCP,
		closeWith: closeWith,
		iframe:    page,
		etag:      `"` + hex.EncodeToString(sum[:16]) + `"`,
		sessions:  make(map[string]*sjsEntry),
		claims:    make(map[string]int),
	}
}

// sjsIframeTemplate is the iframe page of sockjs-node 0.3.24
// (lib/iframe.js) and of the current protocol tests
// (IframePage.iframe_body), byte for byte: the client script first, then
// the bootstrap. The URL is HTML-escaped (sockjs-node writes it as it is),
// and the script element carries integrity and crossorigin attributes when
// the endpoint has a ClientIntegrity (the default client has one), which
// the protocol's pattern does not foresee: loading code into the node's
// origin from a CDN without pinning it is a hole the attributes close.
const sjsIframeTemplate = `<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{{ sockjs_url }}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>`

// closeNew closes a session of a close endpoint, once it was opened;
// further calls do nothing (Close does nothing on a closed session).
func (ep *sockjsEndpoint) closeNew(sess *gateway.Session) {
	if ep.closeWith != nil {
		sess.Close(*ep.closeWith)
	}
}

// ServeHTTP routes a request under the endpoint's prefix, as sockjs-node
// 0.3.24's dispatcher (lib/sockjs.js generate_dispatcher) does: on the
// request's path as it was sent (not percent-decoded), every URL but the
// greeting may end with one "/", a known URL asked with another method
// gets 405 with the methods it takes in Allow, an unknown one 404.
func (ep *sockjsEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), ep.cfg.Prefix)
	if !ok {
		sjsNotFound(w)
		return
	}
	if rest == "" || rest == "/" {
		if sjsMethods(w, r, http.MethodGet) {
			sjsPlain(w, http.StatusOK, "Welcome to SockJS!\n")
		}
		return
	}
	path := strings.TrimSuffix(rest, "/")
	switch {
	case path == "/info":
		ep.serveInfo(w, r)
	case sjsIsIframe(path):
		if sjsMethods(w, r, http.MethodGet) {
			ep.serveIframe(w, r)
		}
	case path == "/websocket":
		if ep.websocketOff(w, r) {
			return
		}
		ep.serveRawWebSocket(w, r)
	default:
		server, sid, transport, ok := sjsSessionPath(path)
		if !ok {
			sjsNotFound(w)
			return
		}
		_ = server // the server id is for load balancers; a session is named by its id alone
		ep.serveSessionURL(w, r, sid, transport)
	}
}

// websocketOff answers a websocket URL of an endpoint whose websockets
// are off, as sockjs-node does: GET gets a cacheable 404, other methods
// 405.
func (ep *sockjsEndpoint) websocketOff(w http.ResponseWriter, r *http.Request) bool {
	if ep.cfg.Websocket {
		return false
	}
	if sjsMethods(w, r, http.MethodGet) {
		sjsCacheForever(w.Header())
		sjsNotFound(w)
	}
	return true
}

// The methods of the session URLs in Allow, in sockjs-node's order; the
// preflight's Access-Control-Allow-Methods lists them its own way.
const (
	sjsAllowXHR  = "POST, OPTIONS"
	sjsAllowInfo = "OPTIONS, GET"
)

// serveSessionURL dispatches /{server}/{session}/{transport}.
func (ep *sockjsEndpoint) serveSessionURL(w http.ResponseWriter, r *http.Request, sid, transport string) {
	switch transport {
	case "websocket":
		if ep.websocketOff(w, r) {
			return
		}
		ep.serveWebSocket(w, r)
	case "xhr", "xhr_streaming":
		switch r.Method {
		case http.MethodOptions:
			ep.preflight(w, r, "OPTIONS, POST")
		case http.MethodPost:
			kind := sjsXHR
			if transport == "xhr_streaming" {
				kind = sjsXHRStreaming
			}
			ep.serveReceiver(w, r, sid, kind)
		default:
			sjsMethodNotAllowed(w, sjsAllowXHR)
		}
	case "xhr_send":
		switch r.Method {
		case http.MethodOptions:
			ep.preflight(w, r, "OPTIONS, POST")
		case http.MethodPost:
			ep.serveXHRSend(w, r, sid)
		default:
			sjsMethodNotAllowed(w, sjsAllowXHR)
		}
	case "eventsource":
		if sjsMethods(w, r, http.MethodGet) {
			ep.serveReceiver(w, r, sid, sjsEventSource)
		}
	case "htmlfile":
		if sjsMethods(w, r, http.MethodGet) {
			ep.serveReceiver(w, r, sid, sjsHTMLFile)
		}
	case "jsonp":
		if sjsMethods(w, r, http.MethodGet) {
			ep.serveReceiver(w, r, sid, sjsJSONP)
		}
	case "jsonp_send":
		if sjsMethods(w, r, http.MethodPost) {
			ep.serveJSONPSend(w, r, sid)
		}
	default:
		sjsNotFound(w)
	}
}

// serveInfo answers /info: the server's capabilities and some entropy for
// the client's random numbers.
func (ep *sockjsEndpoint) serveInfo(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodOptions:
		ep.preflight(w, r, "OPTIONS, GET")
		return
	case http.MethodGet:
	default:
		sjsMethodNotAllowed(w, sjsAllowInfo)
		return
	}
	// Not sockjs-node's, which answers every Origin: CORS answers follow
	// the node's allowed Origins.
	if ref := ep.n.gate.origin(r); ref != nil {
		sjsRefuse(w, ref)
		return
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	entropy := binary.BigEndian.Uint32(b[:])
	body := make([]byte, 0, 96)
	// sockjs-node's key order (lib/chunking-test.js, info).
	body = append(body, `{"websocket":`...)
	body = strconv.AppendBool(body, ep.cfg.Websocket)
	body = append(body, `,"origins":["*:*"],"cookie_needed":`...)
	body = strconv.AppendBool(body, ep.cfg.CookieNeeded)
	body = append(body, `,"entropy":`...)
	body = strconv.AppendUint(body, uint64(entropy), 10)
	body = append(body, '}')
	h := w.Header()
	sjsNoCache(h)
	sjsCORS(h, r, "null")
	h.Set("Content-Type", "application/json; charset=UTF-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// serveIframe answers /iframe*.html: a strongly cacheable page that loads
// sockjs-client in the server's origin, for the iframe transports. Only
// the allowed Origins may frame it (originPolicy.frameAncestors):
// sockjs-client's iframe takes orders from whichever page frames it.
func (ep *sockjsEndpoint) serveIframe(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	sjsCacheForever(h)
	h.Set("Content-Security-Policy", ep.n.gate.origins.frameAncestors)
	h.Set("ETag", ep.etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && sjsETagMatch(inm, ep.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "text/html; charset=UTF-8")
	h.Set("Content-Length", strconv.Itoa(len(ep.iframe)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(ep.iframe)
}

func sjsETagMatch(header, etag string) bool {
	for _, v := range strings.Split(header, ",") {
		v = strings.TrimSpace(v)
		if v == "*" || v == etag || strings.TrimPrefix(v, "W/") == etag {
			return true
		}
	}
	return false
}

// preflight answers a CORS preflight; it is cacheable, as the protocol
// asks. Origins the node does not allow are refused.
func (ep *sockjsEndpoint) preflight(w http.ResponseWriter, r *http.Request, methods string) {
	if ref := ep.n.gate.origin(r); ref != nil {
		sjsRefuse(w, ref)
		return
	}
	h := w.Header()
	sjsCacheForever(h)
	sjsCORS(h, r, "null")
	h.Set("Access-Control-Allow-Methods", methods)
	h.Set("Access-Control-Max-Age", strconv.Itoa(sjsCacheSeconds))
	ep.setCookie(w, r)
	w.WriteHeader(http.StatusNoContent)
}

// setCookie sets JSESSIONID when the endpoint needs it: the client's own
// value when it sent a well-formed one, else "dummy" (load balancers add
// their own cookies; the value does not matter to SockJS).
func (ep *sockjsEndpoint) setCookie(w http.ResponseWriter, r *http.Request) {
	if !ep.cfg.CookieNeeded {
		return
	}
	v := "dummy"
	if c, err := r.Cookie("JSESSIONID"); err == nil && sjsValidCookieValue(c.Value) {
		v = c.Value
	}
	w.Header().Set("Set-Cookie", "JSESSIONID="+v+"; path=/")
}

// sjsCacheSeconds is one year, the caching the protocol asks for static
// answers.
const sjsCacheSeconds = 365 * 24 * 60 * 60

func sjsCacheForever(h http.Header) {
	h.Set("Cache-Control", "public, max-age="+strconv.Itoa(sjsCacheSeconds))
	h.Set("Expires", time.Now().Add(sjsCacheSeconds*time.Second).UTC().Format(http.TimeFormat))
}

// sjsNoCache is the protocol's header for everything private fetched by
// GET (and POST, which some browsers cache): sockjs-node's h_no_cache
// (lib/webjs.js), no-transform included since 0.3.16, as the current
// protocol tests ask (verify_not_cached).
func sjsNoCache(h http.Header) {
	h.Set("Cache-Control", "no-store, no-cache, no-transform, must-revalidate, max-age=0")
}

// sjsCORS adds the CORS headers of an answer to r, whose Origin the
// caller had the gate admit (gate.origin): what sockjs-node 0.3.24's
// xhr_cors (lib/trans-xhr.js) writes and the current protocol tests ask
// (verify_cors, test_options_null_origin), with one deliberate
// difference. A request without Origin gets "*" and no credentials; an
// Origin is echoed with credentials; "null" is answered null (eventsource
// passes "*", as sockjs-node's eventsource does) but, unlike sockjs-node,
// never with credentials: any site can send Origin null (a sandboxed
// iframe, a redirect, a file:// page), so a credentialed answer to null is
// a credentialed answer to every site. Only an operator who allows null
// (or every Origin) gets this far with it.
func sjsCORS(h http.Header, r *http.Request, null string) {
	h.Set("Vary", "Origin")
	switch origin := r.Header.Get("Origin"); origin {
	case "":
		h.Set("Access-Control-Allow-Origin", "*")
	case "null":
		h.Set("Access-Control-Allow-Origin", null)
	default:
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		h.Set("Access-Control-Allow-Headers", req)
	}
}

// sjsRefuse answers a request the admission gate refused before the
// protocol took part (an Origin the node does not allow, mostly): its
// status and message, and no Access-Control-Allow-* headers, so a browser
// keeps the answer from the page.
func sjsRefuse(w http.ResponseWriter, ref *refusal) {
	sjsPlain(w, ref.status, ref.sjsReason(w.Header()))
}

// sjsPlain answers with a plain-text body.
func sjsPlain(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=UTF-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// sjsNotFound answers 404 with sockjs-node's body (lib/sockjs.js,
// handle_404).
func sjsNotFound(w http.ResponseWriter) {
	sjsPlain(w, http.StatusNotFound, "404 Error: Page not found\n")
}

// sjsMethodNotAllowed answers 405 with the Allow header and no body, as
// the protocol asks.
func sjsMethodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	w.WriteHeader(http.StatusMethodNotAllowed)
}

// sjsMethods reports whether r's method is method; otherwise it answers
// 405.
func sjsMethods(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	sjsMethodNotAllowed(w, method)
	return false
}
