package amqpbroker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

var _ brokers.Broker = (*Broker)(nil)

// ErrNacked is wrapped by the error of a Publish that the server
// negatively acknowledged (an internal error of the server, such as a
// queue process that crashed): the message may or may not have been
// routed; the caller may retry.
var ErrNacked = errors.New("amqpbroker: publish nacked by the server")

// Broker is a brokers.Broker on one AMQP 0.9.1 connection (see the
// package doc). All methods are safe for concurrent use. Close must not
// be called from a Handler or an OnState callback (it waits for them).
type Broker struct {
	opts Options // with defaults applied
	keys keys
	log  *slog.Logger

	// ctx is canceled by Close; it stops the supervisor, its waits and
	// dials.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts every goroutine the Broker starts: the supervisor, each
	// session's dispatcher and notification drainer, and binding calls
	// that a Subscribe gave up waiting for. Add is only called under mu
	// with closed false, or by goroutines wg already counts, so it never
	// races with Close's Wait.
	wg sync.WaitGroup

	mu      sync.RWMutex
	closed  bool                // guarded by mu; set by Close
	literal map[string]*pattern // guarded by mu; patterns without wildcards, by pattern
	wild    []*pattern          // guarded by mu; patterns with wildcards
	nwild   map[string]*pattern // guarded by mu; the same, by pattern
	conn    *amqp.Connection    // guarded by mu; the connection in use or being set up

	closing   atomic.Bool             // set first thing by Close
	cur       atomic.Pointer[session] // the session while fully set up, else nil
	closeOnce sync.Once
	// kick asks the supervisor to remove bindings no pattern needs any
	// more. Buffered (1): requests coalesce.
	kick chan struct{}

	// topo is a semaphore (capacity 1) serializing every binding change
	// and the binding restore of a new session: bindings of one pattern
	// are added and removed in the order decided. The holder owns tsess.
	topo  chan struct{}
	tsess *session // guarded by topo; the session whose bindings are kept, or nil

	// streams are the history streams of Options.Streams (history.go);
	// fixed at Connect.
	streams []*stream
	// replays is a semaphore (capacity maxReplays) bounding the Replays
	// running at once.
	replays chan struct{}

	reconnects  atomic.Uint64
	dropped     atomic.Uint64
	historyGaps atomic.Uint64
	serverDrops atomic.Uint64 // dead letters of the node's queue (deadletters.go)
}

// pattern is one active subscription pattern, shared by the
// Subscriptions to it: one binding of the node's queue on the server, or,
// for a history pattern, a filter of its stream's live consumer.
type pattern struct {
	name string
	key  string          // binding key (not used for history patterns)
	st   *stream         // the stream of a history pattern, else nil
	idx  int             // position in Broker.wild, or in st.plist
	subs []*subscription // guarded by Broker.mu; never empty while the pattern is listed
}

// Connect returns a Broker connected to opts.URL. It makes the first
// connection attempt before returning, bounded by ctx and
// Options.ConnectTimeout: when the server cannot be reached (or ctx's
// deadline passes first) it still returns a Broker, which keeps trying in
// the background (Ready reports false and Publish fails with
// brokers.ErrUnavailable until a connection is up). When the server
// answers but refuses the setup (bad credentials, no access to the vhost,
// a missing exchange with DeclareExchange false, an exchange of another
// type, a stream that is missing or exists with other limits) Connect
// returns that error instead, since retrying would not help. Other
// errors are configuration errors, or ctx's cancellation.
//
// The caller owns the Broker and must Close it.
func Connect(ctx context.Context, opts Options) (*Broker, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("amqpbroker: connect: %w", err)
	}
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	k, err := newKeys(opts.SubjectPrefix)
	if err != nil {
		return nil, err
	}
	streams, err := newStreams(opts.Streams, k)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		opts:    opts,
		keys:    k,
		log:     opts.Logger.With(slog.String("broker", "amqp"), slog.String("url", redactURL(opts.URL)), slog.String("exchange", opts.Exchange)),
		literal: make(map[string]*pattern),
		nwild:   make(map[string]*pattern),
		kick:    make(chan struct{}, 1),
		topo:    make(chan struct{}, 1),
		streams: streams,
		replays: make(chan struct{}, maxReplays),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())

	// The first attempt also stops when the caller's ctx ends.
	actx, acancel := context.WithCancel(b.ctx)
	stop := context.AfterFunc(ctx, acancel)
	s, err := b.setup(actx)
	stop()
	acancel()
	failed := 0
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			b.cancel()
			return nil, fmt.Errorf("amqpbroker: connect: %w", ctx.Err())
		case refused(err):
			b.cancel()
			return nil, fmt.Errorf("amqpbroker: connect: %w", err)
		}
		b.log.Warn("amqp server unreachable; retrying in the background", slog.Any("err", err))
		failed = 1
	} else {
		// Ready as soon as Connect returns; the supervisor reports
		// StateConnected.
		b.cur.Store(s)
	}
	b.wg.Add(1)
	go b.run(s, failed)
	return b, nil
}

