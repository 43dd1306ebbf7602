package transports

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// Admission: the one gate every transport passes. gate.open runs before a
// session exists (the Origin, the token and the principal it names, the
// per-address limit, the node draining) and opens it; gate.join runs
// before a request acts on a session that exists (the Origin, and the
// principal the session is bound to). Either returns a refusal, which each
// framing renders its own way: a JSON error with an HTTP status, a
// callback with a close packet (JSONP, htmlfile), a SockJS close frame, a
// WebSocket that opens and closes with the code. No transport checks any
// of these itself.

// refusal is why a request was refused: its HTTP status, the close code a
// transport that can only answer in-band (JSONP, htmlfile, SockJS) reports
// instead, and the message. retry asks the client to come back
// (Retry-After, and "delay" in milliseconds in the JSON body or close
// packet; see retryHint).
type refusal struct {
	status int
	code   int
	msg    string
	retry  bool
	// wait and spread are the retry advice of a rate limit: after wait,
	// plus a jitter drawn up to spread for each answer (retryHint).
	wait, spread time.Duration
}

func refuse(status int, d gateway.Disconnect) *refusal {
	return &refusal{status: status, code: d.Code, msg: d.Reason, retry: d.Reconnect()}
}

// refusals every transport shares.
var (
	refusedShutdown = refuse(http.StatusServiceUnavailable, gateway.DisconnectShutdown)
	refusedTooMany  = refuse(http.StatusTooManyRequests, gateway.DisconnectTooManySessions)
	refusedNotFound = refuse(http.StatusNotFound, gateway.DisconnectNotFound)
)

// closePacket is the refusal as a transport-level close packet, for the
// transports that answer in-band: its code and message, whether to
// reconnect, and the retry advice (also set on h as Retry-After).
func (ref *refusal) closePacket(h http.Header) []byte {
	return controlClose(ref.code, ref.msg, (gateway.Disconnect{Code: ref.code}).Reconnect(), ref.retryHint(h))
}

// writeJSON answers the refusal as a JSON error body.
func (ref *refusal) writeJSON(w http.ResponseWriter) {
	delay := ref.retryHint(w.Header())
	writeJSON(w, ref.status, errorBody{Error: ref.msg, Code: ref.code, Delay: delay.Milliseconds()})
}

// sessionSpec describes the session a transport asks the gate to open.
type sessionSpec struct {
	transport string // family name, for metrics
	retain    bool   // request-per-poll: packets kept until acknowledged
	// heartbeat and disconnectDelay override the gateway's (SockJS
	// endpoints have their own); 0 keeps the gateway's.
	heartbeat       time.Duration
	disconnectDelay time.Duration
	// onClose runs once when the session has ended, after the gate
	// released what it holds for it.
	onClose func()
	// callback marks the callback transports (JSONP, htmlfile), which
	// browsers load with script and iframe elements: see
	// Options.CallbackCookie.
	callback bool
}

// gate is the admission check of a node. It is safe for concurrent use.
type gate struct {
	gw             *gateway.Gateway
	origins        originPolicy
	hosts          hostPolicy
	proxies        []netip.Prefix         // trusted reverse proxies
	tokens         *gateway.TokenVerifier // nil: no token authentication
	webhook        *webhook               // nil: no auth webhook
	requireToken   bool
	callbackCookie bool
	limits         *admissionLimits
	metrics        *gateway.Metrics
}

func newGate(opts Options) *gate {
	return &gate{
		gw:             opts.Gateway,
		origins:        newOriginPolicy(opts.AllowedOrigins),
		hosts:          newHostPolicy(opts.AllowedHosts),
		proxies:        opts.TrustedProxies,
		tokens:         opts.Tokens,
		webhook:        optWebhook(opts.Webhook, opts.Gateway),
		requireToken:   opts.RequireToken,
		callbackCookie: opts.CallbackCookie,
		limits:         newAdmissionLimits(opts),
		metrics:        opts.Gateway.Config().Metrics,
	}
}

