package transports

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// Forwarding to the owner node. A session lives on the node that opened it,
// and its id starts with that node's id ("<node>.<random>"). The
// request-per-poll transports and POST /session/{sid}/send make one HTTP
// request per poll or per send, so behind a round-robin load balancer most
// of them land on another node; that node proxies them to the owner, whose
// base URL it learnt from the owner's announcements on the broker
// (gateway.Nodes). The owner then does everything a direct request gets:
// Origin check (Host and Origin are kept), acks, frames, the response.
//
// A forwarded request carries HeaderForwarded, and a request carrying it is
// never forwarded again, so a stale node table cannot make a loop: the
// second node answers "session not found" like a node without forwarding.

// HeaderForwarded marks a request one node proxied to the owner of its
// session; its value is the forwarding node's id.
const HeaderForwarded = "X-Cometgate-Forwarded"

// HeaderForwardedSig carries, with a cluster key (Options.ClusterKey),
// the forwarding node's signature of a forwarded request:
// "UNIXSECONDS.SIGNATURE", the signature being HMAC-SHA256 (base64url)
// over the node id, the time, the method and the request URI. The owner
// refuses a forwarded request whose signature does not verify, or was
// made more than gateway.MaxClockSkew away from its clock.
const HeaderForwardedSig = "X-Cometgate-Signature"

// forwardSig signs a forwarded request.
func forwardSig(key []byte, node string, ts int64, method, uri string) string {
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "cometgate-forward\n%s\n%d\n%s %s", node, ts, method, uri)
	return strconv.FormatInt(ts, 10) + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// verifyForwarded checks the signature of a forwarded request.
func verifyForwarded(key []byte, r *http.Request) bool {
	tsStr, _, ok := strings.Cut(r.Header.Get(HeaderForwardedSig), ".")
	if !ok {
		return false
	}
	ts, err := strconv.ParseInt(tsStr, 10, 64)
	if err != nil {
		return false
	}
	if d := time.Since(time.Unix(ts, 0)); d > gateway.MaxClockSkew || d < -gateway.MaxClockSkew {
		return false
	}
	want := forwardSig(key, r.Header.Get(HeaderForwarded), ts, r.Method, r.URL.RequestURI())
	return hmac.Equal([]byte(want), []byte(r.Header.Get(HeaderForwardedSig)))
}

// errPeerRefused is what dialling a node whose address lies outside the
// peer networks fails with.
var errPeerRefused = errors.New("transports: the node's address is not in the peer networks")

// NodeDirectory finds other nodes of the cluster. gateway.Nodes implements
// it; every method must be safe for concurrent use.
type NodeDirectory interface {
	// Find returns the base URL ("http://10.0.0.5:8080") of node id,
	// asking the cluster when it does not know the node; false when the
	// node is gone (or is this node). gateway.ErrBrokerDown: nobody could
	// be asked.
	Find(ctx context.Context, id string) (baseURL string, ok bool, err error)
	// Suspect is Find for a node that did not answer a forwarded request:
	// it asks the node whether it lives, and forgets it when it does not.
	Suspect(ctx context.Context, id string) (baseURL string, ok bool, err error)
	// WhoOwns asks the cluster which node owns key (a SockJS session);
	// see gateway.Nodes.WhoOwns.
	WhoOwns(ctx context.Context, key string) (owner, ownerURL, claimant string, err error)
	// SetOwnerFunc installs how this node answers WhoOwns questions.
	SetOwnerFunc(f func(key string) (owns, claiming bool))
	// Owned tells the cluster, in the background, that this node now owns
	// key; see gateway.Nodes.Owned.
	Owned(key string)
	// Ready reports whether this node knows the cluster well enough to
	// take requests (see gateway.Nodes.Ready).
	Ready() bool
}

var _ NodeDirectory = (*gateway.Nodes)(nil)

// forwardDialTimeout bounds the connection to the owner node: a node that
// does not answer in that time is treated as gone (502).
const forwardDialTimeout = 5 * time.Second

