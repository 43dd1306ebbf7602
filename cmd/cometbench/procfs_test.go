package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A real /proc/PID/stat line of a process whose name has spaces and
// parentheses.
const statFixture = "4242 (comet (gate) x) S 1 4242 4242 0 -1 4194560 5012 0 0 0 1234 567 0 0 20 0 9 0 123456 1234567890 4567 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"

const smapsFixture = `55d0c0a00000-7ffd3b5fe000 ---p 00000000 00:00 0                          [rollup]
Rss:               45312 kB
Pss:               41027 kB
Pss_Dirty:         30000 kB
Pss_Anon:          29988 kB
Pss_File:          11039 kB
Shared_Clean:       4412 kB
Private_Dirty:     30000 kB
Swap:                  0 kB
SwapPss:               0 kB
`

func TestParseProcStat(t *testing.T) {
	c, err := parseProcStat([]byte(statFixture))
	if err != nil {
		t.Fatal(err)
	}
	if c.User != 12340*time.Millisecond || c.System != 5670*time.Millisecond || c.Threads != 9 {
		t.Fatalf("got %+v", c)
	}
	if c.Total() != 18010*time.Millisecond {
		t.Fatalf("total %v", c.Total())
	}
	for _, bad := range []string{"", "4242 (x S 1", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 4194560 5012 0 0 0 abc 567 0 0 20 0 9 0"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) accepted", bad)
		}
	}
}

func TestParseSmapsRollup(t *testing.T) {
	m, err := parseSmapsRollup(strings.NewReader(smapsFixture))
	if err != nil {
		t.Fatal(err)
	}
	if m.PSS != 41027*1024 || m.RSS != 45312*1024 {
		t.Fatalf("got %+v", m)
	}
	if _, err := parseSmapsRollup(strings.NewReader("Rss: 1 kB\n")); err == nil {
		t.Error("no Pss line accepted")
	}
	if _, err := parseSmapsRollup(strings.NewReader("Pss: 12 MB\n")); err == nil {
		t.Error("unknown unit accepted")
	}
}

func TestReadProcFiles(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "4242")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(statFixture), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte(smapsFixture), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := readProcCPU(root, 4242); err != nil || c.Threads != 9 {
		t.Fatalf("readProcCPU: %+v %v", c, err)
	}
	if m, err := readProcMem(root, 4242); err != nil || m.PSS != 41027*1024 {
		t.Fatalf("readProcMem: %+v %v", m, err)
	}
	if _, err := readProcCPU(root, 1); err == nil {
		t.Fatal("a missing process was read")
	}
	// This very process, from the real /proc.
	if c, err := readProcCPU("/proc", os.Getpid()); err != nil || c.Threads < 1 {
		t.Fatalf("own stat: %+v %v", c, err)
	}
	if m, err := readProcMem("/proc", os.Getpid()); err != nil || m.PSS <= 0 {
		t.Fatalf("own smaps_rollup: %+v %v", m, err)
	}
}

func TestParseMetrics(t *testing.T) {
	const text = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 10027
go_memstats_heap_inuse_bytes 1.2345678e+07
go_memstats_stack_inuse_bytes 4.2598400e+07 1712345678000
cometgate_sessions{transport="websocket"} 10000
`
	g, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if g.Goroutines != 10027 || g.HeapInuse != 12345678 || g.StackInuse != 42598400 {
		t.Fatalf("got %+v", g)
	}
	g, err = parseMetrics(strings.NewReader("up 1\n"))
	if err != nil || g.Goroutines != -1 {
		t.Fatalf("missing metrics: %+v %v", g, err)
	}
	if _, err := parseMetrics(strings.NewReader("go_goroutines many\n")); err == nil {
		t.Fatal("a bad value was accepted")
	}
}
