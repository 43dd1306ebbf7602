package main

// Browser tests of the three demos (web/ticker.html, auction.html,
// election.html) against a node that runs the demo backend, as
// "cometgate" with no configuration does. With COMETGATE_SCREENSHOTS=DIR
// they also write DIR/ticker.png, DIR/auction.png and DIR/election.png
// (the README's pictures, kept in web/screenshots).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cometgate/cometgate/web/demo"
)

// screenshotsEnv names the folder the demo tests write their pictures to.
const screenshotsEnv = "COMETGATE_SCREENSHOTS"

// startDemoNode starts a node with the demo backend, made predictable:
// no robot bidders and lots that stay open for an hour (the tests are the
// only bidders), then whatever mod changes.
func startDemoNode(t *testing.T, mod func(*demo.Options), env ...string) *node {
	t.Helper()
	return launchNode(t, nil, append([]string{"COMETGATE_DEMO_ENABLED=on"}, env...), hooks{demo: func(o *demo.Options) {
		o.RobotInterval = -1
		o.LotDuration = time.Hour
		if mod != nil {
			mod(o)
		}
	}})
}

// connected waits for the page's header to say connected over transport.
func (b *tab) connected(transport string) {
	b.t.Helper()
	b.waitFor(fmt.Sprintf(`document.getElementById("state").textContent === "connected · %s"`, transport),
		`document.getElementById("state").textContent`)
}

