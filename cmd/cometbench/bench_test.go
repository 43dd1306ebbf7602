package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers/brokertest"
	"go.uber.org/goleak"
)

// childWorkerEnv makes the test binary act as "cometbench worker": the
// multi-process tests start it as their child workers.
const childWorkerEnv = "COMETBENCH_TEST_CHILD_WORKER"

// childFloorEnv makes the test binary act as "cometbench floor-writer".
const childFloorEnv = "COMETBENCH_TEST_CHILD_FLOOR"

func TestMain(m *testing.M) {
	if os.Getenv(childWorkerEnv) == "1" {
		if err := runWorker(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(childFloorEnv) == "1" {
		if err := runFloorWriter(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "floor-writer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	floorWriterCommand = func(args []string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), childFloorEnv+"=1")
		return cmd, nil
	}
	workerCommand = func() (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childWorkerEnv+"=1")
		return cmd, nil
	}
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	gwBinary  string
	buildErr  error
	buildDir  string
)

// gatewayBinary builds cmd/cometgate once per test process, or takes the
// binary named by $COMETBENCH_TEST_GATEWAY.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("COMETBENCH_TEST_GATEWAY"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "cometbench-test-")
		if buildErr != nil {
			return
		}
		gwBinary = filepath.Join(buildDir, "cometgate")
		out, err := exec.Command("go", "build", "-o", gwBinary, "github.com/cometgate/cometgate/cmd/cometgate").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build cometgate: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return gwBinary
}

// gatewayNode is a real cometgate process.
type gatewayNode struct {
	url     string
	natsURL string
	pid     int
}

// startGateway starts the real cometgate binary with the default
// configuration plus the embedded NATS server's listener (which the
// publishing tests publish into) and waits until it is ready.
func startGateway(t *testing.T) *gatewayNode {
	t.Helper()
	natsPort := brokertest.FreePort(t)
	n := startGatewayWith(t, nil, "COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:"+strconv.Itoa(natsPort))
	n.natsURL = "nats://127.0.0.1:" + strconv.Itoa(natsPort)
	return n
}

// startGatewayWith starts the real cometgate binary with the command-line
// args (such as serve --config FILE) and extra environment, on a free
// HTTP port, and waits until it is ready. Cleanup stops it with SIGTERM.
func startGatewayWith(t *testing.T, args []string, env ...string) *gatewayNode {
	t.Helper()
	httpPort := brokertest.FreePort(t)
	cmd := exec.Command(gatewayBinary(t), args...)
	cmd.Env = append(os.Environ(), "COMETGATE_HTTP_LISTEN=127.0.0.1:"+strconv.Itoa(httpPort), "COMETGATE_LOG_LEVEL=warn")
	cmd.Env = append(cmd.Env, env...)
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("gateway did not stop on SIGTERM")
		}
	})
	n := &gatewayNode{url: "http://127.0.0.1:" + strconv.Itoa(httpPort), pid: cmd.Process.Pid}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("gateway exited: %v\n%s", err, logs.String())
		default:
		}
		resp, err := client.Get(n.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready within 30s: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for the process's stderr copier and
// the test to use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// benchJSON runs "cometbench run --json …" and returns its result lines.
func benchJSON(t *testing.T, args ...string) []runResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, append([]string{"run", "--json"}, args...), strings.NewReader(""), &stdout, &stderr)
	if err != nil {
		t.Fatalf("cometbench run %v: %v\n%s", args, err, stderr.String())
	}
	var out []runResult
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r runResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		t.Fatalf("no result lines\nstderr:\n%s", stderr.String())
	}
	return out
}

