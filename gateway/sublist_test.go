package gateway

import "testing"

func TestSubList(t *testing.T) {
	var l subList
	a, b, c := &subState{pattern: "a"}, &subState{pattern: "b"}, &subState{pattern: "c.>"}
	for _, st := range []*subState{a, b, c} {
		l.add(st)
	}
	if l.get("b") != b || l.get("c.>") != c || l.get("c") != nil {
		t.Fatalf("get: %v %v %v", l.get("b"), l.get("c.>"), l.get("c"))
	}
	l.remove(&subState{pattern: "b"}) // another subscription to the same pattern: not there
	if len(l) != 3 {
		t.Fatalf("removing a subscription not in the list changed it: %d left", len(l))
	}
	l.remove(a)
	if len(l) != 2 || l.get("a") != nil || l.get("b") != b || l.get("c.>") != c {
		t.Fatalf("after removing a: %d left, get(b) %v, get(c.>) %v", len(l), l.get("b"), l.get("c.>"))
	}
	if l[:len(l)+1][len(l)] != nil {
		t.Error("the removed place still references a subscription")
	}
	l.remove(c)
	l.remove(b)
	if len(l) != 0 {
		t.Fatalf("%d left", len(l))
	}
}
