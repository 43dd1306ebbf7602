package transports

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// sockOut is the writing side of a connection the node owns (a WebSocket,
// an SSE stream): blocking writes within the write timeout, and the
// writes of the gateway's write workers, which take only what the kernel
// accepts at once (gateway.TryWriter). The owner's write lock guards it,
// and stays held from a try that left a rest until the flush of that
// rest, so that nothing (a pong, a close frame) goes between the two.
//
// Why a system call of our own rather than net.Conn.Write: Write waits in
// Go's poller when the socket buffer is full, and a worker that writes
// thousands of sessions must not wait for one slow client. RawConn.Write
// with a callback that never asks to wait makes exactly one write(2),
// through the same descriptor lock as Write, so a concurrent Close is
// still safe.
type sockOut struct {
	conn     net.Conn
	raw      syscall.RawConn // nil: no descriptor of our own (a try waits for flush)
	deadline writeDeadline
	rest     *[]byte // a try's buffer whose end the kernel did not take
	restAt   int     // where in *rest the unwritten end starts
}

func newSockOut(conn net.Conn) sockOut {
	o := sockOut{conn: conn}
	c := conn
	if b, ok := c.(*bufferedConn); ok {
		c = b.Conn
	}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			o.raw = raw
		}
	}
	return o
}

// write writes b, waiting at most timeout (renewed lazily, see
// writeDeadline) for the client to take it.
func (o *sockOut) write(b []byte, now int64, timeout time.Duration) (int, error) {
	o.deadline.extend(o.conn, now, timeout)
	return o.conn.Write(b)
}

// try writes *buf without waiting. When the kernel takes all of it, try
// returns and buf stays the caller's. Otherwise try keeps buf (returned
// to the pool by flush) and returns gateway.ErrWriteBlocked with
// len(*buf): the rest goes out at flush, which must follow before any
// other write.
func (o *sockOut) try(buf *[]byte, now int64, timeout time.Duration) (int, error) {
	b := *buf
	// A write deadline that passed (the lazy one, after a quiet while)
	// fails RawConn.Write as it fails Write: renew it first.
	o.deadline.extend(o.conn, now, timeout)
	n := 0
	if o.raw != nil {
		var werr error
		err := o.raw.Write(func(fd uintptr) bool {
			for n < len(b) {
				m, err := syscall.Write(int(fd), b[n:])
				if m > 0 {
					n += m
				}
				if err == syscall.EINTR {
					continue
				}
				if err != nil && err != syscall.EAGAIN {
					werr = err
				}
				if err != nil || m <= 0 {
					break
				}
			}
			return true // never wait here: the rest is flush's
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			return n, err
		}
		if n == len(b) {
			return n, nil
		}
	}
	o.rest, o.restAt = buf, n
	return len(b), gateway.ErrWriteBlocked
}

// flush writes what the last try left, waiting as write does, and gives
// its buffer back. It returns the bytes it wrote.
func (o *sockOut) flush(timeout time.Duration) (int, error) {
	buf, at := o.rest, o.restAt
	if buf == nil {
		return 0, errNothingToFlush
	}
	o.rest, o.restAt = nil, 0
	n, err := o.write((*buf)[at:], time.Now().UnixNano(), timeout)
	putBuffer(buf)
	return n, err
}

// errNothingToFlush is a flush without a try that left a rest: a bug in
// the caller, reported rather than hidden.
var errNothingToFlush = errors.New("transports: flush without a blocked write")
