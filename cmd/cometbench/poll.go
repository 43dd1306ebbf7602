package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loop that reads subscribed sessions. With one goroutine per
// connection, every delivery costs the load generator two read system
// calls (the data, then EAGAIN before the goroutine parks in Go's
// edge-triggered netpoller) and a goroutine switch. Here one goroutine
// waits on an epoll set and reads each ready connection into a shared
// buffer, so a delivery costs one read and no parked goroutine or
// per-connection buffer is kept (a connection keeps only the tail of an
// incomplete frame, if any).
//
// The set is edge-triggered: a connection is reported once per arrival,
// and read until a read comes back short of the buffer (the receive
// queue was empty then; bytes arriving after it are a new edge). A
// level-triggered set kept every connection that was reported on its
// ready list and polled its socket again at the next wait, to find it
// empty: with 10,000 sessions at 10 msg/s that second poll (sock_poll,
// tcp_poll and the file lookup) was a seventh of the load generator's
// core in perf. The read is a raw system call (the socket never blocks),
// which spares Go's scheduler hooks around it.
//
// A connection leaves Go's netpoller when the poller takes it (detachFD):
// the poller reads a duplicate of its descriptor and the net.Conn is
// closed. Left registered there as well, every arrival was reported twice:
// once to the poller and once to the runtime's own epoll set, where the
// scheduler's netpoll found, per message, a ready connection with no
// goroutine waiting on it. In perf of fanout-10k-10 that was a tenth of
// the load generator's core (the runtime's netpoll, the socket polls it
// made, and the scheduler around it: the reader, back from its wait,
// found its P held by the thread polling for the runtime); after, a
// tenth of a percent.
//
// The poller alone closes the connections it holds: a file descriptor is
// never closed behind its back and reused by another connection while it
// reads.
//
// The same poller reads the loopback floor's connections (floor.go), with
// a parser that only counts bytes, so that the floor is read exactly the
// way the sessions are.
//
// Each read also takes the kernel's receive timestamp of the bytes
// (SO_TIMESTAMPNS): on loopback the moment the gateway's write put them in
// the connection's receive queue. A delivery's latency is recorded twice,
// at that arrival and at the read (the time epoll_wait returned). The
// difference is the load generator's own delay: on a machine where it
// shares two cores with the gateway, its reader waits for its CPU, its
// Go scheduler (the reader's thread gets a P back after each wait) and
// its garbage collector: at the p99 of fanout-10k-10 the read came up to
// 8 ms after the arrival on the project's two-core machine. The arrival latency is the gateway's;
// the read latency is what this client saw. When one read takes several
// messages, the kernel reports the arrival of the last of them, so the
// earlier ones are counted as arriving late: the arrival latency can only
// be overstated.

// epollET is EPOLLET as the unsigned event mask it is (package syscall
// declares it negative).
const epollET = 1 << 31

// hangUp are the events after which a connection is read to its end.
const hangUp = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR

// readyConn is a connection an epoll wait reported, and whether the
// report included hangUp.
type readyConn struct {
	pc  *polledConn
	hup bool
}

// pollOwner is whom a poller reports to: the load generator's worker for
// its sessions, the floor's reader for its connections.
type pollOwner interface {
	// connEnded: the peer closed pc, reading it failed, or its bytes did
	// not parse; the poller has closed it.
	connEnded(pc *polledConn, err error)
	// connStopped: the poller closed pc at stop.
	connStopped(pc *polledConn)
	// pollFailed: waiting failed; the poller stops.
	pollFailed(err error)
}

type poller struct {
	epfd  int
	owner pollOwner
	buf   []byte
	oob   []byte // a read's control message: the receive timestamp
	iov   syscall.Iovec
	msg   syscall.Msghdr // reads into buf and oob
	ready []readyConn    // the connections of one wait's events

	mu      sync.Mutex
	conns   []*polledConn // by file descriptor
	stopped bool
}

// polledConn is one subscribed session in the event loop.
type polledConn struct {
	fd          int // the poller's own (detachFD)
	parser      streamParser
	s           *benchSession // nil for a floor connection
	chName      []byte
	closeReason string
	now         int64        // when the bytes being parsed were read (Unix ns)
	arrival     int64        // and when they arrived (the kernel's timestamp), 0 unknown
	emit        func([]byte) // pc.onPacket, bound once (no allocation per read)
}

