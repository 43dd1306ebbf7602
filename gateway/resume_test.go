package gateway

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// historyBroker is a fakeBroker that stores the channels under "h.>" like a
// JetStream stream: each gets the next position, Subscribe delivers it as
// Seq, and Replay reads the store.
type historyBroker struct {
	*fakeBroker

	mu     sync.Mutex
	stored []brokers.Message // oldest first; trim drops from the front
	last   uint64
	// duringReplay, when set, runs once in the middle of the next Replay.
	duringReplay func()
	replays      int // Replay calls so far
	// emptyGap makes Replay on an empty store report a gap with oldest 1
	// (a history that was reset), as the real brokers do.
	emptyGap bool
}

var _ brokers.History = (*historyBroker)(nil)

func (b *historyBroker) HasHistory(pattern string) bool { return brokers.PatternCovers("h.>", pattern) }

func (b *historyBroker) Publish(ctx context.Context, msg brokers.Message) error {
	if !brokers.MatchChannel("h.>", msg.Channel) {
		return b.fakeBroker.Publish(ctx, msg)
	}
	// Store and deliver in one critical section, as a stream's sequence
	// orders both.
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last++
	msg.Seq = b.last
	b.stored = append(b.stored, msg)
	return b.fakeBroker.Publish(ctx, msg)
}

// trim keeps only positions from oldest on (retention).
func (b *historyBroker) trim(oldest uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.stored) > 0 && b.stored[0].Seq < oldest {
		b.stored = b.stored[1:]
	}
}

// gap hands a Gap marker to every subscription on stored channels, in
// order with the messages, as a real broker does when its live consumer
// skipped messages; Seq is the next position.
func (b *historyBroker) gap() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fakeBroker.mu.Lock()
	defer b.fakeBroker.mu.Unlock()
	for s := range b.fakeBroker.subs {
		if brokers.PatternCovers("h.>", s.pattern) {
			s.enqueue(brokers.Message{Gap: true, Seq: b.last + 1})
		}
	}
}

func (b *historyBroker) Replay(ctx context.Context, pattern string, after uint64, h brokers.Handler) (brokers.ReplayResult, error) {
	b.mu.Lock()
	snapshot := append([]brokers.Message(nil), b.stored...)
	last := b.last
	hook := b.duringReplay
	b.duringReplay = nil
	b.replays++
	b.mu.Unlock()

	var res brokers.ReplayResult
	if len(snapshot) == 0 && b.emptyGap && after > 0 {
		return brokers.ReplayResult{Gap: true, Oldest: 1}, nil
	}
	from := after + 1
	if len(snapshot) > 0 && (from < snapshot[0].Seq || after > last) {
		res.Gap, res.Oldest = true, snapshot[0].Seq
		from = snapshot[0].Seq
	}
	for i, m := range snapshot {
		if i == len(snapshot)/2 && hook != nil {
			hook()
		}
		if m.Seq < from || !brokers.MatchChannel(pattern, m.Channel) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		h(m)
		res.Last = m.Seq
	}
	return res, nil
}

func newHistoryGateway(t *testing.T, queueBytes int) (*Gateway, *historyBroker) {
	t.Helper()
	b := &historyBroker{fakeBroker: newFakeBroker()}
	rules := append(Rules{{Pattern: "h.>", Subscribe: Anyone, Publish: Anyone}}, testRules()...)
	g, err := New(Config{NodeID: "n1", Rules: rules, QueueBytes: queueBytes, Logger: slog.New(slog.DiscardHandler)}, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := shutdownWithin(g, waitTimeout); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		waitFor(t, "every broker subscription to be dropped", func() bool { return b.Subs() == 0 })
		_ = b.Close()
	})
	return g, b
}

func openOn(t *testing.T, g *Gateway) (*Session, *fakeTransport) {
	t.Helper()
	return openSession(t, &testGateway{Gateway: g}, false)
}

