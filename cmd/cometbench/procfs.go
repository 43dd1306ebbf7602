package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// What the bench reads about a process from /proc. Only Linux has these
// files; elsewhere --pid fails with a clear error.

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports (the kernel exports
// USER_HZ=100 regardless of its internal HZ).
const clockTicks = 100

// procCPU is a process's CPU time so far.
type procCPU struct {
	User, System time.Duration
	Threads      int
}

// Total is user plus system time.
func (c procCPU) Total() time.Duration { return c.User + c.System }

// readProcCPU reads /proc/PID/stat.
func readProcCPU(procRoot string, pid int) (procCPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", procRoot, pid))
	if err != nil {
		return procCPU{}, err
	}
	return parseProcStat(b)
}

// parseProcStat parses the contents of /proc/PID/stat. The command name
// (field 2) is in parentheses and may itself contain spaces and
// parentheses, so fields are counted from the last ')'.
func parseProcStat(b []byte) (procCPU, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procCPU{}, errors.New("/proc stat: no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime 15, num_threads 20.
	if len(f) < 18 {
		return procCPU{}, fmt.Errorf("/proc stat: %d fields after the command name, want at least 18", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	th, err3 := strconv.Atoi(f[17])
	if err := errors.Join(err1, err2, err3); err != nil {
		return procCPU{}, fmt.Errorf("/proc stat: %w", err)
	}
	tick := time.Second / clockTicks
	return procCPU{User: time.Duration(ut) * tick, System: time.Duration(st) * tick, Threads: th}, nil
}

// procMem is a process's memory as the kernel accounts it, in bytes.
type procMem struct {
	// PSS is the proportional set size: private pages plus a share of
	// pages mapped by several processes. It is what the process costs.
	PSS int64
	// RSS counts shared pages in full.
	RSS int64
}

// readProcMem reads /proc/PID/smaps_rollup.
func readProcMem(procRoot string, pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("%s/%d/smaps_rollup", procRoot, pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	return parseSmapsRollup(f)
}

// parseSmapsRollup reads the Pss and Rss lines ("Pss:   1234 kB").
func parseSmapsRollup(r io.Reader) (procMem, error) {
	var m procMem
	var havePSS bool
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "Pss" && name != "Rss") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return procMem{}, fmt.Errorf("smaps_rollup: unexpected %s line %q", name, sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return procMem{}, fmt.Errorf("smaps_rollup: %s: %w", name, err)
		}
		if name == "Pss" {
			m.PSS, havePSS = kb*1024, true
		} else {
			m.RSS = kb * 1024
		}
	}
	if err := sc.Err(); err != nil {
		return procMem{}, err
	}
	if !havePSS {
		return procMem{}, errors.New("smaps_rollup: no Pss line")
	}
	return m, nil
}

// goRuntime is the gateway's own view of itself, from its Prometheus
// /metrics (the Go collector's standard names). A value the endpoint does
// not have is -1.
type goRuntime struct {
	Goroutines int64 `json:"goroutines"`
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
}

var goRuntimeNames = map[string]func(*goRuntime, int64){
	"go_goroutines":                 func(g *goRuntime, v int64) { g.Goroutines = v },
	"go_memstats_heap_inuse_bytes":  func(g *goRuntime, v int64) { g.HeapInuse = v },
	"go_memstats_stack_inuse_bytes": func(g *goRuntime, v int64) { g.StackInuse = v },
}

// parseMetrics picks the goRuntime values out of Prometheus text
// exposition format.
func parseMetrics(r io.Reader) (goRuntime, error) {
	g := goRuntime{Goroutines: -1, HeapInuse: -1, StackInuse: -1}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		set := goRuntimeNames[name]
		if set == nil {
			continue
		}
		if i := strings.IndexByte(val, ' '); i >= 0 { // an optional timestamp follows
			val = val[:i]
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return g, fmt.Errorf("metrics: %s: %w", name, err)
		}
		set(&g, int64(f))
	}
	return g, sc.Err()
}

// scrapeMetrics fetches and parses url (a gateway's /metrics).
func scrapeMetrics(ctx context.Context, client *http.Client, url string) (goRuntime, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return goRuntime{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return goRuntime{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return goRuntime{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body)
}
