package transports

import (
	"context"
	"net"
	"net/netip"
	"strconv"
)

// resolver resolves a host name to addresses; net.DefaultResolver.LookupNetIP
// but for tests.
type resolver func(ctx context.Context, network, host string) ([]netip.Addr, error)

// dialChecked connects to hostport ("host:port", host a name or an IP
// address) under an address policy: the name is resolved once, every
// answer is checked with allow (which returns why an address is refused,
// or ""), and the allowed addresses are dialled in turn, by address,
// never by name again, so the answer that was checked is the one used
// (DNS pinning: a name cannot resolve to an allowed address for the check
// and to another for the connection). It returns the connection, or how
// many addresses were allowed and the last error; refused is called for
// each refused address.
func dialChecked(ctx context.Context, lookup resolver, hostport string, allow func(netip.Addr) string, refused func(a netip.Addr, why string)) (conn net.Conn, allowed int, err error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, 0, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, 0, err
	}
	var addrs []netip.Addr
	if a, perr := netip.ParseAddr(host); perr == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = lookup(ctx, "ip", host); err != nil {
		return nil, 0, err
	}
	for _, a := range addrs {
		a = a.Unmap()
		if why := allow(a); why != "" {
			if refused != nil {
				refused(a, why)
			}
			continue
		}
		allowed++
		var d net.Dialer
		if conn, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String()); err == nil {
			return conn, allowed, nil
		}
	}
	return nil, allowed, err
}

func inAny(a netip.Addr, nets []netip.Prefix) bool {
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}
