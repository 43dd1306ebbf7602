package gateway

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// tryTransport is a fakeTransport that the write workers write themselves
// (a TryWriter). A try can be made to stall (a long system call: the
// worker is busy, not waiting for the client) or to leave everything for
// Flush, which then waits until released (a client that does not read).
type tryTransport struct {
	*fakeTransport

	mu        sync.Mutex
	stall     chan struct{} // the next try waits for it
	stalled   chan struct{} // a stalled try announces itself here
	block     bool          // the next try takes nothing
	flushGate chan struct{} // Flush waits for it (or Close)
	rest      []Packet      // what a blocked try left, copied
	tryMsgs   []int         // msg packets per try that carried any
	tries     int
	onTry     func() // called at each try, outside mu
}

var _ TryWriter = (*tryTransport)(nil)

func newTryTransport() *tryTransport {
	return &tryTransport{fakeTransport: newFakeTransport(0), stalled: make(chan struct{}, 1)}
}

func (t *tryTransport) TryWritePackets(pkts []Packet, _ int64) (int, error) {
	msgs := 0
	for _, p := range pkts {
		if p.Type() == TypeMsg {
			msgs++
		}
	}
	t.mu.Lock()
	t.tries++
	if msgs > 0 {
		t.tryMsgs = append(t.tryMsgs, msgs)
	}
	stall, block, onTry := t.stall, t.block, t.onTry
	t.stall, t.block = nil, false
	if block {
		t.rest = slices.Clone(pkts) // the bodies are immutable; the slice is not ours
	}
	t.mu.Unlock()
	if onTry != nil {
		onTry()
	}
	if stall != nil {
		t.stalled <- struct{}{}
		<-stall
	}
	if block {
		return 1, ErrWriteBlocked
	}
	return t.WritePackets(pkts)
}

func (t *tryTransport) Flush() (int, error) {
	t.mu.Lock()
	gate, rest := t.flushGate, t.rest
	t.rest = nil
	t.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-t.closed:
			return 0, errTransportClosed
		}
	}
	return t.WritePackets(rest)
}

// stallNext makes the next try wait until the returned release.
func (t *tryTransport) stallNext() (release func()) {
	gate := make(chan struct{})
	t.mu.Lock()
	t.stall = gate
	t.mu.Unlock()
	return sync.OnceFunc(func() { close(gate) })
}

// blockNext makes the next try leave everything to a Flush that waits
// until the returned release.
func (t *tryTransport) blockNext() (release func()) {
	gate := make(chan struct{})
	t.mu.Lock()
	t.block, t.flushGate = true, gate
	t.mu.Unlock()
	return sync.OnceFunc(func() { close(gate) })
}

func (t *tryTransport) counts() (tries int, msgsPerTry []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tries, slices.Clone(t.tryMsgs)
}

