// Package natsbroker implements brokers.Broker on core NATS, and
// brokers.History on JetStream, against an external server (Connect) or a
// server embedded in the process (StartEmbedded), which is what
// `cometgate` runs on when given no configuration.
//
// # Subjects
//
// A channel is a NATS subject and a pattern is a NATS subscription
// subject: the contract's syntax ("*" one token, ">" one or more trailing
// tokens) is NATS syntax, so nothing is translated. Options.SubjectPrefix
// namespaces a gateway's channels on a shared server: with prefix "app",
// channel "prices.eur" is subject "app.prices.eur", pattern ">" is "app.>",
// and delivered subjects have "app." stripped (a message whose subject
// lacks the prefix is ignored). Channels and patterns are validated:
// non-empty dot-separated tokens without whitespace or control characters,
// wildcards only as whole tokens in patterns, ">" only last.
//
// # Subscriptions
//
// Each Subscribe is one NATS subscription with its own delivery goroutine
// (owned by nats.go), so a Handler is called one message at a time, in
// order. The client buffers up to Options.PendingMsgs/PendingBytes per
// subscription; beyond that NATS drops messages and reports a slow
// consumer, which is logged and counted (SlowConsumers), and the
// subscription's Handler gets a Gap marker before its next message: on a
// channel without history nothing else would tell the subscribers that
// messages are missing. (A history subscription sees the skipped
// positions and resumes from them.) nats.go restores
// every subscription after a reconnect by itself, before StateConnected is
// reported. Subscribe waits for the server to confirm the interest (a
// PING/PONG round trip), so a message published through the same server
// by anyone after Subscribe returns is delivered (in a cluster, interest
// reaches the other servers shortly after); while disconnected it
// registers the subscription locally and returns at once.
//
// # Reconnects
//
// A Broker reconnects forever, also when the very first connect fails
// (Connect returns a Broker that is not Ready yet), with an exponential,
// jittered delay between Options.ReconnectWait and MaxReconnectWait.
// Authentication errors do not stop it either. OnState reports
// StateConnected when a connection is up (first connect and every
// reconnect) and StateDisconnected when it is lost.
//
// What was published to a plain subscription while the connection was
// down is lost to it, so after a reconnect its next message comes after
// a Gap marker. One more loss is possible just after: nats.go sends the
// subscription to the new server at once, but in a cluster the interest
// reaches the other servers a little later, and a message published
// through one of those meanwhile is dropped there without a word (seen
// in the fault suite: a message lost 3 ms after the first one delivered
// after the reconnect). So when a plain subscription delivered anything
// within interestSettle of the reconnect, its first message after that
// comes after a second Gap marker. A gap is a hint that messages may be
// missing; this one is sometimes given when nothing was.
//
// # What Publish's confirmation means
//
// Core NATS has no acknowledgements: Publish writes the message and then
// waits for a PONG to a PING sent after it. Since a server processes a
// connection's operations in order, the PONG means the server has received
// the message and routed it to the subscriptions it knew of at that moment
// (including, in a cluster, handing it to routes). It does not mean any
// subscriber received it, and nothing is stored. Publish never buffers: while
// the connection is down it fails at once with an error wrapping
// brokers.ErrUnavailable (nats.go's reconnect buffer is disabled), and a
// connection lost between write and PONG also yields ErrUnavailable. Such
// a message may or may not have reached the server; the caller may retry.
//
// # History (JetStream)
//
// Options.Streams declares JetStream streams (StreamSpec), each storing
// the channels of some patterns. They are ensured on every connect and
// reconnect: created or updated to the spec (Create), or checked to exist
// and store the patterns' subjects. At Connect, a stream that does not fit
// is an error; later it is logged and retried, and the Broker is not Ready
// meanwhile. Specs must not overlap (Connect names both).
//
// A channel or pattern that one stream covers entirely has history
// (HasHistory); everything else works as above, with Message.Seq 0.
//
//   - Publish on a channel with history is a JetStream publish: it returns
//     once the stream acknowledged, that is, the message is stored.
//   - Subscribe on a pattern with history is an ordered consumer: an
//     ephemeral push consumer (no acks, flow control, idle heartbeats,
//     memory state, one replica) filtered on the pattern, starting with
//     the first message stored after Subscribe (DeliverNew), and delivering
//     Message.Seq = the stream sequence. The client checks the consumer
//     sequence of every message and the heartbeats; after a hole (a slow
//     consumer drop, a message lost with a connection), a silent consumer
//     (3 heartbeats) or any reconnect, the consumer is replaced by one
//     starting right after the last message delivered (or the start
//     point), so a subscription survives reconnects and server restarts
//     with nothing lost and nothing twice. If the stream removed messages
//     that were not delivered yet, or was recreated (its sequences start
//     over; noticed by its creation time), the subscription carries on and
//     the gap is logged, counted (HistoryGaps) and told to the Handler
//     as a brokers.Message with Gap set, before the next message. A
//     subscription that falls further behind than the stream keeps (its
//     limits) while connected, or whose server kept its consumer through
//     a short connection cut, skips what the stream removed meanwhile:
//     JetStream does not tell consumers, so that loss is neither
//     detected nor reported. Size retention far above any expected lag;
//     resuming clients are covered by Replay's gap detection either way.
//     We implement the ordered consumer ourselves, on one nats.go
//     subscription per consumer, rather than use jetstream's
//     OrderedConsumer: its Consume starts goroutines that nothing can wait
//     for and its Stop does not wait for a running handler, which would
//     break Close's and Unsubscribe's promises.
//   - Replay reads with an ephemeral pull consumer; see Broker.Replay for
//     how gaps are detected and why a reported gap may be conservative.
//
// One goroutine per Broker with streams, the supervisor, ensures streams
// after (re)connects, replaces failed consumers (immediately when asked,
// otherwise checking every second; with backoff while failing), deletes
// the consumers of ended subscriptions, and only then reports
// StateConnected: with streams, StateConnected and Ready mean the streams
// exist and every history subscription is consuming.
package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	_ brokers.Broker  = (*Broker)(nil)
	_ brokers.History = (*Broker)(nil)
)

