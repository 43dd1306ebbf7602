package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/natsbroker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// embedded starts an embedded NATS server whose streams store the demo's
// auction and election channels, as the reference configuration has it.
func embedded(t *testing.T) brokers.Broker {
	t.Helper()
	e, err := natsbroker.StartEmbedded(t.Context(), natsbroker.EmbeddedOptions{Streams: []natsbroker.StreamSpec{
		{Name: "demo_auction", Patterns: []string{"auction.>"}, MaxAge: time.Hour, Create: true},
		{Name: "demo_election", Patterns: []string{"election.>"}, MaxAge: time.Hour, Create: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e.Broker()
}

// collector gathers what a broker subscription delivers, by channel.
type collector struct {
	mu   sync.Mutex
	msgs []brokers.Message
	more chan struct{}
}

func collect(t *testing.T, b brokers.Broker, pattern string) *collector {
	t.Helper()
	c := &collector{more: make(chan struct{}, 1)}
	sub, err := b.Subscribe(t.Context(), pattern, func(m brokers.Message) {
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
		select {
		case c.more <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

// wait returns the first message for which ok is true, failing t after a
// while.
func (c *collector) wait(t *testing.T, what string, ok func(brokers.Message) bool) brokers.Message {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		for _, m := range c.msgs {
			if ok(m) {
				c.mu.Unlock()
				return m
			}
		}
		n := len(c.msgs)
		c.mu.Unlock()
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("no %s among %d messages", what, n)
		}
	}
}

func start(t *testing.T, b brokers.Broker, o Options) *Backend {
	t.Helper()
	o.Broker = b
	be, err := Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close)
	return be
}

// currentLots reads the lots on show from the history, as a late visitor
// does: the latest message of every auction channel.
func currentLots(t *testing.T, b brokers.Broker) (catalog []string, lots map[string]Lot) {
	t.Helper()
	lots = map[string]Lot{}
	_, err := b.(brokers.History).ReplayRecent(t.Context(), "auction.>", brokers.Recent{PerChannel: true}, func(m brokers.Message) {
		switch {
		case m.Channel == channelCatalog:
			var c struct{ Lots []string }
			if err := json.Unmarshal(m.Data, &c); err != nil {
				t.Errorf("catalog %s: %v", m.Data, err)
			}
			catalog = c.Lots
		case strings.HasPrefix(m.Channel, lotPrefix):
			var l Lot
			if err := json.Unmarshal(m.Data, &l); err != nil {
				t.Errorf("lot %s: %v", m.Data, err)
			}
			lots[l.ID] = l
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return catalog, lots
}

func TestAuctioneerJudgesBids(t *testing.T) {
	b := embedded(t)
	start(t, b, Options{RobotInterval: -1, TickInterval: time.Hour, CountInterval: time.Hour})
	catalog, lots := currentLots(t, b)
	if len(catalog) != 4 || len(lots) != 4 {
		t.Fatalf("catalog %v, lots %v", catalog, lots)
	}
	l := lots[catalog[0]]
	if l.Status != lotOpen || l.Top != 0 || l.Start <= 0 || l.Step <= 0 {
		t.Fatalf("a new lot: %+v", l)
	}
	results := collect(t, b, resultPrefix+"tester")
	bid := func(id string, lot string, amount int) Result {
		t.Helper()
		data, _ := json.Marshal(Bid{ID: id, Lot: lot, Amount: amount, Bidder: "tester", Name: "Tess"})
		if err := b.Publish(t.Context(), brokers.Message{Channel: channelBids, Data: data}); err != nil {
			t.Fatal(err)
		}
		m := results.wait(t, "result of "+id, func(m brokers.Message) bool {
			var r Result
			return json.Unmarshal(m.Data, &r) == nil && r.ID == id
		})
		var r Result
		_ = json.Unmarshal(m.Data, &r)
		return r
	}
	for _, tc := range []struct {
		id       string
		lot      string
		amount   int
		accepted bool
		reason   string
	}{
		{"b1", l.ID, l.Start - 1, false, "opening price"},
		{"b2", l.ID, l.Start, true, ""},
		{"b3", l.ID, l.Start + l.Step - 1, false, fmt.Sprintf("at least €%d", l.Start+l.Step)},
		{"b4", l.ID, l.Start + l.Step, true, ""},
		{"b5", "nosuchlot", 1000, false, "no such lot"},
	} {
		r := bid(tc.id, tc.lot, tc.amount)
		if r.Accepted != tc.accepted || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("bid %s of %d: %+v, want accepted %v reason %q", tc.id, tc.amount, r, tc.accepted, tc.reason)
		}
	}
	// A late visitor finds the accepted top bid in the history.
	_, lots = currentLots(t, b)
	if got := lots[l.ID]; got.Top != l.Start+l.Step || got.BidID != "b4" || got.Name != "Tess" || got.Bids != 2 {
		t.Fatalf("the lot after two accepted bids: %+v", got)
	}
}

func TestAuctioneerClosesLots(t *testing.T) {
	b := embedded(t)
	lots := collect(t, b, lotPrefix+"*")
	// Lots of 2s: the first ends within 1.5 s to 2 s of the start.
	start(t, b, Options{RobotInterval: -1, TickInterval: time.Hour, CountInterval: time.Hour, Lots: 1, LotDuration: 2 * time.Second})
	closed := lots.wait(t, "closed lot", func(m brokers.Message) bool {
		var l Lot
		return json.Unmarshal(m.Data, &l) == nil && l.Status == lotClosed
	})
	var l Lot
	_ = json.Unmarshal(closed.Data, &l)
	results := collect(t, b, resultPrefix+"late")
	data, _ := json.Marshal(Bid{ID: "late1", Lot: l.ID, Amount: 1_000_000, Bidder: "late"})
	if err := b.Publish(t.Context(), brokers.Message{Channel: channelBids, Data: data}); err != nil {
		t.Fatal(err)
	}
	m := results.wait(t, "result", func(brokers.Message) bool { return true })
	var r Result
	_ = json.Unmarshal(m.Data, &r)
	if r.Accepted || !strings.Contains(r.Reason, "closed") {
		t.Fatalf("a bid on a closed lot: %+v", r)
	}
}

func TestRobotsBid(t *testing.T) {
	b := embedded(t)
	lots := collect(t, b, lotPrefix+"*")
	start(t, b, Options{RobotInterval: 50 * time.Millisecond, TickInterval: time.Hour, CountInterval: time.Hour})
	lots.wait(t, "a lot with a robot's bid", func(m brokers.Message) bool {
		var l Lot
		return json.Unmarshal(m.Data, &l) == nil && strings.HasPrefix(l.Bidder, "robot-") && l.Top >= l.Start
	})
}

func TestTickerAndElection(t *testing.T) {
	b := embedded(t)
	prices := collect(t, b, "ticker.>")
	national := collect(t, b, channelNational)
	be := start(t, b, Options{RobotInterval: -1, Symbols: 20, TickInterval: 10 * time.Millisecond, TickBatch: 5,
		CountInterval: 5 * time.Millisecond, RecountAfter: 50 * time.Millisecond})
	prices.wait(t, "a symbol's second price", func(m brokers.Message) bool {
		var q quote
		return json.Unmarshal(m.Data, &q) == nil && q.N == 2 && m.Channel == tickerPrefix+q.Symbol && q.Price > 0
	})
	// The count completes, its totals add up, and a new count starts.
	done := national.wait(t, "a completed count", func(m brokers.Message) bool {
		var n National
		return json.Unmarshal(m.Data, &n) == nil && n.Completed
	})
	var n National
	_ = json.Unmarshal(done.Data, &n)
	sum := 0
	for _, v := range n.Votes {
		sum += v
	}
	if n.Counted != n.Voters || sum != n.Counted || n.Declared != len(regionNames) || len(n.Parties) != len(parties) {
		t.Fatalf("completed count: %+v (votes add up to %d)", n, sum)
	}
	national.wait(t, "the next count", func(m brokers.Message) bool {
		var n National
		return json.Unmarshal(m.Data, &n) == nil && n.Round == 1
	})
	// A late visitor reads every region and the tally from the history
	// (once the count stands still: what is stored while ReplayRecent
	// reads comes after it, with the gateway's next round).
	be.Close()
	seen := map[string]bool{}
	_, err := b.(brokers.History).ReplayRecent(context.Background(), "election.>", brokers.Recent{PerChannel: true}, func(m brokers.Message) {
		seen[m.Channel] = true
	})
	if err != nil || len(seen) != len(regionNames)+1 {
		t.Fatalf("latest per channel: %d channels, %v", len(seen), err)
	}
}

// Whatever a browser publishes on auction.bids, the auctioneer answers
// with a verdict that holds, or drops a bid it cannot answer, and never
// leaves a lot in a state its rules forbid.
func FuzzDecide(f *testing.F) {
	for _, s := range []string{
		`{"id":"b1","lot":"L-0","amount":500,"bidder":"me","name":"Ada"}`,
		`{"id":"b1","lot":"L-0","amount":-5,"bidder":"me"}`,
		`{"id":"b1","lot":"L-0","amount":1e12,"bidder":"me"}`,
		`{"id":"","lot":"L-0","amount":500,"bidder":"me"}`,
		`{"id":"b1","lot":"L-0","amount":500,"bidder":"../x"}`,
		`{"id":"b1","lot":"nope","amount":500,"bidder":"me","name":"` + strings.Repeat("é", 40) + `"}`,
		`[]`, `null`, `{"amount":"500"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &auctioneer{idBase: "L"}
		now := time.UnixMilli(1_700_000_000_000)
		a.lots = []*Lot{a.newLot(now, time.Minute)}
		a.lots[0].Start, a.lots[0].Step = 500, 25
		before := *a.lots[0]
		res, bidder, l, ok := a.decide(data, now)
		if !ok {
			if *a.lots[0] != before {
				t.Fatalf("an unanswered bid changed the lot: %+v", a.lots[0])
			}
			return
		}
		if !bidderRe.MatchString(bidder) || !bidIDRe.MatchString(res.ID) {
			t.Fatalf("answered bidder %q bid %q", bidder, res.ID)
		}
		if res.Accepted != (res.Reason == "") {
			t.Fatalf("verdict %+v", res)
		}
		if !res.Accepted {
			if *a.lots[0] != before {
				t.Fatalf("a rejected bid changed the lot: %+v", a.lots[0])
			}
			return
		}
		if l != a.lots[0] || l.Top != res.Amount || res.Amount < l.Start || res.Amount > maxBid ||
			l.Bids != 1 || l.BidID != res.ID || l.Name == "" || len([]rune(l.Name)) > 24 {
			t.Fatalf("accepted %+v, lot %+v", res, l)
		}
	})
}
