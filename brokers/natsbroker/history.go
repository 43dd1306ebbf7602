package natsbroker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoHistory is returned by Replay for a pattern that no stream covers
// entirely (HasHistory is false).
var ErrNoHistory = errors.New("natsbroker: pattern has no history")

const (
	// superviseEvery is how often the supervisor checks consumers'
	// heartbeats and retries what failed.
	superviseEvery = time.Second
	// superviseMaxBackoff caps the delay between failing supervisor passes.
	superviseMaxBackoff = 30 * time.Second
	// consumerInactive is how long the server keeps a consumer nobody
	// reads from: leftovers of a crashed gateway disappear after it.
	consumerInactive = 30 * time.Second
	// closeDeleteTimeout bounds the consumer deletions of Close.
	closeDeleteTimeout = 3 * time.Second
	// consumerAnswerWait bounds one request to create or delete a
	// consumer. A NATS cluster that lost a server places a one-replica
	// consumer on any of the stream's peers, the lost one included,
	// until it counts that server as offline (nats-server 2.9 had not
	// after a minute), and a request for a consumer placed there is never
	// answered; every other one is answered within milliseconds. So a
	// creation that gets no answer in this time is tried again with a
	// new consumer (within the caller's deadline), which lands on a live
	// peer with the odds of the live peers among the stream's.
	consumerAnswerWait = 3 * time.Second
	// defaultReplayBatch is the most messages one replay fetch asks for.
	defaultReplayBatch = 256
	// replayFetchWait bounds one replay fetch; fetches ask only for
	// messages known to be pending, so they normally return at once.
	replayFetchWait = 5 * time.Second
	// replayMaxFailures is how many replay fetches in a row may fail
	// (and the consumer be recreated) before Replay gives up.
	replayMaxFailures = 3
)

// HasHistory implements brokers.History: it reports whether one stream's
// patterns cover every channel of pattern. An invalid pattern has none.
func (b *Broker) HasHistory(pattern string) bool {
	return checkPattern(pattern) == nil && b.streamFor(pattern) != nil
}

// streamFor returns the stream that stores every channel of pattern (a
// concrete channel is a pattern too), or nil.
func (b *Broker) streamFor(pattern string) *stream {
	for i := range b.streams {
		if b.streams[i].covers(pattern) {
			return &b.streams[i]
		}
	}
	return nil
}

// HistoryGaps returns how many times a history subscription could not
// resume exactly where it was after a reconnect or a consumer failure,
// because the stream had removed (or lost, when it was recreated)
// messages it had not delivered yet. Each one is also logged, and the
// subscription's Handler gets a Message with Gap set before the next
// message (or with the next heartbeat). Like a
// Replay gap, it is conservative: with several channels in one stream,
// the removed messages may all have been on other channels.
func (b *Broker) HistoryGaps() uint64 { return b.historyGaps.Load() }

// publishStored publishes m to JetStream and waits for the stream's
// acknowledgement: once it returns nil the message is stored.
func (b *Broker) publishStored(ctx context.Context, st *stream, channel string, m *nats.Msg) error {
	cctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	ack, err := b.js.PublishMsg(cctx, m)
	if err != nil {
		return b.connErr(ctx, "publish to "+channel, err)
	}
	if ack.Stream != st.spec.Name {
		// Only possible when the server's streams differ from Options.Streams.
		return fmt.Errorf("natsbroker: publish to %q: stored in stream %q, not %q", channel, ack.Stream, st.spec.Name)
	}
	return nil
}

// ensureAtConnect ensures every stream on the first connection, returning
// configuration errors; other errors are logged and left to the
// supervisor.
func (b *Broker) ensureAtConnect(ctx context.Context) error {
	cctx, cancel := b.confirmCtx(ctx)
	defer cancel()
	err := b.ensureStreams(cctx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("natsbroker: JetStream is not enabled on the server (no responders): %w", err)
	case isConfigErr(err):
		return err
	}
	b.log.Warn("cannot ensure streams yet; retrying in the background", slog.Any("err", err))
	b.sup.needEnsure.Store(true)
	return nil
}

func (b *Broker) ensureStreams(ctx context.Context) error {
	for i := range b.streams {
		if err := b.streams[i].ensure(ctx, b.js); err != nil {
			return err
		}
	}
	return nil
}

// consumerRef names a consumer to delete.
type consumerRef struct{ stream, name string }

