package main

// seqTracker checks one session's deliveries on its one channel against
// the publisher's per-channel sequence numbers. It belongs to the
// session's reader goroutine until the session ends; the worker reads it
// only while the reader is parked (see session.mu).
//
// A number above the expected one marks the numbers skipped as missing
// (counted lost for now); a missing number that arrives later is out of
// order and no longer lost; any other number below the expected one is a
// duplicate. The missing set is bounded: past maxMissing entries a gap is
// counted lost and forgotten, so a late arrival of one of those counts as
// a duplicate.
type seqTracker struct {
	next     uint64 // the next number expected; numbers start at 1
	received uint64
	lost     uint64
	dup      uint64
	ooo      uint64
	foreign  uint64 // deliveries that are not the bench's messages, or on another channel
	missing  map[uint64]struct{}
}

const maxMissing = 4096

func newSeqTracker() seqTracker { return seqTracker{next: 1} }

// Observe records one delivery of sequence number s.
func (t *seqTracker) Observe(s uint64) {
	t.received++
	switch {
	case s == t.next:
		t.next++
	case s > t.next:
		gap := s - t.next
		t.lost += gap
		if t.missing == nil {
			t.missing = make(map[uint64]struct{})
		}
		for v := t.next; v < s && len(t.missing) < maxMissing; v++ {
			t.missing[v] = struct{}{}
		}
		t.next = s + 1
	default:
		if _, ok := t.missing[s]; ok {
			delete(t.missing, s)
			t.lost--
			t.ooo++
			return
		}
		t.dup++
	}
}

// Settle is called when the publisher has sent numbers up to last and the
// drain time is over: numbers not yet seen are counted lost (and
// remembered as missing, so that one still arriving later is counted out
// of order instead).
func (t *seqTracker) Settle(last uint64) {
	if last < t.next {
		return
	}
	t.Observe(last + 1) // marks next..last missing
	t.received--        // last+1 was not delivered
	t.next = last + 1
}

// Complete reports whether the delivery of number last was seen (or a
// later one): numbers skipped before it are lost or late, and waiting
// longer for them is not worth it.
func (t *seqTracker) Complete(last uint64) bool { return t.next > last }

// seqCounts are the counters of one or many trackers.
type seqCounts struct {
	Received uint64 `json:"received"`
	Lost     uint64 `json:"lost"`
	Dup      uint64 `json:"dup"`
	OOO      uint64 `json:"ooo"`
	Foreign  uint64 `json:"foreign"`
}

func (t *seqTracker) counts() seqCounts {
	return seqCounts{Received: t.received, Lost: t.lost, Dup: t.dup, OOO: t.ooo, Foreign: t.foreign}
}

func (c *seqCounts) add(o seqCounts) {
	c.Received += o.Received
	c.Lost += o.Lost
	c.Dup += o.Dup
	c.OOO += o.OOO
	c.Foreign += o.Foreign
}

// sub returns c - o, for the difference between two cumulative readings.
func (c seqCounts) sub(o seqCounts) seqCounts {
	d := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	return seqCounts{Received: d(c.Received, o.Received), Lost: d(c.Lost, o.Lost),
		Dup: d(c.Dup, o.Dup), OOO: d(c.OOO, o.OOO), Foreign: d(c.Foreign, o.Foreign)}
}
