package main

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// feedChunks feeds stream to p in random pieces and collects the packets.
func feedChunks(t *testing.T, p streamParser, stream []byte, seed uint64) ([]string, error) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	var got []string
	for len(stream) > 0 {
		n := 1 + r.IntN(min(len(stream), 300))
		chunk := append([]byte(nil), stream[:n]...) // the poller's buffer is reused
		stream = stream[n:]
		if err := p.Feed(chunk, func(pkt []byte) { got = append(got, string(pkt)) }); err != nil {
			return got, err
		}
		clear(chunk)
	}
	return got, nil
}

func TestWSParserSplitFrames(t *testing.T) {
	want := []string{"a", strings.Repeat("b", 200), strings.Repeat("c", 70000), `{"seq":9,"t":"msg"}`}
	var stream bytes.Buffer
	for _, w := range want {
		if err := ws.WriteFrame(&stream, ws.NewTextFrame([]byte(w))); err != nil {
			t.Fatal(err)
		}
	}
	for seed := range uint64(20) {
		got, err := feedChunks(t, &wsParser{}, stream.Bytes(), seed)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("seed %d: %d packets, want %d", seed, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("seed %d: packet %d is %.20q…", seed, i, got[i])
			}
		}
	}
	// A close frame ends the stream with its code (the echo goes nowhere
	// here: the parser's conn is a closed pipe end).
	var cl bytes.Buffer
	_ = ws.WriteFrame(&cl, ws.NewTextFrame([]byte("last")))
	_ = ws.WriteFrame(&cl, ws.NewCloseFrame(ws.NewCloseFrameBody(3000, "server shutting down")))
	got, err := feedChunks(t, &wsParser{out: closedConn(t)}, cl.Bytes(), 1)
	var ce *wsClosedError
	if !errors.As(err, &ce) || ce.code != 3000 || len(got) != 1 || got[0] != "last" {
		t.Fatalf("got %v, err %v", got, err)
	}
}

func TestSSEParserSplitLines(t *testing.T) {
	stream := "retry: 2000\n\ndata: {\"seq\":1,\"t\":\"hello\"}\n\n:\n\nid: 7\ndata: {\"seq\":2}\r\n\r\ndata:{\"seq\":3}\n\n"
	want := []string{`{"seq":1,"t":"hello"}`, `{"seq":2}`, `{"seq":3}`}
	for seed := range uint64(20) {
		got, err := feedChunks(t, &sseParser{}, []byte(stream), seed)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("seed %d: got %q", seed, got)
		}
	}
}

func closedConn(t *testing.T) net.Conn {
	a, b := net.Pipe()
	_ = a.Close()
	_ = b.Close()
	return a
}
