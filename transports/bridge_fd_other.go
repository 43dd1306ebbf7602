//go:build !linux

package transports

import "net"

// fdConn is raw socket I/O, Linux only (bridge_fd_linux.go): elsewhere
// newFDConn returns nil and the bridge uses the net.Conn's own methods.
type fdConn struct{}

func newFDConn(net.Conn, func() []byte, func()) *fdConn { return nil }

func (*fdConn) read() (int, error)        { panic("transports: no raw socket I/O") }
func (*fdConn) Write([]byte) (int, error) { panic("transports: no raw socket I/O") }