// Ready reports whether the connection is up and set up right now.
func (b *Broker) Ready() bool {
	return b.live() != nil
}

// live returns the current session, or nil when there is none or its
// connection is already closed (the supervisor may not have noticed yet).
func (b *Broker) live() *session {
	if b.closing.Load() {
		return nil
	}
	if s := b.cur.Load(); s != nil && !s.conn.IsClosed() {
		return s
	}
	return nil
}

// Reconnects returns how many times the connection was re-established
// after a loss (the first connect does not count).
func (b *Broker) Reconnects() uint64 { return b.reconnects.Load() }

// Dropped returns how many delivered messages were ignored because their
// routing key lacked the subject prefix or was not a valid channel (a
// plain AMQP client may publish any routing key).
func (b *Broker) Dropped() uint64 { return b.dropped.Load() }

// Queue returns the name of this node's queue on the server, or "" while
// disconnected. The server names it, and it is new after every reconnect.
func (b *Broker) Queue() string {
	if s := b.live(); s != nil {
		return s.queue
	}
	return ""
}

// Bindings returns how many bindings this node's queue has on the server
// right now: one per active pattern, or 0 while disconnected. A binding
// whose last Subscription ended is removed shortly after Unsubscribe
// returns, by the Broker's own goroutine.
func (b *Broker) Bindings() int {
	if s := b.live(); s != nil {
		return int(s.nbound.Load())
	}
	return 0
}

// Subscribe implements brokers.Broker. pattern is validated (see the
// package doc). When connected, Subscribe returns once the pattern's
// binding is in place on the server (at once when another Subscription
// already holds it), so every message published after it returned
// reaches h; when disconnected, it registers the Subscription and returns
// at once, and the binding is made on reconnect. A pattern that a stream
// covers (HasHistory) gets no binding: its messages come from the
// stream's live consumer, with Seq set, and Subscribe returns once that
// consumer runs (see the package doc). The returned Subscription's
// Unsubscribe waits for a running Handler call to return, so it must not
// be called from that subscription's own Handler.
func (b *Broker) Subscribe(ctx context.Context, pattern string, h brokers.Handler) (brokers.Subscription, error) {
	if h == nil {
		return nil, errors.New("amqpbroker: subscribe: nil handler")
	}
	if b.closing.Load() {
		return nil, fmt.Errorf("amqpbroker: subscribe: %w", brokers.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("amqpbroker: subscribe: %w", err)
	}
	if err := checkPattern(pattern); err != nil {
		return nil, err
	}
	if err := b.keys.checkLen(pattern); err != nil {
		return nil, err
	}
	s := &subscription{b: b, h: h}
	if err := b.add(s, pattern); err != nil {
		return nil, err
	}
	if st := s.p.st; st != nil {
		if err := b.ensureStream(ctx, st); err != nil {
			_ = s.Unsubscribe()
			return nil, fmt.Errorf("amqpbroker: subscribe %q: %w", pattern, err)
		}
		return s, nil
	}
	if err := b.ensureBound(ctx, s.p.key); err != nil {
		_ = s.Unsubscribe()
		return nil, fmt.Errorf("amqpbroker: subscribe %q: %w", pattern, err)
	}
	return s, nil
}

// add registers s under pattern name, creating the pattern if s is its
// first Subscription.
func (b *Broker) add(s *subscription, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("amqpbroker: subscribe: %w", brokers.ErrClosed)
	}
	if st := b.streamFor(name); st != nil {
		p := st.pats[name]
		if p == nil {
			p = &pattern{name: name, st: st, idx: len(st.plist)}
			st.plist = append(st.plist, p)
			st.pats[name] = p
		}
		p.subs = append(p.subs, s)
		s.p = p
		return nil
	}
	wild := brokers.IsPattern(name)
	p := b.literal[name]
	if wild {
		p = b.nwild[name]
	}
	if p == nil {
		p = &pattern{name: name, key: b.keys.bindingKey(name)}
		if wild {
			p.idx = len(b.wild)
			b.wild = append(b.wild, p)
			b.nwild[name] = p
		} else {
			b.literal[name] = p
		}
	}
	p.subs = append(p.subs, s)
	s.p = p
	return nil
}

