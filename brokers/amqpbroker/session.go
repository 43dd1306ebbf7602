package amqpbroker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

// session is one connection with everything set up on it: the node's
// queue, its consumer, the publish channel and the bindings. A lost
// session is never repaired; the supervisor replaces it with a new one.
type session struct {
	conn  *amqp.Connection
	queue string        // server-named, exclusive, auto-delete
	cons  *amqp.Channel // consumes queue; only the dispatcher acks on it
	pub   *amqp.Channel // confirm mode; Publish only
	dead  *amqp.Channel // consumes queue's dead letters; only deadLetters acks on it

	// Channel-close notifications: buffered (1), since the library sends
	// each at most once and must never block on them.
	connClosed, consClosed, pubClosed, deadClosed chan *amqp.Error

	// topo declares and binds. It is reopened after the server refused a
	// binding (a channel exception closes the channel, not the
	// connection), so a refused Subscribe does not cost the node its
	// consumer.
	topo   *amqp.Channel   // guarded by Broker.topo
	bound  map[string]bool // guarded by Broker.topo; binding keys in place
	nbound atomic.Int64    // len(bound), for Bindings

	blocked atomic.Bool // the server blocked publishing (resource alarm)

	// scons are the live consumers of streams with history
	// subscriptions. Guarded by Broker.topo.
	scons map[*stream]*streamConsumer
	// lost receives (buffered, 1) why a stream's live consumer ended
	// without being asked to: the session is then replaced.
	lost chan error

	wg         sync.WaitGroup // the dispatchers, deadLetters and the drainer
	dispatched chan struct{}  // closed when the dispatcher returns
}

// run is the supervisor: it owns the session lifecycle, from (re)connect
// with backoff to loss, for as long as the Broker is open. s is the
// session Connect set up, or nil; failed counts the attempts that failed
// since the last loss.
func (b *Broker) run(s *session, failed int) {
	defer b.wg.Done()
	connectedBefore := false
	for {
		for s == nil {
			t := time.NewTimer(backoff(failed, b.opts.ReconnectWait, b.opts.MaxReconnectWait))
			select {
			case <-t.C:
			case <-b.ctx.Done():
				t.Stop()
				return
			}
			var err error
			s, err = b.setup(b.ctx)
			if err != nil {
				if b.ctx.Err() != nil {
					return
				}
				failed++
				level := slog.LevelWarn
				if refused(err) {
					level = slog.LevelError // needs an operator
				}
				b.log.Log(b.ctx, level, "amqp connect attempt failed", slog.Int("attempt", failed), slog.Any("err", err))
			}
		}
		if connectedBefore {
			b.reconnects.Add(1)
		}
		connectedBefore = true
		b.cur.Store(s)
		b.log.Info("amqp connected", slog.String("queue", s.queue), slog.Int64("bindings", s.nbound.Load()))
		b.emit(brokers.StateConnected)

		reason := b.watch(s)
		b.cur.Store(nil)
		if b.ctx.Err() == nil {
			b.log.Warn("amqp connection lost; reconnecting", slog.Any("err", reason))
			b.emit(brokers.StateDisconnected)
		}
		b.end(s)
		if b.ctx.Err() != nil {
			return
		}
		s, failed = nil, 0
	}
}

// watch returns why s was lost, or nil when the Broker is closing. It
// also removes the bindings of patterns that ended.
func (b *Broker) watch(s *session) error {
	for {
		select {
		case <-b.ctx.Done():
			return nil
		case e := <-s.connClosed:
			return closeReason("connection", e)
		case e := <-s.consClosed:
			return closeReason("consumer channel", e)
		case e := <-s.pubClosed:
			return closeReason("publish channel", e)
		case e := <-s.deadClosed:
			return closeReason("dead-letter channel", e)
		case <-s.dispatched:
			return errors.New("the server cancelled the consumer (queue deleted?)")
		case err := <-s.lost:
			return err
		case <-b.kick:
			b.unbindStale(s)
			b.stopIdleStreams(s)
		}
	}
}

func closeReason(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("%s closed", what)
	}
	return fmt.Errorf("%s closed: %w", what, e)
}

// setup dials and sets up a session: exchange, queue, consumer, publish
// channel, and a binding for every active pattern. On error nothing of it
// is left running.
func (b *Broker) setup(ctx context.Context) (*session, error) {
	conn, err := b.dial(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		closeConn(conn)
		return nil, brokers.ErrClosed
	}
	b.conn = conn // from now on Close closes it too
	b.mu.Unlock()

	s := &session{
		conn:       conn,
		bound:      make(map[string]bool),
		scons:      make(map[*stream]*streamConsumer),
		lost:       make(chan error, 1),
		dispatched: make(chan struct{}),
	}
	if err := b.open(ctx, s); err != nil {
		b.end(s)
		return nil, err
	}
	return s, nil
}