// deleteConsumer deletes c, waiting at most consumerAnswerWait (a
// consumer on a lost server is never answered for). It reports whether
// the server answered.
func (b *Broker) deleteConsumer(ctx context.Context, c consumerRef) bool {
	dctx, cancel := context.WithTimeout(ctx, b.opts.answerWait)
	defer cancel()
	err := b.js.DeleteConsumer(dctx, c.stream, c.name)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		// The server deletes it after consumerInactive anyway.
		b.log.Debug("cannot delete consumer", slog.String("stream", c.stream), slog.String("consumer", c.name), slog.Any("err", err))
		return !errors.Is(err, context.DeadlineExceeded)
	}
	return true
}

// errUnanswered marks a consumer creation the server did not answer
// within consumerAnswerWait.
var errUnanswered = errors.New("no answer")

// createConsumer makes one request to create a consumer (create does
// it), bounded by consumerAnswerWait as well as ctx. When only the first
// bound expired, the error wraps errUnanswered.
func (b *Broker) createConsumer(ctx context.Context, create func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, b.opts.answerWait)
	defer cancel()
	err := create(cctx)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w within %v (the consumer may sit on a lost server): %w", errUnanswered, b.opts.answerWait, err)
	}
	return err
}

// retryUnanswered calls attempt until it returns anything but an
// unanswered consumer creation, or ctx ends. Each attempt must create a
// new consumer: one that went unanswered may still come alive later
// (when its server does), and must have nobody to deliver to, so that
// the server removes it after consumerInactive.
func (b *Broker) retryUnanswered(ctx context.Context, attempt func() error) error {
	for {
		err := attempt()
		if !errors.Is(err, errUnanswered) || ctx.Err() != nil {
			return err
		}
		b.log.Warn("consumer creation went unanswered; trying a new consumer", slog.Any("err", err))
	}
}

// deleteConsumersAtClose deletes cs, if connected, within
// closeDeleteTimeout in all.
func (b *Broker) deleteConsumersAtClose(cs []consumerRef) {
	if len(cs) == 0 || !b.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeDeleteTimeout)
	defer cancel()
	b.deleteConsumers(ctx, cs)
}

// deleteConsumers deletes cs in turn. Deletions are a courtesy: a
// consumer nobody listens to is removed by the server after
// consumerInactive. So after the first one that goes unanswered (its
// consumer sits on a lost server, and the next ones may too) the rest
// are dropped rather than each waiting for its own answer.
func (b *Broker) deleteConsumers(ctx context.Context, cs []consumerRef) {
	for _, c := range cs {
		if ctx.Err() != nil || !b.deleteConsumer(ctx, c) {
			return
		}
	}
}

// consumerName returns a new random consumer name.
func consumerName(prefix string) string {
	return prefix + rand.Text()[:16]
}

// ---------------------------------------------------------------------
// Live delivery: history subscriptions.

// histSub is a Subscribe on a history-backed pattern: an ordered push
// consumer. Each generation is one ephemeral consumer delivering to its
// own inbox subscription; when a generation fails (a consumer sequence
// skipped, missing heartbeats, a reconnect) the supervisor replaces it
// with a new one starting right after the last message handed to h.
type histSub struct {
	b      *Broker
	h      brokers.Handler
	st     *stream
	filter string // the consumer's filter subject

	// opMu serializes the creation of generations (Subscribe, then the
	// supervisor).
	opMu sync.Mutex

	mu         sync.Mutex // guards the fields below; held while h runs
	stopped    bool
	gen        *generation   // the generation delivering, nil while none
	gens       []*generation // generations whose goroutine may still run
	needReset  bool          // gen must be (re)created
	started    bool          // lastSeq is a position in the stream
	lastSeq    uint64        // last sequence handed to h, or the start point
	created    time.Time     // the stream's creation time lastSeq refers to
	lastActive time.Time     // last message or heartbeat of gen
	// gapPending is set when a generation resumed with a gap; the next
	// delivery of the current generation hands h a Gap marker first. Two
	// gaps detected before a delivery make one marker.
	gapPending bool

	once     sync.Once
	waitGens []*generation // set by the first Unsubscribe
}

// generation is one consumer of a histSub and its inbox subscription.
type generation struct {
	consumer string
	ns       *nats.Subscription
	dseq     uint64 // guarded by histSub.mu; consumer sequence of the last message
	retired  bool   // guarded by histSub.mu; inbox unsubscribed, consumer deleted
	done     chan struct{}
	// known is closed once startGeneration has decided whether the
	// generation starts after a gap. Deliveries wait for it, so that a
	// Gap marker found only after the consumer was created still comes
	// before the generation's first message.
	known    chan struct{}
	waitable bool
}

