package main

// "cometbench tcp": the gateway's TCP bridge (GET /tcp/{name}, a WebSocket
// whose frames carry a TCP connection's bytes) against a direct TCP
// connection to the same echo server, so the bridge's numbers have a
// hardware limit to be read against.
//
// For every connection count, workload and mode one row runs for
// --duration: the connections are opened first, then all start together,
// then they stop together and drain. Every byte sent is one of a
// connection's own pseudo-random stream (each connection starts at its own
// offset of one shared pattern), so the echo is checked to be identical
// and in order with a memcmp per chunk, cheap enough not to be what is
// measured.
//
// The echo server runs in this process (or --target-addr names one): both
// modes pay the same for it, on the load generator's core. In direct mode
// that core also carries the kernel's loopback work for both ends, which is
// what "the hardware limit" of one core is here; in bridge mode the
// gateway's core carries its half.

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gobwas/ws"
)

// tcpOptions are the flags of "cometbench tcp".
type tcpOptions struct {
	URL          *url.URL // the gateway; nil when no bridge row runs
	Target       string   // the bridge target's name
	TargetListen string   // where the in-process echo server listens
	TargetAddr   string   // an echo server already running, instead of the in-process one
	Conns        []int
	Workloads    []string // in the order rows run: bulk, rtt, idle
	Modes        []string // in the order rows run: direct, bridge
	Duration     time.Duration
	Drain        time.Duration
	OpenTimeout  time.Duration
	Size         int // bulk: bytes per write
	MsgSize      int // rtt: bytes per message
	PIDs         []int
	JSON         bool
	Label        string
}

// Bounds of "cometbench tcp".
const (
	// Each connection holds two files in this process (its own end and the
	// in-process echo server's), and two in the gateway: 5,000 keep both
	// processes well under their 20,000.
	maxTCPConns    = 5000
	maxTCPDuration = 10 * time.Minute
	maxTCPSize     = 1 << 20
	maxTCPMsgSize  = 64 << 10
	// openParallel bounds the connections being opened at once.
	openParallel = 64
	// echoBufferSize is the echo server's buffer per connection, and the
	// bulk workload's read buffer per connection.
	echoBufferSize = 32 << 10
	// The bulk workload's bytes in flight (sent, not yet back) are bounded
	// per connection, by the window. Unbounded, the kernel's loopback
	// buffers (autotuned up to tcp_rmem's 32 MiB per socket here) fill
	// until the whole machine's TCP memory is under pressure, and a few
	// hundred connections then crawl at kilobytes per second: that would
	// measure the kernel's memory accounting, not a path. The row's budget
	// is shared by its connections, each getting at most maxBulkWindow (a
	// loopback round trip is tens of microseconds: far more than enough
	// to keep a connection busy) and at least two writes.
	bulkInFlightBudget = 128 << 20
	maxBulkWindow      = 4 << 20
	maxBulkInFlight    = 256 << 20 // the two writes per connection, at most
)

// bulkWindow is the window of one of conns bulk connections.
func bulkWindow(conns, size int) int {
	return max(2*size, min(maxBulkWindow, bulkInFlightBudget/conns))
}

const (
	modeDirect    = "direct"
	modeBridge    = "bridge"
	workloadBulk  = "bulk"
	workloadRTT   = "rtt"
	workloadIdle  = "idle"
	defaultTarget = "bench"
)

