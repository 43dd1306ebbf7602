package transports

import (
	"net/http"
	"net/netip"
	"strings"
)

// forwardedFor is the chain of addresses that proxies reported for a
// request, oldest first: X-Forwarded-For when the request has one, else
// the for= parameters of Forwarded (RFC 7239). Only the gate decides how
// much of it to believe (clientAddr). An entry that is not an IP address
// (garbage, "unknown", an obfuscated "_name", an element without for=) is
// the zero Addr: nothing left of it can be believed.
func forwardedFor(h http.Header) []netip.Addr {
	if xff := h.Values("X-Forwarded-For"); len(xff) > 0 {
		var hops []netip.Addr
		for _, v := range xff {
			for part := range strings.SplitSeq(v, ",") {
				hops = append(hops, hop(netip.ParseAddr(strings.TrimSpace(part))))
			}
		}
		return hops
	}
	var hops []netip.Addr
	for _, v := range h.Values("Forwarded") {
		for elem := range strings.SplitSeq(v, ",") {
			hops = append(hops, forwardedElemFor(elem))
		}
	}
	return hops
}

// forwardedElemFor is the address in the for= parameter of one element
// of a Forwarded header, e.g. for=192.0.2.60;proto=http or
// for="[2001:db8:cafe::17]:4711"; the zero Addr when there is none.
func forwardedElemFor(elem string) netip.Addr {
	for pair := range strings.SplitSeq(elem, ";") {
		key, value, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(key, "for") {
			continue
		}
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		if ap, err := netip.ParseAddrPort(value); err == nil {
			return hop(ap.Addr(), nil)
		}
		if rest, ok := strings.CutPrefix(value, "["); ok {
			// [v6] without a port (with one, ParseAddrPort took it).
			if value, ok = strings.CutSuffix(rest, "]"); !ok {
				return netip.Addr{}
			}
		}
		return hop(netip.ParseAddr(value))
	}
	return netip.Addr{}
}

// hop is a reported address as the gate counts it: IPv4-mapped IPv6
// addresses as IPv4; the zero Addr for an error or an address with a
// zone (which names an interface of the proxy, not a client).
func hop(a netip.Addr, err error) netip.Addr {
	if err != nil || a.Zone() != "" {
		return netip.Addr{}
	}
	return a.Unmap()
}