func (g *generation) wait() {
	if g.waitable {
		<-g.done
	}
}

// subscribeHistory creates a history subscription. When connected it
// returns once the consumer exists, so every message stored after
// Subscribe returned is delivered. While disconnected it returns at once;
// the consumer is created on reconnect and delivers what is stored from
// then on.
func (b *Broker) subscribeHistory(ctx context.Context, pattern string, st *stream, h brokers.Handler) (brokers.Subscription, error) {
	s := &histSub{b: b, h: h, st: st, filter: b.subj.subject(pattern)}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("natsbroker: subscribe: %w", brokers.ErrClosed)
	}
	b.hsubs[s] = struct{}{}
	b.mu.Unlock()

	s.opMu.Lock()
	epoch := b.currentEpoch()
	var err error
	if b.nc.IsConnected() {
		cctx, cancel := b.confirmCtx(ctx)
		err = b.retryUnanswered(cctx, func() error { return b.startGeneration(cctx, s) })
		cancel()
	} else {
		s.markReset()
	}
	s.opMu.Unlock()
	if err != nil {
		_ = s.Unsubscribe()
		return nil, b.connErr(ctx, "subscribe to "+pattern, err)
	}
	if b.closing.Load() {
		_ = s.Unsubscribe()
		return nil, fmt.Errorf("natsbroker: subscribe: %w", brokers.ErrClosed)
	}
	if b.currentEpoch() != epoch {
		// The connection went down (and maybe up) meanwhile; the consumer
		// may not survive that.
		s.markReset()
	}
	b.sup.kickNow()
	return s, nil
}

// startGeneration creates a new generation for s, starting after lastSeq
// (or at the stream's end for a subscription that has no position yet).
func (b *Broker) startGeneration(ctx context.Context, s *histSub) error {
	str, err := b.js.Stream(ctx, s.st.spec.Name)
	if err != nil {
		return fmt.Errorf("stream %q: %w", s.st.spec.Name, err)
	}
	si := str.CachedInfo()

	s.mu.Lock()
	started, last, created := s.started, s.lastSeq, s.created
	s.mu.Unlock()
	cfg := jetstream.ConsumerConfig{
		Name:              consumerName("cgsub"),
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		FilterSubject:     s.filter,
		FlowControl:       true,
		IdleHeartbeat:     b.opts.heartbeat,
		InactiveThreshold: consumerInactive,
		MemoryStorage:     true,
		Replicas:          1,
	}
	recreated := false
	switch {
	case !started:
	case !created.Equal(si.Created) || si.State.LastSeq < last:
		// The stream was deleted and created again (or, in memory, lost
		// with its server): sequences started over.
		recreated = true
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	default:
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = last + 1
	}

	g := &generation{consumer: cfg.Name, done: make(chan struct{}), known: make(chan struct{})}
	release := sync.OnceFunc(func() { close(g.known) })
	defer release()
	cfg.DeliverSubject = b.nc.NewInbox()
	ns, err := b.nc.Subscribe(cfg.DeliverSubject, func(m *nats.Msg) { s.deliver(g, m) })
	if err != nil {
		return err
	}
	if err := ns.SetPendingLimits(b.opts.PendingMsgs, b.opts.PendingBytes); err != nil {
		b.log.Warn("cannot set pending limits", slog.String("subject", s.filter), slog.Any("err", err))
	}
	ns.SetClosedHandler(func(string) { close(g.done) })
	g.waitable = ns.IsValid()
	g.ns = ns

	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		_ = ns.Unsubscribe()
		release()
		g.wait()
		return nil
	}
	s.gen = g
	s.gens = append(s.gens, g)
	s.needReset = false
	s.lastActive = time.Now()
	if !started || recreated {
		s.created = si.Created
	}
	if recreated {
		// Counted here, where the old position is given up: should the
		// consumer not be created, the next generation (which cannot
		// tell any more) still delivers the marker.
		s.lastSeq = 0
		s.gapPending = true
	}
	s.mu.Unlock()
	if recreated {
		b.historyGap(s, "the stream was recreated; its sequences started over", last, 0)
	}

	var cons jetstream.PushConsumer
	err = b.createConsumer(ctx, func(ctx context.Context) (err error) {
		cons, err = b.js.CreatePushConsumer(ctx, s.st.spec.Name, cfg)
		return err
	})
	if err != nil {
		s.mu.Lock()
		if s.gen == g {
			s.gen = nil
			s.needReset = true
		}
		g.retired = true
		s.mu.Unlock()
		_ = ns.Unsubscribe()
		return fmt.Errorf("create consumer on stream %q: %w", s.st.spec.Name, err)
	}
	ci := cons.CachedInfo()

	if !started {
		s.mu.Lock()
		if !s.started {
			// DeliverNew: the consumer starts after the stream's last
			// message (unless a message arrived already).
			s.started, s.lastSeq = true, ci.Delivered.Stream
		}
		s.mu.Unlock()
		return nil
	}
	if !recreated && ci.Delivered.Stream > last {
		// The server moved the start up to the stream's first message.
		// No message of g was handed to h yet (deliveries wait for
		// known), so the marker comes first.
		s.mu.Lock()
		s.gapPending = true
		s.mu.Unlock()
		b.historyGap(s, "the stream no longer stores the messages after the last one delivered", last, ci.Delivered.Stream+1)
	}
	return nil
}

