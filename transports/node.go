package transports

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// node is what every handler of a node is built from: the gateway, the
// admission gate, the readers of hijacked connections (the poller for
// idle ones, reader goroutines otherwise), the forwarder to other nodes
// and the bridge's dialer. Each transport family's handler type embeds
// it (websocket.go, sse.go, polling.go, jsonp.go, api.go, bridge_ws.go)
// or holds it (a SockJS endpoint); none of them refers to another
// family's handler except where one family is another's special case
// (SockJS's raw websocket is the native one).
type node struct {
	opts    Options
	gw      *gateway.Gateway
	log     *slog.Logger
	gate    *gate      // the one admission check
	fwd     *forwarder // nil: no forwarding
	bridge  *bridgeDialer
	readers sync.WaitGroup // every hijacked connection until it is closed

	// poller watches idle WebSocket and SSE connections instead of a
	// reader goroutine each (netpoll_linux.go). It starts with the first
	// such connection and stops in Server.Wait; noPoller is set where it
	// cannot start (or by tests of the goroutine fallback).
	pollMu   sync.Mutex
	poller   *poller
	noPoller bool

	// reentry gives parked requests' connections back to the HTTP
	// server (polling.go, "Parked requests"); nil until Server.Reentry,
	// and until then every request is held on a goroutine.
	reentry atomic.Pointer[reentry]
	parked  atomic.Int64 // requests (polls, streams) parked now
	// onPark, when set (by benchmarks), is called after each park.
	onPark atomic.Pointer[func()]

	maxFrame  int           // the gateway's frame limit
	heartbeat time.Duration // the gateway's heartbeat interval

	// sjsEps are the SockJS endpoints (mountSockJS); sjsCloseOut is
	// kicked whenever one of their ended sessions gave its close frame
	// to a request (Server.AwaitSockJSCloses waits on it).
	sjsEps      []*sockjsEndpoint
	sjsCloseOut chan struct{}
}

// newNode fills the options' defaults and builds the shared parts.
func newNode(opts Options) *node {
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
	if opts.ParkAfter == 0 {
		opts.ParkAfter = defaultParkAfter
	}
	if opts.ReadBodyTimeout <= 0 {
		opts.ReadBodyTimeout = 10 * time.Second
	}
	n := &node{
		sjsCloseOut: make(chan struct{}, 1),
		opts:        opts,
		gw:          opts.Gateway,
		log:         opts.Logger,
		gate:        newGate(opts),
		bridge:      newBridgeDialer(opts.Bridge, opts.BridgeDialTimeout, opts.Logger.Warn),
		maxFrame:    opts.Gateway.Config().MaxFrameBytes,
		heartbeat:   opts.Gateway.Config().Heartbeat,
	}
	if opts.Nodes != nil {
		n.fwd = newForwarder(opts, opts.Logger)
	}
	return n
}

// idlePoller returns the node's poller, starting it on first use, or nil
// when there is none (not Linux, or epoll failed): connections then keep
// a reader goroutine each.
func (n *node) idlePoller() *poller {
	n.pollMu.Lock()
	defer n.pollMu.Unlock()
	if n.poller == nil && !n.noPoller {
		p, err := newPoller()
		if err != nil {
			n.log.Warn("idle connections keep a reader goroutine each: no poller", "err", err)
			n.noPoller = true
			return nil
		}
		n.poller = p
	}
	return n.poller
}

// watchIdle hands conn to the poller: ready runs (on a goroutine of its
// own) whenever input arrives, and must re-arm the registration or end
// the connection. It returns nil when conn cannot be polled; the caller
// then reads it with a goroutine.
func (n *node) watchIdle(conn net.Conn, ready func()) *pollReg {
	rc := rawConn(conn)
	if rc == nil {
		return nil
	}
	p := n.idlePoller()
	if p == nil {
		return nil
	}
	return p.register(rc, ready)
}

// readBody reads r's body, up to limit bytes and within
// Options.ReadBodyTimeout: http.Server's ReadHeaderTimeout stops a client
// that trickles its headers, but nothing else bounds one that trickles a
// body (ReadTimeout would cut the long-polls and streams that follow the
// body), so every handler that reads a body reads it here. The deadline
// is lifted once the body is in, so a long-poll may then wait as long as
// it likes. A refusal is 413 past limit, 408 past the deadline, 400 for a
// body that breaks off.
func (n *node) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *refusal) {
	rc := http.NewResponseController(w)
	// Without a deadline (a connection that has none to set) the body is
	// read as before: bounded in size only.
	timed := rc.SetReadDeadline(time.Now().Add(n.opts.ReadBodyTimeout)) == nil
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err == nil {
		if timed {
			_ = rc.SetReadDeadline(time.Time{})
		}
		return body, nil
	}
	// The rest of the body is not worth waiting for: net/http would read
	// up to 256 KiB of it before answering, to keep the connection.
	w.Header().Set("Connection", "close")
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return nil, &refusal{status: http.StatusRequestEntityTooLarge, code: gateway.DisconnectTooLarge.Code,
			msg: fmt.Sprintf("body exceeds %d bytes", limit)}
	case errors.As(err, &ne) && ne.Timeout():
		return nil, &refusal{status: http.StatusRequestTimeout, code: gateway.DisconnectProtocol.Code,
			msg: fmt.Sprintf("request body not received within %s", n.opts.ReadBodyTimeout)}
	}
	return nil, &refusal{status: http.StatusBadRequest, code: gateway.DisconnectProtocol.Code, msg: "reading body: " + err.Error()}
}

// framedBy lets only the allowed Origins frame the pages h serves (the
// demo pages publish on a click: a foreign site that framed them could
// make a visitor click through an invisible frame).
func (n *node) framedBy(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", n.gate.origins.frameAncestors)
		h.ServeHTTP(w, r)
	})
}

// cors adds the CORS headers for an allowed cross-origin request.
func (n *node) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	if origin != "null" {
		// "null" is any sandboxed frame or local file: never with the
		// browser's credentials.
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	h.Add("Vary", "Origin")
}

func (n *node) preflight(w http.ResponseWriter, r *http.Request) {
	if ref := n.gate.origin(r); ref != nil {
		ref.writeJSON(w)
		return
	}
	n.cors(w, r)
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
		h.Set("Access-Control-Allow-Headers", req)
	}
	h.Set("Access-Control-Max-Age", "86400")
	w.WriteHeader(http.StatusNoContent)
}
