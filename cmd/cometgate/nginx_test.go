package main

// The nginx example (configs/deploy/nginx-cometgate.conf) in front of two
// nodes.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/configs"
)

// TestNginxExample runs configs/deploy/nginx-cometgate.conf, as it is but
// for its addresses, in front of two nodes, and checks that every
// transport family delivers what is published, in order, nothing lost,
// while nginx spreads the requests over both nodes.
func TestNginxExample(t *testing.T) {
	// Small XHR streams: each ends after 4 KiB, so a session re-attaches
	// many times, through nginx, alternately to each node.
	a, b := startPair(t, "COMETGATE_SESSION_STREAM_LIMIT_BYTES=4096")
	px := startNginx(t, filepath.Join(deployDir, "nginx-cometgate.conf"), a, b)
	// The helpers address a node; here they go through the proxy.
	front := &node{addr: px.addr}
	origin := http.Header{"Origin": {"http://" + px.addr}}
	nodes := []*clusterNode{a, b}
	const count = 200

	for p, want := range map[string]int{"/healthz": 200, "/metrics": 403} {
		resp, err := http.Get(front.url(p))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s through nginx: %d, want %d", p, resp.StatusCode, want)
		}
	}

	t.Run("websocket", func(t *testing.T) {
		var streams []<-chan map[string]any
		for range 2 {
			// The Origin a browser sends: accepted only if nginx passed
			// the Host on with its port.
			conn := dialWSWith(t, front, "/ws", origin)
			packets, _ := wsPackets(t, conn)
			sendWS(t, conn, `{"op":"sub","id":1,"ch":"demo.rr"}`)
			streams = append(streams, packets)
		}
		deliverInOrder(t, nodes, streams, count)
	})

	t.Run("sse", func(t *testing.T) {
		var streams []<-chan map[string]any
		for range 2 {
			streams = append(streams, openSSEWith(t, front.url("/sse?ch=demo.rr"), origin).packets)
		}
		seqs := deliverInOrder(t, nodes, streams, count)
		// Upstream frames of an SSE session go by POST: two in a row, so
		// one lands on the node that does not own the session.
		c := newTestClient(t)
		for i := range 2 {
			frame := fmt.Sprintf(`{"op":"pub","id":%d,"ch":"demo.rr","data":%d}`, 1001+i, count+i)
			req, _ := http.NewRequest(http.MethodPost, front.url("/session/"+seqs[0].sid+"/send"), strings.NewReader(frame))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Origin", origin.Get("Origin"))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("send %d through nginx: %d %s", i, resp.StatusCode, body)
			}
		}
		deadline := time.After(30 * time.Second)
		for !seqs[0].oks[1001] || !seqs[0].oks[1002] || seqs[0].msgs < count+2 || seqs[1].msgs < count+2 {
			select {
			case p, ok := <-streams[0]:
				if !ok {
					t.Fatal("stream 0 ended")
				}
				seqs[0].add(asPacket(t, p))
			case p, ok := <-streams[1]:
				if !ok {
					t.Fatal("stream 1 ended")
				}
				seqs[1].add(asPacket(t, p))
			case <-deadline:
				t.Fatalf("sends not answered: oks %v, messages %d and %d", seqs[0].oks, seqs[0].msgs, seqs[1].msgs)
			}
		}
	})

	t.Run("long-polling", func(t *testing.T) {
		c := newTestClient(t)
		seq := &sequence{t: t}
		for _, p := range pollOnce(t, c, front.url("/poll?ch=demo.rr")) {
			seq.add(p)
		}
		var wg sync.WaitGroup
		defer wg.Wait()
		pubErr := publishAll(&wg, newTestClient(t), nodes, "demo.rr", count)
		polls := 0
		deadline := time.Now().Add(90 * time.Second)
		for seq.msgs < count {
			if time.Now().After(deadline) {
				t.Fatalf("got %d of %d messages in %d polls", seq.msgs, count, polls)
			}
			polls++
			for _, p := range pollOnce(t, c, front.url(fmt.Sprintf("/poll/%s?ack=%d", seq.sid, seq.lastSeq))) {
				seq.add(p)
			}
		}
		if err := <-pubErr; err != nil {
			t.Fatal(err)
		}
		t.Logf("%d messages in %d polls, %d resent packets", seq.msgs, polls, seq.dups)
	})

	t.Run("xhr-streaming", func(t *testing.T) {
		c := newTestClient(t)
		seq := &sequence{t: t}
		var wg sync.WaitGroup
		defer wg.Wait()
		var pubErr <-chan error
		streams := 0
		u := front.url("/xhr_stream?ch=demo.rr")
		deadline := time.Now().Add(90 * time.Second)
		for seq.msgs < count {
			if time.Now().After(deadline) {
				t.Fatalf("got %d of %d messages in %d streams", seq.msgs, count, streams)
			}
			streams++
			readXHRStream(t, c, u, func(p packet) bool {
				seq.add(p)
				if p.T == "hello" {
					// The subscription is in place before the hello goes out.
					pubErr = publishAll(&wg, newTestClient(t), nodes, "demo.rr", count)
				}
				return seq.msgs < count
			})
			u = front.url(fmt.Sprintf("/xhr_stream/%s?ack=%d", seq.sid, seq.lastSeq))
		}
		if pubErr == nil {
			t.Fatal("no hello")
		}
		if err := <-pubErr; err != nil {
			t.Fatal(err)
		}
		if streams < 4 {
			t.Errorf("only %d streams: the session did not re-attach through nginx", streams)
		}
		t.Logf("%d messages over %d streams, %d resent packets", seq.msgs, streams, seq.dups)
	})

	// Every family reached both nodes through nginx, and nginx answered
	// no request with an error of its own. WebSocket and SSE requests
	// are logged when their connections end (the subtests closed them).
	px.waitBothNodes(t, []string{"/ws", "/sse", "/session/", "/poll", "/xhr_stream"}, a, b)
}

