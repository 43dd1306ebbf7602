package main

// Fault-injection suite (faults_test.go): the parts that run processes.
// The cometgate binary is built once per run of TestFaults and every node
// is a real process of it, so kill -9 is a real crash; nats-server runs as
// processes too. Every process is started in its own process group, killed
// (the whole group) at cleanup and waited for.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/nats-io/nats.go"
)

// buildCometgate builds this package's binary into dir with the go
// command that runs the test.
func buildCometgate(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go" // where .ci/run finds it
		if _, err := os.Stat(goBin); err != nil {
			t.Fatalf("no go command to build cometgate with: %v", err)
		}
	}
	bin := filepath.Join(dir, "cometgate")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is one process of the suite: its output goes to a log file, it
// runs in its own process group, and the test's cleanup kills the group
// and waits for it.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// cleanEnviron is the environment for child processes: the test's own,
// without any COMETGATE_ variable (a node refuses unknown ones, and the
// suite's switches are such variables), plus extra.
func cleanEnviron(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COMETGATE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

func startProc(t *testing.T, name, logPath, bin string, args, env []string) *proc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own group, so that a kill reaches everything it started; and if
	// the test binary dies, the process goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, cmd.Process.Pid)
		}
	})
	return p
}

// signal sends sig to the process group (SIGKILL) or the process itself
// (anything else, so that it shuts down as an operator's signal would
// make it).
func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	if sig == syscall.SIGKILL {
		_ = syscall.Kill(-p.cmd.Process.Pid, sig)
		return
	}
	_ = p.cmd.Process.Signal(sig)
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// wait waits up to d for the process to exit.
func (p *proc) wait(d time.Duration) error {
	select {
	case <-p.exited:
		return nil
	case <-time.After(d):
		return fmt.Errorf("%s (pid %d) still running after %v", p.name, p.cmd.Process.Pid, d)
	}
}

// logTail is the last n bytes of the process's log.
func (p *proc) logTail(n int64) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// fnode is one cometgate node of a scenario: a fixed id and address,
// served by one process at a time (a restart starts a new instance on the
// same address, as a supervisor would).
type fnode struct {
	idx    int
	id     string
	addr   string // 127.0.0.1:port, the same for every instance
	bin    string
	cfg    string
	env    []string
	logDir string

	mu    sync.Mutex
	p     *proc // the current instance
	gen   int   // instances started
	procs []*proc
}

func (n *fnode) url(path string) string { return "http://" + n.addr + path }

// current is the running (or last) instance.
func (n *fnode) current() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.p
}

