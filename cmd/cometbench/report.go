package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// runResult is one step of a run: the JSON line of --json, and the table.
type runResult struct {
	Label     string  `json:"label,omitempty"`
	Transport string  `json:"transport"`
	Publish   string  `json:"publish"`
	Nodes     int     `json:"nodes"`
	Sessions  int     `json:"sessions"`
	Opened    int     `json:"opened"`
	Failed    int     `json:"failed"`
	Channels  int     `json:"channels"`
	Step      int     `json:"step"`
	Rate      float64 `json:"rate"`
	DurationS float64 `json:"duration_s"`
	Payload   int     `json:"payload"`

	Published     uint64  `json:"published"`
	PublishErrors uint64  `json:"publish_errors"`
	PublishError  string  `json:"publish_error,omitempty"`
	PublishRate   float64 `json:"publish_rate"`
	PublishLagMs  float64 `json:"publisher_max_lag_ms"`

	Expected         uint64         `json:"expected"`
	Deliveries       uint64         `json:"deliveries"`
	DeliveriesPerSec float64        `json:"deliveries_per_s"`
	Lost             uint64         `json:"lost"`
	Dup              uint64         `json:"dup"`
	OOO              uint64         `json:"ooo"`
	Foreign          uint64         `json:"foreign"`
	ServerClosed     int            `json:"server_closed"`
	CloseReasons     map[string]int `json:"close_reasons,omitempty"`
	Latency          latencyMs      `json:"latency_ms"`
	// ArrivalLatency is the same deliveries' latency when their bytes
	// arrived at the client's socket (the kernel's receive timestamp,
	// poll.go), without the load generator's own delay in reading them;
	// absent when the sessions were not read by the event loop.
	ArrivalLatency *latencyMs `json:"latency_at_arrival_ms,omitempty"`

	// FloorUs is the loopback write floor measured before the first step
	// (µs of writer CPU per write, see floor.go), and FloorRatio the
	// gateway's CPU per delivery divided by it; both absent without a
	// floor.
	FloorUs    float64 `json:"floor_us,omitempty"`
	FloorRatio float64 `json:"floor_ratio,omitempty"`
	// FloorAfterUs is the floor measured again after the run's last
	// publishing step (on that step's result only), and FloorRatioMean
	// the gateway's CPU per delivery divided by the mean of the two
	// floors: on a machine whose speed drifts, the floor taken on both
	// sides of the steps is the fairer denominator, and how far the two
	// lie apart says how far the ratio can be trusted (see setFloorAfter).
	FloorAfterUs   float64 `json:"floor_after_us,omitempty"`
	FloorRatioMean float64 `json:"floor_ratio_mean,omitempty"`

	Gateway  *gatewayResult `json:"gateway,omitempty"`
	Bench    benchResult    `json:"bench"`
	Warnings []string       `json:"warnings,omitempty"`
}

// latencyMs is the publish-to-receive latency distribution, milliseconds.
type latencyMs struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// gatewayResult is what was measured of the gateway process(es).
type gatewayResult struct {
	CPUSeconds     float64 `json:"cpu_s"`
	CPUCores       float64 `json:"cpu_cores"`
	CPUPerDelivery float64 `json:"cpu_us_per_delivery"`
	PSSBefore      int64   `json:"pss_before"`
	PSSReady       int64   `json:"pss_ready"`
	PSSAfter       int64   `json:"pss_after"`
	MemPerSession  float64 `json:"pss_per_session"`
	// From /metrics; -1 when unknown.
	GoroutinesBefore  int64   `json:"goroutines_before"`
	GoroutinesReady   int64   `json:"goroutines_ready"`
	GoroutinesPerSess float64 `json:"goroutines_per_session"`
	HeapInuse         int64   `json:"heap_inuse"`
	StackInuse        int64   `json:"stack_inuse"`
	measured          bool
}

// benchResult is the load generator's own cost.
type benchResult struct {
	CPUCores float64 `json:"cpu_cores"`
	CPUs     int     `json:"cpus"`
	Procs    int     `json:"procs"`
}

func (c *coordinator) newResult(step int, rate float64, opened, failed, procs int) *runResult {
	o := c.o
	r := &runResult{Label: o.Label, Transport: o.Transport, Publish: o.Publish, Nodes: len(o.URLs),
		Sessions: o.Sessions, Opened: opened, Failed: failed, Channels: o.Channels, Step: step,
		Rate: rate, DurationS: o.Duration.Seconds(), Payload: max(o.Payload, minPayload)}
	if rate == 0 {
		r.Publish = ""
	}
	return r
}

func memoryResult(before, ready gwSample, opened int, measured bool) *gatewayResult {
	g := &gatewayResult{measured: measured, PSSBefore: before.mem.PSS, PSSReady: ready.mem.PSS,
		GoroutinesBefore: before.rt.Goroutines, GoroutinesReady: ready.rt.Goroutines,
		HeapInuse: -1, StackInuse: -1}
	if opened > 0 {
		g.MemPerSession = float64(ready.mem.PSS-before.mem.PSS) / float64(opened)
		if before.rt.Goroutines >= 0 && ready.rt.Goroutines >= 0 {
			g.GoroutinesPerSess = float64(ready.rt.Goroutines-before.rt.Goroutines) / float64(opened)
		}
	}
	return g
}

