package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/gobwas/ws"
	"go.yaml.in/yaml/v3"
)

func TestEchoTarget(t *testing.T) {
	e, err := startEchoTarget("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := net.Dial("tcp", e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := newEchoPattern().at(12345, 300_000)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(p)
		writeErr <- err
	}()
	got := make([]byte, len(p))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("the echo differs")
	}

	// A second connection stays open: Close must end it and return.
	idle, err := net.Dial("tcp", e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	deadline := time.Now().Add(5 * time.Second)
	for e.accepted.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := e.accepted.Load(); n != 2 {
		t.Fatalf("accepted %d, want 2", n)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	_ = e.Close() // idempotent
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a connection of a closed echo server: %v", err)
	}
}

func TestEchoPattern(t *testing.T) {
	p := newEchoPattern()
	if len(p) != patternPeriod+maxTCPSize || !bytes.Equal(p[patternPeriod:patternPeriod+100], p[:100]) {
		t.Fatal("the pattern does not repeat its start after the period")
	}
	// A stream read across the end of the period, in odd pieces.
	pos := uint64(3*patternPeriod - 5000)
	stream := append(append([]byte(nil), p.at(pos, 5000)...), p.at(pos+5000, 7000)...)
	for off := 0; off < len(stream); off += 333 {
		end := min(off+333, len(stream))
		if !p.check(pos+uint64(off), stream[off:end]) {
			t.Fatalf("piece at %d does not check", off)
		}
	}
	if !p.check(pos, stream) {
		t.Fatal("the whole stream does not check")
	}
	flipped := append([]byte(nil), stream...)
	flipped[6000] ^= 1
	swapped := append(append([]byte(nil), stream[4096:8192]...), stream[:4096]...)
	for name, bad := range map[string][]byte{
		"a flipped bit":   flipped,
		"swapped chunks":  swapped,
		"a skipped chunk": stream[4096:],
		"another stream":  p.at(pos+104_729, len(stream)),
	} {
		if p.check(pos, bad) {
			t.Errorf("%s passes the check", name)
		}
	}
}

func TestAppendMaskedFrame(t *testing.T) {
	key := [4]byte{1, 2, 3, 250}
	p := newEchoPattern()
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		frame := appendMaskedFrame([]byte("junk"), ws.OpBinary, p.at(99, n), key)
		if string(frame[:4]) != "junk" {
			t.Fatalf("%d: the frame did not append", n)
		}
		r := bytes.NewReader(frame[4:])
		h, err := ws.ReadHeader(r)
		if err != nil {
			t.Fatalf("%d: %v", n, err)
		}
		if !h.Fin || h.OpCode != ws.OpBinary || !h.Masked || h.Mask != key || h.Length != int64(n) {
			t.Fatalf("%d: header %+v", n, h)
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(r, payload); err != nil {
			t.Fatalf("%d: payload: %v", n, err)
		}
		ws.Cipher(payload, h.Mask, 0)
		if !bytes.Equal(payload, p.at(99, n)) {
			t.Fatalf("%d: the payload differs after unmasking", n)
		}
	}
}

func TestParseTCPFlagsErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--url", "http://10.0.0.1:8080"}, "not a loopback address"},
		{[]string{"--url", "ws://127.0.0.1:8080"}, "scheme must be http"},
		{[]string{"--target-addr", "192.0.2.7:7001"}, "not a loopback address"},
		{[]string{"--target-addr", "example.com:7001"}, "not a loopback address"},
		{[]string{"--target-addr", "127.0.0.1:0"}, "bad port"},
		{[]string{"--target-addr", "127.0.0.1"}, "--target-addr"},
		{[]string{"--target-listen", "0.0.0.0:7001"}, "not a loopback address"},
		{[]string{"--target-listen", "127.0.0.1:7002", "--target-addr", "127.0.0.1:7001"}, "give one"},
		{[]string{"--conns", "0"}, "--conns"},
		{[]string{"--conns", "10,5001"}, "--conns \"5001\""},
		{[]string{"--conns", ""}, "at least one connection count"},
		{[]string{"--duration", "0s"}, "--duration"},
		{[]string{"--duration", "11m"}, "--duration"},
		{[]string{"--drain", "0s"}, "--drain"},
		{[]string{"--size", "0"}, "--size"},
		{[]string{"--size", "1048577"}, "--size"},
		{[]string{"--msg-size", "70000"}, "--msg-size"},
		{[]string{"--size", "65536", "--conns", "10,5000"}, "--size 65536 with --conns 5000"},
		{[]string{"--mode", "carrier-pigeon"}, "--mode"},
		{[]string{"--mode", ""}, "--mode: at least one"},
		{[]string{"--workload", "bulk,latency"}, "--workload \"latency\""},
		{[]string{"--target", ".."}, "--target"},
		{[]string{"--target", "a/b"}, "--target"},
		{[]string{"--pid", "x"}, "--pid"},
		{[]string{"extra"}, "unexpected argument"},
	}
	for _, tc := range cases {
		_, err := parseTCPFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	// Without a bridge row, --url is not used and not checked.
	if _, err := parseTCPFlags([]string{"--mode", "direct", "--url", "http://10.0.0.1"}, io.Discard); err != nil {
		t.Errorf("direct only: %v", err)
	}
}

