package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The parent side of a run: it plans the workers, starts them, publishes,
// measures the gateway from /proc, merges what the workers report and
// prints the results.

// workerCommand builds the command that runs one child worker. Tests
// replace it (a test binary cannot run "cometbench worker").
var workerCommand = func() (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to start workers: %w", err)
	}
	return exec.Command(exe, "worker"), nil
}

// workerHandle is the parent's end of one worker.
type workerHandle struct {
	id   int
	spec workerSpec
	in   io.WriteCloser
	enc  *json.Encoder
	pid  int          // a child's process id; 0 for a worker in this process
	kill func()       // ends a child at once (shutdown timeout)
	out  io.Reader    // its events
	wait func() error // waits for the worker to end, after out is exhausted
	mu   sync.Mutex   // guards in/enc
	sent bool         // stop was sent
}

func (h *workerHandle) send(c command) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.enc.Encode(c)
}

// workerEvent is an event tagged with its worker; exit is set on the last
// one, when the worker has ended (err is why, nil for a clean end).
type workerEvent struct {
	w    int
	ev   event
	exit bool
	err  error
}

type coordinator struct {
	o       *runOptions
	stdout  io.Writer
	stderr  io.Writer
	inProc  bool
	workers []*workerHandle
	events  chan workerEvent
	pumps   sync.WaitGroup
	exited  int
	http    *http.Client

	// tick aggregation: the largest latency any worker saw in each
	// second of a publishing step
	windowMax int64
	windows   []int64
	// opening progress per worker, from ticks
	progress map[int][2]int64
}

// plan decides how many worker processes hold the sessions. 0 means one
// worker inside this process.
func plan(o *runOptions) (procs int, err error) {
	// Children by default: the receivers' CPU then never delays the
	// publisher's schedule (the kernel shares the core between processes
	// more finely than Go's scheduler shares one thread between goroutines).
	procs = o.Procs
	if procs < 0 {
		procs = (o.Sessions + sessionsPerWorker - 1) / sessionsPerWorker
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("reading the open-files limit: %w", err)
	}
	per := o.Sessions
	if procs > 0 {
		per = (o.Sessions + procs - 1) / procs
	}
	if uint64(per+fdHeadroom) > lim.Max {
		need := (o.Sessions + int(lim.Max) - fdHeadroom - 1) / (int(lim.Max) - fdHeadroom)
		return 0, fmt.Errorf("%d sessions in one process need more than the %d open files a process may have here: use --procs %d or more",
			per, lim.Max, need)
	}
	if procs > o.Sessions {
		procs = o.Sessions
	}
	return procs, nil
}

