package gateway

import (
	"errors"
	"os"
	"sync"
	"syscall"
)

// Batched sends: a write worker hands the kernel the writes of many
// sessions at once.
//
// A worker writes its sessions one after the other, each with what the
// kernel takes at once (TryWriter). Most of the CPU a delivery costs is
// that one small send: on a loopback fan-out the gateway's own work is a
// quarter of it, the system call (its entry and exit, the file lookup)
// and the kernel's TCP path the rest. Where the kernel has io_uring, a
// worker therefore prepares each session's write (takes its queue,
// builds its frames) and queues the send (BatchWriter.QueuePackets)
// instead of making it; once it has queued SendBatch of them, or has
// other work to do first, it makes them all in one system call
// (sendRing) and completes each session's write with what its socket
// took (BatchWriter.EndQueued), exactly as a try would have: a rest goes
// to Flush on a goroutine of the session's own, an error ends the
// downstream.
//
// Why the writes are correct while they wait in the batch:
//   - The transport keeps its write lock from QueuePackets to EndQueued,
//     as it does from a try that left a rest to its Flush: no pong or
//     close frame goes before or between the queued bytes.
//   - The session stays its worker's (Session.writing), so nothing else
//     writes it, and its next round waits for the completion.
//   - A socket's descriptor is referenced (RawConn.Control) from before
//     the submission until after the completion, nested one Control per
//     send: a concurrent Close cannot close it, nor the kernel give its
//     number to another connection, while its send is in flight. A
//     socket already closed when the batch is made fails its send with
//     the close's error, as a try would.
//   - The batch never waits: every send is MSG_DONTWAIT, and the worker
//     makes it before it takes any lock a goroutine holding one of the
//     queued transports' locks might wait for (a fan-out's hub entry and
//     sessions; see writer.run). The only locks it takes while sends are
//     queued are the next sessions' own, which no transport holds.

// BatchWriter is a TryWriter whose writes a worker may queue instead of
// making them one at a time.
type BatchWriter interface {
	TryWriter
	// QueuePackets is TryWritePackets, except that when it would make
	// the write (rather than fail, or find it cannot write now), it
	// prepares it and queues it on q (SendQueue.Send, once) and returns
	// ErrWriteQueued with the bytes of the whole write. EndQueued
	// follows, before any other write to the transport.
	QueuePackets(pkts []Packet, now int64, q *SendQueue) (int, error)
	// EndQueued completes the queued write given what the socket took
	// of it (sent bytes) or the error that kept it from being made, and
	// returns what TryWritePackets would have: a rest the socket did not
	// take stays with the transport for Flush (ErrWriteBlocked).
	EndQueued(sent int, err error) (int, error)
}

// ErrWriteQueued is what QueuePackets returns for a write it queued.
var ErrWriteQueued = errors.New("gateway: write queued")

// DefaultSendBatch is the most writes a worker queues before it makes
// them (Config.SendBatch): the gain per send flattened out at 32 when it
// was measured (4.6 µs per send in batches of 8, 4.1-4.2 from 32 to 128),
// and a worker yields every yieldEvery writes anyway.
const DefaultSendBatch = yieldEvery

// ringSend is one send of a batch, as the ring makes it.
type ringSend struct {
	p   []byte
	fd  int32 // the socket, referenced for the send; -1: not to be made
	res int32 // bytes sent, or a negated errno
}

// queuedWrite is the session's side of a queued send: the round of
// writeFrom it completes.
type queuedWrite struct {
	s     *Session
	down  Transport
	bw    BatchWriter // down's
	round writeRound
	raw   syscall.RawConn
	err   error // RawConn.Control's: the socket was closed
}

// SendQueue is a write worker's batch of queued sends (see BatchWriter).
// Only its worker uses it.
type SendQueue struct {
	ring   *sendRing
	max    int
	sends  []ringSend
	writes []queuedWrite
	// levels[i] is what RawConn.Control calls for the i-th send: made
	// once, so that a batch allocates nothing.
	levels []func(fd uintptr)
	// Completions may queue the sessions' next writes: the batch being
	// completed moves here first.
	doneSends  []ringSend
	doneWrites []queuedWrite
}

