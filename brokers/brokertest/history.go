package brokertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// HistoryOptions tells RunHistory's factory what kind of history the
// pattern it returns must have.
type HistoryOptions struct {
	// Short asks for a history that keeps only a few messages: publishing
	// up to ShortLimit small messages under the pattern must make it drop
	// its oldest ones (JetStream: MaxMsgs 10; a RabbitMQ stream: small
	// max-length-bytes and segments).
	Short bool
	// Pattern, when set, is a pattern an earlier call of the same test
	// returned: the factory must return a Broker of another gateway node
	// that shares that history (same stream), and return Pattern again.
	Pattern string
}

// ShortLimit is how many messages the gap test publishes at most, in
// rounds, before expecting a Short history to have dropped the oldest.
const ShortLimit = 5000

// HistoryFactory returns a new, independent Broker that implements
// brokers.History, and a history-backed pattern of the form "<prefix>.>"
// that is unique to this call (no other test publishes under it), with a
// history as opts asks — or, with opts.Pattern, a Broker on that existing
// history. The Broker must have no history for channels under "nohist.>".
// The factory may register cleanups with t (for example to delete a
// stream); RunHistory closes the Broker it gets.
type HistoryFactory func(t *testing.T, opts HistoryOptions) (b brokers.Broker, pattern string)

// RunHistory runs the conformance suite of brokers.History: live delivery
// carries increasing positions, Replay returns exactly what was stored
// after a position and in order, a gateway-style merge of a live
// subscription and a Replay loses and duplicates nothing, a history
// that dropped messages reports a gap rather than losing them silently,
// and ReplayRecent returns the last message per channel or the last N,
// from which a Replay after End continues (recent.go).
//
// Positions are compared only by order (Seq is opaque apart from growing
// along the history), so implementations may number them as they like.
func RunHistory(t *testing.T, newBroker HistoryFactory) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, h *histSuite)
	}{
		{"HasHistory", testHasHistory},
		{"LiveSeq", testLiveSeq},
		{"Replay", testReplay},
		{"ReplayEmpty", testReplayEmpty},
		{"ReplayBackpressure", testReplayBackpressure},
		{"ReplayStopsAtCallTime", testReplayStopsAtCallTime},
		{"ReplayCanceled", testReplayCanceled},
		{"ReplayNoHistory", testReplayNoHistory},
		{"MergeLiveAndReplay", testMergeLiveAndReplay},
		{"Gap", testGap},
		{"RecentLatest", testRecentLatest},
		{"RecentLast", testRecentLast},
		{"RecentSparse", testRecentSparse},
		{"RecentThenLive", testRecentThenLive},
		{"RecentEmpty", testRecentEmpty},
		{"RecentErrors", testRecentErrors},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, &histSuite{newBroker: newBroker})
		})
	}
}

type histSuite struct {
	newBroker HistoryFactory
}

// historyBroker is a Broker with History.
type historyBroker interface {
	brokers.Broker
	brokers.History
}

// broker returns a Ready Broker with history and its pattern's prefix
// (the pattern without its trailing ".>"), closed at the end of the test.
func (s *histSuite) broker(t *testing.T, opts HistoryOptions) (historyBroker, string) {
	t.Helper()
	b, pattern := s.newBroker(t, opts)
	if opts.Pattern != "" && pattern != opts.Pattern {
		t.Fatalf("factory asked for a Broker on %q returned pattern %q", opts.Pattern, pattern)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	hb, ok := b.(historyBroker)
	if !ok {
		t.Fatalf("%T does not implement brokers.History", b)
	}
	prefix, ok := strings.CutSuffix(pattern, ".>")
	if !ok || prefix == "" {
		t.Fatalf("factory returned pattern %q, want the form \"<prefix>.>\"", pattern)
	}
	WaitUntil(t, "broker ready", b.Ready)
	return hb, prefix
}

// stored is a message as seen by a subscriber or Replay.
type stored struct {
	seq     uint64
	channel string
	data    string
}

func (m stored) String() string { return fmt.Sprintf("%d:%s=%q", m.seq, m.channel, m.data) }

// recorder collects messages with their positions.
type recorder struct {
	mu   sync.Mutex
	msgs []stored
	hdrs []map[string]string
}

func (r *recorder) handle(m brokers.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, stored{seq: m.Seq, channel: m.Channel, data: string(m.Data)})
	r.hdrs = append(r.hdrs, m.Header)
	r.mu.Unlock()
}