// remove unregisters s; when it was its pattern's last Subscription, the
// pattern goes and the supervisor is asked to remove its binding.
func (b *Broker) remove(s *subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := s.p
	i := -1
	for j, x := range p.subs {
		if x == s {
			i = j
			break
		}
	}
	if i < 0 {
		return // Close dropped every pattern already
	}
	p.subs[i] = p.subs[len(p.subs)-1]
	p.subs[len(p.subs)-1] = nil
	p.subs = p.subs[:len(p.subs)-1]
	if len(p.subs) > 0 {
		return
	}
	if st := p.st; st != nil {
		if st.pats[p.name] == p {
			last := st.plist[len(st.plist)-1]
			st.plist[p.idx] = last
			last.idx = p.idx
			st.plist[len(st.plist)-1] = nil
			st.plist = st.plist[:len(st.plist)-1]
			delete(st.pats, p.name)
		}
	} else if b.nwild[p.name] == p {
		last := b.wild[len(b.wild)-1]
		b.wild[p.idx] = last
		last.idx = p.idx
		b.wild[len(b.wild)-1] = nil
		b.wild = b.wild[:len(b.wild)-1]
		delete(b.nwild, p.name)
	} else if b.literal[p.name] == p {
		delete(b.literal, p.name)
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// desired returns the binding keys of every active pattern.
func (b *Broker) desired() map[string]bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make(map[string]bool, len(b.literal)+len(b.wild))
	for _, p := range b.literal {
		out[p.key] = true
	}
	for _, p := range b.wild {
		out[p.key] = true
	}
	return out
}

// ensureBound makes sure binding key is in place in the current session,
// if there is one. It returns nil when disconnected, or when the
// connection is lost meanwhile: the session that comes next binds every
// active pattern before it reports StateConnected. If the binding is made
// after ctx gave up, the supervisor removes it: the caller unsubscribes on
// that error.
func (b *Broker) ensureBound(ctx context.Context, key string) error {
	return b.topoOp(ctx,
		func(s *session) bool { return s.bound[key] },
		func(s *session) error { return b.bind(s, key) })
}

// topoOp runs one topology change (a binding, a stream consumer) on the
// current session while holding the topology semaphore, unless there is
// no session or done says it is in place already. The change cannot be
// abandoned halfway (the channel's next reply would belong to it), so it
// runs on a goroutine of its own that keeps the semaphore until the server
// answered; the caller waits for it or for ctx.
func (b *Broker) topoOp(ctx context.Context, done func(*session) bool, op func(*session) error) error {
	ctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	select {
	case b.topo <- struct{}{}:
	case <-ctx.Done():
		return b.ctxErr(ctx)
	case <-b.ctx.Done():
		return brokers.ErrClosed
	}
	s := b.tsess
	if s == nil || done(s) {
		<-b.topo
		return nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		<-b.topo
		return brokers.ErrClosed
	}
	b.wg.Add(1)
	b.mu.Unlock()
	res := make(chan error, 1)
	go func() {
		defer b.wg.Done()
		defer func() { <-b.topo }()
		res <- op(s)
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return b.ctxErr(ctx)
	}
}

// Publish implements brokers.Broker: it publishes msg to the exchange
// with the channel as routing key and returns once the server confirmed
// it (see the package doc for what that means). msg.Channel must be a
// concrete channel; msg.Header["Content-Type"] travels as the AMQP
// content type, every other header as a string in the headers table.
func (b *Broker) Publish(ctx context.Context, msg brokers.Message) error {
	if b.closing.Load() {
		return fmt.Errorf("amqpbroker: publish: %w", brokers.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("amqpbroker: publish: %w", err)
	}
	if err := checkChannel(msg.Channel); err != nil {
		return err
	}
	if err := b.keys.checkLen(msg.Channel); err != nil {
		return err
	}
	contentType, table, err := publishing(msg.Header)
	if err != nil {
		return err
	}
	s := b.live()
	if s == nil {
		return fmt.Errorf("amqpbroker: publish to %q: %w", msg.Channel, brokers.ErrUnavailable)
	}
	if s.blocked.Load() {
		return fmt.Errorf("amqpbroker: publish to %q: server blocked publishing (resource alarm): %w", msg.Channel, brokers.ErrUnavailable)
	}
	ctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	dc, err := s.pub.PublishWithDeferredConfirmWithContext(ctx, b.opts.Exchange, b.keys.routingKey(msg.Channel), false, false, amqp.Publishing{
		ContentType:  contentType,
		Headers:      table,
		DeliveryMode: amqp.Transient,
		MessageId:    msg.ID,
		Body:         msg.Data,
	})
	if err != nil {
		return b.publishErr(ctx, msg.Channel, err)
	}
	select {
	case <-dc.Done():
	case <-ctx.Done():
		return b.publishErr(ctx, msg.Channel, ctx.Err())
	case <-b.ctx.Done():
		return fmt.Errorf("amqpbroker: publish to %q: %w", msg.Channel, brokers.ErrClosed)
	}
	if dc.Acked() {
		return nil
	}
	if s.pub.IsClosed() {
		// The library releases the confirmations still pending on a
		// channel that closes as nacks.
		return b.publishErr(ctx, msg.Channel, amqp.ErrClosed)
	}
	return fmt.Errorf("amqpbroker: publish to %q: %w", msg.Channel, ErrNacked)
}

// publishErr maps an error of a publish to the contract's errors.
func (b *Broker) publishErr(ctx context.Context, channel string, err error) error {
	switch {
	case b.closing.Load():
		return fmt.Errorf("amqpbroker: publish to %q: %w", channel, brokers.ErrClosed)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("amqpbroker: publish to %q: %w", channel, ctx.Err())
	}
	return fmt.Errorf("amqpbroker: publish to %q not confirmed: %w: %w", channel, brokers.ErrUnavailable, err)
}

// ctxErr is the error for a wait that ended with ctx: cancellation is the
// caller's, a deadline means the server did not answer in time.
func (b *Broker) ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", brokers.ErrUnavailable, ctx.Err())
	}
	return ctx.Err()
}

