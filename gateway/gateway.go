package gateway

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// ErrShuttingDown is returned by Open once Shutdown has begun; transports
// answer it with 503 so load balancers send the client elsewhere.
var ErrShuttingDown = errors.New("gateway: shutting down")

// Config is the gateway's own configuration; cmd/cometgate fills it from the
// YAML file.
type Config struct {
	// NodeID is the first token of every session id (see Session.ID).
	NodeID string
	// QueueBytes bounds each session's outgoing queue, in bytes: packets
	// not yet written and, for a retaining session, written but not yet
	// acknowledged.
	QueueBytes int
	// MaxFrameBytes bounds a client frame and a client publish payload.
	MaxFrameBytes int
	// MaxSubscriptions bounds subscriptions per session.
	MaxSubscriptions int
	// Heartbeat is the keep-alive interval of sessions opened without
	// their own (OpenOptions.Heartbeat).
	Heartbeat time.Duration
	// DisconnectDelay is how long a retaining session may stay without a
	// downstream, unless opened with its own (OpenOptions.DisconnectDelay).
	DisconnectDelay time.Duration
	// PublishTimeout bounds the wait for the broker's confirmation.
	PublishTimeout time.Duration
	// DedupeWindow is how long a message id (brokers.Message.ID) is
	// remembered on each delivery path, so that a publish retried within
	// it is delivered once; DedupeMax bounds the ids remembered per
	// subscribed pattern. 0 means 2 minutes and 10,000; a negative window
	// turns it off.
	DedupeWindow time.Duration
	DedupeMax    int
	// FrameRate limits the frames a session may send (every frame a
	// transport hands to HandleFrame, Apply or Reject: WebSocket
	// messages, SockJS messages, the frames of a POST body); PublishRate
	// limits its pub frames. Past the burst the session is closed with
	// DisconnectFrameRate or DisconnectPublishRate (4029). The zero Rate
	// means DefaultFrameRate and DefaultPublishRate; a negative PerSecond
	// turns the limit off.
	FrameRate   Rate
	PublishRate Rate
	// Clock is what rate limits read; nil means SystemClock. Tests inject
	// one they move by hand.
	Clock Clock
	// Rules are the channel namespaces; nothing else is allowed.
	Rules Rules
	// ClusterKey, when set, signs the revocations this node sends and is
	// required of those it receives (see RevokeChannel). At least 32
	// bytes; every node the same.
	ClusterKey []byte
	// RevocationTTL is how long a revocation this node sends refuses the
	// credentials its subject held (see RevokeChannel): at least the
	// longest lifetime of the application's tokens. 0 means
	// DefaultRevocationTTL.
	RevocationTTL time.Duration
	// Writers is the number of write workers that fan messages out and
	// write sessions (writers.go); 0 means GOMAXPROCS.
	Writers int
	// SendBatch is the most writes a worker makes in one system call
	// where the kernel has io_uring (sendbatch.go); 0 means
	// DefaultSendBatch, 1 makes every write on its own (sendto).
	SendBatch int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
}

