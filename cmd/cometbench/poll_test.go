package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
)

// tcpPair is a loopback TCP connection's two ends, closed with the test.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.Close()
		_ = server.Close()
	})
	return client, server
}

// runPoller runs p's loop until the test ends.
func runPoller(t *testing.T, p *poller) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.run()
	}()
	t.Cleanup(func() {
		p.stop()
		<-done
	})
}

// cmsg builds one control message as the kernel lays it out (header,
// data, padding to the alignment).
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, syscall.CmsgSpace(len(data)))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(syscall.CmsgLen(len(data)))
	copy(b[syscall.CmsgLen(0):], data)
	return b
}

func timespecBytes(sec, nsec int64) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint64(b, uint64(sec))
	binary.NativeEndian.PutUint64(b[8:], uint64(nsec))
	return b
}

func TestReceiveTimestamp(t *testing.T) {
	ts := timespecBytes(1_796_493_708, 216_187_742)
	want := int64(1_796_493_708_216_187_742)
	for _, tc := range []struct {
		name string
		oob  []byte
		want int64
	}{
		{"none", nil, 0},
		{"alone", cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts), want},
		{"after another message", append(cmsg(syscall.SOL_SOCKET, syscall.SCM_RIGHTS, []byte{1, 2, 3, 4}), cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts)...), want},
		{"another level", cmsg(syscall.IPPROTO_TCP, syscall.SCM_TIMESTAMPNS, ts), 0},
		{"too short", cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts[:8]), 0},
		{"truncated", cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts)[:20], 0},
	} {
		if got := receiveTimestamp(tc.oob); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// FuzzReceiveTimestamp: whatever the control bytes, the parser neither
// panics nor reads past them.
func FuzzReceiveTimestamp(f *testing.F) {
	f.Add(cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, timespecBytes(1, 2)))
	f.Add(append(cmsg(syscall.SOL_SOCKET, syscall.SCM_RIGHTS, []byte{1}), 0, 0, 0))
	f.Add([]byte{17, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 35, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, oob []byte) {
		_ = receiveTimestamp(oob)
	})
}

// The poller's set is edge-triggered: bytes that arrive together are
// reported once, so a connection is read until a read comes back short,
// not once per report. Here the buffer holds a tenth of what arrives at
// once, and every frame must still be read without another arrival; and
// a connection whose peer sent frames and closed before the poller first
// looked is read to its end, the close included.
func TestPollerReadsToTheEnd(t *testing.T) {
	client, server := tcpPair(t)
	closingClient, closingServer := tcpPair(t)

	var stream bytes.Buffer
	const frames = 100
	for i := range frames {
		if err := ws.WriteFrame(&stream, ws.NewTextFrame([]byte(fmt.Sprintf("%03d%s", i, strings.Repeat("x", 97))))); err != nil {
			t.Fatal(err)
		}
	}
	w := &worker{closed: map[string]int{}}
	p, err := newPoller(w)
	if err != nil {
		t.Fatal(err)
	}
	p.setBuffer(make([]byte, stream.Len()/10))
	fd, err := detachFD(client)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	pc := &polledConn{fd: fd, parser: &wsParser{}, s: &benchSession{}}
	pc.emit = func(pkt []byte) {
		mu.Lock()
		got = append(got, string(pkt[:3]))
		mu.Unlock()
	}
	closingFD, err := detachFD(closingClient)
	if err != nil {
		t.Fatal(err)
	}
	closing := &polledConn{fd: closingFD, parser: &wsParser{}, s: &benchSession{state: sessReady}}
	closing.emit = func([]byte) {}
	// Everything is in the receive queues before the poller first waits.
	if _, err := server.Write(stream.Bytes()); err != nil {
		t.Fatal(err)
	}
	// Not a whole number of buffers: the last read before the end is short.
	if _, err := closingServer.Write(stream.Bytes()[:stream.Len()/5+102]); err != nil {
		t.Fatal(err)
	}
	_ = closingServer.Close()
	for _, c := range []*polledConn{pc, closing} {
		if err := p.add(c); err != nil {
			t.Fatal(err)
		}
	}
	runPoller(t, p)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		w.mu.Lock()
		ends := w.closed["connection closed without a close packet"]
		w.mu.Unlock()
		if n == frames && ends == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read %d of %d frames that arrived together; %d of 1 connection's end (%v)", n, frames, ends, w.closedCopy())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i, g := range got {
		if want := fmt.Sprintf("%03d", i); g != want {
			t.Fatalf("frame %d is %q, want %q", i, g, want)
		}
	}
}

// detachFD leaves the poller a non-blocking descriptor of the socket and
// closes the net.Conn it came from (so Go's netpoller no longer watches
// the socket): the bytes still arrive on the descriptor.
func TestDetachFD(t *testing.T) {
	client, server := tcpPair(t)
	fd, err := detachFD(client)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := client.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the net.Conn still writes after detachFD: %v", err)
	}
	buf := make([]byte, 16)
	if _, err := syscall.Read(fd, buf); err != syscall.EAGAIN {
		t.Fatalf("read with nothing there: %v, want EAGAIN (non-blocking)", err)
	}
	if _, err := server.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := syscall.Read(fd, buf)
		if err == nil {
			if string(buf[:n]) != "hello" {
				t.Fatalf("read %q", buf[:n])
			}
			return
		}
		if err != syscall.EAGAIN || time.Now().After(deadline) {
			t.Fatalf("read: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// A session the poller holds still answers the server: a ping gets its
// pong through the poller's descriptor (the net.Conn is closed once the
// poller has the connection).
func TestPolledSessionAnswersPings(t *testing.T) {
	client, server := tcpPair(t)
	fd, err := detachFD(client)
	if err != nil {
		t.Fatal(err)
	}
	parser := &wsParser{out: client} // as Handover makes it: the net.Conn, closed by now
	parser.answerTo(fdWriter(fd))
	w := &worker{closed: map[string]int{}}
	p, err := newPoller(w)
	if err != nil {
		t.Fatal(err)
	}
	pc := &polledConn{fd: fd, parser: parser, s: &benchSession{}, emit: func([]byte) {}}
	if err := p.add(pc); err != nil {
		t.Fatal(err)
	}
	runPoller(t, p)
	if err := ws.WriteFrame(server, ws.NewPingFrame([]byte("are you there"))); err != nil {
		t.Fatal(err)
	}
	_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := ws.ReadHeader(server)
	if err != nil {
		t.Fatalf("no answer to the ping: %v (%v)", err, w.closedCopy())
	}
	if h.Length > 125 {
		t.Fatalf("answer of %d bytes", h.Length)
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(server, payload); err != nil {
		t.Fatal(err)
	}
	if h.Masked {
		ws.Cipher(payload, h.Mask, 0)
	}
	if h.OpCode != ws.OpPong || string(payload) != "are you there" {
		t.Fatalf("answer %v %q, want a pong with the ping's payload", h.OpCode, payload)
	}
}
