package gateway

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The node's write workers: where messages are fanned out and sessions'
// queues are written.
//
// Each session belongs to one worker (its shard, chosen round-robin at
// Open), and a hub entry keeps its subscribers by shard. A message from
// the broker becomes one job per worker that has subscribers of the
// channel; the worker queues the message on each of its sessions and
// then writes every session that has something to send, one write per
// session with everything it has. So:
//
//   - A message to N subscribers is spread over up to GOMAXPROCS workers
//     (one per shard), each writing its own sessions: a hot channel uses
//     every core, not the one goroutine the broker delivers on.
//   - Per-session order holds: a session is written by one worker, which
//     takes its jobs in the order they were posted, and a session has at
//     most one writer at a time (Session.writing).
//   - Under load, messages coalesce: the worker queues every job it has
//     taken before it writes, so a session whose worker fell behind gets
//     several messages in one write, and the CPU per delivery falls as the
//     rate rises.
//   - The broker's delivery goroutine only posts jobs and returns: a
//     publish is confirmed without waiting behind the fan-out of earlier
//     messages (a bounded backlog of jobs per worker is the backpressure
//     to the broker when the node cannot keep up).
//   - A worker yields to the scheduler every yieldEvery writes, and writes
//     one session at most maxWorkerRounds times in a row before sending
//     it to the back of its queue: a session fed as fast as it is written
//     (a byte stream) does not keep the worker from the others.
//   - No goroutine is started per delivery. A worker runs while it has
//     jobs and exits when it has none (it is counted in the gateway's wait
//     group), so an idle node holds no worker, and a busy one keeps the
//     grown stack of one goroutine per core instead of growing a new one
//     per session and message.
//
// A worker never waits on a client: it writes through TryWriter, which
// takes what the kernel accepts at once. A session whose write would wait
// (a slow reader, a full socket buffer) leaves the worker: a goroutine of
// its own finishes the write and goes on writing that session until its
// queue is empty, exactly as every session was written before workers
// existed; the next message brings it back to its worker. A downstream
// that is not a TryWriter (a long-poll response, a SockJS HTTP request)
// is always written that way.

// writeJob is one unit of a worker's work: a body fanned out to the
// worker's shard of a hub entry (e set), or a session to write (s set).
type writeJob struct {
	e    *hubEntry
	b    *Body
	push bool // e's body is a gap: queued like push, outside the slow policies
	s    *Session
}

// writer is one worker's queue.
type writer struct {
	pool  *writerPool
	shard int

	mu      sync.Mutex
	jobs    []writeJob
	fanouts atomic.Int32 // fan-out jobs posted and not yet taken; written under mu, read without it between writes
	full    *sync.Cond   // on mu: a poster waits here while fanouts is over maxFanoutBacklog
	running bool         // a worker goroutine is draining jobs
	spare   []writeJob   // the slice the worker drained last, reused
	batch   []writeJob   // the jobs the worker is working through; the worker's own
	// clock is the worker's last reading of the time, and clockUses the
	// writes that took it since (writer.now); the worker's own.
	clock     time.Time
	clockUses int
	tallies   []deliveryTally // the worker's writes not yet in the metrics (metrics_tally.go); the worker's own
	early     []writeJob      // fan-outs taken in the middle of a batch (takeFanouts), reused; the worker's own
	sends     *SendQueue      // the worker's batch of sends (sendbatch.go), nil when they are not batched; the worker's own
}

type writerPool struct {
	g         *Gateway
	workers   []*writer
	next      atomic.Uint32 // round-robin shard of the next session
	unbatched atomic.Bool   // the workers' sends could not be batched, and the log says so
}

// maxFanoutBacklog bounds the messages waiting for one worker. Past it
// the broker's delivery goroutine waits (the broker's own buffering and
// slow-consumer handling take over, as when the fan-out ran on that
// goroutine), instead of the node queueing without bound.
const maxFanoutBacklog = 256

// yieldEvery is how many session writes a worker makes between yields to
// the scheduler. With one core, a worker writing a large fan-out would
// otherwise hold the core for its whole time slice; yielding lets a
// publish request or a broker acknowledgement in between.
const yieldEvery = 64

func newWriterPool(g *Gateway, n int) *writerPool {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	p := &writerPool{g: g, workers: make([]*writer, n)}
	for i := range p.workers {
		w := &writer{pool: p, shard: i}
		w.full = sync.NewCond(&w.mu)
		p.workers[i] = w
	}
	return p
}

// assign gives a new session its worker, round-robin.
func (p *writerPool) assign() int {
	return int(p.next.Add(1)-1) % len(p.workers)
}

// post queues j on worker shard and starts the worker if it is not
// running. It never blocks.
func (p *writerPool) post(shard int, j writeJob) {
	w := p.workers[shard]
	w.mu.Lock()
	w.jobs = append(w.jobs, j)
	if j.e != nil {
		w.fanouts.Add(1)
	}
	if !w.running {
		w.running = true
		p.g.wg.Add(1)
		go w.run()
	}
	w.mu.Unlock()
}