func (g *gatewayResult) addRuntime(s gwSample) {
	if g == nil {
		return
	}
	g.PSSAfter = s.mem.PSS
	g.HeapInuse, g.StackInuse = s.rt.HeapInuse, s.rt.StackInuse
}

// fill sets the delivery numbers; window is the time the deliveries took.
func (r *runResult) fill(ps publishStats, window time.Duration, d seqCounts, expected uint64, h, arrival *histogram, closed map[string]int) {
	r.Published, r.PublishErrors, r.PublishError = ps.Published, ps.Errors, ps.FirstErr
	r.PublishLagMs = ms(int64(ps.MaxLag))
	if ps.Elapsed > 0 && r.Rate > 0 {
		r.PublishRate = float64(ps.Published) / ps.Elapsed.Seconds()
		r.DeliveriesPerSec = float64(d.Received) / window.Seconds()
	}
	r.Expected, r.Deliveries = expected, d.Received
	r.Lost, r.Dup, r.OOO, r.Foreign = d.Lost, d.Dup, d.OOO, d.Foreign
	for _, v := range closed {
		r.ServerClosed += v
	}
	if len(closed) > 0 {
		r.CloseReasons = closed
	}
	r.Latency = latencies(h)
	if arrival != nil && arrival.Count() > 0 {
		l := latencies(arrival)
		r.ArrivalLatency = &l
	}
}

func latencies(h *histogram) latencyMs {
	return latencyMs{P50: ms(h.Quantile(0.5)), P90: ms(h.Quantile(0.9)), P99: ms(h.Quantile(0.99)),
		P999: ms(h.Quantile(0.999)), Max: ms(h.Max()), Mean: h.Mean() / 1e6}
}

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

func (r *runResult) gatewayCPU(a, b gwSample, wall time.Duration, deliveries uint64) {
	if r.Gateway == nil || !r.Gateway.measured {
		return
	}
	cpu := (b.cpu - a.cpu).Seconds()
	r.Gateway.CPUSeconds = cpu
	r.Gateway.CPUCores = cpu / wall.Seconds()
	if deliveries > 0 {
		r.Gateway.CPUPerDelivery = cpu / float64(deliveries) * 1e6
	}
}

// setFloor adds the floor and the gateway's CPU per delivery as a ratio
// to it, for a publishing step whose gateway CPU was measured.
func (r *runResult) setFloor(f *floorResult) {
	if f == nil || r.Rate == 0 {
		return
	}
	r.FloorUs = f.roundedUs()
	if g := r.Gateway; g != nil && g.measured {
		r.FloorRatio = floorRatio(g.CPUPerDelivery, r.FloorUs)
	}
}

// floorDrift is how far (a fraction of the lower one) the floors before
// and after the steps may lie apart before the result warns.
const floorDrift = 0.15

// setFloorAfter adds the floor measured after the run's last publishing
// step, the ratio to the mean of both floors, and a warning when the
// floor moved by more than floorDrift: the machine's speed changed during
// the run (a shared VM's neighbours, frequency), so the ratio of this run
// is uncertain by as much.
func (r *runResult) setFloorAfter(f *floorResult) {
	if f == nil || r.FloorUs <= 0 {
		return
	}
	r.FloorAfterUs = f.roundedUs()
	if g := r.Gateway; g != nil && g.measured {
		r.FloorRatioMean = floorRatio(g.CPUPerDelivery, (r.FloorUs+r.FloorAfterUs)/2)
	}
	lo, hi := min(r.FloorUs, r.FloorAfterUs), max(r.FloorUs, r.FloorAfterUs)
	if lo > 0 && hi-lo > floorDrift*lo {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the loopback write floor moved from %.2f µs before the steps to %.2f after them (%.0f%%): the machine's speed changed during the run, and the floor ratios are uncertain by as much",
			r.FloorUs, r.FloorAfterUs, 100*(hi-lo)/lo))
	}
}

