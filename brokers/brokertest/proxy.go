package brokertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// proxyDialTimeout bounds the proxy's connect to its target.
const proxyDialTimeout = 5 * time.Second

// Proxy is a TCP proxy on 127.0.0.1 in front of a broker, for outage
// tests: Cut drops every connection through it and refuses new ones until
// Restore. Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every connection's pumps

	mu     sync.Mutex
	cut    bool                  // guarded by mu
	closed bool                  // guarded by mu
	conns  map[net.Conn]struct{} // guarded by mu; both ends of every proxied connection
}

// NewProxy starts a Proxy on 127.0.0.1 (a free port) in front of target
// ("host:port"). It fails t if it cannot listen, and is closed when the
// test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("brokertest: proxy listen: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every connection through the proxy and refuses new ones (it
// accepts and closes them at once, so a client sees its connection reset
// rather than a hang) until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := p.takeConns()
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Restore lets new connections through again after Cut.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Close stops the proxy, closes every connection through it and waits
// for its goroutines. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.takeConns()
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

// takeConns empties the connection set and returns what it held. The
// caller holds mu.
func (p *Proxy) takeConns() []net.Conn {
	out := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		out = append(out, c)
	}
	clear(p.conns)
	return out
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (such as too many open files):
			// back off briefly rather than spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		refuse := p.cut || p.closed
		if !refuse {
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		go p.serve(c)
	}
}

// serve connects client to the target and copies both ways until either
// side closes or the proxy drops the connection.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, proxyDialTimeout)
	if err != nil {
		_ = client.Close()
		return
	}
	p.mu.Lock()
	if p.cut || p.closed {
		// Cut while dialing.
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.conns[client] = struct{}{}
	p.conns[server] = struct{}{}
	p.mu.Unlock()

	var pumps sync.WaitGroup
	pump := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// One direction ended: end the other too.
		_ = dst.Close()
		_ = src.Close()
	}
	pumps.Go(func() { pump(server, client) })
	pump(client, server)
	pumps.Wait()

	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

// RunOutage is the outage conformance test: a broker connection cut and
// restored through a Proxy in front of target ("host:port" of the broker
// under test). newBroker returns a new Broker that connects to the broker
// at proxyAddr instead of target (same credentials otherwise), reconnects
// quickly (a reconnect delay of at most a second or so keeps the test
// short), and reports its state changes to onState. RunOutage closes it.
//
// It checks, over two outages: Ready turns false and StateDisconnected is
// reported; Publish fails with brokers.ErrUnavailable without waiting for
// its context's deadline; Subscribe and Unsubscribe during the outage
// succeed; after Restore, Ready turns true, StateConnected is reported
// (last), the subscription made before the outage and the one made during
// it receive what is published after recovery, the one ended during the
// outage receives nothing, and nothing refused during the outage is
// delivered later.
func RunOutage(t *testing.T, newBroker func(t *testing.T, proxyAddr string, onState brokers.StateFunc) brokers.Broker, target string) {
	t.Helper()
	p := NewProxy(t, target)
	var st StateLog
	b := newBroker(t, p.Addr(), st.Record)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	WaitUntil(t, "broker ready", b.Ready)
	WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) >= 1 })

	s := &suite{prefix: "cgtest." + token()}
	old, during, gone := s.ch("old"), s.ch("during"), s.ch("gone")
	var cOld, cDuring, cGone Inbox
	subscribe(t, b, old, cOld.Handle)
	goneSub := subscribe(t, b, gone, cGone.Handle)
	publish(t, b, old, "before")
	cOld.Wait(t, old, "before")

	for round := range 2 {
		p.Cut()
		WaitUntil(t, fmt.Sprintf("Ready false after cut %d", round), func() bool { return !b.Ready() })
		WaitUntil(t, fmt.Sprintf("StateDisconnected after cut %d", round), func() bool {
			return st.Count(brokers.StateDisconnected) >= round+1
		})

		// A deadline far beyond waitTimeout: an error that is that
		// deadline means Publish waited for the broker instead of failing.
		ctx, cancel := context.WithTimeout(t.Context(), 4*waitTimeout)
		err := b.Publish(ctx, brokers.Message{Channel: old, Data: []byte(fmt.Sprintf("lost %d", round))})
		waited := errors.Is(ctx.Err(), context.DeadlineExceeded)
		cancel()
		if !errors.Is(err, brokers.ErrUnavailable) {
			t.Errorf("Publish during outage %d: %v, want ErrUnavailable", round, err)
		}
		if waited {
			t.Errorf("Publish during outage %d waited for its context's deadline instead of failing at once", round)
		}
		if round == 0 {
			subscribe(t, b, during, cDuring.Handle)
			if err := goneSub.Unsubscribe(); err != nil {
				t.Errorf("Unsubscribe during outage: %v", err)
			}
		}

		connected := st.Count(brokers.StateConnected)
		p.Restore()
		WaitUntil(t, fmt.Sprintf("Ready after restore %d", round), b.Ready)
		WaitUntil(t, fmt.Sprintf("StateConnected after restore %d", round), func() bool {
			return st.Count(brokers.StateConnected) > connected
		})
		if last, _ := st.Last(); last != brokers.StateConnected {
			t.Errorf("last state after restore %d: %v, want connected", round, last)
		}

		after := fmt.Sprintf("after %d", round)
		publish(t, b, gone, after)
		publish(t, b, old, after)
		publish(t, b, during, after)
		cOld.Wait(t, old, after)
		cDuring.Wait(t, during, after)
	}
	time.Sleep(quietPeriod)
	if got := cGone.Messages(); len(got) > 0 {
		t.Errorf("subscription ended during the outage received %v", describe(got))
	}
	for _, m := range cOld.Messages() {
		if len(m.Data) >= 4 && string(m.Data[:4]) == "lost" {
			t.Errorf("a publish refused during an outage was delivered later: %q", m.Data)
		}
	}
	cOld.CheckSerial(t)
	cDuring.CheckSerial(t)
}

// StateLog records the states a broker's StateFunc is told; pass its
// Record as Options.OnState. Safe for concurrent use.
type StateLog struct {
	mu  sync.Mutex
	all []brokers.State
}

// Record is a brokers.StateFunc.
func (s *StateLog) Record(st brokers.State) {
	s.mu.Lock()
	s.all = append(s.all, st)
	s.mu.Unlock()
}

// List returns every state recorded, oldest first.
func (s *StateLog) List() []brokers.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

// Count returns how many times st was recorded.
func (s *StateLog) Count(st brokers.State) int {
	n := 0
	for _, x := range s.List() {
		if x == st {
			n++
		}
	}
	return n
}

// Last returns the latest state recorded, if any.
func (s *StateLog) Last() (brokers.State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.all) == 0 {
		return 0, false
	}
	return s.all[len(s.all)-1], true
}