func TestBulkWindow(t *testing.T) {
	for _, tc := range []struct{ conns, size, want int }{
		{1, 16384, 4 << 20},
		{100, 16384, (128 << 20) / 100},
		{5000, 16384, 32768},
		{1, 1 << 20, 4 << 20},
		{2, 4 << 20, 8 << 20},
	} {
		if got := bulkWindow(tc.conns, tc.size); got != tc.want {
			t.Errorf("bulkWindow(%d, %d) = %d, want %d", tc.conns, tc.size, got, tc.want)
		}
	}
	// The largest run the flags allow stays within maxBulkInFlight.
	if _, err := parseTCPFlags([]string{"--conns", "5000", "--size", "26843"}, io.Discard); err != nil {
		t.Error(err)
	}
}

func TestParseTCPFlagsDefaults(t *testing.T) {
	o, err := parseTCPFlags([]string{"--mode", "bridge,direct", "--workload", "rtt,bulk", "--pid", "7,8"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.Modes, ",") != "direct,bridge" || strings.Join(o.Workloads, ",") != "bulk,rtt" {
		t.Errorf("modes %v workloads %v: want the rows' order", o.Modes, o.Workloads)
	}
	if fmt.Sprint(o.Conns) != "[1 10 100]" || o.Duration != 5*time.Second || o.Size != 16384 || o.MsgSize != 64 {
		t.Errorf("defaults %+v", o)
	}
	if o.URL.String() != "http://127.0.0.1:8080" || o.Target != "bench" || o.TargetListen != "127.0.0.1:7001" || len(o.PIDs) != 2 {
		t.Errorf("defaults %+v", o)
	}
}

// tcpJSON runs "cometbench tcp --json …" and returns its rows and error.
func tcpJSON(t *testing.T, args ...string) (rows []tcpResult, stderrText string, err error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = run(ctx, append([]string{"tcp", "--json"}, args...), strings.NewReader(""), &stdout, &stderr)
	var out []tcpResult
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r tcpResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out, stderr.String(), err
}

// checkTCPRow asserts a row ran clean: every connection open, every byte
// sent came back identical, a rate measured.
func checkTCPRow(t *testing.T, r tcpResult) {
	t.Helper()
	name := fmt.Sprintf("%s × %d %s", r.Mode, r.Conns, r.Workload)
	if r.Errors != 0 || r.ErrorReasons != "" || r.Opened != r.Conns {
		t.Errorf("%s: %d errors (%s), %d of %d open", name, r.Errors, r.ErrorReasons, r.Opened, r.Conns)
	}
	if r.Sent == 0 || r.Verified != r.Sent {
		t.Errorf("%s: %d bytes verified of %d sent", name, r.Verified, r.Sent)
	}
	switch r.Workload {
	case workloadBulk:
		if r.Bytes == 0 || r.Bytes > r.Verified || r.MBPerSec <= 0 || r.Latency != nil {
			t.Errorf("%s: %d bytes, %v MB/s, latency %v", name, r.Bytes, r.MBPerSec, r.Latency)
		}
	case workloadRTT:
		l := r.Latency
		if r.RoundTrips == 0 || r.RTTPerSec <= 0 || l == nil || l.P50 <= 0 || l.P99 < l.P50 || l.Max < l.P99 {
			t.Errorf("%s: %d round trips, %v/s, latency %+v", name, r.RoundTrips, r.RTTPerSec, l)
		}
		if r.Verified < uint64(r.Size)*r.RoundTrips || r.Verified%uint64(r.Size) != 0 {
			t.Errorf("%s: %d bytes verified for %d round trips", name, r.Verified, r.RoundTrips)
		}
	case workloadIdle:
		// One round trip per connection, then silence.
		if r.RoundTrips != uint64(r.Opened) || r.Verified != uint64(r.Size*r.Opened) || r.Latency != nil || r.RTTPerSec != 0 {
			t.Errorf("%s: %d round trips, %d bytes verified, latency %v, %v/s", name, r.RoundTrips, r.Verified, r.Latency, r.RTTPerSec)
		}
		if g := r.Gateway; g != nil && g.CPUPerRoundTrip != 0 {
			t.Errorf("%s: CPU per round trip %v on an idle row", name, g.CPUPerRoundTrip)
		}
	default:
		t.Errorf("%s: unknown workload", name)
	}
	if r.Bench.CPUs < 1 {
		t.Errorf("%s: bench %+v", name, r.Bench)
	}
}

func TestTCPDirect(t *testing.T) {
	rows, stderr, err := tcpJSON(t, "--mode", "direct", "--target-listen", "127.0.0.1:0", "--conns", "1,5",
		"--duration", "300ms", "--size", "3000", "--msg-size", "100", "--label", "unit")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4", len(rows))
	}
	want := []string{"1 bulk", "1 rtt", "5 bulk", "5 rtt"}
	for i, r := range rows {
		if got := fmt.Sprintf("%d %s", r.Conns, r.Workload); got != want[i] || r.Mode != modeDirect || r.Label != "unit" {
			t.Errorf("row %d is %s %s, want direct %s", i, r.Mode, got, want[i])
		}
		checkTCPRow(t, r)
		if r.Ratio != 0 || r.Gateway != nil {
			t.Errorf("row %d: ratio %v gateway %v without a bridge row or --pid", i, r.Ratio, r.Gateway)
		}
	}

	// The table: one line per row, and the numbers' units.
	var stdout bytes.Buffer
	err = run(context.Background(), []string{"tcp", "--mode", "direct", "--target-listen", "127.0.0.1:0",
		"--conns", "2", "--duration", "200ms"}, nil, &stdout, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`(?m)^ *direct +2 +bulk +[0-9.]+ MB/s .* 0 *$`, `(?m)^ *direct +2 +rtt +[0-9]+ rtt/s .* 0 *$`} {
		if !regexp.MustCompile(re).MatchString(stdout.String()) {
			t.Errorf("table does not match %s:\n%s", re, stdout.String())
		}
	}
}

