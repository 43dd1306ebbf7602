//go:build !amd64

package gateway

// prefetch is a no-op where the gateway has no prefetch instruction of
// its own (see prefetch_amd64.go).
func prefetch(p uintptr, lines int) {}
