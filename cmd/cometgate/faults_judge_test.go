package main

// Fault-injection suite (faults_test.go): judging what the clients
// recorded, one subtest per (transport, assertion), and the table of
// recovery times and counts.

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// clientReport is what one client's record shows.
type clientReport struct {
	c  *fclient
	ev []cevent

	histLost      []string
	histLostCount int
	histDups      []string
	histDupCount  int
	histReorders  []string
	falseGaps     []string // gaps on a channel with history although nothing was lost around them
	plainLost     int
	plainSilent   []string      // runs of lost messages without a gap
	lateGaps      int           // runs whose gap came after messages that followed them
	lateGapMax    time.Duration // how late the latest of those came
	plainDupCount int
	replaced      []string // sessions replaced on nodes the fault did not touch
	lostVia       []string // SockJS-over-HTTP sessions ended by a request that failed at the struck node
	sessions      int
	drainMissed   []string
	recovery      []time.Duration // per step, for affected clients; -1: never
}

func (s *scen) judge() {
	byKind := map[string][]*clientReport{}
	for _, c := range s.clients {
		byKind[c.kind] = append(byKind[c.kind], s.analyse(c))
	}
	for _, note := range s.notes {
		s.logf("note: %s", note)
	}
	if s.name == "natscluster" {
		s.t.Run("stream-replicas", func(t *testing.T) {
			if s.replicas[0] < 3 {
				t.Errorf("the history stream %s, created with 3 replicas, had %d once the nodes started: they create or update "+
					"it with one replica (there is no channels[].history_replicas key); the suite set it back to 3 before the fault",
					s.stream, s.replicas[0])
			}
			switch {
			case s.replicas[1] < 0:
				t.Errorf("after the server loss no server that is left answered for the stream within %v", faultRecoverWait)
			case s.replicas[1] < 3:
				t.Errorf("after the server loss the stream had %d replica(s) again: a node that reconnected updated it to one",
					s.replicas[1])
			}
		})
	}
	var rows []faultRow
	for _, tr := range faultTransports {
		reports := byKind[tr.name]
		rows = append(rows, s.row(tr.name, reports))
		s.t.Run(tr.name, func(t *testing.T) {
			t.Run("history-no-loss", func(t *testing.T) {
				for _, r := range reports {
					if r.histLostCount > 0 {
						t.Errorf("%s lost %d message(s) on channels with history: %s", r.c.name, r.histLostCount, strings.Join(r.histLost, "; "))
					}
				}
			})
			t.Run("history-no-dup", func(t *testing.T) {
				for _, r := range reports {
					if r.histDupCount > 0 {
						t.Errorf("%s got %d message(s) twice on channels with history: %s", r.c.name, r.histDupCount, strings.Join(r.histDups, "; "))
					}
				}
			})
			t.Run("history-in-order", func(t *testing.T) {
				for _, r := range reports {
					if len(r.histReorders) > 0 {
						t.Errorf("%s got %d message(s) after a later one on channels with history: %s", r.c.name, len(r.histReorders), strings.Join(first(r.histReorders, 5), "; "))
					}
				}
			})
			t.Run("history-no-false-gap", func(t *testing.T) {
				for _, r := range reports {
					if len(r.falseGaps) > 0 {
						t.Errorf("%s got %d gap packet(s) on channels with history although no message around them was lost: %s", r.c.name, len(r.falseGaps), strings.Join(first(r.falseGaps, 3), "; "))
					}
				}
			})
			t.Run("plain-gap-on-loss", func(t *testing.T) {
				for _, r := range reports {
					if len(r.plainSilent) > 0 {
						t.Errorf("%s lost messages on a channel without history and got no gap packet for them: %s", r.c.name, strings.Join(r.plainSilent, "; "))
					}
				}
			})
			t.Run("sessions-kept", func(t *testing.T) {
				for _, r := range reports {
					if len(r.replaced) > 0 {
						t.Errorf("%s: %d session(s) replaced on nodes the fault did not touch: %s", r.c.name, len(r.replaced), strings.Join(first(r.replaced, 4), "; "))
					}
					if len(r.lostVia) > 0 {
						t.Logf("%s: %d session(s) on untouched nodes ended by a request through the struck node (sockjs-client gives a session up on a failed request): %s",
							r.c.name, len(r.lostVia), strings.Join(first(r.lostVia, 4), "; "))
					}
				}
			})
			if slices.ContainsFunc(s.steps, func(st faultStep) bool { return st.drain }) {
				t.Run("drain-3000", func(t *testing.T) {
					for _, r := range reports {
						if len(r.drainMissed) > 0 {
							t.Errorf("%s: %s", r.c.name, strings.Join(r.drainMissed, "; "))
						}
					}
				})
			}
		})
	}
	s.table.add(s.broker, s.name, s.steps, rows)
	for _, row := range rows {
		s.logf("%s", row.line())
	}
}