// targetNameRE is a bridge target name, as the gateway's configuration
// accepts it; it becomes one URL path segment (so not "." or "..").
var targetNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func parseTCPFlags(args []string, stderr io.Writer) (*tcpOptions, error) {
	fs := flag.NewFlagSet("tcp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "http://127.0.0.1:8080", "gateway base URL (loopback only); the bridge rows use ws://HOST:PORT/tcp/TARGET")
	target := fs.String("target", defaultTarget, "the gateway's bridge target (bridge.targets[].name); its address must be the echo server's")
	listen := fs.String("target-listen", "127.0.0.1:7001", "address of the in-process echo server (loopback only)")
	addr := fs.String("target-addr", "", "use this echo server, already running (loopback only), instead of the in-process one")
	conns := fs.String("conns", "1,10,100", fmt.Sprintf("connection counts, comma-separated: one set of rows each (1..%d)", maxTCPConns))
	workloads := fs.String("workload", "bulk,rtt", "bulk: each connection streams --size writes and reads the echo (MB/s one way); rtt: --msg-size ping-pong (round trips/s, latency); idle: one --msg-size round trip, then silence for --duration (the gateway's memory per idle connection)")
	modes := fs.String("mode", "direct,bridge", "direct: TCP to the echo server; bridge: through the gateway's /tcp/TARGET")
	duration := fs.Duration("duration", 5*time.Second, "measuring time per row")
	drain := fs.Duration("drain", 10*time.Second, "after a row, longest wait for the last echoes; what is missing then counts as an error")
	openTimeout := fs.Duration("open-timeout", 10*time.Second, "longest time to open one connection (bridge: dial and WebSocket handshake)")
	size := fs.Int("size", 16<<10, "bulk: bytes per write (one WebSocket frame in bridge mode)")
	msgSize := fs.Int("msg-size", 64, "rtt: bytes per message")
	pids := fs.String("pid", "", "gateway process id(s), comma-separated: measure their CPU and memory from /proc")
	jsonOut := fs.Bool("json", false, "print one JSON line per row instead of the table")
	label := fs.String("label", "", "a name for this run, copied into the output")
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("tcp: unexpected argument %q", fs.Arg(0))
	}
	o := &tcpOptions{Target: *target, TargetListen: *listen, TargetAddr: *addr, Duration: *duration,
		Drain: *drain, OpenTimeout: *openTimeout, Size: *size, MsgSize: *msgSize, JSON: *jsonOut, Label: *label}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	o.Modes = pickNames(*modes, []string{modeDirect, modeBridge}, "--mode", bad)
	o.Workloads = pickNames(*workloads, []string{workloadBulk, workloadRTT, workloadIdle}, "--workload", bad)
	if slices.Contains(o.Modes, modeBridge) {
		u, err := parseGatewayURL(*rawURL)
		if err != nil {
			bad("--url %s", err)
		}
		o.URL = u
		if !targetNameRE.MatchString(o.Target) || strings.Trim(o.Target, ".") == "" {
			bad("--target %q: a bridge target name is 1 to 64 characters of [A-Za-z0-9._-]", o.Target)
		}
	}
	listenSet := false
	fs.Visit(func(f *flag.Flag) { listenSet = listenSet || f.Name == "target-listen" })
	if o.TargetAddr != "" {
		if listenSet {
			bad("--target-addr and --target-listen: give one (an existing echo server, or where to start one)")
		}
		if err := checkLoopbackAddr(o.TargetAddr, false); err != nil {
			bad("--target-addr %s", err)
		}
	} else if err := checkLoopbackAddr(o.TargetListen, true); err != nil {
		bad("--target-listen %s", err)
	}
	for _, c := range splitList(*conns) {
		v, err := strconv.Atoi(c)
		if err != nil || v < 1 || v > maxTCPConns {
			bad("--conns %q: each count must be 1..%d", c, maxTCPConns)
			continue
		}
		o.Conns = append(o.Conns, v)
	}
	if len(o.Conns) == 0 {
		bad("--conns: at least one connection count is required")
	}
	if o.Duration <= 0 || o.Duration > maxTCPDuration {
		bad("--duration %v: must be > 0 and at most %v", o.Duration, maxTCPDuration)
	}
	if o.Drain <= 0 || o.Drain > 5*time.Minute {
		bad("--drain %v: must be > 0 and at most 5m", o.Drain)
	}
	if o.OpenTimeout <= 0 || o.OpenTimeout > 5*time.Minute {
		bad("--open-timeout %v: must be > 0 and at most 5m", o.OpenTimeout)
	}
	if o.Size < 1 || o.Size > maxTCPSize {
		bad("--size %d: must be 1..%d", o.Size, maxTCPSize)
	}
	if slices.Contains(o.Workloads, workloadBulk) && o.Size >= 1 && o.Size <= maxTCPSize {
		for _, c := range o.Conns {
			if inFlight := 2 * o.Size * c; inFlight > maxBulkInFlight {
				bad("--size %d with --conns %d: bulk would keep %d MiB in flight (two writes per connection), at most %d MiB",
					o.Size, c, inFlight>>20, maxBulkInFlight>>20)
			}
		}
	}
	if o.MsgSize < 1 || o.MsgSize > maxTCPMsgSize {
		bad("--msg-size %d: must be 1..%d", o.MsgSize, maxTCPMsgSize)
	}
	for _, p := range splitList(*pids) {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 {
			bad("--pid %q: not a process id", p)
			continue
		}
		o.PIDs = append(o.PIDs, v)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return o, nil
}

// pickNames parses a comma-separated subset of known and returns it in
// known's order, which is the order the rows run in.
func pickNames(list string, known []string, flagName string, bad func(string, ...any)) []string {
	given := splitList(list)
	for _, g := range given {
		if !slices.Contains(known, g) {
			bad("%s %q: not one of %s", flagName, g, strings.Join(known, ", "))
		}
	}
	var out []string
	for _, k := range known {
		if slices.Contains(given, k) {
			out = append(out, k)
		}
	}
	if len(out) == 0 && len(given) == 0 {
		bad("%s: at least one of %s is required", flagName, strings.Join(known, ", "))
	}
	return out
}

// checkLoopbackAddr accepts HOST:PORT with a loopback host; port 0 (any
// free port) only for a listener.
func checkLoopbackAddr(addr string, listener bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 || (p == 0 && !listener) {
		return fmt.Errorf("%q: bad port %q", addr, port)
	}
	if err := checkLoopbackHost(host); err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	return nil
}

// tcpResult is one row: a JSON line of --json, a line of the table.
type tcpResult struct {
	Label    string `json:"label,omitempty"`
	Mode     string `json:"mode"`
	Workload string `json:"workload"`
	Conns    int    `json:"conns"`
	Opened   int    `json:"opened"`
	Size     int    `json:"size"`
	// Window bounds a bulk connection's bytes sent and not yet back.
	Window    int     `json:"window,omitempty"`
	DurationS float64 `json:"duration_s"`
	// Bytes were echoed back, and checked, within the measured window.
	Bytes    uint64  `json:"bytes"`
	MBPerSec float64 `json:"mb_per_s"` // 10^6 bytes, one way
	// RoundTrips were completed within the measured window.
	RoundTrips uint64     `json:"round_trips"`
	RTTPerSec  float64    `json:"round_trips_per_s"`
	Latency    *latencyMs `json:"latency_ms,omitempty"`
	// Verified counts every byte whose echo came back identical and in
	// order, the drain included.
	Verified uint64 `json:"verified_bytes"`
	Sent     uint64 `json:"sent_bytes"`
	// Errors counts the connections that failed to open or whose echo was
	// wrong, short or cut; a row with errors does not measure anything.
	Errors       int         `json:"errors"`
	ErrorReasons string      `json:"error_reasons,omitempty"`
	Ratio        float64     `json:"bridge_over_direct,omitempty"`
	Gateway      *tcpGateway `json:"gateway,omitempty"`
	Bench        benchResult `json:"bench"`
	Warnings     []string    `json:"warnings,omitempty"`
}

// tcpGateway is what the row cost the gateway process(es) (--pid), over
// the measured window.
type tcpGateway struct {
	CPUSeconds float64 `json:"cpu_s"`
	CPUCores   float64 `json:"cpu_cores"`
	// CPUPerMB is CPU milliseconds per MB echoed (which crossed the bridge
	// once each way); equal to nanoseconds per byte.
	CPUPerMB float64 `json:"cpu_ms_per_mb,omitempty"`
	// CPUPerRoundTrip is CPU microseconds per round trip.
	CPUPerRoundTrip float64 `json:"cpu_us_per_round_trip,omitempty"`
	// PSSBefore is read before the row's connections open, PSSLoaded at
	// the end of the measured window; PSSPerConn is the growth per
	// connection, rough (the heap grows and shrinks with collections).
	PSSBefore  int64   `json:"pss_before"`
	PSSLoaded  int64   `json:"pss_loaded"`
	PSSPerConn float64 `json:"pss_per_conn"`
}

// rate is the row's headline number: MB/s or round trips/s.
func (r *tcpResult) rate() float64 {
	if r.Workload == workloadBulk {
		return r.MBPerSec
	}
	return r.RTTPerSec
}

// runTCP is "cometbench tcp".
func runTCP(ctx context.Context, o *tcpOptions, stdout, stderr io.Writer) (err error) {
	b := &tcpBench{o: o, stderr: stderr, pattern: newEchoPattern(), targetAddr: o.TargetAddr}
	if o.TargetAddr == "" {
		echo, err := startEchoTarget(o.TargetListen)
		if err != nil {
			return fmt.Errorf("echo server: %w", err)
		}
		defer echo.Close()
		b.echo, b.targetAddr = echo, echo.Addr()
	}
	where := "in-process"
	if b.echo == nil {
		where = "--target-addr"
	}
	b.note("echo server %s (%s)", b.targetAddr, where)

	var results []*tcpResult
	defer func() {
		if !o.JSON && len(results) > 0 {
			printTCPTable(stdout, b.title(), results)
		}
		failed := 0
		for _, r := range results {
			if r.Errors > 0 {
				failed++
			}
		}
		if err == nil && failed > 0 {
			err = fmt.Errorf("%d of %d rows had errors (the echo was wrong, short or cut, or connections failed): their numbers do not count", failed, len(results))
		}
	}()
	for _, n := range o.Conns {
		for _, w := range o.Workloads {
			var direct *tcpResult
			for _, m := range o.Modes {
				r, err := b.runRow(ctx, m, w, n)
				if err != nil {
					return err
				}
				switch {
				case m == modeDirect:
					direct = r
				case direct != nil && direct.rate() > 0:
					r.Ratio = r.rate() / direct.rate()
				}
				results = append(results, r)
				b.note("%s", r.summary())
				if o.JSON {
					line, _ := json.Marshal(r)
					fmt.Fprintf(stdout, "%s\n", line)
					for _, wn := range r.Warnings {
						b.note("WARNING: %s", wn)
					}
				}
			}
		}
	}
	return nil
}

// tcpBench runs the rows of one "cometbench tcp".
type tcpBench struct {
	o          *tcpOptions
	stderr     io.Writer
	pattern    echoPattern
	echo       *echoTarget // nil with --target-addr
	targetAddr string
}

func (b *tcpBench) note(format string, a ...any) {
	fmt.Fprintf(b.stderr, "cometbench: "+format+"\n", a...)
}

func (b *tcpBench) bridgeURL() string {
	if b.o.URL == nil {
		return ""
	}
	return "ws://" + hostPort(b.o.URL) + "/tcp/" + b.o.Target
}

func (b *tcpBench) title() string {
	t := fmt.Sprintf("TCP echo, direct and through the bridge: echo server %s", b.targetAddr)
	if b.o.URL != nil {
		t += ", bridge " + b.bridgeURL()
	}
	t += fmt.Sprintf("; %v per row; direct rows run both ends and the echo on this process's CPU(s); bulk: writes of %d B, at most min(%d MiB, %d MiB / conns) in flight per connection"+
		" (two writes at least); rtt: messages of %d B; MB/s = 10^6 bytes/s one way",
		b.o.Duration, b.o.Size, maxBulkWindow>>20, bulkInFlightBudget>>20, b.o.MsgSize)
	if b.o.Label != "" {
		t = b.o.Label + ": " + t
	}
	return t
}

// rowState is what the connections of one row share.
type rowState struct {
	workload string
	size     int
	window   uint64 // bulk
	pattern  echoPattern
	// stop ends the measured window: writers write no more. stopped is
	// closed then too, for the idle connections waiting for it.
	stop    atomic.Bool
	stopped chan struct{}
	// expired is set when the drain time is over, before the connections
	// are closed under the goroutines still waiting for their echo.
	expired atomic.Bool
	// bytes and trips count what came back, checked, for the rates.
	bytes atomic.Uint64
	trips atomic.Uint64
	hist  *histogram // round-trip times, ns
}

// runRow opens conns connections in one mode, runs the workload on all of
// them for --duration, drains and closes them.
func (b *tcpBench) runRow(ctx context.Context, mode, workload string, conns int) (*tcpResult, error) {
	o := b.o
	size := o.Size
	if workload != workloadBulk {
		size = o.MsgSize
	}
	r := &tcpResult{Label: o.Label, Mode: mode, Workload: workload, Conns: conns, Size: size,
		DurationS: o.Duration.Seconds()}
	// The gateway's memory before the connections; its CPU is read
	// around the measured window only, without the connections' set-up.
	gwBefore, err := b.sampleGateway()
	if err != nil {
		return nil, err
	}
	var accepted0 int64
	if b.echo != nil {
		accepted0 = b.echo.accepted.Load()
	}
	readBuf := echoBufferSize
	if workload != workloadBulk {
		readBuf = max(4096, size)
	}
	opened, openErrs := b.open(ctx, mode, conns, readBuf)
	defer func() {
		for _, c := range opened {
			if c != nil {
				c.close(false)
			}
		}
	}()
	if len(opened) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: no connection could be opened: %s", mode, topReasons(openErrs, 3))
	}
	r.Opened = len(opened)

	row := &rowState{workload: workload, size: size, pattern: b.pattern, hist: newHistogram(), stopped: make(chan struct{})}
	if workload == workloadBulk {
		r.Window = bulkWindow(conns, size)
		row.window = uint64(r.Window)
	}
	streams := make([]*echoStream, len(opened))
	var wg sync.WaitGroup
	for i, c := range opened {
		// Streams start at offsets far apart, so bytes of one connection
		// cannot pass for another's.
		s := &echoStream{conn: c, row: row, start: uint64(i) * 104_729 % patternPeriod}
		streams[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run()
		}()
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()

	gw0, gwErr := b.sampleGateway()
	self0 := selfCPU()
	t0 := time.Now()
	timer := time.NewTimer(o.Duration)
	var ctxErr error
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		ctxErr = ctx.Err()
	}
	row.stop.Store(true)
	close(row.stopped)
	window := time.Since(t0)
	r.Bytes, r.RoundTrips = row.bytes.Load(), row.trips.Load()
	gw1, gwErr1 := b.sampleGateway()
	self1 := selfCPU()

	// Drain: the connections finish their last echo, within --drain.
	drain := time.NewTimer(o.Drain)
	defer drain.Stop()
	select {
	case <-finished:
	case <-drain.C:
		row.expired.Store(true)
	case <-ctx.Done():
		row.expired.Store(true)
		ctxErr = ctx.Err()
	}
	if row.expired.Load() {
		for _, c := range opened {
			c.close(false)
		}
		<-finished
	} else {
		for _, c := range opened {
			c.close(true)
		}
	}
	opened = nil
	if ctxErr != nil {
		return nil, ctxErr
	}
	if err := errors.Join(gwErr, gwErr1); err != nil {
		return nil, err
	}

	reasons := map[string]int{}
	for k, v := range openErrs {
		reasons[k] += v
		r.Errors += v
	}
	for _, s := range streams {
		r.Verified += s.received.Load()
		r.Sent += s.written.Load()
		if err := s.err(); err != nil {
			r.Errors++
			reasons[err.Error()]++
		}
	}
	if r.Errors > 0 {
		r.ErrorReasons = topReasons(reasons, 3)
	}
	secs := window.Seconds()
	switch workload {
	case workloadBulk:
		r.MBPerSec = float64(r.Bytes) / 1e6 / secs
	case workloadRTT:
		r.RTTPerSec = float64(r.RoundTrips) / secs
		h := row.hist
		r.Latency = &latencyMs{P50: ms(h.Quantile(0.5)), P90: ms(h.Quantile(0.9)), P99: ms(h.Quantile(0.99)),
			P999: ms(h.Quantile(0.999)), Max: ms(h.Max()), Mean: h.Mean() / 1e6}
	}
	if len(o.PIDs) > 0 {
		g := &tcpGateway{CPUSeconds: (gw1.cpu - gw0.cpu).Seconds(), PSSBefore: gwBefore.mem.PSS, PSSLoaded: gw1.mem.PSS}
		g.CPUCores = g.CPUSeconds / secs
		g.PSSPerConn = float64(gw1.mem.PSS-gwBefore.mem.PSS) / float64(r.Opened)
		if r.Bytes > 0 {
			g.CPUPerMB = g.CPUSeconds * 1e3 / (float64(r.Bytes) / 1e6)
		}
		if r.RoundTrips > 0 && workload == workloadRTT {
			g.CPUPerRoundTrip = g.CPUSeconds * 1e6 / float64(r.RoundTrips)
		}
		r.Gateway = g
	}
	r.Bench = benchResult{CPUCores: (self1 - self0).Seconds() / secs, CPUs: runtime.NumCPU()}
	b.checkRow(r, accepted0)
	return r, nil
}