// Broker is a brokers.Broker on one core NATS connection. All methods are
// safe for concurrent use. Close must not be called from a Handler or an
// OnState callback (it waits for them).
type Broker struct {
	nc *nats.Conn
	// connSet is closed once Connect has set nc and js; connection
	// callbacks wait for it.
	connSet chan struct{}
	subj    subjects
	opts    Options // with defaults applied
	log     *slog.Logger
	// inProcess: connected to an embedded server without a network
	// connection (nats.go then reports a placeholder URL).
	inProcess bool

	mu     sync.Mutex
	closed bool                       // guarded by mu; set by Close
	subs   map[*subscription]struct{} // guarded by mu; live subscriptions

	// History (see history.go); streams is empty and the rest unused
	// without Options.Streams.
	streams []stream
	js      jetstream.JetStream
	hsubs   map[*histSub]struct{} // guarded by mu; live history subscriptions
	deletes []consumerRef         // guarded by mu; consumers to delete
	sup     supervisor

	// stateMu orders state reports from nats.go's callback goroutine and
	// the supervisor's; see setState.
	stateMu   sync.Mutex
	epoch     uint64        // guarded by stateMu; +1 per connect, reconnect, disconnect
	reported  brokers.State // guarded by stateMu; last state reported
	ready     atomic.Bool   // see Ready; set by reportReady, cleared on disconnect
	abandoned atomic.Bool   // Connect failed: report nothing

	closing    atomic.Bool   // set by Close before the connection closes
	connClosed chan struct{} // closed by the nats.go closed handler
	closedByUs bool          // written before connClosed is closed
	closeOnce  sync.Once

	reconnects    atomic.Uint64
	slowConsumers atomic.Uint64
	historyGaps   atomic.Uint64
}

