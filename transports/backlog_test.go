package transports

import (
	"io"
	"runtime"
	"testing"
	"time"
)

// TestSocketBacklog: socketBacklog reports what the kernel holds of a
// socket's writes while the peer does not read, and nothing once it has.
func TestSocketBacklog(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SIOCOUTQ is Linux's")
	}
	w, r := tcpPair(t)
	fd := rawConn(w)
	if fd == nil {
		t.Fatal("no descriptor")
	}
	if b := socketBacklog(fd); b != 0 {
		t.Fatalf("backlog %d before any write", b)
	}
	// Write until the kernel stops taking more: the peer reads nothing.
	chunk := make([]byte, 64<<10)
	written := 0
	for {
		_ = w.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := w.Write(chunk)
		written += n
		if err != nil {
			break
		}
	}
	b := socketBacklog(fd)
	if b <= 0 || b > written {
		t.Fatalf("backlog %d after %d bytes written to a peer that reads nothing", b, written)
	}
	// The peer reads everything: the backlog drains.
	go func() { _, _ = io.CopyN(io.Discard, r, int64(written)) }()
	deadline := time.Now().Add(waitTimeout)
	for socketBacklog(fd) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("backlog %d after the peer read everything", socketBacklog(fd))
		}
		time.Sleep(time.Millisecond)
	}
	if socketBacklog(nil) != 0 {
		t.Error("a backlog for no descriptor")
	}
	// A closed connection has none either: the descriptor is not read
	// after the close (its number may belong to another socket by then).
	_ = w.Close()
	if b := socketBacklog(fd); b != 0 {
		t.Errorf("backlog %d of a closed connection", b)
	}
}