func (r *recorder) snapshot() []stored {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

func (r *recorder) waitN(t *testing.T, n int) []stored {
	t.Helper()
	WaitUntil(t, fmt.Sprintf("%d messages", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.msgs) >= n
	})
	return r.snapshot()
}

// checkIncreasing fails unless every Seq is non-zero and greater than the
// one before.
func checkIncreasing(t *testing.T, what string, msgs []stored) {
	t.Helper()
	for i, m := range msgs {
		if m.seq == 0 {
			t.Fatalf("%s: message %d (%v) has Seq 0", what, i, m)
		}
		if i > 0 && m.seq <= msgs[i-1].seq {
			t.Fatalf("%s: Seq does not increase at %d: %v then %v", what, i, msgs[i-1], m)
		}
	}
}

func sameMessages(t *testing.T, what string, got, want []stored) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\n got  %d %v\n want %d %v", what, len(got), got, len(want), want)
	}
}

func replay(t *testing.T, b brokers.History, pattern string, after uint64) ([]stored, brokers.ReplayResult) {
	t.Helper()
	var r recorder
	res, err := b.Replay(ctxT(t), pattern, after, r.handle)
	if err != nil {
		t.Fatalf("Replay(%q, %d): %v", pattern, after, err)
	}
	return r.snapshot(), res
}

// publishLive publishes n messages alternating over channels and returns
// them as a live subscription on pattern saw them (with positions).
func publishLive(t *testing.T, b brokers.Broker, pattern string, channels []string, n int, tag string) []stored {
	t.Helper()
	var live recorder
	sub := subscribe(t, b, pattern, live.handle)
	for i := range n {
		publish(t, b, channels[i%len(channels)], tag+strconv.Itoa(i))
	}
	got := live.waitN(t, n)
	if err := sub.Unsubscribe(); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	return got
}

func testHasHistory(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	for _, p := range []string{prefix + ".>", prefix + ".a", prefix + ".a.*", prefix + ".*.b.>"} {
		if !b.HasHistory(p) {
			t.Errorf("HasHistory(%q) = false, want true", p)
		}
	}
	parent := ">"
	if i := strings.LastIndexByte(prefix, '.'); i >= 0 {
		parent = prefix[:i] + ".>"
	}
	nohist := "nohist." + token()
	for _, p := range []string{parent, prefix, nohist, nohist + ".>", "*." + strings.Join(strings.Split(prefix, ".")[1:], ".")} {
		if strings.HasSuffix(p, ".") {
			continue
		}
		if b.HasHistory(p) {
			t.Errorf("HasHistory(%q) = true, want false (history is only under %q)", p, prefix+".>")
		}
	}
}

func testLiveSeq(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	channels := []string{prefix + ".a", prefix + ".b.c"}
	const n = 50
	got := publishLive(t, b, prefix+".>", channels, n, "m")
	checkIncreasing(t, "live delivery", got)
	for i, m := range got {
		if m.channel != channels[i%2] || m.data != "m"+strconv.Itoa(i) {
			t.Fatalf("live message %d is %v, want %s=%q (order per publisher)", i, m, channels[i%2], "m"+strconv.Itoa(i))
		}
	}

	// Live delivery on a narrower pattern sees the same positions.
	var narrow recorder
	subscribe(t, b, prefix+".a", narrow.handle)
	var wide recorder
	subscribe(t, b, prefix+".>", wide.handle)
	publish(t, b, prefix+".a", "x")
	publish(t, b, prefix+".b.c", "y")
	publish(t, b, prefix+".a", "z")
	w := wide.waitN(t, 3)
	nm := narrow.waitN(t, 2)
	checkIncreasing(t, "wide", w)
	if w[0].seq <= got[n-1].seq {
		t.Errorf("position went back: %v after %v", w[0], got[n-1])
	}
	sameMessages(t, "narrow subscription", nm, []stored{w[0], w[2]})
}

