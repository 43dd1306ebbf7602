package brokertest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/cometgate/cometgate/brokers"
)

// The conformance of History.ReplayRecent: the current state of a
// pattern's channels (the last message per channel, or the last N), then
// a Replay after End, which continues without loss or duplicate.

func replayRecent(t *testing.T, b brokers.History, pattern string, which brokers.Recent) ([]stored, brokers.ReplayResult) {
	t.Helper()
	var r recorder
	res, err := b.ReplayRecent(ctxT(t), pattern, which, r.handle)
	if err != nil {
		t.Fatalf("ReplayRecent(%q, %+v): %v", pattern, which, err)
	}
	got := r.snapshot()
	if res.Gap {
		t.Errorf("ReplayRecent(%q, %+v) reported a gap: %+v", pattern, which, res)
	}
	if len(got) > 0 && res.Last != got[len(got)-1].seq {
		t.Errorf("ReplayRecent(%q, %+v): Last = %d, want the last message's %d", pattern, which, res.Last, got[len(got)-1].seq)
	}
	if len(got) == 0 && res.Last != 0 {
		t.Errorf("ReplayRecent(%q, %+v) returned nothing but Last = %d", pattern, which, res.Last)
	}
	if res.End < res.Last {
		t.Errorf("ReplayRecent(%q, %+v): End %d before Last %d", pattern, which, res.End, res.Last)
	}
	return got, res
}

// latestPerChannel is the last message of each channel in msgs, in order.
func latestPerChannel(msgs []stored) []stored {
	last := map[string]int{}
	for i, m := range msgs {
		last[m.channel] = i
	}
	var out []stored
	for i, m := range msgs {
		if last[m.channel] == i {
			out = append(out, m)
		}
	}
	return out
}

func onChannel(msgs []stored, channel string) []stored {
	var out []stored
	for _, m := range msgs {
		if m.channel == channel {
			out = append(out, m)
		}
	}
	return out
}

func testRecentLatest(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	channels := []string{prefix + ".a", prefix + ".b.c", prefix + ".a", prefix + ".d", prefix + ".b.c", prefix + ".a", prefix + ".e"}
	all := publishLive(t, b, prefix+".>", channels, len(channels), "l")
	checkIncreasing(t, "live", all)

	got, res := replayRecent(t, b, prefix+".>", brokers.Recent{PerChannel: true})
	sameMessages(t, "ReplayRecent(PerChannel) on "+prefix+".>", got, latestPerChannel(all))
	if res.End < all[len(all)-1].seq {
		t.Errorf("End = %d, before the last message stored (%d)", res.End, all[len(all)-1].seq)
	}
	// One token: the channels right under the prefix.
	got, _ = replayRecent(t, b, prefix+".*", brokers.Recent{PerChannel: true})
	var want []stored
	for _, m := range latestPerChannel(all) {
		if m.channel != prefix+".b.c" {
			want = append(want, m)
		}
	}
	sameMessages(t, "ReplayRecent(PerChannel) on "+prefix+".*", got, want)
	// A concrete channel: its last message.
	got, _ = replayRecent(t, b, prefix+".a", brokers.Recent{PerChannel: true})
	sameMessages(t, "ReplayRecent(PerChannel) on one channel", got, onChannel(all, prefix+".a")[2:])
	// A channel with nothing stored.
	got, res = replayRecent(t, b, prefix+".none", brokers.Recent{PerChannel: true})
	if len(got) != 0 {
		t.Errorf("ReplayRecent on a channel without messages = %v", got)
	}
	if res.End < all[len(all)-1].seq {
		t.Errorf("End = %d on an empty channel, want the stream's end (at least %d)", res.End, all[len(all)-1].seq)
	}
}

func testRecentLast(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	all := publishLive(t, b, prefix+".>", []string{prefix + ".a", prefix + ".b"}, 40, "n")
	checkIncreasing(t, "live", all)
	for _, n := range []int{1, 5, 39, 40, 100, brokers.MaxRecent} {
		got, res := replayRecent(t, b, prefix+".>", brokers.Recent{Last: n})
		sameMessages(t, fmt.Sprintf("ReplayRecent(Last %d)", n), got, all[max(0, len(all)-n):])
		if res.End < all[len(all)-1].seq {
			t.Errorf("Last %d: End = %d, before the last message stored (%d)", n, res.End, all[len(all)-1].seq)
		}
	}
	as := onChannel(all, prefix+".a")
	got, _ := replayRecent(t, b, prefix+".a", brokers.Recent{Last: 5})
	sameMessages(t, "ReplayRecent(Last 5) of one channel", got, as[len(as)-5:])
}

// testRecentSparse: the recent messages of a channel that is rare in a
// busy history, further back than any first window reaches.
func testRecentSparse(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	rare := publishLive(t, b, prefix+".rare", []string{prefix + ".rare"}, 3, "r")
	busy := publishLive(t, b, prefix+".busy", []string{prefix + ".busy"}, 700, "b")
	got, _ := replayRecent(t, b, prefix+".rare", brokers.Recent{Last: 5})
	sameMessages(t, "ReplayRecent(Last 5) of a rare channel", got, rare)
	got, _ = replayRecent(t, b, prefix+".rare", brokers.Recent{Last: 2})
	sameMessages(t, "ReplayRecent(Last 2) of a rare channel", got, rare[1:])
	got, _ = replayRecent(t, b, prefix+".rare", brokers.Recent{PerChannel: true})
	sameMessages(t, "ReplayRecent(PerChannel) of a rare channel", got, rare[2:])
	got, _ = replayRecent(t, b, prefix+".*", brokers.Recent{PerChannel: true})
	sameMessages(t, "ReplayRecent(PerChannel) of a rare and a busy channel", got, []stored{rare[2], busy[len(busy)-1]})
	got, _ = replayRecent(t, b, prefix+".*", brokers.Recent{Last: 300})
	sameMessages(t, "ReplayRecent(Last 300) across windows", got, busy[len(busy)-300:])
}

