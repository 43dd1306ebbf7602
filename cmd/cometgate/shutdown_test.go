package main

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestShutdownWithThousandsOfSSEStreams: graceful shutdown with 2,000 open
// SSE streams tells every one of them to reconnect (close 3000) and serve
// returns. Each stream is a raw connection so the test holds no more than
// one goroutine per stream while it waits.
func TestShutdownWithThousandsOfSSEStreams(t *testing.T) {
	const streams = 2000
	// Every stream comes from one address at once: no limit on new
	// sessions.
	n := startNode(t, "COMETGATE_HTTP_SHUTDOWN_TIMEOUT=20s",
		"COMETGATE_LIMITS_NEW_SESSIONS_PER_IP_PER_SECOND=0", "COMETGATE_LIMITS_NEW_SESSIONS_PER_SECOND=0")
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range streams {
		c, err := net.Dial("tcp", n.addr)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "GET /sse?ch=demo.shutdown HTTP/1.1\r\nHost: %s\r\n\r\n", n.addr)
	}
	// Every stream is open once each has its subscription's ok.
	readers := make([]*bufio.Reader, len(conns))
	for i, c := range conns {
		readers[i] = bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		if !readUntil(readers[i], `"t":"ok"`) {
			t.Fatalf("stream %d: no ok", i)
		}
	}

	var wg sync.WaitGroup
	closed := make([]bool, len(conns))
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			closed[i] = readUntil(readers[i], `"t":"close","code":3000`)
		}()
	}
	n.shutdown(t)
	wg.Wait()
	missing := 0
	for _, ok := range closed {
		if !ok {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d streams did not get the close packet", missing, streams)
	}
}

// readUntil reads lines until one contains s (true) or the stream ends.
func readUntil(r *bufio.Reader, s string) bool {
	for {
		line, err := r.ReadString('\n')
		if strings.Contains(line, s) {
			return true
		}
		if err != nil {
			return false
		}
	}
}
