package natsbroker_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// rnd returns a random token usable in subjects and stream names.
func rnd() string { return strings.ToLower(rand.Text()[:12]) }

// jsOf returns a JetStream client on nc.
func jsOf(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// keepAccountDir creates a stream that is never deleted. nats-server
// removes an account's store directories in the background when its last
// stream is deleted, which races with creating the next stream (the
// creation fails with "error creating store for stream"); tests that
// delete streams and create others keep this one around. Brokers retry
// that failure, but slowly.
func keepAccountDir(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "ANCHOR", Subjects: []string{"anchor.>"}}); err != nil {
		t.Fatal(err)
	}
}

// historyFactory returns a brokertest.HistoryFactory: every call without
// opts.Pattern declares a new stream "CGHIST_<random>" on "hist.<random>.>"
// (deleted at the end of the test through js), and newBroker connects a
// Broker with it.
func historyFactory(js jetstream.JetStream, memory bool, newBroker func(t *testing.T, opts natsbroker.Options) *natsbroker.Broker) brokertest.HistoryFactory {
	var mu sync.Mutex
	specs := make(map[string]natsbroker.StreamSpec)
	return func(t *testing.T, ho brokertest.HistoryOptions) (brokers.Broker, string) {
		t.Helper()
		mu.Lock()
		spec, ok := specs[ho.Pattern]
		mu.Unlock()
		pattern := ho.Pattern
		if !ok {
			if pattern != "" {
				t.Fatalf("factory: unknown pattern %q", pattern)
			}
			id := rnd()
			pattern = "hist." + id + ".>"
			spec = natsbroker.StreamSpec{Name: "CGHIST_" + id, Patterns: []string{pattern}, Create: true, Memory: memory}
			if ho.Short {
				spec.MaxMsgs = 10
			}
			mu.Lock()
			specs[pattern] = spec
			mu.Unlock()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				if err := js.DeleteStream(ctx, spec.Name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
					t.Errorf("delete stream %s: %v", spec.Name, err)
				}
			})
		}
		return newBroker(t, natsbroker.Options{Streams: []natsbroker.StreamSpec{spec}}), pattern
	}
}

func TestHistoryConformanceEmbedded(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{})
	brokertest.WaitUntil(t, "embedded broker ready", e.Broker().Ready)
	js := jsOf(t, e.Broker().Conn())
	keepAccountDir(t, js)
	brokertest.RunHistory(t, historyFactory(js, false, func(t *testing.T, opts natsbroker.Options) *natsbroker.Broker {
		b, err := e.NewBroker(t.Context(), opts)
		if err != nil {
			t.Fatalf("NewBroker: %v", err)
		}
		return b
	}))
}

// externalNATS returns NATS_URL (default nats://127.0.0.1:4222) when a
// server with JetStream answers there; otherwise it skips the test (fails
// it when CI is set).
func externalNATS(t *testing.T) string {
	t.Helper()
	u := os.Getenv("NATS_URL")
	if u == "" {
		u = nats.DefaultURL
	}
	unavailable := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	nc, err := nats.Connect(u, nats.Timeout(2*time.Second), nats.Name("cometgate-test-probe"))
	if err != nil {
		unavailable("external NATS server %s not reachable (set NATS_URL): %v", u, err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err == nil {
		_, err = js.AccountInfo(ctx)
	}
	if err != nil {
		unavailable("external NATS server %s has no JetStream: %v", u, err)
	}
	return u
}

func TestHistoryConformanceExternal(t *testing.T) {
	u := externalNATS(t)
	nc := rawConn(t, u)
	brokertest.RunHistory(t, historyFactory(jsOf(t, nc), true, func(t *testing.T, opts natsbroker.Options) *natsbroker.Broker {
		opts.URLs = []string{u}
		return connect(t, opts)
	}))
}

// The contract suite, unchanged, on channels that all have history: every
// Subscribe is a JetStream consumer and every Publish a JetStream publish.
func TestConformanceJetStream(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{})
	streams := []natsbroker.StreamSpec{{Name: "CGTEST", Patterns: []string{"cgtest.>"}, Create: true, MaxMsgs: 1 << 20}}
	brokertest.Run(t, func(t *testing.T) brokers.Broker {
		b, err := e.NewBroker(t.Context(), natsbroker.Options{Streams: streams})
		if err != nil {
			t.Fatalf("NewBroker: %v", err)
		}
		if !b.HasHistory("cgtest.x.>") {
			t.Fatal("no history on cgtest.x.>")
		}
		return b
	})
}

func TestHasHistory(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{SubjectPrefix: "app", Streams: []natsbroker.StreamSpec{
		{Name: "A", Patterns: []string{"a.>", "x.*.y"}, Create: true},
		{Name: "B", Patterns: []string{"b.*"}, Create: true},
	}})
	b := e.Broker()
	for p, want := range map[string]bool{
		"a.1": true, "a.>": true, "a.*.*": true, "a": false, ">": false, "*.1": false,
		"x.1.y": true, "x.*.y": true, "x.1.z": false, "x.>": false,
		"b.1": true, "b.*": true, "b.1.2": false, "b.>": false,
		"app.a.1": false, "": false, "a..b": false,
	} {
		if got := b.HasHistory(p); got != want {
			t.Errorf("HasHistory(%q) = %v, want %v", p, got, want)
		}
	}
	// The prefix applies to the stream's subjects.
	info, err := jsOf(t, b.Conn()).Stream(ctxT(t), "A")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().Config.Subjects; !slices.Equal(got, []string{"app.a.>", "app.x.*.y"}) {
		t.Errorf("stream A subjects %v", got)
	}
}

