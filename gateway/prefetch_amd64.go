package gateway

// prefetch asks the processor to bring the lines cache lines from p on
// into its caches, without waiting for them (PREFETCHT0: a hint, which
// never faults, whatever p is).
//
//go:noescape
func prefetch(p uintptr, lines int)