// waitNavigated waits until the page that a script navigated to, whose
// location.search is search, has loaded (evaluations fail meanwhile, while
// the old page goes away).
func (b *tab) waitNavigated(search string) {
	b.t.Helper()
	deadline := time.Now().Add(browserTimeout)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.readyState === "complete" ? location.search : ""`))
		cancel()
		if err == nil && got == search {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("the page did not navigate to %s: %q, %v", search, got, err)
		}
		select {
		case <-b.ctx.Done():
			b.t.Fatal(b.ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// noNotice checks that the page shows no "may have missed updates" notice
// and wrote no error to its console.
func (b *tab) noNotice(page string) {
	b.t.Helper()
	var hidden bool
	b.eval(`document.getElementById("notice").hidden`, &hidden)
	if !hidden {
		var text string
		b.eval(`document.getElementById("notice").textContent`, &text)
		b.t.Fatalf("%s shows a notice: %s", page, text)
	}
	if p := b.problems(); len(p) > 0 {
		b.t.Fatalf("%s: console errors:\n  %s", page, strings.Join(p, "\n  "))
	}
}

// screenshot checks a picture of the page and, with COMETGATE_SCREENSHOTS
// set, writes it there as name.png.
func (b *tab) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserTimeout)
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	cancel()
	if err != nil {
		b.t.Fatal(err)
	}
	checkScreenshot(b.t, shot)
	if dir := os.Getenv(screenshotsEnv); dir != "" {
		path := filepath.Join(dir, name+".png")
		if err := os.WriteFile(path, shot, 0o644); err != nil {
			b.t.Fatal(err)
		}
		b.t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	}
}

func TestBrowserDemoTicker(t *testing.T) {
	n := startDemoNode(t, nil)
	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/ticker.html")))
	b.connected("websocket")
	diag := `{received: tickerState.received, skipped: tickerState.skipped, cells: document.querySelectorAll("#quotes .quote").length}`
	// The backend's prices fill the grid, and cells change.
	b.waitFor(`document.querySelectorAll("#quotes .quote").length >= 250`, diag)
	var first struct {
		Symbol string `json:"symbol"`
		N      string `json:"n"`
	}
	// A cell appears with its symbol's first price and shows it (with its
	// update number n) at the next paint: take one that was painted.
	b.waitFor(`document.querySelector("#quotes .quote[data-n]") !== null`, diag)
	b.eval(`(() => { const q = document.querySelector("#quotes .quote[data-n]"); return {symbol: q.dataset.symbol, n: q.dataset.n}; })()`, &first)
	b.waitFor(fmt.Sprintf(`Number(document.querySelector('#quotes .quote[data-symbol=%q]').dataset.n) > %s`, first.Symbol, first.N), diag)
	var cell []string
	b.eval(fmt.Sprintf(`Array.from(document.querySelector('#quotes .quote[data-symbol=%q]').children, (c) => c.textContent)`, first.Symbol), &cell)
	if len(cell) != 3 || cell[0] != first.Symbol || !strings.HasSuffix(cell[2], "%") {
		t.Fatalf("ticker cell %q", cell)
	}
	if _, err := strconv.ParseFloat(cell[1], 64); err != nil {
		t.Fatalf("ticker cell %q: price: %v", cell, err)
	}
	b.screenshot("ticker")
	b.noNotice("ticker.html")

	// Forced to long-polling, and throttled: between two polls the tab's
	// queue holds many prices, and the gateway keeps only the newest of
	// each symbol. The page counts the prices it never got from the
	// symbols' update numbers, and the gateway's metric counts them too.
	b.eval(`(() => { const s = document.getElementById("transport"); s.value = "poll"; s.dispatchEvent(new Event("change")); return true; })()`, nil)
	b.waitNavigated("?transport=poll")
	b.connected("poll")
	b.waitFor(`location.search === "?transport=poll" && document.querySelectorAll("#quotes .quote").length >= 100`, diag)
	b.eval(`document.getElementById("throttle").click(), true`, nil)
	b.waitFor(`tickerState.skipped > 0 && Number(document.getElementById("server-conflated").textContent) > 0`,
		diag+`, server: document.getElementById("server-conflated").textContent`)
	b.eval(`document.getElementById("throttle").click(), true`, nil)
	// A throttled tab may also be late to poll again for longer than
	// session.disconnect_delay, on a busy machine: its session then ends
	// (the page's poll gets 404) and the client opens a new one, and
	// the page says updates may have been missed. That is the gateway
	// working, not a failure of the page.
	for _, p := range b.problems() {
		if !strings.Contains(p, "404") || !strings.Contains(p, "/poll/") {
			t.Fatalf("ticker.html?transport=poll: console error: %s", p)
		}
	}
}

func TestBrowserDemoAuction(t *testing.T) {
	n := startDemoNode(t, nil)
	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/auction.html")))
	b.connected("websocket")
	lotsDiag := `document.getElementById("lots").innerText`
	b.waitFor(`document.querySelectorAll("#lots .lot").length === 4 && !document.querySelector("#lots .lot button").disabled`, lotsDiag)
	var lot struct {
		ID    string `json:"id"`
		Input string `json:"input"`
		Top   string `json:"top"`
	}
	b.eval(`(() => { const c = document.querySelector("#lots .lot"); return {id: c.dataset.lot, input: c.querySelector("input").value, top: c.querySelector(".top").dataset.top}; })()`, &lot)
	opening, err := strconv.Atoi(lot.Input)
	if err != nil || lot.Top != "0" {
		t.Fatalf("a new lot: %+v", lot)
	}
	card := fmt.Sprintf(`document.querySelector('#lots .lot[data-lot=%q]')`, lot.ID)
	bid := func(amount int) {
		t.Helper()
		b.eval(fmt.Sprintf(`(() => { const c = %s; c.querySelector("input").value = "%d"; c.querySelector("button").click(); return true; })()`, card, amount), nil)
	}

	// Below the opening price: the auctioneer rejects it, and the page
	// says so on the lot and in the list of bids.
	bid(opening - 1)
	b.waitFor(card+`.querySelector(".answer").dataset.state === "rejected"`, card+`.innerText`)
	var answer string
	b.eval(card+`.querySelector(".answer").textContent`, &answer)
	if !strings.Contains(answer, "rejected") || !strings.Contains(answer, "opening price") {
		t.Fatalf("answer to a bid under the opening price: %q", answer)
	}
	b.waitFor(`document.querySelector("#mybids tr[data-state=rejected]") !== null`, `document.getElementById("mybids").innerText`)

	// The opening price: accepted, and the lot's top bid.
	bid(opening)
	b.waitFor(card+`.querySelector(".answer").dataset.state === "accepted" && `+card+fmt.Sprintf(`.querySelector(".top").dataset.top === "%d"`, opening), card+`.innerText`)
	var who string
	b.eval(card+`.querySelector(".who").textContent`, &who)
	if !strings.Contains(who, "(you)") {
		t.Fatalf("top bidder line %q", who)
	}
	b.screenshot("auction")
	b.noNotice("auction.html")

	// A late visitor, over SSE: nobody bids any more (no robots), so the
	// top bid it shows can only come from the history, at once; and the
	// answers to its bidder's recent bids come back too.
	b.do(chromedp.Navigate(n.url("/auction.html?transport=sse")))
	b.connected("sse")
	b.waitFor(card+` !== null && `+card+fmt.Sprintf(`.querySelector(".top").dataset.top === "%d"`, opening), lotsDiag)
	b.waitFor(`document.querySelectorAll("#mybids tr[data-state=rejected]").length === 1 && document.querySelectorAll("#mybids tr[data-state=accepted]").length === 1`,
		`document.getElementById("mybids").innerText`)
	// Outbid yourself by less than the increment: rejected with the
	// amount to beat.
	bid(opening + 1)
	b.waitFor(card+`.querySelector(".answer").dataset.state === "rejected"`, card+`.innerText`)
	b.eval(card+`.querySelector(".answer").textContent`, &answer)
	if !strings.Contains(answer, "at least") {
		t.Fatalf("answer to a bid under the increment: %q", answer)
	}
	b.noNotice("auction.html?transport=sse")
}

func TestBrowserDemoElection(t *testing.T) {
	// The test moves the count on; once complete it stands still for an
	// hour, so the page opened after it can only fill from the history.
	steps := make(chan time.Time)
	n := startDemoNode(t, func(o *demo.Options) {
		o.CountSteps = steps
		o.RecountAfter = time.Hour
		o.TickInterval = time.Hour // the ticker is not watched here
	})
	step := func() {
		t.Helper()
		select {
		case steps <- time.Now():
		case <-time.After(browserTimeout):
			t.Fatal("the count does not take a step")
		}
	}
	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/election.html")))
	b.connected("websocket")
	diag := `document.getElementById("national").innerText`
	b.waitFor(`document.querySelectorAll("#regions .region").length === 16 && document.querySelectorAll("#bars .bar").length === 4`, diag)
	// Live: the count moves on while the page watches.
	b.waitFor(`document.getElementById("counted").textContent.startsWith("0 ")`, diag)
	step()
	b.waitFor(`!document.getElementById("counted").textContent.startsWith("0 ")`, diag)
	// The rest of the count, as fast as the backend takes steps.
	done := make(chan struct{})
	var feeding sync.WaitGroup
	feeding.Go(func() {
		for {
			select {
			case steps <- time.Now():
			case <-done:
				return
			}
		}
	})
	b.waitFor(`document.getElementById("declared").textContent === "16 of 16"`, diag)
	close(done)
	feeding.Wait()
	var final string
	b.eval(`document.getElementById("counted").textContent`, &final)

	// Late: the whole board at once, with the final totals.
	b.do(chromedp.Reload())
	b.connected("websocket")
	b.waitFor(`electionState.firstPaint !== null`, diag)
	var got struct {
		Declared string `json:"declared"`
		Counted  string `json:"counted"`
		Regions  int    `json:"regions"`
		Won      int    `json:"won"`
	}
	b.eval(`({declared: document.getElementById("declared").textContent, counted: document.getElementById("counted").textContent,
	  regions: document.querySelectorAll("#regions .region").length,
	  won: Array.from(document.querySelectorAll("#regions .lead-party"), (e) => e.textContent).filter((s) => s.startsWith("won by")).length})`, &got)
	if got.Declared != "16 of 16" || got.Counted != final || got.Regions != 16 || got.Won != 16 {
		t.Fatalf("late page: %+v, want 16 of 16 declared and %q counted", got, final)
	}
	b.screenshot("election")
	b.noNotice("election.html")
}

// When the node goes away and another takes its place, the ticker page
// reconnects by itself; ticker.> keeps no history, so the gateway reports
// a gap on the resubscription, and the page says it may have missed
// prices, then goes on updating.
func TestBrowserDemoGapNotice(t *testing.T) {
	addr := freePort(t)
	a := startDemoNode(t, nil, "COMETGATE_HTTP_LISTEN="+addr)
	b := newTab(t)
	b.do(chromedp.Navigate(a.url("/ticker.html")))
	b.connected("websocket")
	diag := `{received: tickerState.received, notice: document.getElementById("notice").textContent, state: document.getElementById("state").textContent}`
	b.waitFor(`tickerState.received > 100`, diag)
	b.noNotice("ticker.html")
	a.shutdown(t)
	startDemoNode(t, nil, "COMETGATE_HTTP_LISTEN="+addr)
	b.waitFor(`!document.getElementById("notice").hidden && /may have missed prices/.test(document.getElementById("notice").textContent)`, diag)
	b.connected("websocket")
	var received int
	b.eval(`tickerState.received`, &received)
	b.waitFor(fmt.Sprintf(`tickerState.received > %d + 100`, received), diag)
}

// With no configuration but the test's listener, the demo runs on the
// embedded broker (demo.enabled auto) and its election is there at once
// for a late subscriber, from history; a node on an external broker
// (here the first node's embedded NATS) does not run it.
func TestDemoRunsByDefaultOnTheEmbeddedBroker(t *testing.T) {
	a := launchNode(t, nil, []string{"COMETGATE_DEMO_ENABLED=auto", "COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0"}, hooks{})
	if !strings.Contains(a.logs.String(), "demo backend is running") {
		t.Fatalf("no demo backend on the embedded broker:\n%s", a.logs)
	}
	s := openSSE(t, a.url("/sse?ch=election.national&latest.election.national=1"))
	if p := next(t, s.packets, "msg"); p["ch"] != "election.national" || p["cur"] == nil {
		t.Fatalf("first message %v", p)
	}
	b := launchNode(t, nil, []string{"COMETGATE_DEMO_ENABLED=auto", "COMETGATE_BROKER_KIND=nats", "COMETGATE_BROKER_NATS_URLS=" + a.emb.ClientURL()}, hooks{})
	if strings.Contains(b.logs.String(), "demo backend") {
		t.Fatalf("a demo backend on an external broker:\n%s", b.logs)
	}
}