func publishN(t *testing.T, b brokers.Broker, ch string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if err := b.Publish(context.Background(), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// expectMsgs reads msg packets (skipping nothing else) and checks their
// payloads and cursors are exactly from..to.
func expectMsgs(t *testing.T, tr *fakeTransport, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		w := next(t, tr)
		if w.T != TypeMsg || string(w.Data) != strconv.Itoa(i) || w.Cur != strconv.Itoa(i) {
			t.Fatalf("want msg %d (cur %d), got %s", i, i, w)
		}
	}
}

func expectSubOK(t *testing.T, tr *fakeTransport, id int64, history bool) {
	t.Helper()
	w := next(t, tr)
	if w.T != TypeOK || w.ID != id || w.History == nil || *w.History != history {
		t.Fatalf("want ok id %d history %v, got %s", id, history, w)
	}
}

func TestResumeReplaysAfterCursorThenLive(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 10)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"3"}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 4, 10)
	publishN(t, b, "h.a", 11, 12)
	expectMsgs(t, tr, 11, 12)
	noPacket(t, tr)
}

func TestSubscribeWithoutCursorIsLiveWithCursors(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 5)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.*"}`)
	expectSubOK(t, tr, 1, true)
	noPacket(t, tr)
	publishN(t, b, "h.a", 6, 7)
	expectMsgs(t, tr, 6, 7)
}

// Messages published while the replay runs are delivered live to the
// session's subscription but dropped (it is replaying); the next round of
// the replay fetches them, so the client sees every position once.
func TestResumeCatchesUpWithMessagesDuringReplay(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 10)
	var wg sync.WaitGroup
	defer wg.Wait()
	b.duringReplay = func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 11; i <= 20; i++ {
				if err := b.Publish(context.Background(), brokers.Message{Channel: "h.a", Data: []byte(strconv.Itoa(i))}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"2"}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 3, 20)
	publishN(t, b, "h.a", 21, 21)
	expectMsgs(t, tr, 21, 21)
	noPacket(t, tr)
}

// Live messages that reach the session while a replay round runs are
// queued after it: one round suffices, however many arrived meanwhile.
func TestResumeJoinsLiveAfterOneRound(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 10)
	var s *Session
	b.duringReplay = func() {
		publishN(t, b, "h.a", 11, 20)
		waitFor(t, "the live messages to reach the replaying session", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.subs.get("h.a").liveSeen == 20
		})
	}
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"2"}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 3, 20)
	publishN(t, b, "h.a", 21, 21)
	expectMsgs(t, tr, 21, 21)
	noPacket(t, tr)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.replays != 1 {
		t.Errorf("%d replay rounds, want 1", b.replays)
	}
}

func TestResumeGapWhenHistoryDoesNotReachBack(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 10)
	b.trim(8)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"3"}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 8, 10)
	w := next(t, tr)
	if w.T != TypeGap || w.Ch != "h.a" || w.Oldest != "8" {
		t.Fatalf("want gap with oldest 8, got %s", w)
	}
}

// A cursor beyond the end of history (the stream was reset) restarts from
// the oldest stored message instead of hiding everything up to the cursor.
func TestResumeFromFutureCursorRestartsAtOldest(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 3)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"100"}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 1, 3)
	if w := next(t, tr); w.T != TypeGap || w.Oldest != "1" {
		t.Fatalf("want gap, got %s", w)
	}
	publishN(t, b, "h.a", 4, 4)
	expectMsgs(t, tr, 4, 4)
}

// A cursor from a history that was reset and holds nothing yet must not
// hide the new, smaller positions.
func TestResumeFromFutureCursorOnEmptyHistory(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	b.emptyGap = true
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"100"}`)
	expectSubOK(t, tr, 1, true)
	if w := next(t, tr); w.T != TypeGap {
		t.Fatalf("want gap, got %s", w)
	}
	publishN(t, b, "h.a", 1, 2)
	expectMsgs(t, tr, 1, 2)
}

func TestResumeBadCursorAndNoHistory(t *testing.T) {
	g, _ := newHistoryGateway(t, 0)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"abc"}`)
	expectErr(t, tr, 1, 400, "bad cursor")
	send(s, `{"op":"sub","id":2,"ch":"t.a","cursor":"5"}`)
	expectSubOK(t, tr, 2, false)
	if w := next(t, tr); w.T != TypeGap || w.Ch != "t.a" {
		t.Fatalf("want gap for a channel without history, got %s", w)
	}
}

