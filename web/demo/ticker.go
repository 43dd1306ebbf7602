package demo

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// The ticker: Symbols made-up symbols, a random walk each, TickBatch of
// them moving every TickInterval. Every price is its own message on its
// own channel (ticker.<SYMBOL>), as a market data feed has it; a page
// subscribes to ticker.> once.

// tickerPrefix starts every ticker channel.
const tickerPrefix = "ticker."

// quote is a price message.
type quote struct {
	Symbol string  `json:"s"`
	Price  float64 `json:"p"`
	Open   float64 `json:"o"`
	// N numbers the symbol's prices from 1: a page that sees N jump by
	// more than one knows how many prices it never got (conflated away
	// by the gateway for a slow tab).
	N uint64 `json:"n"`
}

type ticker struct {
	opts   Options
	quotes []quote
	rng    *rand.Rand
	failed int // publishes that failed since the last log line
}

func newTicker(o Options) *ticker {
	rng := rand.New(rand.NewPCG(42, 7)) // the same symbols on every run
	t := &ticker{opts: o, rng: rng}
	seen := map[string]bool{}
	for len(t.quotes) < o.Symbols {
		n := 3 + rng.IntN(2)
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('A' + rng.IntN(26))
		}
		s := string(b)
		if seen[s] {
			continue
		}
		seen[s] = true
		p := math.Round((5+rng.Float64()*495)*100) / 100
		t.quotes = append(t.quotes, quote{Symbol: s, Price: p, Open: p})
	}
	slices.SortFunc(t.quotes, func(a, b quote) int {
		if a.Symbol < b.Symbol {
			return -1
		}
		return 1
	})
	return t
}

func (t *ticker) run(ctx context.Context) {
	every(ctx, t.opts.TickInterval, func(time.Time) { t.tick(ctx) })
}

// tick moves TickBatch random symbols and publishes their prices. A
// price that fails to go out is not retried: the next one replaces it.
func (t *ticker) tick(ctx context.Context) {
	for range t.opts.TickBatch {
		q := &t.quotes[t.rng.IntN(len(t.quotes))]
		// A random walk of at most ±0.4% a step, never below one cent.
		q.Price = math.Max(0.01, math.Round(q.Price*(1+(t.rng.Float64()-0.5)*0.008)*100)/100)
		q.N++
		if err := publishJSON(ctx, t.opts.Broker, tickerPrefix+q.Symbol, q); err != nil {
			if ctx.Err() != nil {
				return
			}
			t.failed++
		}
	}
	if t.failed >= 1000 {
		t.opts.Logger.Warn("demo ticker: prices not published (is the broker down?)", slog.Int("count", t.failed))
		t.failed = 0
	}
}