// Connect returns a Broker connected to the servers in opts.URLs. When no
// server is reachable it still returns a Broker, which keeps trying in the
// background: Ready reports false and Publish fails with
// brokers.ErrUnavailable until a connection is up. ctx is checked before
// dialing; the first dial attempt is bounded by nats.go's dial timeout
// (2s per URL), not by ctx. Errors are configuration errors (or ctx's).
//
// The caller owns the Broker and must Close it.
func Connect(ctx context.Context, opts Options) (*Broker, error) {
	return connect(ctx, opts, nil)
}

// connect creates a Broker connected to opts.URLs, or in-process to srv
// when srv is not nil.
func connect(ctx context.Context, opts Options, srv *server.Server) (*Broker, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsbroker: connect: %w", err)
	}
	opts = opts.withDefaults()
	subj, err := newSubjects(opts.SubjectPrefix)
	if err != nil {
		return nil, err
	}
	nopts, err := opts.natsOptions()
	if err != nil {
		return nil, err
	}
	label := strings.Join(opts.URLs, ",")
	if label == "" {
		label = nats.DefaultURL
	}
	if srv != nil {
		opts.URLs = nil
		label = "in-process"
		nopts = append(nopts, nats.InProcessServer(srv))
	}
	streams, err := newStreams(opts.Streams, subj)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		subj:       subj,
		opts:       opts,
		log:        opts.Logger.With(slog.String("broker", "nats"), slog.String("servers", label)),
		subs:       make(map[*subscription]struct{}),
		connClosed: make(chan struct{}),
		inProcess:  srv != nil,
		streams:    streams,
		hsubs:      make(map[*histSub]struct{}),
		reported:   brokers.StateDisconnected,
		connSet:    make(chan struct{}),
	}
	b.initSupervisor()
	nopts = append(nopts,
		nats.ConnectHandler(b.onConnect),
		nats.ReconnectHandler(b.onReconnect),
		nats.DisconnectErrHandler(b.onDisconnect),
		nats.ReconnectErrHandler(b.onReconnectErr),
		nats.ClosedHandler(b.onClosed),
		nats.ErrorHandler(b.onAsyncError),
		nats.LameDuckModeHandler(func(*nats.Conn) {
			b.log.Info("nats server entering lame duck mode; will reconnect elsewhere")
		}),
	)
	nc, err := nats.Connect(strings.Join(opts.URLs, ","), nopts...)
	if err != nil {
		close(b.connSet)
		return nil, fmt.Errorf("natsbroker: connect: %w", err)
	}
	b.nc = nc
	b.js, err = jetstream.New(nc)
	// With RetryOnFailedConnect the connect callback may already be running
	// on nats.go's goroutine; it waits for b.nc and b.js to be set.
	close(b.connSet)
	if err != nil {
		b.closeConn()
		return nil, fmt.Errorf("natsbroker: jetstream: %w", err)
	}
	if !nc.IsConnected() {
		b.log.Warn("nats server unreachable; retrying in the background", slog.Any("err", nc.LastError()))
	}
	if nc.IsConnected() {
		// nats.Connect returned after a PING/PONG round trip and there are
		// no subscriptions yet: ready, once the streams are in place.
		// Configuration errors surface here, at start-up; anything else is
		// retried by the supervisor.
		if len(streams) > 0 {
			if err := b.ensureAtConnect(ctx); err != nil {
				b.closeConn()
				return nil, err
			}
		}
		if !b.sup.needEnsure.Load() {
			b.reportReady(nc, 0)
		}
	}
	if len(streams) > 0 {
		b.startSupervisor()
	}
	return b, nil
}

// closeConn closes the connection of a Broker that is not handed out and
// waits for nats.go's last callback.
func (b *Broker) closeConn() {
	b.abandoned.Store(true)
	b.closing.Store(true)
	b.stopSupervisor()
	b.nc.Close()
	<-b.connClosed
}

// Conn returns the underlying connection, for JetStream. The Broker owns
// it: do not close or drain it, and do not change its handlers.
func (b *Broker) Conn() *nats.Conn { return b.nc }