// confirmCtx returns ctx bounded by Options.ConfirmTimeout when it has no
// deadline of its own.
func (b *Broker) confirmCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, b.opts.ConfirmTimeout)
}

// Close implements brokers.Broker. It stops every Subscription (waiting
// for Handler calls in progress), closes the connection (the server then
// deletes the node's queue and its bindings), waits for every goroutine
// the Broker started, reports StateClosed, and returns nil. A Publish
// still waiting for its confirm returns brokers.ErrClosed.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closing.Store(true)
		b.mu.Lock()
		b.closed = true
		var subs []*subscription
		for _, p := range b.literal {
			subs = append(subs, p.subs...)
		}
		for _, p := range b.wild {
			subs = append(subs, p.subs...)
		}
		for _, st := range b.streams {
			for _, p := range st.plist {
				subs = append(subs, p.subs...)
			}
			clear(st.pats)
			clear(st.plist)
			st.plist = nil
		}
		clear(b.literal)
		clear(b.nwild)
		clear(b.wild)
		b.wild = nil
		conn := b.conn
		b.mu.Unlock()

		for _, s := range subs {
			s.stop()
		}
		b.cancel()
		if conn != nil {
			closeConn(conn)
		}
		b.wg.Wait()
		b.cur.Store(nil)
		b.emit(brokers.StateClosed)
	})
	return nil
}

