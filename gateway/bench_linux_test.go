//go:build linux

package gateway

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// socketTransport writes each batch to a real loopback TCP connection as
// a write worker does: one non-blocking write(2) (TryWriter), or a send
// queued in the worker's batch (BatchWriter), the rest kept for Flush.
// It is the I/O of a real transport without its framing.
type socketTransport struct {
	conn      *net.TCPConn
	raw       syscall.RawConn
	buf, rest []byte
	counter   *deliveryCounter
	queued    atomic.Int64 // writes QueuePackets queued
	blocked   atomic.Int64 // queued writes the socket did not take whole
}

// deliveryCounter counts deliveries and signals when a target is reached,
// so that the benchmark waits for an event rather than polling. The
// benchmark keeps one per write worker (sessions are given to workers
// round-robin, and so are counters), so that the count does not bounce a
// cache line between the cores it measures; pad keeps them apart.
type deliveryCounter struct {
	n      atomic.Int64
	target atomic.Int64
	hit    chan struct{}
	_      [64]byte
}

func (c *deliveryCounter) add() {
	if c.n.Add(1) == c.target.Load() {
		c.hit <- struct{}{}
	}
}

var _ BatchWriter = (*socketTransport)(nil)

func (t *socketTransport) Name() string { return "socket" }

func (t *socketTransport) frame(pkts []Packet) []byte {
	t.buf = t.buf[:0]
	for _, p := range pkts {
		t.buf = p.AppendJSON(t.buf)
		t.buf = append(t.buf, '\n')
	}
	return t.buf
}

func (t *socketTransport) count(pkts []Packet) {
	for _, p := range pkts {
		if p.Type() == TypeMsg {
			t.counter.add()
		}
	}
}

func (t *socketTransport) WritePackets(pkts []Packet) (int, error) {
	n, err := t.conn.Write(t.frame(pkts))
	t.count(pkts)
	return n, err
}

func (t *socketTransport) TryWritePackets(pkts []Packet, _ int64) (int, error) {
	b := t.frame(pkts)
	n := 0
	err := t.raw.Write(func(fd uintptr) bool {
		n, _ = syscall.Write(int(fd), b)
		n = max(n, 0)
		return true
	})
	if err != nil {
		return 0, err
	}
	t.count(pkts)
	if n < len(b) {
		t.rest = append(t.rest[:0], b[n:]...)
		return len(b), ErrWriteBlocked
	}
	return n, nil
}

func (t *socketTransport) QueuePackets(pkts []Packet, _ int64, q *SendQueue) (int, error) {
	b := t.frame(pkts)
	t.count(pkts)
	t.queued.Add(1)
	q.Send(t.raw, b)
	return len(b), ErrWriteQueued
}

func (t *socketTransport) EndQueued(sent int, err error) (int, error) {
	if err != nil {
		return sent, err
	}
	if b := t.buf; sent < len(b) {
		t.blocked.Add(1)
		t.rest = append(t.rest[:0], b[sent:]...)
		return len(b), ErrWriteBlocked
	}
	return sent, nil
}

func (t *socketTransport) Flush() (int, error) { return t.conn.Write(t.rest) }

func (t *socketTransport) WriteHeartbeat() error { return nil }
func (t *socketTransport) Close(Disconnect)      { _ = t.conn.Close() }

// openSocketSession opens a session written to conn by a
// socketTransport that counts into counter, subscribed to pattern, and
// returns the transport.
func openSocketSession(tb testing.TB, g *Gateway, conn *net.TCPConn, counter *deliveryCounter, pattern string) *socketTransport {
	tb.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	s, err := g.Open(OpenOptions{Transport: "socket"})
	if err != nil {
		tb.Fatal(err)
	}
	tr := &socketTransport{conn: conn, raw: raw, counter: counter}
	if err := s.Attach(tr, false); err != nil {
		tb.Fatal(err)
	}
	s.Subscribe(context.Background(), pattern, Start{})
	return tr
}

// BenchmarkFanoutParallel is the wall time of fanning one message out to
// n sessions whose downstreams are real loopback TCP connections, so that
// each delivery costs a real write(2). Run it with -cpu 1,2 (and more on
// a larger machine): the write workers (one per GOMAXPROCS) each write
// their shard of the subscribers, so the time per message should fall
// nearly in proportion to the cores given. The readers do not read while
// the clock runs (the kernel's buffers hold the messages), so their cost
// is not in the figure; every 256 messages the clock stops and they
// drain.
func BenchmarkFanoutParallel(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) { benchFanoutParallel(b, n) })
	}
}