// checkClean asserts a publishing step delivered everything exactly once,
// in order.
func checkClean(t *testing.T, r runResult, sessions int) {
	t.Helper()
	if r.Opened != sessions || r.Failed != 0 {
		t.Errorf("opened %d failed %d, want %d sessions", r.Opened, r.Failed, sessions)
	}
	if r.Published == 0 || r.PublishErrors != 0 {
		t.Errorf("published %d, %d errors (%s)", r.Published, r.PublishErrors, r.PublishError)
	}
	if r.Lost != 0 || r.Dup != 0 || r.OOO != 0 || r.Foreign != 0 || r.ServerClosed != 0 {
		t.Errorf("lost %d dup %d ooo %d foreign %d closed %d", r.Lost, r.Dup, r.OOO, r.Foreign, r.ServerClosed)
	}
	if r.Deliveries != r.Expected || r.Expected == 0 {
		t.Errorf("deliveries %d, expected %d", r.Deliveries, r.Expected)
	}
	if r.Latency.P50 <= 0 || r.Latency.P99 < r.Latency.P50 || r.Latency.Max < r.Latency.P99 {
		t.Errorf("latency %+v", r.Latency)
	}
}

func TestBenchAgainstGateway(t *testing.T) {
	gw := startGateway(t)
	pid := strconv.Itoa(gw.pid)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ws api", []string{"--transport", "ws", "--publish", "api"}},
		{"sse api", []string{"--transport", "sse", "--publish", "api"}},
		{"ws goroutine per connection", []string{"--transport", "ws", "--epoll=false"}},
		// 1 KiB payloads: compressed by the gateway, inflated here.
		{"ws deflate", []string{"--transport", "ws", "--deflate", "--payload", "1024"}},
		{"ws deflate goroutine per connection", []string{"--transport", "ws", "--deflate", "--payload", "1024", "--epoll=false"}},
		{"sse goroutine per connection", []string{"--transport", "sse", "--epoll=false"}},
		{"ws nats", []string{"--transport", "ws", "--publish", "nats", "--nats-url", gw.natsURL, "--channels", "5"}},
		{"sse nats two sources", []string{"--transport", "sse", "--publish", "nats", "--nats-url", gw.natsURL,
			"--channels", "50", "--src-ips", "127.0.0.1-127.0.0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--url", gw.url, "--sessions", "50", "--rate", "20", "--duration", "2s",
				"--settle", "0s", "--pid", pid, "--procs", "0", "--floor-time", "300ms"}, tc.args...)
			res := benchJSON(t, args...)
			if len(res) != 1 {
				t.Fatalf("%d result lines, want 1", len(res))
			}
			r := res[0]
			checkClean(t, r, 50)
			if r.Published != 40 {
				t.Errorf("published %d, want 40 (20/s for 2s)", r.Published)
			}
			if r.Expected != 40*50/uint64(r.Channels) {
				t.Errorf("expected %d deliveries", r.Expected)
			}
			g := r.Gateway
			if g == nil || g.PSSBefore <= 0 || g.PSSReady <= 0 || g.CPUSeconds < 0 || g.GoroutinesReady < 1 {
				t.Errorf("gateway numbers %+v", g)
			}
			// --pid turns the floor on: every publishing step carries it,
			// and the ratio when the gateway's CPU was measurable.
			if r.FloorUs <= 0 || (g != nil && (g.CPUPerDelivery > 0) != (r.FloorRatio > 0)) {
				t.Errorf("floor %v µs, ratio %v, gateway %+v", r.FloorUs, r.FloorRatio, g)
			}
			// The only step is the last: it carries the floor measured
			// after it too.
			if r.FloorAfterUs <= 0 || (g != nil && (g.CPUPerDelivery > 0) != (r.FloorRatioMean > 0)) {
				t.Errorf("floor after %v µs, ratio to the mean %v", r.FloorAfterUs, r.FloorRatioMean)
			}
		})
	}
}

// The request-per-poll transports, where the gateway has them.
func TestBenchPollingTransports(t *testing.T) {
	gw := startGateway(t)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(gw.url + "/poll?ch=demo.probe")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp.StatusCode == http.StatusNotFound {
		t.Skip("this gateway build has no polling transports (/poll answers 404)")
	}
	for _, tr := range []string{"poll", "xhr_stream"} {
		t.Run(tr, func(t *testing.T) {
			res := benchJSON(t, "--url", gw.url, "--transport", tr, "--sessions", "30", "--channels", "3",
				"--rate", "30", "--duration", "2s", "--settle", "0s", "--publish", "nats", "--nats-url", gw.natsURL)
			checkClean(t, res[0], 30)
		})
	}
}