// runBench is "cometbench run".
func runBench(ctx context.Context, o *runOptions, stdout, stderr io.Writer) (err error) {
	procs, err := plan(o)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, isFile := stderr.(*os.File); !isFile {
		// Child workers' stderr is copied here by os/exec goroutines, one
		// per child, while the parent writes its notes.
		stderr = &lockedWriter{w: stderr}
	}

	c := &coordinator{o: o, stdout: stdout, stderr: stderr, inProc: procs == 0,
		events: make(chan workerEvent, 256),
		http:   &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	defer c.http.CloseIdleConnections()

	var pub publisher
	if slices.ContainsFunc(o.Rates, func(r float64) bool { return r > 0 }) {
		switch o.Publish {
		case "nats":
			np, err := newNATSPublisher(o.NATSURL, o.SubjPrefix)
			if err != nil {
				return err
			}
			pub = np
		default:
			pub = newAPIPublisher(o.URLs[0].String(), o.APIKey, o.SrcIPs[0], o.APILanes)
		}
		defer pub.Close()
	}

	floor, err := c.measureFloor(ctx)
	if err != nil {
		return err
	}
	before, err := c.sampleGateway(ctx)
	if err != nil {
		return err
	}
	c.note("opening %d %s sessions on %d channel(s) at %.0f/s (%s)", o.Sessions, o.Transport, o.Channels, o.Ramp, c.procsText(procs))
	if err := c.startWorkers(ctx, procs); err != nil {
		c.shutdown()
		return err
	}
	defer func() {
		if serr := c.shutdown(); serr != nil && err == nil {
			err = serr
		}
	}()
	opened, failed, openErrs, openTook, err := c.waitReady(ctx)
	if err != nil {
		return err
	}
	var setupWarnings []string
	if failed > 0 {
		setupWarnings = append(setupWarnings, fmt.Sprintf("%d of %d sessions failed to open: %s", failed, o.Sessions, topReasons(openErrs, 3)))
	}
	if opened == 0 {
		return fmt.Errorf("no session could be opened: %s", topReasons(openErrs, 3))
	}
	c.note("%d sessions subscribed in %.1fs", opened, openTook.Seconds())
	if err := sleepCtx(ctx, o.Settle); err != nil {
		return err
	}
	ready, err := c.sampleGateway(ctx)
	if err != nil {
		return err
	}

	var published uint64
	var prev seqCounts
	var prevExpected uint64
	for step, rate := range o.Rates {
		res := c.newResult(step+1, rate, opened, failed, procs)
		res.Warnings = append(res.Warnings, setupWarnings...)
		setupWarnings = nil
		if len(o.PIDs) > 0 || len(o.MetricsURLs) > 0 {
			res.Gateway = memoryResult(before, ready, opened, len(o.PIDs) > 0)
		}
		benchCPU0 := c.benchCPU()
		gw0, err := c.sampleGateway(ctx)
		if err != nil {
			return err
		}
		t0 := time.Now()
		var ps publishStats
		if rate == 0 {
			c.note("holding %d idle sessions for %v", opened, o.Duration)
			if err := c.idle(ctx, o.Duration); err != nil {
				return err
			}
			ps.Elapsed = o.Duration
		} else {
			c.note("step %d: publishing %.0f msg/s for %v", step+1, rate, o.Duration)
			ps, err = c.publish(ctx, pub, published, rate)
			if err != nil {
				return err
			}
		}
		published += ps.Published
		steps, err := c.drainAll(ctx, step+1, published)
		if err != nil {
			return err
		}
		wall := time.Since(t0)
		gw1, err := c.sampleGateway(ctx)
		if err != nil {
			return err
		}
		benchCPU1 := c.benchCPU()

		hist, arrHist := newHistogram(), newHistogram()
		var counts seqCounts
		var expected uint64
		closed := map[string]int{}
		incomplete := 0
		var lastRecv int64
		for _, e := range steps {
			if e.Error != "" {
				return fmt.Errorf("worker %d: %s", e.Worker, e.Error)
			}
			for _, m := range []struct {
				h *histogram
				s *histSnapshot
			}{{hist, e.Hist}, {arrHist, e.ArrivalHist}} {
				if m.s != nil {
					if err := m.h.mergeSnapshot(*m.s); err != nil {
						return fmt.Errorf("worker %d: %w", e.Worker, err)
					}
				}
			}
			if e.Counts != nil {
				counts.add(*e.Counts)
			}
			expected += e.Expected
			incomplete += e.Incomplete
			lastRecv = max(lastRecv, e.LastRecv)
			for k, v := range e.Closed {
				closed[k] += v
			}
		}
		d := counts.sub(prev)
		prev = counts
		// Deliveries are rated over the time they took: from the step's
		// start to the last arrival (at least the publishing time).
		window := ps.Elapsed
		if lr := time.Unix(0, lastRecv).Sub(t0); rate > 0 && lastRecv > 0 && lr > window {
			window = lr
		}
		res.fill(ps, window, d, expected-prevExpected, hist, arrHist, closed)
		prevExpected = expected
		res.gatewayCPU(gw0, gw1, wall, d.Received)
		res.setFloor(floor)
		res.Gateway.addRuntime(gw1)
		res.Bench.CPUCores = (benchCPU1 - benchCPU0).Seconds() / wall.Seconds()
		res.Bench.CPUs = runtime.NumCPU()
		res.Bench.Procs = procs
		res.checkSaturation(c.windows, incomplete)
		c.windows = c.windows[:0]
		stop := o.MaxP99 > 0 && rate > 0 && time.Duration(hist.Quantile(0.99)) > o.MaxP99
		if (stop || step == len(o.Rates)-1) && res.FloorUs > 0 {
			// The floor again, after the last publishing step: the
			// gateway is idle again, its sessions open and quiet.
			after, err := c.measureFloor(ctx)
			if err != nil {
				return err
			}
			res.setFloorAfter(after)
		}
		res.print(stdout, o.JSON)
		if o.JSON {
			for _, w := range res.Warnings {
				c.note("WARNING: %s", w)
			}
		}
		if stop {
			c.note("p99 %v exceeds --max-p99 %v: stopping", time.Duration(hist.Quantile(0.99)).Round(time.Microsecond), o.MaxP99)
			break
		}
	}
	return nil
}

// measureFloor measures the loopback write floor (floor.go) when the run
// asks for it and has a publishing step; nil otherwise.
func (c *coordinator) measureFloor(ctx context.Context) (*floorResult, error) {
	if !c.o.Floor {
		return nil, nil
	}
	cpus, err := affinityOf(c.o.PIDs...)
	if err != nil {
		return nil, fmt.Errorf("the gateway's CPUs: %w", err)
	}
	fo, ok := planFloor(c.o, cpus)
	if !ok {
		return nil, nil
	}
	c.note("measuring the loopback write floor: %d-byte frames to %d connections, %.0f writes/s for at most %v",
		len(appendWSTextFrame(nil, make([]byte, fo.Packet))), fo.Conns, fo.Rate, fo.Duration)
	f, err := measureFloor(ctx, fo)
	if err != nil {
		return nil, fmt.Errorf("measuring the loopback write floor: %w", err)
	}
	c.note("%s", f.String())
	return &f, nil
}

func (c *coordinator) procsText(procs int) string {
	if procs == 0 {
		return "in this process"
	}
	return fmt.Sprintf("%d worker processes", procs)
}

// note prints a progress line on stderr.
func (c *coordinator) note(format string, a ...any) {
	fmt.Fprintf(c.stderr, "cometbench: "+format+"\n", a...)
}

// startWorkers splits the sessions over the workers and starts them.
func (c *coordinator) startWorkers(ctx context.Context, procs int) error {
	o := c.o
	n := max(procs, 1)
	urls := make([]string, len(o.URLs))
	for i, u := range o.URLs {
		urls[i] = u.String()
	}
	ips := make([]string, len(o.SrcIPs))
	for i, ip := range o.SrcIPs {
		ips[i] = ip.String()
	}
	first := 0
	for i := range n {
		count := o.Sessions / n
		if i < o.Sessions%n {
			count++
		}
		spec := workerSpec{ID: i, URLs: urls, Transport: o.Transport, First: first, Count: count,
			Channels: o.Channels, Prefix: o.Prefix, SrcIPs: ips, Ramp: o.Ramp / float64(n),
			ReadBuffer: o.ReadBuffer, OpenTimeout: o.OpenTimeout, Poll: o.Poll, Deflate: o.Deflate}
		first += count
		h, err := c.startWorker(ctx, spec)
		if err != nil {
			return fmt.Errorf("starting worker %d: %w", i, err)
		}
		c.workers = append(c.workers, h)
		c.pumps.Add(1)
		go c.pump(h)
		if err := h.sendSpec(spec); err != nil {
			return fmt.Errorf("worker %d: %w", i, err)
		}
	}
	return nil
}

func (h *workerHandle) sendSpec(spec workerSpec) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.enc.Encode(spec)
}

