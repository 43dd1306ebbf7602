package transports

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var callbackRe = regexp.MustCompile(`^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$`)

// FuzzParseCallback: a name is accepted exactly when it matches the
// documented rule, and an accepted name can hold nothing that ends a
// script or calls something else.
func FuzzParseCallback(f *testing.F) {
	for _, s := range []string{"cb", "a.b", "$", "_a.$b1", "1a", "a..b", "a.", "alert(1)", "</script>", "a\u2028", strings.Repeat("a", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cb, err := parseCallback([]string{s})
		want := callbackRe.MatchString(s) && len(s) <= maxCallbackLen
		if (err == nil) != want {
			t.Fatalf("parseCallback(%q) = %q, %v; regexp says %v", s, cb, err, want)
		}
		if err == nil && (cb != s || strings.ContainsAny(cb, "<>()[]'\"\\ \n\r")) {
			t.Fatalf("parseCallback(%q) accepted %q", s, cb)
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error message")
		}
	})
}

// FuzzParseAck: accepted values are exactly the decimal uint64s of at most
// 20 digits.
func FuzzParseAck(f *testing.F) {
	for _, s := range []string{"0", "1", "41", "18446744073709551615", "18446744073709551616", "-1", "+1", " 1", "1e3", "0x10", "", "007"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		seq, ok, err := parseAck([]string{s})
		want, perr := strconv.ParseUint(s, 10, 64)
		valid := perr == nil && s != "" && len(s) <= 20 && strings.Trim(s, "0123456789") == ""
		if (err == nil) != valid || ok != valid {
			t.Fatalf("parseAck(%q) = %d, %v, %v; valid %v", s, seq, ok, err, valid)
		}
		if valid && seq != want {
			t.Fatalf("parseAck(%q) = %d, want %d", s, seq, want)
		}
		if _, ok, err := parseAck(nil); ok || err != nil {
			t.Fatal("absent ack must be no ack and no error")
		}
	})
}

// FuzzParseSID: accepted ids are 1 to 128 bytes of the session id
// alphabet; a gateway session id is always accepted.
func FuzzParseSID(f *testing.F) {
	for _, s := range []string{"n1.7HqK2dX9aBcDeFgHiJkLmN", "a", "", "a/b", "a b", "a%2F", "..", strings.Repeat("x", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := parseSID(s)
		valid := len(s) >= 1 && len(s) <= maxSIDLen && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == ""
		if (err == nil) != valid {
			t.Fatalf("parseSID(%q) = %v; valid %v", s, err, valid)
		}
	})
}
