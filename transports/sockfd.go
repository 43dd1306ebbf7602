package transports

import (
	"net"
	"syscall"
)

// socketFD returns conn's file descriptor, or -1. It is read once, when a
// hijacked connection starts, for the kernel's backlog (socketBacklog)
// after each write; the descriptor stays the connection's until it is
// closed, and a session stops writing (and so asking) before that.
func socketFD(conn net.Conn) int {
	rc := rawConn(conn)
	if rc == nil {
		return -1
	}
	fd := -1
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil {
		return -1
	}
	return fd
}

// rawConn is the descriptor access of the socket under conn (through the
// node's own wrappers: the bytes kept from an upgrade, a bridge target's
// count), or nil when there is none (a connection that is not a plain
// socket). Every raw use of a socket (the poller, the bridge's and the
// write workers' system calls, the backlog) gets it here.
func rawConn(conn net.Conn) syscall.RawConn {
	switch c := conn.(type) {
	case *bufferedConn:
		conn = c.Conn
	case *countedConn:
		conn = c.Conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
