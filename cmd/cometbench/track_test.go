package main

import "testing"

func TestSeqTracker(t *testing.T) {
	cases := []struct {
		name string
		seqs []uint64
		last uint64
		want seqCounts
	}{
		{"in order", []uint64{1, 2, 3, 4}, 4, seqCounts{Received: 4}},
		{"tail lost", []uint64{1, 2}, 4, seqCounts{Received: 2, Lost: 2}},
		{"gap", []uint64{1, 2, 5}, 5, seqCounts{Received: 3, Lost: 2}},
		{"reordered", []uint64{1, 3, 2, 4}, 4, seqCounts{Received: 4, OOO: 1}},
		{"duplicate", []uint64{1, 2, 2, 3}, 3, seqCounts{Received: 4, Dup: 1}},
		{"late duplicate of a reordered one", []uint64{2, 1, 1}, 2, seqCounts{Received: 3, OOO: 1, Dup: 1}},
		{"nothing", nil, 3, seqCounts{Lost: 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newSeqTracker()
			for _, s := range tc.seqs {
				tr.Observe(s)
			}
			if !tr.Complete(tc.last) {
				tr.Settle(tc.last)
			}
			if got := tr.counts(); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A message counted lost at the end of a step that arrives in the next
// step is out of order, not lost.
func TestSeqTrackerLateAfterSettle(t *testing.T) {
	tr := newSeqTracker()
	tr.Observe(1)
	tr.Settle(3)
	if c := tr.counts(); c.Lost != 2 || c.Received != 1 {
		t.Fatalf("after settle: %+v", c)
	}
	tr.Observe(3)
	tr.Observe(4)
	if c := tr.counts(); c.Lost != 1 || c.OOO != 1 || c.Received != 3 {
		t.Fatalf("after late arrival: %+v", c)
	}
}

func TestLastSeq(t *testing.T) {
	// 7 messages round-robin over 3 channels: 0,1,2,0,1,2,0
	for c, want := range []uint64{3, 2, 2} {
		if got := lastSeq(7, 3, c); got != want {
			t.Errorf("lastSeq(7, 3, %d) = %d, want %d", c, got, want)
		}
	}
	if lastSeq(0, 5, 0) != 0 {
		t.Error("nothing published")
	}
}