// await waits while worker shard's backlog of messages is over its bound.
// The caller must hold no lock a worker takes.
func (p *writerPool) await(shard int) {
	w := p.workers[shard]
	w.mu.Lock()
	for w.fanouts.Load() > maxFanoutBacklog {
		w.full.Wait()
	}
	w.mu.Unlock()
}

// run drains the worker's jobs until there are none.
func (w *writer) run() {
	defer w.pool.g.wg.Done()
	var err error
	if w.sends, err = getSendQueue(w.pool.g.cfg.SendBatch); err != nil && w.pool.unbatched.CompareAndSwap(false, true) {
		w.pool.g.log.Info("session writes are not batched: the kernel refused an io_uring; each write is its own sendto", "err", err)
	}
	writes := 0
	for {
		w.mu.Lock()
		if len(w.jobs) == 0 {
			// The batch was made at the end of the last jobs (and
			// nothing since could queue to it): the queue is empty, and
			// goes back before the next worker of this shard can start.
			if w.sends != nil {
				putSendQueue(w.sends)
				w.sends = nil
			}
			w.running = false
			w.mu.Unlock()
			return
		}
		w.batch = w.jobs
		w.jobs = w.spare[:0]
		w.readClock()
		// Fan-outs of this batch not yet queued (the counter counts every
		// one posted since the last take): while there are any, a newer
		// one must not be taken early (it would reach the sessions before
		// them).
		ahead := int(w.fanouts.Load())
		w.tookFanoutsLocked()
		w.mu.Unlock()
		// The batch grows while it is worked through: a fan-out appends
		// the sessions it gives work to (kickLocked).
		for i := 0; i < len(w.batch); i++ {
			j := w.batch[i]
			switch {
			case j.e != nil:
				// Sends queued hold their transports' write locks; a
				// fan-out takes hub and session locks whose holders
				// may be waiting for one of those.
				w.makeSends()
				j.e.deliverShard(w, j.b, j.push)
				ahead--
			default:
				prefetchJobs(w.batch, i)
				if w.sends != nil && w.sends.full() {
					w.makeSends()
				}
				j.s.writeRounds(w, -1)
				if writes++; writes%yieldEvery == 0 {
					w.makeSends()
					runtime.Gosched()
					w.readClock()
					if ahead == 0 && w.fanouts.Load() > 0 {
						w.early = w.takeFanouts(w.early[:0])
						for k := range w.early {
							e := &w.early[k]
							e.e.deliverShard(w, e.b, e.push)
						}
						clear(w.early)
					}
				}
			}
		}
		w.makeSends()
		w.flushTallies()
		clear(w.batch)
		w.spare, w.batch = w.batch, nil
	}
}

// clockEvery is how many writes a worker's reading of the clock serves
// at most: the time a write goes out at is within about that many
// writes' preparation of the truth (and the worker reads it again after
// each batch of sends, and whenever it has been away), where a reading
// per write (two clock reads, the wall and the monotonic) was about 1% of
// a fan-out's CPU.
const clockEvery = 16

// now is the time for a write the worker makes: the last reading, read
// again once it has served clockEvery writes.
func (w *writer) now() time.Time {
	if w.clockUses++; w.clockUses > clockEvery {
		w.readClock()
		w.clockUses = 1
	}
	return w.clock
}

// readClock reads the clock for the worker's next writes.
func (w *writer) readClock() {
	w.clock, w.clockUses = time.Now(), 0
}

// makeSends makes the worker's queued sends (sendbatch.go) and completes
// each session's write, until none is queued: a completed session may
// queue its next write.
func (w *writer) makeSends() {
	q := w.sends
	if q == nil {
		return
	}
	for len(q.writes) > 0 {
		q.submit()
		w.readClock() // the sends took a while; completions may write again
		for i := range q.doneWrites {
			sent, err := q.result(i)
			q.doneWrites[i].s.endQueued(w, &q.doneWrites[i], sent, err)
		}
		q.completed()
	}
}

// takeFanouts moves the fan-out jobs posted since the worker took its
// batch out of its queue, in their order, and appends them to out. The
// worker queues them on its sessions at once, in the middle of writing
// the batch, once the batch has no fan-out of its own left to queue (the
// older messages go first): a session still waiting for its write in the
// batch then takes the new message in the same write as the older
// ones. When messages come faster than a fan-out's time, that is what
// keeps a worker from writing every session twice (first the old
// message, then, a whole fan-out later, the new one), and the last
// sessions of a fan-out from being later still for the next message.
// Session jobs stay queued in their order: they carry no message, so
// queueing a message ahead of them changes only what their write takes.
func (w *writer) takeFanouts(out []writeJob) []writeJob {
	w.mu.Lock()
	defer w.mu.Unlock()
	kept := w.jobs[:0]
	for _, j := range w.jobs {
		if j.e != nil {
			out = append(out, j)
		} else {
			kept = append(kept, j)
		}
	}
	clear(w.jobs[len(kept):])
	w.jobs = kept
	w.tookFanoutsLocked()
	return out
}

// tookFanoutsLocked records that the worker took every fan-out job
// queued, and wakes the posters waiting for room.
func (w *writer) tookFanoutsLocked() {
	if w.fanouts.Load() > maxFanoutBacklog {
		w.full.Broadcast()
	}
	w.fanouts.Store(0)
}
