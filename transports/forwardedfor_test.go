package transports

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// TestClientAddressForwarded: behind a trusted proxy the client's address
// comes from Forwarded (RFC 7239) as it does from X-Forwarded-For, which
// wins when both are there; anything that is not an address stops the
// walk at the last trusted proxy.
func TestClientAddressForwarded(t *testing.T) {
	g := &gate{proxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	for _, tc := range []struct {
		peer, fwd, xff, want string
	}{
		{"10.0.0.2:1234", "for=198.51.100.1", "", "198.51.100.1"},
		{"10.0.0.2:1234", `for="198.51.100.1:4711";proto=https;by=10.0.0.2`, "", "198.51.100.1"},
		{"10.0.0.2:1234", `for="[2001:db8:cafe::17]:4711"`, "", "2001:db8:cafe::17"},
		{"10.0.0.2:1234", `for="[2001:db8:cafe::17]"`, "", "2001:db8:cafe::17"},
		{"10.0.0.2:1234", `For=1.2.3.4, for=198.51.100.1;proto=http, for=10.0.0.7`, "", "198.51.100.1"},
		{"10.0.0.2:1234", `for=unknown`, "", "10.0.0.2"},
		{"10.0.0.2:1234", `for=_hidden, for=10.0.0.9`, "", "10.0.0.9"},
		{"10.0.0.2:1234", `proto=https`, "", "10.0.0.2"},
		{"10.0.0.2:1234", `for="[2001:db8::1"`, "", "10.0.0.2"},
		{"10.0.0.2:1234", `for="[fe80::1%eth0]:80"`, "", "10.0.0.2"},
		{"10.0.0.2:1234", "for=198.51.100.1", "203.0.113.5", "203.0.113.5"},
		{"203.0.113.9:1234", "for=198.51.100.1", "", "203.0.113.9"}, // not a proxy
		{"[::1]:1234", `for="[::ffff:198.51.100.3]"`, "", "198.51.100.3"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tc.peer
		r.Header.Set("Forwarded", tc.fwd)
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := g.clientAddr(r); got != netip.MustParseAddr(tc.want) {
			t.Errorf("peer %s, Forwarded %q, X-Forwarded-For %q: %v, want %s", tc.peer, tc.fwd, tc.xff, got, tc.want)
		}
	}
}

// FuzzForwarded: any Forwarded header gives one entry per element, never
// an address with a zone or an IPv4-mapped one, and the chain it gives,
// written back as a header, reads the same.
func FuzzForwarded(f *testing.F) {
	for _, s := range []string{
		"for=192.0.2.60;proto=http;by=203.0.113.43",
		`for="[2001:db8:cafe::17]:4711", for=unknown`,
		`for="_gazonk"`, `For="[2001:db8:cafe::17]"`, `for=`, `for="`, `;;,,`, `for="[::1`,
		`for=1.2.3.4:99999`, `for="[fe80::1%25eth0]"`, "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{"Forwarded": {v}}
		hops := forwardedFor(h)
		if want := strings.Count(v, ",") + 1; len(hops) != want {
			t.Fatalf("%q: %d entries, want %d", v, len(hops), want)
		}
		parts := make([]string, len(hops))
		for i, a := range hops {
			switch {
			case !a.IsValid():
				parts[i] = "for=unknown"
			case a.Zone() != "" || a.Is4In6():
				t.Fatalf("%q: entry %d is %v", v, i, a)
			case a.Is6():
				parts[i] = `for="[` + a.String() + `]"`
			default:
				parts[i] = "for=" + a.String()
			}
		}
		again := forwardedFor(http.Header{"Forwarded": {strings.Join(parts, ", ")}})
		for i := range hops {
			if again[i] != hops[i] {
				t.Fatalf("%q: entry %d read back as %v, was %v", v, i, again[i], hops[i])
			}
		}
	})
}