// checkRow adds the warnings that say a row's number is not what it seems.
func (b *tcpBench) checkRow(r *tcpResult, accepted0 int64) {
	warn := func(format string, a ...any) { r.Warnings = append(r.Warnings, fmt.Sprintf(format, a...)) }
	// A direct row that fills the load generator's CPUs is the point: they
	// carry both ends and the echo, that is the limit being measured. A
	// bridge row that does measures the load generator, not the gateway.
	if r.Mode == modeBridge && r.Bench.CPUs > 0 && r.Bench.CPUCores >= 0.85*float64(r.Bench.CPUs) {
		warn("load generator saturated: it used %.2f of its %d CPU(s) (the echo server included); this row measures it, not the gateway",
			r.Bench.CPUCores, r.Bench.CPUs)
	}
	if g := r.Gateway; g != nil && r.Mode == modeBridge && g.CPUCores >= 0.9 {
		warn("gateway saturated: it used %.2f cores", g.CPUCores)
	}
	if b.echo != nil && r.Mode == modeBridge {
		// The gateway dials its target for every bridge connection; if this
		// echo server did not see them, the bytes came back from elsewhere.
		if got := b.echo.accepted.Load() - accepted0; got < int64(r.Opened) {
			warn("the echo server accepted %d connections for %d bridge connections: is bridge target %q's address %s?",
				got, r.Opened, b.o.Target, b.targetAddr)
		}
	}
	if r.Errors > 0 {
		warn("%d of %d connections had errors: %s", r.Errors, r.Conns, r.ErrorReasons)
	}
}

