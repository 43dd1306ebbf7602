package gateway

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestLatencyHistogramMatchesPrometheus: the gateway's own latency
// histogram, fed in bulk (a worker's tally) and one at a time (a write
// outside the workers), exports what Prometheus's histogram with the same
// buckets exports for the same observations, edges included (a bucket's
// upper bound is inclusive).
func TestLatencyHistogramMatchesPrometheus(t *testing.T) {
	values := []float64{0, 0.0001, 0.00010001, 0.0003, 0.001, 0.02, 0.1, 0.7, 5, 6, 120}
	want := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Buckets: latencyBuckets[:]})
	var h latencyHistogram
	var tally latencyTally
	for i, v := range values {
		want.Observe(v)
		if i%2 == 0 {
			tally.observe(v)
		} else {
			h.observe(v)
		}
	}
	h.add(&tally)
	if tally.n != 0 {
		t.Error("add left the tally full")
	}
	desc := prometheus.NewDesc("x", "x", []string{"transport"}, nil)
	var got, exp dto.Metric
	if err := h.metric(desc, "ws").Write(&got); err != nil {
		t.Fatal(err)
	}
	if err := want.Write(&exp); err != nil {
		t.Fatal(err)
	}
	g, e := got.GetHistogram(), exp.GetHistogram()
	if g.GetSampleCount() != e.GetSampleCount() || g.GetSampleSum() != e.GetSampleSum() {
		t.Errorf("count %d sum %v, want %d %v", g.GetSampleCount(), g.GetSampleSum(), e.GetSampleCount(), e.GetSampleSum())
	}
	if len(g.GetBucket()) != len(e.GetBucket()) {
		t.Fatalf("%d buckets, want %d", len(g.GetBucket()), len(e.GetBucket()))
	}
	for i, b := range g.GetBucket() {
		if eb := e.GetBucket()[i]; b.GetUpperBound() != eb.GetUpperBound() || b.GetCumulativeCount() != eb.GetCumulativeCount() {
			t.Errorf("bucket le=%v: %d, want le=%v: %d", b.GetUpperBound(), b.GetCumulativeCount(), eb.GetUpperBound(), eb.GetCumulativeCount())
		}
	}
}