func TestStreamSpecErrors(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0"})
	js := jsOf(t, e.Broker().Conn())
	brokertest.WaitUntil(t, "Ready", e.Broker().Ready)
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "EXISTING", Subjects: []string{"ex.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "PERSUBJ", Subjects: []string{"ps.>"}, MaxMsgsPerSubject: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "WORK", Subjects: []string{"wq.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		specs []natsbroker.StreamSpec
		want  []string // substrings of the error
	}{
		{"overlap", []natsbroker.StreamSpec{
			{Name: "S1", Patterns: []string{"o.a.>"}, Create: true},
			{Name: "S2", Patterns: []string{"o.*.b"}, Create: true},
		}, []string{`"S1"`, `"S2"`, "overlap"}},
		{"duplicate name", []natsbroker.StreamSpec{
			{Name: "S1", Patterns: []string{"d.a"}, Create: true},
			{Name: "S1", Patterns: []string{"d.b"}, Create: true},
		}, []string{`"S1"`, "twice"}},
		{"empty name", []natsbroker.StreamSpec{{Patterns: []string{"e.>"}}}, []string{"empty stream name"}},
		{"bad name", []natsbroker.StreamSpec{{Name: "a.b", Patterns: []string{"e.>"}}}, []string{`"a.b"`}},
		{"no patterns", []natsbroker.StreamSpec{{Name: "NOPAT"}}, []string{`"NOPAT"`, "no channel patterns"}},
		{"bad pattern", []natsbroker.StreamSpec{{Name: "BADPAT", Patterns: []string{"a.>.b"}}}, []string{`"BADPAT"`, `"a.>.b"`}},
		{"negative", []natsbroker.StreamSpec{{Name: "NEG", Patterns: []string{"n.>"}, MaxMsgs: -1}}, []string{`"NEG"`, "negative"}},
		{"missing", []natsbroker.StreamSpec{{Name: "MISSING", Patterns: []string{"m.>"}}}, []string{`"MISSING"`, "does not exist"}},
		{"not covered", []natsbroker.StreamSpec{{Name: "EXISTING", Patterns: []string{"ex.a", "other.>"}}}, []string{`"EXISTING"`, `"other.>"`, "ex.>"}},
		{"per-subject limit", []natsbroker.StreamSpec{{Name: "PERSUBJ", Patterns: []string{"ps.>"}}}, []string{`"PERSUBJ"`, "per-subject"}},
		{"work queue", []natsbroker.StreamSpec{{Name: "WORK", Patterns: []string{"wq.>"}}}, []string{`"WORK"`, "retention"}},
		{"server refuses overlap", []natsbroker.StreamSpec{{Name: "OVER", Patterns: []string{"ex.a"}, Create: true}}, []string{`"OVER"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, how := range []string{"Connect", "NewBroker"} {
				var err error
				var b *natsbroker.Broker
				var st brokertest.StateLog
				if how == "Connect" {
					b, err = natsbroker.Connect(ctxT(t), natsbroker.Options{URLs: []string{e.ClientURL()}, Streams: tc.specs, OnState: st.Record})
					if st.Count(brokers.StateConnected)+st.Count(brokers.StateClosed)+st.Count(brokers.StateDisconnected) != 0 {
						t.Errorf("a failed Connect reported states %v", st.List())
					}
				} else {
					b, err = e.NewBroker(ctxT(t), natsbroker.Options{Streams: tc.specs})
				}
				if err == nil {
					_ = b.Close()
					t.Fatalf("%s accepted %+v", how, tc.specs)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s error %q lacks %q", how, err, w)
					}
				}
			}
		})
	}

	// An existing stream that covers the patterns is used as it is.
	b, err := e.NewBroker(ctxT(t), natsbroker.Options{Streams: []natsbroker.StreamSpec{{Name: "EXISTING", Patterns: []string{"ex.a", "ex.b.>"}}}})
	if err != nil {
		t.Fatalf("existing stream refused: %v", err)
	}
	defer b.Close()
	brokertest.WaitUntil(t, "Ready", b.Ready)
	if !b.HasHistory("ex.b.c") || b.HasHistory("ex.c") {
		t.Error("HasHistory does not follow the spec's patterns")
	}
}

func TestStreamsWithoutJetStream(t *testing.T) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(waitTimeout) {
		t.Fatal("server not ready")
	}
	_, err = natsbroker.Connect(ctxT(t), natsbroker.Options{
		URLs:    []string{srv.ClientURL()},
		Streams: []natsbroker.StreamSpec{{Name: "S", Patterns: []string{"s.>"}, Create: true}},
	})
	if err == nil || !strings.Contains(err.Error(), "JetStream is not enabled") {
		t.Fatalf("Connect with streams to a server without JetStream: %v", err)
	}
}

// A Create stream is created with the spec's limits, and updated to a
// changed spec on the next connect.
func TestStreamCreateAndUpdate(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{})
	js := jsOf(t, e.Broker().Conn())
	spec := natsbroker.StreamSpec{Name: "LIM", Patterns: []string{"lim.>"}, MaxAge: time.Hour, MaxMsgs: 100, MaxBytes: 1 << 20, Create: true}
	b, err := e.NewBroker(ctxT(t), natsbroker.Options{Streams: []natsbroker.StreamSpec{spec}})
	if err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "Ready", b.Ready)
	str, err := js.Stream(ctxT(t), "LIM")
	if err != nil {
		t.Fatal(err)
	}
	cfg := str.CachedInfo().Config
	if cfg.MaxAge != time.Hour || cfg.MaxMsgs != 100 || cfg.MaxBytes != 1<<20 || cfg.Storage != jetstream.FileStorage ||
		cfg.Retention != jetstream.LimitsPolicy || cfg.MaxMsgsPerSubject > 0 {
		t.Errorf("stream config %+v", cfg)
	}

	// Publish returns once the message is stored.
	for i := range 3 {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: "lim.x", Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
		info, err := str.Info(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != uint64(i+1) {
			t.Fatalf("after Publish %d returned the stream holds %d messages", i, info.State.Msgs)
		}
	}
	_ = b.Close()

	spec.MaxMsgs = 0
	b, err = e.NewBroker(ctxT(t), natsbroker.Options{Streams: []natsbroker.StreamSpec{spec}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	info, err := str.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxMsgs != -1 || info.State.Msgs != 3 {
		t.Errorf("after update: MaxMsgs %d (want unlimited), %d messages (want 3 kept)", info.Config.MaxMsgs, info.State.Msgs)
	}
}

// seqRecorder records the messages of a history subscription.
type seqRecorder struct{ brokertest.Inbox }

// check waits until r holds exactly want (data, in order), with
// increasing positions.
func (r *seqRecorder) check(t *testing.T, what string, want ...string) {
	t.Helper()
	brokertest.WaitUntil(t, fmt.Sprintf("%s: %d messages", what, len(want)), func() bool { return len(r.Messages()) >= len(want) })
	time.Sleep(50 * time.Millisecond) // stragglers (duplicates) would arrive now
	got := r.Messages()
	var data []string
	for i, m := range got {
		data = append(data, string(m.Data))
		if m.Seq == 0 || (i > 0 && m.Seq <= got[i-1].Seq) {
			t.Errorf("%s: message %d %q has Seq %d after %d", what, i, m.Data, m.Seq, got[max(i-1, 0)].Seq)
		}
	}
	if !slices.Equal(data, want) {
		t.Fatalf("%s: got %q, want %q", what, data, want)
	}
}

func publishN(t *testing.T, b brokers.Broker, ch, tag string, from, to int) []string {
	t.Helper()
	var out []string
	for i := from; i < to; i++ {
		d := tag + strconv.Itoa(i)
		if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(d)}); err != nil {
			t.Fatalf("Publish %s: %v", d, err)
		}
		out = append(out, d)
	}
	return out
}

// The broker's connection is cut while the server keeps storing what
// others publish; after it is restored, every history subscription
// resumes exactly where it was: nothing lost, nothing twice.
func TestHistoryResumeAfterConnectionCut(t *testing.T) {
	streams := []natsbroker.StreamSpec{{Name: "CUT", Patterns: []string{"cut.>"}, Create: true}}
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0", Streams: streams})
	pub := e.Broker() // publishes straight to the server
	p := brokertest.NewProxy(t, strings.TrimPrefix(e.ClientURL(), "nats://"))

	var st brokertest.StateLog
	b := connect(t, natsbroker.Options{
		URLs:             []string{"nats://" + p.Addr()},
		Streams:          streams,
		ReconnectWait:    10 * time.Millisecond,
		MaxReconnectWait: 100 * time.Millisecond,
		OnState:          st.Record,
	})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	brokertest.WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) == 1 })

	var all, quiet, late, core seqRecorder
	subAll, err := b.Subscribe(ctxT(t), "cut.>", all.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer subAll.Unsubscribe()
	// quiet gets nothing before the outage: it resumes from its start
	// point, not from a delivered message.
	subQuiet, err := b.Subscribe(ctxT(t), "cut.quiet", quiet.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer subQuiet.Unsubscribe()

	want := publishN(t, pub, "cut.a", "m", 0, 10)
	all.check(t, "before the cut", want...)

	p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	brokertest.WaitUntil(t, "StateDisconnected", func() bool { return st.Count(brokers.StateDisconnected) == 1 })
	// Stored while the broker is away.
	want = append(want, publishN(t, pub, "cut.a", "m", 10, 20)...)
	quietWant := publishN(t, pub, "cut.quiet", "q", 0, 3)
	// Subscribing while disconnected works; it starts at the end of the
	// stream once connected.
	subLate, err := b.Subscribe(ctxT(t), "cut.a", late.Handle)
	if err != nil {
		t.Fatalf("Subscribe while disconnected: %v", err)
	}
	defer subLate.Unsubscribe()
	// A plain (no history) subscription is restored too.
	subCore, err := b.Subscribe(ctxT(t), "nohist.x", core.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer subCore.Unsubscribe()
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "cut.a", Data: []byte("refused")}); !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Publish while cut: %v, want ErrUnavailable", err)
	}
	if _, err := b.Replay(ctxT(t), "cut.>", 0, func(brokers.Message) {}); !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Replay while cut: %v, want ErrUnavailable", err)
	}

	p.Restore()
	brokertest.WaitUntil(t, "Ready again", b.Ready)
	brokertest.WaitUntil(t, "StateConnected again", func() bool { return st.Count(brokers.StateConnected) == 2 })
	want = append(want, publishN(t, b, "cut.a", "m", 20, 30)...)
	if err := pub.Publish(ctxT(t), brokers.Message{Channel: "nohist.x", Data: []byte("core")}); err != nil {
		t.Fatal(err)
	}
	// In stream order: what was stored before, during and after the cut.
	allWant := slices.Concat(want[:20], quietWant, want[20:])
	all.check(t, "across the cut", allWant...)
	quiet.check(t, "quiet subscription across the cut", quietWant...)
	late.check(t, "subscribed while cut", want[20:]...)
	// The plain subscription's first delivery after the reconnect is a
	// Gap marker: what was published while it was down is lost to it.
	brokertest.WaitUntil(t, "core message", func() bool { return len(core.Messages()) == 2 })
	if got := core.Messages(); !got[0].Gap || got[1].Gap || string(got[1].Data) != "core" {
		t.Errorf("plain subscription after the reconnect got %+v, want a Gap marker, then the message", got)
	}
	if b.HistoryGaps() != 0 {
		t.Errorf("HistoryGaps() = %d, want 0", b.HistoryGaps())
	}
}

// restartRig is an embedded server behind a proxy, restarted on the same
// port while the broker under test is cut off: the broker's consumers are
// lost with the server, and others publish before it is back.
type restartRig struct {
	t     *testing.T
	host  string // the server's host:port
	store string // "" for a new temporary store per server
	specs []natsbroker.StreamSpec
	e     *natsbroker.Embedded
	p     *brokertest.Proxy
	b     *natsbroker.Broker
}

func newRestartRig(t *testing.T, store string, specs []natsbroker.StreamSpec) *restartRig {
	r := &restartRig{t: t, store: store, specs: specs}
	r.e = startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: store, Streams: specs})
	r.host = strings.TrimPrefix(r.e.ClientURL(), "nats://")
	r.p = brokertest.NewProxy(t, r.host)
	r.b = connect(t, natsbroker.Options{
		URLs:             []string{"nats://" + r.p.Addr()},
		Streams:          specs,
		ReconnectWait:    10 * time.Millisecond,
		MaxReconnectWait: 100 * time.Millisecond,
	})
	brokertest.WaitUntil(t, "Ready", r.b.Ready)
	return r
}

// restart cuts the broker off, restarts the server, runs during (the
// broker still cut off) and reconnects the broker.
func (r *restartRig) restart(during func(other *natsbroker.Broker)) {
	t := r.t
	r.p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !r.b.Ready() })
	if err := r.e.Close(); err != nil {
		t.Fatal(err)
	}
	r.e = startEmbedded(t, natsbroker.EmbeddedOptions{Listen: r.host, StoreDir: r.store, Streams: r.specs})
	brokertest.WaitUntil(t, "embedded broker ready", r.e.Broker().Ready)
	during(r.e.Broker())
	r.p.Restore()
	brokertest.WaitUntil(t, "Ready again", r.b.Ready)
}

// The server restarts with the same store while the broker is away, and
// others publish meanwhile: subscriptions resume exactly where they were,
// also one that had received nothing yet; history is intact.
func TestHistoryServerRestart(t *testing.T) {
	rig := newRestartRig(t, t.TempDir(), []natsbroker.StreamSpec{{Name: "RESTART", Patterns: []string{"rs.>"}, Create: true}})
	b := rig.b
	var r, quiet seqRecorder
	sub, err := b.Subscribe(ctxT(t), "rs.>", r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := publishN(t, b, "rs.a", "m", 0, 5)
	r.check(t, "before restart", want...)
	// Subscribed on a stream that holds messages already, and given none
	// before the outage: it must resume from where it started.
	subQuiet, err := b.Subscribe(ctxT(t), "rs.*", quiet.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer subQuiet.Unsubscribe()

	rig.restart(func(other *natsbroker.Broker) {
		want = append(want, publishN(t, other, "rs.a", "m", 5, 10)...)
	})
	want = append(want, publishN(t, b, "rs.a", "m", 10, 15)...)
	r.check(t, "across the restart", want...)
	quiet.check(t, "subscribed before the restart, nothing received before", want[5:]...)

	var replayed seqRecorder
	res, err := b.Replay(ctxT(t), "rs.>", 0, replayed.Handle)
	if err != nil || res.Gap {
		t.Fatalf("Replay: %+v, %v", res, err)
	}
	replayed.check(t, "replay after restart", want...)
	if got := replayed.Messages(); !slices.EqualFunc(got, r.Messages(), func(a, b brokers.Message) bool { return a.Seq == b.Seq }) {
		t.Error("replayed positions differ from live ones")
	}
	if b.HistoryGaps() != 0 {
		t.Errorf("HistoryGaps() = %d, want 0", b.HistoryGaps())
	}
}

// The server restarts with the same store while the broker is away (its
// consumers are lost), and retention removes messages the subscription
// had not received yet: it resumes at the oldest stored message, counts
// the gap and tells it to the Handler, once, right before that message.
func TestHistoryRetentionGapAcrossRestart(t *testing.T) {
	rig := newRestartRig(t, t.TempDir(), []natsbroker.StreamSpec{{Name: "RET", Patterns: []string{"ret.>"}, Create: true, MaxMsgs: 10}})
	b := rig.b
	var r seqRecorder
	sub, err := b.Subscribe(ctxT(t), "ret.>", r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := publishN(t, b, "ret.a", "m", 0, 3) // Seq 1..3
	r.check(t, "before the restart", want...)

	var kept []string
	rig.restart(func(other *natsbroker.Broker) {
		// Seq 4..33; the stream keeps 24..33.
		kept = publishN(t, other, "ret.a", "m", 3, 33)[20:]
	})
	want = slices.Concat(want, kept, publishN(t, b, "ret.a", "m", 33, 35))

	brokertest.WaitUntil(t, "all messages", func() bool { return len(r.Messages()) >= len(want)+1 })
	time.Sleep(50 * time.Millisecond) // stragglers would arrive now
	got := r.Messages()
	if len(got) != len(want)+1 {
		t.Fatalf("got %d deliveries, want %d messages and one gap marker", len(got), len(want))
	}
	if m := got[3]; !m.Gap || m.Seq != 24 || m.Channel != "" || m.Data != nil {
		t.Fatalf("delivery 3 is %+v, want a gap marker with Seq 24", m)
	}
	got = slices.Delete(got, 3, 4)
	for i, m := range got {
		if m.Gap || string(m.Data) != want[i] {
			t.Fatalf("delivery %d is %+v, want %q", i, m, want[i])
		}
	}
	if got[3].Seq != 24 {
		t.Errorf("first message after the gap has Seq %d, want 24", got[3].Seq)
	}
	if b.HistoryGaps() != 1 {
		t.Errorf("HistoryGaps() = %d, want 1", b.HistoryGaps())
	}
}

// A memory stream is lost with its server and recreated empty by another
// node, which publishes more messages than the broker had seen before
// the broker is back: its sequences started over. Live subscriptions
// notice (by the stream's creation time), deliver the new stream from
// its start and count a gap; a cursor beyond the new stream's end
// replays as a gap.
func TestHistoryStreamRecreated(t *testing.T) {
	rig := newRestartRig(t, "", []natsbroker.StreamSpec{{Name: "MEM", Patterns: []string{"mem.>"}, Create: true, Memory: true}})
	b := rig.b
	var r seqRecorder
	sub, err := b.Subscribe(ctxT(t), "mem.>", r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := publishN(t, b, "mem.a", "old", 0, 20)
	r.check(t, "before", want...)

	rig.restart(func(other *natsbroker.Broker) {
		want = append(want, publishN(t, other, "mem.a", "new", 0, 25)...)
	})
	want = append(want, publishN(t, b, "mem.a", "new", 25, 27)...)
	// The gap is told once, as a marker right before the first message
	// of the new stream.
	brokertest.WaitUntil(t, "all messages", func() bool { return len(r.Messages()) >= len(want)+1 })
	time.Sleep(50 * time.Millisecond)
	got := r.Messages()
	var gaps []int
	for i, m := range got {
		if m.Gap {
			gaps = append(gaps, i)
			if m.Seq != 1 || m.Channel != "" || m.Data != nil {
				t.Errorf("gap marker %+v, want Seq 1 and no channel or data", m)
			}
		}
	}
	if !slices.Equal(gaps, []int{20}) {
		t.Fatalf("gap markers at %v, want exactly one at 20 (after the old stream's messages)", gaps)
	}
	got = slices.Delete(got, 20, 21)
	var data []string
	for _, m := range got {
		data = append(data, string(m.Data))
	}
	if !slices.Equal(data, want) {
		t.Fatalf("got %q, want %q", data, want)
	}
	for i, m := range got[20:] {
		if m.Seq != uint64(i+1) {
			t.Errorf("message %q of the new stream has Seq %d, want %d", m.Data, m.Seq, i+1)
		}
	}
	if b.HistoryGaps() == 0 {
		t.Error("HistoryGaps() = 0 after the stream was recreated")
	}

	var replayed seqRecorder
	res, err := b.Replay(ctxT(t), "mem.>", 1000, replayed.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Gap || res.Oldest != 1 || res.Last != 27 {
		t.Errorf("Replay from a cursor beyond the stream: %+v, want a gap from 1 and Last 27", res)
	}
	replayed.check(t, "replay of the recreated stream", want[20:]...)
}

// A history subscription whose client-side buffer overflows (nats.go
// drops messages: a slow consumer) notices the hole in the consumer
// sequence and resumes after the last message delivered: nothing lost.
func TestHistorySlowConsumerRecovers(t *testing.T) {
	streams := []natsbroker.StreamSpec{{Name: "SLOW", Patterns: []string{"slow.>"}, Create: true}}
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Streams: streams})
	b, err := e.NewBroker(ctxT(t), natsbroker.WithTestTimings(natsbroker.Options{Streams: streams, PendingMsgs: 3, PendingBytes: -1}, 100*time.Millisecond, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	brokertest.WaitUntil(t, "Ready", b.Ready)
	release := make(chan struct{})
	var r seqRecorder
	sub, err := b.Subscribe(ctxT(t), "slow.>", func(m brokers.Message) {
		if string(m.Data) == "m0" {
			<-release
		}
		r.Handle(m)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := publishN(t, e.Broker(), "slow.a", "m", 0, 50)
	brokertest.WaitUntil(t, "a slow consumer event", func() bool { return b.SlowConsumers() > 0 })
	close(release)
	// Messages after the hole reveal it (a lost tail only shows in the
	// consumer's heartbeats).
	want = append(want, publishN(t, e.Broker(), "slow.a", "m", 50, 60)...)
	r.check(t, "after overflowing", want...)
}

// A consumer that disappears (deleted by an operator) is noticed by its
// missing heartbeats and recreated where it was.
func TestHistoryConsumerDeleted(t *testing.T) {
	streams := []natsbroker.StreamSpec{{Name: "HB", Patterns: []string{"hb.>"}, Create: true}}
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Streams: streams})
	b, err := e.NewBroker(ctxT(t), natsbroker.WithTestTimings(natsbroker.Options{Streams: streams}, 100*time.Millisecond, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	brokertest.WaitUntil(t, "Ready", b.Ready)
	var r seqRecorder
	sub, err := b.Subscribe(ctxT(t), "hb.>", r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := publishN(t, e.Broker(), "hb.a", "m", 0, 3)
	r.check(t, "before", want...)

	js := jsOf(t, e.Broker().Conn())
	str, err := js.Stream(ctxT(t), "HB")
	if err != nil {
		t.Fatal(err)
	}
	names := str.ConsumerNames(ctxT(t))
	n := 0
	for name := range names.Name() {
		if err := str.DeleteConsumer(ctxT(t), name); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if names.Err() != nil || n != 1 {
		t.Fatalf("deleted %d consumers (%v), want 1", n, names.Err())
	}
	want = append(want, publishN(t, e.Broker(), "hb.a", "m", 3, 6)...)
	r.check(t, "after the consumer was deleted", want...)
	if b.HistoryGaps() != 0 {
		t.Errorf("HistoryGaps() = %d", b.HistoryGaps())
	}
}

// Ephemeral consumers do not outlive their subscription, replay or
// broker.
func TestHistoryConsumersCleanedUp(t *testing.T) {
	streams := []natsbroker.StreamSpec{{Name: "CLEAN", Patterns: []string{"clean.>"}, Create: true}}
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Streams: streams})
	js := jsOf(t, e.Broker().Conn())
	consumers := func() int {
		str, err := js.Stream(ctxT(t), "CLEAN")
		if err != nil {
			t.Fatal(err)
		}
		return str.CachedInfo().State.Consumers
	}
	b, err := e.NewBroker(ctxT(t), natsbroker.WithTestTimings(natsbroker.Options{Streams: streams}, 0, 3))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	brokertest.WaitUntil(t, "Ready", b.Ready)

	publishN(t, b, "clean.a", "m", 0, 10)
	var subs []brokers.Subscription
	for i := range 5 {
		sub, err := b.Subscribe(ctxT(t), "clean."+strconv.Itoa(i), func(brokers.Message) {})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
	}
	if n := consumers(); n != 5 {
		t.Errorf("%d consumers for 5 subscriptions", n)
	}
	for _, sub := range subs {
		if err := sub.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	brokertest.WaitUntil(t, "consumers deleted after Unsubscribe", func() bool { return consumers() == 0 })

	// Replays, complete, canceled midway and failing in the Handler's
	// wake, leave nothing behind (batch size 3: several fetches).
	var r seqRecorder
	if _, err := b.Replay(ctxT(t), "clean.>", 0, r.Handle); err != nil {
		t.Fatal(err)
	}
	r.check(t, "replay", publishedData("m", 0, 10)...)
	ctx, cancel := context.WithCancel(t.Context())
	calls := 0
	_, err = b.Replay(ctx, "clean.>", 0, func(brokers.Message) {
		if calls++; calls == 4 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("canceled Replay: %v", err)
	}
	if n := consumers(); n != 0 {
		t.Errorf("%d consumers left after Replay returned", n)
	}

	// Close deletes the consumers of live subscriptions.
	for i := range 3 {
		if _, err := b.Subscribe(ctxT(t), "clean.live"+strconv.Itoa(i), func(brokers.Message) {}); err != nil {
			t.Fatal(err)
		}
	}
	if n := consumers(); n != 3 {
		t.Errorf("%d consumers for 3 subscriptions", n)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := consumers(); n != 0 {
		t.Errorf("%d consumers left after Close", n)
	}
}

func publishedData(tag string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, tag+strconv.Itoa(i))
	}
	return out
}

// Messages the stream removes while a replay is still reading are a gap
// too, not a silent loss.
func TestHistoryReplayGapWhileReading(t *testing.T) {
	streams := []natsbroker.StreamSpec{{Name: "RACE", Patterns: []string{"race.>"}, Create: true, MaxMsgs: 20}}
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Streams: streams})
	b, err := e.NewBroker(ctxT(t), natsbroker.WithTestTimings(natsbroker.Options{Streams: streams}, 0, 5))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	brokertest.WaitUntil(t, "Ready", b.Ready)
	publishN(t, b, "race.a", "m", 0, 20) // Seq 1..20

	var r seqRecorder
	res, err := b.Replay(ctxT(t), "race.>", 0, func(m brokers.Message) {
		r.Handle(m)
		if m.Seq == 5 {
			// The first batch (1..5) is in; push everything not fetched
			// yet out of the stream before the next fetch.
			publishN(t, b, "race.a", "late", 0, 30) // Seq 21..50, keeps 31..50
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// The first batch (Seq 1..5) was fetched before the flood; then the
	// stream had dropped 6..30, and everything left is past the end of
	// the replay (20).
	r.check(t, "replay", publishedData("m", 0, 5)...)
	if !res.Gap || res.Oldest != 31 || res.Last != 5 {
		t.Errorf("result %+v, want a gap with Oldest 31 and Last 5", res)
	}

	// Without removals there is no gap, also on a channel whose messages
	// are not contiguous in the stream.
	publishN(t, b, "race.b", "b", 0, 3)
	res, err = b.Replay(ctxT(t), "race.b", 45, func(brokers.Message) {})
	if err != nil || res.Gap || res.Last != 53 {
		t.Errorf("Replay(race.b, 45) = %+v, %v; want Last 53, no gap", res, err)
	}
}

// OnState and Ready with streams: StateConnected only once the streams
// exist; a stream that cannot be ensured keeps the broker not ready.
func TestHistoryReadiness(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0"})
	js := jsOf(t, e.Broker().Conn())
	brokertest.WaitUntil(t, "Ready", e.Broker().Ready)
	keepAccountDir(t, js)
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "OPS", Subjects: []string{"ops.>"}}); err != nil {
		t.Fatal(err)
	}
	var st brokertest.StateLog
	b := connect(t, natsbroker.Options{
		URLs:    []string{e.ClientURL()},
		Streams: []natsbroker.StreamSpec{{Name: "OPS", Patterns: []string{"ops.>"}}},
		OnState: st.Record,
	})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	brokertest.WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) == 1 })

	// The operator deletes the stream; on the next reconnect the broker
	// cannot ensure it and is not ready, until the stream is back.
	if err := js.DeleteStream(ctxT(t), "OPS"); err != nil {
		t.Fatal(err)
	}
	var r seqRecorder
	if _, err := b.Subscribe(ctxT(t), "ops.x", r.Handle); err == nil {
		t.Error("Subscribe on a deleted stream succeeded")
	}
	if err := b.Conn().ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "StateDisconnected", func() bool { return st.Count(brokers.StateDisconnected) == 1 })
	time.Sleep(300 * time.Millisecond)
	if b.Ready() || st.Count(brokers.StateConnected) != 1 {
		t.Errorf("Ready %v, %d connected reports, with the stream missing", b.Ready(), st.Count(brokers.StateConnected))
	}
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "OPS", Subjects: []string{"ops.>"}}); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "Ready after the stream is back", b.Ready)
	brokertest.WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) == 2 })
}