func (r *tcpResult) summary() string {
	s := fmt.Sprintf("%s × %d %s: ", r.Mode, r.Conns, r.Workload)
	switch {
	case r.Workload == workloadBulk:
		s += fmt.Sprintf("%.1f MB/s", r.MBPerSec)
	case r.Latency != nil:
		s += fmt.Sprintf("%.0f round trips/s, p50 %.3f ms, p99 %.3f ms", r.RTTPerSec, r.Latency.P50, r.Latency.P99)
	case r.Gateway != nil:
		s += fmt.Sprintf("%d connections idle, gateway %.1f KiB per connection", r.Opened, r.Gateway.PSSPerConn/1024)
	default:
		s += fmt.Sprintf("%d connections idle", r.Opened)
	}
	if r.Ratio > 0 {
		s += fmt.Sprintf(" (%.2f× direct)", r.Ratio)
	}
	if r.Errors > 0 {
		s += fmt.Sprintf(", %d ERRORS", r.Errors)
	}
	return s
}

// open opens n connections, openParallel at a time. The result holds the
// connections that opened; openErrs counts the failures by reason.
func (b *tcpBench) open(ctx context.Context, mode string, n, readBuf int) (opened []echoConn, openErrs map[string]int) {
	conns := make([]echoConn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, openParallel)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			octx, cancel := context.WithTimeout(ctx, b.o.OpenTimeout)
			defer cancel()
			if mode == modeDirect {
				conns[i], errs[i] = dialDirect(octx, b.targetAddr, readBuf)
			} else {
				conns[i], errs[i] = dialBridge(octx, b.o.URL, b.o.Target, readBuf)
			}
		}()
	}
	wg.Wait()
	openErrs = map[string]int{}
	for i, c := range conns {
		if errs[i] != nil {
			openErrs[errs[i].Error()]++
			continue
		}
		opened = append(opened, c)
	}
	return opened, openErrs
}

