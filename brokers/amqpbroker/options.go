package amqpbroker

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"time"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Defaults for the zero values of Options.
const (
	// DefaultURL is the server a zero Options connects to: a local
	// RabbitMQ with its stock guest account (which RabbitMQ only accepts
	// from loopback).
	DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"
	// DefaultExchange is the exchange every channel is published to.
	DefaultExchange = "cometgate"
	// DefaultExchangeType is the exchange's type.
	DefaultExchangeType = amqp.ExchangeTopic
	// DefaultName is the connection name shown by RabbitMQ's management
	// tools.
	DefaultName = "cometgate"
	// DefaultPrefetch is how many deliveries may be unacknowledged at once.
	DefaultPrefetch = 256
	// DefaultReconnectWait is the shortest delay between reconnect attempts.
	DefaultReconnectWait = 250 * time.Millisecond
	// DefaultMaxReconnectWait is the longest delay between reconnect attempts.
	DefaultMaxReconnectWait = 8 * time.Second
	// DefaultConfirmTimeout bounds a publisher confirm, and the wait for a
	// binding, when the ctx has no deadline.
	DefaultConfirmTimeout = 10 * time.Second
	// DefaultConnectTimeout bounds the TCP connect and the AMQP handshake
	// of one connection attempt.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultHeartbeat is the AMQP heartbeat interval proposed to the
	// server.
	DefaultHeartbeat = 10 * time.Second
)

// closeTimeout bounds the connection.close handshake; the socket is closed
// after it either way.
const closeTimeout = 5 * time.Second

// Options configures a Broker. The zero value connects to DefaultURL and
// declares DefaultExchange. Options is read once by Connect and never
// retained.
type Options struct {
	// URL is the server, in the AMQP URI format
	// (amqp[s]://user:pass@host:port/vhost?heartbeat=…). amqps:// uses TLS;
	// certificates can be given with the URI's cacertfile, certfile and
	// keyfile parameters. Empty means DefaultURL.
	URL string
	// Name is the connection name shown by RabbitMQ's management tools.
	// Empty means DefaultName.
	Name string

	// Exchange is the exchange every channel is published to and every
	// node's queue is bound to. Empty means DefaultExchange.
	Exchange string
	// ExchangeType is "topic" (the default) or "fanout". A topic exchange
	// routes to a node only what one of its bindings matches; a fanout
	// exchange sends every message to every node, which filters locally.
	// Other types cannot express the contract's wildcards and are refused.
	ExchangeType string
	// DeclareExchange makes the Broker declare the exchange (durable, not
	// auto-deleted) on every connect. When false the exchange must exist
	// already: it is declared passively, and its absence is an error
	// (Connect fails; after a reconnect the Broker retries until it
	// exists).
	DeclareExchange bool

	// Prefetch is how many deliveries the server sends before waiting for
	// an acknowledgement; it bounds what the client buffers (see the
	// package doc). Zero means DefaultPrefetch.
	Prefetch int
	// QueueMaxLength bounds the node's queue on the server to that many
	// messages (x-max-length): past it the server drops the oldest, and
	// each drop reaches the subscriptions it was for as a Gap marker
	// (see the package doc, "Messages the server drops"). A node that
	// stalls then costs the server a bounded queue instead of memory
	// without end (and the memory alarm that blocks every publisher).
	// Zero means no bound of the node's own (a policy may set one).
	QueueMaxLength int

	// ReconnectWait and MaxReconnectWait bound the delay between
	// reconnect attempts: the delay doubles from ReconnectWait up to
	// MaxReconnectWait, each one randomized within its upper half (jitter,
	// so that many gateway nodes do not reconnect in lock step). The broker
	// reconnects forever. Zero means DefaultReconnectWait and
	// DefaultMaxReconnectWait.
	ReconnectWait, MaxReconnectWait time.Duration
	// ConfirmTimeout bounds the publisher confirm of Publish, and the wait
	// for the binding of Subscribe, when their ctx has no deadline. Zero
	// means DefaultConfirmTimeout.
	ConfirmTimeout time.Duration
	// ConnectTimeout bounds one connection attempt: TCP connect, TLS and
	// AMQP handshakes. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval proposed to the server (a
	// heartbeat parameter in URL takes precedence); a connection silent
	// for three intervals is treated as lost. Zero means DefaultHeartbeat.
	Heartbeat time.Duration

	// SubjectPrefix, when set, namespaces every channel: channel
	// "prices.eur" is routing key "<prefix>.prices.eur" on the server (a
	// trailing dot on the prefix is optional), and pattern ">" binds
	// "<prefix>.#". Delivered routing keys have the prefix stripped; a
	// message whose routing key lacks it is ignored.
	SubjectPrefix string

	// Streams declares the RabbitMQ stream queues that give some channels
	// a history (see the package doc and StreamSpec). Optional.
	Streams []StreamSpec

	// OnState, when set, is told every connection state change. It is
	// called from the Broker's connection goroutine, one call at a time
	// and in order, and must not block or call Close. The initial state,
	// StateDisconnected, is not reported: the first report is
	// StateConnected once a connection is up and set up.
	OnState brokers.StateFunc
	// Logger receives connection events (disconnects, reconnect failures,
	// refused bindings, dropped deliveries). Nil means no logging.
	Logger *slog.Logger
}

// withDefaults returns a copy of o with every zero value replaced by its
// default.
func (o Options) withDefaults() Options {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Exchange == "" {
		o.Exchange = DefaultExchange
	}
	if o.ExchangeType == "" {
		o.ExchangeType = DefaultExchangeType
	}
	if o.Prefetch == 0 {
		o.Prefetch = DefaultPrefetch
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
	if o.ConfirmTimeout <= 0 {
		o.ConfirmTimeout = DefaultConfirmTimeout
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// validate reports configuration errors of an Options with defaults
// applied.
func (o Options) validate() error {
	if _, err := amqp.ParseURI(o.URL); err != nil {
		return fmt.Errorf("amqpbroker: URL: %w", err)
	}
	switch o.ExchangeType {
	case amqp.ExchangeTopic, amqp.ExchangeFanout:
	default:
		return fmt.Errorf("amqpbroker: exchange type %q: want %q or %q (other types cannot route wildcard patterns)",
			o.ExchangeType, amqp.ExchangeTopic, amqp.ExchangeFanout)
	}
	if len(o.Exchange) > maxShortStr {
		return fmt.Errorf("amqpbroker: exchange name longer than %d bytes", maxShortStr)
	}
	if o.Prefetch < 0 || o.Prefetch > 65535 {
		return errors.New("amqpbroker: Prefetch must be between 1 and 65535")
	}
	if o.QueueMaxLength < 0 {
		return errors.New("amqpbroker: QueueMaxLength must not be negative")
	}
	return nil
}

// redactURL returns u without its password, for logs.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

// backoff returns the delay before reconnect attempt n (counted from 0
// within one outage): a random duration in [d/2, d], where
// d = min(maxWait, base·2ⁿ). The first attempt is jittered too, so that
// the nodes a broker restart disconnected at once do not all redial at
// once.
func backoff(n int, base, maxWait time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	lo := d / 2
	return lo + rand.N(d-lo+1)
}