// checkSaturation adds the warnings that say a number is not the
// gateway's alone: the load generator ran out of CPU, the publisher fell
// behind, latency kept growing, or sessions were closed.
func (r *runResult) checkSaturation(windows []int64, incomplete int) {
	warn := func(format string, a ...any) { r.Warnings = append(r.Warnings, fmt.Sprintf(format, a...)) }
	if r.Bench.CPUs > 0 && r.Bench.CPUCores >= 0.85*float64(r.Bench.CPUs) {
		warn("load generator saturated: it used %.2f of its %d CPU(s); deliveries/s and latency are limits of the generator, not of the gateway",
			r.Bench.CPUCores, r.Bench.CPUs)
	}
	if r.Rate > 0 {
		allowed := math.Max(100, 2000/r.Rate)
		if r.PublishLagMs > allowed {
			warn("publisher fell %.0f ms behind its schedule: %.0f msg/s were asked, %.0f sent (try --publish nats or more --api-lanes)",
				r.PublishLagMs, r.Rate, r.PublishRate)
		}
	}
	if g := r.Gateway; g != nil && g.measured && g.CPUCores >= 0.9 {
		warn("gateway saturated: it used %.2f cores", g.CPUCores)
	}
	if n := len(windows); n >= 3 {
		first := windows[:n/2]
		sorted := append([]int64(nil), first...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		base := sorted[len(sorted)/2]
		last := windows[n-1]
		if last >= int64(100*time.Millisecond) && last > 2*base && last >= windows[n-2] {
			warn("receive lag grew during the step (worst latency per second from %.0f ms to %.0f ms): the gateway or the load generator cannot keep up with this rate",
				ms(base), ms(last))
		}
	}
	if incomplete > 0 {
		warn("%d sessions had not received their last message after the drain time; the rest counts as lost", incomplete)
	}
	if r.ServerClosed > 0 {
		reasons := make([]string, 0, len(r.CloseReasons))
		for k, v := range r.CloseReasons {
			reasons = append(reasons, fmt.Sprintf("%d× %s", v, k))
		}
		sort.Strings(reasons)
		warn("the gateway closed %d sessions: %s", r.ServerClosed, strings.Join(reasons, "; "))
	}
	if r.PublishErrors > 0 {
		warn("%d publishes failed (each counts as lost at the receivers): %s", r.PublishErrors, r.PublishError)
	}
}

func (r *runResult) print(w io.Writer, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(r)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	title := fmt.Sprintf("%s × %d sessions (%d open, %d failed), %d channel(s), %d node(s)",
		r.Transport, r.Sessions, r.Opened, r.Failed, r.Channels, r.Nodes)
	if r.Label != "" {
		title = r.Label + ": " + title
	}
	fmt.Fprintf(tw, "%s\n", title)
	if r.Rate == 0 {
		fmt.Fprintf(tw, "  step %d\tidle for %.0fs\n", r.Step, r.DurationS)
	} else {
		fmt.Fprintf(tw, "  step %d\t%.0f msg/s for %.0fs via %s, payload %d B\n", r.Step, r.Rate, r.DurationS, r.Publish, r.Payload)
		fmt.Fprintf(tw, "  published\t%d (%.1f/s, publisher max lag %.1f ms, %d errors)\n", r.Published, r.PublishRate, r.PublishLagMs, r.PublishErrors)
		fmt.Fprintf(tw, "  deliveries\t%d of %d expected, %.0f/s\n", r.Deliveries, r.Expected, r.DeliveriesPerSec)
		fmt.Fprintf(tw, "  lost / dup / ooo\t%d / %d / %d\n", r.Lost, r.Dup, r.OOO)
		l := r.Latency
		fmt.Fprintf(tw, "  latency ms\tp50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n", l.P50, l.P90, l.P99, l.P999, l.Max)
		if a := r.ArrivalLatency; a != nil {
			fmt.Fprintf(tw, "  at arrival ms\tp50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f (the kernel's receive timestamp: without the load generator's delay in reading)\n", a.P50, a.P90, a.P99, a.P999, a.Max)
		}
	}
	if r.ServerClosed > 0 {
		fmt.Fprintf(tw, "  closed by gateway\t%d\n", r.ServerClosed)
	}
	if g := r.Gateway; g != nil && g.measured {
		if r.Rate > 0 {
			fmt.Fprintf(tw, "  gateway CPU\t%.2f s, %.3f cores, %.2f µs/delivery%s\n", g.CPUSeconds, g.CPUCores, g.CPUPerDelivery,
				floorRatioText(g.CPUPerDelivery, r.FloorUs))
			if r.FloorAfterUs > 0 {
				fmt.Fprintf(tw, "  floor after\t%.2f µs per write after the steps, %.2f before: %.2f × their mean\n",
					r.FloorAfterUs, r.FloorUs, r.FloorRatioMean)
			}
		} else {
			fmt.Fprintf(tw, "  gateway CPU\t%.2f s, %.3f cores while idle\n", g.CPUSeconds, g.CPUCores)
		}
		fmt.Fprintf(tw, "  gateway PSS\t%s before, %s with the sessions, %s now: %.2f KiB/session\n",
			mib(g.PSSBefore), mib(g.PSSReady), mib(g.PSSAfter), g.MemPerSession/1024)
	}
	if g := r.Gateway; g != nil && g.GoroutinesReady >= 0 {
		fmt.Fprintf(tw, "  gateway runtime\tgoroutines %d → %d (%.2f/session), heap in use %s, stacks %s\n",
			g.GoroutinesBefore, g.GoroutinesReady, g.GoroutinesPerSess, mib(g.HeapInuse), mib(g.StackInuse))
	}
	fmt.Fprintf(tw, "  load generator\t%.2f of %d CPU(s), %s\n", r.Bench.CPUCores, r.Bench.CPUs, procsWord(r.Bench.Procs))
	for _, wn := range r.Warnings {
		fmt.Fprintf(tw, "  WARNING\t%s\n", wn)
	}
	_ = tw.Flush()
}

func procsWord(p int) string {
	if p == 0 {
		return "in one process"
	}
	return fmt.Sprintf("%d worker processes", p)
}

func mib(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
