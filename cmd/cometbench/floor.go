package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/gateway"
)

// The loopback write floor: what one small write(2) of a delivery's frame
// to a loopback TCP connection costs in CPU on this machine, measured in
// the same run and with the same CPU placement as the gateway. A gateway
// that gives each delivery a write of its own cannot spend less per
// delivery than this, whatever language it is written in; everything above
// it is the gateway's own overhead. So the fan-out results print the
// gateway's CPU per delivery as a ratio to the floor, a number that means
// the same on a fast machine and a slow one, on a quiet machine and a busy
// one (the floor moves with them), where microseconds alone do not.
//
// What makes the comparison fair, and why it is measured this way:
//
//   - The writer is a child process ("cometbench floor-writer"), not a
//     goroutine here: it must run where the gateway runs, on the gateway's
//     CPU set (sched_getaffinity of --pid), while the reader runs where
//     this process and its workers run. Writer and reader on different
//     cores is what the gateway's deliveries pay (a wake-up of a reader on
//     another core, cache lines that travel), and ~3× cheaper when both
//     share a core; a floor measured with another placement would not be
//     the gateway's floor. The child pins every one of its threads to the
//     gateway's CPUs and sets GOMAXPROCS to their number.
//   - It writes the way a C server does at the least: one write(2) per
//     delivery, a raw system call on a non-blocking socket that is in no
//     epoll set (no Go runtime around the call, no readiness
//     notifications), retried after poll(2) only if the socket buffer is
//     full. TCP_NODELAY is set, as the gateway sets it.
//   - It writes in the fan-out's pattern: for each message, one frame to
//     each of K connections in turn (K = the sessions, at most
//     floorMaxConns), at the scenario's deliveries per second (those of
//     its first publishing step: rate × sessions / channels) or as fast as
//     it can when that is more than one writer can do, for a bounded time
//     and number of writes. The frame is the size of the WebSocket frame the gateway
//     sends for the scenario's payload (gateway.EncodeMessage's packet
//     with a 4-digit seq, uncompressed), so the copy is the same too.
//   - K is the sessions, not a sample of them, so that each connection is
//     written as often as a session is: how often one connection is
//     written changes what a write costs (the kernel's per-connection
//     work is shared by fewer writes, and ten thousand sockets do not
//     stay in the caches). Measured on 2026-12-05 at fanout-10k-10's
//     100,000 writes a second, after the warm-up below: 5.4–5.6 µs per
//     write on 1,000 connections, 5.7–6.1 on the scenario's 10,000. The
//     bound is what one process may hold (the reader here, the writer in
//     the child), as for the load generator's workers.
//   - Each connection first gets floorWarmup frames that are not counted,
//     past the receiver's quick-ACK start (see floorWarmup). Without it,
//     at 10,000 connections and 20 counted writes each, the floor was
//     8.3–9.3 µs per write, most of its writes in that start.
//   - Only the writes are counted: the writer reads its thread's CPU clock
//     around each burst of writes, so the sleeps between messages and the
//     Go runtime's own threads are not in the floor (the gateway pays its
//     wake-ups, and they are part of its overhead). That clock and the
//     gateway's utime+stime are the same kernel accounting of a task's
//     run time, so kernel work done on the writer's behalf (the loopback
//     delivery into the reader's socket) counts the same way in both.
//   - The reader reads like the load generator's sessions: one epoll loop
//     that reads each ready connection once into a shared buffer (or, with
//     --epoll=false, a goroutine per connection), and discards the bytes.
//     How promptly the reader drains decides how often the writer wakes
//     it, which is part of a write's cost.
//   - It runs before the sessions are opened: the gateway is then idle
//     (it would be between steps too, but its sessions' timers would
//     still run on its core), and no worker process shares the reader's
//     core yet. A failure ends the run before the long part.
//   - It runs again after the last publishing step (the gateway idle
//     again, its sessions open and quiet, the workers waiting), and that
//     step's result also gives the ratio to the mean of the two floors
//     and warns when they lie more than floorDrift apart. On a shared VM
//     the floor moved by up to 1.5× between consecutive runs (6.1 to 9.3
//     µs per write at 10,000 connections on 2026-12-05, third sitting),
//     more than the gateway's own CPU per delivery moved: one floor
//     taken before the steps could make a run's ratio anything from 0.8
//     to 1.5. Two floors on both sides of the steps bracket the machine's
//     speed while the steps ran, and their distance says how far the
//     ratio can be trusted.
//
// The floor is a property of the machine and the placement, not of the
// transport: for SSE and the polling transports it is the same small write,
// only the gateway's framing differs.

