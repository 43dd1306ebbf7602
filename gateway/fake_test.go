package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cometgate/cometgate/brokers"
)

// fakeBroker is an in-memory brokers.Broker for the gateway's unit tests.
// Patterns match like NATS subjects (brokers.MatchChannel). Like nats.go async
// subscriptions, each subscription delivers on a goroutine of its own, in
// publish order, from an unbounded queue; Unsubscribe waits for that
// goroutine, so the Handler is not called after it returns.
type fakeBroker struct {
	ready atomic.Bool

	mu        sync.Mutex
	subs      map[*fakeSub]struct{}
	published []brokers.Message
	pubErr    error
	subErr    error
	pubGate   chan struct{} // when set, Publish waits until it is closed
	subGate   chan struct{} // when set, Subscribe waits until it is closed
	pubCalls  int
	subCalls  int
	closed    bool
	noRecord  bool // benchmarks: do not keep published messages
}

var _ brokers.Broker = (*fakeBroker)(nil)

func newFakeBroker() *fakeBroker {
	b := &fakeBroker{subs: make(map[*fakeSub]struct{})}
	b.ready.Store(true)
	return b
}

type fakeSub struct {
	b       *fakeBroker
	pattern string
	h       brokers.Handler

	mu        sync.Mutex
	queue     []brokers.Message
	enqueued  int // messages queued for h
	delivered int // messages h returned from
	wake      chan struct{}
	quit      chan struct{}
	done      chan struct{}
	once      sync.Once
}

func (b *fakeBroker) Subscribe(ctx context.Context, pattern string, h brokers.Handler) (brokers.Subscription, error) {
	b.mu.Lock()
	gate := b.subGate
	b.subCalls++
	b.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := brokers.ValidatePattern(pattern); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, brokers.ErrClosed
	}
	if b.subErr != nil {
		return nil, b.subErr
	}
	s := &fakeSub{
		b: b, pattern: pattern, h: h,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
	}
	b.subs[s] = struct{}{}
	go s.run()
	return s, nil
}

func (s *fakeSub) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, m := range q {
			select {
			case <-s.quit:
				return
			default:
			}
			s.h(m)
			s.mu.Lock()
			s.delivered++
			s.mu.Unlock()
		}
		if len(q) > 0 {
			continue
		}
		select {
		case <-s.wake:
		case <-s.quit:
			return
		}
	}
}

func (s *fakeSub) enqueue(m brokers.Message) {
	m.Data = append([]byte(nil), m.Data...) // the receiver owns it
	s.mu.Lock()
	s.queue = append(s.queue, m)
	s.enqueued++
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *fakeSub) Unsubscribe() error {
	s.once.Do(func() {
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
		close(s.quit)
	})
	<-s.done
	return nil
}

// Publish delivers msg to every matching subscription, keeping msg.Seq
// (a real broker ignores it; tests use it to fake history cursors).
func (b *fakeBroker) Publish(ctx context.Context, msg brokers.Message) error {
	b.mu.Lock()
	gate := b.pubGate
	b.pubCalls++
	b.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return fmt.Errorf("fake publish: %w", brokers.ErrUnavailable)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return brokers.ErrClosed
	}
	if b.pubErr != nil {
		return b.pubErr
	}
	if err := brokers.ValidateChannel(msg.Channel); err != nil {
		return err
	}
	if !b.noRecord {
		b.published = append(b.published, msg)
	}
	for s := range b.subs {
		if brokers.MatchChannel(s.pattern, msg.Channel) {
			s.enqueue(msg)
		}
	}
	return nil
}

func (b *fakeBroker) Ready() bool { return b.ready.Load() }

func (b *fakeBroker) Close() error {
	b.mu.Lock()
	b.closed = true
	subs := make([]*fakeSub, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	return nil
}

// Subs is the number of live subscriptions.
func (b *fakeBroker) Subs() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// SubsFor is the number of live subscriptions on pattern.
func (b *fakeBroker) SubsFor(pattern string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for s := range b.subs {
		if s.pattern == pattern {
			n++
		}
	}
	return n
}

// Drained reports whether every live subscription's handler has returned
// for every message published so far.
func (b *fakeBroker) Drained() bool {
	b.mu.Lock()
	subs := make([]*fakeSub, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		s.mu.Lock()
		busy := s.delivered < s.enqueued
		s.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

// Published returns a copy of the messages Publish accepted.
func (b *fakeBroker) Published() []brokers.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]brokers.Message(nil), b.published...)
}

func (b *fakeBroker) SetPublishErr(err error) {
	b.mu.Lock()
	b.pubErr = err
	b.mu.Unlock()
}

func (b *fakeBroker) SetSubscribeErr(err error) {
	b.mu.Lock()
	b.subErr = err
	b.mu.Unlock()
}

