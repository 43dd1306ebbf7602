package transports

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// bridgeReader is what a bridged WebSocket's frames are read from (the
// browser's side of the bridge; wsConn.watch). A bridged connection is
// busy by nature while it is used: frames come one after the other, and
// handing the connection to the poller after each (a goroutine started
// per frame, an epoll_ctl to re-arm, the read deadline set again) cost
// more than the frame. So the poller's goroutine stays with a bridged
// connection while it is in use, waiting in Go's poller for the next
// frame, and gives it back to the node's poller only once the browser
// has sent nothing for its hold (idleHold): an idle bridged session keeps no
// goroutine and no buffer.
//
// Reading is done with fdConn (raw, non-blocking; see rawio_linux.go)
// into a buffer from a pool, taken when input is there and given back
// once its bytes are consumed, and a frame that is in the buffer whole is
// handed to the frame parser in place (peek), unmasked there: no copy
// and no allocation per message.
//
// Deadlines: waiting at a frame boundary, the read deadline is the idle
// one, renewed only when it passes with bytes read since it was set (so
// a busy connection sets it once per hold, not once per frame); when it
// passes with nothing read, Read returns errReadIdle and the connection
// goes back to the poller (at once, with no deadline, when the side has
// no hold: it is read while it has bytes), where the heartbeat's liveness
// check (wsConn.checkAlive) watches a silent client. Waiting for the rest
// of a frame, the deadline is the connection's read timeout, for the
// whole rest of that frame, as wsConn's other readers have it. Once the
// connection closes (lingerUntil), the linger deadline stands.
type bridgeReader struct {
	conn net.Conn // for its deadlines
	fd   *fdConn  // conn's reads
	pre  []byte   // bytes read with the upgrade request, read first

	buf  *[]byte // from readPool while it holds unconsumed bytes, else nil
	r, w int     // the unconsumed bytes are (*buf)[r:w]
	// keep: a peeked slice of buf is in use (until the next call).
	keep bool

	frameTimeout time.Duration
	hold         idleHold
	lingerUntil  *atomic.Int64 // the connection's

	p        []byte   // the caller's buffer in Read, for readInto
	boundary bool     // the parser waits for a frame's first byte
	deadline waitKind // what the read deadline set is for
	active   bool     // bytes were read since the deadline was set
}

// waitKind is what a bridgeReader's read deadline is set for.
type waitKind uint8

const (
	waitNone   waitKind = iota // no deadline set by the reader yet
	waitIdle                   // between frames: the side's hold
	waitDrain                  // between frames with no hold: no deadline, no wait
	waitFrame                  // inside a frame: the read timeout
	waitLinger                 // closing: the linger deadline
)

// bridgeIdleAfter is the longest a side of a bridged session (the
// browser, the target) may send nothing before the goroutine reading it
// gives it to the poller: between it and twice it (the deadline is
// renewed lazily). How long a side is held is its idleHold. A variable
// for the tests.
var bridgeIdleAfter = time.Second

// bridgeHoldMin is the shortest hold that waits, the first one a side
// gets once it proves busy.
const bridgeHoldMin = 5 * time.Millisecond

// idleHold is how long a side of a bridged session is held by the
// goroutine reading it after its last byte. A side starts with no hold:
// it is read while it has bytes and parked as soon as it has none. Once
// it proves busy (it woke again within bridgeIdleAfter of being parked,
// or a hold passed with bytes read) it is held for bridgeHoldMin, then
// twice as long each time it proves busy again, up to bridgeIdleAfter; a
// side that stayed parked longer than that starts over with no hold. A
// busy side is held as long as before, so it costs no more re-arms; a
// side that said one thing and went quiet keeps no goroutine at all.
// Measured with tcp-bridge-idle (1,000 connections making one round trip
// each at once, then silent): a fixed hold of one second kept a
// goroutine on both sides of every connection through the burst, 8.8
// MiB of stacks that the runtime then kept, 17 KiB per connection
// against 13 with a fixed 5 ms hold, 14.6 with one starting at 5 ms, and
// 9.2-10.2 with none at first (and the poller letting the readers it
// started run before it starts more).
// Not safe for concurrent use: only the goroutine that holds the side
// uses it.
type idleHold struct {
	d        time.Duration // 0: park as soon as the side has nothing to read
	parkedAt int64         // when the side was last parked (Unix ns), 0 once it woke
}