// A replay into a small queue waits for the client instead of closing the
// session as a slow consumer.
func TestReplayIsThrottledBySlowClient(t *testing.T) {
	g, b := newHistoryGateway(t, 4096)
	publishN(t, b, "h.a", 1, 500)
	s, tr := openOn(t, g)
	release := tr.Block(false)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"0"}`)
	time.Sleep(quiet)
	release()
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 1, 500)
	select {
	case <-s.Done():
		t.Fatalf("session ended: %v", s.Reason())
	default:
	}
}

// openHistoryAndPlain opens a session subscribed to h.a (with history,
// id 1) and t.a (without, id 2), and reads both answers.
func openHistoryAndPlain(t *testing.T, g *Gateway) (*Session, *fakeTransport) {
	t.Helper()
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a"}`)
	expectSubOK(t, tr, 1, true)
	send(s, `{"op":"sub","id":2,"ch":"t.a"}`)
	expectSubOK(t, tr, 2, false)
	return s, tr
}

func TestOutageGapOnlyOnChannelsWithoutHistory(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	_, tr := openHistoryAndPlain(t, g)
	g.BrokerState(brokers.StateDisconnected)
	g.BrokerState(brokers.StateConnected)
	w := next(t, tr)
	if w.T != TypeGap || w.Ch != "t.a" {
		t.Fatalf("want gap for t.a, got %s", w)
	}
	noPacket(t, tr)
	publishN(t, b, "h.a", 1, 1)
	expectMsgs(t, tr, 1, 1)
}

// marker delivers a Gap marker on pattern's subscription, as the NATS
// broker does for each plain subscription when it reconnects.
func (b *historyBroker) marker(pattern string) {
	b.fakeBroker.mu.Lock()
	defer b.fakeBroker.mu.Unlock()
	for s := range b.fakeBroker.subs {
		if s.pattern == pattern {
			s.enqueue(brokers.Message{Gap: true})
		}
	}
}

// The outage gap goes out with the broker's marker on the subscription
// (a NATS client marks its plain subscriptions when it reconnects, and
// delivers them again at once), not only when the broker reports itself
// connected, which may be seconds later (its streams' consumers come
// back first: a fault-suite run saw messages after a loss for seconds,
// and the gap only after the run ended). A message the old connection
// delivered late gets no gap before it (that would put the gap before
// the loss: a fault-suite run caught a first version doing so). Once told,
// the sessions get no second gap at the report; a pattern subscribed
// during the outage gets one there.
func TestOutageGapWithTheBrokersMarker(t *testing.T) {
	const outage, marker = "broker connection was lost: messages may be missing", "messages may have been lost between the broker and this node"
	g, b := newHistoryGateway(t, 0)
	s, tr := openHistoryAndPlain(t, g)
	g.BrokerState(brokers.StateDisconnected)
	send(s, `{"op":"sub","id":3,"ch":"t.b"}`) // while the broker is down
	expectSubOK(t, tr, 3, false)

	msg := func(want string) {
		t.Helper()
		if w := next(t, tr); w.T != TypeMsg || w.Ch != "t.a" || string(w.Data) != want {
			t.Fatalf("want t.a message %s, got %s", want, w)
		}
	}
	gap := func(ch, reason string) {
		t.Helper()
		if w := next(t, tr); w.T != TypeGap || w.Ch != ch || w.Reason != reason {
			t.Fatalf("want a gap for %s (%q), got %s", ch, reason, w)
		}
	}
	publishN(t, b, "t.a", 1, 1) // sent by the old connection, delivered late
	msg("1")
	b.marker("t.a") // reconnected
	publishN(t, b, "t.a", 2, 3)
	gap("t.a", outage)
	msg("2")
	msg("3")
	publishN(t, b, "h.a", 1, 1)
	expectMsgs(t, tr, 1, 1) // history resumes by itself: no gap

	g.BrokerState(brokers.StateConnected)
	gap("t.b", outage) // subscribed during the outage; no marker came
	noPacket(t, tr)    // t.a was told already

	b.marker("t.a") // NATS dropped messages for a slow subscription
	gap("t.a", marker)
}