// deliverInOrder waits until every stream's session said hello and
// subscribed, checks that nginx put the sessions on different nodes, then
// publishes 0..count-1 on demo.rr (alternately through each node) and
// reads until every session got them all, in order. It returns the
// sessions' sequences.
func deliverInOrder(t *testing.T, nodes []*clusterNode, streams []<-chan map[string]any, count int) []*sequence {
	t.Helper()
	seqs := make([]*sequence, len(streams))
	owners := map[string]bool{}
	for i, packets := range streams {
		seqs[i] = &sequence{t: t}
		// The hello, then the subscription's ok; nothing comes between.
		seqs[i].add(asPacket(t, next(t, packets, "hello")))
		seqs[i].add(asPacket(t, next(t, packets, "ok")))
		owners[strings.SplitN(seqs[i].sid, ".", 2)[0]] = true
	}
	if len(owners) != len(nodes) {
		t.Fatalf("sessions on nodes %v: nginx did not alternate between the %d nodes", owners, len(nodes))
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	pubErr := publishAll(&wg, newTestClient(t), nodes, "demo.rr", count)
	deadline := time.After(60 * time.Second)
	for i, s := range seqs {
		for s.msgs < count {
			select {
			case p, ok := <-streams[i]:
				if !ok {
					t.Fatalf("session %d ended after %d of %d messages", i, s.msgs, count)
				}
				s.add(asPacket(t, p))
			case err := <-pubErr:
				if err != nil {
					t.Fatal(err)
				}
				pubErr = nil
			case <-deadline:
				t.Fatalf("session %d got %d of %d messages", i, s.msgs, count)
			}
		}
	}
	if pubErr != nil {
		if err := <-pubErr; err != nil {
			t.Fatal(err)
		}
	}
	return seqs
}

// asPacket converts a packet read as a map (SSE, WebSocket helpers) to the
// form sequence checks.
func asPacket(t *testing.T, m map[string]any) packet {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var p packet
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("packet %s: %v", b, err)
	}
	return p
}