// open admits r and opens its session.
func (g *gate) open(r *http.Request, spec sessionSpec) (*gateway.Session, *refusal) {
	if ref := g.origin(r); ref != nil {
		return nil, ref
	}
	principal, ref := g.authenticate(r, spec.callback)
	if ref != nil {
		return nil, ref
	}
	client := g.clientAddr(r)
	ip := ipKey(client)
	if ref := g.limits.acquire(ip); ref != nil {
		return nil, ref
	}
	onClose := spec.onClose
	sess, err := g.gw.Open(gateway.OpenOptions{
		Transport:  spec.transport,
		Retain:     spec.retain,
		RemoteAddr: client.String(),
		OnClose: func() {
			g.limits.release(ip)
			if onClose != nil {
				onClose()
			}
		},
		Principal:       principal,
		Reauth:          g.reauth(principal),
		Heartbeat:       spec.heartbeat,
		DisconnectDelay: spec.disconnectDelay,
	})
	if err != nil {
		g.limits.release(ip)
		if rev, ok := errors.AsType[*gateway.RevokedError](err); ok {
			g.metrics.Refused(gateway.RefusedRevoked)
			return nil, refuse(http.StatusUnauthorized, rev.Disconnect)
		}
		g.metrics.Refused(gateway.RefusedShutdown)
		return nil, refusedShutdown
	}
	return sess, nil
}

// sessionGone is the refusal for a request whose session is not here (and
// was not forwarded): "session not found", or, once the node drains, the
// drain's own close (3000, reconnect): the drain closed every session of
// this node, and a request that comes after its session's close packet
// went out on another request (an SSE stream's, a send racing a poll)
// must still learn why, not that the session never existed.
func (g *gate) sessionGone() *refusal {
	if g.gw.Draining() {
		return refusedShutdown
	}
	return refusedNotFound
}

// join admits r to act on sess, a session that exists: a request from an
// allowed Origin that acts for the session's principal. A session opened
// with a token is bound to its subject, so a leaked session id alone does
// not give its stream away; anonymous sessions rely on their unguessable
// id. callback marks the callback transports, as in sessionSpec.
func (g *gate) join(r *http.Request, sess *gateway.Session, callback bool) *refusal {
	if ref := g.origin(r); ref != nil {
		return ref
	}
	owner := sess.Principal()
	if owner == nil {
		return nil
	}
	p, ref := g.authenticate(r, callback)
	if ref != nil {
		return ref
	}
	if p == nil || p.Subject != owner.Subject {
		g.metrics.Refused(gateway.RefusedPrincipal)
		return &refusal{status: http.StatusForbidden, code: gateway.DisconnectForbidden.Code, msg: "the session belongs to another principal"}
	}
	return nil
}

// reauth is the check of a session's refresh frames (in-band token
// refresh): the token verifies as at admission, and is for the principal
// the session is bound to. nil for a session without one.
func (g *gate) reauth(owner *gateway.Principal) func(string) (*gateway.Principal, error) {
	if owner == nil || g.tokens == nil {
		return nil
	}
	return func(tok string) (*gateway.Principal, error) {
		p, err := g.tokens.Verify(tok)
		if err != nil {
			return nil, fmt.Errorf("invalid token: %w", err)
		}
		if p.Subject != owner.Subject {
			return nil, gateway.ErrOtherPrincipal
		}
		if ref := g.revoked(p); ref != nil {
			return nil, errors.New(ref.msg)
		}
		return p, nil
	}
}

// inBand reports whether a refusal of r may be answered in-band, after a
// WebSocket upgrade or as an event stream, for a browser that cannot read
// a refused upgrade's or event stream's status and body: the client asks
// for it (refusal=close, as cometgate.js does), and r is not from a page
// of an Origin the node does not allow (which gets 403 before anything
// opens).
func (g *gate) inBand(r *http.Request) bool {
	return r.URL.Query().Get("refusal") == "close" && g.originAllowed(r)
}

// originAllowed reports whether r's Origin may use the node, for a caller
// that only asks (origin is the check that refuses, and counts).
func (g *gate) originAllowed(r *http.Request) bool { return g.origins.allowed(r, g.scheme(r)) }

// origin refuses a browser page from an Origin the node does not allow.
func (g *gate) origin(r *http.Request) *refusal {
	if g.originAllowed(r) {
		return nil
	}
	g.metrics.Refused(gateway.RefusedOrigin)
	return &refusal{status: http.StatusForbidden, code: gateway.DisconnectForbidden.Code, msg: "origin not allowed: " + r.Header.Get("Origin")}
}

// tokenCookie is the cookie a page may carry its token in.
const tokenCookie = "cometgate_token"

