package transports

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cometgate/cometgate/gateway"
)

// TestWSConnLayout: what a write touches lies in a wsConn's first two
// cache lines, and the object starts a line (it is in the 320-byte size
// class, whose objects are whole lines apart; the class below is 288), as
// wsConn's layout comment says and wsSession.HotMemory, which names
// those two lines for the write workers to prefetch, relies on.
func TestWSConnLayout(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the layout is for 64-bit platforms")
	}
	var c wsConn
	if size := unsafe.Sizeof(c); size <= 288 || size > 320 {
		t.Errorf("wsConn is %d bytes, want 289 to 320 (the 320-byte size class, whose objects start a cache line)", size)
	}
	hot := map[string]uintptr{
		"deflate":   unsafe.Offsetof(c.deflate) + unsafe.Sizeof(c.deflate),
		"wmu":       unsafe.Offsetof(c.wmu) + unsafe.Sizeof(c.wmu),
		"out":       unsafe.Offsetof(c.out) + unsafe.Sizeof(c.out),
		"reg":       unsafe.Offsetof(c.reg) + unsafe.Sizeof(c.reg),
		"n":         unsafe.Offsetof(c.n) + unsafe.Sizeof(c.n),
		"clock":     unsafe.Offsetof(c.clock) + unsafe.Sizeof(c.clock),
		"closeSent": unsafe.Offsetof(c.closeSent) + unsafe.Sizeof(c.closeSent),
		"raw":       unsafe.Offsetof(c.raw) + unsafe.Sizeof(c.raw),
	}
	for name, end := range hot {
		if end > 128 {
			t.Errorf("wsConn.%s ends at byte %d, past the first two cache lines", name, end)
		}
	}
}

// tcpPair is a connected loopback pair: the node's end and the client's.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = server.Close(); _ = client.Close() })
	return server, client
}

// A write worker's try never waits for the write lock: while another
// write holds it (a pong to a client that does not read, say), the try
// leaves everything to flush, which takes the lock itself and writes it
// all, in order after the other write.
func TestTryWriteDoesNotWaitForTheWriteLock(t *testing.T) {
	server, client := tcpPair(t)
	c := &wsConn{n: &node{opts: Options{WriteTimeout: 10 * time.Second}}, conn: server}
	c.clock.start(time.Hour)

	c.wmu.Lock() // another write holds the lock
	buf := getBuffer(16)
	*buf = appendMessage(*buf, 0x1, []byte("hello"))
	want := bytes.Clone(*buf)
	done := make(chan error, 1)
	go func() {
		_, err := c.writeFrames(buf, time.Now().UnixNano(), true, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != gateway.ErrWriteBlocked {
			t.Fatalf("try with the lock held: %v, want ErrWriteBlocked", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the try waited for the write lock")
	}

	flushed := make(chan error, 1)
	go func() {
		_, err := c.flush()
		flushed <- err
	}()
	first := appendMessage(nil, 0x1, []byte("first"))
	if _, err := server.Write(first); err != nil { // the holder's write
		t.Fatal(err)
	}
	c.wmu.Unlock() // the holder lets go: flush may take the lock now
	if err := <-flushed; err != nil {
		t.Fatalf("flush: %v", err)
	}
	got := make([]byte, len(first)+len(want))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(first, want...)) {
		t.Fatalf("the client read %q", got)
	}
	if !c.wmu.TryLock() {
		t.Fatal("flush kept the write lock")
	}
	c.wmu.Unlock()
}

// Closing gives up on a write that holds the lock for longer than it
// waits (lockWithin), and gets the lock as soon as the write lets go.
func TestLockWithin(t *testing.T) {
	var mu sync.Mutex
	if !lockWithin(&mu, 0) {
		t.Fatal("a free lock was not taken")
	}
	if lockWithin(&mu, 20*time.Millisecond) {
		t.Fatal("a held lock was taken")
	}
	released := make(chan struct{})
	go func() {
		<-released
		mu.Unlock()
	}()
	close(released)
	if !lockWithin(&mu, waitTimeout) {
		t.Fatal("the lock was not taken once released")
	}
	mu.Unlock()
}

// A try that the kernel takes whole allocates nothing: the connection
// keeps its RawConn, and the system call's function is a pooled
// sendCall's, not a closure made (with the variables it shares) at each
// try. Race-detector builds allocate for their own bookkeeping, so the
// count is checked without it.
func TestTryAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the raw write is Linux's (rawio_linux.go)")
	}
	server, client := tcpPair(t)
	go func() { _, _ = io.Copy(io.Discard, client) }()
	var out sockOut
	raw := rawConn(server)
	frame := []byte("a small frame of a fan-out")
	buf := &frame
	allocs := testing.AllocsPerRun(1000, func() {
		if n, err := out.try(raw, buf); err != nil || n != len(frame) {
			t.Fatalf("try: %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per try, want none", allocs)
	}
}