func (b *Broker) historyGap(s *histSub, why string, last, oldest uint64) {
	b.historyGaps.Add(1)
	b.log.Warn("history subscription resumed with a gap: "+why,
		slog.String("subject", s.filter), slog.Uint64("last_delivered", last), slog.Uint64("oldest", oldest))
}

// deliver handles one message of generation g: data in consumer order,
// flow control, heartbeats.
func (s *histSub) deliver(g *generation, m *nats.Msg) {
	<-g.known
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.gen != g {
		return
	}
	s.lastActive = time.Now()
	if !strings.HasPrefix(m.Reply, "$JS.ACK.") {
		s.control(g, m)
		return
	}
	meta, err := m.Metadata()
	if err != nil || meta.Consumer != g.consumer {
		return
	}
	if meta.Sequence.Consumer != g.dseq+1 {
		// Messages were lost on the way (a slow-consumer drop, a
		// connection lost mid-flight): start over from lastSeq.
		s.resetLocked()
		return
	}
	g.dseq = meta.Sequence.Consumer
	seq := meta.Sequence.Stream
	if s.started && seq <= s.lastSeq {
		return
	}
	s.started, s.lastSeq = true, seq
	ch, ok := s.b.subj.channel(m.Subject)
	if !ok {
		return
	}
	s.flushGapLocked(seq)
	// nats.go allocates Data per message, so it can be handed over.
	s.h(brokers.Message{Channel: ch, Data: m.Data, Seq: seq, Header: headerMap(m.Header), ID: m.Header.Get(msgIDHeader)})
}

// control handles a status message of the consumer.
func (s *histSub) control(g *generation, m *nats.Msg) {
	if m.Header.Get("Status") != "100" {
		if m.Header.Get("Status") != "" {
			s.resetLocked() // e.g. the consumer was deleted
		}
		return
	}
	if m.Reply != "" {
		// Flow control: everything sent before it has been handled.
		_ = m.Respond(nil)
		return
	}
	// Idle heartbeat.
	if fc := m.Header.Get("Nats-Consumer-Stalled"); fc != "" {
		_ = s.b.nc.Publish(fc, nil)
	}
	if last, err := strconv.ParseUint(m.Header.Get("Nats-Last-Consumer"), 10, 64); err == nil && last > g.dseq {
		s.resetLocked() // the consumer sent messages that never arrived
		return
	}
	// The generation is in order: a pending gap is told now rather than
	// with the next message, which may take long.
	s.flushGapLocked(0)
}

// flushGapLocked hands h the pending Gap marker, if any, with seq (the
// message about to be delivered, or 0). s.mu is held.
func (s *histSub) flushGapLocked(seq uint64) {
	if !s.gapPending {
		return
	}
	s.gapPending = false
	s.h(brokers.Message{Gap: true, Seq: seq})
}

// resetLocked retires the current generation and asks the supervisor for
// a new one. s.mu is held.
func (s *histSub) resetLocked() {
	s.gen = nil
	s.needReset = true
	s.b.sup.kickNow()
}

func (s *histSub) markReset() {
	s.mu.Lock()
	s.resetLocked()
	s.mu.Unlock()
}

// stop ends delivery: after it returns h is not running and is not called
// again. It returns the generations to wait for and the current one,
// whose consumer still exists.
func (s *histSub) stop() (gens []*generation, cur *generation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	gens, cur = s.gens, s.gen
	s.gens, s.gen = nil, nil
	return gens, cur
}

