//go:build linux

package transports

import (
	"syscall"
	"unsafe"
)

// socketBacklog returns how many bytes written to the socket under raw
// the kernel still holds: not yet sent, or sent and not yet acknowledged
// by the peer (SIOCOUTQ, which Linux numbers like TIOCOUTQ). It returns 0
// when it cannot tell (no socket, or it was closed). The ioctl is made
// inside raw.Control, holding a reference on the descriptor: a connection
// closed meanwhile cannot have its number reused under the call, and
// another socket's backlog be read for it.
func socketBacklog(raw syscall.RawConn) int {
	if raw == nil {
		return 0
	}
	var n int32
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		return 0
	}
	return int(n)
}
