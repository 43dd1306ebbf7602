package gateway

import "unsafe"

// Prefetching a fan-out's memory.
//
// A fan-out to thousands of sessions visits memory that is no longer in
// the processor's caches: the kernel's sends in between (a socket's
// structures, its buffers) push out what the last message's visit
// brought in. Each session costs a wait on memory for each line a
// delivery touches: the session's own (its lock, queue and writer's
// bookkeeping), then the transport's (its write lock, its framing, its
// socket). Measured on a 10,000-subscriber fan-out, those waits were most
// of the gateway's own CPU per delivery, the rest of which is the
// kernel's send.
//
// The addresses are known well before they are needed, though: the
// fan-out walks a slice of sessions, and the worker a slice of jobs. So
// both ask the processor to fetch the memory of the session a few places
// ahead (prefetchAhead), and the worker, one stage later, the memory of
// that session's transport, whose address the session keeps where the
// first stage's fetch brought it (downMemory). A prefetch is a hint:
// it never faults and never waits, so a stale address costs nothing but
// the fetch.

// HotMemory is implemented by a Transport whose writes touch memory of
// its own: HotMemory returns the addresses of up to three cache lines
// (zero: none) that a write reads and writes, the ones most likely to be
// missed first. The session asks once, when the transport is attached.
// Each line is a fetch, and fetches in flight are few (a core tracks
// about ten misses at once): name only lines a write touches.
type HotMemory interface {
	HotMemory() [3]uintptr
}

// prefetchAhead is how many sessions ahead of the one being delivered
// to or written the processor is asked to fetch their memory: far enough
// that a fetch (a few hundred nanoseconds) completes in the time the
// ones in between take, near enough that what it brings is not pushed
// out again before it is used.
const prefetchAhead = 4

// sessionLines are the lines of a Session that a delivery or a write
// touches: the first two, and the third, which holds downMemory and
// pendingOne (TestSessionLayout).
const sessionLines = 3

// prefetch asks for the first lines cache lines of s.
func (s *Session) prefetch(lines int) {
	prefetch(uintptr(unsafe.Pointer(s)), lines)
}

// prefetchDown asks for the memory of s's downstream that its writes
// touch. s's own lines should have been asked for earlier.
func (s *Session) prefetchDown() {
	for i := range s.downMemory {
		if p := s.downMemory[i].Load(); p != 0 {
			prefetch(p, 1)
		}
	}
}

// storeDownMemory records where t's hot memory lies (nil t: no
// downstream); s.mu must be held.
func (s *Session) storeDownMemory(t Transport) {
	var hot [3]uintptr
	if h, ok := t.(HotMemory); ok {
		hot = h.HotMemory()
	}
	for i := range hot {
		s.downMemory[i].Store(hot[i])
	}
}

// prefetchJobs asks, for the worker about to write jobs[i], for the
// sessions of the jobs ahead: the session 2*prefetchAhead places ahead,
// and the transport of the one prefetchAhead places ahead (whose session
// was asked for that many jobs ago).
func prefetchJobs(jobs []writeJob, i int) {
	if i == 0 { // the batch's first sessions: nothing asked for them yet
		for k := range min(2*prefetchAhead, len(jobs)) {
			if jobs[k].s != nil {
				jobs[k].s.prefetch(sessionLines)
			}
		}
	}
	if k := i + 2*prefetchAhead; k < len(jobs) && jobs[k].s != nil {
		jobs[k].s.prefetch(sessionLines)
	}
	if k := i + prefetchAhead; k < len(jobs) && jobs[k].s != nil {
		jobs[k].s.prefetchDown()
	}
}
