package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/amqpbroker"
	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/cometgate/cometgate/configs"
	"github.com/cometgate/cometgate/gateway"
	"github.com/cometgate/cometgate/transports"
	"github.com/cometgate/cometgate/web"
	"github.com/cometgate/cometgate/web/demo"
)

// hooks let tests observe a running node.
type hooks struct {
	// listening is called with the HTTP address once the node serves.
	listening func(addr string, emb *natsbroker.Embedded)
	// announceInterval, when set, replaces the node announcement interval
	// (gateway.DefaultAnnounceInterval), so tests see expiry quickly.
	announceInterval time.Duration
	// nodes is called with the node table once it runs.
	nodes func(*gateway.Nodes)
	// demo, when set, adjusts the demo backend's options before it
	// starts (tests make it quiet and predictable).
	demo func(*demo.Options)
}

// serve runs a node until ctx ends or a server fails: build, run, and
// shutdown, which is the one cleanup path, whether build got half way or
// the node ran.
func serve(ctx context.Context, args, environ []string, stdout, stderr io.Writer, h *hooks) error {
	if h == nil {
		h = &hooks{}
	}
	cfg, err := loadServeConfig(args, environ, stdout, stderr)
	if err != nil {
		return err
	}
	n := &nodeParts{cfg: cfg, log: newLogger(cfg.Log, stderr)}
	err = n.build(ctx, h)
	if err == nil {
		err = n.run(ctx, h)
	}
	n.shutdown()
	return err
}

// loadServeConfig parses serve's flags and loads the configuration they
// name.
func loadServeConfig(args, environ []string, stdout, stderr io.Writer) (*configs.Config, error) {
	fs := newFlagSet("serve", "cometgate [serve] [--config FILE]")
	configPath := fs.String("config", "", "YAML configuration file (defaults: cometgate config)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return nil, err
	}
	cfg, err := configs.Load(*configPath, environ)
	if err != nil {
		return nil, err
	}
	if cfg.Node.ID == "" {
		cfg.Node.ID = randomNodeID()
	}
	return cfg, nil
}

// nodeParts is a node: what build made, run serves and shutdown takes
// down. A nil part was not made (build failed before it, or the
// configuration has none), and shutdown skips it.
type nodeParts struct {
	cfg *configs.Config
	log *slog.Logger

	broker       brokers.Broker
	emb          *natsbroker.Embedded // broker.kind embedded only
	closeBroker  func() error
	relay        atomic.Pointer[brokers.StateFunc] // the gateway's, once it exists
	reg          *prometheus.Registry
	nodesMetrics *gateway.NodesMetrics
	gw           *gateway.Gateway
	tsrv         *transports.Server
	fresh        *freshConns
	httpSrv      *http.Server
	ln           net.Listener
	nodeDir      nodeDirectory
	nodes        *gateway.Nodes // nil when forwarding between nodes is off
	jwks         *gateway.JWKS  // nil without auth.jwks.url
	adminSrv     *http.Server   // nil without admin.listen
	adminLn      net.Listener
	demo         *demo.Backend // nil unless demo.enabled says it runs

	// serving counts the goroutines serving the listeners; errc carries
	// their failures.
	serving sync.WaitGroup
	errc    chan error
}

// build makes every part of the node, in dependency order, up to but not
// including serving: what fails stops start-up before anything is served.
func (n *nodeParts) build(ctx context.Context, h *hooks) error {
	rules, err := buildRules(n.cfg)
	if err != nil {
		return err
	}
	// Before the broker: a key that does not load must stop start-up at
	// once, not after a node came half up.
	tokens, err := n.tokenVerifier()
	if err != nil {
		return err
	}
	if err := n.openBroker(ctx); err != nil {
		return err
	}
	if err := n.newGateway(rules); err != nil {
		return err
	}
	if err := n.listenHTTP(tokens); err != nil {
		return err
	}
	if err := n.startNodes(ctx, h); err != nil {
		return err
	}
	if err := n.listenAdmin(); err != nil {
		return err
	}
	return n.startDemo(ctx, h)
}

