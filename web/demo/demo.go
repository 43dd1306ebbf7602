// Package demo is the demo backend: the application behind the demo pages
// that cometgate serves (web/ticker.html, web/auction.html,
// web/election.html). It publishes stock prices, runs auctions and counts
// an election's votes.
//
// It is a plain broker client, exactly as a real application would be: it
// publishes and subscribes through a brokers.Broker (here the node's own
// connection, so that "cometgate" with no configuration shows something
// live), never through the gateway. Browsers reach what it publishes, and
// it reaches what browsers publish, only through the broker and the
// gateway's ordinary channel rules (the demo namespaces of the reference
// configuration). Anything it does, a separate process speaking NATS or
// AMQP could do the same way; the README's "Demos" section says how.
//
// It lives under web/ beside the pages it feeds, as a Go package of its
// own: package web stays the embedded files, and cmd/cometgate only starts
// and stops it (demo.enabled).
//
// Channels (the pages' side of the contract):
//
//	ticker.<SYMBOL>           {"s","p","o","n"}: price, opening price, and
//	                          the symbol's update number (a page counts the
//	                          numbers it never saw: what conflation skipped)
//	auction.catalog           {"lots":[ids]}: the lots on show
//	auction.lot.<id>          a lot's state: top bid, bidder, end, status
//	auction.bids              bids from the browsers (and the robots):
//	                          {"id","lot","amount","bidder","name"}
//	auction.result.<bidder>   the auctioneer's answer to each bid, by id
//	election.region.<code>    one region's count
//	election.national         the national tally
//
// Start starts the goroutines of the ticker, the auctioneer, the robot
// bidders and the vote counter, owned by the Backend; Close stops them
// and waits for them.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// Options configure a Backend. Zero values mean the defaults shown.
type Options struct {
	// Broker is the connection the backend publishes and subscribes on.
	// Required. The backend does not close it.
	Broker brokers.Broker
	// Logger, nil = discard.
	Logger *slog.Logger

	// Symbols is how many ticker symbols there are (300).
	Symbols int
	// TickInterval is how often a batch of prices goes out (50ms), and
	// TickBatch how many symbols move in each (25): 500 prices a second.
	TickInterval time.Duration
	TickBatch    int

	// Lots is how many lots are on show at once (4); LotDuration how long
	// a lot is open (3m; the first lots end staggered within it).
	Lots        int
	LotDuration time.Duration
	// RobotInterval is the mean time between two robot bids (5s); < 0 =
	// no robots (tests want to be the only bidders).
	RobotInterval time.Duration

	// CountInterval is how often the election count moves on (600ms); a
	// count that is complete starts again after RecountAfter (1m).
	CountInterval time.Duration
	RecountAfter  time.Duration
	// CountSteps, when set, moves the count on at each time received
	// instead of every CountInterval (tests drive the count with it).
	CountSteps <-chan time.Time
}

func (o *Options) defaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt(&o.Symbols, 300)
	defInt(&o.TickBatch, 25)
	defInt(&o.Lots, 4)
	def(&o.TickInterval, 50*time.Millisecond)
	def(&o.LotDuration, 3*time.Minute)
	def(&o.RobotInterval, 5*time.Second)
	def(&o.CountInterval, 600*time.Millisecond)
	def(&o.RecountAfter, time.Minute)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Backend is a running demo backend. Its methods are safe for concurrent
// use.
type Backend struct {
	opts   Options
	cancel context.CancelFunc
	wg     sync.WaitGroup
	subs   []brokers.Subscription
	once   sync.Once
}

func (b *Backend) subscribe(ctx context.Context, pattern string, h brokers.Handler) error {
	sub, err := b.opts.Broker.Subscribe(ctx, pattern, h)
	if err != nil {
		return fmt.Errorf("demo: subscribing %s: %w", pattern, err)
	}
	b.subs = append(b.subs, sub)
	return nil
}

// Start publishes the first state of every demo (so that a page opened at
// once finds it) and starts the backend's goroutines. ctx bounds the
// start-up only; Close stops the backend.
func Start(ctx context.Context, o Options) (*Backend, error) {
	if o.Broker == nil {
		return nil, errors.New("demo: Options.Broker is required")
	}
	o.defaults()
	rctx, cancel := context.WithCancel(context.Background())
	b := &Backend{opts: o, cancel: cancel}
	// What the broker delivers is handed from its delivery goroutine to
	// the backend's own; the handler waits for room rather than drop a
	// bid.
	handTo := func(c chan<- brokers.Message) brokers.Handler {
		return func(m brokers.Message) {
			if m.Gap {
				return
			}
			select {
			case c <- m:
			case <-rctx.Done():
			}
		}
	}
	bids := make(chan brokers.Message, 256)
	if err := b.subscribe(ctx, channelBids, handTo(bids)); err != nil {
		b.Close()
		return nil, err
	}
	var lots chan brokers.Message
	if o.RobotInterval > 0 {
		lots = make(chan brokers.Message, 256)
		if err := b.subscribe(ctx, lotPrefix+"*", handTo(lots)); err != nil {
			b.Close()
			return nil, err
		}
	}
	a := newAuctioneer(o, time.Now())
	e := newElection(o)
	t := newTicker(o)
	// The first state of the auction and the election before serving, so
	// that a page opened right away finds it in history.
	if err := a.publishAll(ctx); err != nil {
		b.Close()
		return nil, err
	}
	if err := e.publishAll(ctx); err != nil {
		b.Close()
		return nil, err
	}
	b.wg.Go(func() { t.run(rctx) })
	b.wg.Go(func() { a.run(rctx, bids) })
	b.wg.Go(func() { e.run(rctx) })
	if lots != nil {
		r := &bidders{opts: o, lots: map[string]Lot{}}
		b.wg.Go(func() { r.run(rctx, lots) })
	}
	o.Logger.Info("demo backend is running: ticker.html, auction.html, election.html",
		slog.Int("symbols", o.Symbols), slog.Int("prices_per_second", int(time.Second/o.TickInterval)*o.TickBatch))
	return b, nil
}

// Close stops the backend and waits for its goroutines. It is idempotent.
// The broker stays open.
func (b *Backend) Close() {
	b.once.Do(func() {
		// Cancel first: a handler waiting to hand a message over returns,
		// so Unsubscribe (which waits for handlers) does not wait long.
		b.cancel()
		for _, s := range b.subs {
			_ = s.Unsubscribe()
		}
		b.wg.Wait()
	})
}

// publishJSON publishes v as JSON on channel, waiting for the broker's
// confirmation.
func publishJSON(ctx context.Context, br brokers.Broker, channel string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return br.Publish(pctx, brokers.Message{Channel: channel, Data: data,
		Header: map[string]string{"Content-Type": "application/json"}})
}

// jitter is d ± half of it, so that robots and counts do not march in
// step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d)
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func(time.Time)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f(now)
		}
	}
}
