//go:build !linux

package transports

import (
	"net"
	"syscall"
)

// fdConn is raw socket I/O, Linux only (rawio_linux.go): elsewhere
// newFDConn returns nil and the bridge uses the net.Conn's own methods.
type fdConn struct{}

func newFDConn(net.Conn, func() []byte, func()) *fdConn { return nil }

func (*fdConn) read(bool) (int, error)    { panic("transports: no raw socket I/O") }
func (*fdConn) Write([]byte) (int, error) { panic("transports: no raw socket I/O") }

// sendNonblock is raw socket I/O too: elsewhere it takes nothing, and a
// write worker's try leaves everything to the session's own goroutine.
func sendNonblock(uintptr, []byte) (int, syscall.Errno) { return 0, syscall.EAGAIN }
