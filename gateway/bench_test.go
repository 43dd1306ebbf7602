package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cometgate/cometgate/brokers"
)

// discardTransport models a transport without I/O: WritePackets frames
// every packet into a reused buffer (as a real transport would before its
// one write) and counts bytes and message deliveries.
type discardTransport struct {
	buf       []byte
	bytes     int64
	delivered *atomic.Int64 // msg packets written, shared by all sessions
	written   *atomic.Int64 // all packets written, shared by all sessions
}

var _ Transport = (*discardTransport)(nil)

func (d *discardTransport) Name() string { return "discard" }

func (d *discardTransport) WritePackets(pkts []Packet) (int, error) {
	d.buf = d.buf[:0]
	msgs := 0
	for _, p := range pkts {
		d.buf = p.AppendJSON(d.buf)
		d.buf = append(d.buf, '\n')
		if p.Type() == TypeMsg {
			msgs++
		}
	}
	d.bytes += int64(len(d.buf))
	d.written.Add(int64(len(pkts)))
	d.delivered.Add(int64(msgs))
	return len(d.buf), nil
}

func (d *discardTransport) WriteHeartbeat() error { return nil }
func (d *discardTransport) Close(Disconnect)      {}

// BenchmarkFanout publishes b.N messages on one channel through the fake
// broker's delivery path (its subscription goroutine calls the hub's
// fan-out, as nats.go would) to N sessions subscribed to it, and waits until
// every delivery has been written. At most a window of messages is in
// flight, so queues stay within their bound as they would with a real
// client keeping up.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

// newBenchGateway starts a gateway on a fake broker that keeps no
// published messages, with sessions allowed on bench.> and no heartbeats
// during the benchmark, and writers write workers (0: one per
// GOMAXPROCS), its metrics on as a deployed node's are (until they were,
// the figures left out what the metrics cost: 5% of a 1,000-session
// fan-out's wall time on one core, 17-20% on two, before the workers
// tallied their writes); Cleanup shuts both down.
func newBenchGateway(b *testing.B, writers int) (*Gateway, *fakeBroker) {
	b.Helper()
	fb := newFakeBroker()
	fb.noRecord = true
	g, err := New(Config{
		NodeID:     "bench",
		Rules:      Rules{{Pattern: "bench.>", Subscribe: Anyone}},
		Logger:     slog.New(slog.DiscardHandler),
		QueueBytes: 1 << 20,
		Heartbeat:  time.Hour,
		Writers:    writers,
		Metrics:    NewMetrics(prometheus.NewRegistry()),
	}, fb)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := shutdownWithin(g, time.Minute); err != nil {
			b.Error(err)
		}
		_ = fb.Close()
	})
	return g, fb
}

func benchFanout(b *testing.B, n int) {
	g, fb := newBenchGateway(b, 0)

	var delivered, written atomic.Int64
	sessions := make([]*Session, n)
	for i := range sessions {
		s, err := g.Open(OpenOptions{Transport: "discard"})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Attach(&discardTransport{delivered: &delivered, written: &written}, false); err != nil {
			b.Fatal(err)
		}
		s.Subscribe(context.Background(), "bench.x", Start{})
		sessions[i] = s
	}
	waitUntil := func(cond func() bool) {
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				b.Fatalf("timed out: %d of %d packets written", written.Load(), int64(b.N)*int64(n))
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	waitUntil(func() bool { return written.Load() == 2*int64(n) }) // hello, ok
	if fb.Subs() != 1 {
		b.Fatalf("%d broker subscriptions", fb.Subs())
	}

	msg := brokers.Message{Channel: "bench.x", Data: []byte(`{"sym":"EURUSD","bid":1.0841,"ask":1.0843}`)}
	const window = 128 // messages in flight at most
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := fb.Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if i%(window/2) == 0 && i >= window {
			behind := int64(i-window) * int64(n)
			waitUntil(func() bool { return delivered.Load() >= behind })
		}
	}
	total := int64(b.N) * int64(n)
	waitUntil(func() bool { return delivered.Load() == total })
	b.StopTimer()
	for _, s := range sessions {
		if isDone(s) {
			b.Fatalf("a session ended: %v", s.Reason())
		}
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total), "ns/delivery")
}

func BenchmarkEncodeMessage(b *testing.B) {
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"json", []byte(`{"sym":"EURUSD","bid":1.0841,"ask":1.0843,"ts":"2026-11-25T17:41:00Z"}`)},
		{"text", []byte("the quick brown fox jumps over the lazy dog <3 & more")},
		{"binary", []byte("\x00\x01\x02\x03\xff\xfe\xfd\xfc\x00\x01\x02\x03\xff\xfe\xfd\xfc")},
	} {
		b.Run(c.name, func(b *testing.B) {
			m := brokers.Message{Channel: "prices.eur.usd", Data: c.data, Seq: 1041}
			now := time.Now()
			b.ReportAllocs()
			b.SetBytes(int64(len(c.data)))
			for b.Loop() {
				EncodeMessage(m, "prices.*", now)
			}
		})
	}
}

// BenchmarkDeliver measures one session's hot path without scheduling
// noise: batch deliveries are queued, then one write round numbers and
// writes them, run on the benchmark's goroutine standing in for the
// session's writer. Time and allocations are per delivery.
func BenchmarkDeliver(b *testing.B) {
	for _, batch := range []int{1, 16} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchDeliver(b, batch) })
	}
}

func benchDeliver(b *testing.B, batch int) {
	g, _ := newBenchGateway(b, 0)
	s, err := g.Open(OpenOptions{Transport: "discard"})
	if err != nil {
		b.Fatal(err)
	}
	var delivered, written atomic.Int64
	if err := s.Attach(&discardTransport{delivered: &delivered, written: &written}, false); err != nil {
		b.Fatal(err)
	}
	writerRuns := func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.writing }
	for written.Load() < 1 || writerRuns() { // the hello's writer
		time.Sleep(time.Millisecond)
	}
	body := EncodeMessage(brokers.Message{Channel: "bench.x", Data: []byte(`{"bid":1.0841}`)}, "bench.x", time.Now())
	entry := &hubEntry{pattern: "bench.x", policy: SlowDisconnect}
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += batch {
		s.mu.Lock()
		s.writing = true // this goroutine is the writer: deliver starts none
		s.mu.Unlock()
		for range batch {
			s.deliver(body, entry, nil)
		}
		s.writeRounds(nil, -1)
	}
	b.StopTimer()
	if want := int64((b.N + batch - 1) / batch * batch); delivered.Load() != want {
		b.Fatalf("%d deliveries written, want %d", delivered.Load(), want)
	}
}