// start starts a new instance and waits until its /readyz answers 200.
func (n *fnode) start(t *testing.T) {
	t.Helper()
	n.mu.Lock()
	n.gen++
	gen := n.gen
	n.mu.Unlock()
	env := cleanEnviron(append([]string{
		"COMETGATE_NODE_ID=" + n.id,
		"COMETGATE_HTTP_LISTEN=" + n.addr,
	}, n.env...)...)
	logPath := filepath.Join(n.logDir, fmt.Sprintf("%s.%d.log", n.id, gen))
	p := startProc(t, fmt.Sprintf("node %s#%d", n.id, gen), logPath, n.bin, []string{"serve", "--config", n.cfg}, env)
	n.mu.Lock()
	n.p = p
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get(n.url("/readyz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if !p.running() {
			t.Fatalf("node %s exited before it was ready: %v\n%s", n.id, p.waitErr, p.logTail(4096))
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s not ready within 60s (last: %v)\n%s", n.id, err, p.logTail(4096))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logs is every instance's log, in order, each headed by its name.
func (n *fnode) logs() string {
	n.mu.Lock()
	procs := append([]*proc(nil), n.procs...)
	n.mu.Unlock()
	var b strings.Builder
	for _, p := range procs {
		data, err := os.ReadFile(p.logPath)
		if err != nil {
			fmt.Fprintf(&b, "== %s: %v\n", p.name, err)
			continue
		}
		fmt.Fprintf(&b, "== %s\n%s", p.name, data)
	}
	return b.String()
}

// waitPeers waits until every node forwards to every other: a send for a
// session of node a, posted to node b, is answered by a (204) rather than
// 404. Starting on an event rather than on a guess of the announcement
// timing.
func waitPeers(t *testing.T, nodes []*fnode) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	defer c.Transport.(*http.Transport).CloseIdleConnections()
	for _, a := range nodes {
		resp, err := c.Get(a.url("/poll"))
		if err != nil {
			t.Fatalf("opening a probe session on %s: %v", a.id, err)
		}
		var pkts []fpacket
		err = decodeJSONBody(resp, &pkts)
		if err != nil || len(pkts) == 0 || pkts[0].SID == "" {
			t.Fatalf("probe session on %s: %v %+v", a.id, err, pkts)
		}
		sid := pkts[0].SID
		for _, b := range nodes {
			if b == a {
				continue
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				resp, err := c.Post(b.url("/session/"+sid+"/send"), "application/json", strings.NewReader(`{"op":"ping","id":1}`))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusNoContent {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("node %s does not forward to %s after 30s (last: %v)\n%s", b.id, a.id, err, b.current().logTail(4096))
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

func decodeJSONBody(resp *http.Response, v any) error {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return jsonUnmarshal(b, v)
}

// natsProc is a nats-server process with JetStream on a fixed port and
// store, so that it can be stopped and started again as the same server.
type natsProc struct {
	name   string
	port   int
	conf   string
	logDir string
	bin    string

	mu  sync.Mutex
	p   *proc
	gen int
}

const natsServerBin = "/usr/sbin/nats-server"

// needNATSServer finds the nats-server binary.
func needNATSServer(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(natsServerBin); err == nil {
		return natsServerBin
	}
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("the fault suite needs nats-server (apt-get install nats-server): %v", err)
	}
	return bin
}

// newNATSServers writes the configuration of count nats-servers with
// JetStream (a cluster with routes between them when count > 1) and
// starts them.
func newNATSServers(t *testing.T, bin, dir string, count int) []*natsProc {
	t.Helper()
	confs := brokertest.WriteNATSConfs(t, dir, "faults", count)
	servers := make([]*natsProc, count)
	for i, c := range confs {
		servers[i] = &natsProc{name: c.Name, port: c.Port, conf: c.Path, logDir: dir, bin: bin}
	}
	for _, s := range servers {
		s.start(t)
	}
	waitJetStream(t, servers)
	return servers
}

func (s *natsProc) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

func (s *natsProc) start(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	s.gen++
	logPath := filepath.Join(s.logDir, fmt.Sprintf("%s.%d.log", s.name, s.gen))
	s.mu.Unlock()
	p := startProc(t, "nats-server "+s.name, logPath, s.bin, []string{"-c", s.conf}, cleanEnviron())
	s.mu.Lock()
	s.p = p
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if !p.running() || time.Now().After(deadline) {
			t.Fatalf("nats-server %s not listening: %v\n%s", s.name, err, p.logTail(4096))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *natsProc) current() *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}

// waitJetStream waits until JetStream answers on every server (a cluster
// has elected its meta leader).
func waitJetStream(t *testing.T, servers []*natsProc) {
	t.Helper()
	for _, s := range servers {
		deadline := time.Now().Add(60 * time.Second)
		for {
			err := func() error {
				nc, err := nats.Connect(s.url(), nats.Timeout(2*time.Second), nats.NoReconnect())
				if err != nil {
					return err
				}
				defer nc.Close()
				js, err := nc.JetStream(nats.MaxWait(2 * time.Second))
				if err != nil {
					return err
				}
				_, err = js.AccountInfo()
				return err
			}()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("JetStream on %s not ready: %v\n%s", s.name, err, s.current().logTail(4096))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// The round-robin balancer in front of a scenario's nodes. It is a plain
// reverse proxy: each request (a WebSocket upgrade, an SSE or XHR stream,
// a poll, a send) goes to the next node in turn, no stickiness, HTTP/1.1
// to the nodes, nothing buffered, every write flushed, and a node that
// does not answer costs the request a 502 (no retry on another node, no
// health checks). newRoundRobin (forward_test.go) is the same rotation
// for in-process nodes; this one adds what the suite needs: a node that
// refuses the connection (it is down) makes the balancer try the next one,
// as nginx's default (proxy_next_upstream error) and haproxy's
// retry-on conn-failure do (nothing was sent, so any request may go
// elsewhere), so that a node that is gone costs its own sessions, not a
// third of every client's requests; a client may
// place the request that OPENS its first session on a given node
// (headerPlace, so that every node has a client of every transport; what
// the balancer would have done with some luck), and every answer says
// which node gave it (headerBackend), so that a client's record names the
// node behind each failure.
type faultLB struct {
	srv     *httptest.Server
	tr      *http.Transport
	targets []*url.URL
	ids     []string
	next    atomic.Uint64
	served  []atomic.Int64 // requests per node
	failed  []atomic.Int64 // 502s per node
}

const (
	headerPlace   = "X-Fault-Place"   // request: the node index to send this one request to
	headerBackend = "X-Fault-Backend" // response: the node that answered (or failed)
	headerChosen  = "X-Fault-Chosen"  // internal: the choice, from Rewrite to ModifyResponse
)

func newFaultLB(t *testing.T, nodes []*fnode) *faultLB {
	t.Helper()
	lb := &faultLB{
		tr:     &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true, Proxy: nil},
		served: make([]atomic.Int64, len(nodes)),
		failed: make([]atomic.Int64, len(nodes)),
	}
	for _, n := range nodes {
		u, _ := url.Parse("http://" + n.addr)
		lb.targets = append(lb.targets, u)
		lb.ids = append(lb.ids, n.id)
	}
	proxy := &httputil.ReverseProxy{
		Transport:     lbTransport{lb},
		FlushInterval: -1,
		Rewrite: func(pr *httputil.ProxyRequest) {
			i := -1
			if v := pr.In.Header.Get(headerPlace); v != "" {
				fmt.Sscan(v, &i)
			}
			if i < 0 || i >= len(lb.targets) {
				i = int((lb.next.Add(1) - 1) % uint64(len(lb.targets)))
			}
			pr.Out.Header.Del(headerPlace)
			pr.Out.Header.Set(headerChosen, fmt.Sprint(i))
			lb.served[i].Add(1)
			pr.SetURL(lb.targets[i])
			pr.Out.Host = pr.In.Host
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set(headerBackend, lb.backendOf(resp.Request))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			id := lb.backendOf(r)
			w.Header().Set(headerBackend, id)
			if errors.Is(r.Context().Err(), context.Canceled) {
				w.WriteHeader(499) // the client went away: nobody reads this
				return
			}
			http.Error(w, "balancer: "+id+": "+err.Error(), http.StatusBadGateway)
		},
		ErrorLog: nil,
	}
	proxy.ErrorLog = discardLogger
	lb.srv = httptest.NewServer(proxy)
	t.Cleanup(func() {
		lb.srv.CloseClientConnections()
		lb.srv.Close()
		lb.tr.CloseIdleConnections()
	})
	return lb
}

// lbTransport sends a request to the node Rewrite chose, and to the next
// ones when a node refuses the connection.
type lbTransport struct{ lb *faultLB }

func (t lbTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	lb := t.lb
	var i int
	fmt.Sscan(req.Header.Get(headerChosen), &i)
	// A failed attempt closes the body; the request bodies of every
	// transport are small frames, kept for another attempt.
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(req.Body, 8<<20))
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	for tries := 1; ; tries++ {
		resp, err := lb.tr.RoundTrip(req)
		var op *net.OpError
		if err == nil || tries == len(lb.targets) || req.Context().Err() != nil || !errors.As(err, &op) || op.Op != "dial" {
			return resp, err
		}
		lb.failed[i].Add(1)
		i = (i + 1) % len(lb.targets)
		lb.served[i].Add(1)
		req = req.Clone(req.Context())
		if body != nil {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		req.URL.Host = lb.targets[i].Host
		req.Header.Set(headerChosen, fmt.Sprint(i))
	}
}

func (lb *faultLB) backendOf(r *http.Request) string {
	var i int
	if _, err := fmt.Sscan(r.Header.Get(headerChosen), &i); err != nil || i < 0 || i >= len(lb.ids) {
		return "?"
	}
	return lb.ids[i]
}

func (lb *faultLB) url(path string) string { return lb.srv.URL + path }