// emit tells OnState, if set, about a state change. Only the supervisor
// and (after the supervisor ended) Close call it, so calls never overlap.
func (b *Broker) emit(s brokers.State) {
	if f := b.opts.OnState; f != nil {
		f(s)
	}
}

// deliver hands one delivery to every Subscription whose pattern matches
// its channel. targets is scratch space, returned for reuse. Only the
// current session's dispatcher calls it.
func (b *Broker) deliver(d *amqp.Delivery, targets []*subscription) []*subscription {
	ch, ok := b.keys.channel(d.RoutingKey)
	if !ok {
		b.dropped.Add(1)
		b.log.Debug("ignoring a delivery whose routing key is not a channel", slog.String("routing_key", d.RoutingKey))
		return targets
	}
	b.mu.RLock()
	targets = b.subscribersLocked(ch, targets)
	b.mu.RUnlock()
	if len(targets) == 0 {
		// A binding being removed, or the zero-word match of "#".
		return targets
	}
	fanOut(targets, d, ch, 0)
	clear(targets)
	return targets[:0]
}

// subscribersLocked appends the Subscriptions whose pattern matches
// channel ch to targets; b.mu is held for reading.
func (b *Broker) subscribersLocked(ch string, targets []*subscription) []*subscription {
	if p := b.literal[ch]; p != nil {
		targets = append(targets, p.subs...)
	}
	for _, p := range b.wild {
		if brokers.MatchChannel(p.name, ch) {
			targets = append(targets, p.subs...)
		}
	}
	return targets
}

// fanOut hands the message of delivery d on channel ch, with position
// seq, to every Subscription of targets.
func fanOut(targets []*subscription, d *amqp.Delivery, ch string, seq uint64) {
	hdr := headerMap(d)
	for i, s := range targets {
		m := brokers.Message{Channel: ch, Data: d.Body, Seq: seq, Header: hdr, ID: d.MessageId}
		if i > 0 {
			// Each receiver owns its message: the first gets the
			// delivery's own buffer, the others copies.
			m.Data = bytes.Clone(d.Body)
			m.Header = maps.Clone(hdr)
		}
		s.deliver(m)
	}
}

// refused reports whether err is the server's answer to a setup it will
// refuse again (credentials, permissions, a missing or mismatching
// exchange), as opposed to the server being unreachable.
func refused(err error) bool {
	var e *amqp.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case amqp.AccessRefused, amqp.NotFound, amqp.PreconditionFailed, amqp.NotAllowed:
		return true
	}
	return false
}

// closeConn closes a connection, bounding the close handshake.
func closeConn(c *amqp.Connection) {
	_ = c.CloseDeadline(time.Now().Add(closeTimeout))
}

// subscription is one Subscribe: a Handler registered under a pattern.
type subscription struct {
	b *Broker
	h brokers.Handler
	p *pattern // set by Broker.add

	mu      sync.Mutex // held while h runs
	stopped bool       // guarded by mu
	once    sync.Once
}

// deliver calls the Handler unless the Subscription was stopped. Holding
// mu while it runs is what lets Unsubscribe wait for a call in progress.
func (s *subscription) deliver(m brokers.Message) {
	s.mu.Lock()
	if !s.stopped {
		s.h(m)
	}
	s.mu.Unlock()
}

// stop waits for a Handler call in progress and prevents further ones.
func (s *subscription) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// Unsubscribe implements brokers.Subscription. It returns once the Handler
// is not running and will not run again; the pattern's binding is removed
// shortly after when this was its last Subscription (messages that still
// arrive through it meanwhile are dropped by the dispatcher). It always
// returns nil.
func (s *subscription) Unsubscribe() error {
	s.once.Do(func() {
		s.stop()
		s.b.remove(s)
	})
	return nil
}
