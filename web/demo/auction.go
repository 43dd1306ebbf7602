package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// The auctioneer: Lots lots on show, each open until its end; bids come
// in on auction.bids (from browsers through the gateway, and from the
// robot bidders straight on the broker, like any other publisher), and
// the auctioneer alone judges them, in the order the broker delivers
// them. An accepted bid becomes the lot's state on auction.lot.<id>; every
// bid, accepted or not, gets an answer on the bidder's result channel
// auction.result.<bidder>, carrying the bid's id. Those channels keep
// history: a late visitor asks for the latest message of each and sees
// the current top bid at once, and a page that reconnects resumes from
// its cursors without losing an answer.

const (
	channelBids    = "auction.bids"
	channelCatalog = "auction.catalog"
	lotPrefix      = "auction.lot."
	resultPrefix   = "auction.result."
	// extendWithin: a bid this close to a lot's end pushes the end to
	// this far from the bid (no sniping in the last second).
	extendWithin = 15 * time.Second
	// closedShown is how long a closed lot stays on show before the next
	// one replaces it.
	closedShown = 20 * time.Second
	// maxBid bounds a bid, so that no sum overflows.
	maxBid = 10_000_000
)

// Lot is a lot's state as published on auction.lot.<id>.
type Lot struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	Start  int    `json:"start"` // the opening price: the first bid must reach it
	Step   int    `json:"step"`  // the minimum increment over the top bid
	Top    int    `json:"top"`   // the top bid, 0 before the first one
	Bidder string `json:"bidder,omitempty"`
	Name   string `json:"name,omitempty"`
	BidID  string `json:"bidId,omitempty"`
	Bids   int    `json:"bids"`
	Ends   int64  `json:"ends"` // Unix milliseconds
	Status string `json:"status"`
	// Closed is when a closed lot leaves the show (Unix ms; 0 while open).
	Closed int64 `json:"-"`
}

// Lot statuses.
const (
	lotOpen   = "open"
	lotClosed = "closed"
)

// Bid is what a bidder publishes on auction.bids.
type Bid struct {
	ID     string `json:"id"`     // the bidder's id for the bid, echoed in the result
	Lot    string `json:"lot"`    // the lot's id
	Amount int    `json:"amount"` // whole euros
	Bidder string `json:"bidder"` // the bidder's id: the result goes to auction.result.<bidder>
	Name   string `json:"name"`   // shown beside the top bid
}

// Result answers one bid on auction.result.<bidder>.
type Result struct {
	ID       string `json:"id"`
	Lot      string `json:"lot"`
	Amount   int    `json:"amount"`
	Accepted bool   `json:"accepted"`
	Reason   string `json:"reason,omitempty"`
	Top      int    `json:"top"` // the lot's top bid after this one
}