// Reconnects returns how many times the connection was re-established
// after a loss (the first connect does not count).
func (b *Broker) Reconnects() uint64 { return b.reconnects.Load() }

// SlowConsumers returns how many slow-consumer events occurred: a
// subscription's client-side buffer overflowed and messages were dropped.
// nats.go reports one event per episode, not per dropped message.
func (b *Broker) SlowConsumers() uint64 { return b.slowConsumers.Load() }

// Ready reports whether the connection is up right now and the server
// has every subscription (after a reconnect, nats.go re-sends them; Ready
// waits for a round trip after that) and, with Options.Streams, whether
// the streams are in place and every history subscription is consuming.
func (b *Broker) Ready() bool {
	return !b.closing.Load() && b.nc.IsConnected() && b.ready.Load()
}

// Subscribe implements brokers.Broker. pattern is validated (see the
// package doc); the returned Subscription's Unsubscribe waits for a
// running Handler call to return, so it must not be called from that
// subscription's own Handler. On a pattern with history it creates a
// JetStream consumer (see the package doc) and, when connected, returns
// once it exists.
func (b *Broker) Subscribe(ctx context.Context, pattern string, h brokers.Handler) (brokers.Subscription, error) {
	if h == nil {
		return nil, errors.New("natsbroker: subscribe: nil handler")
	}
	if b.closing.Load() {
		return nil, fmt.Errorf("natsbroker: subscribe: %w", brokers.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsbroker: subscribe: %w", err)
	}
	if err := checkPattern(pattern); err != nil {
		return nil, err
	}
	if st := b.streamFor(pattern); st != nil {
		return b.subscribeHistory(ctx, pattern, st, h)
	}
	s := &subscription{b: b, h: h, done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("natsbroker: subscribe: %w", brokers.ErrClosed)
	}
	ns, err := b.nc.Subscribe(b.subj.subject(pattern), s.deliver)
	if err != nil {
		b.mu.Unlock()
		return nil, b.connErr(ctx, "subscribe", err)
	}
	if err := ns.SetPendingLimits(b.opts.PendingMsgs, b.opts.PendingBytes); err != nil {
		b.log.Warn("cannot set pending limits", slog.String("pattern", pattern), slog.Any("err", err))
	}
	ns.SetClosedHandler(func(string) { close(s.done) })
	// If the subscription is still valid after the closed handler was set,
	// nats.go will call it when the delivery goroutine exits. If not, the
	// connection closed in between and the goroutine exits on its own.
	s.waitable = ns.IsValid()
	s.ns = ns
	b.subs[s] = struct{}{}
	b.mu.Unlock()

	if !b.nc.IsConnected() {
		return s, nil // sent to the server once connected
	}
	cctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	if err := b.nc.FlushWithContext(cctx); err != nil {
		if !b.closing.Load() && errors.Is(err, nats.ErrConnectionClosed) {
			// The connection was lost during the round trip (nats.go
			// releases pending flushes that way); the subscription is
			// restored on reconnect.
			return s, nil
		}
		_ = s.Unsubscribe()
		return nil, b.connErr(ctx, "subscribe", err)
	}
	return s, nil
}

// Publish implements brokers.Broker; see the package doc for what the
// confirmation means on core NATS, and on a channel with history (the
// message is stored). msg.Channel must be a concrete channel and header
// keys and values must be representable in a NATS header.
func (b *Broker) Publish(ctx context.Context, msg brokers.Message) error {
	if b.closing.Load() {
		return fmt.Errorf("natsbroker: publish: %w", brokers.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("natsbroker: publish: %w", err)
	}
	if err := checkChannel(msg.Channel); err != nil {
		return err
	}
	hdr, err := natsHeader(msg.Header)
	if err != nil {
		return err
	}
	if msg.ID != "" {
		if err := checkHeader(msgIDHeader, msg.ID); err != nil {
			return err
		}
		if hdr == nil {
			hdr = nats.Header{}
		}
		hdr.Set(msgIDHeader, msg.ID)
	}
	if !b.nc.IsConnected() {
		return fmt.Errorf("natsbroker: publish to %q: %w", msg.Channel, brokers.ErrUnavailable)
	}
	m := &nats.Msg{Subject: b.subj.subject(msg.Channel), Data: msg.Data, Header: hdr}
	if st := b.streamFor(msg.Channel); st != nil {
		return b.publishStored(ctx, st, msg.Channel, m)
	}
	if err := b.nc.PublishMsg(m); err != nil {
		return b.connErr(ctx, "publish to "+msg.Channel, err)
	}
	cctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	if err := b.nc.FlushWithContext(cctx); err != nil {
		return b.connErr(ctx, "publish to "+msg.Channel, err)
	}
	return nil
}

// Close implements brokers.Broker. It closes the connection without
// draining: every successful Publish was already confirmed, so nothing
// written is lost, and messages not yet handed to a Handler are dropped
// (core NATS messages cannot be resumed anyway; stored ones can be
// replayed). It stops the history supervisor, deletes the consumers of
// history subscriptions (best effort, bounded by a few seconds; the
// server removes leftovers by itself), waits until nats.go has delivered
// its last callback and every subscription's delivery goroutine has
// finished, reports StateClosed, and returns nil.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closing.Store(true)
		// The supervisor creates consumers and subscriptions: stop it
		// before collecting them.
		b.stopSupervisor()
		b.mu.Lock()
		b.closed = true
		subs := make([]*subscription, 0, len(b.subs))
		for s := range b.subs {
			s.stopped.Store(true)
			subs = append(subs, s)
		}
		clear(b.subs)
		hsubs := make([]*histSub, 0, len(b.hsubs))
		for s := range b.hsubs {
			hsubs = append(hsubs, s)
		}
		clear(b.hsubs)
		deletes := b.deletes
		b.deletes = nil
		b.mu.Unlock()

		var hwait []*generation
		for _, s := range hsubs {
			gens, cur := s.stop()
			hwait = append(hwait, gens...)
			if cur != nil {
				deletes = append(deletes, consumerRef{stream: s.st.spec.Name, name: cur.consumer})
			}
		}
		b.deleteConsumersAtClose(deletes)

		b.nc.Close()
		<-b.connClosed
		if !b.closedByUs {
			// The connection had closed by itself earlier and reported
			// StateDisconnected then.
			b.setState(brokers.StateClosed)
		}
		for _, s := range subs {
			s.wait()
		}
		for _, g := range hwait {
			g.wait()
		}
	})
	return nil
}