// next returns the hold for the deadline being set at now (0: none, read
// without waiting and park); busy says the previous hold passed with
// bytes read since it was set.
func (h *idleHold) next(now time.Time, busy bool) time.Duration {
	switch {
	case busy || h.parkedAt != 0 && time.Duration(now.UnixNano()-h.parkedAt) < bridgeIdleAfter:
		h.d = min(max(2*h.d, bridgeHoldMin), bridgeIdleAfter)
	case h.parkedAt != 0:
		h.d = 0 // parked for long: starts over
	}
	h.parkedAt = 0
	return h.d
}

// parked records that the side went to the poller at now.
func (h *idleHold) parked(now time.Time) { h.parkedAt = now.UnixNano() }

// bridgeReadBuffer is the size of the reader's pooled buffer: a read
// takes up to this much (many small frames, or a few bulk ones, parsed in
// place); the rest of a bigger frame is read straight into the frame's
// payload. It is held only while its bytes are being consumed.
const bridgeReadBuffer = 64 << 10

var readPool = sync.Pool{New: func() any { b := make([]byte, bridgeReadBuffer); return &b }}

// errWouldBlock is fdConn.read's answer, when it may not wait, when the
// socket has nothing.
var errWouldBlock = errors.New("transports: nothing to read now")

// errReadIdle is what a bridgeReader's Read returns at a frame boundary
// when nothing came for its hold: the connection goes back to the
// poller.
var errReadIdle = errors.New("transports: the browser sent nothing for a while")

// newBridgeReader returns the reader of conn (a socket; pre its bytes
// read with the upgrade request), or nil where raw socket I/O is not
// available.
func newBridgeReader(conn net.Conn, pre []byte, frameTimeout time.Duration, lingerUntil *atomic.Int64) *bridgeReader {
	b := &bridgeReader{conn: conn, pre: pre, frameTimeout: frameTimeout, lingerUntil: lingerUntil}
	if b.fd = newFDConn(conn, b.readInto, b.release); b.fd == nil {
		return nil
	}
	return b
}

// readInto is where fdConn reads: straight into the caller's buffer when
// that is big (a big payload's rest: no copy), else into the pooled one.
func (b *bridgeReader) readInto() []byte {
	if len(b.p) >= bridgeReadBuffer {
		return b.p
	}
	if b.buf == nil {
		b.buf = readPool.Get().(*[]byte)
	}
	return *b.buf
}

// frameStart tells the reader that the parser is about to read a frame's
// header: a wait now is a wait between frames, which may end in
// errReadIdle.
func (b *bridgeReader) frameStart() {
	b.boundary = true
	if b.deadline == waitFrame {
		// The last frame's deadline is not the next one's: a wait for
		// the rest of the next frame sets its own.
		b.deadline = waitNone
	}
	b.release()
}

// release gives the buffer back once its bytes are consumed and nothing
// peeked from it is in use.
func (b *bridgeReader) release() {
	if b.buf != nil && b.r == b.w && !b.keep {
		readPool.Put(b.buf)
		b.buf = nil
	}
}

// done gives the buffer back when reading is over, whatever it still
// holds (the close frame just read, maybe bytes after it): otherwise a
// connection closed by its client would leave its buffer to the
// collector, and a thousand closed at once would take a thousand new
// ones from the pool. Only the reader may call it, after its last read.
func (b *bridgeReader) done() {
	b.r, b.w, b.keep = 0, 0, false
	b.release()
}

// peek returns the next n bytes when the buffer holds them, consumed,
// valid until the next call; nil otherwise.
func (b *bridgeReader) peek(n int) []byte {
	b.keep = false
	if len(b.pre) > 0 || b.buf == nil || b.w-b.r < n {
		return nil
	}
	p := (*b.buf)[b.r : b.r+n : b.r+n]
	b.r += n
	b.keep = true
	b.boundary = false
	return p
}