// Child worker processes, rate steps and idle sessions.
func TestBenchWorkersAndSteps(t *testing.T) {
	gw := startGateway(t)
	res := benchJSON(t, "--url", gw.url, "--sessions", "60", "--procs", "2", "--channels", "3",
		"--rate", "10,30", "--duration", "1s", "--settle", "0s", "--pid", strconv.Itoa(gw.pid), "--floor-time", "300ms")
	if len(res) != 2 {
		t.Fatalf("%d result lines, want 2", len(res))
	}
	for i, r := range res {
		checkClean(t, r, 60)
		if r.Step != i+1 || r.Bench.Procs != 2 {
			t.Errorf("step %d procs %d", r.Step, r.Bench.Procs)
		}
		if r.FloorUs != res[0].FloorUs || r.FloorUs <= 0 {
			t.Errorf("step %d: floor %v µs, want one floor for the run", r.Step, r.FloorUs)
		}
		// The floor is measured again after the last step, which alone
		// carries it.
		if last := i == len(res)-1; (r.FloorAfterUs > 0) != last {
			t.Errorf("step %d: floor after the steps %v µs", r.Step, r.FloorAfterUs)
		}
	}
	if res[0].Published != 10 || res[1].Published != 30 {
		t.Errorf("published %d and %d, want 10 and 30", res[0].Published, res[1].Published)
	}

	idle := benchJSON(t, "--url", gw.url, "--transport", "sse", "--sessions", "40", "--procs", "2",
		"--rate", "0", "--duration", "500ms", "--settle", "0s", "--pid", strconv.Itoa(gw.pid))
	r := idle[0]
	if r.Opened != 40 || r.Published != 0 || r.Deliveries != 0 || r.Gateway == nil || r.Gateway.GoroutinesReady < 0 || r.FloorUs != 0 {
		t.Fatalf("idle run %+v", r)
	}
}

func TestBenchRefusesNonLoopback(t *testing.T) {
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"run", "--url", "http://192.0.2.1:8080"}, nil, &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("err = %v", err)
	}
}

func TestBenchReportsOpenFailures(t *testing.T) {
	gw := startGateway(t)
	var stdout, stderr bytes.Buffer
	// The default configuration lets nobody subscribe outside demo.>.
	err := run(context.Background(), []string{"run", "--url", gw.url, "--prefix", "secret.bench",
		"--sessions", "3", "--rate", "0", "--duration", "100ms"}, nil, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("err = %v", err)
	}
	// Nothing listens on a port just freed.
	err = run(context.Background(), []string{"run", "--url", "http://127.0.0.1:" + strconv.Itoa(brokertest.FreePort(t)),
		"--sessions", "2", "--rate", "0", "--duration", "100ms"}, nil, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no session could be opened") {
		t.Fatalf("err = %v", err)
	}
}

func TestScenariosCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"scenarios"}, nil, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	// Every documented command line must parse.
	for _, s := range append(append([]scenario{}, scenarios...), multiNodeScenarios...) {
		if !strings.Contains(out.String(), s.cmd) {
			t.Errorf("%s missing from the output", s.name)
		}
		fields := strings.Fields(s.cmd)
		var args []string
		for i := 0; i < len(fields); i++ {
			switch fields[i] {
			case "$B":
				args = append(args, "--pid", "1")
			case "taskset", "-c", "1", "./cometbench", "run":
				if len(args) == 0 {
					continue
				}
				args = append(args, fields[i])
			case "$GW":
				args = append(args, "1")
			case "$URLS":
				args = append(args, "http://127.0.0.1:8180,http://127.0.0.1:8181")
			default:
				args = append(args, fields[i])
			}
		}
		if _, err := parseRunFlags(args, &bytes.Buffer{}); err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
}

// TestREADMEHasScenarioCommands: the README's Performance section shows
// the command of every row; it must be what "cometbench scenarios"
// prints, so that the two cannot drift apart.
func TestREADMEHasScenarioCommands(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"scenarios"}, nil, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := "```sh\n" + strings.TrimRight(out.String(), "\n") + "\n```"
	if !strings.Contains(string(readme), want) {
		t.Errorf("README.md does not show the output of `go run ./cmd/cometbench scenarios` verbatim in a sh block; paste it again")
	}
}