func testReplay(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	channels := []string{prefix + ".a", prefix + ".b"}
	const n = 40
	all := publishLive(t, b, prefix+".>", channels, n, "r")
	checkIncreasing(t, "live", all)
	// One with a header, which Replay must keep.
	hdr := map[string]string{"Content-Type": "text/plain", "X-Cometgate-Test": token()}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: prefix + ".a", Data: []byte("with header"), Header: hdr}); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	got, res := replay(t, b, prefix+".>", 0)
	if len(got) != n+1 {
		t.Fatalf("Replay(after=0) returned %d messages, want %d: %v", len(got), n+1, got)
	}
	sameMessages(t, "Replay(after=0)", got[:n], all)
	if got[n].data != "with header" || res.Last != got[n].seq || res.Gap {
		t.Errorf("Replay(after=0) ended with %v, result %+v; want the header message, Last = its Seq, no gap", got[n], res)
	}
	all = got

	// The header survived storage.
	var hr recorder
	if _, err := b.Replay(ctxT(t), prefix+".a", got[n-1].seq, hr.handle); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if len(hr.hdrs) != 1 {
		t.Fatalf("Replay after the last plain message returned %v, want only the header message", hr.snapshot())
	}
	for k, v := range hdr {
		if hr.hdrs[0][k] != v {
			t.Errorf("replayed header %q = %q, want %q (all: %v)", k, hr.hdrs[0][k], v, hr.hdrs[0])
		}
	}

	for _, k := range []int{0, 1, 17, n - 1} {
		got, res := replay(t, b, prefix+".>", all[k].seq)
		sameMessages(t, fmt.Sprintf("Replay(after=Seq of #%d)", k), got, all[k+1:])
		if res.Gap || res.Last != all[n].seq {
			t.Errorf("Replay(after=Seq of #%d) result %+v, want Last %d and no gap", k, res, all[n].seq)
		}
	}
	// After the last message: nothing, no gap.
	got, res = replay(t, b, prefix+".>", all[n].seq)
	if len(got) != 0 || res.Gap || res.Last != 0 {
		t.Errorf("Replay(after=last) = %v, %+v; want nothing", got, res)
	}
	// A narrower pattern gets only its channel, with the same positions.
	got, _ = replay(t, b, prefix+".b", all[4].seq)
	var want []stored
	for _, m := range all[5:] {
		if m.channel == prefix+".b" {
			want = append(want, m)
		}
	}
	sameMessages(t, "Replay of one channel", got, want)
	// Between two positions of another channel.
	got, _ = replay(t, b, prefix+".a", all[1].seq)
	want = want[:0]
	for _, m := range all[2:] {
		if m.channel == prefix+".a" {
			want = append(want, m)
		}
	}
	sameMessages(t, "Replay of the other channel", got, want)
}

func testReplayEmpty(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	// Nothing stored at all.
	got, res := replay(t, b, prefix+".>", 0)
	if len(got) != 0 || res.Gap || res.Last != 0 {
		t.Errorf("Replay on an empty history = %v, %+v; want nothing", got, res)
	}
	// Stored messages, but none on the pattern replayed.
	all := publishLive(t, b, prefix+".>", []string{prefix + ".full"}, 5, "e")
	for _, after := range []uint64{0, all[0].seq, all[4].seq} {
		got, res := replay(t, b, prefix+".empty", after)
		if len(got) != 0 || res.Gap || res.Last != 0 {
			t.Errorf("Replay(%q, %d) = %v, %+v; want nothing", prefix+".empty", after, got, res)
		}
	}
}

// testReplayBackpressure: a Handler that blocks holds the replay back;
// nothing is lost or reordered meanwhile.
func testReplayBackpressure(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	const n = 600 // more than one batch for most implementations
	var want []stored
	for i := range n {
		publish(t, b, prefix+".bp", strconv.Itoa(i))
	}
	want, _ = replay(t, b, prefix+".>", 0)
	if len(want) != n {
		t.Fatalf("Replay returned %d messages, want %d", len(want), n)
	}
	checkIncreasing(t, "replay", want)

	release := make(chan struct{})
	var r recorder
	errc := make(chan error, 1)
	go func() {
		_, err := b.Replay(ctxT(t), prefix+".>", 0, func(m brokers.Message) {
			if m.Seq == want[n/2].seq {
				<-release
			}
			r.handle(m)
		})
		errc <- err
	}()
	WaitUntil(t, "replay to reach the blocking message", func() bool {
		return len(r.snapshot()) == n/2
	})
	// The replay is held back: it cannot go past the blocked Handler.
	time.Sleep(quietPeriod)
	if got := len(r.snapshot()); got != n/2 {
		t.Fatalf("replay went on while the Handler blocked: %d messages", got)
	}
	close(release)
	if err := <-errc; err != nil {
		t.Fatalf("Replay: %v", err)
	}
	sameMessages(t, "replay with a blocking Handler", r.snapshot(), want)
}