// confirmCtx returns ctx bounded by Options.ConfirmTimeout when it has no
// deadline of its own (nats.go's FlushWithContext requires one).
func (b *Broker) confirmCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, b.opts.ConfirmTimeout)
}

// connErr maps a nats.go error of operation op to the contract's errors.
func (b *Broker) connErr(ctx context.Context, op string, err error) error {
	switch {
	case b.closing.Load():
		return fmt.Errorf("natsbroker: %s: %w", op, brokers.ErrClosed)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("natsbroker: %s: %w", op, ctx.Err())
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrNoServers),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrStaleConnection):
		return fmt.Errorf("natsbroker: %s not confirmed: %w: %w", op, brokers.ErrUnavailable, err)
	}
	return fmt.Errorf("natsbroker: %s: %w", op, err)
}

// setState records the loss or the end of the connection and reports it
// to OnState, if set. State reports run under stateMu, so reports from
// nats.go's callback goroutine, from the supervisor and from connect are
// never concurrent and each one is consistent with the events before it.
// Every connection event moves the epoch; reportReady uses it to drop a
// stale StateConnected.
func (b *Broker) setState(s brokers.State) {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	b.epoch++
	b.ready.Store(false)
	b.report(s)
}

// report tells OnState about s unless it was the last state reported.
// stateMu is held.
func (b *Broker) report(s brokers.State) {
	if b.reported == s && s == brokers.StateConnected {
		return
	}
	b.reported = s
	if f := b.opts.OnState; f != nil && !b.abandoned.Load() {
		f(s)
	}
}