// requestToken is the token a request presents: the token query
// parameter (WebSocket and EventSource cannot set headers), a bearer
// Authorization header, or the cookie (unless noCookie); "" when none.
func requestToken(r *http.Request, noCookie bool) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && t != "" {
		return t
	}
	if noCookie {
		return ""
	}
	if c, err := r.Cookie(tokenCookie); err == nil {
		return c.Value
	}
	return ""
}

// refusedCallbackCookie refuses a callback transport's request that
// would authenticate with the token cookie: a script or iframe load sends
// no Origin, so the cookie cannot tell the victim's own page from another
// site that makes her browser load the URL (and reads her channels
// through the callback).
var refusedCallbackCookie = &refusal{status: http.StatusForbidden, code: gateway.DisconnectForbidden.Code,
	msg: "JSONP and htmlfile take a token only from ?token=, not from the " + tokenCookie + " cookie: a script or iframe load cannot show which site made it"}

// authenticate returns the principal of the request's credential (its
// token, or the auth webhook's answer), refused (401, 4010) when a
// revocation refuses that credential.
func (g *gate) authenticate(r *http.Request, callback bool) (*gateway.Principal, *refusal) {
	p, ref := g.credential(r, callback)
	if ref == nil {
		ref = g.revoked(p)
	}
	if ref != nil {
		return nil, ref
	}
	return p, nil
}

// credential returns the principal of the request's token: nil for a
// request without one (allowed unless requireToken), a refusal (401,
// 4401) for a token that does not verify. The reason names what is wrong
// with the token, never the token. A callback transport's request does
// not take the cookie unless the node allows it (Options.CallbackCookie),
// and is refused when it carries one and no token of its own.
func (g *gate) credential(r *http.Request, callback bool) (*gateway.Principal, *refusal) {
	if g.webhook != nil {
		p, ref := g.askWebhook(r, callback)
		if ref != nil {
			g.metrics.Refused(gateway.RefusedToken)
		}
		return p, ref
	}
	if g.tokens == nil {
		return nil, nil
	}
	noCookie := callback && !g.callbackCookie
	tok := requestToken(r, noCookie)
	if tok == "" && noCookie {
		if _, err := r.Cookie(tokenCookie); err == nil {
			g.metrics.Refused(gateway.RefusedCookieWithoutOrigin)
			return nil, refusedCallbackCookie
		}
	}
	if tok == "" {
		if g.requireToken {
			g.metrics.Refused(gateway.RefusedToken)
			return nil, refuse(http.StatusUnauthorized, gateway.DisconnectUnauthorized)
		}
		return nil, nil
	}
	p, err := g.tokens.Verify(tok)
	if err != nil {
		g.metrics.Refused(gateway.RefusedToken)
		return nil, &refusal{status: http.StatusUnauthorized, code: gateway.DisconnectUnauthorized.Code, msg: "invalid token: " + err.Error()}
	}
	return p, nil
}

// revoked refuses p (401, 4010, no reconnect) when a revocation refuses
// its credential (gateway.Gateway.Revoked); nil otherwise.
func (g *gate) revoked(p *gateway.Principal) *refusal {
	d, revoked := g.gw.Revoked(p)
	if !revoked {
		return nil
	}
	g.metrics.Refused(gateway.RefusedRevoked)
	return refuse(http.StatusUnauthorized, d)
}

func optWebhook(o *WebhookOptions, gw *gateway.Gateway) *webhook {
	if o == nil {
		return nil
	}
	return newWebhook(*o, func(p *gateway.Principal) bool {
		_, revoked := gw.Revoked(p)
		return revoked
	})
}

// refusedCallbackWebhook refuses a callback transport's request where a
// principal is required and only the auth webhook (the cookies) could
// name it: see refusedCallbackCookie.
var refusedCallbackWebhook = &refusal{status: http.StatusForbidden, code: gateway.DisconnectForbidden.Code,
	msg: "JSONP and htmlfile do not authenticate through the auth webhook: a script or iframe load cannot show which site made it"}

