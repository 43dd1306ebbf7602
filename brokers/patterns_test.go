package brokers_test

import (
	"strings"
	"testing"

	"github.com/cometgate/cometgate/brokers"
)

func TestPatternCovers(t *testing.T) {
	tests := []struct {
		ns, p string
		want  bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{">", "a", true},
		{">", "a.b.c", true},
		{">", ">", true},
		{">", "*", true},
		{"a.>", "a", false},
		{"a.>", "a.b", true},
		{"a.>", "a.*", true},
		{"a.>", "a.>", true},
		{"a.>", "a.b.>", true},
		{"a.>", "b.c", false},
		{"a.>", ">", false},
		{"a.*", "a.b", true},
		{"a.*", "a.*", true},
		{"a.*", "a.>", false},
		{"a.*", "a.b.c", false},
		{"a.*", "a", false},
		{"*", ">", false},
		{"*.b", "a.b", true},
		{"*.b", "*.c", false},
		{"a.b", "a.*", false},
		{"a.*.c", "a.*.c", true},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.>", false},
		{"ab", "a", false},
		{"a", "ab", false},
		{"a.b", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "a.*.>", true},
		{"*.>", ">", false},
		{"*.>", "a.b", true},
		{"demo.x.>", "demo.>", false},
		{"demo.x.>", "demo.*.y", false},
	}
	for _, tc := range tests {
		if got := brokers.PatternCovers(tc.ns, tc.p); got != tc.want {
			t.Errorf("PatternCovers(%q, %q) = %v, want %v", tc.ns, tc.p, got, tc.want)
		}
		// A channel is covered exactly when it matches.
		if !brokers.IsPattern(tc.p) {
			if got := brokers.MatchChannel(tc.ns, tc.p); got != tc.want {
				t.Errorf("MatchChannel(%q, %q) = %v, want %v", tc.ns, tc.p, got, tc.want)
			}
		}
	}
}

func TestMatchChannel(t *testing.T) {
	tests := []struct {
		p, ch string
		want  bool
	}{
		{"a.b", "a.b", true},
		{"a.*", "a.b", true},
		{"a.*", "a.b.c", false},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{"*.*", "a.b", true},
		{"*.*", "a", false},
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"*", "a", true},
		{"*", "a.b", false},
		{"a.*", "a", false},
		{"a.*.c", "a.x.c", true},
		{"a.*.c", "a.x.d", false},
		{">", "a", true},
		{">", "a.b.c", true},
		{"a.>", "a.b", true},
		{"a.>", "ab.c", false},
		{"*.>", "a", false},
		{"*.>", "a.b", true},
	}
	for _, tc := range tests {
		if got := brokers.MatchChannel(tc.p, tc.ch); got != tc.want {
			t.Errorf("MatchChannel(%q, %q) = %v, want %v", tc.p, tc.ch, got, tc.want)
		}
	}
}

func TestPatternsOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a.*", "*.b", true},
		{"a.*", "a.b.>", false},
		{"a.>", "a.b.>", true},
		{"a.>", "a", false},
		{">", "a", true},
		{"*", "a.b", false},
		{"a.*.c", "a.b.*", true},
		{"a.*.c", "a.b.d", false},
		{"x.>", "y.>", false},
	}
	for _, tc := range tests {
		if got := brokers.PatternsOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("PatternsOverlap(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := brokers.PatternsOverlap(tc.b, tc.a); got != tc.want {
			t.Errorf("PatternsOverlap(%q, %q) = %v, want %v (swapped)", tc.b, tc.a, got, tc.want)
		}
	}
}

// The helpers agree with brute force over every channel of up to four
// tokens from a small alphabet, for every pattern pair of up to three
// tokens over that alphabet plus the wildcards.
func TestPatternsExhaustive(t *testing.T) {
	alphabet := []string{"a", "b"}
	var channels []string
	var grow func(prefix []string, n int)
	grow = func(prefix []string, n int) {
		if len(prefix) > 0 {
			channels = append(channels, strings.Join(prefix, "."))
		}
		if n == 0 {
			return
		}
		for _, tok := range alphabet {
			grow(append(prefix, tok), n-1)
		}
	}
	grow(nil, 4)

	var patterns []string
	var growP func(prefix []string, n int)
	growP = func(prefix []string, n int) {
		if len(prefix) > 0 {
			patterns = append(patterns, strings.Join(prefix, "."))
			if prefix[len(prefix)-1] == ">" {
				return
			}
		}
		if n == 0 {
			return
		}
		for _, tok := range []string{"a", "b", "*", ">"} {
			growP(append(prefix, tok), n-1)
		}
	}
	growP(nil, 3)

	// match is the reference: token by token, by definition.
	match := func(p, ch string) bool {
		pt, ct := strings.Split(p, "."), strings.Split(ch, ".")
		for i, tok := range pt {
			if tok == ">" {
				return len(ct) > i
			}
			if i >= len(ct) || (tok != "*" && tok != ct[i]) {
				return false
			}
		}
		return len(pt) == len(ct)
	}
	// Channels of up to four tokens are enough to witness every
	// difference between patterns of up to three tokens.
	for _, a := range patterns {
		for _, b := range patterns {
			covers, overlap := true, false
			for _, ch := range channels {
				ma, mb := match(a, ch), match(b, ch)
				if mb && !ma {
					covers = false
				}
				if ma && mb {
					overlap = true
				}
			}
			if got := brokers.PatternCovers(a, b); got != covers {
				t.Errorf("PatternCovers(%q, %q) = %v, brute force says %v", a, b, got, covers)
			}
			if got := brokers.PatternsOverlap(a, b); got != overlap {
				t.Errorf("PatternsOverlap(%q, %q) = %v, brute force says %v", a, b, got, overlap)
			}
		}
		for _, ch := range channels {
			if got := brokers.MatchChannel(a, ch); got != match(a, ch) {
				t.Errorf("MatchChannel(%q, %q) = %v, want %v", a, ch, got, match(a, ch))
			}
		}
	}
}
