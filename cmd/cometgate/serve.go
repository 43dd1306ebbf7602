package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
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
}

func serve(ctx context.Context, args, environ []string, stderr io.Writer, h *hooks) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (defaults: cometgate config)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := configs.Load(*configPath, environ)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if cfg.Node.ID == "" {
		cfg.Node.ID = randomNodeID()
	}
	rules, err := buildRules(cfg)
	if err != nil {
		return err
	}
	// Before the broker: a key that does not load must stop start-up at
	// once, not after a node came half up.
	tokens, err := tokenVerifier(cfg.Auth)
	if err != nil {
		return err
	}

	// The broker reports state changes from its own goroutine; the gateway
	// that wants them is created after the broker, so they go through a
	// relay that forwards once it is set.
	var relay atomic.Pointer[brokers.StateFunc]
	onState := func(st brokers.State) {
		log.Info("broker "+st.String(), slog.String("kind", cfg.Broker.Kind))
		if f := relay.Load(); f != nil {
			(*f)(st)
		}
	}
	broker, emb, closeBroker, err := openBroker(ctx, cfg, onState, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := closeBroker(); err != nil {
			log.Error("closing broker", slog.Any("err", err))
		}
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gw, err := gateway.New(gateway.Config{
		NodeID:           cfg.Node.ID,
		QueueBytes:       cfg.Session.QueueBytes,
		MaxFrameBytes:    cfg.Session.MaxFrameBytes,
		MaxSubscriptions: cfg.Session.MaxSubscriptions,
		Heartbeat:        cfg.Session.Heartbeat,
		DisconnectDelay:  cfg.Session.DisconnectDelay,
		PublishTimeout:   cfg.Broker.PublishTimeout,
		Rules:            rules,
		Logger:           log,
		Metrics:          gateway.NewMetrics(reg),
	}, broker)
	if err != nil {
		return err
	}
	stateFn := brokers.StateFunc(gw.BrokerState)
	relay.Store(&stateFn)
	gw.BrokerState(stateOf(broker)) // anything that happened before the relay was set

	topts := transports.Options{
		Gateway:          gw,
		AllowedOrigins:   cfg.HTTP.AllowedOrigins,
		APIKeys:          cfg.API.Keys,
		AllowLoopback:    cfg.API.AllowLoopback,
		MaxBodyBytes:     int64(cfg.API.MaxBodyBytes),
		WriteTimeout:     cfg.Session.WriteTimeout,
		StreamLimit:      cfg.Session.StreamLimitBytes,
		MaxSessionsPerIP: cfg.HTTP.MaxSessionsPerIP,
		Tokens:           tokens,
		RequireToken:     cfg.Auth.Required,
		Web:              web.Handler(),
		Logger:           log,
	}
	if tokens != nil {
		// Which kind of key, never the key.
		log.Info("authentication: jwt", slog.Bool("required", cfg.Auth.Required),
			slog.Bool("hmac", cfg.Auth.HMACSecret != ""), slog.String("public_key_file", cfg.Auth.PublicKeyFile))
	}
	// configs.Validate checked these with transports' validators.
	topts.SockJS = cfg.SockJSEndpoints()
	topts.BridgeDialTimeout = cfg.Bridge.DialTimeout
	topts.Bridge = cfg.BridgeTargets()
	if cfg.Metrics.Enabled {
		topts.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	// The node table needs this node's URL, hence the listener, before
	// the transports (which forward through it) serve anything: it is
	// filled in below, before the server starts.
	nodeDir := &nodeDirectory{}
	topts.Nodes = nodeDir
	tsrv := transports.New(topts)
	fresh := &freshConns{conns: make(map[net.Conn]struct{})}
	httpSrv := &http.Server{
		ConnState:         fresh.track,
		Handler:           tsrv,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		_ = gw.Shutdown(context.Background())
		return fmt.Errorf("http.listen: %w", err)
	}
	httpSrv.RegisterOnShutdown(tsrv.StopForwarding)
	advertise := advertiseURL(cfg, ln.Addr())
	if advertise == "" {
		log.Info("forwarding between nodes is off: http.listen has no concrete host and node.advertise_url is not set; " +
			"polling transports then need sticky sessions behind a load balancer")
	} else {
		var interval time.Duration
		if h != nil {
			interval = h.announceInterval
		}
		nodes, err := gateway.StartNodes(ctx, gateway.NodesOptions{
			Broker: broker, SelfID: cfg.Node.ID, SelfURL: advertise, Interval: interval,
			Logger: log.With(slog.String("component", "nodes")),
		})
		if err != nil {
			_ = ln.Close()
			_ = gw.Shutdown(context.Background())
			return err
		}
		defer func() { _ = nodes.Close() }() // before the broker closes: defers run last-in first-out
		nodeDir.nodes.Store(nodes)
		if h != nil && h.nodes != nil {
			h.nodes(nodes)
		}
		log.Info("forwarding between nodes is on", slog.String("advertise_url", advertise))
	}

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	var adminSrv *http.Server
	if cfg.Admin.Listen != "" {
		aln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			_ = httpSrv.Close()
			wg.Wait()
			_ = gw.Shutdown(context.Background())
			return fmt.Errorf("admin.listen: %w", err)
		}
		adminSrv = &http.Server{Handler: adminMux(), ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := adminSrv.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin: %w", err)
			}
		}()
		log.Info("admin listener (pprof)", slog.String("addr", "http://"+aln.Addr().String()+"/debug/pprof/"))
	}

	addr := ln.Addr().String()
	attrs := []any{slog.String("node", cfg.Node.ID), slog.String("broker", cfg.Broker.Kind)}
	if emb != nil && emb.ClientURL() != "" {
		attrs = append(attrs, slog.String("nats", emb.ClientURL()))
	}
	log.Info("cometgate is running: point a browser at http://"+addr+"/", attrs...)
	if h != nil && h.listening != nil {
		h.listening(addr, emb)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: refusing new sessions, telling clients to reconnect")
	case runErr = <-errc:
		log.Error("server failed, shutting down", slog.Any("err", runErr))
	}

	// Drain: the HTTP server stops accepting and waits for plain requests
	// while the gateway closes its sessions (hijacked connections, which
	// http.Server does not track) at the same time. The broker goes last.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.ShutdownTimeout)
	defer cancel()
	var swg sync.WaitGroup
	swg.Add(2)
	go func() {
		defer swg.Done()
		fresh.closeAll()
		if err := httpSrv.Shutdown(sctx); err != nil {
			log.Warn("http shutdown", slog.Any("err", err))
			_ = httpSrv.Close()
		}
	}()
	go func() {
		defer swg.Done()
		if err := gw.Shutdown(sctx); err != nil {
			log.Warn("gateway shutdown", slog.Any("err", err))
		}
	}()
	swg.Wait()
	tsrv.Wait()
	if adminSrv != nil {
		_ = adminSrv.Close()
	}
	wg.Wait()
	log.Info("stopped")
	return runErr
}