// startDemo starts the demo backend when demo.enabled says so. It is a
// client of the broker like any application; the node only owns its
// lifetime.
func (n *nodeParts) startDemo(ctx context.Context, h *hooks) error {
	if !n.cfg.DemoRuns() {
		return nil
	}
	for _, ns := range []string{"auction.lot.x", "election.national"} {
		if !n.historyFor(ns) {
			n.log.Warn("demo: channel " + ns + " has no history: a late visitor of its page waits for the next update instead of seeing the current state")
		}
	}
	opts := demo.Options{Broker: n.broker, Logger: n.log.With(slog.String("component", "demo"))}
	if h.demo != nil {
		h.demo(&opts)
	}
	var err error
	n.demo, err = demo.Start(ctx, opts)
	return err
}

// historyFor reports whether the namespace that channel falls in keeps
// history with this node's broker.
func (n *nodeParts) historyFor(channel string) bool {
	for _, ch := range n.cfg.Channels {
		if brokers.MatchChannel(ch.Pattern, channel) {
			h := ch.EffectiveHistory(n.cfg.Broker.Kind)
			return h != configs.HistoryNone && h != ""
		}
	}
	return false
}

// openBroker connects the broker. It reports state changes from its own
// goroutine and may do so before the gateway that wants them exists, so
// they go through a relay that newGateway sets.
func (n *nodeParts) openBroker(ctx context.Context) error {
	onState := func(st brokers.State) {
		n.log.Info("broker "+st.String(), slog.String("kind", n.cfg.Broker.Kind))
		if f := n.relay.Load(); f != nil {
			(*f)(st)
		}
	}
	var err error
	n.broker, n.emb, n.closeBroker, err = dialBroker(ctx, n.cfg, onState, n.log)
	return err
}

// newGateway builds the gateway on the broker and has it told of the
// broker's state from then on.
func (n *nodeParts) newGateway(rules gateway.Rules) error {
	n.reg = prometheus.NewRegistry()
	metrics, nodesMetrics := registerMetrics(n.reg)
	n.nodesMetrics = nodesMetrics
	cfg := n.cfg
	var err error
	n.gw, err = gateway.New(gateway.Config{
		NodeID:           cfg.Node.ID,
		QueueBytes:       cfg.Session.QueueBytes,
		SendBatch:        cfg.Session.SendBatch,
		MaxFrameBytes:    cfg.Session.MaxFrameBytes,
		MaxSubscriptions: cfg.Session.MaxSubscriptions,
		Heartbeat:        cfg.Session.Heartbeat,
		DisconnectDelay:  cfg.Session.DisconnectDelay,
		PublishTimeout:   cfg.Broker.PublishTimeout,
		DedupeWindow:     dedupeWindow(cfg.Broker.DedupeWindow),
		DedupeMax:        cfg.Broker.DedupeMax,
		FrameRate:        rate(cfg.Limits.FramesPerSecond, cfg.Limits.FrameBurst),
		PublishRate:      rate(cfg.Limits.PublishesPerSecond, cfg.Limits.PublishBurst),
		Rules:            rules,
		ClusterKey:       clusterKey(cfg),
		RevocationTTL:    cfg.Auth.RevocationTTL,
		Logger:           n.log,
		Metrics:          metrics,
	}, n.broker)
	if err != nil {
		return err
	}
	if err := n.gw.StartRevocations(context.Background()); err != nil {
		return err
	}
	stateFn := brokers.StateFunc(n.gw.BrokerState)
	n.relay.Store(&stateFn)
	n.gw.BrokerState(stateOf(n.broker)) // anything that happened before the relay was set
	return nil
}

// rate is a limits rate of the configuration (0: unlimited) as a
// gateway.Rate, where the zero Rate means the gateway's default and a
// negative rate means unlimited.
func rate(perSecond, burst int) gateway.Rate {
	if perSecond <= 0 {
		return gateway.Rate{PerSecond: -1}
	}
	return gateway.Rate{PerSecond: float64(perSecond), Burst: burst}
}

// registerMetrics registers every collector a node serves at /metrics
// (the Grafana dashboard's test checks its queries against the same set).
func registerMetrics(reg prometheus.Registerer) (*gateway.Metrics, *gateway.NodesMetrics) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return gateway.NewMetrics(reg), gateway.NewNodesMetrics(reg)
}