// askWebhook is credential with the auth webhook: the application's
// principal for r, nil (anonymous) when the application does not know
// the browser and none is required, a refusal (401, 4401) with the reason
// when it is required or the webhook failed (fail closed).
func (g *gate) askWebhook(r *http.Request, callback bool) (*gateway.Principal, *refusal) {
	if callback && !g.callbackCookie {
		if g.requireToken {
			return nil, refusedCallbackWebhook
		}
		return nil, nil
	}
	p, reason, denied := g.webhook.principal(r.Context(), r)
	switch {
	case p != nil:
		return p, nil
	case denied && !g.requireToken:
		return nil, nil
	}
	return nil, &refusal{status: http.StatusUnauthorized, code: gateway.DisconnectUnauthorized.Code, msg: reason}
}

// peerAddr is the address of the connection's peer.
func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		a, _ := netip.ParseAddr(host)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}

// trusted reports whether a is one of the trusted reverse proxies.
func (g *gate) trusted(a netip.Addr) bool {
	for _, p := range g.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr is the client's address: the connection's peer, or, when
// the peer is a trusted proxy, the last address the proxies reported
// (forwardedFor) that is not one (each proxy appends the address it got
// the request from, so only entries right of the first untrusted one are
// believed).
func (g *gate) clientAddr(r *http.Request) netip.Addr {
	addr := peerAddr(r)
	if !g.trusted(addr) {
		return addr
	}
	hops := forwardedFor(r.Header)
	for i := len(hops) - 1; i >= 0; i-- {
		if !hops[i].IsValid() {
			return addr // not an address: stop at the last proxy we trust
		}
		addr = hops[i]
		if !g.trusted(addr) {
			return addr
		}
	}
	return addr
}

// scheme is the scheme the browser used: https when the connection is
// TLS or a trusted proxy says so (X-Forwarded-Proto), else http.
func (g *gate) scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if g.trusted(peerAddr(r)) && strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		return "https"
	}
	return "http"
}

// ipKey is what per-address limits count by: an IPv4 address, or the /64
// an IPv6 address belongs to (one subscriber's network: each of its
// addresses must not get a quota of its own).
func ipKey(a netip.Addr) netip.Addr {
	if a.Is4() || !a.IsValid() {
		return a
	}
	p, _ := a.Prefix(64)
	return p.Addr()
}

// originPolicy decides which browser Origins may use the gateway.
type originPolicy struct {
	any   bool
	exact map[string]bool
	// frameAncestors is the Content-Security-Policy of pages that run in
	// the node's origin for other pages to frame (SockJS iframe.html):
	// only the allowed Origins may frame them. A page framed by any site
	// would act in the node's origin, where its requests are same-origin
	// and carry the visitor's cookie, and report to the framing page.
	frameAncestors string
}

func newOriginPolicy(allowed []string) originPolicy {
	p := originPolicy{exact: make(map[string]bool)}
	ancestors := []string{"frame-ancestors 'self'"}
	for _, o := range allowed {
		if o == "*" {
			p.any = true
			continue
		}
		o = strings.ToLower(strings.TrimRight(o, "/"))
		p.exact[o] = true
		if o != "null" { // no source expression names it
			ancestors = append(ancestors, o)
		}
	}
	p.frameAncestors = strings.Join(ancestors, " ")
	if p.any {
		p.frameAncestors = "frame-ancestors *"
	}
	return p
}

// allowed reports whether r's Origin may use the gateway. Requests without
// an Origin (curl, servers) are not from a browser page and pass; a browser
// page from a site not configured is refused, which is what stops
// cross-site WebSocket hijacking. With no configuration only the page's own
// origin is allowed: the same scheme (as the node sees it: scheme), host
// and port.
func (p originPolicy) allowed(r *http.Request, scheme string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if p.any {
		return true
	}
	if p.exact[strings.ToLower(origin)] {
		return true
	}
	if len(p.exact) > 0 {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Scheme, scheme) && strings.EqualFold(u.Host, r.Host)
}

// hostPolicy decides which Host header values the node answers.
type hostPolicy struct {
	any   bool
	names map[string]bool // lower case, no port, IPv6 without brackets
}

func newHostPolicy(allowed []string) hostPolicy {
	p := hostPolicy{any: len(allowed) == 0, names: make(map[string]bool)}
	for _, h := range allowed {
		if h == "*" {
			p.any = true
			continue
		}
		p.names[hostName(h)] = true
	}
	return p
}

// hostName is the host of a Host header value, lower case, without port
// or IPv6 brackets.
func hostName(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
}

func (p hostPolicy) allowed(host string) bool {
	return p.any || p.names[hostName(host)]
}
