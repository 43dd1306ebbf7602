package gateway

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/cometgate/cometgate/brokers"
)

// ReplayRecent of the fake history: the last message per channel or the
// last N of the store, up to its end when called.
func (b *historyBroker) ReplayRecent(ctx context.Context, pattern string, which brokers.Recent, h brokers.Handler) (brokers.ReplayResult, error) {
	if err := which.Check(); err != nil {
		return brokers.ReplayResult{}, err
	}
	b.mu.Lock()
	snapshot := append([]brokers.Message(nil), b.stored...)
	res := brokers.ReplayResult{End: b.last}
	hook := b.duringReplay
	b.duringReplay = nil
	b.mu.Unlock()
	var matching []brokers.Message
	last := map[string]int{}
	for _, m := range snapshot {
		if brokers.MatchChannel(pattern, m.Channel) {
			last[m.Channel] = len(matching)
			matching = append(matching, m)
		}
	}
	var out []brokers.Message
	for i, m := range matching {
		if which.PerChannel && last[m.Channel] == i || which.Last > 0 && i >= len(matching)-which.Last {
			out = append(out, m)
		}
	}
	for i, m := range out {
		if i == len(out)/2 && hook != nil {
			hook()
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		h(m)
		res.Last = m.Seq
	}
	return res, nil
}

// expectMsgList reads msg packets and checks their payloads are want, in
// order, each with its cursor equal to its payload.
func expectMsgList(t *testing.T, tr *fakeTransport, want ...int) {
	t.Helper()
	for _, i := range want {
		w := next(t, tr)
		if w.T != TypeMsg || string(w.Data) != strconv.Itoa(i) || w.Cur != strconv.Itoa(i) {
			t.Fatalf("want msg %d (cur %d), got %s", i, i, w)
		}
	}
}

func TestSubscribeLatestThenLive(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	// Positions 1..6, alternating over h.a and h.b, then 7 on h.c.
	for i := 1; i <= 6; i++ {
		publishN(t, b, "h."+string(rune('a'+i%2)), i, i)
	}
	publishN(t, b, "h.c", 7, 7)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.*","latest":true}`)
	expectSubOK(t, tr, 1, true)
	expectMsgList(t, tr, 5, 6, 7)
	noPacket(t, tr)
	publishN(t, b, "h.a", 8, 9)
	expectMsgs(t, tr, 8, 9)
	noPacket(t, tr)
}

func TestSubscribeLastN(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 10)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","last":3}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 8, 10)
	publishN(t, b, "h.a", 11, 11)
	expectMsgs(t, tr, 11, 11)
	noPacket(t, tr)
}

// Messages published while the current state is read come after it,
// once each: the next rounds replay after the position it was read to.
func TestSubscribeLatestCatchesUp(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 4)
	publishN(t, b, "h.b", 5, 8)
	var wg sync.WaitGroup
	defer wg.Wait()
	b.duringReplay = func() {
		wg.Go(func() { publishN(t, b, "h.a", 9, 30) })
	}
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.*","latest":true}`)
	expectSubOK(t, tr, 1, true)
	expectMsgList(t, tr, 4, 8)
	expectMsgs(t, tr, 9, 30)
	noPacket(t, tr)
}

// An empty history: nothing, then live, without a replay of what was
// stored before (there was nothing) or a gap.
func TestSubscribeLatestOnEmptyHistory(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.other", 1, 3)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","latest":true}`)
	expectSubOK(t, tr, 1, true)
	noPacket(t, tr)
	publishN(t, b, "h.a", 4, 5)
	expectMsgs(t, tr, 4, 5)
}

// A cursor wins over latest: the client has the state already.
func TestSubscribeCursorWinsOverLatest(t *testing.T) {
	g, b := newHistoryGateway(t, 0)
	publishN(t, b, "h.a", 1, 6)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","latest":true,"cursor":"2"}`)
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 3, 6)
	noPacket(t, tr)
}

func TestSubscribeRecentErrorsAndNoHistory(t *testing.T) {
	g, _ := newHistoryGateway(t, 0)
	s, tr := openOn(t, g)
	send(s, `{"op":"sub","id":1,"ch":"h.a","latest":true,"last":2}`)
	expectErr(t, tr, 1, 400, `"latest" and "last" exclude each other`)
	send(s, `{"op":"sub","id":2,"ch":"h.a","last":-1}`)
	expectErr(t, tr, 2, 400, `"last" must be 1 to 1000, not -1`)
	send(s, `{"op":"sub","id":3,"ch":"h.a","last":1001}`)
	expectErr(t, tr, 3, 400, `"last" must be 1 to 1000`)
	send(s, `{"op":"sub","id":4,"ch":"h.a","last":"x"}`)
	expectErr(t, tr, 4, 400, `field "last" must be int`)
	// Without history: subscribed live, and told there is no state.
	send(s, `{"op":"sub","id":5,"ch":"t.a","latest":true}`)
	expectSubOK(t, tr, 5, false)
	if w := next(t, tr); w.T != TypeGap || w.Ch != "t.a" || w.Reason != "channel has no history: its current state is not available" {
		t.Fatalf("want a gap for the state of a channel without history, got %s", w)
	}
	ping(t, s, tr, 6)
}

// The state is throttled by the client's queue like any replay.
func TestSubscribeLastThrottledBySlowClient(t *testing.T) {
	g, b := newHistoryGateway(t, 4096)
	publishN(t, b, "h.a", 1, 600)
	s, tr := openOn(t, g)
	release := tr.Block(false)
	send(s, `{"op":"sub","id":1,"ch":"h.a","last":500}`)
	release()
	expectSubOK(t, tr, 1, true)
	expectMsgs(t, tr, 101, 600)
	select {
	case <-s.Done():
		t.Fatalf("session ended: %v", s.Reason())
	default:
	}
}