// echoStream is one connection's run. Its goroutines (the caller of run,
// and in bulk a writer) own it until run returns; err, written and
// received are read after that.
type echoStream struct {
	conn  echoConn
	row   *rowState
	start uint64 // the stream's first byte is pattern position start

	written  atomic.Uint64
	received atomic.Uint64 // bytes echoed back and checked
	// writerDone says written is final. An atomic rather than a channel:
	// the writer and the reader each store one and load the other, and
	// only sequentially consistent atomics promise that one of them sees
	// the other's store (see bulkWriter).
	writerDone atomic.Bool
	// credit wakes a bulk writer waiting for the window to open: the
	// reader leaves a token after each read. readerDone is closed when the
	// reader returns, so that a waiting writer does not wait for ever.
	credit     chan struct{}
	readerDone chan struct{}

	// readErr is set by the reader (in rtt, the one goroutine), writeErr by
	// the bulk writer; the reader's is the better reason when both failed.
	readErr, writeErr error
	writeFailed       atomic.Bool
}

// err is why the connection failed, nil if it did not. It is read after
// the stream's goroutines have finished.
func (s *echoStream) err() error {
	if s.readErr != nil {
		return s.readErr
	}
	return s.writeErr
}

func (s *echoStream) run() {
	switch s.row.workload {
	case workloadRTT:
		s.roundTrips()
		return
	case workloadIdle:
		// One round trip (so the connection has carried bytes both
		// ways, as a real one has), then nothing until the window ends.
		if s.roundTrip(0) {
			<-s.row.stopped
		}
		return
	}
	s.credit, s.readerDone = make(chan struct{}, 1), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.bulkWriter()
	}()
	s.bulkReader()
	close(s.readerDone)
	wg.Wait()
}

