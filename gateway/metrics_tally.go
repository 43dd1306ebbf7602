package gateway

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Delivery metrics in bulk.
//
// Every write adds to its transport's deliveries, bytes and latency
// histogram. Through Prometheus's own collectors that was six atomic
// operations per delivery on lines every write worker shares: in a
// fan-out benchmark with the metrics on (BenchmarkFanoutScaling, 1,000
// sessions) 5% of the wall time with one worker and 7% with two, the
// lines moving between the cores. So a write worker tallies its writes
// (writer.tally) and adds the tally to the collectors once per batch of
// jobs (writer.flushTallies): a few operations per batch instead of six
// per delivery. Prometheus's histogram cannot take observations in bulk,
// so the latency histogram is a collector of the gateway's own
// (latencyHistogram, exported as cometgate_delivery_latency_seconds, the
// same buckets). Writes made outside a worker (a session's own goroutine,
// a long-poll response) add at once, as before.

// latencyHistogram is one transport's delivery latency histogram.
type latencyHistogram struct {
	mu     sync.Mutex
	counts [len(latencyBuckets) + 1]uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
}

// latencyTally is observations not yet added to a latencyHistogram.
type latencyTally struct {
	counts [len(latencyBuckets) + 1]uint64
	sum    float64
	n      int
}

// observe adds one latency of seconds.
func (t *latencyTally) observe(seconds float64) {
	i := 0
	for i < len(latencyBuckets) && seconds > latencyBuckets[i] {
		i++
	}
	t.counts[i]++
	t.sum += seconds
	t.n++
}

// add adds t to h and empties t.
func (h *latencyHistogram) add(t *latencyTally) {
	if t.n == 0 {
		return
	}
	h.mu.Lock()
	for i, c := range t.counts {
		h.counts[i] += c
	}
	h.sum += t.sum
	h.mu.Unlock()
	*t = latencyTally{}
}

// observe adds one latency at once (a write outside the workers).
func (h *latencyHistogram) observe(seconds float64) {
	var t latencyTally
	t.observe(seconds)
	h.add(&t)
}

// metric is h as a constant histogram with the transport label.
func (h *latencyHistogram) metric(desc *prometheus.Desc, transport string) prometheus.Metric {
	h.mu.Lock()
	counts, sum := h.counts, h.sum
	h.mu.Unlock()
	buckets := make(map[float64]uint64, len(latencyBuckets))
	var total uint64
	for i, upper := range latencyBuckets {
		total += counts[i]
		buckets[upper] = total
	}
	total += counts[len(latencyBuckets)]
	return prometheus.MustNewConstHistogram(desc, total, sum, buckets, transport)
}

// latencyCollector exports every transport's latency histogram.
type latencyCollector struct {
	desc *prometheus.Desc
	m    *Metrics
}

func (c latencyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c latencyCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.transports.Range(func(name, tm any) bool {
		ch <- tm.(*transportMetrics).latency.metric(c.desc, name.(string))
		return true
	})
}

// deliveryTally is what a worker's writes added to one transport's
// metrics since its last flush.
type deliveryTally struct {
	tm         *transportMetrics
	deliveries int
	bytes      int
	latency    latencyTally
}

// tally returns the worker's tally for tm. A worker writes few
// transports (one name per transport family), so a slice searched in
// order does.
func (w *writer) tally(tm *transportMetrics) *deliveryTally {
	for i := range w.tallies {
		if w.tallies[i].tm == tm {
			return &w.tallies[i]
		}
	}
	w.tallies = append(w.tallies, deliveryTally{tm: tm})
	return &w.tallies[len(w.tallies)-1]
}

// flushTallies adds the worker's tallies to the collectors: the
// histogram first, so that a reader who sees a delivery counted finds
// its latency too.
func (w *writer) flushTallies() {
	for i := range w.tallies {
		t := &w.tallies[i]
		t.tm.latency.add(&t.latency)
		t.tm.wrote(t.deliveries, t.bytes)
		t.deliveries, t.bytes = 0, 0
	}
}
