//go:build linux

package transports

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// fdConn reads and writes a bridged socket (the browser's or the
// target's) with raw system calls, waiting in Go's poller only when the
// socket is not ready. A round trip through the bridge is two reads and
// two writes of a few bytes; profiled, the gateway spent more around
// them than in them: every system call made through the syscall package
// (net.Conn's) enters and leaves the scheduler (entersyscall), and the
// first one after the process was idle wakes the runtime's monitor
// thread (sysmon), which then polls on the gateway's core until it sees
// the process idle again. With one small message in flight, about a
// quarter of the gateway's CPU was that thread going to sleep and waking
// up. A read or write of a non-blocking socket never blocks, so here it
// is made with syscall.RawSyscall: no scheduler transition, no monitor
// wake-up.
//
// read also lets its caller hold no buffer while it waits: it asks for
// the buffer for each attempt and tells the caller before each wait, so
// that an idle direction of a bridged session holds none (bridgeReader,
// bridgeLink.pump). (The attempt before a wait cannot be skipped: Go's
// poller forgets an edge that arrived before the wait began.)
//
// Deadlines set on the net.Conn apply (the waits are Go's poller's), and
// a closed connection fails the call with net.ErrClosed, as net.Conn
// does. One goroutine reads at a time (the connection's reader, the
// pump); writes take a lock of their own.
type fdConn struct {
	conn net.Conn
	rc   syscall.RawConn

	// The read and the write in progress. The functions given to rc are
	// made once (readFn, writeFn) and find their arguments here: a
	// closure per call would be an allocation per message.
	rbuf    func() []byte // the buffer for an attempt
	ridle   func()        // before a wait
	rnow    bool          // read without a wait: EAGAIN is the answer
	rn      int
	rerrno  syscall.Errno
	readFn  func(uintptr) bool
	wmu     sync.Mutex // writes may come from several goroutines (SockJS sends)
	wp      []byte
	wdone   int
	werrno  syscall.Errno
	writeFn func(uintptr) bool
}

// newFDConn returns raw I/O for conn, or nil when conn is not a socket
// whose descriptor Go exposes (then the caller uses conn's own methods).
// buf and idle are read's (nil when only writing): buf gives the buffer
// for each attempt, idle is called before each wait.
func newFDConn(conn net.Conn, buf func() []byte, idle func()) *fdConn {
	rc := rawConn(conn)
	if rc == nil {
		return nil
	}
	f := &fdConn{conn: conn, rc: rc, rbuf: buf, ridle: idle}
	f.readFn, f.writeFn = f.tryRead, f.tryWrite
	return f
}

// read reads what the socket holds into the buffer rbuf gives; io.EOF
// when the peer closed its side. When the socket holds nothing, it waits
// for input (calling ridle first), or, without wait, returns
// errWouldBlock (ridle called as before a wait). Without wait the
// connection's read deadline must not have passed (Go's poller fails a
// read then before it tries the socket): a reader that drains and parks
// clears it.
func (f *fdConn) read(wait bool) (int, error) {
	f.rn, f.rerrno, f.rnow = 0, 0, !wait
	if err := f.rc.Read(f.readFn); err != nil {
		return 0, err // a deadline, or the connection was closed
	}
	switch {
	case f.rerrno == syscall.EAGAIN:
		return 0, errWouldBlock
	case f.rerrno != 0:
		return 0, os.NewSyscallError("read", f.rerrno)
	case f.rn == 0:
		return 0, io.EOF
	}
	return f.rn, nil
}

func (f *fdConn) tryRead(fd uintptr) bool {
	p := f.rbuf()
	if len(p) == 0 {
		return true
	}
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			f.rn = int(r)
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			f.ridle()
			if f.rnow {
				f.rerrno = e
				return true
			}
			return false
		default:
			f.rerrno = e
		}
		return true
	}
}

// Write writes all of p, waiting for room when the socket's buffer is
// full (within the write deadline).
func (f *fdConn) Write(p []byte) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.wp, f.wdone, f.werrno = p, 0, 0
	err := f.rc.Write(f.writeFn)
	done := f.wdone
	f.wp = nil
	switch {
	case err != nil:
		return done, err
	case f.werrno != 0:
		return done, os.NewSyscallError("write", f.werrno)
	}
	return done, nil
}

func (f *fdConn) tryWrite(fd uintptr) bool {
	n, e := sendNonblock(fd, f.wp[f.wdone:])
	f.wdone += n
	switch e {
	case 0:
		return true
	case syscall.EAGAIN:
		return false
	default:
		f.werrno = e
		return true
	}
}

// sendNonblock writes as much of p to the non-blocking socket fd as the
// kernel takes now, and returns how much that was, with EAGAIN when it
// stopped for a full buffer (0 when all of p went out). It is the raw
// write of both the bridge (fdConn) and the write workers' tries
// (sockOut.try): sendto with MSG_NOSIGNAL, so that a write to a socket
// the peer reset fails with EPIPE and raises no SIGPIPE, made with
// RawSyscall, which never blocks here and so needs no scheduler
// transition.
func sendNonblock(fd uintptr, p []byte) (int, syscall.Errno) {
	n := 0
	for n < len(p) {
		r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n),
			syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			n += int(r)
		case syscall.EINTR:
		default:
			return n, e
		}
	}
	return n, 0
}