// The idle workload: one round trip each, then the connections stay open
// and silent until the window ends; the table says how many.
func TestTCPIdle(t *testing.T) {
	rows, stderr, err := tcpJSON(t, "--mode", "direct", "--target-listen", "127.0.0.1:0", "--conns", "3",
		"--workload", "idle", "--duration", "200ms", "--msg-size", "50")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if len(rows) != 1 || rows[0].Workload != workloadIdle {
		t.Fatalf("rows %+v, want one idle row", rows)
	}
	checkTCPRow(t, rows[0])
	var stdout bytes.Buffer
	err = run(context.Background(), []string{"tcp", "--mode", "direct", "--target-listen", "127.0.0.1:0",
		"--conns", "2", "--workload", "idle", "--duration", "100ms"}, nil, &stdout, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if re := `(?m)^ *direct +2 +idle +2 idle .* 0 *$`; !regexp.MustCompile(re).MatchString(stdout.String()) {
		t.Errorf("table does not match %s:\n%s", re, stdout.String())
	}
}

func TestEchoCommand(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(brokertest.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"echo", "--listen", addr}, nil, io.Discard, io.Discard) }()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
	}
	if err != nil {
		cancel()
		<-done
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Stopping closed the connection.
	if _, err := c.Read(got); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the echo server stopped: %v", err)
	}

	err = run(context.Background(), []string{"echo", "--listen", "10.1.2.3:7001"}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Fatalf("err = %v", err)
	}
}