// bulkWriter writes --size chunks of the stream until the measured
// window ends, never more than the row's window ahead of the echo.
func (s *echoStream) bulkWriter() {
	size := s.row.size
	var w uint64
	var failed bool
writing:
	for !s.row.stop.Load() {
		for w+uint64(size)-s.received.Load() > s.row.window {
			select {
			case <-s.credit:
			case <-s.readerDone:
				break writing // the reader failed; its error stands
			}
		}
		if err := s.conn.write(s.row.pattern.at(s.start+w, size)); err != nil {
			s.writeErr = fmt.Errorf("write: %w", err)
			s.writeFailed.Store(true)
			failed = true
			break
		}
		w += uint64(size)
		s.written.Store(w)
	}
	s.writerDone.Store(true)
	// If the reader has everything already it may be blocked in a read
	// that nothing will answer: wake it. Otherwise it stops by itself once
	// the rest arrives, since it loads writerDone after each read: it
	// stored received before, and of two sequentially consistent
	// store-then-load pairs at least one sees the other's store.
	if failed || s.received.Load() == w {
		s.conn.wake()
	}
}

// bulkReader reads and checks the echo until it has all that was written.
func (s *echoStream) bulkReader() {
	var got uint64
	for {
		if s.writerDone.Load() && got == s.written.Load() {
			return
		}
		p, err := s.conn.read()
		if len(p) > 0 {
			if !s.row.pattern.check(s.start+got, p) {
				s.readErr = errEchoDiffers
				s.conn.close(false) // unblocks the writer
				return
			}
			got += uint64(len(p))
			s.received.Store(got)
			s.row.bytes.Add(uint64(len(p)))
			select {
			case s.credit <- struct{}{}:
			default: // a token is waiting already
			}
		}
		if err != nil {
			if s.writerDone.Load() && got == s.written.Load() {
				return // woken by the writer, with nothing missing
			}
			if s.writeFailed.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return // woken by the writer, which failed: its error stands
			}
			s.readErr = s.readError(err)
			s.conn.close(false)
			return
		}
	}
}

// roundTrips sends one --msg-size message at a time and waits for its
// echo, until the window ends.
func (s *echoStream) roundTrips() {
	for pos := uint64(0); !s.row.stop.Load(); pos += uint64(s.row.size) {
		if !s.roundTrip(pos) {
			return
		}
	}
}

// roundTrip sends the message at stream position pos and waits for its
// echo, checked; false (readErr set) when that failed.
func (s *echoStream) roundTrip(pos uint64) bool {
	size := s.row.size
	t0 := time.Now()
	if err := s.conn.write(s.row.pattern.at(s.start+pos, size)); err != nil {
		s.readErr = fmt.Errorf("write: %w", err)
		return false
	}
	s.written.Store(pos + uint64(size))
	for got := 0; got < size; {
		p, err := s.conn.read()
		if len(p) > 0 {
			if got+len(p) > size {
				s.readErr = fmt.Errorf("echo longer than the message (%d bytes)", size)
				return false
			}
			if !s.row.pattern.check(s.start+pos+uint64(got), p) {
				s.readErr = errEchoDiffers
				return false
			}
			got += len(p)
			s.received.Store(pos + uint64(got))
		}
		if err != nil {
			s.readErr = s.readError(err)
			return false
		}
	}
	s.row.hist.Record(int64(time.Since(t0)))
	s.row.trips.Add(1)
	s.row.bytes.Add(uint64(size))
	return true
}

// errEchoDiffers is a mismatch. The reasons of a row's connections are
// counted together, so they name no offsets.
var errEchoDiffers = errors.New("echo differs from what was sent (wrong bytes, or out of order)")

// readError names why a read failed (writes are stopped by the window, a
// failed read ends the connection).
func (s *echoStream) readError(err error) error {
	if s.row.expired.Load() {
		return errors.New("echo incomplete when the drain time was over")
	}
	if errors.Is(err, io.EOF) {
		return errors.New("the other end closed the connection")
	}
	if errors.Is(err, syscall.ECONNRESET) {
		return errors.New("the other end closed the connection (reset)")
	}
	var closed *wsClosedError
	if errors.As(err, &closed) {
		return fmt.Errorf("the gateway closed the bridge: %d %s", closed.code, closed.reason)
	}
	return fmt.Errorf("read: %w", err)
}

// The pattern: every connection's stream is the endless repetition of one
// pseudo-random period of patternPeriod bytes, from its own offset.
// patternPeriod is no power of two, so no --size divides it and a chunk
// echoed twice, dropped or swapped never lines up with the right bytes.
const patternPeriod = 1<<20 + 7

// echoPattern is one period followed by its first maxTCPSize bytes again,
// so that any chunk of up to maxTCPSize bytes is one contiguous slice.
type echoPattern []byte

func newEchoPattern() echoPattern {
	p := make(echoPattern, patternPeriod+maxTCPSize)
	rng := rand.New(rand.NewPCG(0x636f6d65, 0x74626e63))
	for i := 0; i+8 <= patternPeriod; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
	}
	for i := patternPeriod &^ 7; i < patternPeriod; i++ {
		p[i] = byte(rng.Uint32())
	}
	copy(p[patternPeriod:], p[:maxTCPSize])
	return p
}

// at is the stream's n bytes from position pos; n <= maxTCPSize.
func (p echoPattern) at(pos uint64, n int) []byte {
	off := int(pos % patternPeriod)
	return p[off : off+n]
}

