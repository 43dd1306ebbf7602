package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"
)

// TestSessionLayout: what a delivery touches fits the object's first two
// cache lines, what a write's prefetch reads (downMemory) and the first
// queued body (pendingOne) the third, and the object starts a line (it
// is in the 448-byte size class, whose objects are whole lines apart;
// the class below is 416), as the layout comment on Session says.
func TestSessionLayout(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the layout is for 64-bit platforms")
	}
	var s Session
	if size := unsafe.Sizeof(s); size <= 416 || size > 448 {
		t.Errorf("Session is %d bytes, want 417 to 448 (the 448-byte size class, whose objects start a cache line): pad it", size)
	}
	if end := unsafe.Offsetof(s.room) + unsafe.Sizeof(s.room); end > 128 {
		t.Errorf("the hot fields end at byte %d, past the first two cache lines", end)
	}
	if start, end := unsafe.Offsetof(s.downMemory), unsafe.Offsetof(s.pendingOne)+unsafe.Sizeof(s.pendingOne); start < 128 || end > 192 {
		t.Errorf("downMemory and pendingOne are at bytes %d to %d, not in the third cache line", start, end)
	}
}

// TestSessionKeepsNoWrittenBody: a session whose queue outgrew its inline
// slot (pendingOne: the hello and a second packet queued before anything
// was written) keeps neither body once both are written, and queues in
// the slot again; an idle session holding its hello for good was 150
// bytes of every idle WebSocket.
func TestSessionKeepsNoWrittenBody(t *testing.T) {
	g := newTestGateway(t, nil)
	s, err := g.Open(OpenOptions{Transport: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	s.push(okBody(7, ""))
	tr := newFakeTransport(0)
	if err := s.Attach(tr, false); err != nil {
		t.Fatal(err)
	}
	nextType(t, tr, TypeHello)
	nextType(t, tr, TypeOK)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pendingOne[0] != nil {
		t.Fatalf("the session still holds a written %s packet", s.pendingOne[0].typ)
	}
	for _, b := range s.pending[:cap(s.pending)] {
		if b != nil {
			t.Fatalf("the queue's array still holds a written %s packet", b.typ)
		}
	}
	if cap(s.pending) != 1 {
		t.Fatalf("the queue went on in an array of %d rather than in the session", cap(s.pending))
	}
}

// TestSessionDone: Done, made when first asked for, is closed once the
// session has ended, whether it was asked for before the end or after.
func TestSessionDone(t *testing.T) {
	g := newTestGateway(t, nil)
	before, _ := openSession(t, g, false)
	after, _ := openSession(t, g, false)
	waiting := before.Done()
	select {
	case <-waiting:
		t.Fatal("Done is closed while the session is open")
	default:
	}
	before.Close(DisconnectShutdown)
	after.Close(DisconnectShutdown)
	<-waiting
	if before.Done() != waiting {
		t.Fatal("Done made a second channel")
	}
	waitFor(t, "the other session released", func() bool {
		after.mu.Lock()
		defer after.mu.Unlock()
		return after.released
	})
	select {
	case <-after.Done():
	default:
		t.Fatal("Done asked for after the end is not closed")
	}
}

// TestSessionStateTableIsDocumented: the table in sessionState's doc
// comment is the transitions table, cell for cell, and no transition goes
// back.
func TestSessionStateTableIsDocumented(t *testing.T) {
	src, err := os.ReadFile("session.go")
	if err != nil {
		t.Fatal(err)
	}
	parse := func(name string) sessionState {
		t.Helper()
		for st, n := range stateNames {
			if n == name {
				return sessionState(st)
			}
		}
		t.Fatalf("unknown state %q in the documented table", name)
		return 0
	}
	var header []string
	rows := 0
	for line := range strings.Lines(string(src)) {
		cells, ok := strings.CutPrefix(line, "//\t")
		if !ok {
			continue
		}
		f := strings.Fields(cells)
		switch {
		case len(f) > 0 && f[0] == "state":
			header = f[1:]
			if len(header) != int(numEvents) {
				t.Fatalf("documented table has events %v", header)
			}
			for ev, name := range header {
				if eventNames[ev] != name {
					t.Errorf("documented event %d is %q, want %q", ev, name, eventNames[ev])
				}
			}
		case header != nil && len(f) == int(numEvents)+1:
			st := parse(f[0])
			if st != sessionState(rows) {
				t.Errorf("documented row %d is %v", rows, st)
			}
			rows++
			for ev, cell := range f[1:] {
				want := st // "-": cannot happen, nothing changes
				if cell != "-" {
					want = parse(cell)
				}
				if got := st.next(sessionEvent(ev)); got != want {
					t.Errorf("%v on %v: table %v, documented %v", st, sessionEvent(ev), got, want)
				}
			}
		}
	}
	if rows != int(numStates) {
		t.Fatalf("documented table has %d rows, want %d", rows, numStates)
	}
	for st := range numStates {
		for ev := range numEvents {
			if next := st.next(ev); next < st {
				t.Errorf("%v on %v goes back to %v", st, ev, next)
			}
		}
	}
}

// lifecycle reads a session's state and writer bookkeeping.
func lifecycle(s *Session) (st sessionState, writing, expiryArmed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.writing, s.expiry != nil
}

func waitState(t *testing.T, s *Session, want sessionState) {
	t.Helper()
	waitFor(t, "state "+want.String(), func() bool { st, _, _ := lifecycle(s); return st == want })
}

// TestSessionTransitions drives real sessions through every reachable cell
// of the sessionState table. A case names the state it starts from, the
// event, and whether a writer is still running after the event; the state
// it must reach is the table's (followed by idle when no writer runs).
// Each case runs in a synctest bubble, so the disconnect delays are
// virtual: no timer fires while the test itself is busy.
func TestSessionTransitions(t *testing.T) {
	type setup struct {
		s       *Session
		tr      *fakeTransport // the downstream, if any
		release func()         // unblocks a write stuck on tr
	}
	open := func(t *testing.T, g *testGateway, retain bool) setup {
		s, tr := openSession(t, g, retain)
		return setup{s: s, tr: tr, release: func() {}}
	}
	// stuck: an open session whose writer is stuck in a write that even
	// Close does not end, until release.
	stuck := func(t *testing.T, g *testGateway, retain bool) setup {
		s, tr := openSession(t, g, retain)
		release := tr.Block(true)
		send(s, `{"op":"ping","id":1}`)
		<-tr.entered
		return setup{s: s, tr: tr, release: release}
	}
	// detachedRetaining: an open retaining session that never had a
	// downstream, with the given disconnect delay.
	detachedRetaining := func(t *testing.T, g *testGateway, delay time.Duration) setup {
		s, err := g.Open(OpenOptions{Transport: "poll", Retain: true, DisconnectDelay: delay})
		if err != nil {
			t.Fatal(err)
		}
		return setup{s: s, release: func() {}}
	}
	flushing := func(x setup) setup {
		x.s.Close(DisconnectShutdown)
		return x
	}
	cut := func(x setup) setup {
		x.s.Close(DisconnectGone())
		return x
	}

	for _, c := range []struct {
		name    string
		from    sessionState
		ev      sessionEvent
		writing bool // a writer still runs after the event
		start   func(t *testing.T, g *testGateway) setup
		event   func(t *testing.T, x setup)
		check   func(t *testing.T, x setup)
	}{
		{
			name: "Close with a downstream", from: stateOpen, ev: evClose, writing: true,
			start: func(t *testing.T, g *testGateway) setup { return stuck(t, g, false) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectShutdown) },
		},
		{
			name: "Close of a retaining session without downstream", from: stateOpen, ev: evClose,
			start: func(t *testing.T, g *testGateway) setup { return detachedRetaining(t, g, time.Minute) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectShutdown) },
			check: func(t *testing.T, x setup) {
				if _, _, armed := lifecycle(x.s); !armed {
					t.Error("the close packet waits for the next request without an expiry")
				}
			},
		},
		{
			name: "Close(DisconnectGone) during a write", from: stateOpen, ev: evCut, writing: true,
			start: func(t *testing.T, g *testGateway) setup { return stuck(t, g, false) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectGone()) },
			check: func(t *testing.T, x setup) {
				if r := x.tr.Reasons(); len(r) != 1 || r[0] != DisconnectGone() {
					t.Errorf("the stuck downstream was closed with %v", r)
				}
			},
		},
		{
			name: "Close(DisconnectGone)", from: stateOpen, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return open(t, g, false) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectGone()) },
		},
		{
			name: "Close without a way to deliver the close packet", from: stateOpen, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup {
				s, err := g.Open(OpenOptions{Transport: "fake"})
				if err != nil {
					t.Fatal(err)
				}
				return setup{s: s, release: func() {}}
			},
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectShutdown) },
		},
		{
			name: "abort", from: stateOpen, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return open(t, g, true) },
			event: func(t *testing.T, x setup) { x.s.abort(DisconnectGone()) },
		},
		{
			name: "Detach of a session that does not retain", from: stateOpen, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return open(t, g, false) },
			event: func(t *testing.T, x setup) { x.s.Detach(x.tr) },
		},
		{
			name: "write failure of a session that does not retain", from: stateOpen, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return open(t, g, false) },
			event: func(t *testing.T, x setup) {
				x.tr.Fail(errors.New("broken pipe"))
				send(x.s, `{"op":"ping","id":1}`)
				waitDone(t, x.s)
			},
		},
		{
			name: "expiry", from: stateOpen, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return detachedRetaining(t, g, time.Second) },
			event: func(t *testing.T, x setup) {
				tr := newFakeTransport(0)
				_ = x.s.Attach(tr, true) // the hello completes the request: the expiry starts
				nextType(t, tr, TypeHello)
				waitDone(t, x.s)
			},
			check: func(t *testing.T, x setup) {
				if r := x.s.Reason(); r != DisconnectExpired {
					t.Errorf("reason %v", r)
				}
			},
		},
		{
			name: "writer stops", from: stateOpen, ev: evIdle,
			start: func(t *testing.T, g *testGateway) setup { return open(t, g, false) },
			event: func(t *testing.T, x setup) {
				ping(t, x.s, x.tr, 1)
				waitFor(t, "the writer to stop", func() bool { _, w, _ := lifecycle(x.s); return !w })
			},
			check: func(t *testing.T, x setup) {
				if _, _, armed := lifecycle(x.s); armed {
					t.Error("expiry armed with a downstream attached")
				}
			},
		},
		{
			name: "writer stops after a one-shot write", from: stateOpen, ev: evIdle,
			start: func(t *testing.T, g *testGateway) setup { return detachedRetaining(t, g, time.Minute) },
			event: func(t *testing.T, x setup) {
				tr := newFakeTransport(0)
				_ = x.s.Attach(tr, true)
				nextType(t, tr, TypeHello)
				waitFor(t, "the writer to stop", func() bool { _, w, _ := lifecycle(x.s); return !w })
			},
			check: func(t *testing.T, x setup) {
				if _, _, armed := lifecycle(x.s); !armed {
					t.Error("no expiry armed without a downstream")
				}
			},
		},
		{
			name: "Close again", from: stateFlushing, ev: evClose,
			start: func(t *testing.T, g *testGateway) setup { return flushing(detachedRetaining(t, g, time.Minute)) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectTooLarge) },
			check: func(t *testing.T, x setup) {
				if r := x.s.Reason(); r != DisconnectShutdown {
					t.Errorf("a second Close changed the reason to %v", r)
				}
			},
		},
		{
			name: "abort without a writer", from: stateFlushing, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return flushing(detachedRetaining(t, g, time.Minute)) },
			event: func(t *testing.T, x setup) { x.s.abort(DisconnectGone()) },
			check: func(t *testing.T, x setup) {
				if r := x.s.Reason(); r != DisconnectShutdown {
					t.Errorf("abort changed the reason to %v", r)
				}
			},
		},
		{
			name: "abort during a write", from: stateFlushing, ev: evCut, writing: true,
			start: func(t *testing.T, g *testGateway) setup { return flushing(stuck(t, g, false)) },
			event: func(t *testing.T, x setup) { x.s.abort(DisconnectGone()) },
		},
		{
			name: "expiry of the close packet", from: stateFlushing, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup {
				return flushing(detachedRetaining(t, g, time.Second))
			},
			event: func(t *testing.T, x setup) { waitDone(t, x.s) },
			check: func(t *testing.T, x setup) {
				if r := x.s.Reason(); r != DisconnectShutdown {
					t.Errorf("reason %v", r)
				}
			},
		},
		{
			name: "Detach of a session that does not retain", from: stateFlushing, ev: evCut, writing: true,
			start: func(t *testing.T, g *testGateway) setup { return flushing(stuck(t, g, false)) },
			event: func(t *testing.T, x setup) { x.s.Detach(x.tr) },
		},
		{
			name: "the writer takes the close packet", from: stateFlushing, ev: evTaken, writing: true,
			start: func(t *testing.T, g *testGateway) setup { return flushing(detachedRetaining(t, g, time.Minute)) },
			event: func(t *testing.T, x setup) {
				tr := newFakeTransport(0)
				release := tr.Block(true)
				t.Cleanup(release)
				if err := x.s.Attach(tr, true); err != nil {
					t.Fatal(err)
				}
				<-tr.entered
			},
		},
		{
			name: "writer stops without a downstream", from: stateFlushing, ev: evIdle,
			start: func(t *testing.T, g *testGateway) setup {
				x := stuck(t, g, true)
				x.s.Close(DisconnectShutdown) // queued behind the stuck write
				x.s.Detach(x.tr)              // the session retains: it waits for the next request
				return x
			},
			event: func(t *testing.T, x setup) {
				x.release()
				waitFor(t, "the writer to stop", func() bool { _, w, _ := lifecycle(x.s); return !w })
			},
			check: func(t *testing.T, x setup) {
				if _, _, armed := lifecycle(x.s); !armed {
					t.Error("no expiry armed without a downstream")
				}
			},
		},
		{
			name: "Close", from: stateClosing, ev: evClose, writing: true,
			start: func(t *testing.T, g *testGateway) setup { return cut(stuck(t, g, false)) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectShutdown) },
			check: func(t *testing.T, x setup) {
				if r := x.s.Reason(); r != DisconnectGone() {
					t.Errorf("reason %v", r)
				}
			},
		},
		{
			name: "abort", from: stateClosing, ev: evCut, writing: true,
			start: func(t *testing.T, g *testGateway) setup {
				x := flushing(stuck(t, g, false))
				x.s.Detach(x.tr)
				return x
			},
			event: func(t *testing.T, x setup) { x.s.abort(DisconnectGone()) },
		},
		{
			name: "writer stops", from: stateClosing, ev: evIdle,
			start: func(t *testing.T, g *testGateway) setup { return cut(stuck(t, g, false)) },
			event: func(t *testing.T, x setup) { x.release(); waitDone(t, x.s) },
		},
		{
			name: "Close", from: stateEnded, ev: evClose,
			start: func(t *testing.T, g *testGateway) setup { return cut(open(t, g, false)) },
			event: func(t *testing.T, x setup) { x.s.Close(DisconnectShutdown) },
		},
		{
			name: "abort", from: stateEnded, ev: evCut,
			start: func(t *testing.T, g *testGateway) setup { return cut(open(t, g, false)) },
			event: func(t *testing.T, x setup) { x.s.abort(DisconnectShutdown) },
		},
	} {
		t.Run(c.from.String()+"/"+c.ev.String()+"/"+c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := newTestGateway(t, nil)
				x := c.start(t, g)
				t.Cleanup(func() { x.release(); x.s.abort(DisconnectGone()) }) // before Shutdown
				if c.from == stateEnded {
					waitDone(t, x.s)
				}
				if st, _, _ := lifecycle(x.s); st != c.from {
					t.Fatalf("set-up reached %v, want %v", st, c.from)
				}
				c.event(t, x)
				want := c.from.next(c.ev)
				if !c.writing {
					want = want.next(evIdle)
				}
				waitState(t, x.s, want)
				if _, writing, _ := lifecycle(x.s); writing != c.writing {
					t.Errorf("writer running: %v, want %v", writing, c.writing)
				}
				if want == stateEnded && !isDone(x.s) {
					waitDone(t, x.s) // Done is closed right after the transition
				}
				if want != stateEnded && isDone(x.s) {
					t.Errorf("Done closed in state %v", want)
				}
				if c.check != nil {
					c.check(t, x)
				}
				err := x.s.Attach(newFakeTransport(0), false)
				if accepts := want < stateClosing; (err == nil) != accepts {
					t.Errorf("Attach in state %v: %v", want, err)
				}
			})
		})
	}
}