// Read reads into p what is buffered, else what the socket has, waiting
// for it as the comment on the type says.
func (b *bridgeReader) Read(p []byte) (int, error) {
	b.keep = false
	if len(p) == 0 {
		return 0, nil
	}
	if len(b.pre) > 0 {
		n := copy(p, b.pre)
		b.pre = b.pre[n:]
		b.boundary = false
		return n, nil
	}
	if b.r < b.w {
		n := copy(p, (*b.buf)[b.r:b.w])
		b.r += n
		b.boundary = false
		return n, nil
	}
	b.release()
	for {
		wait, err := b.setDeadline(false)
		if err != nil {
			return 0, err
		}
		b.p = p
		n, err := b.fd.read(wait)
		b.p = nil
		if n > 0 {
			b.active, b.boundary = true, false
			if len(p) >= bridgeReadBuffer {
				return n, nil
			}
			b.w = n
			b.r = copy(p, (*b.buf)[:n])
			return b.r, nil
		}
		b.release()
		if err == errWouldBlock {
			return 0, b.park() // drained, with no hold: back to the poller now
		}
		if !isTimeout(err) {
			return 0, err
		}
		if _, err := b.setDeadline(true); err != nil {
			return 0, err
		}
	}
}

// park ends a wait between frames that found nothing (errReadIdle): the
// connection goes back to the poller, and the next wake chooses the hold
// and sets the deadline afresh (a read with a passed deadline fails
// before it tries the socket; a drained side has none set).
func (b *bridgeReader) park() error {
	b.deadline = waitNone
	b.hold.parked(time.Now())
	return errReadIdle
}

// errReadTimeout ends reading when the rest of a frame did not come within
// the read timeout, or the linger time passed.
var errReadTimeout = errors.New("transports: websocket read timed out")

// setDeadline makes the read deadline the one the next wait needs: the
// idle one between frames, the read timeout inside one, the linger
// deadline once closing; and says whether the next read may wait at all
// (not between frames when the side has no hold: then it reads what is
// there and parks). passed says the last wait ended on the deadline set;
// then the wait is over (errReadIdle, errReadTimeout) or the deadline is
// renewed (an idle deadline that passed with frames read since it was
// set).
func (b *bridgeReader) setDeadline(passed bool) (wait bool, err error) {
	want := waitFrame
	if b.boundary {
		want = waitIdle
	}
	switch {
	case b.deadline == waitLinger:
		if passed {
			return false, errReadTimeout
		}
		return true, nil
	case passed && b.deadline == waitIdle && want == waitIdle && !b.active:
		return false, b.park()
	case passed && b.deadline == waitFrame:
		return false, errReadTimeout // the rest of a frame did not come in time
	case !passed && b.lingerUntil.Load() == 0 && (b.deadline == want || b.deadline == waitDrain && want == waitIdle):
		return b.deadline != waitDrain, nil // the deadline set stands
	}
	now := time.Now()
	timeout := b.frameTimeout
	if want == waitIdle {
		timeout = b.hold.next(now, passed && b.deadline == waitIdle && b.active)
	}
	if timeout == 0 {
		// No hold: no deadline either (a passed one would fail the
		// read before it tries the socket).
		_ = b.conn.SetReadDeadline(time.Time{})
		b.deadline, wait = waitDrain, false
	} else {
		_ = b.conn.SetReadDeadline(now.Add(timeout))
		b.deadline, wait = want, true
	}
	b.active = false
	// Closing: the linger deadline stands (linger stores before it sets,
	// so that one of the two sets comes last with it).
	if until := b.lingerUntil.Load(); until != 0 {
		_ = b.conn.SetReadDeadline(time.Unix(0, until))
		b.deadline, wait = waitLinger, true
	}
	return wait, nil
}

// isTimeout reports whether err is a passed deadline.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
