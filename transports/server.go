package transports

import (
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
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
	// AllowLoopback lets loopback clients use the API without a key. Turn it
	// off behind a reverse proxy on the same host.
	AllowLoopback bool
	// MaxBodyBytes bounds API request bodies.
	MaxBodyBytes int64
	// WriteTimeout bounds every write to a client; a write that takes longer
	// ends the session (its peer is gone or not reading).
	WriteTimeout time.Duration
	// MaxSessionsPerIP bounds concurrent sessions per client address; 0 is
	// unlimited.
	MaxSessionsPerIP int
	// StreamLimit is the number of bytes after which a streaming response
	// (XHR streaming, htmlfile) ends so that the client opens a fresh one,
	// acknowledging what it got; 0 means 128 KiB. Keep it below the
	// session queue bound: packets a stream wrote stay queued until the
	// client acknowledges them.
	StreamLimit int
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
	// RequireToken refuses sessions without a valid token (401, 4401).
	RequireToken bool
	// Web serves the browser client and demo pages at "/"; may be nil.
	Web http.Handler
	// Metrics serves /metrics; may be nil.
	Metrics http.Handler
	// Nodes, when set, lets this node proxy a request for a session of
	// another node to that node (see HeaderForwarded): the request-per-poll
	// transports and POST /session/{sid}/send, so that a round-robin load
	// balancer needs no sticky sessions. Nil answers such requests with
	// "session not found" (4004).
	Nodes NodeDirectory
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Server holds the HTTP handlers of a node and what reads its hijacked
// connections: a poller for idle WebSocket and SSE connections (Linux),
// a small reader goroutine per connection otherwise. Shutdown of those
// connections is the gateway's job (Gateway.Shutdown closes every
// session); Wait then waits for the readers.
type Server struct {
	opts    Options
	gw      *gateway.Gateway
	log     *slog.Logger
	gate    *gate // the one admission check
	router  chi.Router
	readers sync.WaitGroup
	fwd     *forwarder // nil: no forwarding
	bridge  *bridgeDialer

	// poller watches idle WebSocket and SSE connections instead of a
	// reader goroutine each (netpoll_linux.go). It starts with the first
	// such connection and stops in Wait; noPoller is set where it cannot
	// start (or by tests of the goroutine fallback).
	pollMu   sync.Mutex
	poller   *poller
	noPoller bool

	maxFrame  int
	heartbeat time.Duration // the gateway's heartbeat interval
}

// New builds the handlers.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.StreamLimit <= 0 {
		opts.StreamLimit = defaultStreamLimit
	}
	s := &Server{
		opts:      opts,
		gw:        opts.Gateway,
		log:       opts.Logger,
		gate:      newGate(opts),
		maxFrame:  opts.Gateway.Config().MaxFrameBytes,
		heartbeat: opts.Gateway.Config().Heartbeat,
	}
	if opts.Nodes != nil {
		s.fwd = newForwarder(opts.Nodes, opts.Gateway, opts.Logger)
	}
	s.bridge = newBridgeDialer(opts.Bridge, opts.BridgeDialTimeout, opts.Logger.Warn)
	r := chi.NewRouter()
	r.Use(s.recoverer)
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	if opts.Metrics != nil {
		r.Method(http.MethodGet, "/metrics", opts.Metrics)
	}
	r.Get("/ws", s.serveWebSocket)
	r.Get("/sse", s.serveSSE)
	r.Get("/tcp/{target}", s.serveBridge)
	r.Post("/session/{sid}/send", s.serveSend)
	r.Options("/session/{sid}/send", s.preflight)
	s.routePolling(r)
	s.mountSockJS(r)
	r.Post("/api/publish", s.servePublish)
	if opts.Web != nil {
		r.Handle("/*", opts.Web)
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
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// Wait blocks until every connection reader has returned, stops the
// poller, and closes the idle connections to other nodes. Call it after
// Gateway.Shutdown, which closes the connections, and after the HTTP
// server's handlers returned.
func (s *Server) Wait() {
	s.readers.Wait()
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

// idlePoller returns the node's poller, starting it on first use, or nil
// when there is none (not Linux, or epoll failed): connections then keep
// a reader goroutine each.
func (s *Server) idlePoller() *poller {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	if s.poller == nil && !s.noPoller {
		p, err := newPoller()
		if err != nil {
			s.log.Warn("idle connections keep a reader goroutine each: no poller", "err", err)
			s.noPoller = true
			return nil
		}
		s.poller = p
	}
	return s.poller
}

// watchIdle hands conn to the poller: ready runs (on a goroutine of its
// own) whenever input arrives, and must re-arm the registration or end
// the connection. It returns nil when conn cannot be polled; the caller
// then reads it with a goroutine.
func (s *Server) watchIdle(conn net.Conn, ready func()) *pollReg {
	if b, ok := conn.(*bufferedConn); ok {
		conn = b.Conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := s.idlePoller()
	if p == nil {
		return nil
	}
	return p.register(rc, ready)
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
	ready := s.gw.Ready()
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"ready": ready, "sessions": s.gw.SessionCount()})
}

// cors adds the CORS headers for an allowed cross-origin request.
func (s *Server) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Add("Vary", "Origin")
}

func (s *Server) preflight(w http.ResponseWriter, r *http.Request) {
	if ref := s.gate.origin(r); ref != nil {
		ref.writeJSON(w)
		return
	}
	s.cors(w, r)
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		h.Set("Access-Control-Allow-Headers", req)
	}
	h.Set("Access-Control-Max-Age", "86400")
	w.WriteHeader(http.StatusNoContent)
}

// apiAuthorized applies the publish API's key rule.
func (s *Server) apiAuthorized(r *http.Request) bool {
	if s.opts.AllowLoopback && clientAddr(r).IsLoopback() {
		return true
	}
	auth := r.Header.Get("Authorization")
	key, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || key == "" {
		return false
	}
	for _, k := range s.opts.APIKeys {
		if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			return true
		}
	}
	return false
}