// Unsubscribe implements brokers.Subscription. It returns once the
// delivery goroutines have exited; the consumer is deleted in the
// background (by the supervisor). It always returns nil.
func (s *histSub) Unsubscribe() error {
	s.once.Do(func() {
		gens, cur := s.stop()
		for _, g := range gens {
			_ = g.ns.Unsubscribe()
		}
		s.b.mu.Lock()
		delete(s.b.hsubs, s)
		if cur != nil && !s.b.closed {
			s.b.deletes = append(s.b.deletes, consumerRef{stream: s.st.spec.Name, name: cur.consumer})
		}
		s.b.mu.Unlock()
		s.b.sup.kickNow()
		s.waitGens = gens
	})
	for _, g := range s.waitGens {
		g.wait()
	}
	return nil
}

// ---------------------------------------------------------------------
// The supervisor: one goroutine per Broker with streams.

// supervisor ensures the streams after every (re)connect, recreates the
// consumers of history subscriptions that failed or went silent, deletes
// the consumers of ended subscriptions, and reports StateConnected once
// all of that is in place.
type supervisor struct {
	kick       chan struct{} // capacity 1
	stopCh     chan struct{}
	done       chan struct{}
	ctx        context.Context // canceled by Close
	cancel     context.CancelFunc
	started    bool
	needEnsure atomic.Bool // streams must be ensured
	resetAll   atomic.Bool // every consumer must be recreated
}

func (b *Broker) initSupervisor() {
	b.sup.kick = make(chan struct{}, 1)
	b.sup.stopCh = make(chan struct{})
	b.sup.done = make(chan struct{})
	b.sup.ctx, b.sup.cancel = context.WithCancel(context.Background())
}

func (b *Broker) startSupervisor() {
	b.sup.started = true
	go b.supervise()
}

func (b *Broker) stopSupervisor() {
	if b.sup.cancel == nil {
		return
	}
	b.sup.cancel()
	if b.sup.started {
		close(b.sup.stopCh)
		<-b.sup.done
	}
}

// kickNow asks for a supervisor pass soon; it never blocks.
func (sp *supervisor) kickNow() {
	select {
	case sp.kick <- struct{}{}:
	default:
	}
}

// connected is called (under stateMu) on every connect and reconnect.
func (sp *supervisor) connected() {
	sp.needEnsure.Store(true)
	sp.kickNow()
}

func (b *Broker) currentEpoch() uint64 {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	return b.epoch
}

func (b *Broker) supervise() {
	defer close(b.sup.done)
	wait := superviseEvery
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-b.sup.stopCh:
			return
		case <-b.sup.kick:
		case <-t.C:
		}
		if b.superviseOnce() {
			wait = superviseEvery
		} else {
			wait = min(2*wait, superviseMaxBackoff)
		}
		t.Reset(wait)
	}
}

// superviseOnce does one pass and reports whether everything is in place.
func (b *Broker) superviseOnce() bool {
	ctx := b.sup.ctx
	b.mu.Lock()
	subs := make([]*histSub, 0, len(b.hsubs))
	for s := range b.hsubs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	if !b.nc.IsConnected() || ctx.Err() != nil {
		// The queued deletions are dropped: the server removes those
		// consumers after consumerInactive.
		b.takeDeletes()
		return true
	}
	epoch := b.currentEpoch()
	// Deletions come last: what delivers comes first.
	defer func() { b.deleteConsumers(ctx, b.takeDeletes()) }()
	if b.sup.needEnsure.Swap(false) {
		cctx, cancel := context.WithTimeout(ctx, b.opts.ConfirmTimeout)
		err := b.ensureStreams(cctx)
		cancel()
		if err != nil {
			b.sup.needEnsure.Store(true)
			if ctx.Err() == nil {
				b.log.Error("cannot ensure streams; history is unavailable", slog.Any("err", err))
			}
			return false
		}
	}
	resetAll := b.sup.resetAll.Swap(false)
	ok := true
	now := time.Now()
	for _, s := range subs {
		if !s.wantsReset(now, resetAll) {
			continue
		}
		if !s.opMu.TryLock() {
			ok = false // Subscribe is creating it; check again soon
			continue
		}
		err := b.resetSub(ctx, s)
		s.opMu.Unlock()
		if err != nil {
			ok = false
			if ctx.Err() == nil {
				b.log.Warn("cannot recreate history consumer", slog.String("subject", s.filter), slog.Any("err", err))
			}
			if !b.nc.IsConnected() || errors.Is(err, context.DeadlineExceeded) {
				// The server is not answering: the others would time out
				// too. Retry them all after a backoff.
				break
			}
		}
	}
	if ok {
		b.reportReady(b.nc, epoch)
	}
	return ok
}