// nginxProxy is an nginx master process (and its worker) run by a test.
type nginxProxy struct {
	addr      string // where it listens
	accessLog string // "METHOD URI STATUS UPSTREAM" per request
}

// renderNginx makes a runnable nginx.conf of the example snippet: the
// snippet itself, with its listen address and upstream servers replaced,
// included in a main configuration that keeps every file nginx writes in
// dir and runs in the foreground.
func renderNginx(t *testing.T, example, dir, listen string, upstreams []string) string {
	t.Helper()
	src, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	listenRE := regexp.MustCompile(`(?m)^(\s*)listen\s+[^;]+;`)
	if n := len(listenRE.FindAll(src, -1)); n != 1 {
		t.Fatalf("%s: %d listen directives, want 1", example, n)
	}
	snippet := listenRE.ReplaceAll(src, []byte("${1}listen "+listen+";"))
	upstreamRE := regexp.MustCompile(`(?s)upstream\s+cometgate\s*\{.*?\}`)
	serverRE := regexp.MustCompile(`(?m)^(\s*)server\s+[^\s;{]+;\n`)
	block := upstreamRE.Find(snippet)
	if block == nil {
		t.Fatalf("%s: no upstream cometgate block", example)
	}
	first := serverRE.FindSubmatch(block)
	if len(serverRE.FindAll(block, -1)) < 2 {
		t.Fatalf("%s: the upstream block lists fewer than two servers", example)
	}
	var servers strings.Builder
	for _, u := range upstreams {
		fmt.Fprintf(&servers, "%sserver %s;\n", first[1], u)
	}
	done := false
	newBlock := serverRE.ReplaceAllFunc(block, func([]byte) []byte {
		if done {
			return nil
		}
		done = true
		return []byte(servers.String())
	})
	snippet = bytes.Replace(snippet, block, newBlock, 1)
	snippetPath := filepath.Join(dir, "cometgate.conf")
	if err := os.WriteFile(snippetPath, snippet, 0o644); err != nil {
		t.Fatal(err)
	}

	user := ""
	if os.Geteuid() == 0 {
		// Workers as root too: they can then reach the temporary folders.
		user = "user root root;\n"
	}
	var temps strings.Builder
	for _, d := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&temps, "    %s_temp_path %s;\n", d, filepath.Join(dir, d))
	}
	main := fmt.Sprintf(`daemon off;
%sworker_processes 1;
pid %s;
error_log stderr notice;
events {
    worker_connections 1024;
}
http {
    log_format cometgate_test '$request_method $uri $status $upstream_addr';
    access_log %s cometgate_test;
%s    include %s;
}
`, user, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "access.log"), temps.String(), snippetPath)
	mainPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(mainPath, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	return mainPath
}

// startNginx runs the example in front of the nodes, on a free port, and
// waits until it answers. The test's cleanup stops it and waits for it.
func startNginx(t *testing.T, example string, nodes ...*clusterNode) *nginxProxy {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the nginx example test needs nginx (.ci/services.sh installs it): %v", err)
		}
		t.Skipf("the nginx example test needs nginx: apt-get install nginx (%v)", err)
	}
	var upstreams []string
	for _, n := range nodes {
		upstreams = append(upstreams, n.addr)
	}
	// The port is free when chosen but may be taken before nginx binds
	// it: then nginx exits, and another port is tried.
	for attempt := 1; ; attempt++ {
		dir := t.TempDir()
		px := &nginxProxy{addr: freePort(t), accessLog: filepath.Join(dir, "access.log")}
		conf := renderNginx(t, example, dir, px.addr, upstreams)
		logs := &syncBuffer{}
		cmd := exec.Command(bin, "-e", "stderr", "-p", dir, "-c", conf)
		cmd.Stdout, cmd.Stderr = logs, logs
		// If the test binary dies, nginx goes with it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM) // fast shutdown
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				t.Errorf("nginx did not stop on SIGTERM\n%s", logs)
			}
		}
		err := waitNginx(px.addr, exited)
		if err == nil {
			t.Cleanup(stop)
			return px
		}
		stop()
		if attempt < 3 && strings.Contains(logs.String(), "Address already in use") {
			continue
		}
		t.Fatalf("nginx: %v\n%s", err, logs)
	}
}