// A Gap marker from the broker becomes a gap packet for the pattern, on
// every session subscribed to it, in order; delivery carries on after it.
func TestBrokerGapMarkerReachesSessions(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	_, tr1 := openHistoryAndPlain(t, g)
	s2, tr2 := openOn(t, g)
	send(s2, `{"op":"sub","id":1,"ch":"h.*"}`)
	expectSubOK(t, tr2, 1, true)
	publishN(t, b, "h.a", 1, 2)
	b.gap()
	publishN(t, b, "h.a", 3, 4)
	for _, c := range []struct {
		tr      *fakeTransport
		pattern string
	}{{tr1, "h.a"}, {tr2, "h.*"}} {
		expectMsgs(t, c.tr, 1, 2)
		w := next(t, c.tr)
		if w.T != TypeGap || w.Ch != c.pattern || w.Reason != "messages may have been lost between the broker and this node" || w.Oldest != "" {
			t.Fatalf("want gap for %s, got %s", c.pattern, w)
		}
		expectMsgs(t, c.tr, 3, 4)
	}
	// Only the history pattern got the marker.
	noPacket(t, tr1)
	noPacket(t, tr2)
	publishN(t, b, "t.a", 5, 5)
	if w := next(t, tr1); w.T != TypeMsg || w.Ch != "t.a" {
		t.Fatalf("want msg on t.a, got %s", w)
	}
}

func TestUnsubscribeStopsReplay(t *testing.T) {
	g, b := newHistoryGateway(t, 4096)
	publishN(t, b, "h.a", 1, 300)
	s, tr := openOn(t, g)
	release := tr.Block(false)
	send(s, `{"op":"sub","id":1,"ch":"h.a","cursor":"0"}`)
	send(s, `{"op":"unsub","id":2,"ch":"h.a"}`)
	release()
	for {
		w := next(t, tr)
		if w.T == TypeOK && w.ID == 2 {
			break
		}
		if w.T != TypeOK && w.T != TypeMsg {
			t.Fatalf("unexpected %s", w)
		}
	}
	ping(t, s, tr, 3)
}

// The content type a publisher set decides between data, text and b64, so
// a text that looks like JSON stays text.
func TestPayloadKindFollowsContentType(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "t.ct")
	send(s, `{"op":"pub","id":2,"ch":"t.ct","text":"42"}`)
	send(s, `{"op":"pub","id":3,"ch":"t.ct","data":42}`)
	send(s, `{"op":"pub","id":4,"ch":"t.ct","b64":"e30="}`)
	var got []string
	for len(got) < 3 {
		w := next(t, tr)
		if w.T != TypeMsg {
			continue
		}
		switch {
		case w.Text != nil:
			got = append(got, "text:"+*w.Text)
		case w.B64 != nil:
			got = append(got, "b64:"+*w.B64)
		default:
			got = append(got, "data:"+string(w.Data))
		}
	}
	want := []string{"text:42", "data:42", "b64:e30="}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for _, tc := range []struct{ ct, kind string }{
		{"application/json", "data"}, {"application/cloudevents+json", "data"},
		{"text/plain; charset=utf-8", "text"}, {"TEXT/HTML", "text"},
		{"application/octet-stream", "b64"}, {"", ""}, {"image/png", ""},
	} {
		if k := payloadKind(tc.ct); k != tc.kind {
			t.Errorf("payloadKind(%q) = %q, want %q", tc.ct, k, tc.kind)
		}
	}
}