// open sets s up on its connection.
func (b *Broker) open(ctx context.Context, s *session) error {
	s.connClosed = s.conn.NotifyClose(make(chan *amqp.Error, 1))

	topo, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	s.topo = topo
	if b.opts.DeclareExchange {
		err = topo.ExchangeDeclare(b.opts.Exchange, b.opts.ExchangeType, true, false, false, false, nil)
	} else {
		err = topo.ExchangeDeclarePassive(b.opts.Exchange, b.opts.ExchangeType, true, false, false, false, nil)
	}
	if err != nil {
		return fmt.Errorf("declare exchange %q: %w", b.opts.Exchange, err)
	}
	if err := b.declareStreams(topo); err != nil {
		return err
	}
	// What the server drops from the queue comes back to the node as a
	// dead letter, into a queue of its own (deadLetters).
	dq, err := topo.QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": int64(deadLetterBacklog)})
	if err != nil {
		return fmt.Errorf("declare dead-letter queue: %w", err)
	}
	q, err := topo.QueueDeclare("", false, true, true, false, b.queueArgs(dq.Name))
	if err != nil {
		return fmt.Errorf("declare queue: %w", err)
	}
	s.queue = q.Name

	if s.cons, err = s.conn.Channel(); err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := s.cons.Qos(b.opts.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	s.consClosed = s.cons.NotifyClose(make(chan *amqp.Error, 1))
	// The library blocks its reader goroutine (up to a timeout) on these
	// notifications, so a goroutine drains them for the session's life.
	cancels := s.cons.NotifyCancel(make(chan string, 1))
	blocked := s.conn.NotifyBlocked(make(chan amqp.Blocking, 1))
	s.wg.Add(1)
	go b.drain(s, blocked, cancels)
	deliveries, err := s.cons.Consume(s.queue, "", false, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	s.wg.Add(1)
	go b.dispatch(s, deliveries)

	if s.dead, err = s.conn.Channel(); err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := s.dead.Qos(deadLetterBacklog, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	s.deadClosed = s.dead.NotifyClose(make(chan *amqp.Error, 1))
	dead, err := s.dead.Consume(dq.Name, "", false, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume dead letters: %w", err)
	}
	s.wg.Add(1)
	go b.deadLetters(s, dead)

	if s.pub, err = s.conn.Channel(); err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := s.pub.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	s.pubClosed = s.pub.NotifyClose(make(chan *amqp.Error, 1))

	// Bind every active pattern. Holding the semaphore, a Subscribe either
	// registered its pattern before (and it is bound here) or binds it
	// itself on s afterwards.
	select {
	case b.topo <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.topo }()
	for key := range b.desired() {
		if err := b.bind(s, key); err != nil {
			// Refused, not lost: its Subscriptions stay registered and
			// the binding is tried again on the next connect.
			b.log.Error("amqp binding refused; its subscriptions receive nothing until a reconnect", slog.String("binding_key", key), slog.Any("err", err))
		}
	}
	// Start the live consumer of every stream with history subscriptions,
	// resuming where the last session's left off.
	for _, st := range b.streams {
		b.mu.RLock()
		idle := len(st.plist) == 0
		b.mu.RUnlock()
		if idle {
			// Nobody subscribed through the outage: a later
			// subscription starts at the end, not at the old position.
			st.pos.Store(-1)
			continue
		}
		if err := b.startStream(ctx, s, st); err != nil {
			return fmt.Errorf("stream %q: %w", st.spec.Name, err)
		}
	}
	if s.conn.IsClosed() {
		return errors.New("connection lost while binding")
	}
	b.tsess = s
	return nil
}

// end closes s's connection and waits until nothing of s runs any more.
func (b *Broker) end(s *session) {
	closeConn(s.conn)
	// The dispatcher and the drainer return once the library closed their
	// channels, which closing the connection does.
	s.wg.Wait()
	// A binding call in flight on s fails now, releasing the semaphore.
	b.topo <- struct{}{}
	if b.tsess == s {
		b.tsess = nil
	}
	<-b.topo
	b.mu.Lock()
	if b.conn == s.conn {
		b.conn = nil
	}
	b.mu.Unlock()
}

// dial opens a connection to the server, bounded by ctx and
// Options.ConnectTimeout.
func (b *Broker) dial(ctx context.Context) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(b.opts.Name)
	var stops []func() bool
	cfg := amqp.Config{
		Heartbeat:  b.opts.Heartbeat,
		Properties: props,
		// DialConfig calls Dial synchronously, before the TLS and AMQP
		// handshakes.
		Dial: func(network, addr string) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
			defer cancel()
			var d net.Dialer
			c, err := d.DialContext(dctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The handshakes have no ctx: bound them with a deadline,
			// which the library clears once the connection is open, and
			// cut them short if ctx ends meanwhile.
			if err := c.SetDeadline(time.Now().Add(b.opts.ConnectTimeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			stops = append(stops, context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) }))
			return c, nil
		},
	}
	conn, err := amqp.DialConfig(b.opts.URL, cfg)
	for _, stop := range stops {
		stop()
	}
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	return conn, nil
}

// topoChannel returns s's channel for declarations and bindings, opening
// a new one if the last was closed by a channel exception. The caller
// holds the semaphore.
func (s *session) topoChannel() (*amqp.Channel, error) {
	if s.topo != nil && !s.topo.IsClosed() {
		return s.topo, nil
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, err
	}
	s.topo = ch
	return ch, nil
}

// bind adds binding key to s's queue. The caller holds the semaphore. It
// returns nil when s's connection is lost meanwhile (the next session
// binds every active pattern), and an error when the server refused the
// binding.
func (b *Broker) bind(s *session, key string) error {
	ch, err := s.topoChannel()
	if err == nil {
		err = ch.QueueBind(s.queue, key, b.opts.Exchange, false, nil)
	}
	if err == nil {
		s.bound[key] = true
		s.nbound.Add(1)
		return nil
	}
	if s.conn.IsClosed() {
		return nil
	}
	return fmt.Errorf("bind %q to exchange %q: %w", key, b.opts.Exchange, err)
}

// unbindStale removes the bindings of s that no active pattern needs.
func (b *Broker) unbindStale(s *session) {
	select {
	case b.topo <- struct{}{}:
	case <-b.ctx.Done():
		return
	}
	defer func() { <-b.topo }()
	if b.tsess != s {
		return
	}
	want := b.desired()
	for key := range s.bound {
		if want[key] {
			continue
		}
		ch, err := s.topoChannel()
		if err == nil {
			err = ch.QueueUnbind(s.queue, key, b.opts.Exchange, nil)
		}
		if err != nil && s.conn.IsClosed() {
			return // lost: the queue and its bindings are gone anyway
		}
		if err != nil {
			// Forgotten all the same: the dispatcher drops what the
			// binding still routes, and it ends with the connection.
			b.log.Warn("amqp unbind failed", slog.String("binding_key", key), slog.Any("err", err))
		}
		delete(s.bound, key)
		s.nbound.Add(-1)
	}
}

// dispatch delivers s's messages until its consumer ends. Deliveries are
// acknowledged (several at once) after they were handed to the Handlers,
// when none is waiting or half the prefetch window is unacknowledged:
// acknowledgements are the flow control that bounds what the client
// buffers, not a delivery guarantee.
func (b *Broker) dispatch(s *session, deliveries <-chan amqp.Delivery) {
	defer s.wg.Done()
	defer close(s.dispatched)
	ackEvery := max(1, b.opts.Prefetch/2)
	var (
		targets []*subscription
		last    uint64
		unacked int
	)
	ack := func() {
		if unacked > 0 {
			// An error means the channel is closed: deliveries ends next.
			_ = s.cons.Ack(last, true)
			unacked = 0
		}
	}
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		default:
			ack()
			d, ok = <-deliveries
		}
		if !ok {
			return
		}
		targets = b.deliver(&d, targets)
		last = d.DeliveryTag
		unacked++
		if unacked >= ackEvery {
			ack()
		}
	}
}

// drain consumes s's blocked and consumer-cancel notifications until the
// library closes them (with the connection and the consumer channel).
func (b *Broker) drain(s *session, blocked <-chan amqp.Blocking, cancels <-chan string) {
	defer s.wg.Done()
	for blocked != nil || cancels != nil {
		select {
		case bl, ok := <-blocked:
			if !ok {
				blocked = nil
				continue
			}
			s.blocked.Store(bl.Active)
			if bl.Active {
				b.log.Warn("amqp server blocked publishing", slog.String("reason", bl.Reason))
			} else {
				b.log.Info("amqp server unblocked publishing")
			}
		case tag, ok := <-cancels:
			if !ok {
				cancels = nil
				continue
			}
			b.log.Warn("amqp server cancelled the consumer; reconnecting", slog.String("consumer", tag))
		}
	}
}