// connected handles a connect or reconnect of nc: ready (and
// StateConnected) once the server has every subscription, and with
// streams once the supervisor has put streams and consumers in place. It
// uses nc, not b.nc: the first callback may run before connect has set
// b.nc.
func (b *Broker) connected(nc *nats.Conn) {
	b.stateMu.Lock()
	b.epoch++
	epoch := b.epoch
	b.stateMu.Unlock()
	if len(b.streams) > 0 {
		// The supervisor's requests go after the re-sent subscriptions on
		// this connection, so their answers imply those are in place.
		b.sup.connected()
		return
	}
	// nats.go queues this callback before flushing the subscriptions it
	// re-sent; a round trip makes sure the server has them.
	if err := nc.FlushTimeout(b.opts.ConfirmTimeout); err != nil {
		b.log.Warn("nats connected, but the server did not answer a flush", slog.Any("err", err))
		if !nc.IsConnected() {
			return // the next event reports
		}
	}
	b.reportReady(nc, epoch)
}

// The handlers below run on nats.go's callback goroutine, one at a time.

func (b *Broker) onConnect(nc *nats.Conn) {
	<-b.connSet
	b.log.Info("nats connected", slog.String("url", b.connectedURL(nc)))
	b.connected(nc)
}

func (b *Broker) onReconnect(nc *nats.Conn) {
	<-b.connSet
	b.reconnects.Add(1)
	b.log.Info("nats reconnected", slog.String("url", b.connectedURL(nc)))
	// Consumers may be gone (a restarted server) or have pushed messages
	// into the lost connection: recreate them all from where they were.
	b.sup.resetAll.Store(true)
	// What was published to plain subscriptions while the connection was
	// down is lost to them, and nats.go has re-subscribed them already:
	// each one's next message comes after a Gap marker, in order. The
	// StateConnected report can come seconds later (streams' consumers are
	// recreated first), and with messages flowing meanwhile a gap told
	// only then would come after them.
	settle := time.Now().Add(b.opts.settle).UnixNano()
	b.mu.Lock()
	for s := range b.subs {
		s.settleSeen.Store(false)
		s.settleUntil.Store(settle)
		s.dropped.Store(true)
	}
	b.mu.Unlock()
	b.connected(nc)
}

func (b *Broker) connectedURL(nc *nats.Conn) string {
	if b.inProcess {
		return "in-process"
	}
	return nc.ConnectedUrlRedacted()
}

func (b *Broker) onDisconnect(_ *nats.Conn, err error) {
	if b.closing.Load() {
		return
	}
	b.log.Warn("nats disconnected; reconnecting", slog.Any("err", err))
	b.setState(brokers.StateDisconnected)
}

func (b *Broker) onReconnectErr(_ *nats.Conn, err error) {
	b.log.Warn("nats reconnect attempt failed", slog.Any("err", err))
}

func (b *Broker) onClosed(nc *nats.Conn) {
	b.closedByUs = b.closing.Load()
	if b.closedByUs {
		b.setState(brokers.StateClosed)
	} else {
		// Not expected: the connection reconnects forever.
		b.log.Error("nats connection closed for good", slog.Any("err", nc.LastError()))
		b.setState(brokers.StateDisconnected)
	}
	close(b.connClosed)
}

func (b *Broker) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	var subject string
	if sub != nil {
		subject = sub.Subject
	}
	if errors.Is(err, nats.ErrSlowConsumer) {
		var dropped int
		if sub != nil {
			dropped, _ = sub.Dropped()
			b.markDropped(sub)
		}
		b.slowConsumers.Add(1) // after the mark: a count seen means the marker is due
		b.log.Warn("nats slow consumer: messages dropped", slog.String("subject", subject), slog.Int("dropped_total", dropped))
		return
	}
	b.log.Warn("nats async error", slog.String("subject", subject), slog.Any("err", err))
}