func (c *coordinator) startWorker(ctx context.Context, spec workerSpec) (*workerHandle, error) {
	h := &workerHandle{id: spec.ID, spec: spec}
	if c.inProc {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := runWorker(ctx, inR, outW)
			_ = outW.Close()
			_ = inR.Close()
			done <- err
		}()
		h.in, h.out = inW, outR
		h.wait = func() error { return <-done }
		h.kill = func() { _ = outR.Close() }
		h.enc = json.NewEncoder(inW)
		return h, nil
	}
	cmd, err := workerCommand()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = c.stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h.in, h.out, h.pid = in, out, cmd.Process.Pid
	h.wait = cmd.Wait
	h.kill = func() { _ = cmd.Process.Kill() }
	h.enc = json.NewEncoder(in)
	return h, nil
}

// pump forwards a worker's events until its output ends, then waits for
// it and sends the exit event.
func (c *coordinator) pump(h *workerHandle) {
	defer c.pumps.Done()
	sc := bufio.NewScanner(h.out)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20) // a step event carries a histogram
	var perr error
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			perr = fmt.Errorf("worker %d wrote %.100q: %w", h.id, sc.Bytes(), err)
			h.kill()
			break
		}
		c.events <- workerEvent{w: h.id, ev: e}
	}
	if perr == nil {
		perr = sc.Err()
	}
	if perr != nil {
		_, _ = io.Copy(io.Discard, h.out) // let the worker finish writing
	}
	werr := h.wait()
	c.events <- workerEvent{w: h.id, exit: true, err: errors.Join(perr, werr)}
}

