//go:build linux

package transports

import (
	"syscall"
	"unsafe"
)

// socketBacklog returns how many bytes written to socket fd the kernel
// still holds: not yet sent, or sent and not yet acknowledged by the peer
// (SIOCOUTQ, which Linux numbers like TIOCOUTQ). It returns 0 when it
// cannot tell.
func socketBacklog(fd int) int {
	if fd < 0 {
		return 0
	}
	var n int32
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n))); errno != 0 {
		return 0
	}
	return int(n)
}
