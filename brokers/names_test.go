package brokers

import (
	"errors"
	"testing"
)

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wildcards bool
		forbidden string
		ok        bool
	}{
		{"a.b", false, "", true},
		{"a.*", false, "", false},
		{"a.*", true, "", true},
		{"a.>", true, "", true},
		{"a.>.b", true, "", false},
		{"a..b", false, "", false},
		{"", false, "", false},
		{"a b", false, "", false},
		{"a.\x7f", false, "", false},
		{"a#b", false, "", true},
		{"a#b", false, "#", false},
		{"prix.€", false, "", true},
	} {
		err := CheckName(tc.name, tc.wildcards, tc.forbidden)
		if (err == nil) != tc.ok {
			t.Errorf("CheckName(%q, %v, %q) = %v, want ok=%v", tc.name, tc.wildcards, tc.forbidden, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("CheckName(%q): %v does not wrap ErrInvalidName", tc.name, err)
		}
	}
}

// Brokers check every published channel: a valid name costs no
// allocation.
func TestCheckNameAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() {
		_ = CheckName("prices.eur-usd.>", true, "#")
		_ = ValidateChannel("prices.eur-usd")
	}); n != 0 {
		t.Errorf("%v allocations per valid name, want 0", n)
	}
}