// check reports whether b is the stream's bytes from position pos.
func (p echoPattern) check(pos uint64, b []byte) bool {
	for len(b) > 0 {
		off := int(pos % patternPeriod)
		n := min(len(b), len(p)-off)
		if !bytes.Equal(b[:n], p[off:off+n]) {
			return false
		}
		b = b[n:]
		pos += uint64(n)
	}
	return true
}

// echoConn is one connection to the echo server, direct or through the
// bridge. write is called by one goroutine and read by one (maybe the
// same); wake and close may be called from any goroutine.
type echoConn interface {
	// write sends p; in bridge mode as one binary frame.
	write(p []byte) error
	// read returns the next bytes of the echo, valid until the next call.
	read() ([]byte, error)
	// wake makes a read blocked now return (with a timeout error).
	wake()
	// close ends the connection, politely (a WebSocket close frame first)
	// or not; only the first call counts.
	close(polite bool)
}

// directConn is a TCP connection to the echo server.
type directConn struct {
	c    net.Conn
	buf  []byte
	once sync.Once
}

func dialDirect(ctx context.Context, addr string, readBuf int) (*directConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &directConn{c: c, buf: make([]byte, readBuf)}, nil
}

func (d *directConn) write(p []byte) error {
	_, err := d.c.Write(p)
	return err
}

func (d *directConn) read() ([]byte, error) {
	n, err := d.c.Read(d.buf)
	return d.buf[:n], err
}

func (d *directConn) wake() { _ = d.c.SetReadDeadline(time.Now()) }

func (d *directConn) close(bool) { d.once.Do(func() { _ = abortClose(d.c) }) }

// bridgeConn is a WebSocket to the gateway's /tcp/{name}. Frames are read
// by client_ws.go's wsStream, which answers pings itself: the writes go
// through one lock.
type bridgeConn struct {
	raw  net.Conn
	out  *serialConn
	in   *wsStream
	key  [4]byte
	wbuf []byte
	once sync.Once
}

func dialBridge(ctx context.Context, base *url.URL, target string, readBuf int) (*bridgeConn, error) {
	u := *base
	u.Scheme = "ws"
	u.Path = "/tcp/" + target
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", hostPort(base))
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	var status string
	wd := ws.Dialer{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		OnStatusError: func(code int, reason []byte, resp io.Reader) {
			// resp is the whole response from its status line on, on a
			// connection kept alive: only its Content-Length says where the
			// body ends, so a refusal is reported at once, not at the
			// open timeout.
			status = fmt.Sprintf("%d %s", code, reason)
			res, err := http.ReadResponse(bufio.NewReader(resp), nil)
			if err != nil {
				return
			}
			body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
			_ = res.Body.Close()
			if b := bytes.TrimSpace(body); len(b) > 0 {
				status += ": " + string(b)
			}
		},
	}
	br, _, err := wd.Upgrade(raw, &u)
	if err != nil {
		_ = abortClose(raw)
		if status != "" {
			return nil, fmt.Errorf("GET %s: %s", u.Path, status)
		}
		return nil, fmt.Errorf("GET %s: websocket handshake: %w", u.Path, err)
	}
	_ = raw.SetDeadline(time.Time{})
	out := &serialConn{Conn: raw}
	var rd io.Reader = raw
	var pre *bytes.Reader
	if br != nil {
		// Frames that came with the handshake response are read first.
		left, _ := br.Peek(br.Buffered())
		pre = bytes.NewReader(append([]byte(nil), left...))
		rd = io.MultiReader(pre, raw)
		ws.PutReader(br)
	}
	c := &bridgeConn{raw: raw, out: out, in: &wsStream{conn: out, pre: pre, r: bufio.NewReaderSize(rd, readBuf)}}
	if _, err := crand.Read(c.key[:]); err != nil {
		_ = abortClose(raw)
		return nil, err
	}
	return c, nil
}

// write sends p as one masked binary frame. The key is random per
// connection, as a browser's would be (per frame): the gateway unmasks
// every byte either way, and the load generator's copy stays cheap.
func (c *bridgeConn) write(p []byte) error {
	c.wbuf = appendMaskedFrame(c.wbuf[:0], ws.OpBinary, p, c.key)
	_, err := c.out.Write(c.wbuf)
	return err
}

func (c *bridgeConn) read() ([]byte, error) { return c.in.Next() }

func (c *bridgeConn) wake() { _ = c.raw.SetReadDeadline(time.Now()) }

func (c *bridgeConn) close(polite bool) {
	c.once.Do(func() {
		if polite {
			// Nothing else writes any more, so the lock is free.
			_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
			_ = writeClientFrame(c.out, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		}
		_ = abortClose(c.raw)
	})
}

// serialConn serialises writes to a connection: the bulk writer's frames
// and the reader's pongs must not interleave.
type serialConn struct {
	net.Conn
	mu sync.Mutex
}

func (s *serialConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Conn.Write(p)
}

// SetWriteDeadline is ignored: writeClientFrame sets one for each pong,
// which would then cut the bulk writer's frames ten seconds later. A row
// bounds its writes by closing the connection when the drain time is over.
func (s *serialConn) SetWriteDeadline(time.Time) error { return nil }

// appendMaskedFrame appends one final client frame carrying p, masked with
// key, to dst.
func appendMaskedFrame(dst []byte, op ws.OpCode, p []byte, key [4]byte) []byte {
	dst = append(dst, 0x80|byte(op))
	switch n := len(p); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, p...)
	ws.Cipher(dst[start:], key, 0)
	return dst
}