func first(a []string, n int) []string {
	if len(a) <= n {
		return a
	}
	return append(a[:n:n], fmt.Sprintf("… %d more", len(a)-n))
}

// expectedFrom is the first number published after the client's first
// subscription to ch was confirmed (0 for a client that never got one:
// everything is lost to it).
func expectedFrom(ev []cevent, ch string, recs []pubRec) int {
	for _, e := range ev {
		if e.kind == evOK && e.ch == ch {
			for n, r := range recs {
				if r.start.After(e.at) {
					return n
				}
			}
			return len(recs)
		}
	}
	return 0
}

func confirmedCount(recs []pubRec) int {
	n := len(recs)
	if n > 0 && recs[n-1].confirmed.IsZero() {
		n--
	}
	return n
}

func ownerOf(sid string) string {
	id, _, _ := strings.Cut(sid, ".")
	return id
}

func (s *scen) nodeIndex(id string) int {
	for _, n := range s.nodes {
		if n.id == id {
			return n.idx
		}
	}
	return -1
}

// around describes what the client went through from..to: session
// changes, breaks, closes, gaps (at most a few).
func around(ev []cevent, from, to time.Time) string {
	var parts []string
	for _, e := range ev {
		if e.at.Before(from) || e.at.After(to) || e.kind == evMsg || e.kind == evOK {
			continue
		}
		parts = append(parts, e.String())
	}
	if len(parts) == 0 {
		return "no session change, break or gap around it"
	}
	return strings.Join(first(parts, 6), " | ")
}

// ranges renders sorted numbers as runs [a, b].
func ranges(nums []int) [][2]int {
	var out [][2]int
	for _, n := range nums {
		if len(out) > 0 && out[len(out)-1][1] == n-1 {
			out[len(out)-1][1] = n
			continue
		}
		out = append(out, [2]int{n, n})
	}
	return out
}

func (s *scen) analyse(c *fclient) *clientReport {
	ev := c.events()
	if !s.stopped.IsZero() {
		// What happened while the clients were being stopped is not theirs.
		for i, e := range ev {
			if e.at.After(s.stopped) {
				ev = ev[:i]
				break
			}
		}
	}
	r := &clientReport{c: c, ev: ev}
	for _, ch := range s.chans {
		recs := ch.pub.records()
		if ch.history {
			r.analyseHistory(ch.name, recs)
		} else {
			r.analysePlain(ch.name, recs)
		}
	}
	s.analyseSessions(r)
	return r
}

