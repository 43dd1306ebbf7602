package main

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestHistogramExactSmallValues(t *testing.T) {
	h := newHistogram()
	for v := int64(1); v <= 100; v++ {
		h.Record(v)
	}
	for _, tc := range []struct {
		q    float64
		want int64
	}{{0, 1}, {0.01, 1}, {0.5, 50}, {0.9, 90}, {0.99, 99}, {0.999, 100}, {1, 100}} {
		if got := h.Quantile(tc.q); got != tc.want {
			t.Errorf("Quantile(%v) = %d, want %d", tc.q, got, tc.want)
		}
	}
	if h.Count() != 100 || h.Max() != 100 || h.Min() != 1 || h.Mean() != 50.5 {
		t.Errorf("count %d max %d min %d mean %v", h.Count(), h.Max(), h.Min(), h.Mean())
	}
}

// Percentiles of large values are within the histogram's precision (1/128
// of the value) of the exact ones.
func TestHistogramPrecision(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	h := newHistogram()
	vals := make([]int64, 100_000)
	for i := range vals {
		// latencies from 10 µs to 10 s, log-uniform
		vals[i] = int64(math.Exp(r.Float64()*math.Log(1e6)) * 1e4)
		h.Record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > float64(exact)/128 {
			t.Errorf("Quantile(%v) = %d, exact %d: outside the bucket precision", q, got, exact)
		}
	}
	if h.Quantile(1) != vals[len(vals)-1] {
		t.Errorf("Quantile(1) = %d, max %d", h.Quantile(1), vals[len(vals)-1])
	}
}

func TestHistogramBucketBounds(t *testing.T) {
	for _, v := range []int64{0, 1, 255, 256, 257, 511, 512, 1000, 123456789, 1 << 40, math.MaxInt64} {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("histIndex(%d) = %d out of range", v, i)
		}
		if up := histUpper(i); up < v {
			t.Errorf("histUpper(histIndex(%d)) = %d < value", v, up)
		}
		if i > 0 && histUpper(i-1) >= v {
			t.Errorf("value %d also fits the previous bucket (upper %d)", v, histUpper(i-1))
		}
	}
}

func TestHistogramSnapshotMerge(t *testing.T) {
	a, b := newHistogram(), newHistogram()
	for v := int64(1); v <= 50; v++ {
		a.Record(v * 1000)
	}
	for v := int64(51); v <= 100; v++ {
		b.Record(v * 1000)
	}
	b.Record(-5) // a clock step counts as 0
	merged := newHistogram()
	for _, h := range []*histogram{a, b} {
		s := h.Snapshot()
		raw, err := json.Marshal(&s)
		if err != nil {
			t.Fatal(err)
		}
		var back histSnapshot
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatal(err)
		}
		if err := merged.mergeSnapshot(back); err != nil {
			t.Fatal(err)
		}
	}
	if merged.Count() != 101 || merged.Max() != 100_000 || merged.Min() != 0 {
		t.Fatalf("merged count %d max %d min %d", merged.Count(), merged.Max(), merged.Min())
	}
	if p := merged.Quantile(0.5); p < 50_000 || p > 50_000+50_000/128 {
		t.Errorf("merged p50 = %d", p)
	}
	if err := merged.mergeSnapshot(histSnapshot{Buckets: [][2]uint64{{histBuckets, 1}}}); err == nil {
		t.Error("a bucket index out of range was accepted")
	}
	empty := newHistogram()
	if empty.Quantile(0.99) != 0 || empty.Max() != 0 || empty.Min() != 0 {
		t.Error("empty histogram reports values")
	}
}
