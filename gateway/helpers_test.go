package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/cometgate/cometgate/brokers"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for something that should happen; it is
// generous because tests run under -race on busy machines. Nothing asserts
// how fast anything is.
const waitTimeout = 10 * time.Second

// quiet is how long a test waits to see that a packet does NOT arrive.
const quiet = 50 * time.Millisecond

// testRules are the namespaces every test gateway has.
func testRules() Rules {
	return Rules{
		{Pattern: "demo.x.>", Subscribe: Anyone, Publish: Anyone},
		{Pattern: "t.>", Subscribe: Anyone, Publish: Anyone},
		{Pattern: "pub.>", Subscribe: Anyone, Publish: Anyone},
		{Pattern: "ro.>", Subscribe: Anyone, Publish: Nobody},
		{Pattern: "nosub.>", Subscribe: Nobody, Publish: Anyone},
		{Pattern: "drop.>", Subscribe: Anyone, Slow: SlowDropOldest},
		{Pattern: "conf.>", Subscribe: Anyone, Slow: SlowConflate},
	}
}

type testGateway struct {
	*Gateway
	b *fakeBroker
	// shutdownErr allows the Cleanup's Shutdown to fail (the test made it
	// fail on purpose).
	shutdownErr bool
}

// delivered reports whether every message published so far has been
// queued on its sessions: the broker has handed each one over
// (fakeBroker.Drained), and the write workers it was posted to
// (writers.go) have fanned it out. The broker's handler returns once the
// message is posted, so Drained alone does not say the sessions have it.
func (g *testGateway) delivered() bool {
	if !g.b.Drained() {
		return false
	}
	for _, w := range g.hub.writers.workers {
		w.mu.Lock()
		busy := w.running || len(w.jobs) > 0
		w.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

// newTestGateway starts a gateway on a fake broker. Cleanup shuts it down,
// checks that every session ended and every broker subscription was
// dropped, and closes the broker.
func newTestGateway(t *testing.T, mod func(*Config)) *testGateway {
	t.Helper()
	b := newFakeBroker()
	cfg := Config{
		NodeID: "n1",
		Rules:  testRules(),
		Logger: slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&cfg)
	}
	g, err := New(cfg, b)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tg := &testGateway{Gateway: g, b: b}
	t.Cleanup(func() {
		if err := shutdownWithin(g, waitTimeout); err != nil && !tg.shutdownErr {
			t.Errorf("Shutdown: %v", err)
		}
		waitFor(t, "every session to end", func() bool { return g.SessionCount() == 0 })
		waitFor(t, "every broker subscription to be dropped", func() bool { return b.Subs() == 0 })
		if n := g.hub.patterns(); n != 0 {
			t.Errorf("hub still holds %d patterns", n)
		}
		_ = b.Close()
	})
	return tg
}

// shutdownWithin shuts g down, giving it d, and returns Shutdown's error.
func shutdownWithin(g *Gateway, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return g.Shutdown(ctx)
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitDone(t *testing.T, s *Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("session %s did not end", s.ID())
	}
}

func isDone(s *Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// wire is a server→client packet as a client decodes it. Unknown fields
// are an error, so a packet with a field the protocol does not document
// fails the test.
type wire struct {
	Seq       uint64          `json:"seq"`
	T         string          `json:"t"`
	V         int             `json:"v"`
	Sid       string          `json:"sid"`
	Hb        *int            `json:"hb"`
	ID        int64           `json:"id"`
	Ch        string          `json:"ch"`
	Sub       string          `json:"sub"`
	Cur       string          `json:"cur"`
	Data      json.RawMessage `json:"data"`
	Text      *string         `json:"text"`
	B64       *string         `json:"b64"`
	Code      int             `json:"code"`
	Error     string          `json:"error"`
	Reason    string          `json:"reason"`
	Reconnect *bool           `json:"reconnect"`
	Delay     *int            `json:"delay"`
	Oldest    string          `json:"oldest"`
	History   *bool           `json:"history"`

	raw  string
	body *Body
}

func (w wire) String() string { return w.raw }

func decodeWire(t *testing.T, s sent) wire {
	t.Helper()
	if !utf8.ValidString(s.JSON) {
		t.Fatalf("packet is not UTF-8: %q", s.JSON)
	}
	if strings.ContainsAny(s.JSON, "<>&\u2028\u2029\n") {
		t.Fatalf("packet is not HTML-safe or has a newline: %s", s.JSON)
	}
	var w wire
	dec := json.NewDecoder(strings.NewReader(s.JSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		t.Fatalf("packet %s: %v", s.JSON, err)
	}
	if dec.More() {
		t.Fatalf("packet %s: trailing data", s.JSON)
	}
	if w.Seq != s.Seq {
		t.Fatalf("packet %s: seq %d, Packet.Seq %d", s.JSON, w.Seq, s.Seq)
	}
	if got, want := len(s.JSON), (Packet{Seq: s.Seq, body: s.Body}).JSONLen(); got != want {
		t.Fatalf("packet %s: %d bytes, JSONLen %d", s.JSON, got, want)
	}
	w.raw, w.body = s.JSON, s.Body
	return w
}

// next returns the next packet written to tr.
func next(t *testing.T, tr *fakeTransport) wire {
	t.Helper()
	select {
	case s := <-tr.sink:
		return decodeWire(t, s)
	case <-time.After(waitTimeout):
		t.Fatalf("no packet within %v", waitTimeout)
		return wire{}
	}
}

// nextType returns the next packet and checks its type.
func nextType(t *testing.T, tr *fakeTransport, typ string) wire {
	t.Helper()
	w := next(t, tr)
	if w.T != typ {
		t.Fatalf("got %s, want a %q packet", w, typ)
	}
	return w
}

// noPacket checks that nothing is written to tr for a short while.
func noPacket(t *testing.T, tr *fakeTransport) {
	t.Helper()
	select {
	case s := <-tr.sink:
		t.Fatalf("unexpected packet %s", s.JSON)
	case <-time.After(quiet):
	}
}

// openSession opens a session with a persistent fake downstream and reads
// its hello.
func openSession(t *testing.T, g *testGateway, retain bool) (*Session, *fakeTransport) {
	t.Helper()
	return openWith(t, g, OpenOptions{Transport: "fake", Retain: retain})
}

// openWith opens a session with opts and a persistent fake downstream,
// and reads its hello.
func openWith(t *testing.T, g *testGateway, opts OpenOptions) (*Session, *fakeTransport) {
	t.Helper()
	s, err := g.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	tr := newFakeTransport(0)
	if err := s.Attach(tr, false); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if w := nextType(t, tr, TypeHello); w.Seq != 1 {
		t.Fatalf("hello has seq %d", w.Seq)
	}
	return s, tr
}

// openPolled opens a retaining session as a polling client does: its
// first request gets the hello and goes, and the client acknowledges it.
// The session is left without a request attached; the first request's
// downstream is returned too.
func openPolled(t *testing.T, g *testGateway) (*Session, *fakeTransport) {
	t.Helper()
	s, err := g.Open(OpenOptions{Transport: "poll", Retain: true})
	if err != nil {
		t.Fatal(err)
	}
	poll := newFakeTransport(0)
	_ = s.Attach(poll, true)
	nextType(t, poll, TypeHello)
	send(s, `{"op":"ack","seq":1}`)
	return s, poll
}

// send hands one client frame to s.
func send(s *Session, format string, args ...any) {
	s.HandleFrame(context.Background(), fmt.Appendf(nil, format, args...))
}

// subscribe subscribes s to pattern and checks the ok.
func subscribe(t *testing.T, s *Session, tr *fakeTransport, id int, pattern string) {
	t.Helper()
	send(s, `{"op":"sub","id":%d,"ch":%q}`, id, pattern)
	w := next(t, tr)
	if w.T != TypeOK || w.ID != int64(id) || w.Ch != pattern {
		t.Fatalf("subscribe %q: got %s", pattern, w)
	}
}

// expectErr reads the next packet and checks it is an err with code, id
// and a message containing msg.
func expectErr(t *testing.T, tr *fakeTransport, id int64, code int, msg string) wire {
	t.Helper()
	w := next(t, tr)
	if w.T != TypeErr || w.Code != code || w.ID != id || !strings.Contains(w.Error, msg) {
		t.Fatalf("got %s, want err id %d code %d containing %q", w, id, code, msg)
	}
	return w
}

// expectClose reads the next packet and checks it is the close for d.
func expectClose(t *testing.T, tr *fakeTransport, d Disconnect) wire {
	t.Helper()
	w := next(t, tr)
	if w.T != TypeClose || w.Code != d.Code || w.Reason != d.Reason || w.Reconnect == nil || *w.Reconnect != d.Reconnect() {
		t.Fatalf("got %s, want close %d %q reconnect %v", w, d.Code, d.Reason, d.Reconnect())
	}
	// A reconnect comes with a jittered delay, at most 5 s; a final close
	// has none.
	if (w.Delay != nil) != d.Reconnect() || (w.Delay != nil && (*w.Delay < 0 || *w.Delay >= 5000)) {
		t.Fatalf("got %s: delay advice wrong for reconnect %v", w, d.Reconnect())
	}
	return w
}

// ping sends a ping and checks its ok: the session is alive and its writer
// works.
func ping(t *testing.T, s *Session, tr *fakeTransport, id int) {
	t.Helper()
	send(s, `{"op":"ping","id":%d}`, id)
	if w := next(t, tr); w.T != TypeOK || w.ID != int64(id) {
		t.Fatalf("ping %d: got %s", id, w)
	}
}

func publish(t *testing.T, b *fakeBroker, ch string, data string) {
	t.Helper()
	if err := b.Publish(context.Background(), brokers.Message{Channel: ch, Data: []byte(data)}); err != nil {
		t.Fatalf("publish %s: %v", ch, err)
	}
}

// metricValue is the value of the counter or gauge name with labels
// (name, value pairs) in reg, or -1 when it is not there.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

// patterns returns the number of broker subscriptions the hub holds.
func (h *hub) patterns() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.entries)
}
