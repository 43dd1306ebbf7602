package natsbroker

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func TestCheckNames(t *testing.T) {
	tests := []struct {
		name             string
		channel, pattern bool // valid as a channel, as a pattern
	}{
		{"a", true, true},
		{"prices.eur.usd", true, true},
		{"a-b_c.D9", true, true},
		{"a.*", false, true},
		{"*.b", false, true},
		{"*", false, true},
		{">", false, true},
		{"a.>", false, true},
		{"a.*.>", false, true},
		{"a.>.b", false, false},
		{">.a", false, false},
		{"a*", false, false},
		{"a.b>", false, false},
		{"", false, false},
		{".", false, false},
		{"a.", false, false},
		{".a", false, false},
		{"a..b", false, false},
		{"a b", false, false},
		{"a\tb", false, false},
		{"a\nb", false, false},
		{"a\x00b", false, false},
		{"a\x7fb", false, false},
	}
	for _, tt := range tests {
		if err := checkChannel(tt.name); (err == nil) != tt.channel {
			t.Errorf("checkChannel(%q) = %v, want valid=%v", tt.name, err, tt.channel)
		} else if err != nil && !errors.Is(err, errBadName) {
			t.Errorf("checkChannel(%q) = %v, not errBadName", tt.name, err)
		}
		if err := checkPattern(tt.name); (err == nil) != tt.pattern {
			t.Errorf("checkPattern(%q) = %v, want valid=%v", tt.name, err, tt.pattern)
		}
	}
}

func TestSubjects(t *testing.T) {
	for _, prefix := range []string{"app", "app."} {
		s, err := newSubjects(prefix)
		if err != nil {
			t.Fatalf("newSubjects(%q): %v", prefix, err)
		}
		if got := s.subject("x.y"); got != "app.x.y" {
			t.Errorf("prefix %q: subject(x.y) = %q", prefix, got)
		}
		if got := s.subject(">"); got != "app.>" {
			t.Errorf("prefix %q: subject(>) = %q", prefix, got)
		}
		if ch, ok := s.channel("app.x.y"); !ok || ch != "x.y" {
			t.Errorf("prefix %q: channel(app.x.y) = %q, %v", prefix, ch, ok)
		}
		for _, subj := range []string{"other.x", "app", "app.", "apple.x"} {
			if ch, ok := s.channel(subj); ok {
				t.Errorf("prefix %q: channel(%q) = %q, want ignored", prefix, subj, ch)
			}
		}
	}
	var none subjects
	if none.subject("a.b") != "a.b" {
		t.Error("no prefix changes subjects")
	}
	if ch, ok := none.channel("a.b"); !ok || ch != "a.b" {
		t.Errorf("no prefix: channel(a.b) = %q, %v", ch, ok)
	}
	for _, bad := range []string{"a*", "a..b", "a b", ">", "a.>"} {
		if _, err := newSubjects(bad); err == nil {
			t.Errorf("newSubjects(%q) accepted", bad)
		}
	}
}

func TestCheckHeader(t *testing.T) {
	good := [][2]string{{"Content-Type", "text/plain"}, {"x", ""}, {"X-A", "a: b; c"}}
	bad := [][2]string{{"", "v"}, {"a b", "v"}, {"a:b", "v"}, {"a\nb", "v"}, {"k", "a\r\nInjected: 1"}, {"k", "a\nb"}}
	for _, h := range good {
		if err := checkHeader(h[0], h[1]); err != nil {
			t.Errorf("checkHeader(%q, %q) = %v", h[0], h[1], err)
		}
	}
	for _, h := range bad {
		if err := checkHeader(h[0], h[1]); err == nil {
			t.Errorf("checkHeader(%q, %q) accepted", h[0], h[1])
		}
	}
}

func TestBackoff(t *testing.T) {
	const base, maxWait = 100 * time.Millisecond, 3 * time.Second
	f := backoff(base, maxWait)
	for attempt := 0; attempt < 100; attempt++ {
		for range 50 {
			d := f(attempt)
			if d < base || d > maxWait {
				t.Fatalf("attempt %d: delay %v outside [%v, %v]", attempt, d, base, maxWait)
			}
		}
	}
	// Late attempts reach the upper half of the maximum.
	if d := f(50); d < maxWait/2 {
		t.Errorf("attempt 50: delay %v, want >= %v", d, maxWait/2)
	}
	// Jitter: not every delay is the same.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[f(3)] = true
	}
	if len(seen) < 2 {
		t.Error("no jitter")
	}
	// A huge base does not overflow.
	if d := backoff(time.Hour, 2*time.Hour)(60); d < time.Hour || d > 2*time.Hour {
		t.Errorf("huge base: %v", d)
	}
}

func TestParseListen(t *testing.T) {
	tests := []struct {
		in   string
		host string
		port int
		ok   bool
	}{
		{"127.0.0.1:0", "127.0.0.1", server.RANDOM_PORT, true},
		{"127.0.0.1:-1", "127.0.0.1", server.RANDOM_PORT, true},
		{"127.0.0.1:", "127.0.0.1", server.RANDOM_PORT, true},
		{":4333", server.DEFAULT_HOST, 4333, true},
		{"[::1]:4333", "::1", 4333, true},
		{"localhost", "", 0, false},
		{"h:x", "", 0, false},
		{"h:70000", "", 0, false},
		{"h:-2", "", 0, false},
	}
	for _, tt := range tests {
		host, port, err := parseListen(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (host != tt.host || port != tt.port)) {
			t.Errorf("parseListen(%q) = %q, %d, %v; want %q, %d, ok=%v", tt.in, host, port, err, tt.host, tt.port, tt.ok)
		}
	}
}

func TestOptionsAuthConflict(t *testing.T) {
	if _, err := (Options{User: "u", Token: "t"}).natsOptions(); err == nil {
		t.Error("User and Token together accepted")
	}
	if _, err := (Options{TLS: &TLSOptions{CertFile: "c"}}).natsOptions(); err == nil {
		t.Error("CertFile without KeyFile accepted")
	}
	if b, err := Connect(t.Context(), Options{TLS: &TLSOptions{CAFile: "/nonexistent/ca.pem"}}); err == nil {
		b.Close()
		t.Error("missing CA file accepted")
	}
}