// startFaultyEcho runs a TCP server whose connections are handled by
// handle; it stops with the test.
func startFaultyEcho(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// An echo that is wrong, short or cut is reported as errors, and the run
// fails.
func TestTCPReportsBadEchoes(t *testing.T) {
	corrupt := startFaultyEcho(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		var n int64
		for {
			k, err := c.Read(buf)
			for i := range buf[:k] {
				if n+int64(i) == 1000 {
					buf[i] ^= 0x20
				}
			}
			n += int64(k)
			if _, werr := c.Write(buf[:k]); werr != nil || err != nil {
				return
			}
		}
	})
	swallow := startFaultyEcho(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	hangUp := startFaultyEcho(t, func(c net.Conn) {
		_, _ = io.CopyN(c, c, 1000)
	})
	for _, tc := range []struct {
		name, addr, workload, reason string
	}{
		{"corrupt bulk", corrupt, "bulk", "echo differs"},
		{"corrupt rtt", corrupt, "rtt", "echo differs"},
		{"swallow bulk", swallow, "bulk", "drain time was over"},
		{"swallow rtt", swallow, "rtt", "drain time was over"},
		// A hang-up shows as the end of the echo or, when a write
		// comes first, as a reset: both are the fault reported.
		{"hang up bulk", hangUp, "bulk", "closed the connection|connection reset"},
		{"hang up rtt", hangUp, "rtt", "closed the connection|connection reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, stderr, err := tcpJSON(t, "--mode", "direct", "--target-addr", tc.addr, "--conns", "3",
				"--workload", tc.workload, "--duration", "300ms", "--drain", "300ms", "--size", "4096")
			if err == nil || !strings.Contains(err.Error(), "1 of 1 rows had errors") {
				t.Errorf("err = %v", err)
			}
			if len(rows) != 1 {
				t.Fatalf("%d rows\n%s", len(rows), stderr)
			}
			r := rows[0]
			if r.Errors != 3 || !slices.ContainsFunc(strings.Split(tc.reason, "|"), func(w string) bool { return strings.Contains(r.ErrorReasons, w) }) || r.Verified >= r.Sent {
				t.Errorf("errors %d (%s), verified %d of %d", r.Errors, r.ErrorReasons, r.Verified, r.Sent)
			}
			if tc.workload == "bulk" && (r.Window != bulkWindow(3, 4096) || r.Sent > 3*uint64(r.Window)) {
				t.Errorf("%d bytes sent on 3 connections with a window of %d", r.Sent, r.Window)
			}
			if !strings.Contains(stderr, "3 ERRORS") {
				t.Errorf("the progress line does not say ERRORS:\n%s", stderr)
			}
		})
	}
	// The table says it too.
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"tcp", "--mode", "direct", "--target-addr", swallow, "--conns", "2",
		"--workload", "rtt", "--duration", "100ms", "--drain", "100ms"}, nil, &stdout, io.Discard)
	if err == nil || !strings.Contains(stdout.String(), "2 ERRORS") || !strings.Contains(stdout.String(), "WARNING direct × 2 rtt: 2 of 2 connections had errors") {
		t.Errorf("err %v, table:\n%s", err, stdout.String())
	}
	// Nothing listening: no row at all.
	_, _, err = tcpJSON(t, "--mode", "direct", "--target-addr", "127.0.0.1:"+strconv.Itoa(brokertest.FreePort(t)), "--conns", "2")
	if err == nil || !strings.Contains(err.Error(), "no connection could be opened") {
		t.Errorf("err = %v", err)
	}
}

// The documented commands parse, and the setup's YAML names the echo
// server the commands start.
func TestTCPScenarios(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"scenarios"}, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), tcpBridgeSetup) {
		t.Error("the bridge set-up is missing from the output")
	}
	m := regexp.MustCompile(`(?m)^T="taskset -c 1 \./cometbench tcp (.*)"$`).FindStringSubmatch(tcpBridgeSetup)
	if m == nil {
		t.Fatal("no T=… line in the set-up")
	}
	base := strings.Fields(strings.ReplaceAll(m[1], "$GW", "1"))
	var opts []*tcpOptions
	for _, s := range tcpScenarios {
		if !strings.Contains(out.String(), s.cmd) {
			t.Errorf("%s missing from the output", s.name)
		}
		line := regexp.MustCompile(`(?m)^\$T .*$`).FindString(s.cmd)
		if line == "" {
			t.Fatalf("%s has no $T line", s.name)
		}
		fields := strings.Fields(line)
		o, err := parseTCPFlags(append(append([]string{}, base...), fields[1:]...), io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		opts = append(opts, o)
	}

	y := regexp.MustCompile(`(?s)<<'EOF'\n(.*)\nEOF\n`).FindStringSubmatch(tcpBridgeSetup)
	if y == nil {
		t.Fatal("no heredoc in the set-up")
	}
	var cfg struct {
		HTTP struct {
			Listen string `yaml:"listen"`
		} `yaml:"http"`
		Bridge struct {
			Targets []struct {
				Name          string   `yaml:"name"`
				Address       string   `yaml:"address"`
				AllowNetworks []string `yaml:"allow_networks"`
			} `yaml:"targets"`
		} `yaml:"bridge"`
	}
	if err := yaml.Unmarshal([]byte(y[1]), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Bridge.Targets) != 1 {
		t.Fatalf("targets %+v", cfg.Bridge.Targets)
	}
	tg := cfg.Bridge.Targets[0]
	for _, o := range opts {
		echo := o.TargetListen
		if o.TargetAddr != "" {
			echo = o.TargetAddr
		}
		if o.Target != tg.Name || echo != tg.Address || hostPort(o.URL) != cfg.HTTP.Listen {
			t.Errorf("the command (target %s, echo %s, url %s) does not match the config (%s at %s, listen %s)",
				o.Target, echo, o.URL, tg.Name, tg.Address, cfg.HTTP.Listen)
		}
	}
	if fmt.Sprint(tg.AllowNetworks) != "[127.0.0.0/8]" {
		t.Errorf("allow_networks %v", tg.AllowNetworks)
	}
}