// forwarder proxies requests to owner nodes. Its transport's idle
// connections are closed by Server.Wait; stop cancels forwards in flight.
type forwarder struct {
	nodes     NodeDirectory
	self      string
	key       []byte // the cluster key; nil: requests are not signed
	log       *slog.Logger
	metrics   *gateway.Metrics
	transport *http.Transport
	proxy     *httputil.ReverseProxy
	ctx       context.Context // cancelled by StopForwarding
	stop      context.CancelFunc

	// mu guards the count of forwards in flight and, once stop was
	// called, the channel closed when that count reaches zero: it orders
	// a forward's admission before StopForwarding's wait.
	mu       sync.Mutex
	inflight int
	drained  chan struct{}
}

// forwardKey is the context key of a forwarded request's forwardTarget.
type forwardKey struct{}

// forwardTarget travels with a forwarded request, for Rewrite and the
// error handler: the owner's base URL and id, and whether the owner
// turned out to be gone (then nothing was written, and the caller
// answers "session not found").
type forwardTarget struct {
	url   *url.URL
	owner string
	gone  bool
}

func newForwarder(opts Options, log *slog.Logger) *forwarder {
	ctx, stop := context.WithCancel(context.Background())
	peers := opts.PeerNetworks
	if peers == nil {
		peers = gateway.DefaultPeerNetworks
	}
	f := &forwarder{
		nodes:   opts.Nodes,
		self:    opts.Gateway.Config().NodeID,
		key:     opts.ClusterKey,
		log:     log,
		metrics: opts.Gateway.Config().Metrics,
		ctx:     ctx,
		stop:    stop,
		transport: &http.Transport{
			Proxy:                 nil, // nodes talk directly, never through HTTP_PROXY
			DialContext:           peerDialer(peers),
			TLSHandshakeTimeout:   forwardDialTimeout,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
	}
	f.proxy = &httputil.ReverseProxy{
		Rewrite:   f.rewrite,
		Transport: f.transport,
		// Streams (XHR streaming, htmlfile) go out as the owner writes
		// them, never held in a buffer.
		FlushInterval:  -1,
		ModifyResponse: func(*http.Response) error { f.metrics.Forwarded(true); return nil },
		ErrorHandler:   f.failed,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return f
}

func (f *forwarder) rewrite(pr *httputil.ProxyRequest) {
	pr.SetURL(pr.In.Context().Value(forwardKey{}).(*forwardTarget).url)
	// The owner checks Origin against the Host the browser used, as if
	// the request had come straight to it.
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
	pr.Out.Header.Set(HeaderForwarded, f.self)
	if f.key != nil {
		pr.Out.Header.Set(HeaderForwardedSig, forwardSig(f.key, f.self, time.Now().Unix(), pr.Out.Method, pr.Out.URL.RequestURI()))
	}
}

// peerDialer dials other nodes: only at addresses in peers, and the name
// an announcement gave resolved once per connection (see dialChecked).
func peerDialer(peers []netip.Prefix) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
		defer cancel()
		conn, allowed, err := dialChecked(ctx, net.DefaultResolver.LookupNetIP, addr, func(a netip.Addr) string {
			if inAny(a, peers) {
				return ""
			}
			return "not in the peer networks"
		}, nil)
		switch {
		case conn != nil:
			return conn, nil
		case allowed == 0 && err == nil:
			return nil, errPeerRefused
		}
		var op *net.OpError
		if !errors.As(err, &op) {
			// A name that no longer resolves: as unreachable as a refused
			// connection (the node may be gone).
			err = &net.OpError{Op: "dial", Net: network, Err: err}
		}
		return nil, err
	}
}

// failed answers a forward that got no response from the owner. When the
// owner could not be reached at all, the cluster is asked whether it
// lives: a node that crashed said no goodbye, and its clients must hear
// "session not found" (open a new session, resume from cursors), not be
// sent back to it.
func (f *forwarder) failed(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case f.ctx.Err() != nil:
		// This node is shutting down, the session's node is not: the
		// client retries the request elsewhere (never 3000, which would
		// end a healthy session on another node).
		writeTryAgain(w, shuttingDownTryAgain)
		return
	case errors.Is(r.Context().Err(), context.Canceled):
		// The client went away: nobody reads the answer.
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	f.metrics.Forwarded(false)
	st := r.Context().Value(forwardKey{}).(*forwardTarget)
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		_, alive, aerr := f.nodes.Suspect(r.Context(), st.owner)
		if !alive && aerr == nil {
			st.gone = true
			return
		}
	}
	f.log.Warn("forwarding to the session's node failed",
		slog.String("path", r.URL.Path), slog.String("node", st.owner), slog.Any("err", err))
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusBadGateway, "the node that owns this session is unreachable: "+err.Error())
}

