package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
)

// histogram is an HDR-style log-linear histogram of non-negative int64
// values (nanoseconds here). Values below 2^histSubBits are counted
// exactly; above, each power-of-two range is split into 2^(histSubBits-1)
// equal buckets, so a bucket is never wider than 1/128 of its values
// (under 0.8% error) at any magnitude, and the whole int64 range fits in
// a fixed 7,424 buckets.
//
// Record is safe for concurrent use (atomic adds, no locks): one histogram
// serves every receiving goroutine of a worker. Reading methods
// (Quantile, Snapshot, …) may run concurrently with Record and then see
// some recent values and not others.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // nanoseconds; wraps only after ~584 years of latency
	max    atomic.Int64
	min    atomic.Int64 // valid when total > 0; math.MaxInt64 when empty
}

const (
	histSubBits  = 8
	histSubCount = 1 << histSubBits // exact values 0..255
	histHalf     = histSubCount / 2
	histBuckets  = histSubCount + (64-histSubBits)*histHalf
)

func newHistogram() *histogram {
	h := &histogram{}
	h.min.Store(math.MaxInt64)
	return h
}

// histIndex maps a value to its bucket.
func histIndex(v int64) int {
	if v < histSubCount {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - histSubBits // >= 1
	sub := int(uint64(v) >> uint(shift))         // in [histHalf, histSubCount)
	return histSubCount + (shift-1)*histHalf + sub - histHalf
}

// histUpper is the highest value that maps to bucket i.
func histUpper(i int) int64 {
	if i < histSubCount {
		return int64(i)
	}
	j := i - histSubCount
	shift := j/histHalf + 1
	sub := int64(j%histHalf + histHalf)
	hi := (sub+1)<<uint(shift) - 1
	if hi < 0 { // the top bucket
		return math.MaxInt64
	}
	return hi
}

// Record counts one value; negative values (clock steps) count as 0.
func (h *histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[histIndex(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(uint64(v))
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
	for {
		m := h.min.Load()
		if v >= m || h.min.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count is the number of recorded values.
func (h *histogram) Count() uint64 { return h.total.Load() }

// Max is the largest recorded value, 0 when empty.
func (h *histogram) Max() int64 { return h.max.Load() }

// Min is the smallest recorded value, 0 when empty.
func (h *histogram) Min() int64 {
	if h.total.Load() == 0 {
		return 0
	}
	return h.min.Load()
}

// Mean is the average recorded value, 0 when empty.
func (h *histogram) Mean() float64 {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return float64(h.sum.Load()) / float64(n)
}

// Quantile returns the value below or at which a fraction q (0..1) of the
// recorded values lie: the highest value of the bucket holding the
// ceil(q·n)-th smallest value, never more than Max. 0 when empty.
func (h *histogram) Quantile(q float64) int64 {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	q = math.Max(0, math.Min(1, q))
	rank := uint64(math.Ceil(q * float64(n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return min(histUpper(i), h.max.Load())
		}
	}
	return h.max.Load()
}

// Merge adds every count of o to h.
func (h *histogram) Merge(o *histogram) {
	h.mergeSnapshot(o.Snapshot())
}

// Reset empties h. It must not run concurrently with Record if the caller
// needs an exact cut between before and after.
func (h *histogram) Reset() {
	for i := range h.counts {
		h.counts[i].Store(0)
	}
	h.total.Store(0)
	h.sum.Store(0)
	h.max.Store(0)
	h.min.Store(math.MaxInt64)
}

// histSnapshot is the sparse, serialisable form of a histogram: the
// workers send it to the parent, which merges them.
type histSnapshot struct {
	// Buckets holds [index, count] pairs of the non-empty buckets.
	Buckets [][2]uint64 `json:"b"`
	Sum     uint64      `json:"sum"`
	Max     int64       `json:"max"`
	Min     int64       `json:"min"`
}

// Snapshot returns the sparse form of h.
func (h *histogram) Snapshot() histSnapshot {
	s := histSnapshot{Sum: h.sum.Load(), Max: h.max.Load(), Min: h.Min()}
	for i := range h.counts {
		if c := h.counts[i].Load(); c > 0 {
			s.Buckets = append(s.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return s
}

// mergeSnapshot adds a snapshot's counts to h. A snapshot with a bucket
// index out of range is refused rather than trusted.
func (h *histogram) mergeSnapshot(s histSnapshot) error {
	var n uint64
	for _, b := range s.Buckets {
		if b[0] >= histBuckets {
			return fmt.Errorf("histogram bucket %d out of range", b[0])
		}
	}
	for _, b := range s.Buckets {
		h.counts[b[0]].Add(b[1])
		n += b[1]
	}
	if n == 0 {
		return nil
	}
	h.total.Add(n)
	h.sum.Add(s.Sum)
	for {
		m := h.max.Load()
		if s.Max <= m || h.max.CompareAndSwap(m, s.Max) {
			break
		}
	}
	for {
		m := h.min.Load()
		if s.Min >= m || h.min.CompareAndSwap(m, s.Min) {
			break
		}
	}
	return nil
}

var _ json.Marshaler = (*histSnapshot)(nil)

// MarshalJSON keeps an empty snapshot's bucket list as [] rather than null.
func (s *histSnapshot) MarshalJSON() ([]byte, error) {
	type plain histSnapshot
	p := plain(*s)
	if p.Buckets == nil {
		p.Buckets = [][2]uint64{}
	}
	return json.Marshal(p)
}