// takeDeletes takes the queued deletions: the consumers of ended
// subscriptions and retired generations.
func (b *Broker) takeDeletes() []consumerRef {
	b.mu.Lock()
	defer b.mu.Unlock()
	deletes := b.deletes
	b.deletes = nil
	return deletes
}

// wantsReset reports whether s needs a new generation: asked for, all
// asked for, or the current one silent for three heartbeats.
func (s *histSub) wantsReset(now time.Time, all bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	if all || (s.gen != nil && now.Sub(s.lastActive) > 3*s.b.opts.heartbeat) {
		s.gen = nil
		s.needReset = true
	}
	return s.needReset
}

// resetSub retires s's old generations and starts a new one.
func (b *Broker) resetSub(ctx context.Context, s *histSub) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	var old []*generation
	live := s.gens[:0]
	for _, g := range s.gens {
		if !g.retired && g != s.gen {
			g.retired = true
			old = append(old, g)
		}
		select {
		case <-g.done:
			// Exited; nothing to wait for.
		default:
			live = append(live, g)
		}
	}
	clear(s.gens[len(live):])
	s.gens = live
	s.mu.Unlock()
	for _, g := range old {
		_ = g.ns.Unsubscribe()
	}
	cctx, cancel := context.WithTimeout(ctx, b.opts.ConfirmTimeout)
	defer cancel()
	err := b.retryUnanswered(cctx, func() error { return b.startGeneration(cctx, s) })
	// The old consumers are deleted after the new one exists: one that
	// sat on a lost server would hold the new one up for the whole wait.
	b.mu.Lock()
	if !b.closed {
		for _, g := range old {
			b.deletes = append(b.deletes, consumerRef{stream: s.st.spec.Name, name: g.consumer})
		}
	}
	b.mu.Unlock()
	return err
}

// reportReady makes the Broker Ready and reports StateConnected, unless
// the connection changed since epoch (when the work that made it ready
// began).
func (b *Broker) reportReady(nc *nats.Conn, epoch uint64) {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	if b.closing.Load() || b.epoch != epoch || !nc.IsConnected() {
		return
	}
	b.ready.Store(true)
	b.report(brokers.StateConnected)
}

// ---------------------------------------------------------------------
// Replay.

// Replay implements brokers.History with an ephemeral pull consumer
// (filtered on pattern, starting after `after`), fetched in batches of
// messages known to be pending, until the last message stored when Replay
// was called. The consumer is deleted before Replay returns.
//
// A gap is detected against the stream's first sequence, which is all
// JetStream tells: a stream's sequence numbers are shared by all its
// channels, so a pattern's own messages are not numbered contiguously. So
// Result.Gap is set when the stream no longer holds some position after
// `after` that the replay had to read — whether or not the removed
// messages were on pattern. A reported gap may therefore be conservative
// (nothing on pattern was actually lost), but a loss is never silent.
// This also holds for messages removed while the replay runs. An after
// beyond the stream's last sequence (a cursor from before the stream was
// recreated) is a gap too, and the replay starts from the oldest
// message; a cursor from before the stream was recreated that is not
// beyond its end cannot be told apart (see StreamSpec.Memory). after == 0
// means from the oldest message, never a gap.
//
// Replay needs the connection: while disconnected it fails with an error
// wrapping brokers.ErrUnavailable. It returns ctx's error when ctx ends;
// h is not called after Replay returned.
func (b *Broker) Replay(ctx context.Context, pattern string, after uint64, h brokers.Handler) (brokers.ReplayResult, error) {
	r, err := b.newReplay(ctx, pattern, h)
	if err != nil {
		return brokers.ReplayResult{}, err
	}
	r.after = after
	defer r.deleteConsumer(ctx)
	res, err := r.run(ctx)
	if err != nil {
		return res, b.connErr(ctx, "replay "+pattern, err)
	}
	return res, nil
}