// startGatewayConfig runs the gateway binary as "serve --config FILE" on a
// free port and returns it once ready.
func startGatewayConfig(t *testing.T, config string) *gatewayNode {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "cometgate.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return startGatewayWith(t, []string{"serve", "--config", cfg})
}

// Through the real gateway's bridge: every byte comes back, and the
// bridge's refusals reach the user as the gateway's statuses.
func TestTCPBridgeAgainstGateway(t *testing.T) {
	echoPort, deadPort := brokertest.FreePort(t), brokertest.FreePort(t)
	// A target that echoes 1,000 bytes, then closes its side (FIN) and
	// reads on.
	hangUp := startFaultyEcho(t, func(c net.Conn) {
		_, _ = io.CopyN(c, c, 1000)
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	gw := startGatewayConfig(t, fmt.Sprintf(`
bridge:
  dial_timeout: 2s
  targets:
    - name: bench
      address: "127.0.0.1:%d"
      allow_networks: ["127.0.0.0/8"]
    - name: hangup
      address: %q
      allow_networks: ["127.0.0.0/8"]
    - name: dead
      address: "127.0.0.1:%d"
      allow_networks: ["127.0.0.0/8"]
    - name: refused
      address: "127.0.0.1:%d"
`, echoPort, hangUp, deadPort, echoPort))

	rows, stderr, err := tcpJSON(t, "--url", gw.url, "--target", "bench", "--target-listen", "127.0.0.1:"+strconv.Itoa(echoPort),
		"--conns", "1,4", "--duration", "500ms", "--size", "20000", "--pid", strconv.Itoa(gw.pid))
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if len(rows) != 8 {
		t.Fatalf("%d rows, want 8\n%s", len(rows), stderr)
	}
	for i, r := range rows {
		checkTCPRow(t, r)
		wantMode := []string{modeDirect, modeBridge}[i%2]
		if r.Mode != wantMode {
			t.Errorf("row %d: mode %s, want %s", i, r.Mode, wantMode)
		}
		g := r.Gateway
		if g == nil || g.CPUSeconds < 0 || g.PSSBefore <= 0 || g.PSSLoaded <= 0 {
			t.Errorf("row %d: gateway %+v", i, g)
		}
		if r.Mode == modeBridge {
			if r.Ratio <= 0 {
				t.Errorf("row %d: bridge/direct ratio %v", i, r.Ratio)
			}
			for _, w := range r.Warnings {
				if strings.Contains(w, "echo server accepted") {
					t.Errorf("row %d: %s", i, w)
				}
			}
		}
	}

	for _, tc := range []struct {
		target, want string
	}{
		{"nosuch", "GET /tcp/nosuch: 404"},
		{"refused", "GET /tcp/refused: 403"},
		{"dead", "GET /tcp/dead: 502"},
	} {
		_, _, err := tcpJSON(t, "--url", gw.url, "--mode", "bridge", "--target", tc.target,
			"--target-listen", "127.0.0.1:0", "--conns", "2", "--duration", "100ms")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("target %s: err = %v, want %q", tc.target, err, tc.want)
		}
	}

	// A target that hangs up after 1,000 bytes: the gateway closes the
	// bridge, and the row says so.
	rows, stderr, err = tcpJSON(t, "--url", gw.url, "--mode", "bridge", "--target", "hangup", "--target-addr", hangUp,
		"--conns", "2", "--workload", "bulk", "--size", "300", "--duration", "300ms", "--drain", "2s")
	if err == nil || len(rows) != 1 {
		t.Fatalf("err %v, %d rows\n%s", err, len(rows), stderr)
	}
	if r := rows[0]; r.Errors != 2 || !strings.Contains(r.ErrorReasons, "the gateway closed the bridge: 1000 target closed the connection") {
		t.Errorf("errors %d: %s", r.Errors, r.ErrorReasons)
	}
}