// Send queues a write of p to the socket raw gives access to. Only a
// transport's QueuePackets calls it; p must stay untouched until
// EndQueued.
func (q *SendQueue) Send(raw syscall.RawConn, p []byte) {
	q.sends = append(q.sends, ringSend{p: p, fd: -1})
	q.writes = append(q.writes, queuedWrite{raw: raw})
}

// full reports whether the batch should be made before another write is
// queued.
func (q *SendQueue) full() bool { return len(q.writes) >= q.max }

// queues keeps the send queues (and their rings) of workers that
// stopped, for the next worker to start: a worker exists only while it
// has work, and setting up a ring (a file descriptor and three mappings)
// per start would cost more than it saves. There are at most as many as
// workers ever ran at once, in every gateway of the process.
var queues struct {
	sync.Mutex
	free   []*SendQueue
	failed error // why the kernel cannot make a ring (too old, or not allowed): never try again
}

// getSendQueue returns an empty queue of at most max sends, or nil when
// sends are not batched: max below 2, or no io_uring here (err says why).
func getSendQueue(max int) (*SendQueue, error) {
	if max < 2 {
		return nil, nil
	}
	queues.Lock()
	defer queues.Unlock()
	if n := len(queues.free); n > 0 {
		q := queues.free[n-1]
		queues.free = queues.free[:n-1]
		q.max = min(max, q.ring.capacity())
		return q, nil
	}
	if queues.failed != nil {
		return nil, queues.failed
	}
	r, err := newSendRing(uint32(DefaultSendBatch))
	if err != nil {
		queues.failed = err
		return nil, err
	}
	q := &SendQueue{ring: r, max: min(max, r.capacity())}
	q.levels = make([]func(uintptr), r.capacity())
	for i := range q.levels {
		q.levels[i] = func(fd uintptr) {
			q.sends[i].fd = int32(fd)
			q.descend(i + 1)
		}
	}
	return q, nil
}

// putSendQueue keeps an empty queue for the next worker.
func putSendQueue(q *SendQueue) {
	queues.Lock()
	queues.free = append(queues.free, q)
	queues.Unlock()
}

// submit makes every queued send and moves them to the batch being
// completed (result), leaving the queue empty for the sends the
// completions queue. Each socket's descriptor is held by a
// RawConn.Control around the rest of the batch (descend), so all of them
// are held while the ring sends.
func (q *SendQueue) submit() {
	q.descend(0)
	q.doneSends, q.sends = q.sends, q.doneSends[:0]
	q.doneWrites, q.writes = q.writes, q.doneWrites[:0]
}

// completed forgets the batch submit moved out, once every write of it
// is complete.
func (q *SendQueue) completed() {
	clear(q.doneSends)
	clear(q.doneWrites)
	q.doneSends, q.doneWrites = q.doneSends[:0], q.doneWrites[:0]
}

func (q *SendQueue) descend(i int) {
	if i == len(q.sends) {
		q.ring.send(q.sends)
		return
	}
	w := &q.writes[i]
	if w.raw == nil {
		w.err = errNoSocket
	} else if err := w.raw.Control(q.levels[i]); err != nil {
		w.err = err // closed: Control did not call levels[i]
	} else {
		return // levels[i] went on with the rest
	}
	q.descend(i + 1)
}

var errNoSocket = errors.New("gateway: queued write without a socket")

// result is what the i-th send of the batch being completed came to, as
// EndQueued takes it.
func (q *SendQueue) result(i int) (int, error) {
	if err := q.doneWrites[i].err; err != nil {
		return 0, err
	}
	res := q.doneSends[i].res
	switch {
	case res >= 0:
		return int(res), nil
	case syscall.Errno(-res) == syscall.EAGAIN:
		return 0, nil
	}
	return 0, os.NewSyscallError("sendto", syscall.Errno(-res))
}