func (c *Config) setDefaults() {
	if c.SendBatch == 0 {
		c.SendBatch = DefaultSendBatch
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = 1 << 20
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = 64 << 10
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = 128
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 25 * time.Second
	}
	if c.DisconnectDelay == 0 {
		c.DisconnectDelay = 5 * time.Second
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = 2 * time.Minute
	}
	if c.DedupeMax == 0 {
		c.DedupeMax = 10000
	}
	if c.RevocationTTL == 0 {
		c.RevocationTTL = DefaultRevocationTTL
	}
	if c.FrameRate == (Rate{}) {
		c.FrameRate = DefaultFrameRate
	}
	if c.PublishRate == (Rate{}) {
		c.PublishRate = DefaultPublishRate
	}
	if c.Clock == nil {
		c.Clock = SystemClock()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// The default per-session limits: far above what a page does (a ticker
// page acknowledges every 100 packets; a chat page publishes a few times
// a second), far below a flood (a script sending 10,000 frames a second
// is closed after a fifth of a second).
var (
	DefaultFrameRate   = Rate{PerSecond: 200, Burst: 1000}
	DefaultPublishRate = Rate{PerSecond: 50, Burst: 200}
)

// Gateway is one node: its sessions, the hub that fans broker messages out
// to them, and one heartbeat ticker per heartbeat interval in use. It owns
// every goroutine it starts (see the package doc) and Shutdown waits for
// all of them. All methods are safe for concurrent use.
type Gateway struct {
	cfg     Config
	broker  brokers.Broker
	hub     *hub
	writers *writerPool
	log     *slog.Logger
	metrics *Metrics

	ctx    context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc
	wg     sync.WaitGroup // writers, heartbeat writes, publishers, replays, closers

	mu       sync.Mutex
	sessions map[string]*Session
	// draining is set once, under mu (Open checks it under mu, so that no
	// session registers after Shutdown took the list), and read without
	// it on every request of a draining node (Draining).
	draining  atomic.Bool
	revokeSub brokers.Subscription // StartRevocations; nil before

	// The revocations held, by subject (revoke.go); revokedHeld is their
	// number, read without revMu by every admission.
	revMu       sync.RWMutex
	revoked     map[string]revocation
	revokedHeld atomic.Int64

	brokerUp    atomic.Bool
	everDown    atomic.Bool            // the connection was up once and then lost
	tickers     map[time.Duration]bool // heartbeat intervals with a ticker running; guarded by mu
	tickerEnd   chan struct{}
	tickerWG    sync.WaitGroup
	shutdown    sync.Once
	shutdownErr error
}

// New creates a gateway on broker b. The caller keeps ownership of b and
// closes it after Shutdown (the broker goes last).
func New(cfg Config, b brokers.Broker) (*Gateway, error) {
	cfg.setDefaults()
	if cfg.NodeID == "" {
		return nil, errors.New("gateway: NodeID is required")
	}
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	if cfg.ClusterKey != nil && len(cfg.ClusterKey) < 32 {
		return nil, errors.New("gateway: ClusterKey must be at least 32 bytes")
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{
		cfg:       cfg,
		broker:    b,
		log:       cfg.Logger,
		metrics:   cfg.Metrics,
		ctx:       ctx,
		cancel:    cancel,
		sessions:  make(map[string]*Session),
		revoked:   make(map[string]revocation),
		tickers:   make(map[time.Duration]bool),
		tickerEnd: make(chan struct{}),
	}
	g.writers = newWriterPool(g, cfg.Writers)
	g.hub = newHub(b, cfg.Metrics, g.writers, cfg.DedupeWindow, cfg.DedupeMax)
	g.brokerUp.Store(b.Ready())
	g.metrics.brokerState(b.Ready(), false)
	g.mu.Lock()
	g.startTickerLocked(cfg.Heartbeat)
	g.mu.Unlock()
	return g, nil
}

// Config returns the configuration in effect (defaults filled in).
func (g *Gateway) Config() Config { return g.cfg }

// BrokerState is the brokers.StateFunc to give the broker: it keeps
// readiness and the reconnect metrics true. A StateConnected that follows a
// loss of the connection counts as one reconnect; repeated reports of the
// same state count nothing. It is safe for concurrent use.
func (g *Gateway) BrokerState(st brokers.State) {
	switch st {
	case brokers.StateConnected:
		wasUp := g.brokerUp.Swap(true)
		reconnected := !wasUp && g.everDown.Load()
		g.metrics.brokerState(true, reconnected)
		if reconnected {
			g.hub.outageGaps()
		}
	default:
		if g.brokerUp.Swap(false) {
			g.everDown.Store(true)
			g.hub.outageBegan()
		}
		g.metrics.brokerState(false, false)
	}
}

// Draining reports whether Shutdown has begun: every session of this node
// was closed with DisconnectShutdown, or was gone before.
func (g *Gateway) Draining() bool { return g.draining.Load() }

// Ready reports whether the node should receive traffic: the broker is up
// (as last reported to BrokerState, or as the broker said when New ran)
// and the node is not draining.
func (g *Gateway) Ready() bool {
	return !g.draining.Load() && g.brokerUp.Load()
}

// OpenOptions describe a new session.
type OpenOptions struct {
	// Transport names the transport family for metrics and logs
	// ("websocket", "sse").
	Transport string
	// Retain keeps written packets until the client acknowledges them; the
	// polling transports need it, persistent connections do not.
	Retain bool
	// RemoteAddr is the client's address (behind trusted proxies, the one
	// they report), for the session's open and close log lines.
	RemoteAddr string
	// OnClose, if set, runs once when the session has ended, just before
	// Done is closed, on the goroutine that ended it (which may be one
	// calling Session.Close or Detach); it must not block.
	OnClose func()
	// Principal is who the session acts for (a verified token), or nil.
	// The session ends with DisconnectTokenExpired when its token expires,
	// unless a refresh frame brought a fresh one first.
	Principal *Principal
	// Reauth checks the token of a refresh frame and returns its
	// principal: the admission gate's check, bound to the session's
	// subject. nil: the session cannot refresh (it has no token).
	Reauth func(token string) (*Principal, error)
	// Heartbeat, when set, replaces Config.Heartbeat for this session (a
	// SockJS endpoint has its own heartbeat delay). Sessions with the same
	// interval share one ticker.
	Heartbeat time.Duration
	// DisconnectDelay, when set, replaces Config.DisconnectDelay for this
	// session: how long a retaining session may stay without a downstream.
	DisconnectDelay time.Duration
}

// Open creates a session and queues its hello packet. Nothing is written
// until a downstream is attached (Session.Attach). Open fails with
// ErrShuttingDown once Shutdown has begun, and with a *RevokedError for a
// principal a revocation refuses.
func (g *Gateway) Open(opts OpenOptions) (*Session, error) {
	s := &Session{
		g:               g,
		id:              g.newSessionID(),
		transport:       opts.Transport,
		metrics:         g.metrics.forTransport(opts.Transport),
		retain:          opts.Retain,
		remote:          opts.RemoteAddr,
		opened:          time.Now(),
		onClose:         opts.OnClose,
		reauth:          opts.Reauth,
		heartbeatEvery:  cmp.Or(opts.Heartbeat, g.cfg.Heartbeat),
		disconnectDelay: cmp.Or(opts.DisconnectDelay, g.cfg.DisconnectDelay),
		unmeasured:      g.cfg.QueueBytes, // the first write measures
		shard:           g.writers.assign(),
	}
	s.pending = s.pendingOne[:0]
	s.principal.Store(opts.Principal)
	g.mu.Lock()
	if g.draining.Load() {
		g.mu.Unlock()
		return nil, ErrShuttingDown
	}
	// Under mu, so that a revocation made meanwhile either refuses the
	// session here or finds it registered (revoke.go).
	if d, revoked := g.Revoked(opts.Principal); revoked {
		g.mu.Unlock()
		return nil, &RevokedError{Disconnect: d}
	}
	g.sessions[s.id] = s
	g.startTickerLocked(s.heartbeatEvery)
	g.mu.Unlock()
	s.metrics.sessionOpened()
	s.logEvent("session opened")
	s.push(helloBody(s.id, s.heartbeatEvery))
	if p := opts.Principal; p != nil {
		s.mu.Lock()
		if s.state != stateEnded {
			s.armTokenEndLocked(p)
		}
		s.mu.Unlock()
	}
	return s, nil
}

// Session returns the live session with id sid, or nil.
func (g *Gateway) Session(sid string) *Session {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sessions[sid]
}

// SessionCount is the number of live sessions.
func (g *Gateway) SessionCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.sessions)
}

func (g *Gateway) forget(s *Session) {
	g.mu.Lock()
	delete(g.sessions, s.id)
	g.mu.Unlock()
}

// newSessionID returns the node id, a dot and 128 random bits in URL-safe
// base64: unguessable, and a request that reaches another node can tell
// which node owns the session.
func (g *Gateway) newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return g.cfg.NodeID + "." + base64.RawURLEncoding.EncodeToString(b[:])
}