// newReplay checks the arguments of a Replay or ReplayRecent and returns
// the replay's state.
func (b *Broker) newReplay(ctx context.Context, pattern string, h brokers.Handler) (*replay, error) {
	if h == nil {
		return nil, errors.New("natsbroker: replay: nil handler")
	}
	if b.closing.Load() {
		return nil, fmt.Errorf("natsbroker: replay: %w", brokers.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsbroker: replay: %w", err)
	}
	if err := checkPattern(pattern); err != nil {
		return nil, err
	}
	st := b.streamFor(pattern)
	if st == nil {
		return nil, fmt.Errorf("%w: %q", ErrNoHistory, pattern)
	}
	if !b.nc.IsConnected() {
		return nil, fmt.Errorf("natsbroker: replay %q: %w", pattern, brokers.ErrUnavailable)
	}
	return &replay{b: b, st: st, filter: b.subj.subject(pattern), h: h}, nil
}

// replay is the state of one Replay call.
type replay struct {
	b      *Broker
	st     *stream
	filter string
	after  uint64
	h      brokers.Handler
	// For ReplayRecent (recent.go): perSubject reads the last message of
	// each subject (DeliverLastPerSubject) instead of from after; stop,
	// when set, ends the read there rather than at the stream's end;
	// recent turns off the gap checks (a recent read skips positions by
	// design).
	perSubject bool
	stop       uint64
	recent     bool

	res     brokers.ReplayResult
	end     uint64 // the stream's last sequence when Replay was called
	last    uint64 // the last sequence handed to h, or where to start after
	cons    jetstream.Consumer
	name    string
	dseq    uint64 // consumer sequence of the last message fetched
	pending uint64 // messages on the filter after the last one fetched
	done    bool
}

func (r *replay) run(ctx context.Context) (brokers.ReplayResult, error) {
	si, err := r.streamState(ctx)
	if err != nil {
		return r.res, err
	}
	r.end = si.LastSeq
	if r.stop != 0 {
		r.end = min(r.end, r.stop)
	}
	oldest := si.FirstSeq
	if si.Msgs == 0 || oldest == 0 {
		oldest = si.LastSeq + 1
	}
	r.last = r.after
	if r.after > r.end || (r.after > 0 && r.after+1 < oldest) {
		r.res.Gap, r.res.Oldest = true, oldest
		r.last = oldest - 1
	}
	if r.last >= r.end {
		return r.res, nil
	}
	failures := 0
	for !r.done {
		if err := ctx.Err(); err != nil {
			return r.res, err
		}
		if r.cons == nil {
			if err := r.createConsumer(ctx); err != nil {
				return r.res, err
			}
			if r.pending == 0 {
				// Nothing (left) on the filter: make sure nothing was
				// skipped on the way to the end.
				r.done = true
				if err := r.checkGap(ctx, r.last, true); err != nil {
					return r.res, err
				}
				break
			}
		}
		progressed, err := r.fetch(ctx)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return r.res, cerr
			}
			if !r.b.nc.IsConnected() {
				return r.res, fmt.Errorf("%w: %w", brokers.ErrUnavailable, err)
			}
			failures++
			if failures >= replayMaxFailures {
				return r.res, err
			}
			// Start over with a new consumer after the last message
			// delivered (the server may also have removed an idle one).
			r.deleteConsumer(ctx)
			continue
		}
		if progressed {
			failures = 0
		}
	}
	return r.res, nil
}

func (r *replay) streamState(ctx context.Context) (jetstream.StreamState, error) {
	cctx, cancel := context.WithTimeout(ctx, r.b.opts.ConfirmTimeout)
	defer cancel()
	str, err := r.b.js.Stream(cctx, r.st.spec.Name)
	if err != nil {
		return jetstream.StreamState{}, fmt.Errorf("stream %q: %w", r.st.spec.Name, err)
	}
	return str.CachedInfo().State, nil
}

// createConsumer creates the replay's consumer, trying again with a new
// one when the server does not answer (see consumerAnswerWait).
func (r *replay) createConsumer(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, r.b.opts.ConfirmTimeout)
	defer cancel()
	return r.b.retryUnanswered(cctx, func() error { return r.createConsumerOnce(cctx) })
}

