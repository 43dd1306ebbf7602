//go:build !linux

package transports

// socketBacklog cannot tell the kernel's backlog here.
func socketBacklog(int) int { return 0 }
