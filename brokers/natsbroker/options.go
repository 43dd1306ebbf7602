package natsbroker

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/nats-io/nats.go"
)

// Defaults for the zero values of Options.
const (
	// DefaultName is the client connection name.
	DefaultName = "cometgate"
	// DefaultReconnectWait is the shortest delay between reconnect attempts.
	DefaultReconnectWait = 250 * time.Millisecond
	// DefaultMaxReconnectWait is the longest delay between reconnect attempts.
	DefaultMaxReconnectWait = 8 * time.Second
	// DefaultPingInterval is how often an idle connection is checked.
	DefaultPingInterval = 20 * time.Second
	// DefaultConfirmTimeout bounds a confirmation without a ctx deadline.
	DefaultConfirmTimeout = 10 * time.Second
	// DefaultPendingMsgs is the client-side buffer per subscription, in
	// messages.
	DefaultPendingMsgs = 1 << 20
	// DefaultPendingBytes is the client-side buffer per subscription, in
	// bytes.
	DefaultPendingBytes = 256 << 20
	// defaultHeartbeat is the idle heartbeat of the consumers behind
	// history subscriptions: a consumer silent for three of them is
	// recreated.
	defaultHeartbeat = 5 * time.Second
)

// Options configures a Broker. The zero value connects to nats.DefaultURL
// (nats://127.0.0.1:4222) without authentication. Options is read once by
// Connect and never retained.
type Options struct {
	// URLs are the servers to connect to (nats://, tls://, ws://, wss://).
	// Empty means nats.DefaultURL.
	URLs []string
	// Name is the client connection name shown by the server's monitoring.
	// Empty means DefaultName.
	Name string

	// User and Password, Token, NKeySeedFile and CredsFile select the
	// authentication method; set at most one of them.
	User, Password string
	Token          string
	// NKeySeedFile is a file holding an NKey user seed.
	NKeySeedFile string
	// CredsFile is a chained JWT + NKey seed credentials file.
	CredsFile string
	// TLS, when set, requires TLS. A tls:// URL or a server that demands
	// TLS also enables it, verified against the system roots.
	TLS *TLSOptions

	// ReconnectWait and MaxReconnectWait bound the delay between
	// reconnect attempts: the delay doubles from ReconnectWait up to
	// MaxReconnectWait, each one randomized within its upper half (jitter,
	// so that many gateway nodes do not reconnect in lock step). The broker
	// reconnects forever. Zero means DefaultReconnectWait and
	// DefaultMaxReconnectWait.
	ReconnectWait, MaxReconnectWait time.Duration
	// PingInterval is how often the client pings an idle server; a
	// connection that misses two pongs in a row is treated as broken, so a
	// silent network failure is noticed within about three intervals. Zero
	// means DefaultPingInterval.
	PingInterval time.Duration
	// ConfirmTimeout bounds the server round trip of Publish and Subscribe
	// when their ctx has no deadline. Zero means DefaultConfirmTimeout.
	ConfirmTimeout time.Duration
	// PendingMsgs and PendingBytes bound the messages the client buffers
	// per subscription while the Handler runs; beyond them messages are
	// dropped and counted as slow-consumer events (see SlowConsumers).
	// Zero means DefaultPendingMsgs and DefaultPendingBytes; negative means
	// unlimited.
	PendingMsgs, PendingBytes int

	// SubjectPrefix, when set, namespaces every channel: channel
	// "prices.eur" is subject "<prefix>.prices.eur" on the server (a
	// trailing dot on the prefix is optional). Delivered subjects have the
	// prefix stripped; a message whose subject lacks it is ignored.
	SubjectPrefix string

	// Streams makes the channels they cover history-backed: stored in
	// JetStream, delivered with Message.Seq set, replayable (see the
	// package doc and StreamSpec). They are ensured on every (re)connect.
	Streams []StreamSpec

	// OnState, when set, is told every connection state change, one call
	// at a time and in order, from the connection's callback goroutine
	// (with Streams, StateConnected comes from the broker's supervisor once
	// streams and consumers are in place). It must not block or call
	// Close. The initial state, StateDisconnected, is not reported: the
	// first report is StateConnected once a connection is up.
	OnState brokers.StateFunc
	// Logger receives connection events (disconnects, reconnects,
	// slow consumers, server errors). Nil means no logging.
	Logger *slog.Logger

	// heartbeat, replayBatch, answerWait and settle override
	// defaultHeartbeat, defaultReplayBatch, consumerAnswerWait and
	// interestSettle (tests).
	heartbeat   time.Duration
	replayBatch int
	answerWait  time.Duration
	settle      time.Duration
}