// next returns the next event that is not a tick (ticks are folded into
// the window maxima here). A worker that ends early is an error.
func (c *coordinator) next(ctx context.Context, timeout <-chan time.Time) (event, error) {
	for {
		select {
		case we := <-c.events:
			if we.exit {
				c.exited++
				if we.err != nil {
					return event{}, fmt.Errorf("worker %d ended: %w", we.w, we.err)
				}
				return event{}, fmt.Errorf("worker %d ended early", we.w)
			}
			switch we.ev.Type {
			case "tick":
				c.windowMax = max(c.windowMax, we.ev.WindowMax)
				if c.progress == nil {
					c.progress = map[int][2]int64{}
				}
				c.progress[we.w] = [2]int64{we.ev.Subscribed, we.ev.Failing}
				continue
			case "fatal":
				return event{}, fmt.Errorf("worker %d: %s", we.w, we.ev.Error)
			}
			return we.ev, nil
		case <-timeout:
			return event{}, errTimeout
		case <-ctx.Done():
			return event{}, ctx.Err()
		}
	}
}

var errTimeout = errors.New("timed out")

// waitReady waits for every worker's ready event.
func (c *coordinator) waitReady(ctx context.Context) (opened, failed int, errs map[string]int, took time.Duration, err error) {
	start := time.Now()
	limit := time.Duration(float64(c.o.Sessions)/c.o.Ramp*float64(time.Second)) + c.o.OpenTimeout + 30*time.Second
	timeout := time.After(limit)
	errs = map[string]int{}
	for got := 0; got < len(c.workers); {
		e, err := c.next(ctx, timeout)
		if errors.Is(err, errTimeout) {
			var sub, fail int64
			for _, p := range c.progress {
				sub += p[0]
				fail += p[1]
			}
			return 0, 0, nil, 0, fmt.Errorf("sessions not open after %v: %d subscribed, %d failed, %d neither (%d of %d workers ready)",
				limit.Round(time.Second), sub, fail, int64(c.o.Sessions)-sub-fail, got, len(c.workers))
		}
		if err != nil {
			return 0, 0, nil, 0, err
		}
		if e.Type != "ready" {
			continue
		}
		got++
		opened += e.Opened
		failed += e.Failed
		for k, v := range e.Errors {
			errs[k] += v
		}
	}
	return opened, failed, errs, time.Since(start), nil
}