// Publish publishes data on channel for a trusted server-side caller (the
// HTTP publish API): channel names are validated, namespace permissions are
// not applied. contentType (one of the ContentType constants, or "" to let
// subscribers' packets follow the bytes) travels with the message. It
// returns once the broker confirmed.
func (g *Gateway) Publish(ctx context.Context, channel string, data []byte, contentType string) error {
	return g.PublishWithID(ctx, channel, "", data, contentType)
}

// PublishWithID is Publish with the publisher's message id (see
// brokers.Message.ID; "" for none): a publisher that retries a publish
// whose answer it never got sends the same id, and subscribers get the
// message once.
func (g *Gateway) PublishWithID(ctx context.Context, channel, id string, data []byte, contentType string) error {
	if err := brokers.ValidateChannel(channel); err != nil {
		return err
	}
	if IsReserved(channel) {
		// Announcements there steer request forwarding between nodes.
		return &brokers.NameError{Name: channel, Rule: "reserved for the gateway nodes"}
	}
	if err := CheckMessageID(id); err != nil {
		return err
	}
	return g.publish(ctx, "api", channel, id, data, contentType)
}

func (g *Gateway) publish(ctx context.Context, source, channel, id string, data []byte, contentType string) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.PublishTimeout)
	defer cancel()
	msg := brokers.Message{Channel: channel, Data: data, ID: id}
	if contentType != "" {
		msg.Header = map[string]string{"Content-Type": contentType}
	}
	start := time.Now()
	err := g.broker.Publish(ctx, msg)
	g.metrics.published(source, time.Since(start).Seconds(), err)
	return err
}