var (
	bidderRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,40}$`)
	bidIDRe  = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)
)

var lotTitles = []string{
	"Brass ship's chronometer, 1890", "First-edition atlas of the Low Countries",
	"Pair of Delft blue vases", "Signed photograph of a moon landing crew",
	"Oak writing bureau with secret drawer", "Enamel railway sign, Paris–Lyon",
	"Hand-built valve radio, 1936", "Oil sketch of a harbour at dusk",
	"Set of twelve silver teaspoons", "Mechanical calculator, pinwheel type",
	"Travel poster, Alpine railway", "Mahogany chess set with board",
}

var robots = []struct{ id, name string }{
	{"robot-ada", "Ada (robot)"}, {"robot-grace", "Grace (robot)"},
	{"robot-alan", "Alan (robot)"}, {"robot-edsger", "Edsger (robot)"},
}

type auctioneer struct {
	opts   Options
	lots   []*Lot // on show, in catalog order
	next   int    // the number of the next lot
	idBase string // distinguishes this run's lots from a stored history's
}

func newAuctioneer(o Options, now time.Time) *auctioneer {
	a := &auctioneer{opts: o, idBase: strconv.FormatInt(now.UnixMilli(), 36)}
	for i := range o.Lots {
		// The first lots end one after another within LotDuration.
		a.lots = append(a.lots, a.newLot(now, o.LotDuration*time.Duration(i+1)/time.Duration(o.Lots)+o.LotDuration/2))
	}
	return a
}

func (a *auctioneer) newLot(now time.Time, open time.Duration) *Lot {
	n := a.next
	a.next++
	start := 50 * (1 + rand.IntN(20))
	return &Lot{
		ID: fmt.Sprintf("%s-%d", a.idBase, n), Title: lotTitles[n%len(lotTitles)],
		Start: start, Step: max(5, start/20), Ends: now.Add(open).UnixMilli(), Status: lotOpen,
	}
}

// publishAll publishes every lot and then the catalog that names them.
func (a *auctioneer) publishAll(ctx context.Context) error {
	for _, l := range a.lots {
		if err := publishJSON(ctx, a.opts.Broker, lotPrefix+l.ID, l); err != nil {
			return fmt.Errorf("demo: publishing lot %s: %w", l.ID, err)
		}
	}
	return a.publishCatalog(ctx)
}

func (a *auctioneer) publishCatalog(ctx context.Context) error {
	ids := make([]string, len(a.lots))
	for i, l := range a.lots {
		ids[i] = l.ID
	}
	if err := publishJSON(ctx, a.opts.Broker, channelCatalog, map[string]any{"lots": ids}); err != nil {
		return fmt.Errorf("demo: publishing the catalog: %w", err)
	}
	return nil
}

// run judges bids and closes lots until ctx ends.
func (a *auctioneer) run(ctx context.Context, bids <-chan brokers.Message) {
	clock := time.NewTicker(250 * time.Millisecond)
	defer clock.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-bids:
			a.judge(ctx, m)
		case now := <-clock.C:
			a.turn(ctx, now)
		}
	}
}

// judge decides on one bid and publishes the outcome: the lot's new
// state if accepted, and the bidder's result either way.
func (a *auctioneer) judge(ctx context.Context, m brokers.Message) {
	res, bidder, l, ok := a.decide(m.Data, time.Now())
	if !ok {
		// Nobody to answer: a bid must name its bidder and itself.
		a.opts.Logger.Debug("demo auction: unreadable bid dropped", slog.String("data", string(m.Data)))
		return
	}
	if res.Accepted {
		// The lot's state first: whoever sees the accepted result and
		// looks at the lot finds the bid there.
		a.publish(ctx, lotPrefix+l.ID, l)
	}
	a.publish(ctx, resultPrefix+bidder, res)
}

// decide judges the bid in data at now, updating the lot when it is
// accepted. ok is false for a bid that cannot be answered (not JSON, or
// without a valid bidder or id); otherwise res goes to bidder, and l is
// the lot (nil if there is none such).
func (a *auctioneer) decide(data []byte, now time.Time) (res Result, bidder string, l *Lot, ok bool) {
	var bid Bid
	if err := json.Unmarshal(data, &bid); err != nil || !bidderRe.MatchString(bid.Bidder) || !bidIDRe.MatchString(bid.ID) {
		return Result{}, "", nil, false
	}
	res = Result{ID: bid.ID, Lot: bid.Lot, Amount: bid.Amount}
	l = a.lot(bid.Lot)
	switch {
	case l == nil:
		res.Reason = "no such lot on show"
	case l.Status != lotOpen || now.UnixMilli() >= l.Ends:
		res.Reason = "the lot is closed"
	case l.Top == 0 && bid.Amount < l.Start:
		res.Reason = fmt.Sprintf("the opening price is €%d", l.Start)
	case l.Top != 0 && bid.Amount < l.Top+l.Step:
		res.Reason = fmt.Sprintf("a bid must be at least €%d (top €%d + €%d)", l.Top+l.Step, l.Top, l.Step)
	case bid.Amount > maxBid:
		res.Reason = fmt.Sprintf("this house takes bids up to €%d", maxBid)
	default:
		res.Accepted = true
		name := strings.TrimSpace(bid.Name)
		if r := []rune(name); len(r) > 24 {
			name = string(r[:24])
		}
		if name == "" {
			name = "anonymous"
		}
		l.Top, l.Bidder, l.Name, l.BidID = bid.Amount, bid.Bidder, name, bid.ID
		l.Bids++
		if left := time.UnixMilli(l.Ends).Sub(now); left < extendWithin {
			l.Ends = now.Add(extendWithin).UnixMilli()
		}
	}
	if l != nil {
		res.Top = l.Top
	}
	return res, bid.Bidder, l, true
}

func (a *auctioneer) lot(id string) *Lot {
	for _, l := range a.lots {
		if l.ID == id {
			return l
		}
	}
	return nil
}

// turn closes the lots whose time is up, and replaces those closed for
// closedShown with new ones.
func (a *auctioneer) turn(ctx context.Context, now time.Time) {
	changed := false
	for i, l := range a.lots {
		switch {
		case l.Status == lotOpen && now.UnixMilli() >= l.Ends:
			l.Status, l.Closed = lotClosed, now.Add(closedShown).UnixMilli()
			a.publish(ctx, lotPrefix+l.ID, l)
		case l.Status == lotClosed && now.UnixMilli() >= l.Closed:
			nl := a.newLot(now, a.opts.LotDuration)
			a.lots[i] = nl
			a.publish(ctx, lotPrefix+nl.ID, nl)
			changed = true
		}
	}
	if changed {
		if err := a.publishCatalog(ctx); err != nil && ctx.Err() == nil {
			a.opts.Logger.Warn("demo auction", slog.Any("err", err))
		}
	}
}

func (a *auctioneer) publish(ctx context.Context, channel string, v any) {
	if err := publishJSON(ctx, a.opts.Broker, channel, v); err != nil && ctx.Err() == nil {
		a.opts.Logger.Warn("demo auction: publish failed", slog.String("channel", channel), slog.Any("err", err))
	}
}

// bidders are the robot bidders: a separate client of the broker, as any
// bidder is, that follows the lots on the broker and bids on auction.bids
// now and then. They keep the auction moving when nobody else bids.
type bidders struct {
	opts Options
	lots map[string]Lot // the latest state of each lot, as published
	n    int
}

func (r *bidders) run(ctx context.Context, updates <-chan brokers.Message) {
	t := time.NewTimer(jitter(r.opts.RobotInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-updates:
			var l Lot
			if json.Unmarshal(m.Data, &l) == nil && l.ID != "" {
				if l.Status == lotOpen {
					r.lots[l.ID] = l
				} else {
					delete(r.lots, l.ID)
				}
			}
		case <-t.C:
			r.bid(ctx)
			t.Reset(jitter(r.opts.RobotInterval))
		}
	}
}

func (r *bidders) bid(ctx context.Context) {
	var open []Lot
	for _, l := range r.lots {
		if time.Now().UnixMilli() < l.Ends {
			open = append(open, l)
		}
	}
	if len(open) == 0 {
		return
	}
	l := open[rand.IntN(len(open))]
	who := robots[rand.IntN(len(robots))]
	if who.id == l.Bidder {
		return // no robot outbids itself
	}
	amount := l.Start
	if l.Top != 0 {
		amount = l.Top + l.Step*(1+rand.IntN(3))
	}
	r.n++
	bid := Bid{ID: fmt.Sprintf("r%d", r.n), Lot: l.ID, Amount: amount, Bidder: who.id, Name: who.name}
	if err := publishJSON(ctx, r.opts.Broker, channelBids, bid); err != nil && ctx.Err() == nil {
		r.opts.Logger.Debug("demo auction: robot bid not published", slog.Any("err", err))
	}
}