// listenHTTP builds the transports and the HTTP server, and takes the
// listening socket: the node table needs this node's address before
// anything is served.
func (n *nodeParts) listenHTTP(tokens *gateway.TokenVerifier) error {
	cfg, log := n.cfg, n.log
	topts := transports.Options{
		Gateway:            n.gw,
		AllowedOrigins:     cfg.HTTP.AllowedOrigins,
		APIKeys:            cfg.API.Keys,
		AllowLoopback:      cfg.API.AllowLoopback,
		MaxBodyBytes:       int64(cfg.API.MaxBodyBytes),
		WriteTimeout:       cfg.Session.WriteTimeout,
		Compression:        cfg.WebSocket.TransportCompression(),
		StreamLimit:        cfg.Session.StreamLimitBytes,
		MaxSessionsPerIP:   cfg.HTTP.MaxSessionsPerIP,
		MaxSessions:        cfg.Limits.MaxSessions,
		NewSessionsPerIP:   rate(cfg.Limits.NewSessionsPerIPPerSecond, cfg.Limits.NewSessionsPerIPBurst),
		NewSessionsPerNode: rate(cfg.Limits.NewSessionsPerSecond, cfg.Limits.NewSessionsBurst),
		AllowedHosts:       cfg.HTTP.EffectiveAllowedHosts(),
		ClusterKey:         clusterKey(cfg),
		PeerNetworks:       cfg.Node.PeerPrefixes(),
		TrustedProxies:     cfg.HTTP.TrustedProxyPrefixes(),
		Tokens:             tokens,
		RequireToken:       cfg.Auth.Required,
		CallbackCookie:     cfg.Auth.CallbackCookie,
		ReadBodyTimeout:    cfg.HTTP.ReadBodyTimeout,
		Webhook:            authWebhook(cfg.Auth),
		// configs.Validate checked these with transports' validators.
		SockJS:            cfg.SockJSEndpoints(),
		BridgeDialTimeout: cfg.Bridge.DialTimeout,
		Bridge:            cfg.BridgeTargets(),
		// The node table starts after the transports (it needs the
		// listener's address); until then, the directory knows no node.
		Nodes:  &n.nodeDir,
		Web:    web.Handler(),
		Logger: log,
	}
	if tokens != nil {
		// Which kind of key, never the key.
		log.Info("authentication: jwt", slog.Bool("required", cfg.Auth.Required),
			slog.Bool("hmac", cfg.Auth.HMACSecret != ""), slog.String("public_key_file", cfg.Auth.PublicKeyFile),
			slog.Int("keys", len(cfg.Auth.Keys)), slog.String("jwks_url", cfg.Auth.JWKS.URL))
	}
	if topts.Webhook != nil {
		log.Info("authentication: webhook", slog.Bool("required", cfg.Auth.Required), slog.String("url", cfg.Auth.Webhook.URL))
	}
	if cfg.Auth.CallbackCookie && (tokens != nil || topts.Webhook != nil) {
		log.Warn("auth.callback_cookie is on: any web site can make a visitor's browser open JSONP and htmlfile sessions with her token cookie; keep it only with a SameSite=Strict cookie")
	}
	if topts.AllowedHosts == nil {
		log.Warn("http.allowed_hosts is empty on a non-loopback listener: any Host is answered (list this node's names to refuse DNS rebinding)")
	}
	if cfg.Metrics.Enabled {
		topts.Metrics = promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{})
	}
	n.tsrv = transports.New(topts)
	n.fresh = &freshConns{conns: make(map[net.Conn]struct{})}
	n.httpSrv = &http.Server{
		ConnState:         n.fresh.track,
		Handler:           n.tsrv,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	var err error
	if n.ln, err = net.Listen("tcp", cfg.HTTP.Listen); err != nil {
		return fmt.Errorf("http.listen: %w", err)
	}
	return nil
}

