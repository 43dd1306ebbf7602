package transports

import (
	"net"
	"sync"
)

// reentry is the listener through which a parked request's connection
// goes back to net/http once its response is written (see polling.go,
// "Parked requests"): the node's http.Server serves it beside the
// node's own listener, so the client's next request on the connection is
// read as on a new connection. Accept returns the connections pushed, in
// order; push never blocks (the session's writer pushes), so they queue
// until the server's accept loop takes them.
type reentry struct {
	mu     sync.Mutex
	queue  []net.Conn
	closed bool
	kick   chan struct{} // one token: the queue grew or the listener closed
}

var _ net.Listener = (*reentry)(nil)

func newReentry() *reentry {
	return &reentry{kick: make(chan struct{}, 1)}
}

// push hands conn to the server; it reports false, and leaves conn to the
// caller, once the listener is closed.
func (l *reentry) push(conn net.Conn) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.queue = append(l.queue, conn)
	select { // under mu: Close closes kick under mu
	case l.kick <- struct{}{}:
	default:
	}
	l.mu.Unlock()
	return true
}

// Accept waits for a connection pushed, or for Close.
func (l *reentry) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, net.ErrClosed
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			if len(l.queue) == 0 {
				l.queue = nil // a burst's backing array is not kept
			}
			l.mu.Unlock()
			return c, nil
		}
		l.mu.Unlock()
		<-l.kick
	}
}

// Close makes Accept fail and closes the connections nobody accepted.
// http.Server.Shutdown closes it (it closes every listener it serves),
// and so does Server.Wait; the second Close does nothing.
func (l *reentry) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	q := l.queue
	l.queue = nil
	close(l.kick)
	l.mu.Unlock()
	for _, c := range q {
		_ = c.Close()
	}
	return nil
}

// Addr names the listener; it has no address of its own.
func (l *reentry) Addr() net.Addr { return reentryAddr{} }

type reentryAddr struct{}

func (reentryAddr) Network() string { return "reentry" }
func (reentryAddr) String() string  { return "parked requests" }
