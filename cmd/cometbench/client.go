package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"syscall"
	"time"
)

// The client side of each browser transport. A transport only knows how to
// open a connection that subscribes to one channel and how to cut the
// stream into packets; everything else (waiting for the subscription,
// sequence checks, latency) is shared, in worker.go. Adding a transport is
// one file that implements clientTransport and registers itself in
// clientTransports.

// clientTransport opens bench sessions over one browser transport.
type clientTransport interface {
	// Open connects one session to the gateway and asks it to subscribe to
	// o.Channel: the first packets of the stream are then hello and the
	// answer to that subscription (ok or err). ctx bounds the connection
	// set-up only.
	Open(ctx context.Context, o openOptions) (packetStream, error)
}

// openOptions say where and how to open one session.
type openOptions struct {
	// Dial dials TCP from the session's source address.
	Dial dialFunc
	// Base is the gateway, http://host:port.
	Base *url.URL
	// Channel is the channel to subscribe to.
	Channel string
	// ReadBuffer is the size of the connection's read buffer.
	ReadBuffer int
	// Deflate offers permessage-deflate (websocket only).
	Deflate bool
}

// dialFunc dials a TCP address from the session's source address.
type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

// packetStream is one open session's downstream. Next is called by one
// goroutine at a time; Close may be called from any goroutine, once or
// more, and makes a blocked Next return an error.
type packetStream interface {
	// Next returns the next packet's JSON. The bytes are valid until the
	// next call.
	Next() ([]byte, error)
	// Close ends the session's connection(s).
	Close() error
}

// pollable is a packetStream that can hand its connection to the worker's
// event loop once the session is subscribed: from then on no goroutine is
// parked per connection, and one read serves all the packets that arrived
// together. Transports that cannot (several requests per session) simply
// do not implement it and keep their reader goroutine.
type pollable interface {
	// Handover stops the stream's own reading and returns its connection,
	// the bytes it had read past the last packet Next returned, and a
	// parser for everything after.
	Handover() (conn net.Conn, buffered []byte, p streamParser)
}

// streamParser cuts a transport's byte stream into packets.
type streamParser interface {
	// Feed parses the next bytes of the stream, calling emit for each
	// complete packet (the bytes are valid during the call only). An error
	// ends the session (a close frame is a *wsClosedError).
	Feed(b []byte, emit func(pkt []byte)) error
}

// answeringParser is a streamParser that writes to the server too (a
// WebSocket's pongs and close replies). Once the poller holds the
// connection, detachFD has closed the net.Conn, and the answers go
// through the poller's descriptor: answerTo gives it.
type answeringParser interface {
	answerTo(w io.Writer)
}

// clientTransports maps --transport names to implementations.
var clientTransports = map[string]clientTransport{}

func registerTransport(name string, t clientTransport) {
	if _, dup := clientTransports[name]; dup {
		panic("cometbench: transport " + name + " registered twice")
	}
	clientTransports[name] = t
}

func transportNames() string {
	names := make([]string, 0, len(clientTransports))
	for n := range clientTransports {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func lookupTransport(name string) (clientTransport, error) {
	t, ok := clientTransports[name]
	if !ok {
		return nil, fmt.Errorf("--transport %q: not one of %s", name, transportNames())
	}
	return t, nil
}

// hostPort is the TCP address of base (http URLs default to port 80).
func hostPort(base *url.URL) string {
	if base.Port() != "" {
		return base.Host
	}
	return net.JoinHostPort(base.Hostname(), "80")
}

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT socket option.
const ipBindAddressNoPort = 24

// sourceDialer dials from the source address src. The port is left to
// connect(), not bind() (IP_BIND_ADDRESS_NO_PORT): bind has to find a
// port free for every destination and scans the whole ephemeral range
// under a lock, which grows to milliseconds of kernel time per connection
// once most ports are in use (TIME_WAIT included), while connect picks a
// port free for this destination only, and may reuse TIME_WAIT ones on
// loopback (net.ipv4.tcp_tw_reuse).
func sourceDialer(src net.IP, timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: src},
		Timeout:   timeout,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
}

// abortClose closes a connection with a reset instead of a FIN (SO_LINGER
// 0), so the bench leaves no TIME_WAIT socket behind: tens of thousands
// of them would hold the loopback ports the next run needs for a minute.
func abortClose(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}