// TLSOptions configures TLS for a Broker. The files are read on every
// (re)connect, so rotated certificates are picked up without a restart.
type TLSOptions struct {
	// CAFile is a PEM file of the CAs to verify the server with. Empty
	// means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key, for
	// servers that verify clients. Both or neither.
	CertFile, KeyFile string
	// InsecureSkipVerify disables verification of the server certificate.
	// For tests only.
	InsecureSkipVerify bool
}

// withDefaults returns a copy of o with every zero value replaced by its
// default.
func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.ReconnectWait <= 0 {
		o.ReconnectWait = DefaultReconnectWait
	}
	if o.MaxReconnectWait <= 0 {
		o.MaxReconnectWait = DefaultMaxReconnectWait
	}
	if o.MaxReconnectWait < o.ReconnectWait {
		o.MaxReconnectWait = o.ReconnectWait
	}
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.ConfirmTimeout <= 0 {
		o.ConfirmTimeout = DefaultConfirmTimeout
	}
	if o.PendingMsgs == 0 {
		o.PendingMsgs = DefaultPendingMsgs
	}
	if o.PendingBytes == 0 {
		o.PendingBytes = DefaultPendingBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.heartbeat <= 0 {
		o.heartbeat = defaultHeartbeat
	}
	if o.replayBatch <= 0 {
		o.replayBatch = defaultReplayBatch
	}
	if o.answerWait <= 0 {
		o.answerWait = consumerAnswerWait
	}
	o.answerWait = min(o.answerWait, o.ConfirmTimeout)
	if o.settle <= 0 {
		o.settle = interestSettle
	}
	return o
}

// natsOptions translates the connection-level options (not the callbacks)
// to nats.go options.
func (o Options) natsOptions() ([]nats.Option, error) {
	auth := 0
	for _, set := range []bool{o.User != "" || o.Password != "", o.Token != "", o.NKeySeedFile != "", o.CredsFile != ""} {
		if set {
			auth++
		}
	}
	if auth > 1 {
		return nil, fmt.Errorf("natsbroker: set at most one of User/Password, Token, NKeySeedFile and CredsFile")
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		// Reconnect forever, also when the very first connect fails: the
		// gateway stays up through broker outages and reports readiness.
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(backoff(o.ReconnectWait, o.MaxReconnectWait)),
		// No publish buffering while disconnected: Publish fails at once
		// instead of holding messages that might never be confirmed.
		nats.ReconnectBufSize(-1),
		nats.PingInterval(o.PingInterval),
		nats.MaxPingsOutstanding(2),
	}
	switch {
	case o.User != "" || o.Password != "":
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	case o.Token != "":
		opts = append(opts, nats.Token(o.Token))
	case o.NKeySeedFile != "":
		nk, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("natsbroker: nkey seed: %w", err)
		}
		opts = append(opts, nk)
	case o.CredsFile != "":
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if t := o.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			return nil, fmt.Errorf("natsbroker: TLS needs both CertFile and KeyFile, or neither")
		}
		// Secure must come first: RootCAs and ClientCert amend its config.
		opts = append(opts, nats.Secure(&tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: t.InsecureSkipVerify, // the option is documented as for tests only
		}))
		if t.CAFile != "" {
			opts = append(opts, nats.RootCAs(t.CAFile))
		}
		if t.CertFile != "" {
			opts = append(opts, nats.ClientCert(t.CertFile, t.KeyFile))
		}
	}
	return opts, nil
}

// backoff returns the reconnect delay policy: attempt n (counted from 1
// within one outage; nats.go counts a pass over the whole server list as
// one attempt) waits a random duration in [max(base, d/2), d], where
// d = min(max, base·2ⁿ).
func backoff(base, maxWait time.Duration) nats.ReconnectDelayHandler {
	return func(attempts int) time.Duration {
		d := base
		for i := 0; i < attempts && d < maxWait; i++ {
			d *= 2
		}
		d = min(d, maxWait)
		lo := max(base, d/2)
		if lo >= d {
			return d
		}
		return lo + rand.N(d-lo+1)
	}
}
