package transports

import (
	"io"
	"net"
	"sync"
	"testing"
)

// BenchmarkLoopbackWrite is the floor under the gateway's CPU per
// delivery: one write(2) of a small WebSocket frame to a loopback TCP
// connection whose reader drains it in another goroutine. A delivery that
// gets a write of its own cannot cost less than this; only writes that
// carry several messages (a busy session) go below it.
func BenchmarkLoopbackWrite(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	frame := appendFrameHeader(nil, 0x1, 100)
	frame = append(frame, make([]byte, 100)...)
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := conn.Write(frame); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = conn.Close()
	wg.Wait()
}
