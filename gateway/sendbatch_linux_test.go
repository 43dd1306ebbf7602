//go:build linux

package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// loopbackPair is a connected loopback TCP pair: w is written, r read.
func loopbackPair(t *testing.T) (w, r *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	r, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = w.Close()
		_ = r.Close()
	})
	return w, r
}

// fdOf runs f with conn's descriptor, held for the call.
func fdOf(t *testing.T, conn *net.TCPConn, f func(fd int32)) {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Control(func(fd uintptr) { f(int32(fd)) }); err != nil {
		t.Fatal(err)
	}
}

// sendQueueOrSkip is a send queue, or skips the test where the kernel has
// no io_uring (or does not let this process use it): there is nothing to
// test then, and the workers write one send at a time.
func sendQueueOrSkip(t *testing.T) *SendQueue {
	t.Helper()
	q, err := getSendQueue(DefaultSendBatch)
	if q == nil {
		t.Skipf("io_uring is not available here (%v): sends are not batched", err)
	}
	t.Cleanup(func() { putSendQueue(q) })
	return q
}

// TestSendRing checks the ring's sends against real sockets: a send the
// socket takes whole, one to a full socket (EAGAIN at once: a batch
// never waits for a client), one to a socket the peer reset, and an entry
// not to be made, all in one submission.
func TestSendRing(t *testing.T) {
	q := sendQueueOrSkip(t)
	r := q.ring

	okW, okR := loopbackPair(t)
	fullW, _ := loopbackPair(t)
	resetW, resetR := loopbackPair(t)
	_ = fullW.SetWriteBuffer(4096)
	_ = resetR.SetLinger(0) // close sends a reset
	_ = resetR.Close()

	payload := []byte("one small frame\n")
	sends := []ringSend{{p: payload}, {p: payload}, {p: payload}, {p: payload, fd: -1, res: 12345}}
	fdOf(t, okW, func(ok int32) {
		fdOf(t, fullW, func(full int32) {
			// Fill the socket until it takes nothing more.
			chunk := make([]byte, 64<<10)
			for {
				if n, err := syscall.Write(int(full), chunk); err != nil || n <= 0 {
					break // EAGAIN: full
				}
			}
			fdOf(t, resetW, func(reset int32) {
				sends[0].fd, sends[1].fd, sends[2].fd = ok, full, reset
				done := make(chan struct{})
				go func() { r.send(sends); close(done) }()
				select {
				case <-done:
				case <-time.After(time.Minute):
					t.Fatal("the ring waited for a full socket to drain")
				}
			})
		})
	})
	if sends[0].res != int32(len(payload)) {
		t.Errorf("send to a reading socket: res %d, want %d", sends[0].res, len(payload))
	}
	if sends[1].res != -int32(syscall.EAGAIN) {
		t.Errorf("send to a full socket: res %d, want -EAGAIN (%d)", sends[1].res, -int32(syscall.EAGAIN))
	}
	if e := syscall.Errno(-sends[2].res); e != syscall.ECONNRESET && e != syscall.EPIPE {
		t.Errorf("send to a reset socket: res %d, want -ECONNRESET or -EPIPE", sends[2].res)
	}
	if sends[3].res != 12345 {
		t.Errorf("an entry with no descriptor was sent: res %d", sends[3].res)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(okR, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read %q (%v), want %q", got, err, payload)
	}
}

// TestSendQueueResults checks what a queued write's transport is told:
// the bytes its socket took, a closed connection's error (the socket is
// not sent to: its descriptor may already be another connection's), and
// the error of a transport that has no socket.
func TestSendQueueResults(t *testing.T) {
	q := sendQueueOrSkip(t)
	okW, okR := loopbackPair(t)
	closedW, _ := loopbackPair(t)
	okRaw, _ := okW.SyscallConn()
	closedRaw, _ := closedW.SyscallConn()
	_ = closedW.Close()

	q.Send(okRaw, []byte("first"))
	q.Send(closedRaw, []byte("lost"))
	q.Send(nil, []byte("nowhere"))
	q.Send(okRaw, []byte(" second"))
	q.submit()
	if len(q.writes) != 0 || len(q.doneWrites) != 4 {
		t.Fatalf("after submit: %d queued, %d to complete; want 0 and 4", len(q.writes), len(q.doneWrites))
	}
	for i, want := range []struct {
		n   int
		err error
	}{{5, nil}, {0, net.ErrClosed}, {0, errNoSocket}, {7, nil}} {
		n, err := q.result(i)
		if n != want.n || !errors.Is(err, want.err) || (want.err == nil) != (err == nil) {
			t.Errorf("send %d: (%d, %v), want (%d, %v)", i, n, err, want.n, want.err)
		}
	}
	q.completed()
	got := make([]byte, len("first second"))
	if _, err := io.ReadFull(okR, got); err != nil || string(got) != "first second" {
		t.Fatalf("read %q (%v), want the two sends in their order", got, err)
	}
}

// TestSendQueueAllocations: a batched send allocates nothing (a
// delivery's allocations were measurable in a fan-out's CPU).
func TestSendQueueAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	q := sendQueueOrSkip(t)
	w, r := loopbackPair(t)
	raw, _ := w.SyscallConn()
	p := []byte("a frame of a few bytes\n")
	var failed error
	allocs := testing.AllocsPerRun(200, func() {
		q.Send(raw, p)
		q.submit()
		if _, err := q.result(0); err != nil {
			failed = err
		}
		q.completed()
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("a batched send allocates %.1f objects, want 0", allocs)
	}
	_ = r
}

// TestBatchedFanout fans messages out through the write workers' batched
// sends to sessions on real loopback sockets, across several batches,
// with small socket buffers and readers that start late, so that sends
// come back short or with EAGAIN and their rest goes through Flush.
// Every reader must get every message once, in order.
func TestBatchedFanout(t *testing.T) {
	sendQueueOrSkip(t) // io_uring is there; the workers take their own queues
	g := newTestGateway(t, func(c *Config) { c.Rules = Rules{{Pattern: "fan.>", Subscribe: Anyone}} })
	const sessions, messages = 3*DefaultSendBatch + 5, 40
	payload := strings.Repeat("x", 6000)
	transports := make([]*socketTransport, sessions)
	readers := make([]*net.TCPConn, sessions)
	for i := range sessions {
		w, r := loopbackPair(t)
		_ = w.SetWriteBuffer(4096)
		_ = r.SetReadBuffer(4096)
		tr := openSocketSession(t, g.Gateway, w, &deliveryCounter{hit: make(chan struct{}, 1)}, "fan.x")
		transports[i], readers[i] = tr, r
	}
	waitFor(t, "the subscription", func() bool { return g.b.SubsFor("fan.x") == 1 })
	for m := range messages {
		data := fmt.Sprintf(`{"n":%d,"pad":%q}`, m, payload)
		if err := g.b.Publish(context.Background(), brokers.Message{Channel: "fan.x", Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i, r := range readers {
		wg.Go(func() {
			if err := readInOrder(r, messages); err != nil {
				errs <- fmt.Errorf("session %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var queued, blocked int64
	for _, tr := range transports {
		queued += tr.queued.Load()
		blocked += tr.blocked.Load()
	}
	if queued == 0 {
		t.Fatal("no write went through a worker's batch")
	}
	if blocked == 0 {
		t.Error("no batched send came back short: the test did not reach the path it is for")
	}
	t.Logf("%d batched writes, %d came back short", queued, blocked)
}

// readInOrder reads a socketTransport's lines (packets) until it has
// seen messages msg packets, and checks they carry 0, 1, ... in order.
func readInOrder(r *net.TCPConn, messages int) error {
	_ = r.SetReadDeadline(time.Now().Add(2 * time.Minute)) // a hang fails the test instead of the run
	br := bufio.NewReaderSize(r, 64<<10)
	next := 0
	for next < messages {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("after %d messages: %w", next, err)
		}
		i := bytes.Index(line, []byte(`"n":`))
		if i < 0 {
			continue // not a msg packet (the hello, a subscription's ok)
		}
		rest := line[i+len(`"n":`):]
		end := bytes.IndexAny(rest, ",}")
		n, err := strconv.Atoi(string(rest[:end]))
		if err != nil {
			return fmt.Errorf("bad message %q", line)
		}
		if n != next {
			return fmt.Errorf("message %d where %d was due", n, next)
		}
		next++
	}
	return nil
}
