//go:build linux

package gateway

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// sendRing is an io_uring used for one thing: sending a worker's batch
// of small writes, each to its own socket, in one system call (see
// sendBatch). Measured on the development VM (1,000 loopback sockets, a
// 116-byte frame each, writer and reader on different cores), a send
// through the ring cost 4.1-4.2 µs of the writer's core in batches of 32
// or more, against 5.5-6.3 µs for a sendto(2) each: the entry and exit
// of the system call, the file lookup and, on a kernel with page-table
// isolation, the page-table switches are paid once per batch. That is
// most of what a delivery costs above the write itself.
//
// The ring is used synchronously: send fills the submission queue,
// enters once to submit everything and wait for every completion, and
// returns with the ring empty. Every send carries MSG_DONTWAIT, so the
// kernel completes it inline (what the socket takes, or EAGAIN), never
// parks it to wait for room: a worker never waits for a client, here as
// with its sendto. Nothing stays in flight after send returns, which is
// what lets the caller keep each socket's descriptor referenced for
// exactly the call (sendBatch.descend) and reuse the buffers at once.
//
// No liburing and no x/sys wrapper: the interface is two system calls
// and three mapped regions, set up below from the kernel's own layout
// (include/uapi/linux/io_uring.h).
type sendRing struct {
	fd      int
	mapped  [3][]byte // the SQ ring, the CQ ring, the SQE array
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	sqes    []ioSQE
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []ioCQE
}

const (
	sysIOURingSetup = 425
	sysIOURingEnter = 426

	ioringOpSend         = 26
	ioringEnterGetEvents = 1 << 0
	ioringSetupSubmitAll = 1 << 7 // 5.18: a failing entry does not stop the rest

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	// sendFlags: a write never waits for room (see sendRing), and one to
	// a socket the peer reset fails with EPIPE instead of raising
	// SIGPIPE, as with sendNonblock's sendto.
	sendFlags = syscall.MSG_NOSIGNAL | syscall.MSG_DONTWAIT
)

type ioSQRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type ioCQRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ioURingParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ioSQRingOffsets
	cqOff                                                                  ioCQRingOffsets
}

// ioSQE is a submission queue entry, 64 bytes.
type ioSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	msgFlags    uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

// ioCQE is a completion queue entry, 16 bytes.
type ioCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// Compile-time checks of the layouts the kernel expects.
var (
	_ [120 - unsafe.Sizeof(ioURingParams{})]struct{}
	_ [unsafe.Sizeof(ioURingParams{}) - 120]struct{}
	_ [64 - unsafe.Sizeof(ioSQE{})]struct{}
	_ [unsafe.Sizeof(ioSQE{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(ioCQE{})]struct{}
	_ [unsafe.Sizeof(ioCQE{}) - 16]struct{}
)

// newSendRing sets up a ring for batches of up to entries sends.
func newSendRing(entries uint32) (*sendRing, error) {
	// SUBMIT_ALL (Linux 5.18) is required, not only wanted: a kernel
	// that does not know it refuses the ring (EINVAL), and the workers
	// write one sendto at a time. Older kernels' io_uring had the send
	// operation (5.6) but not always the non-blocking completion this
	// relies on, and only this kernel's behaviour is tested
	// (TestSendRing).
	var p ioURingParams
	p.flags = ioringSetupSubmitAll
	fd, _, errno := syscall.Syscall(sysIOURingSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &sendRing{fd: int(fd)}
	syscall.CloseOnExec(r.fd)
	sizes := [3]int{
		int(p.sqOff.array + p.sqEntries*4),
		int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(ioCQE{}))),
		int(p.sqEntries * uint32(unsafe.Sizeof(ioSQE{}))),
	}
	offsets := [3]int64{ioringOffSQRing, ioringOffCQRing, ioringOffSQEs}
	for i := range sizes {
		m, err := syscall.Mmap(r.fd, offsets[i], sizes[i], syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("io_uring mmap: %w", err)
		}
		r.mapped[i] = m
	}
	sq, cq := r.mapped[0], r.mapped[1]
	word := func(m []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&m[off])) }
	r.sqHead, r.sqTail = word(sq, p.sqOff.head), word(sq, p.sqOff.tail)
	r.sqMask = *word(sq, p.sqOff.ringMask)
	r.sqArray = unsafe.Slice(word(sq, p.sqOff.array), p.sqEntries)
	r.sqes = unsafe.Slice((*ioSQE)(unsafe.Pointer(&r.mapped[2][0])), p.sqEntries)
	r.cqHead, r.cqTail = word(cq, p.cqOff.head), word(cq, p.cqOff.tail)
	r.cqMask = *word(cq, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*ioCQE)(unsafe.Pointer(&cq[p.cqOff.cqes])), p.cqEntries)
	return r, nil
}