// idle holds the sessions for d, still watching the workers.
func (c *coordinator) idle(ctx context.Context, d time.Duration) error {
	timeout := time.After(d)
	for {
		_, err := c.next(ctx, timeout)
		if errors.Is(err, errTimeout) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// publish runs one publishing step while folding the workers' ticks into
// one-second windows.
func (c *coordinator) publish(ctx context.Context, pub publisher, k0 uint64, rate float64) (publishStats, error) {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan publishStats, 1)
	go func() {
		done <- publishStep(pctx, pub, c.o.Prefix, c.o.Channels, c.o.Payload, k0, rate, c.o.Duration)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	c.windowMax, c.windows = 0, c.windows[:0]
	for {
		select {
		case ps := <-done:
			return ps, nil
		case <-tick.C:
			c.windows = append(c.windows, c.windowMax)
			c.windowMax = 0
		case we := <-c.events:
			var err error
			switch {
			case we.exit:
				c.exited++
				err = fmt.Errorf("worker %d ended during the step: %v", we.w, we.err)
			case we.ev.Type == "fatal":
				err = fmt.Errorf("worker %d: %s", we.w, we.ev.Error)
			case we.ev.Type == "tick":
				c.windowMax = max(c.windowMax, we.ev.WindowMax)
			}
			if err != nil {
				cancel()
				<-done
				return publishStats{}, err
			}
		}
	}
}

// drainAll asks every worker to finish a step and collects the answers.
func (c *coordinator) drainAll(ctx context.Context, step int, published uint64) ([]event, error) {
	for _, h := range c.workers {
		if err := h.send(command{Cmd: "drain", Step: step, Published: published, Timeout: c.o.Drain}); err != nil {
			return nil, fmt.Errorf("worker %d: %w", h.id, err)
		}
	}
	limit := c.o.Drain + 30*time.Second
	timeout := time.After(limit)
	var out []event
	for len(out) < len(c.workers) {
		e, err := c.next(ctx, timeout)
		if errors.Is(err, errTimeout) {
			return nil, fmt.Errorf("workers did not report step %d within %v", step, limit)
		}
		if err != nil {
			return nil, err
		}
		if e.Type == "step" && e.Step == step {
			out = append(out, e)
		}
	}
	return out, nil
}

// shutdown stops the workers and waits for them (killing children that
// do not end within 30 s).
func (c *coordinator) shutdown() error {
	for _, h := range c.workers {
		h.mu.Lock()
		if !h.sent {
			h.sent = true
			_ = h.enc.Encode(command{Cmd: "stop"})
			_ = h.in.Close()
		}
		h.mu.Unlock()
	}
	var errs []error
	timeout := time.After(30 * time.Second)
	killed := false
	for c.exited < len(c.workers) {
		select {
		case we := <-c.events:
			if we.exit {
				c.exited++
				if we.err != nil && !killed {
					errs = append(errs, fmt.Errorf("worker %d: %w", we.w, we.err))
				}
			}
		case <-timeout:
			killed = true
			for _, h := range c.workers {
				h.kill()
			}
			timeout = nil
		}
	}
	c.pumps.Wait()
	return errors.Join(errs...)
}

// gwSample is one reading of the gateway processes (summed over --pid).
type gwSample struct {
	cpu time.Duration
	mem procMem
	rt  goRuntime
}

// addProcs adds the CPU time and memory of the processes pids (the
// gateway nodes' --pid) to s.
func (s *gwSample) addProcs(pids []int) error {
	for _, pid := range pids {
		cpu, err := readProcCPU("/proc", pid)
		if err != nil {
			return fmt.Errorf("--pid %d: %w", pid, err)
		}
		mem, err := readProcMem("/proc", pid)
		if err != nil {
			return fmt.Errorf("--pid %d: %w", pid, err)
		}
		s.cpu += cpu.Total()
		s.mem.PSS += mem.PSS
		s.mem.RSS += mem.RSS
	}
	return nil
}

func (c *coordinator) sampleGateway(ctx context.Context) (gwSample, error) {
	s := gwSample{rt: goRuntime{Goroutines: -1, HeapInuse: -1, StackInuse: -1}}
	if err := s.addProcs(c.o.PIDs); err != nil {
		return s, err
	}
	for i, u := range c.o.MetricsURLs {
		rt, err := scrapeMetrics(ctx, c.http, u)
		if err != nil {
			return s, fmt.Errorf("--metrics-url: %w", err)
		}
		if i == 0 {
			s.rt = rt
			continue
		}
		s.rt.Goroutines = addKnown(s.rt.Goroutines, rt.Goroutines)
		s.rt.HeapInuse = addKnown(s.rt.HeapInuse, rt.HeapInuse)
		s.rt.StackInuse = addKnown(s.rt.StackInuse, rt.StackInuse)
	}
	return s, nil
}

func addKnown(a, b int64) int64 {
	if a < 0 || b < 0 {
		return -1
	}
	return a + b
}

// benchCPU is the CPU time of this process and its worker children.
func (c *coordinator) benchCPU() time.Duration {
	var total time.Duration
	pids := []int{os.Getpid()}
	for _, h := range c.workers {
		if h.pid > 0 {
			pids = append(pids, h.pid)
		}
	}
	for _, pid := range pids {
		if cpu, err := readProcCPU("/proc", pid); err == nil {
			total += cpu.Total()
		}
	}
	return total
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// topReasons formats the n most frequent reasons.
func topReasons(m map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || (all[i].v == all[j].v && all[i].k < all[j].k) })
	var parts []string
	for i, e := range all {
		if i == n {
			parts = append(parts, fmt.Sprintf("(%d more reasons)", len(all)-n))
			break
		}
		parts = append(parts, fmt.Sprintf("%d× %s", e.v, e.k))
	}
	return strings.Join(parts, "; ")
}