// waitNginx polls addr until nginx answers or exits.
func waitNginx(addr string, exited <-chan struct{}) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitBothNodes waits until nginx's access log shows requests under each
// path prefix sent to each node, and fails on any request nginx answered
// with a server error.
func (px *nginxProxy) waitBothNodes(t *testing.T, prefixes []string, nodes ...*clusterNode) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		data, err := os.ReadFile(px.accessLog)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]map[string]int{} // prefix → upstream → requests
		for line := range strings.Lines(string(data)) {
			f := strings.SplitN(strings.TrimSpace(line), " ", 4)
			if len(f) != 4 {
				t.Fatalf("access log line %q", line)
			}
			if status, _ := strconv.Atoi(f[2]); status >= 500 {
				t.Fatalf("nginx answered %s %s with %s (upstreams %s)", f[0], f[1], f[2], f[3])
			}
			// A request nginx retried lists every upstream it tried
			// ("a, b"); the last one answered.
			tried := strings.Split(strings.ReplaceAll(f[3], " : ", ", "), ", ")
			upstream := tried[len(tried)-1]
			for _, p := range prefixes {
				if strings.HasPrefix(f[1], p) {
					if seen[p] == nil {
						seen[p] = map[string]int{}
					}
					seen[p][upstream]++
				}
			}
		}
		var missing []string
		for _, p := range prefixes {
			for _, n := range nodes {
				if seen[p][n.addr] == 0 {
					missing = append(missing, p+" on "+n.id)
				}
			}
		}
		if len(missing) == 0 {
			t.Logf("requests per path and node: %v", seen)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx sent no requests for %v; per path and node: %v", missing, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkNginxDirectives checks the directives the transports need in the
// nginx example; TestNginxExample runs it.
func checkNginxDirectives(t *testing.T) {
	src := string(readDeployFile(t, "nginx-cometgate.conf"))
	re := regexp.MustCompile(`(?m)^\s*([a-z_0-9]+)\s+([^;{#]*);`)
	dirs := map[string][]string{}
	for _, m := range re.FindAllStringSubmatch(src, -1) {
		dirs[m[1]] = append(dirs[m[1]], strings.Join(strings.Fields(m[2]), " "))
	}
	for _, want := range []struct{ name, value string }{
		{"proxy_http_version", "1.1"},
		{"proxy_buffering", "off"},
		{"proxy_cache", "off"},
		{"proxy_set_header", "Upgrade $http_upgrade"},
		{"proxy_set_header", "Host $http_host"},
		{"proxy_set_header", "X-Forwarded-For $proxy_add_x_forwarded_for"},
	} {
		if !slices.Contains(dirs[want.name], want.value) {
			t.Errorf("nginx example: no %s %s (has %q)", want.name, want.value, dirs[want.name])
		}
	}
	connection := false
	for _, v := range dirs["proxy_set_header"] {
		connection = connection || strings.HasPrefix(v, "Connection $")
	}
	if !connection {
		t.Error("nginx example: the Connection header is not set from Upgrade")
	}
	for _, sticky := range []string{"ip_hash", "hash", "sticky"} {
		if _, ok := dirs[sticky]; ok || strings.Contains(src, "\n    "+sticky+";") {
			t.Errorf("nginx example: %s makes sessions sticky; cometgate needs no stickiness", sticky)
		}
	}
	defaults, err := configs.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := defaults.Session.Heartbeat
	if len(dirs["proxy_read_timeout"]) != 1 {
		t.Fatalf("nginx example: proxy_read_timeout %q, want one", dirs["proxy_read_timeout"])
	}
	if d := systemdSeconds(t, dirs["proxy_read_timeout"][0]); d <= heartbeat {
		t.Errorf("nginx example: proxy_read_timeout %v does not exceed session.heartbeat %v (a long-poll is held that long)", d, heartbeat)
	}
}