// markDropped records that NATS dropped messages of ns: if ns is a plain
// subscription's, its Handler gets a Gap marker before the next message.
// That next message is never long in coming: NATS drops only while the
// subscription's buffer is full, and the buffer is delivered first. The
// marker goes before the messages that were buffered before the drop,
// which is early rather than late: a gap says messages may be missing
// from here on.
func (b *Broker) markDropped(ns *nats.Subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		if s.ns == ns {
			s.dropped.Store(true)
			return
		}
	}
}

// subscription is one Subscribe: a nats.go async subscription whose
// delivery goroutine calls h.
type subscription struct {
	b       *Broker
	h       brokers.Handler
	dropped atomic.Bool // NATS dropped messages since the last delivery (markDropped)
	// settleUntil is the end (Unix ns) of the interestSettle window after
	// a reconnect, 0 outside one; settleSeen is set when a message was
	// delivered within it. Both belong to the delivery goroutine except
	// for onReconnect's stores.
	settleUntil atomic.Int64
	settleSeen  atomic.Bool
	ns          *nats.Subscription
	done        chan struct{} // closed when the delivery goroutine exits
	waitable    bool          // done will be closed
	stopped     atomic.Bool   // set before unsubscribing: deliver nothing more
	once        sync.Once
}

func (s *subscription) deliver(m *nats.Msg) {
	if s.stopped.Load() {
		return
	}
	if s.dropped.Load() && s.dropped.CompareAndSwap(true, false) {
		s.h(brokers.Message{Gap: true})
	}
	if until := s.settleUntil.Load(); until != 0 {
		s.settling(until)
	}
	ch, ok := s.b.subj.channel(m.Subject)
	if !ok {
		return
	}
	// nats.go allocates Data per message, so it can be handed over.
	s.h(brokers.Message{Channel: ch, Data: m.Data, Header: headerMap(m.Header), ID: m.Header.Get(msgIDHeader)})
}

// settling is deliver's part in the interestSettle window that ends at
// until: within it, it notes the delivery; at the first delivery after
// it, it hands h a Gap marker if anything was delivered within it.
func (s *subscription) settling(until int64) {
	if time.Now().UnixNano() < until {
		s.settleSeen.Store(true)
		return
	}
	if s.settleUntil.CompareAndSwap(until, 0) && s.settleSeen.Swap(false) {
		s.h(brokers.Message{Gap: true})
	}
}

// Unsubscribe implements brokers.Subscription. It returns after the
// delivery goroutine has exited, so the Handler is not running and will
// not run again. It always returns nil.
func (s *subscription) Unsubscribe() error {
	s.stopped.Store(true)
	s.once.Do(func() {
		// Errors mean the connection or the subscription is already
		// closed, which is what we want.
		_ = s.ns.Unsubscribe()
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	s.wait()
	return nil
}

// wait blocks until the delivery goroutine has exited, when nats.go will
// tell.
func (s *subscription) wait() {
	if s.waitable {
		<-s.done
	}
}

// msgIDHeader carries brokers.Message.ID: JetStream's header, so a stream
// drops a second copy of a message id within its duplicate window.
const msgIDHeader = "Nats-Msg-Id"

// interestSettle is how long after a reconnect a plain subscription's
// interest may not have reached every server of a cluster yet (see the
// package doc, Reconnects). Route propagation takes milliseconds; this
// leaves room for a loaded server.
const interestSettle = time.Second

// natsHeader converts and validates a message header.
func natsHeader(h map[string]string) (nats.Header, error) {
	if len(h) == 0 {
		return nil, nil
	}
	out := make(nats.Header, len(h))
	for k, v := range h {
		if err := checkHeader(k, v); err != nil {
			return nil, err
		}
		out[k] = []string{v}
	}
	return out, nil
}

// headerMap keeps the first value of each key of a delivered header.
func headerMap(h nats.Header) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string]string, len(h))
	for k, vs := range h {
		if len(vs) > 0 {
			out[k] = vs[0]
		}
	}
	return out
}
