package transports

import (
	"net"
	"syscall"
)

// rawConn is the descriptor access of the socket under conn (through the
// node's own wrappers: the bytes kept from an upgrade, a bridge target's
// count), or nil when there is none (a connection that is not a plain
// socket). Every raw use of a socket (the poller, the bridge's and the
// write workers' system calls, the backlog) gets it here; a connection
// the write workers write (wsConn, sseConn) asks once and keeps it.
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