// Bounds of the floor measurement.
const (
	// floorWarmup is how many frames each connection gets before the
	// writes that count. A TCP receiver acknowledges the first segments
	// of a connection at once (quick-ACK mode, 16 segments on Linux),
	// each acknowledgement processed on the writer's core for loopback,
	// and only then delays its acknowledgements; the gateway's sessions
	// have had their first messages by the time a step is long, so the
	// floor is measured past them too. At fanout-10k-10's pattern a floor
	// without the warm-up spent 16 of each connection's 20 writes in that
	// mode.
	floorWarmup = 20

	floorMaxConns  = sessionsPerWorker
	floorMaxWrites = 250_000 // ~1.5 s of CPU at 6 µs a write
	floorMinRate   = 100     // writes per second, so that a slow scenario still gives enough writes
)

// floorWriterCommand builds the command that runs the writer child with
// args. Tests replace it (a test binary cannot run "cometbench
// floor-writer").
var floorWriterCommand = func(args []string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to start the floor writer: %w", err)
	}
	return exec.Command(exe, append([]string{"floor-writer"}, args...)...), nil
}

// floorOptions is one floor measurement, as the parent plans it.
type floorOptions struct {
	Conns      int           // connections, one write each per message
	Packet     int           // bytes of the packet inside each frame
	Rate       float64       // writes per second over all connections
	Duration   time.Duration // longest writing time
	MaxWrites  int
	WriterCPUs []int // where the writer runs: the gateway's CPUs
	Epoll      bool  // read like --epoll (else a goroutine per connection)
	ReadBuffer int   // the goroutine readers' buffer
}

// floorReport is the writer's one line on its standard output.
type floorReport struct {
	Writes uint64 `json:"writes"` // frames written and counted, each whole
	// Warmup is the frames written to each connection before the counted
	// ones (floorWarmup).
	Warmup uint64 `json:"warmup"`
	Bytes  uint64 `json:"bytes"` // every byte written, the warm-up's too
	Conns  int    `json:"conns"`
	Frame  int    `json:"frame"` // bytes per frame, header included
	// CPUNs is the writer thread's CPU time over the bursts of writes.
	CPUNs int64 `json:"cpu_ns"`
	// ProcessCPUNs is the whole writer process's CPU time from the first
	// write to the last, sleeps and runtime threads included (for
	// reference; the floor is CPUNs).
	ProcessCPUNs int64  `json:"process_cpu_ns"`
	WallNs       int64  `json:"wall_ns"`
	Full         uint64 `json:"full"` // writes that found the socket buffer full
	CPUs         []int  `json:"cpus"` // the union of its threads' CPU sets after the writes
}

// writtenBytes is what the report's writes come to: the counted frames
// and every connection's warm-up. The writer reports it, and the parent
// checks the report against it.
func (r *floorReport) writtenBytes() uint64 {
	return (r.Writes + r.Warmup*uint64(r.Conns)) * uint64(r.Frame)
}

// floorResult is a measured floor.
type floorResult struct {
	floorReport
	ReaderCPUs []int
	Received   uint64
}

// PerWriteUs is the floor: writer CPU per write, µs.
func (f *floorResult) PerWriteUs() float64 {
	return float64(f.CPUNs) / float64(f.Writes) / 1e3
}

// roundedUs is PerWriteUs to the nanosecond, as results carry it.
func (f *floorResult) roundedUs() float64 {
	return math.Round(f.PerWriteUs()*1000) / 1000
}