func newPolledConn(w *worker, fd int, parser streamParser, s *benchSession, chName []byte) *polledConn {
	pc := &polledConn{fd: fd, parser: parser, s: s, chName: chName}
	pc.emit = func(pkt []byte) {
		if c := w.onPacket(pc.s, pc.chName, pkt, pc.now, pc.arrival); c != nil && c.T == "close" {
			pc.closeReason = fmt.Sprintf("%d %s", c.Code, c.Reason)
		}
	}
	return pc
}

func newPoller(owner pollOwner) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	p := &poller{epfd: epfd, owner: owner, oob: make([]byte, syscall.CmsgSpace(16))}
	p.setBuffer(make([]byte, 256<<10))
	p.msg.Control = &p.oob[0]
	return p, nil
}

// setBuffer makes buf the buffer reads go to.
func (p *poller) setBuffer(buf []byte) {
	p.buf = buf
	p.iov.Base = &buf[0]
	p.iov.SetLen(len(buf))
	p.msg.Iov, p.msg.Iovlen = &p.iov, 1
}

// controlFD calls f with c's file descriptor (under RawConn.Control, so
// the descriptor stays c's during the call) and returns f's error.
func controlFD(c net.Conn, f func(fd int) error) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T has no file descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// connFD returns the file descriptor of a TCP connection.
func connFD(c net.Conn) (int, error) {
	fd := -1
	err := controlFD(c, func(f int) error { fd = f; return nil })
	return fd, err
}

// detachFD takes c out of Go's netpoller and returns a descriptor of its
// socket for the poller alone (see poller): a duplicate, close-on-exec
// and, like c's, non-blocking, made before c is closed. On error c is
// closed too.
func detachFD(c net.Conn) (int, error) {
	defer c.Close()
	fd := -1
	err := controlFD(c, func(f int) (err error) {
		if fd, err = unix.FcntlInt(uintptr(f), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			return fmt.Errorf("dup: %w", err)
		}
		return nil
	})
	if err != nil {
		return -1, err
	}
	return fd, nil
}

// fdWriter writes to a connection the poller holds, through its
// descriptor (non-blocking): what a session sends after its handover (a
// pong, a close reply), which waits for room for up to 10 seconds, as
// writeClientFrame's deadline on a net.Conn.
type fdWriter int

func (w fdWriter) Write(b []byte) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	n := 0
	for n < len(b) {
		m, err := syscall.Write(int(w), b[n:])
		if m > 0 {
			n += m
		}
		switch {
		case err == nil, err == syscall.EINTR:
		case err == syscall.EAGAIN:
			if time.Now().After(deadline) {
				return n, os.ErrDeadlineExceeded
			}
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(w), Events: unix.POLLOUT}}, 100)
		default:
			return n, err
		}
	}
	return n, nil
}

// abortFD closes fd with a reset (SO_LINGER 0), as abortClose does a
// net.Conn: at the end of a run every connection closes at once, and a
// graceful close would leave tens of thousands in TIME_WAIT.
func abortFD(fd int) {
	_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	_ = syscall.Close(fd)
}

// add hands pc to the loop. After stop it fails and the caller closes the
// connection.
func (p *poller) add(pc *polledConn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return errStopped
	}
	if err := syscall.SetsockoptInt(pc.fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
	}
	if pc.fd >= len(p.conns) {
		p.conns = append(p.conns, make([]*polledConn, pc.fd+1-len(p.conns))...)
	}
	p.conns[pc.fd] = pc
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(pc.fd)}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, pc.fd, &ev); err != nil {
		p.conns[pc.fd] = nil
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// stop makes add fail from now on; run then closes everything and returns.
func (p *poller) stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
}

