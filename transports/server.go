package transports

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/cometgate/cometgate/gateway"
)

// Options configure the HTTP side of a node.
type Options struct {
	// Gateway owns the sessions. Required.
	Gateway *gateway.Gateway
	// AllowedOrigins lists the Origins browsers may connect from: exact
	// "scheme://host[:port]" values or "*". Empty means same host only.
	AllowedOrigins []string
	// APIKeys authorise POST /api/publish (Authorization: Bearer KEY).
	APIKeys []string
	// AllowLoopback lets loopback clients use the API without a key.
	// Behind a reverse proxy on the same host every request comes from
	// loopback: turn it off there, or list the proxy in TrustedProxies so
	// that the client's own address counts.
	AllowLoopback bool
	// AllowedHosts lists the Host header values (host names or IP
	// addresses, without port; "*" for any) browsers may reach the node
	// by; a request for another host gets 421. It defends against DNS
	// rebinding: a page of an attacker's domain that resolves to the node
	// names that domain as its Host. Empty: any host (set it whenever the
	// node listens on a public address).
	AllowedHosts []string
	// TrustedProxies are the addresses of reverse proxies whose
	// X-Forwarded-For (else Forwarded's for=, RFC 7239) and
	// X-Forwarded-Proto headers are believed: the client's address is then
	// the last one in the chain that is not a trusted proxy. It is what per-address limits count and what
	// AllowLoopback looks at. Empty: the connection's peer address.
	TrustedProxies []netip.Prefix
	// CallbackCookie lets the callback transports (JSONP and htmlfile,
	// native and SockJS) authenticate with the cometgate_token cookie. A
	// script or iframe load sends no Origin, so any site can make a
	// browser load them with the cookie: off, they take a token only from
	// ?token=, and refuse a request that carries the cookie and no token.
	CallbackCookie bool
	// MaxBodyBytes bounds API request bodies.
	MaxBodyBytes int64
	// Compression configures permessage-deflate on /ws and the SockJS
	// websocket (wsdeflate.go); the zero value offers it.
	Compression Compression
	// ReadBodyTimeout bounds the time a client may take to send a request
	// body (a trickled body is slowloris too); past it the request gets
	// 408. 0 means 10s.
	ReadBodyTimeout time.Duration
	// WriteTimeout bounds every write to a client; a write that takes longer
	// ends the session (its peer is gone or not reading).
	WriteTimeout time.Duration
	// MaxSessionsPerIP bounds concurrent sessions per client address (an
	// IPv4 address, an IPv6 /64); 0 is unlimited. Refused with 429 and
	// code 4029.
	MaxSessionsPerIP int
	// MaxSessions bounds the node's sessions; 0 is unlimited. Past it new
	// sessions are refused with 503, code 3005 and a Retry-After of a few
	// seconds (jittered), so that a load balancer or the client goes
	// elsewhere.
	MaxSessions int
	// NewSessionsPerIP limits how fast one client address opens sessions;
	// NewSessionsPerNode how fast the node opens them, whoever asks (a
	// reconnect storm after another node went away). A session refused
	// by either gets 429 (code 3029) or 503 (code 3005) with a jittered
	// Retry-After, in the framing of its transport. The zero Rate is
	// unlimited. The buckets read the gateway's clock (gateway.Config.Clock).
	NewSessionsPerIP   gateway.Rate
	NewSessionsPerNode gateway.Rate
	// StreamLimit is the number of bytes after which a streaming response
	// (XHR streaming, htmlfile) ends so that the client opens a fresh one,
	// acknowledging what it got; 0 means 128 KiB. Keep it below the
	// session queue bound: packets a stream wrote stay queued until the
	// client acknowledges them.
	StreamLimit int
	// ParkAfter is how long a long-poll that has nothing to answer yet is
	// held on a goroutine before it is parked (polling.go, "Parked
	// requests"): a poll answered within it costs less CPU held, one that
	// waits longer costs less memory parked. 0 means 100 ms; negative
	// parks at once.
	ParkAfter time.Duration
	// SockJS lists the SockJS endpoints (see SockJSEndpoint); check them
	// with ValidateSockJS before New.
	SockJS []SockJSEndpoint
	// Bridge lists the TCP targets browsers may reach (GET /tcp/{name} and
	// SockJS endpoints in tcp mode); check them with ValidateBridge. Empty:
	// no bridge.
	Bridge []BridgeTarget
	// BridgeDialTimeout bounds a connect to a target; 0 means 5s.
	BridgeDialTimeout time.Duration
	// Tokens, when set, verifies the tokens browsers present (?token=,
	// Authorization: Bearer, or the cometgate_token cookie): a session
	// opened with a valid token acts for its principal, and the requests
	// of that session must present a token of the same subject. Nil: no
	// authentication, every session is anonymous.
	Tokens *gateway.TokenVerifier
	// RequireToken refuses sessions without a valid token (401, 4401), or,
	// with Webhook, sessions the application does not admit.
	RequireToken bool
	// Webhook, when set instead of Tokens, authenticates browsers by
	// asking the application (see WebhookOptions).
	Webhook *WebhookOptions
	// Web serves the browser client and demo pages at "/"; may be nil.
	Web http.Handler
	// Metrics serves /metrics; may be nil.
	Metrics http.Handler
	// ClusterKey, when set, signs the requests this node forwards to
	// others (HeaderForwardedSig) and makes it refuse forwarded requests
	// that are not signed with it. Every node the same; the node table
	// signs its messages with it too (gateway.NodesOptions.ClusterKey).
	ClusterKey []byte
	// PeerNetworks are where other nodes may be: forwarding dials no
	// address outside them. nil means gateway.DefaultPeerNetworks.
	PeerNetworks []netip.Prefix
	// Nodes, when set, lets this node proxy a request for a session of
	// another node to that node (see HeaderForwarded): the request-per-poll
	// transports and POST /session/{sid}/send, so that a round-robin load
	// balancer needs no sticky sessions. Nil answers such requests with
	// "session not found" (4004).
	Nodes NodeDirectory
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Server is a node's HTTP side: the routes of every transport family and
// the health endpoints. Each family has a handler type of its own, built
// from the node's shared dependencies (node.go); Server only routes to
// them. Shutdown of the connections is the gateway's job
// (Gateway.Shutdown closes every session); Wait then waits for the
// readers.
type Server struct {
	*node
	router chi.Router
}

// New builds the handlers and their routes.
func New(opts Options) *Server {
	n := newNode(opts)
	s := &Server{node: n}
	r := chi.NewRouter()
	r.Use(s.recoverer)
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	if n.opts.Metrics != nil {
		r.Method(http.MethodGet, "/metrics", n.opts.Metrics)
	}
	// Everything but the health and metrics endpoints (which probes and
	// scrapers reach by address) answers only the allowed hosts.
	t := r.With(s.checkHost, s.checkForwarded)
	t.Method(http.MethodGet, "/ws", wsHandler{n})
	t.Method(http.MethodGet, "/sse", sseHandler{n})
	t.Method(http.MethodGet, "/tcp/{target}", bridgeHandler{n})
	t.Method(http.MethodPost, "/session/{sid}/send", sendHandler{n})
	t.Options("/session/{sid}/send", n.preflight)
	routePolling(t, n)
	mountSockJS(t, n)
	t.Method(http.MethodPost, "/api/publish", publishHandler{n})
	t.Method(http.MethodPost, "/api/revoke", revokeHandler{n})
	if n.opts.Web != nil {
		t.Handle("/*", n.framedBy(n.opts.Web))
	}
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "not found")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	})
	s.router = r
	return s
}