// nodeDirectory is the transports' view of the node table, which starts
// after the transports are built (it needs the listener's address). Until
// then, and when forwarding is off, it knows no node.
type nodeDirectory struct {
	nodes atomic.Pointer[gateway.Nodes]
}

func (d *nodeDirectory) Lookup(id string) (string, bool) {
	if n := d.nodes.Load(); n != nil {
		return n.Lookup(id)
	}
	return "", false
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

// openBroker connects the configured broker. closeFn closes it (and the
// embedded server, if any).
func openBroker(ctx context.Context, cfg *configs.Config, onState brokers.StateFunc, log *slog.Logger) (brokers.Broker, *natsbroker.Embedded, func() error, error) {
	switch cfg.Broker.Kind {
	case configs.BrokerEmbedded:
		emb, err := natsbroker.StartEmbedded(ctx, natsbroker.EmbeddedOptions{
			Listen:        cfg.Broker.Embedded.Listen,
			StoreDir:      cfg.Broker.Embedded.StoreDir,
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
}

// historyStreams groups the history-backed namespaces into streams: by
// history_stream, or one per namespace with a name derived from its
// pattern. Namespaces that share a stream share its limits (the first
// one's).
func historyStreams(cfg *configs.Config) []historyStream {
	var out []historyStream
	index := map[string]int{}
	for _, ch := range cfg.Channels {
		if ch.History == configs.HistoryNone || ch.History == "" {
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
			maxAge: ch.HistoryMaxAge, maxBytes: int64(ch.HistoryMaxBytes)})
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
			MaxAge: h.maxAge, MaxBytes: h.maxBytes, Create: true})
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
// auth.mode is none. Errors name the key whose value does not work.
func tokenVerifier(a configs.Auth) (*gateway.TokenVerifier, error) {
	if a.Mode != configs.AuthJWT {
		return nil, nil
	}
	// A token without "exp" would bind a session for ever: refused.
	opts := gateway.TokenOptions{Issuer: a.Issuer, Audience: a.Audience, Leeway: a.Leeway, RequireExpiry: true}
	key := "auth.hmac_secret"
	if a.HMACSecret != "" {
		opts.HMACSecret = []byte(a.HMACSecret)
	} else {
		key = "auth.public_key_file"
		pem, err := os.ReadFile(a.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		opts.PublicKeyPEM = pem
	}
	v, err := gateway.NewTokenVerifier(opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return v, nil
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