// run reads ready connections until stop, then closes them all.
func (p *poller) run() {
	defer syscall.Close(p.epfd)
	events := make([]syscall.EpollEvent, 512)
	for {
		p.mu.Lock()
		stopped := p.stopped
		p.mu.Unlock()
		if stopped {
			p.closeAll()
			return
		}
		// The timeout bounds how long stop waits.
		n, err := syscall.EpollWait(p.epfd, events, 100)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			p.owner.pollFailed(fmt.Errorf("epoll_wait: %w", err))
			p.stop()
			continue
		}
		if n == 0 {
			continue
		}
		now := time.Now().UnixNano()
		p.ready = p.ready[:0]
		p.mu.Lock()
		for i := range n {
			if fd := int(events[i].Fd); fd < len(p.conns) && p.conns[fd] != nil {
				p.ready = append(p.ready, readyConn{p.conns[fd], events[i].Events&hangUp != 0})
			}
		}
		p.mu.Unlock()
		for _, r := range p.ready {
			p.read(r.pc, now, r.hup)
		}
	}
}

// read reads pc until its receive queue is empty (the set is
// edge-triggered) or it ended. With hup (the peer closed, or the
// connection failed, before the report) it reads on to the end: a short
// read leaves the end unread, and no new report would come for it.
func (p *poller) read(pc *polledConn, now int64, hup bool) {
	for {
		nr, oobn, err := p.recvmsg(pc.fd)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return
		}
		if nr > 0 {
			pc.now = now
			pc.arrival = receiveTimestamp(p.oob[:oobn])
			err = pc.parser.Feed(p.buf[:nr], pc.emit)
			if err == nil {
				if nr < len(p.buf) && !hup {
					return
				}
				continue
			}
		} else if err == nil {
			err = io.EOF
		}
		p.remove(pc)
		p.owner.connEnded(pc, err)
		return
	}
}

// recvmsg reads from fd into p.buf and p.oob: the bytes and the control
// bytes read, or an Errno.
func (p *poller) recvmsg(fd int) (int, int, error) {
	p.msg.SetControllen(len(p.oob))
	n, _, errno := syscall.RawSyscall(syscall.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&p.msg)), 0)
	if errno != 0 {
		return 0, 0, errno
	}
	return int(n), int(p.msg.Controllen), nil
}

func (p *poller) remove(pc *polledConn) {
	p.mu.Lock()
	p.conns[pc.fd] = nil
	p.mu.Unlock()
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, pc.fd, nil)
	_ = syscall.Close(pc.fd)
}

func (p *poller) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, pc := range conns {
		if pc == nil {
			continue
		}
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, pc.fd, nil)
		abortFD(pc.fd)
		p.owner.connStopped(pc)
	}
}

// receiveTimestamp is the SCM_TIMESTAMPNS of a read's control messages in
// Unix nanoseconds, or 0 when there is none. It parses in place: the
// reader makes a system call per delivery, and the standard parser
// allocates a slice per message. The fields are read as bytes, not
// through a pointer cast, so any alignment of oob is fine. On Linux a
// control message header is a size_t length and two int32s (level,
// type); a timespec is two longs.
func receiveTimestamp(oob []byte) int64 {
	const hdr = syscall.SizeofCmsghdr
	const word = hdr - 8 // size_t and long
	for len(oob) >= hdr {
		var n uint64
		if word == 8 {
			n = binary.NativeEndian.Uint64(oob)
		} else {
			n = uint64(binary.NativeEndian.Uint32(oob))
		}
		if n < hdr || n > uint64(len(oob)) {
			return 0
		}
		level := int32(binary.NativeEndian.Uint32(oob[word:]))
		typ := int32(binary.NativeEndian.Uint32(oob[word+4:]))
		if level == syscall.SOL_SOCKET && typ == syscall.SCM_TIMESTAMPNS && n >= hdr+2*word {
			data := oob[syscall.CmsgLen(0):]
			if word == 8 {
				return int64(binary.NativeEndian.Uint64(data))*1e9 + int64(binary.NativeEndian.Uint64(data[8:]))
			}
			return int64(int32(binary.NativeEndian.Uint32(data)))*1e9 + int64(int32(binary.NativeEndian.Uint32(data[4:])))
		}
		next := syscall.CmsgSpace(int(n) - hdr)
		if next > len(oob) {
			return 0 // the last message, without its padding
		}
		oob = oob[next:]
	}
	return 0
}