// ServeHTTP makes Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") == "" { // an upgrade's response is the handshake's own
		w = &drainWriter{ResponseWriter: w, gw: s.gw}
	}
	s.router.ServeHTTP(w, r)
}

// drainWriter ends the connection after its response when the node
// drains by the time the response begins (net/http closes a connection
// after a response that says Connection: close), so that no client's or
// balancer's pool holds an idle connection to the node when its HTTP
// server stops: closing an idle connection races with the next request
// sent on it, which the client cannot safely send again unless it is
// idempotent, and which fails. It decides when the response begins, not
// when the request came: a long-poll that was waiting when the drain
// began ends its connection too. Handlers reach the connection through
// http.ResponseController, which unwraps it.
type drainWriter struct {
	http.ResponseWriter
	gw      *gateway.Gateway
	started bool
}

func (d *drainWriter) begin() {
	if !d.started {
		d.started = true
		if d.gw.Draining() {
			d.Header().Set("Connection", "close")
		}
	}
}

func (d *drainWriter) WriteHeader(code int) {
	d.begin()
	d.ResponseWriter.WriteHeader(code)
}

func (d *drainWriter) Write(b []byte) (int, error) {
	d.begin()
	return d.ResponseWriter.Write(b)
}

// FlushError is Flush for http.ResponseController: a response that begins
// with a flush begins here.
func (d *drainWriter) FlushError() error {
	d.begin()
	switch f := d.ResponseWriter.(type) {
	case interface{ FlushError() error }:
		return f.FlushError()
	case http.Flusher:
		f.Flush()
		return nil
	}
	return http.ErrNotSupported
}