// analyseHistory: every number published after the first subscription
// arrives once, in order.
func (r *clientReport) analyseHistory(ch string, recs []pubRec) {
	ev := r.ev
	from, last := expectedFrom(ev, ch, recs), confirmedCount(recs)-1
	seen := map[int][]cevent{}
	runMax := -1
	for _, e := range ev {
		if e.kind != evMsg || e.ch != ch {
			continue
		}
		seen[e.num] = append(seen[e.num], e)
		if len(seen[e.num]) == 1 {
			if e.num < runMax {
				r.histReorders = append(r.histReorders, fmt.Sprintf("%s %d after %d at %s (sid %s)", ch, e.num, runMax, e.at.Format("15:04:05.000"), e.sid))
			}
			runMax = max(runMax, e.num)
		}
	}
	var missing []int
	for n := from; n <= last; n++ {
		if len(seen[n]) == 0 {
			missing = append(missing, n)
		}
	}
	r.histLostCount += len(missing)
	runs := ranges(missing)
	for i, rg := range runs {
		if i == 3 {
			r.histLost = append(r.histLost, fmt.Sprintf("%s: … %d more runs", ch, len(runs)-3))
			break
		}
		pub := recs[rg[0]].start
		r.histLost = append(r.histLost, fmt.Sprintf("%s %d–%d (%d, published from %s): %s", ch, rg[0], rg[1], rg[1]-rg[0]+1,
			pub.Format("15:04:05.000"), around(ev, pub.Add(-2*time.Second), recs[rg[1]].start.Add(10*time.Second))))
	}
	// A gap is false when every message from the last one before it to
	// the highest one its session got in the 5 s after it arrived.
	for gi, g := range ev {
		if g.kind != evGap || g.ch != ch {
			continue
		}
		before, after := -1, -1
		for i, e := range ev {
			if e.kind != evMsg || e.ch != ch {
				continue
			}
			if i < gi {
				before = max(before, e.num)
			} else if e.sid == g.sid && !e.at.After(g.at.Add(5*time.Second)) {
				after = max(after, e.num)
			}
		}
		if after <= before {
			continue // nothing to judge by
		}
		lost := 0
		for n := before + 1; n <= after; n++ {
			if len(seen[n]) == 0 {
				lost++
			}
		}
		if lost == 0 {
			r.falseGaps = append(r.falseGaps, fmt.Sprintf("%s at %s (sid %s, %q) while every message from %d to %d arrived",
				ch, g.at.Format("15:04:05.000"), g.sid, g.text, before, after))
		}
	}
	var dups []int
	for n, es := range seen {
		if len(es) > 1 {
			dups = append(dups, n)
		}
	}
	sort.Ints(dups)
	for i, n := range dups {
		es := seen[n]
		r.histDupCount += len(es) - 1
		if i == 3 {
			r.histDups = append(r.histDups, fmt.Sprintf("%s: … %d more numbers", ch, len(dups)-3))
		}
		if i >= 3 {
			continue
		}
		var curs []string
		for _, e := range es {
			curs = append(curs, fmt.Sprintf("cur %s sid %s at %s", e.cur, e.sid, e.at.Format("15:04:05.000")))
		}
		why := "the same cursor twice: the gateway delivered one stored message twice"
		if es[0].cur != es[1].cur {
			why = "different cursors: the message is stored twice, and no node dropped the copy although both carry the publisher's id " + msgID(ch, n)
			if n < len(recs) && len(recs[n].failures) > 0 {
				why += fmt.Sprintf(" (its first attempt failed with %q; the retry was stored again)", recs[n].failures[0])
			}
		}
		r.histDups = append(r.histDups, fmt.Sprintf("%s %d: %s; %s", ch, n, strings.Join(curs, ", "), why))
	}
}

// analysePlain: every run of lost numbers is followed by a gap packet:
// after the last message before it, and before the next run of lost
// messages begins. A gap that comes after messages that followed the run
// (the gateway sends it once it resubscribed, when live messages may
// flow already) counts, and is tallied as late with how late it was.
func (r *clientReport) analysePlain(ch string, recs []pubRec) {
	ev := r.ev
	from, last := expectedFrom(ev, ch, recs), confirmedCount(recs)-1
	type firstRx struct{ num, idx int }
	var firsts []firstRx
	got := map[int]int{}
	for i, e := range ev {
		if e.kind == evMsg && e.ch == ch {
			got[e.num]++
			if got[e.num] == 1 {
				firsts = append(firsts, firstRx{e.num, i})
			}
		}
	}
	for _, k := range got {
		r.plainDupCount += k - 1
	}
	for n := from; n <= last; n++ {
		if got[n] == 0 {
			r.plainLost++
		}
	}
	// The runs of lost numbers: lo..hi, the index of the message before
	// the run (prevIdx) and of the one after it (idx, len(ev) at the end).
	type run struct{ lo, hi, prevIdx, idx int }
	var runs []run
	prev, prevIdx := from-1, -1
	add := func(lo, hi, idx int) {
		for n := lo; n <= hi; n++ {
			if got[n] == 0 {
				runs = append(runs, run{lo, hi, prevIdx, idx})
				return
			}
		}
	}
	for _, f := range firsts {
		if f.num > prev+1 {
			add(prev+1, f.num-1, f.idx)
		}
		if f.num > prev {
			prev, prevIdx = f.num, f.idx
		}
	}
	add(prev+1, last, len(ev))
	for k, rn := range runs {
		until := len(ev) // the next run's last message before it
		if k+1 < len(runs) {
			until = runs[k+1].prevIdx + 1
		}
		told := false
		for i := rn.prevIdx + 1; i < until && i < len(ev); i++ {
			if ev[i].kind == evGap && ev[i].ch == ch {
				told = true
				if i > rn.idx {
					r.lateGaps++
					r.lateGapMax = max(r.lateGapMax, ev[i].at.Sub(ev[rn.idx].at))
				}
				break
			}
		}
		if told || len(r.plainSilent) >= 3 {
			continue
		}
		lost := 0
		for n := rn.lo; n <= rn.hi; n++ {
			if got[n] == 0 {
				lost++
			}
		}
		pub := recs[rn.lo].start
		r.plainSilent = append(r.plainSilent, fmt.Sprintf("%s: %d of %d–%d (published from %s): %s", ch, lost, rn.lo, rn.hi,
			pub.Format("15:04:05.000"), around(ev, pub.Add(-2*time.Second), recs[rn.hi].start.Add(10*time.Second))))
	}
}

