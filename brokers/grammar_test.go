package brokers_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cometgate/cometgate/brokers"
)

func TestValidateChannel(t *testing.T) {
	for _, ok := range []string{"a", "a.b", "A-z_0:9@x=y", strings.Repeat("a", brokers.MaxNameLen)} {
		if err := brokers.ValidateChannel(ok); err != nil {
			t.Errorf("ValidateChannel(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a/b", "ä", strings.Repeat("a", brokers.MaxNameLen+1)} {
		var ce *brokers.NameError
		if err := brokers.ValidateChannel(bad); !errors.As(err, &ce) || ce.Rule == "" {
			t.Errorf("ValidateChannel(%q) = %v, want a *brokers.NameError", bad, err)
		}
	}
	for _, ok := range []string{"*", ">", "a.*.c", "a.>", "*.*.>"} {
		if err := brokers.ValidatePattern(ok); err != nil {
			t.Errorf("ValidatePattern(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{">.a", "a.>.>", "a.**", "a.b*", "a.>b"} {
		if err := brokers.ValidatePattern(bad); err == nil {
			t.Errorf("ValidatePattern(%q) succeeded", bad)
		}
	}
}

// refMatch is a reference implementation of NATS subject matching, written
// independently of PatternCovers: recursion over token slices.
func refMatch(pattern, channel []string) bool {
	switch {
	case len(pattern) == 0:
		return len(channel) == 0
	case pattern[0] == ">":
		return len(channel) >= 1
	case len(channel) == 0:
		return false
	case pattern[0] == "*" || pattern[0] == channel[0]:
		return refMatch(pattern[1:], channel[1:])
	}
	return false
}

// refCovers reports whether every channel pattern p matches is matched by
// ns, by the same kind of recursion.
func refCovers(ns, p []string) bool {
	switch {
	case len(ns) == 0:
		return len(p) == 0
	case ns[0] == ">":
		return len(p) >= 1
	case len(p) == 0 || p[0] == ">":
		return false // p matches more (or other) lengths than ns
	case ns[0] == "*":
		return refCovers(ns[1:], p[1:])
	case p[0] == "*":
		return false // p matches any token here, ns one only
	}
	return ns[0] == p[0] && refCovers(ns[1:], p[1:])
}

// witness builds the channel most likely to match both patterns a and b:
// a literal token where either has one, "w" for wildcards, and the other
// pattern's remaining tokens where one ends in ">". Some channel matches
// both patterns exactly when this one does (checked with refMatch).
func witness(a, b []string) []string {
	concrete := func(x, y string) string {
		switch {
		case x != "*" && x != ">":
			return x
		case y != "*" && y != ">" && y != "":
			return y
		}
		return "w"
	}
	var ch []string
	for i := 0; i < len(a) && i < len(b); i++ {
		switch {
		case a[i] == ">":
			for _, t := range b[i:] {
				ch = append(ch, concrete(t, ""))
			}
			return ch
		case b[i] == ">":
			for _, t := range a[i:] {
				ch = append(ch, concrete(t, ""))
			}
			return ch
		}
		ch = append(ch, concrete(a[i], b[i]))
	}
	return ch
}

func FuzzValidatePattern(f *testing.F) {
	for _, c := range [][3]string{
		{"a.b", "a.*", "a.b"},
		{"a.>", "a.b.>", "a.b.c"},
		{">", "*", "x"},
		{"*.>", ">", "a"},
		{"*.>", "*.*", "a.b"},
		{"demo.x.>", "demo.>", "demo.x.y"},
		{"demo.x.>", "demo.*.y", "demo.x.y"},
		{"*", "*", "a"},
		{"a.*.c", "a.b.c", "a.b.c"},
		{"a..b", "", "."},
		{"a.>.b", "a.b>", "a.b>"},
		{"a.**", "a.*b", "a.*b"},
		{"a b", "ä.b", "a.b "},
		{strings.Repeat("a.", 127) + "a", strings.Repeat("*.", 127) + ">", strings.Repeat("a.", 128) + "a"},
	} {
		f.Add(c[0], c[1], c[2])
	}
	f.Fuzz(func(t *testing.T, p, q, ch string) {
		pOK, qOK, chOK := brokers.ValidatePattern(p) == nil, brokers.ValidatePattern(q) == nil, brokers.ValidateChannel(ch) == nil
		if chOK {
			if brokers.ValidatePattern(ch) != nil || brokers.IsPattern(ch) || !brokers.MatchChannel(ch, ch) {
				t.Fatalf("channel %q", ch)
			}
		}
		if brokers.ValidateChannel(p) == nil && !pOK {
			t.Fatalf("%q is a valid channel but not a valid pattern", p)
		}
		if !pOK {
			var ce *brokers.NameError
			if err := brokers.ValidatePattern(p); !errors.As(err, &ce) || ce.Rule == "" || ce.Name != p {
				t.Fatalf("ValidatePattern(%q) = %v", p, err)
			}
			return
		}
		ps := strings.Split(p, ".")
		if !brokers.PatternCovers(p, p) {
			t.Fatalf("PatternCovers(%q, itself) is false", p)
		}
		if brokers.IsPattern(p) != (brokers.ValidateChannel(p) != nil) {
			t.Fatalf("IsPattern(%q) = %v", p, brokers.IsPattern(p))
		}
		if chOK {
			if got, want := brokers.MatchChannel(p, ch), refMatch(ps, strings.Split(ch, ".")); got != want {
				t.Fatalf("MatchChannel(%q, %q) = %v, want %v", p, ch, got, want)
			}
		}
		if !qOK {
			return
		}
		qs := strings.Split(q, ".")
		covers := brokers.PatternCovers(p, q)
		if want := refCovers(ps, qs); covers != want {
			t.Fatalf("PatternCovers(%q, %q) = %v, want %v", p, q, covers, want)
		}
		// Soundness: what q matches, a pattern covering q matches too.
		if covers && chOK && refMatch(qs, strings.Split(ch, ".")) && !refMatch(ps, strings.Split(ch, ".")) {
			t.Fatalf("%q covers %q, which matches %q, but %q does not", p, q, ch, p)
		}
		inter := brokers.PatternsOverlap(p, q)
		if inter != brokers.PatternsOverlap(q, p) || covers && !inter {
			t.Fatalf("PatternsOverlap(%q, %q) = %v, inconsistent", p, q, inter)
		}
		if chOK && !inter && refMatch(ps, strings.Split(ch, ".")) && refMatch(qs, strings.Split(ch, ".")) {
			t.Fatalf("%q and %q both match %q, but PatternsOverlap is false", p, q, ch)
		}
		if w := witness(ps, qs); inter != (refMatch(ps, w) && refMatch(qs, w)) {
			t.Fatalf("PatternsOverlap(%q, %q) = %v; channel %q", p, q, inter, strings.Join(w, "."))
		}
		if covers && brokers.PatternCovers(q, p) && p != q {
			t.Fatalf("%q and %q cover each other but differ", p, q)
		}
	})
}