// forward proxies r to the node that owns session sid when that session is
// not here, its id names another node, and r was not forwarded already.
// A node the table does not know is asked for first (it may have started
// after this one last heard of the cluster). It reports whether it
// answered r; when it did not, the caller serves r itself, and answers
// "session not found" if the session is not here: the owner is gone. While
// the broker is down an unknown owner cannot be asked for, and the client
// is told to come back (503).
func (n *node) forward(w http.ResponseWriter, r *http.Request, sid string) bool {
	f := n.fwd
	if f == nil || sid == "" || r.Header.Get(HeaderForwarded) != "" {
		return false
	}
	if parseSID(sid) != nil || n.gw.Session(sid) != nil {
		return false
	}
	owner, _, ok := strings.Cut(sid, ".")
	if !ok || owner == "" || owner == f.self {
		return false
	}
	return n.forwardTo(w, r, owner, "")
}

// writeTryAgain answers a request for a session that this node cannot
// reach now (it shuts down and no longer forwards, or the owner is
// unknown while the broker is down): 503 with Retry-After and no close
// code, which clients take as "try the request again" (the balancer sends
// it on) and not as the end of their session.
func writeTryAgain(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, msg)
}

const shuttingDownTryAgain = "this node is shutting down and no longer forwards: try the request again"

// forwardTo proxies r to node owner (at base, when the caller knows it
// already). It reports false, having written nothing, when the owner is
// gone.
func (n *node) forwardTo(w http.ResponseWriter, r *http.Request, owner, base string) bool {
	f := n.fwd
	if !f.begin() {
		// Forwarding stopped (this node shuts down); the session's node
		// may well live, so this is no "session not found".
		writeTryAgain(w, shuttingDownTryAgain)
		return true
	}
	defer f.end()
	if base == "" {
		var ok bool
		var err error
		base, ok, err = f.nodes.Find(r.Context(), owner)
		switch {
		case errors.Is(err, gateway.ErrBrokerDown):
			// No close code: the session may well live (3000 would end it).
			writeTryAgain(w, "the session's node is not known and the broker is down: try the request again")
			return true
		case !ok:
			return false
		}
	}
	target, err := url.Parse(base)
	if err != nil {
		// gateway.Nodes only admits valid URLs; another directory might not.
		n.log.Warn("node directory returned a bad URL", slog.String("node", owner), slog.String("url", base))
		return false
	}
	st := &forwardTarget{url: target, owner: owner}
	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), forwardKey{}, st))
	defer cancel()
	unlink := context.AfterFunc(f.ctx, cancel) // StopForwarding cuts this request
	defer unlink()
	f.proxy.ServeHTTP(w, r.WithContext(ctx))
	return !st.gone
}

// begin admits a forward, unless forwarding stopped; end must follow.
func (f *forwarder) begin() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return false
	}
	f.inflight++
	return true
}

func (f *forwarder) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inflight--; f.inflight == 0 && f.drained != nil {
		close(f.drained)
		f.drained = nil
	}
}

// StopForwarding cancels the requests this node is proxying to other
// nodes and forwards nothing from then on, then waits until every
// cancelled forward has answered its client, or ctx ends. A forward the
// owner had not answered yet gets 503 with Retry-After (try again: the
// session lives on its node); one whose response is under way (a SockJS
// stream) is cut, which ends that SockJS session: the bytes its owner
// already sent cannot be taken back. The caller closes the connections
// only after this, so that no forward's client finds its connection
// closed without an answer. It is idempotent and safe to call
// concurrently with requests.
func (s *Server) StopForwarding(ctx context.Context) {
	f := s.fwd
	if f == nil {
		return
	}
	f.mu.Lock()
	f.stop()
	if f.inflight == 0 {
		f.mu.Unlock()
		return
	}
	if f.drained == nil {
		f.drained = make(chan struct{})
	}
	drained := f.drained
	f.mu.Unlock()
	select {
	case <-drained:
	case <-ctx.Done():
	}
}
