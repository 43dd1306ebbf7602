package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// The event loop that reads subscribed sessions. With one goroutine per
// connection, every delivery costs the load generator two read system
// calls (the data, then EAGAIN before the goroutine parks in Go's
// edge-triggered netpoller) and a goroutine switch. Here one goroutine
// waits on a level-triggered epoll set and reads each ready connection
// once into a shared buffer, so a delivery costs one read and no parked
// goroutine or per-connection buffer is kept (a connection keeps only the
// tail of an incomplete frame, if any).
//
// The poller alone closes the connections it holds: a file descriptor is
// never closed behind its back and reused by another connection while it
// reads.
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

type poller struct {
	epfd int
	w    *worker
	buf  []byte
	oob  []byte // a read's control message: the receive timestamp

	mu      sync.Mutex
	conns   map[int32]*polledConn
	stopped bool
}

// polledConn is one subscribed session in the event loop.
type polledConn struct {
	fd          int
	conn        net.Conn
	parser      streamParser
	s           *benchSession
	chName      []byte
	closeReason string
	now         int64        // when the bytes being parsed were read (Unix ns)
	arrival     int64        // and when they arrived (the kernel's timestamp), 0 unknown
	emit        func([]byte) // pc.onPacket, bound once (no allocation per read)
}

func newPolledConn(w *worker, fd int, conn net.Conn, parser streamParser, s *benchSession, chName []byte) *polledConn {
	pc := &polledConn{fd: fd, conn: conn, parser: parser, s: s, chName: chName}
	pc.emit = func(pkt []byte) {
		if c := w.onPacket(pc.s, pc.chName, pkt, pc.now, pc.arrival); c != nil && c.T == "close" {
			pc.closeReason = fmt.Sprintf("%d %s", c.Code, c.Reason)
		}
	}
	return pc
}

func newPoller(w *worker) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &poller{epfd: epfd, w: w, buf: make([]byte, 256<<10), oob: make([]byte, syscall.CmsgSpace(16)), conns: map[int32]*polledConn{}}, nil
}

// connFD returns the file descriptor of a TCP connection.
func connFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no file descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
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
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(pc.fd)}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, pc.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	p.conns[int32(pc.fd)] = pc
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
			p.w.fatalLater(fmt.Errorf("epoll_wait: %w", err))
			p.stop()
			continue
		}
		if n == 0 {
			continue
		}
		now := time.Now().UnixNano()
		for i := range n {
			p.mu.Lock()
			pc := p.conns[events[i].Fd]
			p.mu.Unlock()
			if pc != nil {
				p.read(pc, now)
			}
		}
	}
}

func (p *poller) read(pc *polledConn, now int64) {
	nr, oobn, _, _, err := syscall.Recvmsg(pc.fd, p.buf, p.oob, 0)
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
		return
	}
	if nr > 0 {
		pc.now = now
		pc.arrival = receiveTimestamp(p.oob[:oobn])
		err = pc.parser.Feed(p.buf[:nr], pc.emit)
		if err == nil {
			return
		}
	} else if err == nil {
		err = io.EOF
	}
	p.remove(pc)
	p.w.ended(pc.s, pc.closeReason, err)
}

func (p *poller) remove(pc *polledConn) {
	p.mu.Lock()
	delete(p.conns, int32(pc.fd))
	p.mu.Unlock()
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, pc.fd, nil)
	_ = pc.conn.Close()
}

func (p *poller) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[int32]*polledConn{}
	p.mu.Unlock()
	for _, pc := range conns {
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, pc.fd, nil)
		_ = abortClose(pc.conn)
		pc.s.mu.Lock()
		if pc.s.state == sessReady {
			pc.s.state = sessEnded
		}
		pc.s.mu.Unlock()
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
