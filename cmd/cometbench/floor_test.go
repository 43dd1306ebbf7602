package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFloorReport(t *testing.T) {
	fo := floorOptions{Conns: 3, Packet: 100, MaxWrites: 1000, WriterCPUs: []int{0}}
	frame := len(appendWSTextFrame(nil, make([]byte, 100)))
	if frame != 102 {
		t.Fatalf("frame of a 100-byte packet is %d bytes, want 102", frame)
	}
	good := floorReport{Writes: 30, Warmup: 2, Bytes: (30 + 2*3) * 102, Conns: 3, Frame: 102, CPUNs: 150_000, ProcessCPUNs: 200_000,
		WallNs: 1e9, CPUs: []int{0}}
	line := func(mod func(r *floorReport)) string {
		r := good
		r.CPUs = slices.Clone(good.CPUs)
		mod(&r)
		b, _ := json.Marshal(r)
		return string(b) + "\n"
	}
	rep, err := parseFloorReport([]byte(line(func(*floorReport) {})), fo)
	if err != nil {
		t.Fatal(err)
	}
	f := floorResult{floorReport: rep}
	if f.PerWriteUs() != 5 {
		t.Errorf("floor %v µs per write, want 5 (150 µs / 30 writes)", f.PerWriteUs())
	}
	for _, tc := range []struct {
		name, out, want string
	}{
		{"nothing", "", "no report"},
		{"two lines", line(func(*floorReport) {}) + line(func(*floorReport) {}), "more than one line"},
		{"not JSON", "writes=30\n", "invalid character"},
		{"unknown field", `{"writes":30,"nope":1}`, "unknown field"},
		{"no writes", line(func(r *floorReport) { r.Writes, r.Bytes = 0, 0 }), "nothing to divide"},
		{"no CPU", line(func(r *floorReport) { r.CPUNs = 0 }), "nothing to divide"},
		{"too many writes", line(func(r *floorReport) { r.Writes, r.Bytes = 2000, 2000*102 }), "more than the 1000 asked"},
		{"connections", line(func(r *floorReport) { r.Conns = 2 }), "2 connections, 3 asked"},
		{"frame", line(func(r *floorReport) { r.Frame, r.Bytes = 101, 30*101 }), "frames of 101 bytes, 102 asked"},
		{"bytes", line(func(r *floorReport) { r.Bytes-- }), "bytes for 30 writes"},
		{"placement", line(func(r *floorReport) { r.CPUs = []int{0, 1} }), "not the gateway's [0]"},
	} {
		if _, err := parseFloorReport([]byte(tc.out), fo); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestFloorRatioText(t *testing.T) {
	if got, want := floorRatioText(9.97, 5.45), " = 1.83 × floor (floor 5.45 µs per write, same placement)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := floorRatioText(9.97, 0); got != "" {
		t.Errorf("no floor: %q", got)
	}
	if got := floorRatioText(0, 5); got != "" {
		t.Errorf("no CPU per delivery: %q", got)
	}
	if got := floorRatio(9.97, 5.45); got != 1.829 {
		t.Errorf("ratio %v, want 1.829", got)
	}

	// A fan-out step prints and carries both.
	r := &runResult{Transport: "ws", Sessions: 1000, Opened: 1000, Channels: 1, Nodes: 1, Step: 1, Rate: 100,
		DurationS: 10, Gateway: &gatewayResult{measured: true, CPUSeconds: 9.97, CPUCores: 0.994, CPUPerDelivery: 9.97}}
	f := &floorResult{floorReport: floorReport{Writes: 1000, CPUNs: 5_450_000}}
	r.setFloor(f)
	if r.FloorUs != 5.45 || r.FloorRatio != 1.829 {
		t.Errorf("floor %v ratio %v", r.FloorUs, r.FloorRatio)
	}
	var out bytes.Buffer
	r.print(&out, false)
	if want := "9.97 s, 0.994 cores, 9.97 µs/delivery = 1.83 × floor (floor 5.45 µs per write, same placement)"; !strings.Contains(out.String(), want) {
		t.Errorf("table:\n%s\nwant a line with %q", out.String(), want)
	}
	out.Reset()
	r.print(&out, true)
	var back map[string]any
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back["floor_us"] != 5.45 || back["floor_ratio"] != 1.829 {
		t.Errorf("JSON floor_us %v floor_ratio %v", back["floor_us"], back["floor_ratio"])
	}

	// An idle step has no floor.
	idle := &runResult{Rate: 0, Gateway: &gatewayResult{measured: true}}
	idle.setFloor(f)
	if idle.FloorUs != 0 || idle.FloorRatio != 0 {
		t.Errorf("idle step: floor %v ratio %v", idle.FloorUs, idle.FloorRatio)
	}
	idle.setFloorAfter(f)
	if idle.FloorAfterUs != 0 || idle.FloorRatioMean != 0 {
		t.Errorf("idle step: floor after %v ratio %v", idle.FloorAfterUs, idle.FloorRatioMean)
	}

	// The last step also carries the floor measured after it, and the
	// ratio to the mean of the two; close floors are no warning.
	r.setFloorAfter(&floorResult{floorReport: floorReport{Writes: 1000, CPUNs: 5_550_000}})
	if r.FloorAfterUs != 5.55 || r.FloorRatioMean != 1.813 || len(r.Warnings) != 0 {
		t.Errorf("floor after %v, ratio to the mean %v, warnings %q", r.FloorAfterUs, r.FloorRatioMean, r.Warnings)
	}
	out.Reset()
	r.print(&out, false)
	if want := "5.55 µs per write after the steps, 5.45 before: 1.81 × their mean"; !strings.Contains(out.String(), want) {
		t.Errorf("table:\n%s\nwant a line with %q", out.String(), want)
	}
	out.Reset()
	r.print(&out, true)
	back = nil
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back["floor_after_us"] != 5.55 || back["floor_ratio_mean"] != 1.813 {
		t.Errorf("JSON floor_after_us %v floor_ratio_mean %v", back["floor_after_us"], back["floor_ratio_mean"])
	}

	// Floors far apart: the machine changed speed, and the result says so.
	drift := &runResult{Rate: 100, FloorUs: 5, Gateway: &gatewayResult{measured: true, CPUPerDelivery: 6}}
	drift.setFloorAfter(&floorResult{floorReport: floorReport{Writes: 1000, CPUNs: 6_000_000}})
	if drift.FloorRatioMean != 1.091 || len(drift.Warnings) != 1 || !strings.Contains(drift.Warnings[0], "moved from 5.00 µs before the steps to 6.00 after them (20%)") {
		t.Errorf("ratio to the mean %v, warnings %q", drift.FloorRatioMean, drift.Warnings)
	}
}

func TestPlanFloor(t *testing.T) {
	o, err := parseRunFlags([]string{"--pid", "1", "--sessions", "10000", "--channels", "2", "--rate", "0.5,20", "--payload", "64"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Floor {
		t.Fatal("--pid did not turn the floor on")
	}
	fo, ok := planFloor(o, []int{0})
	if !ok {
		t.Fatal("no floor planned")
	}
	// The first step's rate: 0.5 msg/s to 5,000 sessions each.
	if fo.Conns != 10000 || fo.Rate != 2500 || fo.Duration != 2*time.Second || !fo.Epoll {
		t.Errorf("plan %+v", fo)
	}
	// The packet is the gateway's: {"seq":1000,"t":"msg","ch":"demo.bench.0","data":PAYLOAD}.
	want := len(`{"seq":1000,"t":"msg","ch":"demo.bench.0","data":}`) + max(64, minPayload)
	if fo.Packet != want {
		t.Errorf("packet %d bytes, want %d", fo.Packet, want)
	}
	o.Rates = []float64{0}
	if _, ok := planFloor(o, []int{0}); ok {
		t.Error("a floor planned for an idle run")
	}
	o.Rates, o.Sessions, o.Channels = []float64{1}, 5, 5
	if fo, _ := planFloor(o, []int{0}); fo.Conns != 5 || fo.Rate != floorMinRate {
		t.Errorf("small run: %+v", fo)
	}
}

func TestParseRunFlagsFloor(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--pid", "1"}, true},
		{[]string{"--pid", "1", "--floor=false"}, false},
		{[]string{"--pid", "1", "--floor"}, true},
	} {
		o, err := parseRunFlags(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if o.Floor != tc.want {
			t.Errorf("%v: floor %v, want %v", tc.args, o.Floor, tc.want)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--floor"}, "--floor needs --pid"},
		{[]string{"--pid", "1", "--floor-time", "1h"}, "--floor-time"},
	} {
		if _, err := parseRunFlags(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

// A short real measurement on loopback, in both reading modes: the writer
// child wrote what it says it wrote, and the floor is a positive number.
func TestMeasureFloor(t *testing.T) {
	cpus, err := affinityOf(0)
	if err != nil {
		t.Fatal(err)
	}
	// The writer on one CPU of ours, to see it pin itself there (a
	// machine with one CPU checks less).
	writer := cpus[:1]
	for _, epoll := range []bool{true, false} {
		fo := floorOptions{Conns: 20, Packet: floorPacketLen(64, "demo.bench.0"), Rate: 20_000,
			Duration: 200 * time.Millisecond, MaxWrites: 3000, WriterCPUs: writer, Epoll: epoll, ReadBuffer: 4096}
		f, err := measureFloor(context.Background(), fo)
		if err != nil {
			t.Fatalf("epoll %v: %v", epoll, err)
		}
		frame := len(appendWSTextFrame(nil, make([]byte, fo.Packet)))
		if f.Writes == 0 || f.Writes > 3000 || f.Frame != frame || f.Conns != 20 {
			t.Errorf("epoll %v: %+v", epoll, f.floorReport)
		}
		if f.Warmup != floorWarmup || f.Received != (f.Writes+floorWarmup*20)*uint64(frame) || f.Bytes != f.Received {
			t.Errorf("epoll %v: %d writes of %d bytes after %d per connection, %d bytes said, %d received", epoll, f.Writes, frame, f.Warmup, f.Bytes, f.Received)
		}
		if !(f.PerWriteUs() > 0) || !slices.Equal(f.CPUs, writer) || !slices.Equal(f.ReaderCPUs, cpus) {
			t.Errorf("epoll %v: floor %v µs, writer CPUs %v (want %v), reader CPUs %v (want %v)",
				epoll, f.PerWriteUs(), f.CPUs, writer, f.ReaderCPUs, cpus)
		}
		t.Logf("epoll %v: %s", epoll, f.String())
		if !strings.Contains(f.String(), "µs per write") {
			t.Errorf("epoll %v: %s", epoll, f.String())
		}
	}
}

// A writer that cannot connect, or is asked nonsense, fails with its reason.
func TestFloorWriterErrors(t *testing.T) {
	var stderr bytes.Buffer
	err := runFloorWriter(context.Background(), []string{"--addr", "192.0.2.1:80", "--conns", "0", "--cpus", "x"},
		strings.NewReader(""), io.Discard, &stderr)
	for _, want := range []string{"--addr", "--conns", "--cpus"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to mention %s", err, want)
		}
	}
	// A writer that cannot pin itself ends before connecting: the parent
	// stops waiting for its connections and shows the child's reason.
	_, err = measureFloor(context.Background(), floorOptions{Conns: 2, Packet: 100, Rate: 1000,
		Duration: 100 * time.Millisecond, MaxWrites: 10, WriterCPUs: []int{1000}, Epoll: true, ReadBuffer: 4096})
	if err == nil || !strings.Contains(err.Error(), "sched_setaffinity") {
		t.Fatalf("writer on a CPU that does not exist: err = %v", err)
	}
}