// testReplayStopsAtCallTime: messages stored after Replay was called are
// not part of it, so a replay ends even while publishing goes on.
func testReplayStopsAtCallTime(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	ch := prefix + ".late"
	for i := range 5 {
		publish(t, b, ch, strconv.Itoa(i))
	}
	var r recorder
	published := 0
	res, err := b.Replay(ctxT(t), prefix+".>", 0, func(m brokers.Message) {
		r.handle(m)
		if published < 3 {
			published++
			// A Handler may block, so it may also publish.
			if err := b.Publish(context.Background(), brokers.Message{Channel: ch, Data: []byte("late")}); err != nil {
				t.Errorf("Publish from the replay Handler: %v", err)
			}
		}
	})
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	got := r.snapshot()
	if len(got) != 5 {
		t.Fatalf("Replay returned %v, want exactly the 5 messages stored when it was called", got)
	}
	if res.Last != got[4].seq {
		t.Errorf("Last = %d, want %d", res.Last, got[4].seq)
	}
	// The late ones are there for the next replay.
	more, _ := replay(t, b, prefix+".>", res.Last)
	if len(more) != 3 {
		t.Errorf("next Replay returned %v, want the 3 late messages", more)
	}
}

func testReplayCanceled(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	for i := range 20 {
		publish(t, b, prefix+".c", strconv.Itoa(i))
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var calls, late int
	var returned bool
	var mu sync.Mutex
	_, err := b.Replay(ctx, prefix+".>", 0, func(brokers.Message) {
		mu.Lock()
		defer mu.Unlock()
		if returned {
			late++
		}
		calls++
		if calls == 3 {
			cancel()
		}
	})
	mu.Lock()
	returned = true
	n := calls
	mu.Unlock()
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Replay with a canceled context returned %v, want context.Canceled", err)
	}
	if n >= 20 {
		t.Errorf("Replay delivered all %d messages despite the cancellation", n)
	}
	time.Sleep(quietPeriod)
	mu.Lock()
	defer mu.Unlock()
	if late > 0 {
		t.Errorf("Handler called %d times after Replay returned", late)
	}
	// A context canceled before the call: an error, no call.
	if _, err := b.Replay(ctx, prefix+".>", 0, func(brokers.Message) { late++ }); err == nil {
		t.Error("Replay with a canceled context returned no error")
	}
}

func testReplayNoHistory(t *testing.T, s *histSuite) {
	b, _ := s.broker(t, HistoryOptions{})
	called := false
	_, err := b.Replay(ctxT(t), "nohist."+token()+".>", 0, func(brokers.Message) { called = true })
	if err == nil {
		t.Error("Replay on a pattern without history returned no error")
	}
	if called {
		t.Error("Replay on a pattern without history called the Handler")
	}
	// A channel without history still works live, with Seq 0.
	ch := "nohist." + token()
	var r recorder
	subscribe(t, b, ch, r.handle)
	publish(t, b, ch, "x")
	if got := r.waitN(t, 1); got[0].seq != 0 {
		t.Errorf("message on a channel without history has Seq %d, want 0", got[0].seq)
	}
}

// testMergeLiveAndReplay does what a gateway node does for a client that
// resumes from a cursor (obtained on another node) while publishing goes
// on: join the live subscription first and buffer it, replay from the
// cursor, then keep only live messages beyond the replay's Last. The
// union must be exactly what was published after the cursor, in order —
// checked against a witness subscription on the publishing Broker that
// saw everything.
func testMergeLiveAndReplay(t *testing.T, s *histSuite) {
	pub, prefix := s.broker(t, HistoryOptions{})
	pattern := prefix + ".>"
	var witness recorder
	subscribe(t, pub, pattern, witness.handle)
	const pre = 10
	for i := range pre {
		publish(t, pub, prefix+".pre", strconv.Itoa(i))
	}
	cursor := witness.waitN(t, pre)[4].seq

	const publishers, perPublisher = 3, 150
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	start := make(chan struct{})
	for p := range publishers {
		wg.Go(func() {
			<-start
			ch := prefix + ".p" + strconv.Itoa(p)
			for i := range perPublisher {
				err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(i))})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	close(start)
	WaitUntil(t, "publishing under way", func() bool { return len(witness.snapshot()) >= pre+50 })

	// The "gateway": live first, buffered while the replay runs.
	var mu sync.Mutex
	var buffered []stored
	replaying := true
	var merged []stored
	var last uint64
	live := func(m brokers.Message) {
		mu.Lock()
		defer mu.Unlock()
		sm := stored{seq: m.Seq, channel: m.Channel, data: string(m.Data)}
		if replaying {
			buffered = append(buffered, sm)
			return
		}
		if sm.seq > last {
			merged = append(merged, sm)
			last = sm.seq
		}
	}
	// The merging node is another gateway node: its own Broker on the
	// same history.
	node, _ := s.broker(t, HistoryOptions{Pattern: pattern})
	subscribe(t, node, pattern, live)
	var replayed []stored
	res, err := node.Replay(ctxT(t), pattern, cursor, func(m brokers.Message) {
		replayed = append(replayed, stored{seq: m.Seq, channel: m.Channel, data: string(m.Data)})
	})
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if res.Gap {
		t.Fatalf("Replay reported a gap on a history without limits: %+v", res)
	}
	mu.Lock()
	merged = append(merged, replayed...)
	merged, last = joinLive(merged, buffered, max(cursor, res.Last))
	replaying = false
	mu.Unlock()

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Publish: %v", err)
	}
	total := pre + publishers*perPublisher
	all := witness.waitN(t, total)
	checkIncreasing(t, "witness", all)
	want := all[5:]
	WaitUntil(t, "the merged stream to reach the last message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return last >= want[len(want)-1].seq
	})
	mu.Lock()
	got := slices.Clone(merged)
	mu.Unlock()
	sameMessages(t, "live+replay merge", got, want)
}

