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
	if b, ok := conn.(*bufferedConn); ok {
		conn = b.Conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil {
		return -1
	}
	return fd
}
