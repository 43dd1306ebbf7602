package transports

import (
	"errors"
	"net"
	"testing"
)

// TestReentryListener: connections come out of Accept in the order they
// were pushed; Close makes Accept fail, closes the connections nobody
// accepted, and refuses later ones (their pusher closes them).
func TestReentryListener(t *testing.T) {
	l := newReentry()
	var ends [3]net.Conn
	for i := range ends {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		if !l.push(a) {
			t.Fatal("push refused before Close")
		}
		ends[i] = b
	}
	accepted := make(chan net.Conn)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
		}
		accepted <- c
	}()
	first := <-accepted
	// The first pushed is the first accepted: its peer sees what it writes.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = first.Write([]byte{1})
	}()
	var b [1]byte
	if _, err := ends[0].Read(b[:]); err != nil {
		t.Fatalf("the first connection accepted is not the first pushed: %v", err)
	}
	<-wrote
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The two left in the queue were closed.
	for _, e := range ends[1:] {
		if _, err := e.Read(b[:]); err == nil {
			t.Fatal("a queued connection was not closed by Close")
		}
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	a, _ := net.Pipe()
	defer a.Close()
	if l.push(a) {
		t.Fatal("push accepted after Close")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
