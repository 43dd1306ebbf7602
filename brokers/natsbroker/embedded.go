package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/nats-io/nats-server/v2/server"
)

// embeddedReadyTimeout bounds the wait for an embedded server to accept
// connections when StartEmbedded's ctx has no deadline.
const embeddedReadyTimeout = 30 * time.Second

// EmbeddedOptions configures an embedded NATS server.
type EmbeddedOptions struct {
	// Listen is "" for no network listener at all (the server is only
	// reachable in-process), or "host:port" to also accept NATS clients
	// there. Port "0" or "-1" picks a free port (never the NATS default
	// 4222); an empty host means all interfaces. Without User/Password or
	// Token the listener has no authentication: bind it to loopback unless
	// the network is trusted.
	Listen string
	// StoreDir is the JetStream store directory. "" means a new temporary
	// directory, removed by Close.
	StoreDir string
	// User and Password, or Token, are what the server asks of every
	// client, the in-process Broker included (which presents them); none
	// means no authentication.
	User, Password string
	Token          string
	// SubjectPrefix, Streams, OnState and Logger configure the Broker
	// returned by Broker (see Options). Logger also receives the server's
	// log: notices at debug level, warnings and errors at their own; nil
	// means none.
	SubjectPrefix string
	Streams       []StreamSpec
	OnState       brokers.StateFunc
	Logger        *slog.Logger
}

// Embedded is a NATS server (with JetStream) running in this process, and
// a Broker connected to it in-process. Its methods are safe for concurrent
// use. The caller owns it and must Close it.
type Embedded struct {
	srv      *server.Server
	storeDir string
	tempDir  bool // storeDir was created by StartEmbedded
	prefix   string
	logger   *slog.Logger
	broker   *Broker

	// The package's tests open more Brokers on the server (NewBroker, in
	// export_test.go); Close closes them.
	mu     sync.Mutex
	closed bool      // guarded by mu
	extra  []*Broker // guarded by mu

	closeOnce sync.Once
	closeErr  error
}

// StartEmbedded starts a NATS server in-process with JetStream enabled and
// connects a Broker to it in-process. It returns once the server accepts
// connections (bounded by ctx, or 30s without a deadline).
func StartEmbedded(ctx context.Context, eo EmbeddedOptions) (*Embedded, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsbroker: start embedded server: %w", err)
	}
	if _, err := newSubjects(eo.SubjectPrefix); err != nil {
		return nil, err
	}
	sopts := &server.Options{
		ServerName:    "cometgate-embedded",
		JetStream:     true,
		NoSigs:        true, // signals belong to the gateway
		NoLog:         eo.Logger == nil,
		DontListen:    eo.Listen == "",
		Username:      eo.User,
		Password:      eo.Password,
		Authorization: eo.Token,
	}
	if eo.Listen != "" {
		host, port, err := parseListen(eo.Listen)
		if err != nil {
			return nil, err
		}
		sopts.Host, sopts.Port = host, port
	}
	e := &Embedded{storeDir: eo.StoreDir, prefix: eo.SubjectPrefix, logger: eo.Logger}
	if e.storeDir == "" {
		dir, err := os.MkdirTemp("", "cometgate-nats-")
		if err != nil {
			return nil, fmt.Errorf("natsbroker: embedded server store: %w", err)
		}
		e.storeDir, e.tempDir = dir, true
	}
	sopts.StoreDir = e.storeDir

	srv, err := server.NewServer(sopts)
	if err != nil {
		e.removeStore()
		return nil, fmt.Errorf("natsbroker: embedded server: %w", err)
	}
	e.srv = srv
	if eo.Logger != nil {
		srv.SetLogger(serverLogger{eo.Logger.With(slog.String("component", "nats-server"))}, false, false)
	}
	srv.Start() // returns after the listener is bound (or failed to bind)
	if err := e.waitReady(ctx, eo.Listen); err != nil {
		e.shutdown()
		return nil, err
	}

	b, err := e.connect(ctx, Options{
		Name:          "cometgate-embedded",
		User:          eo.User,
		Password:      eo.Password,
		Token:         eo.Token,
		SubjectPrefix: eo.SubjectPrefix,
		Streams:       eo.Streams,
		OnState:       eo.OnState,
		Logger:        eo.Logger,
	})
	if err != nil {
		e.shutdown()
		return nil, err
	}
	e.broker = b
	return e, nil
}

// parseListen splits "host:port", mapping port 0 and -1 to a random port.
func parseListen(listen string) (string, int, error) {
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("natsbroker: embedded listen address %q: %w", listen, err)
	}
	port := 0
	if p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < -1 || port > 65535 {
			return "", 0, fmt.Errorf("natsbroker: embedded listen address %q: bad port", listen)
		}
	}
	if port <= 0 {
		// nats-server reads 0 as its default port 4222, -1 as random.
		port = server.RANDOM_PORT
	}
	if host == "" {
		host = server.DEFAULT_HOST
	}
	return host, port, nil
}

func (e *Embedded) waitReady(ctx context.Context, listen string) error {
	if !e.srv.JetStreamEnabled() {
		return errors.New("natsbroker: embedded server could not enable JetStream (see its log)")
	}
	if listen != "" && e.srv.Addr() == nil {
		return fmt.Errorf("natsbroker: embedded server could not listen on %s (see its log)", listen)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(embeddedReadyTimeout)
	}
	for !e.srv.ReadyForConnections(100 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("natsbroker: embedded server not ready: %w", err)
		}
		if time.Now().After(deadline) {
			return errors.New("natsbroker: embedded server not ready in time")
		}
	}
	return nil
}

// connect opens an in-process Broker.
func (e *Embedded) connect(ctx context.Context, opts Options) (*Broker, error) {
	return connect(ctx, opts, e.srv)
}

// Broker returns the in-process Broker created by StartEmbedded. Embedded
// owns it: Close closes it (closing it earlier is harmless).
func (e *Embedded) Broker() *Broker { return e.broker }

// ClientURL returns the URL NATS clients connect to, or "" when the server
// has no listener. A wildcard listen host is reported as loopback.
func (e *Embedded) ClientURL() string {
	addr, ok := e.srv.Addr().(*net.TCPAddr)
	if !ok || addr == nil {
		return ""
	}
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
		if addr.IP.To4() == nil {
			host = "::1"
		}
	}
	return (&url.URL{Scheme: "nats", Host: net.JoinHostPort(host, strconv.Itoa(addr.Port))}).String()
}

// Close closes the Brokers (Broker's and any the tests opened), shuts the
// server down and waits for it, then removes a temporary store directory.
// It is idempotent.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		extra := e.extra
		e.extra = nil
		e.mu.Unlock()
		for _, b := range extra {
			_ = b.Close()
		}
		_ = e.broker.Close()
		e.closeErr = e.shutdown()
	})
	return e.closeErr
}

// shutdown stops the server, waits for it and removes a temporary store.
func (e *Embedded) shutdown() error {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	return e.removeStore()
}

func (e *Embedded) removeStore() error {
	if !e.tempDir {
		return nil
	}
	if err := os.RemoveAll(e.storeDir); err != nil {
		return fmt.Errorf("natsbroker: remove embedded store: %w", err)
	}
	return nil
}

// serverLogger adapts nats-server logging to slog. Fatal is logged as an
// error: the server calls it on failures such as a listener that cannot
// bind, and the process must not exit for that.
type serverLogger struct{ l *slog.Logger }

func (s serverLogger) Noticef(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s serverLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s serverLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s serverLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s serverLogger) Tracef(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