func benchFanoutParallel(b *testing.B, n int) {
	r := newFanoutRig(b, n, 0)
	b.ResetTimer()
	for range b.N {
		if r.sent%256 == 255 {
			b.StopTimer()
			r.drain()
			b.StartTimer()
		}
		r.fanout(b)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/msg")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
}

// BenchmarkFanoutScaling measures what BenchmarkFanoutParallel run with
// -cpu 1,2 does, as a pair in one run: two gateways in the process, one
// with one write worker and one with two, n sessions each, and the
// messages fanned out through the first at GOMAXPROCS 1 and through the
// second at GOMAXPROCS 2, in alternating blocks. On a machine whose speed
// drifts (this project's VM moved by 1.5x within minutes) the two halves
// of a -cpu 1,2 run can be minutes apart, and their ratio carries the
// drift; alternating block by block, both see the same machine. It reports
// the mean wall time of a message at each setting and their ratio
// (ratio-2/1): how much of a second core the fan-out turns into speed.
// It needs two CPUs. The -cpu flag does not matter: it sets GOMAXPROCS
// itself.
func BenchmarkFanoutScaling(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs")
	}
	// Two rigs of n sessions hold 4n descriptors: 4,000 sessions is
	// about what one process may hold here (20,000 files).
	for _, n := range []int{1000, 4000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) { benchFanoutScaling(b, n) })
	}
}

func benchFanoutScaling(b *testing.B, n int) {
	prev := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(prev)
	rigs := [2]*fanoutRig{newFanoutRig(b, n, 1), newFanoutRig(b, n, 2)}
	// Blocks of messages at one setting, alternating. A change of
	// GOMAXPROCS stops the world, and the fan-out right after one is
	// slower (its worker goroutines start on a changed scheduler): each
	// block begins with a message that is not timed.
	const block = 32
	var wall [2]time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		msgs := min(block, b.N-done)
		for k, r := range rigs {
			if r.sent%256+int64(msgs)+1 >= 256 {
				r.drain()
			}
			runtime.GOMAXPROCS(k + 1)
			r.fanout(b)
			start := time.Now()
			for range msgs {
				r.fanout(b)
			}
			wall[k] += time.Since(start)
		}
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
	b.ReportMetric(per(wall[0]), "µs/msg-1")
	b.ReportMetric(per(wall[1]), "µs/msg-2")
	b.ReportMetric(float64(wall[1])/float64(wall[0]), "ratio-2/1")
}

// fanoutRig is n sessions of one gateway, subscribed to one channel, each
// written by a socketTransport to a real loopback TCP connection, and the
// means to fan a message out to them and wait until every session's write
// of it was made. The readers' ends are plain descriptors in no epoll
// set: data arriving on them wakes nothing in this process, which would
// count in the figure (a real client is another process). They are not
// read while a message fans out (the kernel's buffers hold the messages);
// drain empties them.
type fanoutRig struct {
	fb         *fakeBroker
	counters   []*deliveryCounter // one per write worker, see deliveryCounter
	perCounter []int64            // sessions counted by each counter
	readers    []int
	buf        []byte
	sent       int64 // messages fanned out so far
}

// newFanoutRig opens the rig's gateway with writers write workers (0:
// one per GOMAXPROCS) and its n sessions.
func newFanoutRig(b *testing.B, n, writers int) *fanoutRig {
	g, fb := newBenchGateway(b, writers)
	lfd, sa := rawListener(b)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}
	r := &fanoutRig{fb: fb, buf: make([]byte, 64<<10), readers: make([]int, 0, n)}
	workers := g.Config().Writers
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	r.counters = make([]*deliveryCounter, workers)
	r.perCounter = make([]int64, workers)
	for i := range r.counters {
		r.counters[i] = &deliveryCounter{hit: make(chan struct{}, 1)}
		r.perCounter[i] = int64((n - i + workers - 1) / workers)
	}
	b.Cleanup(func() {
		for _, fd := range r.readers {
			_ = syscall.Close(fd)
		}
	})
	for i := range n {
		c, err := net.DialTCP("tcp", nil, addr)
		if err != nil {
			b.Fatal(err)
		}
		fd, _, err := syscall.Accept4(lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		r.readers = append(r.readers, fd)
		openSocketSession(b, g, c, r.counters[i%workers], "bench.x")
	}
	// A TCP receiver acknowledges a connection's first 16 segments at
	// once (quick-ACK mode), and on loopback the acknowledgement is
	// processed on the writer's core: the first messages cost more than
	// the rest (the load generator's floor warms up for the same reason).
	// The figure is the rest.
	for range 20 {
		r.fanout(b)
	}
	r.drain()
	return r
}