func (r *replay) createConsumerOnce(ctx context.Context) error {
	name := consumerName("cgreplay")
	cfg := jetstream.ConsumerConfig{
		Name:              name,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       r.last + 1,
		FilterSubject:     r.filter,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: consumerInactive,
		MemoryStorage:     true,
		Replicas:          1,
	}
	if r.perSubject {
		// Again from the first subject after a failure: what was
		// handed to h already is skipped by position.
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverLastPerSubjectPolicy, 0
	}
	var cons jetstream.Consumer
	err := r.b.createConsumer(ctx, func(ctx context.Context) (err error) {
		cons, err = r.b.js.CreateConsumer(ctx, r.st.spec.Name, cfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("create consumer on stream %q: %w", r.st.spec.Name, err)
	}
	r.cons, r.name, r.dseq = cons, name, 0
	r.pending = cons.CachedInfo().NumPending
	return nil
}

func (r *replay) deleteConsumer(ctx context.Context) {
	if r.cons == nil {
		return
	}
	// Also after ctx ended: the consumer must not outlive Replay.
	r.b.deleteConsumer(context.WithoutCancel(ctx), consumerRef{stream: r.st.spec.Name, name: r.name})
	r.cons = nil
}

// fetch fetches the next batch and hands its messages to h. It reports
// whether any message was fetched; an error means the consumer must be
// recreated (or ctx ended).
func (r *replay) fetch(ctx context.Context) (bool, error) {
	n := int(min(r.pending, uint64(r.b.opts.replayBatch)))
	fctx, cancel := context.WithTimeout(ctx, replayFetchWait)
	defer cancel()
	batch, err := r.cons.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		return false, err
	}
	hole, holeAt := false, uint64(0)
	got := 0
	var broken error
	// Read the channel to its end even when stopping early: it is closed
	// once the fetch's goroutine has finished.
	for msg := range batch.Messages() {
		if r.done || broken != nil {
			continue
		}
		meta, err := msg.Metadata()
		if err != nil || meta.Consumer != r.name {
			continue
		}
		if meta.Sequence.Consumer != r.dseq+1 {
			broken = errors.New("replay consumer skipped messages")
			continue
		}
		r.dseq = meta.Sequence.Consumer
		got++
		seq := meta.Sequence.Stream
		if seq > r.end {
			r.done = true
			break
		}
		if seq <= r.last {
			continue
		}
		if !hole && seq > r.last+1 && r.last > 0 {
			hole, holeAt = true, r.last
		}
		if ctx.Err() != nil {
			broken = ctx.Err()
			continue
		}
		ch, ok := r.b.subj.channel(msg.Subject())
		if ok {
			r.h(brokers.Message{Channel: ch, Data: msg.Data(), Seq: seq, Header: headerMap(msg.Headers()), ID: msg.Headers().Get(msgIDHeader)})
		}
		r.last, r.res.Last = seq, seq
		r.pending = meta.NumPending
		if r.pending == 0 {
			r.done = true
		}
	}
	if r.done {
		// Drain what a break left behind.
		for range batch.Messages() {
		}
	}
	if broken == nil {
		broken = batch.Error()
	}
	if !hole && r.done && r.last < r.end && r.last > 0 {
		// Positions after the last message up to the end were not read
		// as messages on the filter.
		hole, holeAt = true, r.last
	}
	if hole {
		if err := r.checkGap(ctx, holeAt, false); err != nil {
			return got > 0, err
		}
	}
	if broken != nil {
		return got > 0, broken
	}
	if !r.done && got < n {
		// The batch ended early: refresh what is pending.
		ictx, icancel := context.WithTimeout(ctx, r.b.opts.ConfirmTimeout)
		info, err := r.cons.Info(ictx)
		icancel()
		if err != nil {
			return got > 0, err
		}
		r.pending = info.NumPending
		if r.pending == 0 {
			r.done = true
			if err := r.checkGap(ctx, r.last, true); err != nil {
				return got > 0, err
			}
		} else if got == 0 {
			return false, errors.New("replay fetch returned nothing while messages are pending")
		}
	}
	return got > 0, nil
}

// checkGap is called when the replay passed over positions after `from`
// without reading messages there: it sets the result's gap if the stream
// has removed any of them, since they may have been messages on the
// filter. With toEnd, the positions run to the end of the replay.
func (r *replay) checkGap(ctx context.Context, from uint64, toEnd bool) error {
	if r.recent || from == 0 || (toEnd && from >= r.end) {
		// From the oldest message (after == 0): nothing can be missing
		// before it.
		return nil
	}
	st, err := r.streamState(ctx)
	if err != nil {
		return err
	}
	first := st.FirstSeq
	if st.Msgs == 0 || first == 0 {
		first = st.LastSeq + 1
	}
	if first > from+1 {
		r.res.Gap = true
		r.res.Oldest = max(r.res.Oldest, first)
	}
	return nil
}
