//go:build !linux

package transports

import "syscall"

// socketBacklog cannot tell the kernel's backlog here.
func socketBacklog(syscall.RawConn) int { return 0 }