// testRecentThenLive does what a gateway node does for a subscription that
// asks for the current state while publishing goes on: join the live
// subscription first and hold it, ReplayRecent, Replay after End, then
// keep only live messages beyond. The result is the recent messages, then
// exactly what the witness saw after End, in order.
func testRecentThenLive(t *testing.T, s *histSuite) {
	pub, prefix := s.broker(t, HistoryOptions{})
	pattern := prefix + ".>"
	var witness recorder
	subscribe(t, pub, pattern, witness.handle)
	channels := []string{prefix + ".x", prefix + ".y", prefix + ".z"}
	for i := range 30 {
		publish(t, pub, channels[i%3], "pre"+strconv.Itoa(i))
	}
	witness.waitN(t, 30)

	const perPublisher = 100
	var wg sync.WaitGroup
	errs := make(chan error, len(channels))
	start := make(chan struct{})
	for _, ch := range channels {
		wg.Go(func() {
			<-start
			for i := range perPublisher {
				if err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(i))}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	close(start)
	WaitUntil(t, "publishing under way", func() bool { return len(witness.snapshot()) >= 60 })

	node, _ := s.broker(t, HistoryOptions{Pattern: pattern})
	var mu sync.Mutex
	var buffered, merged []stored
	replaying := true
	var last uint64
	subscribe(t, node, pattern, func(m brokers.Message) {
		mu.Lock()
		defer mu.Unlock()
		sm := stored{seq: m.Seq, channel: m.Channel, data: string(m.Data)}
		if replaying {
			buffered = append(buffered, sm)
		} else if sm.seq > last {
			merged = append(merged, sm)
			last = sm.seq
		}
	})
	recent, res := replayRecent(t, node, pattern, brokers.Recent{PerChannel: true})
	after, res2 := replay(t, node, pattern, res.End)
	if res2.Gap {
		t.Fatalf("Replay after End reported a gap: %+v", res2)
	}
	mu.Lock()
	merged = append(slices.Clone(recent), after...)
	merged, last = joinLive(merged, buffered, max(res.End, res2.Last))
	replaying = false
	mu.Unlock()

	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Publish: %v", err)
	}
	all := witness.waitN(t, 30+len(channels)*perPublisher)
	final := all[len(all)-1].seq
	WaitUntil(t, "the merged stream to reach the last message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return last >= final
	})
	mu.Lock()
	got := slices.Clone(merged)
	mu.Unlock()

	// The recent part: the latest message of channels as of End; a
	// channel may be left out only when it has a newer message after End.
	var upToEnd, later []stored
	for _, m := range all {
		if m.seq <= res.End {
			upToEnd = append(upToEnd, m)
		} else {
			later = append(later, m)
		}
	}
	latest := latestPerChannel(upToEnd)
	for _, m := range recent {
		if !slices.Contains(latest, m) {
			t.Errorf("recent message %v is not the latest of its channel up to End %d (%v)", m, res.End, latest)
		}
	}
	for _, m := range latest {
		if !slices.Contains(recent, m) && len(onChannel(later, m.channel)) == 0 {
			t.Errorf("the latest message of %s up to End, %v, is missing and nothing newer follows", m.channel, m)
		}
	}
	sameMessages(t, "recent, then everything after End", got, append(slices.Clone(recent), later...))
}

func testRecentEmpty(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	for _, which := range []brokers.Recent{{PerChannel: true}, {Last: 10}} {
		got, res := replayRecent(t, b, prefix+".>", which)
		if len(got) != 0 || res.Last != 0 {
			t.Errorf("ReplayRecent(%+v) on an empty history = %v, %+v; want nothing", which, got, res)
		}
	}
	_, res := replayRecent(t, b, prefix+".>", brokers.Recent{PerChannel: true})
	all := publishLive(t, b, prefix+".>", []string{prefix + ".a"}, 2, "e")
	got, _ := replay(t, b, prefix+".>", res.End)
	sameMessages(t, "Replay after the End of an empty history", got, all)
}

func testRecentErrors(t *testing.T, s *histSuite) {
	b, prefix := s.broker(t, HistoryOptions{})
	publish(t, b, prefix+".a", "x")
	called := false
	h := func(brokers.Message) { called = true }
	for _, which := range []brokers.Recent{{}, {Last: -1}, {Last: brokers.MaxRecent + 1}, {PerChannel: true, Last: 2}} {
		if _, err := b.ReplayRecent(ctxT(t), prefix+".>", which, h); err == nil {
			t.Errorf("ReplayRecent(%+v) returned no error", which)
		}
	}
	if _, err := b.ReplayRecent(ctxT(t), "nohist."+token()+".>", brokers.Recent{PerChannel: true}, h); err == nil {
		t.Error("ReplayRecent on a pattern without history returned no error")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := b.ReplayRecent(ctx, prefix+".>", brokers.Recent{Last: 1}, h); err == nil {
		t.Error("ReplayRecent with a canceled context returned no error")
	}
	if called {
		t.Error("a failed ReplayRecent called the Handler")
	}
}