// testGap: a history that dropped messages reports a gap, with the oldest
// position it still has, and replays from there.
func testGap(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{Short: true})
	pattern := prefix + ".>"
	var witness recorder
	subscribe(t, b, pattern, witness.handle)
	publish(t, b, prefix+".g", "first")
	first := witness.waitN(t, 1)[0]
	publish(t, b, prefix+".g", "second")

	// In lock step with the witness: a live subscription that falls
	// further behind than a short history keeps may skip what the history
	// dropped, and the witness must see everything.
	const round = 50
	var res brokers.ReplayResult
	var got []stored
	published := 2
	witness.waitN(t, published)
	for !res.Gap {
		if published >= ShortLimit {
			t.Fatalf("no gap after %d messages: the factory's Short history keeps too much", published)
		}
		for range round {
			publish(t, b, prefix+".g", strconv.Itoa(published))
			published++
			witness.waitN(t, published)
		}
		got, res = replay(t, b, pattern, first.seq)
	}
	all := witness.waitN(t, published)
	checkIncreasing(t, "witness", all)
	last := all[len(all)-1]

	if res.Oldest <= first.seq+1 {
		t.Errorf("gap with Oldest %d, want beyond the cursor's next position %d", res.Oldest, first.seq+1)
	}
	if len(got) == 0 || got[0].seq < res.Oldest {
		t.Fatalf("replay after a gap starts with %v, want at or after Oldest %d", got, res.Oldest)
	}
	// What is replayed is exactly the tail of what was published.
	i := slices.IndexFunc(all, func(m stored) bool { return m.seq == got[0].seq })
	if i < 2 {
		t.Fatalf("replay after a gap starts with %v, which is not a dropped-past position", got[0])
	}
	sameMessages(t, "replay after a gap", got, all[i:])
	if res.Last != last.seq {
		t.Errorf("Last = %d, want %d", res.Last, last.seq)
	}

	// From the oldest (after 0): the same tail, no gap.
	fromOldest, res0 := replay(t, b, pattern, 0)
	if res0.Gap {
		t.Errorf("Replay(after=0) reported a gap: %+v", res0)
	}
	if len(fromOldest) == 0 || fromOldest[len(fromOldest)-1] != last {
		t.Fatalf("Replay(after=0) = %v, want a tail ending with %v", fromOldest, last)
	}
	j := slices.IndexFunc(all, func(m stored) bool { return m.seq == fromOldest[0].seq })
	if j < 0 {
		t.Fatalf("Replay(after=0) starts with %v, never published", fromOldest[0])
	}
	sameMessages(t, "Replay(after=0) on a short history", fromOldest, all[j:])

	// From a position still stored: no gap.
	_, res1 := replay(t, b, pattern, last.seq)
	if res1.Gap {
		t.Errorf("Replay(after=last) reported a gap: %+v", res1)
	}
}

// joinLive switches a replaying subscriber to live, as the gateway does:
// the live messages buffered during the replay that it did not reach
// (after last) follow what it replayed, in order. It returns the merged
// stream and the last sequence in it.
func joinLive(merged, buffered []stored, last uint64) ([]stored, uint64) {
	for _, m := range buffered {
		if m.seq > last {
			merged = append(merged, m)
			last = m.seq
		}
	}
	return merged, last
}