var benchFanoutMsg = brokers.Message{Channel: "bench.x", Data: []byte(`{"sym":"EURUSD","bid":1.0841,"ask":1.0843}`)}

// fanout publishes one message and waits until every session wrote it.
func (r *fanoutRig) fanout(b *testing.B) {
	r.sent++
	for j, c := range r.counters {
		c.target.Store(r.sent * r.perCounter[j])
	}
	if err := r.fb.Publish(context.Background(), benchFanoutMsg); err != nil {
		b.Fatal(err)
	}
	for _, c := range r.counters {
		select {
		case <-c.hit:
		case <-time.After(time.Minute):
			b.Fatalf("timed out: %d of %d deliveries", c.n.Load(), c.target.Load())
		}
	}
}

// drain reads what the readers hold, without waiting for more.
func (r *fanoutRig) drain() {
	for _, fd := range r.readers {
		for {
			if n, _ := syscall.Read(fd, r.buf); n <= 0 {
				break
			}
		}
	}
}

// BenchmarkLoopbackFanout is BenchmarkFanoutParallel without the gateway:
// the same number of loopback connections, written one small write(2)
// each per message by as many goroutines as GOMAXPROCS, each its share
// (and, in the batched rows, the same sends made through one io_uring per
// goroutine in batches of DefaultSendBatch, as the write workers make
// them). It is the ceiling of the gateway's scaling on the machine: what
// the kernel's loopback path itself gains from a second core (run both
// with -cpu 1,2 and compare the ratios).
func BenchmarkLoopbackFanout(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) { benchLoopbackFanout(b, n, false) })
		b.Run(fmt.Sprintf("sessions=%d/batched", n), func(b *testing.B) { benchLoopbackFanout(b, n, true) })
	}
}

func benchLoopbackFanout(b *testing.B, n int, batched bool) {
	lfd, sa := rawListener(b)
	writers := make([]int, 0, n)
	readers := make([]int, 0, n)
	defer func() {
		for _, fd := range append(writers, readers...) {
			_ = syscall.Close(fd)
		}
	}()
	for range n {
		w, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		writers = append(writers, w)
		if err := syscall.Connect(w, sa); err != nil {
			b.Fatal(err)
		}
		_ = syscall.SetsockoptInt(w, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		r, _, err := syscall.Accept4(lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		readers = append(readers, r)
	}
	frame := make([]byte, 120) // about a 64-byte message's packet
	buf := make([]byte, 64<<10)
	workers := runtime.GOMAXPROCS(0)
	var rings []*sendRing
	if batched {
		for range workers {
			r, err := newSendRing(DefaultSendBatch)
			if err != nil {
				b.Skipf("no io_uring: %v", err)
			}
			defer r.close()
			rings = append(rings, r)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if i%256 == 255 {
			b.StopTimer()
			for _, fd := range readers {
				for {
					if n, _ := syscall.Read(fd, buf); n <= 0 {
						break
					}
				}
			}
			b.StartTimer()
		}
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				if batched {
					ringFanout(b, rings[w], writers, w, workers, frame)
					return
				}
				for j := w; j < n; j += workers {
					if _, err := syscall.Write(writers[j], frame); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/msg")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
}

// ringFanout sends frame to every stride-th descriptor of fds from
// first on, through r, in batches as large as the ring takes.
func ringFanout(b *testing.B, r *sendRing, fds []int, first, stride int, frame []byte) {
	sends := make([]ringSend, 0, r.capacity())
	for j := first; j < len(fds); j += stride {
		sends = append(sends, ringSend{p: frame, fd: int32(fds[j])})
		if len(sends) == cap(sends) || j+stride >= len(fds) {
			r.send(sends)
			for _, s := range sends {
				if s.res != int32(len(frame)) {
					b.Errorf("a send returned %d", s.res)
					return
				}
			}
			sends = sends[:0]
		}
	}
}

// rawListener is a loopback listening socket outside Go's poller, closed
// at the end of the benchmark, and its address.
func rawListener(b *testing.B) (int, syscall.Sockaddr) {
	b.Helper()
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = syscall.Close(lfd) })
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := syscall.Listen(lfd, 4096); err != nil {
		b.Fatal(err)
	}
	sa, err := syscall.Getsockname(lfd)
	if err != nil {
		b.Fatal(err)
	}
	return lfd, sa
}