// analyseSessions: sessions replaced on untouched nodes, close 3000 from
// draining nodes, recovery times.
func (s *scen) analyseSessions(r *clientReport) {
	ev := r.ev
	var hellos []int
	for i, e := range ev {
		if e.kind == evHello {
			hellos = append(hellos, i)
		}
	}
	r.sessions = len(hellos)
	for k := 1; k < len(hellos); k++ {
		old, nw := ev[hellos[k-1]], ev[hellos[k]]
		owner := s.nodeIndex(ownerOf(old.sid))
		touched := false
		for _, st := range s.steps {
			if st.node == owner && !st.start.Before(old.at) && !st.start.After(nw.at) {
				touched = true
			}
		}
		if touched {
			continue
		}
		if via := s.failedThroughHit(r.c, ev[hellos[k-1]+1:hellos[k]]); via != "" {
			r.lostVia = append(r.lostVia, fmt.Sprintf("%s: %s", old.sid, via))
			continue
		}
		// Why the client gave it up: what happened to it since its hello,
		// the last few things.
		var why []string
		for i := hellos[k-1] + 1; i < hellos[k]; i++ {
			if e := ev[i]; e.kind == evEnd || e.kind == evBreak || e.kind == evClose || e.kind == evSend {
				why = append(why, e.String())
			}
		}
		if len(why) > 3 {
			why = why[len(why)-3:]
		}
		r.replaced = append(r.replaced, fmt.Sprintf("%s (opened %s) replaced by %s at %s, although %s was not touched; before: %s",
			old.sid, old.at.Format("15:04:05.000"), nw.sid, nw.at.Format("15:04:05.000"), ownerOf(old.sid), strings.Join(why, " | ")))
	}

	for _, st := range s.steps {
		sid, hit := s.hitBy(ev, st)
		if !st.drain || !hit {
			continue
		}
		told := false
		var instead []string
		for _, e := range ev {
			if e.at.Before(st.start) || (e.sid != sid && e.kind != evEnd) {
				continue
			}
			if e.kind == evClose && e.code == 3000 {
				told = true
				break
			}
			if e.kind == evBreak || e.kind == evEnd || e.kind == evClose || e.kind == evSend {
				instead = append(instead, e.String())
			}
			if e.kind == evEnd {
				break
			}
		}
		if !told {
			r.drainMissed = append(r.drainMissed, fmt.Sprintf("session %s on %s (%s at %s) never got close 3000; instead: %s", sid,
				ownerOf(sid), st.what, st.start.Format("15:04:05.000"), strings.Join(first(instead, 4), " | ")))
		}
	}

	// Recovery per step, for the clients the fault hit.
	for _, st := range s.steps {
		if d, hit := s.recovery(ev, st); hit {
			r.recovery = append(r.recovery, d)
		}
	}
}

// sjsHTTPKinds are the clients that carry a SockJS session over HTTP
// requests, as sockjs-client does: it ends the session when one of them
// fails (a receiving request or a send answered with anything but 200 or
// 204, or broken off), where cometgate.js retries the request in the
// session.
var sjsHTTPKinds = map[string]bool{"sockjs-xhr-streaming": true, "sockjs-xhr-polling": true}