// echoTarget is the in-process TCP echo server: every byte read from a
// connection is written back to it, until the peer closes, from one
// buffer per connection (so it pushes back as the bridge does: it reads
// no more until the echo is written).
type echoTarget struct {
	ln       net.Listener
	accepted atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	wg        sync.WaitGroup // the accept loop and one per connection
	closeOnce sync.Once
}

func startEchoTarget(addr string) (*echoTarget, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	e := &echoTarget{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.acceptLoop()
	return e, nil
}

// Addr is the address the echo server listens on.
func (e *echoTarget) Addr() string { return e.ln.Addr().String() }

func (e *echoTarget) acceptLoop() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of files, most likely: the connections being closed
			// will free some.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			_ = abortClose(c)
			return
		}
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		e.accepted.Add(1)
		go e.serve(c)
	}
}

func (e *echoTarget) serve(c net.Conn) {
	defer e.wg.Done()
	// Not io.Copy(c, c): that splices through a pipe, two more files per
	// connection while it runs, which 5,000 connections cannot afford.
	buf := make([]byte, echoBufferSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	_ = c.Close()
}

// Close stops the server, resets its connections and waits for its
// goroutines. It may be called more than once.
func (e *echoTarget) Close() error {
	var err error
	e.closeOnce.Do(func() {
		err = e.ln.Close()
		e.mu.Lock()
		e.closed = true
		for c := range e.conns {
			_ = abortClose(c)
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return err
}

// sampleGateway reads the --pid processes' CPU and memory, summed.
func (b *tcpBench) sampleGateway() (gwSample, error) {
	var s gwSample
	err := s.addProcs(b.o.PIDs)
	return s, err
}

// selfCPU is this process's CPU time (the in-process echo server's
// included).
func selfCPU() time.Duration {
	cpu, err := readProcCPU("/proc", os.Getpid())
	if err != nil {
		return 0
	}
	return cpu.Total()
}

// printTCPTable prints the rows as one table, then their warnings.
func printTCPTable(w io.Writer, title string, rows []*tcpResult) {
	fmt.Fprintln(w, title)
	withGW := slices.ContainsFunc(rows, func(r *tcpResult) bool { return r.Gateway != nil })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "mode\tconns\tworkload\trate\tp50 ms\tp99 ms\tmax ms\t"
	if withGW {
		head += "gw cores\tgw CPU cost\t"
	}
	head += "bench cores\tbridge/direct\terrors\t"
	fmt.Fprintln(tw, head)
	for _, r := range rows {
		line := fmt.Sprintf("%s\t%d\t%s\t", r.Mode, r.Conns, r.Workload)
		switch {
		case r.Workload == workloadBulk:
			line += fmt.Sprintf("%.1f MB/s\t-\t-\t-\t", r.MBPerSec)
		case r.Latency == nil: // idle
			line += fmt.Sprintf("%d idle\t-\t-\t-\t", r.Opened)
		default:
			line += fmt.Sprintf("%.0f rtt/s\t%.3f\t%.3f\t%.3f\t", r.RTTPerSec, r.Latency.P50, r.Latency.P99, r.Latency.Max)
		}
		if withGW {
			if g := r.Gateway; g != nil {
				cost := "-" // a direct row does not pass the gateway
				switch {
				case r.Mode == modeDirect:
				case r.Workload == workloadBulk && g.CPUPerMB > 0:
					cost = fmt.Sprintf("%.3f ms/MB", g.CPUPerMB)
				case r.Workload == workloadRTT && g.CPUPerRoundTrip > 0:
					cost = fmt.Sprintf("%.2f µs/rtt", g.CPUPerRoundTrip)
				case r.Workload == workloadIdle:
					cost = fmt.Sprintf("%.1f KiB/conn", g.PSSPerConn/1024)
				}
				line += fmt.Sprintf("%.2f\t%s\t", g.CPUCores, cost)
			} else {
				line += "-\t-\t"
			}
		}
		line += fmt.Sprintf("%.2f\t", r.Bench.CPUCores)
		if r.Ratio > 0 {
			line += fmt.Sprintf("%.2f\t", r.Ratio)
		} else {
			line += "-\t"
		}
		if r.Errors > 0 {
			line += fmt.Sprintf("%d ERRORS\t", r.Errors)
		} else {
			line += "0\t"
		}
		fmt.Fprintln(tw, line)
	}
	_ = tw.Flush()
	for _, r := range rows {
		for _, wn := range r.Warnings {
			fmt.Fprintf(w, "WARNING %s × %d %s: %s\n", r.Mode, r.Conns, r.Workload, wn)
		}
	}
}

// runEcho is "cometbench echo": the echo server alone, until ctx ends, for
// "cometbench tcp --target-addr" from another process (pinned to another
// core, say).
func runEcho(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:7001", "address to listen on (loopback only)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("echo: unexpected argument %q", fs.Arg(0))
	}
	if err := checkLoopbackAddr(*listen, true); err != nil {
		return fmt.Errorf("--listen %w", err)
	}
	e, err := startEchoTarget(*listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "cometbench: echo server on %s\n", e.Addr())
	<-ctx.Done()
	return e.Close()
}
