package transports

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// sockOut is the writing side of a connection the node owns (a WebSocket,
// an SSE stream): blocking writes within the write timeout, and the
// writes of the gateway's write workers, which take only what the kernel
// accepts at once (gateway.TryWriter). The owner's write lock guards it,
// and stays held from a try that left a rest until the flush of that
// rest, so that nothing (a pong, a close frame) goes between the two. The
// owner passes its connection to every call rather than sockOut keeping
// a copy: an idle connection's memory is the budget that matters most
// (PERFORMANCE.md), and sockOut costs it two words.
//
// Why a system call of our own rather than net.Conn.Write: Write waits in
// Go's poller when the socket buffer is full, and a worker that writes
// thousands of sessions must not wait for one slow client. The try is one
// sendNonblock (shared with the bridge: a raw system call, no scheduler
// transition) inside RawConn.Control, which holds a reference on the
// descriptor for the call, so a concurrent Close cannot close it, or let
// its number be reused, under the write. Not RawConn.Write: its
// descriptor write lock and its re-arming of the Go poller's wait state
// (pollReset) are for a writer that may wait in the poller, which a try
// never does, and the owner's write lock already makes writes one at a
// time; in a fan-out to 10,000 sessions the poller re-arm alone was 1.8%
// of the node's CPU (the poll state is a cache line that a delivery would
// otherwise not touch). For the same reason the try leaves the
// write deadline alone: only a write that waits (write, flush) needs it,
// and renews it first. The owner asks for the connection's RawConn once
// and passes it to every try (asked for at each try, it was an
// allocation per delivery); the function Control calls is a pooled
// sendCall's, not a closure (see sendCall), so a try allocates nothing.
// Where the worker batches its sends (gateway.BatchWriter, io_uring), the
// try's system call is not made here: queue hands the buffer to the
// worker's batch, and endQueued ends the write with what the socket took,
// exactly as try would have ended it.
type sockOut struct {
	deadline writeDeadline // guarded by the owner's write lock
	// rest is a try's buffer holding what the kernel did not take, or a
	// queued send's whole buffer until endQueued; only the session's
	// writer touches it (try or queue, then flush or endQueued).
	rest *[]byte
}

// write writes b, waiting at most timeout (renewed lazily, see
// writeDeadline) for the client to take it.
func (o *sockOut) write(conn net.Conn, b []byte, now int64, timeout time.Duration) (int, error) {
	o.deadline.extend(conn, now, timeout)
	return conn.Write(b)
}

// try writes *buf without waiting, through raw, the connection's
// descriptor access (nil: none, and everything waits for flush). When the
// kernel takes all of it, try returns and buf stays the caller's.
// Otherwise try keeps buf, holding what is left (returned to the pool by
// flush), and returns gateway.ErrWriteBlocked with len(*buf): the rest
// goes out at flush, which must follow before any other write.
func (o *sockOut) try(raw syscall.RawConn, buf *[]byte) (int, error) {
	n := 0
	if raw != nil {
		call := sendCalls.Get().(*sendCall)
		call.p = *buf
		err := raw.Control(call.fn)
		var errno syscall.Errno
		n, errno = call.n, call.errno
		call.p = nil
		sendCalls.Put(call)
		if err == nil && errno != 0 && errno != syscall.EAGAIN {
			err = os.NewSyscallError("sendto", errno)
		}
		if err != nil {
			return n, err
		}
	}
	return o.settle(buf, n)
}

// settle is the end of a try that sent n bytes of *buf: done, or the
// rest kept for flush (gateway.ErrWriteBlocked).
func (o *sockOut) settle(buf *[]byte, n int) (int, error) {
	b := *buf
	if n == len(b) {
		return n, nil
	}
	// Keep the rest at the front of the buffer: a copy on this rare path
	// saves the connection an offset field.
	*buf = b[:copy(b, b[n:])]
	o.rest = buf
	return len(b), gateway.ErrWriteBlocked
}

// queue is try for a write worker that batches its sends
// (gateway.BatchWriter): *buf's send goes on q, and buf is kept (in rest)
// until endQueued, which must follow before any other write.
func (o *sockOut) queue(q *gateway.SendQueue, raw syscall.RawConn, buf *[]byte) (int, error) {
	o.rest = buf
	q.Send(raw, *buf)
	return len(*buf), gateway.ErrWriteQueued
}

// endQueued is the end of a queued send that took sent bytes or failed
// with err: what try would have returned. Unless a rest is kept for
// flush (gateway.ErrWriteBlocked), the buffer goes back to the pool and
// wmu, the owner's write lock held since queue, is released.
func (o *sockOut) endQueued(sent int, err error, wmu *sync.Mutex) (int, error) {
	buf := o.rest
	o.rest = nil
	n := sent
	if err == nil {
		n, err = o.settle(buf, sent)
	}
	if err != gateway.ErrWriteBlocked {
		putBuffer(buf)
		wmu.Unlock()
	}
	return n, err
}

// sendCall is a try's system call, for RawConn.Control: its function is
// bound once, when the pool makes it, and finds its argument and leaves
// its results in the sendCall. A closure over the try's variables would
// be made at each try, and the variables it shares moved to the heap
// with it: two of the three allocations a delivery made (the third was
// the RawConn, now kept by the connection).
type sendCall struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr)
}

var sendCalls = sync.Pool{New: func() any {
	c := new(sendCall)
	c.fn = c.send
	return c
}}

func (c *sendCall) send(fd uintptr) { c.n, c.errno = sendNonblock(fd, c.p) }

// flush writes what the last try left, waiting as write does, and gives
// its buffer back. It returns the bytes it wrote.
func (o *sockOut) flush(conn net.Conn, timeout time.Duration) (int, error) {
	buf := o.rest
	if buf == nil {
		return 0, errNothingToFlush
	}
	o.rest = nil
	n, err := o.write(conn, *buf, time.Now().UnixNano(), timeout)
	putBuffer(buf)
	return n, err
}

// errNothingToFlush is a flush without a try that left a rest: a bug in
// the caller, reported rather than hidden.
var errNothingToFlush = errors.New("transports: flush without a blocked write")