// startNodes starts the node table, which forwarding between nodes needs,
// when this node has an address the others can reach.
func (n *nodeParts) startNodes(ctx context.Context, h *hooks) error {
	advertise := advertiseURL(n.cfg, n.ln.Addr())
	if advertise == "" {
		n.log.Info("forwarding between nodes is off: http.listen has no concrete host and node.advertise_url is not set; " +
			"polling transports then need sticky sessions behind a load balancer")
		return nil
	}
	if n.cfg.Node.ClusterKey == "" {
		n.log.Warn("node.cluster_key is empty: node announcements and forwarded requests are not signed, so whoever can publish on the broker's cometgate-nodes subject can steer forwarding")
	}
	nodes, err := gateway.StartNodes(ctx, gateway.NodesOptions{
		Broker: n.broker, SelfID: n.cfg.Node.ID, SelfURL: advertise, Interval: h.announceInterval,
		ClusterKey:   clusterKey(n.cfg),
		PeerNetworks: n.cfg.Node.PeerPrefixes(),
		Metrics:      n.nodesMetrics,
		Logger:       n.log.With(slog.String("component", "nodes")),
	})
	if err != nil {
		return err
	}
	n.nodes = nodes
	n.nodeDir.start(nodes)
	if h.nodes != nil {
		h.nodes(nodes)
	}
	n.log.Info("forwarding between nodes is on", slog.String("advertise_url", advertise))
	return nil
}

// listenAdmin takes the admin (pprof) listener when admin.listen is set.
func (n *nodeParts) listenAdmin() error {
	if n.cfg.Admin.Listen == "" {
		return nil
	}
	var err error
	if n.adminLn, err = net.Listen("tcp", n.cfg.Admin.Listen); err != nil {
		return fmt.Errorf("admin.listen: %w", err)
	}
	n.adminSrv = &http.Server{Handler: adminMux(), ReadHeaderTimeout: n.cfg.HTTP.ReadHeaderTimeout}
	return nil
}

// run serves the listeners until ctx ends (the error is nil) or one of
// them fails (that error).
func (n *nodeParts) run(ctx context.Context, h *hooks) error {
	n.errc = make(chan error, 3)
	n.goServe("http", n.httpSrv, n.ln)
	// The connections of parked requests (long-polls, streams) come back
	// to the same server after their response, for their next request;
	// Shutdown closes this listener with the other.
	n.goServe("http (parked requests)", n.httpSrv, n.tsrv.Reentry())
	if n.adminSrv != nil {
		n.goServe("admin", n.adminSrv, n.adminLn)
		n.log.Info("admin listener (pprof)", slog.String("addr", "http://"+n.adminLn.Addr().String()+"/debug/pprof/"))
	}
	addr := n.ln.Addr().String()
	attrs := []any{slog.String("node", n.cfg.Node.ID), slog.String("broker", n.cfg.Broker.Kind)}
	if n.emb != nil && n.emb.ClientURL() != "" {
		attrs = append(attrs, slog.String("nats", n.emb.ClientURL()))
	}
	n.log.Info("cometgate is running: point a browser at http://"+addr+"/", attrs...)
	if h.listening != nil {
		h.listening(addr, n.emb)
	}
	select {
	case <-ctx.Done():
		n.log.Info("shutting down: refusing new sessions, telling clients to reconnect")
		return nil
	case err := <-n.errc:
		n.log.Error("server failed, shutting down", slog.Any("err", err))
		return err
	}
}

// goServe serves ln with srv on a goroutine that n.serving counts.
func (n *nodeParts) goServe(name string, srv *http.Server, ln net.Listener) {
	n.serving.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.errc <- fmt.Errorf("%s: %w", name, err)
		}
	})
}

// httpGrace is the part of a shutdown timeout kept for the HTTP server:
// a quarter of it, at most a second (while messages flow, the owner of a
// forwarded poll answers it well within that).
func httpGrace(timeout time.Duration) time.Duration {
	return min(timeout/4, time.Second)
}

// forwardStopWait bounds the wait for cancelled forwards to answer; they
// answer at once (their proxies return on the cancellation), so it only
// guards against a handler that does not.
const forwardStopWait = time.Second