// failedThroughHit reports (a description, "" for none) whether one of
// the requests of a SockJS-over-HTTP session went through the node a
// fault struck, while it struck, and failed there: the balancer had sent
// it to that node (a connection the node closed as it drained or died,
// 502), or the node, shutting down, no longer forwarded it (503), or its
// forward was cut (a receiving stream the node was proxying to the
// owner, which broke off with no status when the node stopped
// forwarding; until 2026-12-05 only the first two counted, and such a cut
// failed the run as a session replaced on an untouched node).
// sockjs-client ends the session then, whichever node owns it; the
// session was touched by the fault after all, through its request. Other
// clients retry such a request and keep their session.
func (s *scen) failedThroughHit(c *fclient, ev []cevent) string {
	if !sjsHTTPKinds[c.kind] {
		return ""
	}
	for _, e := range ev {
		refused := (e.kind == evBreak || e.kind == evSend) && (e.code == 502 || e.code == 503)
		cut := e.kind == evBreak && e.code == 0 // a forward cut mid-stream: no status, the body broke off
		if !refused && !cut {
			continue
		}
		for _, st := range s.steps {
			if st.node < 0 || e.node != s.nodes[st.node].id {
				continue
			}
			if !e.at.Before(st.start) && !e.at.After(st.end.Add(faultHealthyAfter)) {
				return fmt.Sprintf("its request failed at %s (%s) at %s: %s", e.node, st.what, e.at.Format("15:04:05.000"), e.text)
			}
		}
	}
	return ""
}

// hitBy returns the client's session when the fault struck, and whether
// that session was on the node the fault touched.
func (s *scen) hitBy(ev []cevent, st faultStep) (sid string, hit bool) {
	for _, e := range ev {
		if e.at.After(st.start) {
			break
		}
		if e.kind == evHello {
			sid = e.sid
		}
	}
	return sid, st.node >= 0 && sid != "" && s.nodeIndex(ownerOf(sid)) == st.node
}

// recovery is how long the client took to get a message again after a
// fault that hit it (-1: it never did):
//   - a node fault hits the clients whose session was on that node: from
//     the fault to the first message of a later session;
//   - a broker outage hits everyone: from the broker's return to the
//     first message after it;
//   - a lost NATS server hits everyone: from the fault to the first
//     message on the main channel published after it.
func (s *scen) recovery(ev []cevent, st faultStep) (time.Duration, bool) {
	firstMsg := func(after time.Time, notSID string) time.Duration {
		for _, e := range ev {
			if e.kind == evMsg && !e.at.Before(after) && (notSID == "" || e.sid != notSID) {
				return e.at.Sub(st.start)
			}
		}
		return -1
	}
	switch {
	case st.node >= 0:
		sid, hit := s.hitBy(ev, st)
		if !hit {
			return 0, false
		}
		return firstMsg(st.start, sid), true
	case st.outage:
		for _, e := range ev {
			if e.kind == evMsg && !e.at.Before(st.end) {
				return e.at.Sub(st.end), true
			}
		}
		return -1, true
	}
	recs := s.main.records()
	n0 := len(recs)
	for n, r := range recs {
		if r.start.After(st.start) {
			n0 = n
			break
		}
	}
	for _, e := range ev {
		if e.kind == evMsg && e.ch == s.chans[0].name && e.num >= n0 {
			return e.at.Sub(st.start), true
		}
	}
	return -1, true
}

// ---- the table ---------------------------------------------------------------

// faultRow is one transport in one scenario.
type faultRow struct {
	transport      string
	clients        int
	sessions       int
	recovery       []time.Duration
	histLost       int
	histDup        int
	falseGaps      int
	plainLost      int
	plainSilent    int // clients with lost runs and no gap
	lateGaps       int
	lateGapMax     time.Duration
	replaced       int
	lostVia        int
	drainMissed    int
	drainChecked   bool
	worstRecovered string
}

func (s *scen) row(transport string, reports []*clientReport) faultRow {
	row := faultRow{transport: transport, clients: len(reports)}
	var worst time.Duration
	for _, r := range reports {
		row.sessions += r.sessions
		row.recovery = append(row.recovery, r.recovery...)
		for _, d := range r.recovery {
			if d > worst {
				worst, row.worstRecovered = d, r.c.name
			}
		}
		row.histLost += r.histLostCount
		row.histDup += r.histDupCount
		row.falseGaps += len(r.falseGaps)
		row.plainLost += r.plainLost
		row.lateGaps += r.lateGaps
		row.lateGapMax = max(row.lateGapMax, r.lateGapMax)
		if len(r.plainSilent) > 0 {
			row.plainSilent++
		}
		row.replaced += len(r.replaced)
		row.lostVia += len(r.lostVia)
		row.drainMissed += len(r.drainMissed)
	}
	row.drainChecked = slices.ContainsFunc(s.steps, func(st faultStep) bool { return st.drain })
	return row
}