// openTry opens a session on a tryTransport and reads its hello.
func openTry(t *testing.T, g *testGateway) (*Session, *tryTransport) {
	t.Helper()
	s, err := g.Open(OpenOptions{Transport: "fake"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	tr := newTryTransport()
	if err := s.Attach(tr, false); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	nextType(t, tr.fakeTransport, TypeHello)
	return s, tr
}

// openTrySubscribed is openTry, then a subscription to t.x.
func openTrySubscribed(t *testing.T, g *testGateway) (*Session, *tryTransport) {
	t.Helper()
	s, tr := openTry(t, g)
	subscribe(t, s, tr.fakeTransport, 1, "t.x")
	return s, tr
}

// oneWorkerPair is a gateway with one write worker and two sessions on
// it, a and b, both subscribed to t.x; it returns a and both downstreams.
func oneWorkerPair(t *testing.T) (*testGateway, *Session, *tryTransport, *tryTransport) {
	t.Helper()
	g := newTestGateway(t, func(c *Config) { c.Writers = 1 })
	a, ta := openTrySubscribed(t, g)
	_, tb := openTrySubscribed(t, g)
	return g, a, ta, tb
}

func publishTo(t *testing.T, b *fakeBroker, channel string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if err := b.Publish(context.Background(), brokers.Message{Channel: channel, Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// expectData reads msg packets and checks their payloads are from..to.
func expectData(t *testing.T, tr *fakeTransport, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if w := next(t, tr); w.T != TypeMsg || string(w.Data) != strconv.Itoa(i) {
			t.Fatalf("want msg %d, got %s", i, w)
		}
	}
}

// While a worker is busy, the broker goes on handing messages over (a
// publish does not wait behind the fan-out of earlier ones), and once the
// worker is free each session gets everything that arrived meanwhile in
// one write.
func TestWorkerCoalescesWhileBehind(t *testing.T) {
	g, _, ta, tb := oneWorkerPair(t)

	release := ta.stallNext()
	defer release()
	publishTo(t, g.b, "t.x", 1, 1)
	select {
	case <-ta.stalled:
	case <-time.After(waitTimeout):
		t.Fatal("the worker did not write a's message")
	}
	publishTo(t, g.b, "t.x", 2, 5)
	waitFor(t, "the broker to hand every message over while the worker is busy", g.b.Drained)
	release()

	expectData(t, ta.fakeTransport, 1, 5)
	expectData(t, tb.fakeTransport, 1, 5)
	for name, tr := range map[string]*tryTransport{"a": ta, "b": tb} {
		if _, per := tr.counts(); !slices.Equal(per, []int{1, 4}) {
			t.Errorf("%s: messages per write %v, want [1 4]", name, per)
		}
	}
}

// A session whose write would wait leaves the worker: the others on the
// same worker go on getting their messages, and the slow one gets all of
// its own, in order, once its client reads again.
func TestBlockedSessionLeavesWorker(t *testing.T) {
	g, _, ta, tb := oneWorkerPair(t)
	triesBefore, _ := ta.counts()

	release := ta.blockNext()
	defer release()
	publishTo(t, g.b, "t.x", 1, 10)
	expectData(t, tb.fakeTransport, 1, 10)
	// a's writer is its Flush, still waiting: nothing else was tried on
	// the worker for a meanwhile.
	if tries, _ := ta.counts(); tries != triesBefore+1 {
		t.Fatalf("a was tried %d times while its write was blocked, want 1", tries-triesBefore)
	}
	release()
	expectData(t, ta.fakeTransport, 1, 10)

	// Back on its worker: the next message is tried again.
	publishTo(t, g.b, "t.x", 11, 11)
	expectData(t, ta.fakeTransport, 11, 11)
	expectData(t, tb.fakeTransport, 11, 11)
	if tries, _ := ta.counts(); tries <= triesBefore+1 {
		t.Fatalf("a was not written by its worker again (%d tries)", tries-triesBefore)
	}
}

// One channel's subscribers are spread over every worker, and each
// session still gets every message in order.
func TestFanoutSpreadsOverWorkers(t *testing.T) {
	const workers, sessions, msgs = 3, 9, 200
	g := newTestGateway(t, func(c *Config) { c.Writers = workers })
	trs := make([]*tryTransport, sessions)
	for i := range trs {
		_, trs[i] = openTrySubscribed(t, g)
	}
	g.hub.mu.Lock()
	e := g.hub.entries["t.x"]
	g.hub.mu.Unlock()
	e.mu.RLock()
	for shard, ss := range e.shards {
		if len(ss) != sessions/workers {
			t.Errorf("shard %d holds %d sessions, want %d", shard, len(ss), sessions/workers)
		}
	}
	e.mu.RUnlock()
	publishTo(t, g.b, "t.x", 1, msgs)
	for _, tr := range trs {
		expectData(t, tr.fakeTransport, 1, msgs)
	}
}

// A session that always has more to write (a byte stream fed as fast as
// it is written) does not keep its worker from the others: after a few
// writes it goes to the back of the worker's queue.
func TestWorkerTakesTurns(t *testing.T) {
	g, a, ta, tb := oneWorkerPair(t)

	const feed = 500
	var fed atomic.Int64
	ta.mu.Lock()
	ta.onTry = func() { // each write of a's brings it one more packet
		if fed.Load() < feed {
			fed.Add(1)
			a.push(GapBody("t.x", "more", ""))
		}
	}
	triesBefore := ta.tries
	ta.mu.Unlock()
	aTriesAtB := make(chan int, 1)
	tb.mu.Lock()
	tb.onTry = func() { // b's next write is the message's: how far is a?
		ta.mu.Lock()
		n := ta.tries
		ta.mu.Unlock()
		select {
		case aTriesAtB <- n - triesBefore:
		default:
		}
	}
	tb.mu.Unlock()
	publishTo(t, g.b, "t.x", 1, 1)
	expectData(t, tb.fakeTransport, 1, 1)
	if n := <-aTriesAtB; n > 20 { // a handful, not the 500 it was fed
		t.Fatalf("b waited for %d of a's writes", n)
	}
	waitFor(t, "a to be fed and written out", func() bool { return fed.Load() == feed })
}

// A message that arrives while a worker is in the middle of a fan-out
// batch is queued on the worker's sessions at its next yield, not after
// the batch: the sessions the batch has not written yet take it in the
// same write as the older message, instead of every session being
// written twice, the last ones a whole fan-out late for the new message.
func TestWorkerTakesNewFanoutsMidBatch(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.Writers = 1 })
	const sessions = 2*yieldEvery + 1 // a yield falls between the first write and the last
	trs := make([]*tryTransport, sessions)
	for i := range trs {
		_, trs[i] = openTrySubscribed(t, g)
	}
	release := trs[0].stallNext() // the batch's first write
	defer release()
	publishTo(t, g.b, "t.x", 1, 1)
	select {
	case <-trs[0].stalled:
	case <-time.After(waitTimeout):
		t.Fatal("the worker did not begin the fan-out")
	}
	publishTo(t, g.b, "t.x", 2, 2)
	waitFor(t, "the broker to hand message 2 over", g.b.Drained)
	release()

	for _, tr := range trs {
		expectData(t, tr.fakeTransport, 1, 2)
	}
	if _, per := trs[0].counts(); !slices.Equal(per, []int{1, 1}) {
		t.Errorf("first session: messages per write %v, want [1 1] (written before message 2 came)", per)
	}
	if _, per := trs[sessions-1].counts(); !slices.Equal(per, []int{2}) {
		t.Errorf("last session: messages per write %v, want [2] (both in the batch's write)", per)
	}
}

// Many messages to many sessions on one worker, published as fast as the
// broker hands them over: whatever the worker takes early (in the middle
// of a batch) or late, every session gets every message once, in order.
func TestWorkerKeepsOrderUnderLoad(t *testing.T) {
	const sessions, msgs = 3 * yieldEvery, 300
	g := newTestGateway(t, func(c *Config) { c.Writers = 1 })
	trs := make([]*tryTransport, sessions)
	for i := range trs {
		_, trs[i] = openTrySubscribed(t, g)
	}
	publishTo(t, g.b, "t.x", 1, msgs)
	for _, tr := range trs {
		expectData(t, tr.fakeTransport, 1, msgs)
	}
}