// shutdown takes down whatever build made, in the one order that drains
// a node: first the demo backend stops publishing (it is a client of the
// broker, like the applications outside); then the gateway refuses new sessions (and /readyz says so)
// and tells every client to reconnect elsewhere, while the node still
// listens, so that the polls other nodes forward here for its sessions
// still reach it and carry their close packets (a SockJS poll carries one
// frame, so the close frame of a SockJS session that ended with messages
// still to send answers the client's next poll, which the node waits
// for); then the node table says goodbye (the others answer "session not
// found" for this node's sessions from then on, and stop asking it about
// SockJS ids); then the HTTP server stops accepting and waits for plain
// requests (hijacked connections, which http.Server does not track, were
// the gateway's to close), among them the requests this node forwards to
// other nodes' sessions: a forwarded poll answered by its owner in that
// time leaves its session untouched; then forwarding stops, and what is
// still forwarded answers its client (503, try again) before the last
// connections close; then the transports' own goroutines end, the admin
// server closes, and the broker closes last.
//
// http.shutdown_timeout bounds it all. The last part of it, httpGrace, is
// kept for the HTTP server: a drain that runs out of time (a polling
// client that never comes back for its close packet holds its session
// for the disconnect delay) must still leave the forwards in flight time
// to answer, because their sessions live on other nodes and a connection
// closed without an answer ends a SockJS session there.
func (n *nodeParts) shutdown() {
	grace := httpGrace(n.cfg.HTTP.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.HTTP.ShutdownTimeout-grace)
	defer cancel()
	if n.demo != nil {
		n.demo.Close()
	}
	if n.gw != nil {
		if err := n.gw.Shutdown(sctx); err != nil {
			n.log.Warn("gateway shutdown", slog.Any("err", err))
		}
	}
	if n.tsrv != nil {
		n.tsrv.AwaitSockJSCloses(sctx)
	}
	if n.nodes != nil {
		_ = n.nodes.Close()
	}
	if n.httpSrv != nil {
		n.fresh.closeAll()
		hctx, hcancel := context.WithTimeout(context.Background(), grace)
		err := n.httpSrv.Shutdown(hctx)
		hcancel()
		// Forwards still in flight (a poll its owner has not answered, a
		// SockJS stream) are cancelled, and answer, before any
		// connection is closed under them.
		fctx, fcancel := context.WithTimeout(context.Background(), forwardStopWait)
		n.tsrv.StopForwarding(fctx)
		fcancel()
		if err != nil {
			n.log.Warn("http shutdown", slog.Any("err", err))
			_ = n.httpSrv.Close()
		}
	}
	if n.tsrv != nil {
		n.tsrv.Wait()
	}
	if n.jwks != nil { // after the last request that could verify a token
		n.jwks.Close()
	}
	if n.adminSrv != nil {
		_ = n.adminSrv.Close()
	}
	// Listeners that run never served (build failed after taking them)
	// are still open; closing a served one again does no harm.
	for _, ln := range []net.Listener{n.ln, n.adminLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
	n.serving.Wait()
	if n.closeBroker != nil {
		if err := n.closeBroker(); err != nil {
			n.log.Error("closing broker", slog.Any("err", err))
		}
	}
	if n.errc != nil { // run served: a node that never came up did not stop
		n.log.Info("stopped")
	}
}

// dedupeWindow maps broker.dedupe_window to the gateway's: 0 (off) is a
// negative window there, where 0 means the default.
func dedupeWindow(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// clusterKey is node.cluster_key as bytes, nil when unset.
func clusterKey(cfg *configs.Config) []byte {
	if cfg.Node.ClusterKey == "" {
		return nil
	}
	return []byte(cfg.Node.ClusterKey)
}

// nodeDirectory is the transports' view of the node table, which starts
// after the transports are built (it needs the listener's address), and
// before the node serves. When forwarding is off it knows no node: every
// other node's session is gone, and no key is owned elsewhere.
type nodeDirectory struct {
	nodes   atomic.Pointer[gateway.Nodes]
	mu      sync.Mutex
	ownerFn func(key string) (owns, claiming bool)
}

var _ transports.NodeDirectory = (*nodeDirectory)(nil)

// start hands the directory its node table.
func (d *nodeDirectory) start(n *gateway.Nodes) {
	d.mu.Lock()
	if d.ownerFn != nil {
		n.SetOwnerFunc(d.ownerFn)
	}
	d.nodes.Store(n)
	d.mu.Unlock()
}

func (d *nodeDirectory) Find(ctx context.Context, id string) (string, bool, error) {
	if n := d.nodes.Load(); n != nil {
		return n.Find(ctx, id)
	}
	return "", false, nil
}

func (d *nodeDirectory) Suspect(ctx context.Context, id string) (string, bool, error) {
	if n := d.nodes.Load(); n != nil {
		return n.Suspect(ctx, id)
	}
	return "", false, nil
}

func (d *nodeDirectory) WhoOwns(ctx context.Context, key string) (string, string, string, error) {
	if n := d.nodes.Load(); n != nil {
		return n.WhoOwns(ctx, key)
	}
	return "", "", "", nil
}

func (d *nodeDirectory) SetOwnerFunc(f func(key string) (owns, claiming bool)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ownerFn = f
	if n := d.nodes.Load(); n != nil {
		n.SetOwnerFunc(f)
	}
}

func (d *nodeDirectory) Owned(key string) {
	if n := d.nodes.Load(); n != nil {
		n.Owned(key)
	}
}

func (d *nodeDirectory) Ready() bool {
	if n := d.nodes.Load(); n != nil {
		return n.Ready()
	}
	return true
}

// advertiseURL is node.advertise_url, or else derived from the listener:
// http://IP:PORT when http.listen names a concrete host (an IP address or
// localhost), with the port actually listened on (http.listen may say 0).
// It is "" when the listener accepts on every interface: no single address
// of it is known to reach this node.
func advertiseURL(cfg *configs.Config, addr net.Addr) string {
	if cfg.Node.AdvertiseURL != "" {
		return cfg.Node.AdvertiseURL
	}
	host, _, err := net.SplitHostPort(cfg.HTTP.Listen)
	if err != nil || host == "" {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return ""
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		return ""
	}
	return "http://" + tcp.String()
}

func stateOf(b brokers.Broker) brokers.State {
	if b.Ready() {
		return brokers.StateConnected
	}
	return brokers.StateDisconnected
}

// dialBroker connects the configured broker. closeFn closes it (and the
// embedded server, if any).
func dialBroker(ctx context.Context, cfg *configs.Config, onState brokers.StateFunc, log *slog.Logger) (brokers.Broker, *natsbroker.Embedded, func() error, error) {
	switch cfg.Broker.Kind {
	case configs.BrokerEmbedded:
		emb, err := natsbroker.StartEmbedded(ctx, natsbroker.EmbeddedOptions{
			Listen:        cfg.Broker.Embedded.Listen,
			StoreDir:      cfg.Broker.Embedded.StoreDir,
			User:          cfg.Broker.Embedded.User,
			Password:      cfg.Broker.Embedded.Password,
			Token:         cfg.Broker.Embedded.Token,
			SubjectPrefix: cfg.Broker.SubjectPrefix,
			Streams:       natsStreams(cfg),
			OnState:       onState,
			Logger:        log.With(slog.String("component", "nats")),
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("broker.embedded: %w", err)
		}
		return emb.Broker(), emb, emb.Close, nil
	case configs.BrokerNATS:
		n := cfg.Broker.NATS
		opts := natsbroker.Options{
			URLs: n.URLs, Name: n.Name,
			User: n.User, Password: n.Password, Token: n.Token,
			NKeySeedFile: n.NKeySeedFile, CredsFile: n.CredsFile,
			ReconnectWait: n.ReconnectWait, MaxReconnectWait: n.MaxReconnectWait,
			SubjectPrefix: cfg.Broker.SubjectPrefix,
			Streams:       natsStreams(cfg),
			OnState:       onState,
			Logger:        log.With(slog.String("component", "nats")),
		}
		if n.TLS != (configs.TLS{}) {
			opts.TLS = &natsbroker.TLSOptions{CAFile: n.TLS.CAFile, CertFile: n.TLS.CertFile,
				KeyFile: n.TLS.KeyFile, InsecureSkipVerify: n.TLS.InsecureSkipVerify}
		}
		b, err := natsbroker.Connect(ctx, opts)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("broker.nats: %w", err)
		}
		return b, nil, b.Close, nil
	case configs.BrokerAMQP:
		a := cfg.Broker.AMQP
		b, err := amqpbroker.Connect(ctx, amqpbroker.Options{
			URL:              a.URL,
			Exchange:         a.Exchange,
			ExchangeType:     a.ExchangeType,
			DeclareExchange:  a.DeclareExchange,
			Prefetch:         a.Prefetch,
			QueueMaxLength:   a.QueueMaxLength,
			ReconnectWait:    a.ReconnectWait,
			MaxReconnectWait: a.MaxReconnectWait,
			SubjectPrefix:    cfg.Broker.SubjectPrefix,
			Streams:          amqpStreams(cfg),
			OnState:          onState,
			Logger:           log.With(slog.String("component", "amqp")),
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("broker.amqp: %w", err)
		}
		return b, nil, b.Close, nil
	}
	return nil, nil, nil, fmt.Errorf("broker.kind: unknown kind %q", cfg.Broker.Kind)
}

// buildRules turns the channels section into gateway rules.
func buildRules(cfg *configs.Config) (gateway.Rules, error) {
	rules := make(gateway.Rules, 0, len(cfg.Channels))
	for i, ch := range cfg.Channels {
		slow, err := gateway.ParseSlowPolicy(ch.SlowConsumer)
		if err != nil {
			return nil, fmt.Errorf("channels[%d].slow_consumer: %w", i, err)
		}
		rules = append(rules, gateway.Namespace{
			Pattern:   ch.Pattern,
			Subscribe: permission(ch.Subscribe),
			Publish:   permission(ch.Publish),
			Slow:      slow,
		})
	}
	return rules, rules.Validate()
}

// historyStream is one broker stream serving the namespaces that name it.
type historyStream struct {
	name     string
	patterns []string
	maxAge   time.Duration
	maxBytes int64
	replicas int // JetStream: 0 = 1 when created, else as the stream has it
}

// historyStreams groups the history-backed namespaces into streams: by
// history_stream, or one per namespace with a name derived from its
// pattern. Namespaces that share a stream share its limits (the first
// one's).
func historyStreams(cfg *configs.Config) []historyStream {
	var out []historyStream
	index := map[string]int{}
	for _, ch := range cfg.Channels {
		if h := ch.EffectiveHistory(cfg.Broker.Kind); h == configs.HistoryNone || h == "" {
			continue
		}
		name := ch.HistoryStream
		if name == "" {
			name = streamName(ch.Pattern)
		}
		if i, ok := index[name]; ok {
			out[i].patterns = append(out[i].patterns, ch.Pattern)
			continue
		}
		index[name] = len(out)
		out = append(out, historyStream{name: name, patterns: []string{ch.Pattern},
			maxAge: ch.HistoryMaxAge, maxBytes: int64(ch.HistoryMaxBytes), replicas: ch.HistoryReplicas})
	}
	return out
}

// streamName derives a stream name that is valid for JetStream and
// RabbitMQ from a channel pattern: "prices.*.>" becomes
// "cometgate_prices_any_all".
func streamName(pattern string) string {
	var b strings.Builder
	b.WriteString("cometgate")
	for tok := range strings.SplitSeq(pattern, ".") {
		b.WriteByte('_')
		switch tok {
		case "*":
			b.WriteString("any")
		case ">":
			b.WriteString("all")
		default:
			for _, c := range tok {
				if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
					b.WriteRune(c)
				} else {
					b.WriteByte('-')
				}
			}
		}
	}
	return b.String()
}

func natsStreams(cfg *configs.Config) []natsbroker.StreamSpec {
	var out []natsbroker.StreamSpec
	for _, h := range historyStreams(cfg) {
		out = append(out, natsbroker.StreamSpec{Name: h.name, Patterns: h.patterns,
			MaxAge: h.maxAge, MaxBytes: h.maxBytes, Replicas: h.replicas, Create: true})
	}
	return out
}

// amqpSegmentBytes picks the segment size of a RabbitMQ stream: retention
// removes whole segments, so a quarter of the size limit keeps between
// three quarters and all of it. RabbitMQ's default (500 MB) when there is
// no size limit.
func amqpSegmentBytes(maxBytes int64) int64 {
	if maxBytes <= 0 {
		return 0
	}
	return max(maxBytes/4, 64<<10)
}

func amqpStreams(cfg *configs.Config) []amqpbroker.StreamSpec {
	var out []amqpbroker.StreamSpec
	for _, h := range historyStreams(cfg) {
		out = append(out, amqpbroker.StreamSpec{Name: h.name, Patterns: h.patterns,
			MaxAge: h.maxAge.Round(time.Second), MaxLengthBytes: h.maxBytes,
			SegmentBytes: amqpSegmentBytes(h.maxBytes), Declare: true})
	}
	return out
}

func permission(s string) gateway.Permission {
	switch s {
	case configs.PermissionAnyone:
		return gateway.Anyone
	case configs.PermissionToken:
		return gateway.Token
	}
	return gateway.Nobody
}

// tokenVerifier builds the verifier of the auth section; nil when
// auth.mode is none. Errors name the key whose value does not work. With
// auth.jwks.url it starts the JWKS (n.jwks; shutdown closes it), which
// fetches the key set once before serving.
func (n *nodeParts) tokenVerifier() (*gateway.TokenVerifier, error) {
	a := n.cfg.Auth
	if a.Mode != configs.AuthJWT {
		return nil, nil
	}
	// A token without "exp" would bind a session for ever: refused.
	opts := gateway.TokenOptions{Issuer: a.Issuer, Audience: a.Audience, Leeway: a.Leeway, RequireExpiry: true}
	key := "auth.hmac_secret"
	switch {
	case a.HMACSecret != "":
		opts.HMACSecret = []byte(a.HMACSecret)
	case a.PublicKeyFile != "":
		key = "auth.public_key_file"
		pem, err := os.ReadFile(a.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		opts.PublicKeyPEM = pem
	case len(a.Keys) > 0:
		key = "auth.keys"
	default:
		key = "auth.jwks.url"
	}
	if j := a.JWKS; j.URL != "" {
		var err error
		n.jwks, err = gateway.StartJWKS(gateway.JWKSOptions{URL: j.URL, Refresh: j.Refresh, MinRefetch: j.MinRefetch,
			MaxAge: j.MaxAge, Timeout: j.Timeout, Logger: n.log})
		if err != nil {
			return nil, fmt.Errorf("auth.jwks.url: %w", err)
		}
		opts.JWKS = n.jwks
	}
	for i, k := range a.Keys {
		vk := gateway.VerificationKey{ID: k.ID, Algorithm: k.Algorithm, HMACSecret: []byte(k.HMACSecret)}
		if k.PublicKeyFile != "" {
			pem, err := os.ReadFile(k.PublicKeyFile)
			if err != nil {
				return nil, fmt.Errorf("auth.keys[%d].public_key_file: %w", i, err)
			}
			vk.PublicKeyPEM = pem
		}
		opts.Keys = append(opts.Keys, vk)
	}
	v, err := gateway.NewTokenVerifier(opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return v, nil
}

// authWebhook is the auth.webhook section for the transports; nil unless
// auth.mode is webhook.
func authWebhook(a configs.Auth) *transports.WebhookOptions {
	if a.Mode != configs.AuthWebhook {
		return nil
	}
	w := a.Webhook
	return &transports.WebhookOptions{URL: w.URL, Headers: w.Headers, Timeout: w.Timeout, CacheTTL: w.CacheTTL}
}

func newLogger(c configs.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == configs.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// randomNodeID is used when node.id is not configured: six characters of
// [a-z0-9], enough to tell nodes apart in session ids and logs.
func randomNodeID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b [6]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

func adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// freshConns tracks connections that have not sent a request yet.
// http.Server.Shutdown treats such a connection as busy for five seconds
// (browsers open spare connections they may never use), which would hold
// up every shutdown; the node closes them itself instead. Requests already
// being read are not affected: their connections are no longer new.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (f *freshConns) track(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st == http.StateNew {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		_ = c.Close()
		delete(f.conns, c)
	}
}
