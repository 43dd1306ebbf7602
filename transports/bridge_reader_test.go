package transports

import (
	"bytes"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// chunkPeeker is a framePeeker over bytes that arrive chunk bytes at a
// time, as bridgeReader's buffer holds what one read got: a frame is
// peeked in place when the chunk holds it whole, read otherwise.
type chunkPeeker struct {
	src   []byte
	chunk int
	buf   []byte // the current chunk's unread bytes
}

func (c *chunkPeeker) frameStart() {}

func (c *chunkPeeker) peek(n int) []byte {
	if len(c.buf) < n {
		return nil
	}
	p := c.buf[:n:n]
	c.buf = c.buf[n:]
	return p
}

func (c *chunkPeeker) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		if len(c.src) == 0 {
			return 0, io.EOF
		}
		k := min(c.chunk, len(c.src))
		c.buf, c.src = c.src[:k], c.src[k:]
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// wsEvents reads every event of r, rendered for comparison.
func wsEvents(r *wsFrames) []string {
	var out []string
	for {
		ev, bad, err := r.next()
		switch {
		case err != nil:
			return append(out, "error")
		case bad != nil:
			return append(out, fmt.Sprintf("violation %d %s", bad.code, bad.reason))
		}
		out = append(out, fmt.Sprintf("%v %q", ev.op, ev.data))
	}
}

// FuzzWSFramesInPlace: frames parsed in the reader's buffer (the bridge's
// reader) give the same events, violations and ends as frames read into
// the parser's own buffer, however the bytes are cut into reads.
func FuzzWSFramesInPlace(f *testing.F) {
	seeds := [][]byte{
		binFrame([]byte("hello")).bytes(),
		bytes.Join([][]byte{
			wsFrame{op: opBinary, payload: []byte("frag")}.bytes(),
			wsFrame{fin: true, op: opPing, payload: []byte("p")}.bytes(),
			wsFrame{fin: true, op: opCont, payload: []byte("ment")}.bytes(),
		}, nil),
		append(binFrame(bytes.Repeat([]byte{7}, 300)).bytes(), closeFrame(1000, "bye").bytes()...),
		wsFrame{fin: true, op: opText, payload: []byte("\xff")}.bytes(),
		wsFrame{fin: true, op: opBinary, unmasked: true, payload: []byte("x")}.bytes(),
		binFrame(make([]byte, 70000)).bytes()[:14],
	}
	for _, s := range seeds {
		f.Add(s, uint16(1))
		f.Add(s, uint16(7))
		f.Add(s, uint16(4096))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint16) {
		lim := func(conn io.Reader) *wsFrames {
			return &wsFrames{conn: conn, limit: 1 << 16, tooLarge: gateway.CodeMessageTooBig}
		}
		want := wsEvents(lim(bytes.NewReader(in)))
		cp := &chunkPeeker{src: in, chunk: max(1, int(chunk))}
		r := lim(cp)
		r.buffered = cp
		got := wsEvents(r)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("in place (chunks of %d):\n%q\nread:\n%q", chunk, got, want)
		}
	})
}

// TestIdleHold: a side has no hold (it parks as soon as it is drained)
// until it proves busy (it woke soon after a park, or a hold passed with
// input); then it is held from bridgeHoldMin up to bridgeIdleAfter; a
// side parked longer than that starts over.
func TestIdleHold(t *testing.T) {
	old := bridgeIdleAfter
	bridgeIdleAfter = time.Second
	t.Cleanup(func() { bridgeIdleAfter = old })
	var h idleHold
	now := time.Unix(1000, 0)
	step := func(what string, got, want time.Duration) {
		t.Helper()
		if got != want {
			t.Fatalf("%s: hold %v, want %v", what, got, want)
		}
	}
	step("first", h.next(now, false), 0)
	step("again without a park", h.next(now, false), 0)
	h.parked(now)
	step("woken soon after a park", h.next(now.Add(50*time.Millisecond), false), bridgeHoldMin)
	step("busy", h.next(now, true), 2*bridgeHoldMin)
	h.parked(now)
	step("woken soon after another park", h.next(now.Add(50*time.Millisecond), false), 4*bridgeHoldMin)
	step("a deadline set again without a park", h.next(now, false), 4*bridgeHoldMin)
	for range 20 {
		h.next(now, true)
	}
	step("busy for long", h.next(now, true), bridgeIdleAfter)
	h.parked(now)
	step("woken after a long park", h.next(now.Add(2*bridgeIdleAfter), false), 0)

	bridgeIdleAfter = time.Millisecond // shorter than the least hold
	var short idleHold
	short.parked(now)
	step("bounded by bridgeIdleAfter", short.next(now.Add(time.Microsecond), false), time.Millisecond)
}

// TestBridgeReaderDone: a reader whose connection ended on a close frame
// (peeked in place, so its buffer is still in use) gives the buffer back
// when reading is over, rather than leaving it to the collector: a
// thousand bridged connections closed at once had taken a thousand new
// 64 KiB buffers from the pool.
func TestBridgeReaderDone(t *testing.T) {
	server, client := tcpPair(t)
	in := newBridgeReader(server, nil, waitTimeout, new(atomic.Int64))
	if in == nil {
		t.Skip("no raw socket I/O on this platform")
	}
	frames := &wsFrames{conn: in, buffered: in, limit: 1 << 16, tooLarge: gateway.CodeMessageTooBig}
	msg := append(binFrame([]byte("last words")).bytes(), closeFrame(1000, "bye").bytes()...)
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`2 "last words"`, `8 "\x03\xe8bye"`} {
		ev, bad, err := frames.next()
		if err != nil || bad != nil {
			t.Fatalf("next: %v %v", bad, err)
		}
		if got := fmt.Sprintf("%v %q", ev.op, ev.data); got != want {
			t.Fatalf("read %s, want %s", got, want)
		}
	}
	if in.buf == nil {
		t.Fatal("the close frame was not read in place")
	}
	in.done()
	if in.buf != nil {
		t.Fatal("done kept the buffer")
	}
}