// close unmaps the ring and closes it. Nothing may be in flight.
func (r *sendRing) close() {
	for i, m := range r.mapped {
		if m != nil {
			_ = syscall.Munmap(m)
			r.mapped[i] = nil
		}
	}
	_ = syscall.Close(r.fd)
}

// capacity is the most sends one call of send takes.
func (r *sendRing) capacity() int { return len(r.sqes) }

// send makes every send of sends whose fd is not negative (at most
// capacity of them) and stores each one's result in its res: the bytes
// the socket took, or a negated errno (-EAGAIN when it took nothing).
// It returns with every send complete. A send whose submission the kernel
// refused (out of memory, say) comes back as -EAGAIN, taking nothing: its
// session's Flush writes it all, as after a full socket.
func (r *sendRing) send(sends []ringSend) {
	tail := atomic.LoadUint32(r.sqTail)
	n := uint32(0)
	for i := range sends {
		s := &sends[i]
		if s.fd < 0 {
			continue
		}
		idx := tail & r.sqMask
		r.sqes[idx] = ioSQE{
			opcode:   ioringOpSend,
			fd:       s.fd,
			addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(s.p)))),
			len:      uint32(len(s.p)),
			msgFlags: sendFlags,
			userData: uint64(i),
		}
		r.sqArray[idx] = idx
		tail++
		n++
	}
	if n == 0 {
		return
	}
	// The kernel reads the tail (and the entries before it) when it is
	// entered; the atomic store orders the entries' writes before it.
	atomic.StoreUint32(r.sqTail, tail)
	toSubmit, completed := n, uint32(0)
	for completed < n {
		want := n - completed
		if toSubmit == 0 {
			want = 1 // only completions still missing: wait for any
		}
		// A raw system call, as sendNonblock's sendto: the enter never
		// waits (every send is MSG_DONTWAIT), so it needs no scheduler
		// transition, and a batch's hundreds of microseconds in the
		// kernel would otherwise have the runtime hand the worker's P to
		// another thread mid-batch.
		got, _, errno := syscall.RawSyscall6(sysIOURingEnter, uintptr(r.fd), uintptr(toSubmit), uintptr(want), ioringEnterGetEvents, 0, 0)
		switch {
		case errno == 0:
			toSubmit -= min(uint32(got), toSubmit)
		case errno == syscall.EINTR:
		case toSubmit > 0:
			// Refused (EAGAIN, EBUSY, ENOMEM): take back what the kernel
			// did not consume, so the ring is empty when send returns.
			head := atomic.LoadUint32(r.sqHead)
			for t := head; t != tail; t++ {
				sends[r.sqes[t&r.sqMask].userData].res = -int32(syscall.EAGAIN)
			}
			atomic.StoreUint32(r.sqTail, head)
			n -= tail - head
			tail, toSubmit = head, 0
		default:
			// Waiting for completions of sends already submitted failed:
			// the kernel may still read their buffers, which would go
			// back to their pools and be reused. Unreachable on a ring
			// that was set up (send never waits for a socket); a crash
			// is the only honest answer to a kernel that broke its
			// contract.
			panic(fmt.Sprintf("gateway: io_uring wait failed with %d sends in flight: %v", n-completed, errno))
		}
		completed += r.reap(sends)
	}
}

// reap reads the completions the kernel posted into their sends and
// returns how many there were.
func (r *sendRing) reap(sends []ringSend) uint32 {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for h := head; h != tail; h++ {
		c := &r.cqes[h&r.cqMask]
		sends[c.userData].res = c.res
	}
	atomic.StoreUint32(r.cqHead, tail)
	return tail - head
}
