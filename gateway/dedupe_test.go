package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

func TestDedupeWindow(t *testing.T) {
	d := newDedupe(time.Minute, 3)
	t0 := time.Now()
	for _, tc := range []struct {
		ch, id string
		at     time.Duration
		first  bool
	}{
		{"a", "1", 0, true},
		{"a", "1", time.Second, false}, // a retry
		{"b", "1", time.Second, true},  // the same id on another channel
		{"a", "", 0, true},             // no id: always passes
		{"a", "", 0, true},
		{"a", "1", 2 * time.Minute, true}, // the window passed
		{"a", "2", 2 * time.Minute, true},
		{"a", "3", 2 * time.Minute, true},
		{"a", "4", 2 * time.Minute, true}, // full: the oldest ("a","1") goes
		{"a", "1", 2 * time.Minute, true},
		{"a", "4", 2 * time.Minute, false},
	} {
		if got := d.first(tc.ch, tc.id, t0.Add(tc.at)); got != tc.first {
			t.Errorf("first(%q, %q) at +%v = %v, want %v", tc.ch, tc.id, tc.at, got, tc.first)
		}
	}
	var off *dedupe
	for range 2 {
		if !off.first("a", "1", t0) {
			t.Error("a nil dedupe dropped a message")
		}
	}
	if newDedupe(-1, 10) != nil {
		t.Error("a negative window did not turn dedupe off")
	}
}

// TestPublishRetriedOnce: a message published twice with the same id (a
// retry the broker stored twice) reaches a subscriber once; a client's
// pub frame carries its mid to the broker.
func TestPublishRetriedOnce(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "t.>")
	for _, m := range []brokers.Message{
		{Channel: "t.a", Data: []byte(`1`), ID: "x1"},
		{Channel: "t.a", Data: []byte(`1`), ID: "x1"}, // the retry
		{Channel: "t.a", Data: []byte(`2`)},
		{Channel: "t.a", Data: []byte(`2`)}, // no id: a message of its own
		{Channel: "t.a", Data: []byte(`3`), ID: "x3"},
	} {
		if err := g.b.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for len(got) < 4 {
		got = append(got, string(nextType(t, tr, TypeMsg).Data))
	}
	if want := []string{"1", "2", "2", "3"}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	noPacket(t, tr)

	send(s, `{"op":"pub","id":5,"ch":"pub.p","data":1,"mid":"m-5"}`)
	nextType(t, tr, TypeOK)
	pub := g.b.Published()
	if last := pub[len(pub)-1]; last.Channel != "pub.p" || last.ID != "m-5" {
		t.Fatalf("published %+v, want ID m-5", last)
	}
	send(s, `{"op":"pub","id":6,"ch":"pub.p","data":1,"mid":"has space"}`)
	expectErr(t, tr, 6, 400, `"mid"`)
}

// TestResumeCursor: a client that resubscribes after a break without a
// cursor of its own ("~") is told, with a gap, that messages published
// meanwhile may be lost: on a channel without history, and on one with
// history (nothing can be replayed without a position) unless it asked
// for the current state, which covers the break.
func TestResumeCursor(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	send(s, `{"op":"sub","id":1,"ch":"t.plain","cursor":"~"}`)
	if w := nextType(t, tr, TypeOK); w.ID != 1 {
		t.Fatalf("got %s", w)
	}
	if w := nextType(t, tr, TypeGap); w.Ch != "t.plain" || !strings.Contains(w.Reason, "no history") {
		t.Fatalf("got %s", w)
	}
	// A plain subscription (no break) gets no gap.
	send(s, `{"op":"sub","id":2,"ch":"t.other"}`)
	nextType(t, tr, TypeOK)
	noPacket(t, tr)
}