// TestSessionOpenCloseLog: a session logs one Debug line when it opens and
// one when it ends, with who, where from and, at the end, how long and why.
func TestSessionOpenCloseLog(t *testing.T) {
	// Read only after Done: the close line is written before Done is
	// closed, and nothing else logs meanwhile.
	var buf bytes.Buffer
	g := newTestGateway(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	s, err := g.Open(OpenOptions{Transport: "fake", RemoteAddr: "192.0.2.7:4711", Principal: &Principal{Subject: "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close(DisconnectShutdown)
	waitDone(t, s)

	var lines []map[string]any
	for line := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["sid"] == s.ID() {
			lines = append(lines, m)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d log lines for the session, want 2: %s", len(lines), buf.String())
	}
	for i, msg := range []string{"session opened", "session closed"} {
		m := lines[i]
		if m["msg"] != msg || m["level"] != "INFO" || m["transport"] != "fake" ||
			m["remote"] != "192.0.2.7:4711" || m["subject"] != "alice" {
			t.Errorf("line %d: %v", i, m)
		}
	}
	if end := lines[1]; end["code"] != float64(DisconnectShutdown.Code) || end["reason"] != DisconnectShutdown.Reason || end["duration"] == nil {
		t.Errorf("close line: %v", end)
	}
}

// TestSessionWaiting: Waiting says whether a request attached now would
// be held: nothing queued for it, and it is the downstream.
func TestSessionWaiting(t *testing.T) {
	g := newTestGateway(t, nil)
	s, poll1 := openPolled(t, g)
	waitFor(t, "the answered poll to be detached", func() bool { return s.Waiting(nil) })
	if s.Waiting(poll1) {
		t.Error("Waiting for a request that is no longer the downstream")
	}
	send(s, `{"op":"ping","id":1}`) // its ok waits for the next request
	if s.Waiting(nil) {
		t.Error("Waiting with an ok queued")
	}
	poll2 := newFakeTransport(0)
	_ = s.Attach(poll2, true)
	nextType(t, poll2, TypeOK)
	poll3 := newFakeTransport(0)
	_ = s.Attach(poll3, true) // the ok is not acknowledged: sent again
	nextType(t, poll3, TypeOK)
	send(s, `{"op":"ack","seq":2}`)
	poll4 := newFakeTransport(0)
	_ = s.Attach(poll4, true)
	if !s.Waiting(poll4) {
		t.Error("not Waiting with nothing to send")
	}
}
