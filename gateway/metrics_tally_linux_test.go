//go:build linux

package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestWorkerTalliesReachTheMetrics: deliveries a write worker makes (to a
// real socket, through the worker's batched sends) are in the collectors
// once its batch is done, their latencies with them.
func TestWorkerTalliesReachTheMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) { c.Metrics = NewMetrics(reg) })
	server, _ := loopbackPair(t)
	counter := &deliveryCounter{hit: make(chan struct{}, 1)}
	const msgs = 3
	counter.target.Store(msgs)
	tr := openSocketSession(t, g.Gateway, server, counter, "t.a")
	for range msgs {
		publish(t, g.b, "t.a", "1")
	}
	select {
	case <-counter.hit:
	case <-time.After(time.Minute):
		t.Fatalf("%d of %d messages written", counter.n.Load(), msgs)
	}
	waitFor(t, "the worker's tally", func() bool {
		return metricValue(t, reg, "cometgate_messages_out_total", "transport", "socket") == msgs
	})
	if n := metricValue(t, reg, "cometgate_delivery_latency_seconds", "transport", "socket"); n != msgs {
		t.Errorf("%v latencies recorded, want %d", n, msgs)
	}
	if tr.queued.Load() == 0 {
		t.Log("no write went through the worker's batch (no io_uring here): the tally was still a worker's")
	}
}
