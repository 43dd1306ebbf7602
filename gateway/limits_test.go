package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestBucket(t *testing.T) {
	r := Rate{PerSecond: 2, Burst: 3}
	var b Bucket
	var now int64
	for i := range 3 {
		if !b.Take(r, now) {
			t.Fatalf("take %d of the burst refused", i+1)
		}
	}
	if b.Take(r, now) {
		t.Fatal("a take past the burst was allowed")
	}
	if w := b.Wait(r, now); w != 500*time.Millisecond {
		t.Errorf("wait %v, want 500ms (one token at 2/s)", w)
	}
	now += int64(499 * time.Millisecond)
	if b.Take(r, now) {
		t.Fatal("a token came back early")
	}
	now += int64(time.Millisecond)
	if !b.Take(r, now) {
		t.Fatal("the refilled token was refused")
	}
	if b.Full(r, now) {
		t.Error("an empty bucket reports full")
	}
	now += int64(10 * time.Second) // refills to the burst, not beyond
	if !b.Full(r, now) {
		t.Error("a bucket left alone for 10 s is not full")
	}
	for i := range 3 {
		if !b.Take(r, now) {
			t.Fatalf("take %d after the refill refused", i+1)
		}
	}
	if b.Take(r, now) {
		t.Fatal("the refill went past the burst")
	}
	// A clock reading older than the last one refills nothing.
	if b.Take(r, now-int64(time.Second)) {
		t.Fatal("a clock that went back refilled the bucket")
	}
	var u Bucket
	for range 10000 {
		if !u.Take(Rate{}, 0) {
			t.Fatal("an unlimited rate refused")
		}
	}
}

// rateGateway is a test gateway whose sessions' rate limits read clk.
func rateGateway(t *testing.T, clk *ManualClock, reg *prometheus.Registry, frames, pubs Rate) *testGateway {
	return newTestGateway(t, func(c *Config) {
		c.Clock = clk.Read
		c.FrameRate, c.PublishRate = frames, pubs
		c.Metrics = NewMetrics(reg)
	})
}

func TestFrameRateClosesWith4029(t *testing.T) {
	clk := &ManualClock{}
	reg := prometheus.NewRegistry()
	g := rateGateway(t, clk, reg, Rate{PerSecond: 10, Burst: 5}, Rate{PerSecond: -1})
	s, tr := openSession(t, g, false)
	other, otherTr := openSession(t, g, false)
	for i := 1; i <= 5; i++ {
		ping(t, s, tr, i)
	}
	clk.Advance(100 * time.Millisecond) // one token back
	ping(t, s, tr, 6)
	// Every way in counts: a frame that does not decode, and Apply.
	s.Reject(Frame{ID: 7}, &FrameError{ID: 7, Msg: "bad"})
	expectClose(t, tr, DisconnectFrameRate)
	waitDone(t, s)
	if r := tr.Reasons(); len(r) != 1 || r[0] != DisconnectFrameRate {
		t.Errorf("transport closed with %v", r)
	}
	s.Apply(context.Background(), Frame{Op: OpPing, ID: 8}) // dropped, not counted again
	if v := metricValue(t, reg, "cometgate_refusals_total", "reason", "frame_rate"); v != 1 {
		t.Errorf("frame_rate refusals %v, want 1", v)
	}
	if v := metricValue(t, reg, "cometgate_refusals_total", "reason", "publish_rate"); v != 0 {
		t.Errorf("publish_rate refusals %v, want 0 (every reason is exported from the start)", v)
	}
	ping(t, other, otherTr, 1) // the other session has a bucket of its own
}

func TestFrameRateSustained(t *testing.T) {
	clk := &ManualClock{}
	g := rateGateway(t, clk, prometheus.NewRegistry(), Rate{PerSecond: 100, Burst: 2}, Rate{PerSecond: -1})
	s, tr := openSession(t, g, false)
	// 100 frames a second for 3 s, at the limit: never closed.
	for i := 1; i <= 300; i++ {
		ping(t, s, tr, i)
		clk.Advance(10 * time.Millisecond)
	}
}

func TestPublishRate(t *testing.T) {
	clk := &ManualClock{}
	reg := prometheus.NewRegistry()
	g := rateGateway(t, clk, reg, Rate{PerSecond: -1}, Rate{PerSecond: 1, Burst: 2})
	s, tr := openSession(t, g, false)
	send(s, `{"op":"pub","id":1,"ch":"pub.a","text":"a"}`)
	nextType(t, tr, TypeOK)
	// A publish the rules refuse counts too.
	send(s, `{"op":"pub","id":2,"ch":"ro.a","text":"b"}`)
	expectErr(t, tr, 2, 403, "permission denied")
	clk.Advance(time.Second)
	send(s, `{"op":"pub","id":3,"ch":"pub.a","text":"c"}`)
	nextType(t, tr, TypeOK)
	ping(t, s, tr, 4) // other frames are not publishes
	send(s, `{"op":"pub","id":5,"ch":"pub.a","text":"d"}`)
	expectClose(t, tr, DisconnectPublishRate)
	waitDone(t, s)
	if n := len(g.b.Published()); n != 2 {
		t.Errorf("%d publishes reached the broker, want 2", n)
	}
	if v := metricValue(t, reg, "cometgate_refusals_total", "reason", "publish_rate"); v != 1 {
		t.Errorf("publish_rate refusals %v, want 1", v)
	}
}

func TestRateDefaults(t *testing.T) {
	g := newTestGateway(t, nil)
	if c := g.Config(); c.FrameRate != DefaultFrameRate || c.PublishRate != DefaultPublishRate {
		t.Errorf("defaults %+v %+v", c.FrameRate, c.PublishRate)
	}
}

// TestFrameLimitAllocatesNothing: counting a frame against the session's
// limits takes its lock and a clock reading, and allocates nothing.
func TestFrameLimitAllocatesNothing(t *testing.T) {
	clk := &ManualClock{}
	g := rateGateway(t, clk, prometheus.NewRegistry(), Rate{PerSecond: 1000, Burst: 10}, Rate{PerSecond: 1000, Burst: 10})
	s, _ := openSession(t, g, false)
	allocs := testing.AllocsPerRun(1000, func() {
		clk.Advance(time.Millisecond) // one token back per frame
		if !s.admitFrame() {
			t.Fatal("a frame within the rate was refused")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame", allocs)
	}
}

func BenchmarkAdmitFrame(b *testing.B) {
	g, err := New(Config{NodeID: "n1", Rules: testRules(), FrameRate: Rate{PerSecond: 1e12, Burst: 1 << 30}}, newFakeBroker())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = g.Shutdown(context.Background()) }()
	s, err := g.Open(OpenOptions{Transport: "fake"})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.admitFrame()
	}
}