// recoveryText is "affected: median / max (never: n)".
func (row faultRow) recoveryText() string {
	var ok []time.Duration
	never := 0
	for _, d := range row.recovery {
		if d < 0 {
			never++
			continue
		}
		ok = append(ok, d)
	}
	if len(row.recovery) == 0 {
		return "not affected"
	}
	txt := fmt.Sprintf("%d affected", len(row.recovery))
	if len(ok) > 0 {
		slices.Sort(ok)
		txt += fmt.Sprintf(": median %.1fs, max %.1fs", ok[len(ok)/2].Seconds(), ok[len(ok)-1].Seconds())
	}
	if never > 0 {
		txt += fmt.Sprintf(", %d never recovered", never)
	}
	return txt
}

func (row faultRow) line() string {
	drain := -1
	if row.drainChecked {
		drain = row.drainMissed
	}
	late := "0"
	if row.lateGaps > 0 {
		late = fmt.Sprintf("%d (%.1fs)", row.lateGaps, row.lateGapMax.Seconds())
	}
	return fmt.Sprintf("%-20s | %-44s | %8d | %9d | %8d | %9d | %10d | %12d | %10s | %8d | %7d | %7d",
		row.transport, row.recoveryText(), row.sessions, row.histLost, row.histDup, row.falseGaps, row.plainLost, row.plainSilent, late, row.replaced, row.lostVia, drain)
}

const faultTableHeader = "transport            | recovery (fault → first message after)       | sessions | hist lost | hist dup | false gap | plain lost | plain no-gap |  late gaps | replaced | via hit | no 3000"

// faultTable collects every scenario's rows.
type faultTable struct {
	mu   sync.Mutex
	runs []faultRun
}

type faultRun struct {
	broker, scenario string
	steps            []faultStep
	rows             []faultRow
}

func (ft *faultTable) add(broker, scenario string, steps []faultStep, rows []faultRow) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.runs = append(ft.runs, faultRun{broker, scenario, steps, rows})
}

// log writes the table (and to COMETGATE_FAULTS_REPORT when set).
func (ft *faultTable) log(t *testing.T, form string, took time.Duration) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	order := map[string]int{}
	for i, sc := range faultScenarios {
		order[sc.name] = i
	}
	sort.Slice(ft.runs, func(i, j int) bool {
		a, b := ft.runs[i], ft.runs[j]
		if a.broker != b.broker {
			return a.broker < b.broker // nats first
		}
		return order[a.scenario] < order[b.scenario]
	})
	var b strings.Builder
	fmt.Fprintf(&b, "fault-injection suite (%s): %d scenario runs in %v\n", form, len(ft.runs), took.Round(time.Second))
	b.WriteString("columns: recovery of the clients the fault hit (median, max): a node's fault hits its sessions (from the fault to the first message of a new session), " +
		"a broker outage hits everyone (from the broker's return), a lost NATS server too (from the fault to the first message published after it); sessions opened by the 3 clients; " +
		"history messages lost / duplicated; gaps on history channels where nothing was lost; plain-channel messages lost; clients with a loss on a plain channel and no gap; " +
		"losses whose gap came only after messages that followed them (counted as told; the latest, in seconds after the first such message); " +
		"sessions replaced on untouched nodes; SockJS-over-HTTP sessions on untouched nodes that sockjs-client gave up because a request of theirs failed at the struck node; drained sessions not told 3000 (-1: no drain)\n")
	for _, run := range ft.runs {
		var what []string
		for _, st := range run.steps {
			what = append(what, st.what)
		}
		fmt.Fprintf(&b, "\n== %s / %s: %s\n%s\n", run.broker, run.scenario, strings.Join(what, ", "), faultTableHeader)
		for _, row := range run.rows {
			b.WriteString(row.line() + "\n")
		}
	}
	t.Log("\n" + b.String())
	if path := os.Getenv("COMETGATE_FAULTS_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Errorf("writing the report: %v", err)
		}
	}
}
