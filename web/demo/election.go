package demo

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

// The election: a made-up country of regions, four parties, and a count
// that moves on one region at a time. Each region's count is the latest
// message on election.region.<code>, the national tally the latest on
// election.national; both keep history, so a page opened late asks for
// the latest message of each channel of election.> and shows the current
// totals at once, then follows the count live.

const (
	regionPrefix    = "election.region."
	channelNational = "election.national"
)

// Party is one party on the ballot.
type Party struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Color string `json:"color"`
}

var parties = []Party{
	{"grn", "Green Alliance", "#2e9d5b"},
	{"lab", "Labour Union", "#d1453b"},
	{"lib", "Liberal Centre", "#e0a526"},
	{"con", "Conservative League", "#2f5fd0"},
}

// Region is one region's count as published on election.region.<code>.
type Region struct {
	Code    string         `json:"code"`
	Name    string         `json:"name"`
	Round   int            `json:"round"`   // which count this is (a new count starts at 0)
	Voters  int            `json:"voters"`  // ballots cast, all counted at the end
	Counted int            `json:"counted"` // ballots counted so far
	Votes   map[string]int `json:"votes"`   // by party id
	lean    []float64      // the region's leaning, party by party
}

// National is the national tally on election.national.
type National struct {
	Round     int            `json:"round"`
	Parties   []Party        `json:"parties"`
	Regions   int            `json:"regions"`
	Declared  int            `json:"declared"` // regions fully counted
	Voters    int            `json:"voters"`
	Counted   int            `json:"counted"`
	Votes     map[string]int `json:"votes"`
	Completed bool           `json:"completed"`
}

var regionNames = []struct{ code, name string }{
	{"aldmoor", "Aldmoor"}, {"brightwater", "Brightwater"}, {"calder", "Calder Vale"},
	{"dunmere", "Dunmere"}, {"eastholm", "Eastholm"}, {"fenwick", "Fenwick"},
	{"glenarrow", "Glenarrow"}, {"highcross", "Highcross"}, {"ivybridge", "Ivybridge"},
	{"kestrel", "Kestrel Bay"}, {"lowfield", "Lowfield"}, {"marram", "Marram Coast"},
	{"northgate", "Northgate"}, {"oakhurst", "Oakhurst"}, {"pennick", "Pennick Hills"},
	{"redmarsh", "Redmarsh"},
}

type election struct {
	opts     Options
	round    int
	regions  []*Region
	doneAt   time.Time // when the count completed; zero while counting
	failures int
}

func newElection(o Options) *election {
	e := &election{opts: o}
	e.reset()
	return e
}

// reset starts a new count: every region at zero, new leanings.
func (e *election) reset() {
	e.regions = e.regions[:0]
	for _, rn := range regionNames {
		r := &Region{Code: rn.code, Name: rn.name, Round: e.round, Voters: 40_000 + rand.IntN(160_000),
			Votes: map[string]int{}}
		total := 0.0
		for range parties {
			w := 0.5 + rand.Float64()
			r.lean = append(r.lean, w)
			total += w
		}
		for i, p := range parties {
			r.lean[i] /= total
			r.Votes[p.ID] = 0
		}
		e.regions = append(e.regions, r)
	}
	e.doneAt = time.Time{}
}

func (e *election) national() National {
	n := National{Round: e.round, Parties: parties, Regions: len(e.regions), Votes: map[string]int{}}
	for _, p := range parties {
		n.Votes[p.ID] = 0
	}
	for _, r := range e.regions {
		n.Voters += r.Voters
		n.Counted += r.Counted
		if r.Counted == r.Voters {
			n.Declared++
		}
		for id, v := range r.Votes {
			n.Votes[id] += v
		}
	}
	n.Completed = n.Declared == n.Regions
	return n
}

// publishAll publishes every region and the national tally.
func (e *election) publishAll(ctx context.Context) error {
	for _, r := range e.regions {
		if err := publishJSON(ctx, e.opts.Broker, regionPrefix+r.Code, r); err != nil {
			return fmt.Errorf("demo: publishing region %s: %w", r.Code, err)
		}
	}
	if err := publishJSON(ctx, e.opts.Broker, channelNational, e.national()); err != nil {
		return fmt.Errorf("demo: publishing the national tally: %w", err)
	}
	return nil
}

func (e *election) run(ctx context.Context) {
	if e.opts.CountSteps == nil {
		every(ctx, e.opts.CountInterval, func(now time.Time) { e.step(ctx, now) })
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-e.opts.CountSteps:
			e.step(ctx, now)
		}
	}
}

// step counts a batch of ballots in one region still counting, or, a
// while after the count completed, starts the next one.
func (e *election) step(ctx context.Context, now time.Time) {
	if !e.doneAt.IsZero() {
		if now.Sub(e.doneAt) >= e.opts.RecountAfter {
			e.round++
			e.reset()
			e.report(ctx, e.publishAll(ctx))
		}
		return
	}
	var counting []*Region
	for _, r := range e.regions {
		if r.Counted < r.Voters {
			counting = append(counting, r)
		}
	}
	if len(counting) == 0 {
		return
	}
	r := counting[rand.IntN(len(counting))]
	batch := min(r.Voters-r.Counted, r.Voters/8+rand.IntN(r.Voters/8+1))
	// Ballots go to parties by the region's leaning, with some noise.
	left := batch
	for i, p := range parties {
		n := left
		if i < len(parties)-1 {
			n = min(left, int(float64(batch)*r.lean[i]*(0.9+0.2*rand.Float64())))
		}
		r.Votes[p.ID] += n
		left -= n
	}
	r.Counted += batch
	if err := publishJSON(ctx, e.opts.Broker, regionPrefix+r.Code, r); err != nil {
		e.report(ctx, err)
		return
	}
	n := e.national()
	if n.Completed {
		e.doneAt = now
	}
	e.report(ctx, publishJSON(ctx, e.opts.Broker, channelNational, n))
}

func (e *election) report(ctx context.Context, err error) {
	if err == nil || ctx.Err() != nil {
		return
	}
	e.failures++
	if e.failures%100 == 1 {
		e.opts.Logger.Warn("demo election: publish failed", slog.Any("err", err), slog.Int("failures", e.failures))
	}
}