// HoldPublishes makes Publish wait until the returned release is called.
func (b *fakeBroker) HoldPublishes() (release func()) {
	gate := make(chan struct{})
	b.mu.Lock()
	b.pubGate = gate
	b.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.pubGate = nil
			b.mu.Unlock()
			close(gate)
		})
	}
}

// HoldSubscribes makes Subscribe wait until the returned release is called.
func (b *fakeBroker) HoldSubscribes() (release func()) {
	gate := make(chan struct{})
	b.mu.Lock()
	b.subGate = gate
	b.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.subGate = nil
			b.mu.Unlock()
			close(gate)
		})
	}
}

// sent is one packet as a fakeTransport wrote it.
type sent struct {
	Seq  uint64
	Body *Body
	JSON string
}

var errTransportClosed = errors.New("fake transport: closed")

// fakeTransport is a gateway.Transport whose packets go to a sink channel,
// each with its full JSON (Packet.AppendJSON). It can be told to block its
// writes until released (stubbornly, ignoring Close, if asked) or to fail.
type fakeTransport struct {
	name string
	sink chan sent

	mu        sync.Mutex
	gate      chan struct{} // when set, writes wait for it (or for Close, unless stubborn)
	stubborn  bool
	failErr   error
	hbGate    chan struct{} // when set, WriteHeartbeat waits for it (or Close)
	reasons   []Disconnect
	closed    chan struct{}
	closeOnce sync.Once

	entered    chan struct{} // a blocked write or heartbeat announces itself here
	writes     atomic.Int64
	heartbeats atomic.Int64
	bytes      atomic.Int64
}

var _ Transport = (*fakeTransport)(nil)

func newFakeTransport(sinkSize int) *fakeTransport {
	if sinkSize <= 0 {
		sinkSize = 4096
	}
	return &fakeTransport{
		name:    "fake",
		sink:    make(chan sent, sinkSize),
		closed:  make(chan struct{}),
		entered: make(chan struct{}, 16),
	}
}

func (t *fakeTransport) Name() string { return t.name }

func (t *fakeTransport) WritePackets(pkts []Packet) (int, error) {
	t.writes.Add(1)
	t.mu.Lock()
	gate, stubborn := t.gate, t.stubborn
	t.mu.Unlock()
	if gate != nil {
		select {
		case t.entered <- struct{}{}:
		default:
		}
		if stubborn {
			<-gate
		} else {
			select {
			case <-gate:
			case <-t.closed:
				return 0, errTransportClosed
			}
		}
	}
	t.mu.Lock()
	fail := t.failErr
	t.mu.Unlock()
	if fail != nil {
		return 0, fail
	}
	select {
	case <-t.closed:
		return 0, errTransportClosed
	default:
	}
	n := 0
	var buf []byte
	for _, p := range pkts {
		buf = p.AppendJSON(buf[:0])
		n += len(buf)
		select {
		case t.sink <- sent{Seq: p.Seq, Body: p.Body(), JSON: string(buf)}:
		case <-t.closed:
			return n, errTransportClosed
		}
	}
	t.bytes.Add(int64(n))
	return n, nil
}

func (t *fakeTransport) WriteHeartbeat() error {
	t.mu.Lock()
	gate, fail := t.hbGate, t.failErr
	t.mu.Unlock()
	if gate != nil {
		select {
		case t.entered <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-t.closed:
			return errTransportClosed
		}
	}
	if fail != nil {
		return fail
	}
	select {
	case <-t.closed:
		return errTransportClosed
	default:
	}
	t.heartbeats.Add(1)
	return nil
}

func (t *fakeTransport) Close(d Disconnect) {
	t.mu.Lock()
	t.reasons = append(t.reasons, d)
	t.mu.Unlock()
	t.closeOnce.Do(func() { close(t.closed) })
}

// Block makes writes wait until the returned release is called; a stubborn
// block ignores Close too (a transport that never unblocks by itself).
func (t *fakeTransport) Block(stubborn bool) (release func()) {
	gate := make(chan struct{})
	t.mu.Lock()
	t.gate, t.stubborn = gate, stubborn
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.gate = nil
			t.mu.Unlock()
			close(gate)
		})
	}
}

// BlockHeartbeats makes WriteHeartbeat wait until release (or Close).
func (t *fakeTransport) BlockHeartbeats() (release func()) {
	gate := make(chan struct{})
	t.mu.Lock()
	t.hbGate = gate
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.hbGate = nil
			t.mu.Unlock()
			close(gate)
		})
	}
}

func (t *fakeTransport) Fail(err error) {
	t.mu.Lock()
	t.failErr = err
	t.mu.Unlock()
}

// Reasons returns the Disconnects Close was called with, in order.
func (t *fakeTransport) Reasons() []Disconnect {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Disconnect(nil), t.reasons...)
}

func (t *fakeTransport) IsClosed() bool {
	select {
	case <-t.closed:
		return true
	default:
		return false
	}
}