// Unwrap gives http.ResponseController the connection's own writer (for
// Flush, Hijack, deadlines).
func (d *drainWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// Reentry returns the listener through which the connections of parked
// requests (long-polls, XHR and htmlfile streams) go back to the HTTP
// server once their response is written (polling.go, "Parked
// requests"). Serve it with the http.Server that serves the node's own
// listener: that server then reads the client's next request on the
// connection as on a new one. Until Reentry is called, such requests are
// held on a goroutine each. http.Server.Shutdown closes it, and so does
// Wait.
func (s *Server) Reentry() net.Listener {
	if l := s.reentry.Load(); l != nil {
		return l
	}
	s.reentry.CompareAndSwap(nil, newReentry())
	return s.reentry.Load()
}

// Wait blocks until every connection reader (parked requests included)
// has returned, closes the Reentry listener, stops the poller, and closes
// the idle connections to other nodes. Call it after Gateway.Shutdown,
// which closes the connections, and after the HTTP server's handlers
// returned.
func (s *Server) Wait() {
	s.readers.Wait()
	if l := s.reentry.Load(); l != nil {
		_ = l.Close()
	}
	s.pollMu.Lock()
	p := s.poller
	s.poller = nil
	s.pollMu.Unlock()
	if p != nil {
		p.close() // no connection is registered any more
	}
	if s.fwd != nil {
		s.fwd.transport.CloseIdleConnections()
	}
}

// checkHost answers 421 to a request for a host the node does not serve
// (Options.AllowedHosts): DNS rebinding.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.gate.hosts.allowed(r.Host) {
			s.gate.metrics.Refused(gateway.RefusedHost)
			writeJSON(w, http.StatusMisdirectedRequest, errorBody{Error: "host not allowed: " + truncate(r.Host, 64), Code: gateway.DisconnectForbidden.Code})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// checkForwarded refuses, when there is a cluster key, a request that
// says another node forwarded it but does not carry that node's
// signature: forwarded requests are served here without being forwarded
// again, and must come from the cluster.
func (s *Server) checkForwarded(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.opts.ClusterKey != nil && r.Header.Get(HeaderForwarded) != "" && !verifyForwarded(s.opts.ClusterKey, r) {
			s.gate.metrics.Refused(gateway.RefusedForwardSignature)
			writeJSON(w, http.StatusForbidden, errorBody{Error: "a forwarded request without a valid cluster signature", Code: gateway.DisconnectForbidden.Code})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("handler panic", slog.Any("panic", v), slog.String("path", r.URL.Path))
				writeError(w, http.StatusInternalServerError, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// errorBody is the JSON body of every HTTP error the gateway answers.
type errorBody struct {
	Error string `json:"error"`
	Code  int    `json:"code,omitempty"`
	// Delay is the advice of a refusal that asks the client to retry:
	// how long to wait first, in milliseconds, jittered per answer (the
	// Retry-After header says the same in whole seconds).
	Delay int64 `json:"delay,omitempty"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	ready := s.gw.Ready() && (s.opts.Nodes == nil || s.opts.Nodes.Ready())
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"ready": ready, "sessions": s.gw.SessionCount()})
}