func (f *floorResult) String() string {
	return fmt.Sprintf("loopback write floor: %.2f µs per write (%d writes of %d B on %d connections, writer on CPUs %v, reader on CPUs %v)",
		f.PerWriteUs(), f.Writes, f.Frame, f.Conns, f.CPUs, f.ReaderCPUs)
}

// floorPacketLen is the size of the msg packet the gateway sends a
// WebSocket session for one of the bench's messages of the given payload
// size on channel ch: encoded by the gateway's own encoder, with a
// 4-digit session seq and no history cursor.
func floorPacketLen(payload int, ch string) int {
	data := newPayloadBuilder(payload).Append(nil, 1, time.Now().UnixNano())
	body := gateway.EncodeMessage(brokers.Message{Channel: ch, Data: data}, ch, time.Time{})
	return gateway.NewPacket(1000, body).JSONLen()
}

// appendWSTextFrame appends an unmasked text frame of payload (a server's
// frame: what the gateway writes).
func appendWSTextFrame(dst, payload []byte) []byte {
	n := len(payload)
	dst = append(dst, 0x81)
	switch {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = append(dst, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, payload...)
}

// planFloor derives the floor measurement from a run's options and the
// gateway's CPUs. ok is false when the run has no publishing step (there
// is then no CPU per delivery to compare).
func planFloor(o *runOptions, writerCPUs []int) (fo floorOptions, ok bool) {
	var rate float64
	for _, r := range o.Rates {
		if r > 0 {
			rate = r
			break
		}
	}
	if rate == 0 {
		return fo, false
	}
	ch := o.Prefix + ".0"
	// Deliveries per second: every message goes to the sessions of its
	// channel, sessions/channels of them.
	deliveries := rate * float64(o.Sessions) / float64(o.Channels)
	return floorOptions{
		Conns:      min(o.Sessions, floorMaxConns),
		Packet:     floorPacketLen(max(o.Payload, minPayload), ch),
		Rate:       max(deliveries, floorMinRate),
		Duration:   o.FloorTime,
		MaxWrites:  floorMaxWrites,
		WriterCPUs: writerCPUs,
		Epoll:      o.Poll,
		ReadBuffer: o.ReadBuffer,
	}, true
}

// cpuList lists the CPUs of a set.
func cpuList(s *unix.CPUSet) []int {
	var out []int
	for i := range 8 * int(unsafe.Sizeof(*s)) {
		if s.IsSet(i) {
			out = append(out, i)
		}
	}
	return out
}

func cpuSetOf(cpus []int) *unix.CPUSet {
	var s unix.CPUSet
	for _, c := range cpus {
		s.Set(c)
	}
	return &s
}

// affinityOf is the union of the CPU sets of the processes pids (0: this
// process's calling thread, which shares the process's set unless someone
// pinned it alone).
func affinityOf(pids ...int) ([]int, error) {
	var union unix.CPUSet
	for _, pid := range pids {
		var s unix.CPUSet
		if err := unix.SchedGetaffinity(pid, &s); err != nil {
			return nil, fmt.Errorf("sched_getaffinity(%d): %w", pid, err)
		}
		for _, c := range cpuList(&s) {
			union.Set(c)
		}
	}
	return cpuList(&union), nil
}

func formatCPUs(cpus []int) string {
	parts := make([]string, len(cpus))
	for i, c := range cpus {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}

func parseCPUs(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		c, err := strconv.Atoi(f)
		if err != nil || c < 0 || c >= 8*int(unsafe.Sizeof(unix.CPUSet{})) {
			return nil, fmt.Errorf("%q is not a CPU number", f)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no CPU")
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// measureFloor runs one floor measurement: it listens on loopback, starts
// the writer child, reads what it writes, and checks that every byte the
// writer says it wrote arrived.
func measureFloor(ctx context.Context, fo floorOptions) (res floorResult, err error) {
	readerCPUs, err := affinityOf(0)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, fo.Duration+30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer ln.Close()
	args := []string{"--addr", ln.Addr().String(), "--conns", strconv.Itoa(fo.Conns),
		"--packet", strconv.Itoa(fo.Packet), "--rate", strconv.FormatFloat(fo.Rate, 'f', -1, 64),
		"--duration", fo.Duration.String(), "--max-writes", strconv.Itoa(fo.MaxWrites),
		"--cpus", formatCPUs(fo.WriterCPUs)}
	cmd, err := floorWriterCommand(args)
	if err != nil {
		return res, err
	}
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("starting the floor writer: %w", err)
	}
	// The child's owner: it reads the child's output to the end, waits for
	// it, and closes exited; measureFloor waits for exited on every path.
	var out []byte
	var waitErr error
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		out, _ = io.ReadAll(io.LimitReader(stdout, 64<<10))
		_, _ = io.Copy(io.Discard, stdout)
		waitErr = cmd.Wait()
	}()
	childErr := func(what string, err error) error {
		return fmt.Errorf("floor writer: %s: %w (%s)", what, err, strings.TrimSpace(stderr.String()))
	}
	defer func() {
		_ = stdin.Close()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	// Accepting ends when the child has connected, ends, or the run is
	// canceled: the watcher closes the listener then.
	acceptDone := make(chan struct{})
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		select {
		case <-ctx.Done():
		case <-exited:
		case <-acceptDone:
			return
		}
		_ = ln.Close()
	}()
	conns := make([]net.Conn, 0, fo.Conns)
	for len(conns) < fo.Conns {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	close(acceptDone)
	watch.Wait()
	rd := newFloorReader(conns, fo)
	defer rd.close()
	if len(conns) < fo.Conns {
		_ = cmd.Process.Kill()
		<-exited
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if waitErr == nil {
			waitErr = errors.New("it ended first")
		}
		return res, childErr(fmt.Sprintf("%d of %d connections arrived", len(conns), fo.Conns), waitErr)
	}
	if err := rd.start(); err != nil {
		return res, err
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		return res, childErr("sending go", err)
	}
	select {
	case <-exited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		return res, fmt.Errorf("floor writer: %w", ctx.Err())
	}
	if waitErr != nil {
		return res, childErr("exited", waitErr)
	}
	rep, err := parseFloorReport(out, fo)
	if err != nil {
		return res, childErr("its report", err)
	}
	// The child closed its sockets when it ended: the readers see EOF once
	// they have read everything.
	received, err := rd.wait(10 * time.Second)
	if err != nil {
		return res, err
	}
	if received != rep.Bytes {
		return res, fmt.Errorf("floor writer said it wrote %d bytes, the reader received %d", rep.Bytes, received)
	}
	return floorResult{floorReport: rep, ReaderCPUs: readerCPUs, Received: received}, nil
}

// parseFloorReport reads the writer's output and checks it against what
// was asked.
func parseFloorReport(out []byte, fo floorOptions) (floorReport, error) {
	var rep floorReport
	line := bytes.TrimSpace(out)
	if len(line) == 0 {
		return rep, errors.New("no report on its standard output")
	}
	if bytes.ContainsRune(line, '\n') {
		return rep, fmt.Errorf("more than one line: %.200q", line)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		return rep, fmt.Errorf("%.200q: %w", line, err)
	}
	wantFrame := len(appendWSTextFrame(nil, make([]byte, fo.Packet)))
	switch {
	case rep.Writes == 0 || rep.CPUNs <= 0:
		return rep, fmt.Errorf("%d writes in %d ns of CPU: nothing to divide", rep.Writes, rep.CPUNs)
	case rep.Writes > uint64(fo.MaxWrites):
		return rep, fmt.Errorf("%d writes, more than the %d asked", rep.Writes, fo.MaxWrites)
	case rep.Conns != fo.Conns:
		return rep, fmt.Errorf("%d connections, %d asked", rep.Conns, fo.Conns)
	case rep.Frame != wantFrame:
		return rep, fmt.Errorf("frames of %d bytes, %d asked", rep.Frame, wantFrame)
	case rep.Bytes != rep.writtenBytes():
		return rep, fmt.Errorf("%d bytes for %d writes of %d after %d per connection", rep.Bytes, rep.Writes, rep.Frame, rep.Warmup)
	case !slices.Equal(rep.CPUs, fo.WriterCPUs):
		return rep, fmt.Errorf("the writer ran on CPUs %v, not the gateway's %v", rep.CPUs, fo.WriterCPUs)
	}
	return rep, nil
}

// floorRatioText is what a fan-out result adds to the gateway's CPU per
// delivery: its ratio to the floor.
func floorRatioText(perDeliveryUs, floorUs float64) string {
	if floorUs <= 0 || perDeliveryUs <= 0 {
		return ""
	}
	return fmt.Sprintf(" = %.2f × floor (floor %.2f µs per write, same placement)", perDeliveryUs/floorUs, floorUs)
}

// floorRatio rounds the ratio for the JSON result.
func floorRatio(perDeliveryUs, floorUs float64) float64 {
	if floorUs <= 0 || perDeliveryUs <= 0 {
		return 0
	}
	return math.Round(perDeliveryUs/floorUs*1000) / 1000
}

// floorReader reads the floor connections the way the sessions are read,
// counting the bytes: with the sessions' poller (poll.go), or a goroutine
// per connection as with --epoll=false. It alone closes them, after its
// readers have ended.
type floorReader struct {
	conns    []net.Conn
	fo       floorOptions
	received atomic.Uint64
	poller   *poller       // with fo.Epoll
	open     atomic.Int64  // connections the poller has not seen end
	failed   atomic.Value  // the poller's error, if waiting failed
	ended    chan struct{} // closed when every connection ended
	wg       sync.WaitGroup
	done     chan struct{} // closed when the readers returned
	started  bool
}

func newFloorReader(conns []net.Conn, fo floorOptions) *floorReader {
	return &floorReader{conns: conns, fo: fo, ended: make(chan struct{}), done: make(chan struct{})}
}

// byteCounter is the floor connections' parser: it counts what is read.
type byteCounter struct{ n *atomic.Uint64 }

func (c byteCounter) Feed(b []byte, _ func([]byte)) error {
	c.n.Add(uint64(len(b)))
	return nil
}

func (r *floorReader) start() error {
	// The sessions' poller asks for receive timestamps (poll.go), which
	// makes the kernel read the clock for every packet it receives, on
	// the writer's core for loopback: the floor's connections ask too, so
	// that the floor's writes pay it as the gateway's do. The poller asks
	// as it takes a connection (add); for the goroutine readers it is
	// asked here.
	if r.fo.Epoll {
		p, err := newPoller(r)
		if err != nil {
			return fmt.Errorf("floor reader: %w", err)
		}
		r.open.Store(int64(len(r.conns)))
		for _, c := range r.conns {
			fd, err := detachFD(c) // the poller holds it from now on
			if err == nil {
				if err = p.add(&polledConn{fd: fd, parser: byteCounter{&r.received}}); err != nil {
					_ = syscall.Close(fd)
				}
			}
			if err != nil {
				p.stop()
				p.run() // closes what it holds, and its epoll set
				return fmt.Errorf("floor reader: %w", err)
			}
		}
		if len(r.conns) == 0 {
			close(r.ended)
		}
		r.poller = p
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			p.run()
		}()
	} else {
		for _, c := range r.conns {
			fd, err := connFD(c)
			if err == nil {
				err = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
			}
			if err != nil {
				return fmt.Errorf("floor reader: SO_TIMESTAMPNS: %w", err)
			}
		}
		for _, c := range r.conns {
			r.wg.Add(1)
			go r.readConn(c)
		}
	}
	r.started = true
	go func() {
		r.wg.Wait()
		if !r.fo.Epoll { // every goroutine reader returned: every connection ended
			close(r.ended)
		}
		close(r.done)
	}()
	return nil
}

// connEnded, connStopped and pollFailed are the reader's side of its
// poller (pollOwner): a floor connection ends when the writer closes it.
func (r *floorReader) connEnded(*polledConn, error) {
	if r.open.Add(-1) == 0 {
		close(r.ended)
	}
}

func (r *floorReader) connStopped(*polledConn) {}

func (r *floorReader) pollFailed(err error) { r.failed.Store(err) }

func (r *floorReader) readConn(c net.Conn) {
	defer r.wg.Done()
	buf := make([]byte, r.fo.ReadBuffer)
	for {
		n, err := c.Read(buf)
		r.received.Add(uint64(n))
		if err != nil {
			return
		}
	}
}

// wait waits up to timeout for every connection to end and returns the
// bytes read.
func (r *floorReader) wait(timeout time.Duration) (uint64, error) {
	select {
	case <-r.ended:
		return r.received.Load(), nil
	case <-r.done:
		select {
		case <-r.ended: // the goroutine readers' end is both
			return r.received.Load(), nil
		default: // the poller stopped: waiting failed
		}
		if err, _ := r.failed.Load().(error); err != nil {
			return 0, fmt.Errorf("floor reader: %w", err)
		}
		return 0, errors.New("floor reader: stopped before the connections ended")
	case <-time.After(timeout):
		return 0, fmt.Errorf("floor reader: the connections did not end within %v of the writer", timeout)
	}
}

// close stops the readers, waits for them, and closes the connections.
func (r *floorReader) close() {
	if r.poller != nil {
		r.poller.stop()
	}
	if r.started && !r.fo.Epoll {
		// Goroutine readers end when their connection is closed.
		for _, c := range r.conns {
			_ = c.SetReadDeadline(time.Now())
		}
	}
	if r.started {
		<-r.done
	}
	for _, c := range r.conns {
		_ = abortClose(c)
	}
}

// limitedBuffer keeps the first 4 KiB written to it (a child's stderr).
type limitedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := 4096 - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runFloorWriter is "cometbench floor-writer", the child of measureFloor:
// it pins itself, connects, waits for "go" on stdin, writes, and prints
// its floorReport.
func runFloorWriter(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("floor-writer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "loopback address to connect to")
	conns := fs.Int("conns", 1, "connections")
	packet := fs.Int("packet", 100, "bytes of the packet in each WebSocket frame")
	rate := fs.Float64("rate", 1000, "writes per second over all connections")
	duration := fs.Duration("duration", 2*time.Second, "longest writing time")
	maxWrites := fs.Int("max-writes", floorMaxWrites, "most writes")
	cpus := fs.String("cpus", "", "CPUs to run on, comma-separated")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	ap, err := netip.ParseAddrPort(*addr)
	var errs []error
	if err != nil || !ap.Addr().Is4() || !ap.Addr().IsLoopback() {
		errs = append(errs, fmt.Errorf("--addr %q: must be a loopback IPv4 address and port", *addr))
	}
	if *conns < 1 || *conns > floorMaxConns {
		errs = append(errs, fmt.Errorf("--conns %d: must be 1..%d", *conns, floorMaxConns))
	}
	if *packet < 1 || *packet > maxPayload+4096 {
		errs = append(errs, fmt.Errorf("--packet %d: must be 1..%d", *packet, maxPayload+4096))
	}
	if !(*rate > 0 && *rate <= 10*maxRate) {
		errs = append(errs, fmt.Errorf("--rate %v: must be > 0", *rate))
	}
	if *duration <= 0 || *duration > time.Minute {
		errs = append(errs, fmt.Errorf("--duration %v: must be > 0 and at most 1m", *duration))
	}
	if *maxWrites < 1 || *maxWrites > 10*floorMaxWrites {
		errs = append(errs, fmt.Errorf("--max-writes %d: must be 1..%d", *maxWrites, 10*floorMaxWrites))
	}
	set, err := parseCPUs(*cpus)
	if err != nil {
		errs = append(errs, fmt.Errorf("--cpus: %w", err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := pinProcess(set); err != nil {
		return err
	}
	runtime.GOMAXPROCS(len(set))
	// One thread does every write, as one event loop of a C server would.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	fds := make([]int, 0, *conns)
	defer func() {
		for _, fd := range fds {
			_ = syscall.Close(fd)
		}
	}()
	sa := &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	for range *conns {
		fd, err := dialRaw(sa)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "go" {
		return fmt.Errorf("waiting for go on standard input: %q %v", line, err)
	}
	rep, err := writeFloor(ctx, fds, appendWSTextFrame(nil, bytes.Repeat([]byte{'x'}, *packet)), *rate, *duration, *maxWrites)
	if err != nil {
		return err
	}
	// Where every thread was allowed to run, after the writes: the parent
	// checks that it is the gateway's set.
	if rep.CPUs, err = threadsAffinity(); err != nil {
		return err
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// pinProcess sets the CPU affinity of every thread of this process (a new
// thread inherits its creator's, so threads created afterwards are pinned
// too). A thread the runtime starts while the list is read is caught by the
// next pass.
func pinProcess(cpus []int) error {
	want := cpuSetOf(cpus)
	for range 10 {
		tids, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("listing this process's threads: %w", err)
		}
		changed := false
		for _, t := range tids {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			var s unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &s); err != nil {
				continue // the thread has ended
			}
			if s == *want {
				continue
			}
			if err := unix.SchedSetaffinity(tid, want); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("sched_setaffinity(%d, %v): %w", tid, cpus, err)
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("could not pin every thread to CPUs %v", cpus)
}

// threadsAffinity is the union of the CPU sets of this process's threads.
func threadsAffinity() ([]int, error) {
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing this process's threads: %w", err)
	}
	var pids []int
	for _, t := range tids {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			pids = append(pids, tid)
		}
	}
	return affinityOf(pids...)
}

// dialRaw connects a non-blocking TCP socket with TCP_NODELAY, outside Go's
// netpoller.
func dialRaw(sa *syscall.SockaddrInet4) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := syscall.Connect(fd, sa); err != nil {
		_ = syscall.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
		_ = syscall.Close(fd)
		return -1, fmt.Errorf("TCP_NODELAY: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		_ = syscall.Close(fd)
		return -1, fmt.Errorf("O_NONBLOCK: %w", err)
	}
	return fd, nil
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

func processCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// writeFloor writes frame to each of fds in turn, one burst per message,
// at rate writes per second, until duration or maxWrites. The caller has
// locked its thread.
func writeFloor(ctx context.Context, fds []int, frame []byte, rate float64, duration time.Duration, maxWrites int) (floorReport, error) {
	rep := floorReport{Conns: len(fds), Frame: len(frame), Warmup: floorWarmup}
	for range floorWarmup {
		for _, fd := range fds {
			if _, err := writeFull(fd, frame); err != nil {
				return rep, err
			}
		}
	}
	every := time.Duration(float64(len(fds)) / rate * float64(time.Second))
	start := time.Now()
	proc0 := processCPU()
	next := start
	var cpu time.Duration
	for int(rep.Writes) < maxWrites && time.Since(start) < duration {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		// Behind schedule, the next burst starts at once: the writer then
		// writes as fast as it can.
		next = next.Add(every)
		c0 := threadCPU()
		for _, fd := range fds {
			full, err := writeFull(fd, frame)
			if err != nil {
				return rep, err
			}
			if full {
				rep.Full++
			}
			rep.Writes++
			if int(rep.Writes) == maxWrites {
				break
			}
		}
		cpu += threadCPU() - c0
	}
	rep.WallNs = int64(time.Since(start))
	rep.ProcessCPUNs = int64(processCPU() - proc0)
	rep.CPUNs = int64(cpu)
	rep.Bytes = rep.writtenBytes()
	return rep, nil
}

// writeFull writes b to the non-blocking socket fd: one raw write(2) (no
// Go runtime around it), and only if the socket buffer is full, a wait in
// poll(2) and the rest. full says whether that happened.
func writeFull(fd int, b []byte) (full bool, err error) {
	for len(b) > 0 {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch errno {
		case 0:
			b = b[n:]
			continue
		case syscall.EAGAIN:
			full = true
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 1000); err != nil && !errors.Is(err, syscall.EINTR) {
				return full, fmt.Errorf("poll: %w", err)
			}
		case syscall.EINTR:
		default:
			return full, fmt.Errorf("write: %w", errno)
		}
	}
	return full, nil
}