// startTickerLocked starts the heartbeat ticker for interval every, unless
// one runs already. g.mu must be held. Shutdown stops them all.
func (g *Gateway) startTickerLocked(every time.Duration) {
	if g.tickers[every] || g.draining.Load() {
		return
	}
	g.tickers[every] = true
	g.tickerWG.Add(1)
	go g.heartbeats(every)
}

// heartbeats is the one ticker for the keep-alive of every session with
// heartbeat interval every (there is one such interval per configuration
// that sets one, a handful at most): a session that wrote nothing during
// an interval gets a heartbeat.
func (g *Gateway) heartbeats(every time.Duration) {
	defer g.tickerWG.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	var batch []*Session
	for {
		select {
		case <-g.tickerEnd:
			return
		case <-t.C:
		}
		g.mu.Lock()
		batch = batch[:0]
		for _, s := range g.sessions {
			if s.heartbeatEvery == every {
				batch = append(batch, s)
			}
		}
		g.mu.Unlock()
		for _, s := range batch {
			s.heartbeat()
		}
		clear(batch)
	}
}

// Shutdown drains the node: new sessions are refused, every session gets a
// close packet telling it to reconnect elsewhere, and Shutdown waits until
// they are all gone and every goroutine of the gateway has returned. When ctx
// ends first, remaining downstreams are closed without ceremony, Shutdown
// returns without waiting further (a transport that does not unblock its
// writes on Close keeps its writer goroutine until it does) and the error
// says how many sessions were cut. The broker is left to the caller, to
// close last. Later calls return the first call's result.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.shutdown.Do(func() {
		g.mu.Lock()
		g.draining.Store(true)
		all := make([]*Session, 0, len(g.sessions))
		for _, s := range g.sessions {
			all = append(all, s)
		}
		g.mu.Unlock()
		close(g.tickerEnd)
		g.tickerWG.Wait()

		for _, s := range all {
			s.Close(DisconnectShutdown)
		}
		cut := 0
		for _, s := range all {
			select {
			case <-s.Done():
				continue
			case <-ctx.Done():
			}
			// Both may be ready (the deadline passed while waiting for an
			// earlier session), and select picks either: a session that
			// ended in time is not counted as cut.
			select {
			case <-s.Done():
				continue
			default:
			}
			cut++
			s.abort(disconnectGone)
		}
		g.mu.Lock()
		revokeSub := g.revokeSub
		g.mu.Unlock()
		if revokeSub != nil {
			_ = revokeSub.Unsubscribe()
		}
		g.cancel() // publishes still waiting for the broker give up
		idle := make(chan struct{})
		go func() {
			g.wg.Wait()
			close(idle)
		}()
		stuck := false
		select {
		case <-idle:
		case <-ctx.Done():
			select {
			case <-idle:
			default:
				stuck = true
			}
		}
		switch {
		case cut > 0:
			g.shutdownErr = fmt.Errorf("gateway: shutdown timed out: %d sessions cut: %w", cut, ctx.Err())
		case stuck:
			g.shutdownErr = fmt.Errorf("gateway: shutdown timed out waiting for writers and publishers: %w", ctx.Err())
		}
	})
	return g.shutdownErr
}
