package gateway

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// nextData returns the payload of the next packet written to tr, which
// must be a TypeData body.
func nextData(t *testing.T, tr *fakeTransport) []byte {
	t.Helper()
	select {
	case s := <-tr.sink:
		if s.Body.Type() != TypeData {
			t.Fatalf("got a %q packet, want data", s.Body.Type())
		}
		return s.Body.Data()
	case <-time.After(waitTimeout):
		t.Fatalf("no packet within %v", waitTimeout)
		return nil
	}
}

// TestSendDataBackpressure: SendData queues raw payloads, waits while the
// queue (retained packets included) is full, goes on once the client
// acknowledged, and fails with the session's reason when it closes.
func TestSendDataBackpressure(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.QueueBytes = 1024 })
	s, err := g.Open(OpenOptions{Transport: "fake", Retain: true})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{'x'}, 600)
	if err := s.SendData(context.Background(), chunk); err != nil {
		t.Fatalf("first SendData: %v", err)
	}
	second := make(chan error, 1)
	go func() { second <- s.SendData(context.Background(), bytes.Repeat([]byte{'y'}, 600)) }()
	select {
	case err := <-second:
		t.Fatalf("SendData over the queue bound returned at once (%v)", err)
	case <-time.After(quiet):
	}

	// Written but not acknowledged still counts against the bound.
	tr := newFakeTransport(0)
	if err := s.Attach(tr, false); err != nil {
		t.Fatal(err)
	}
	nextType(t, tr, TypeHello)
	if got := nextData(t, tr); !bytes.Equal(got, chunk) {
		t.Fatalf("first payload: %q", got)
	}
	select {
	case err := <-second:
		t.Fatalf("SendData returned before the client acknowledged (%v)", err)
	case <-time.After(quiet):
	}
	send(s, `{"op":"ack","seq":2}`)
	if err := <-second; err != nil {
		t.Fatalf("second SendData: %v", err)
	}
	if got := nextData(t, tr); len(got) != 600 || got[0] != 'y' {
		t.Fatalf("second payload: %q", got)
	}

	third := make(chan error, 1)
	go func() { third <- s.SendData(context.Background(), bytes.Repeat([]byte{'z'}, 900)) }()
	select {
	case err := <-third:
		t.Fatalf("SendData over the queue bound returned at once (%v)", err)
	case <-time.After(quiet):
	}
	s.Close(DisconnectShutdown)
	var d Disconnect
	if err := <-third; !errors.As(err, &d) || d != DisconnectShutdown {
		t.Fatalf("SendData on a closing session: %v, want %v", err, DisconnectShutdown)
	}
	if err := s.SendData(context.Background(), []byte("late")); err == nil {
		t.Fatal("SendData after Close succeeded")
	}
	waitDone(t, s)
}

// TestSendDataContext: a SendData waiting for room gives up with its
// context.
func TestSendDataContext(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.QueueBytes = 512 })
	s, err := g.Open(OpenOptions{Transport: "fake", Retain: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(DisconnectShutdown)
	if err := s.SendData(context.Background(), make([]byte, 300)); err != nil { // 300 + the hello fit
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.SendData(ctx, make([]byte, 300)) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("SendData after cancel: %v", err)
	}
}

// TestSessionOwnIntervals: a session opened with its own heartbeat and
// disconnect delay gets heartbeats and expires on those, not on the
// gateway's (an hour here).
func TestSessionOwnIntervals(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.Heartbeat, c.DisconnectDelay = time.Hour, time.Hour })
	s, tr := openWith(t, g, OpenOptions{Transport: "fake", Retain: true, Heartbeat: 20 * time.Millisecond, DisconnectDelay: 20 * time.Millisecond})
	waitFor(t, "a heartbeat on the session's own interval", func() bool { return tr.heartbeats.Load() > 0 })
	s.Detach(tr)
	waitDone(t, s)
	if r := s.Reason(); r != DisconnectExpired {
		t.Fatalf("ended with %v, want %v", r, DisconnectExpired)
	}
}

// backlogTransport is a fakeTransport whose kernel backlog the test sets.
type backlogTransport struct {
	*fakeTransport
	backlog atomic.Int64
	asked   atomic.Int64
}

func (t *backlogTransport) Backlog() int {
	t.asked.Add(1)
	return int(t.backlog.Load())
}

// TestKernelBacklogCountsTowardQueue: what the kernel still holds after a
// write counts toward the queue bound, so a client that stopped reading
// is a slow consumer at the configured size; a backlog that drained since
// the last write is measured again before it can close a session.
func TestKernelBacklogCountsTowardQueue(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.QueueBytes = 4096 })
	for _, drained := range []bool{true, false} {
		s, err := g.Open(OpenOptions{Transport: "fake"})
		if err != nil {
			t.Fatal(err)
		}
		tr := &backlogTransport{fakeTransport: newFakeTransport(0)}
		tr.backlog.Store(4000) // measured after the hello's write
		if err := s.Attach(tr, false); err != nil {
			t.Fatal(err)
		}
		nextType(t, tr.fakeTransport, TypeHello)
		subscribe(t, s, tr.fakeTransport, 1, "t.k")
		if drained {
			tr.backlog.Store(0) // the client read it meanwhile
		}
		publish(t, g.b, "t.k", strings.Repeat("x", 200))
		if drained {
			if w := nextType(t, tr.fakeTransport, TypeMsg); w.Ch != "t.k" {
				t.Fatalf("got %s", w)
			}
			if tr.asked.Load() < 2 {
				t.Error("a stale backlog was not measured again")
			}
			s.Close(DisconnectShutdown)
		} else {
			expectClose(t, tr.fakeTransport, DisconnectSlow)
		}
		waitDone(t, s)
	}
}
