package main

// TestFaults is the fault-injection suite of issue 9: three cometgate
// nodes as real processes on one broker (the binary built once per run),
// a plain round-robin balancer in front of them (faultLB: no stickiness,
// a refused connection goes to the next node), publishers at ~100 msg/s
// on a channel with history and ~100 msg/s on one without (through the
// balancer's POST /api/publish, each message numbered and retried until
// confirmed), and three clients of every transport family, one opened on
// each node (faults_native_test.go, faults_sockjs_test.go), while a fault
// hits the cluster:
//
//	kill9        kill -9 one node (it does not come back)
//	sigterm      SIGTERM one node: it drains and exits
//	rolling      SIGTERM, wait for the exit, start again, for each node in turn
//	brokerdown   the nodes' connections to the broker cut (10 s; 20 s in
//	             the full form) by a TCP proxy between them (the broker
//	             itself stays up, and a channel with and one without
//	             history are published straight into it meanwhile)
//	natscluster  (NATS only) a three-server NATS cluster, the history
//	             stream with three replicas, loses the stream's leader
//	             (kill -9)
//
// on NATS with JetStream (test-owned nats-server processes on free ports)
// and on RabbitMQ (a stream queue for history; unique exchange and stream
// names per scenario). Each (broker, scenario, transport, assertion) is a
// subtest, judged on every client's record (faults_judge_test.go):
//
//	history-no-loss       every message of a channel with history published
//	                      after the client first subscribed arrived
//	history-no-dup        none arrived twice (the message says whether it
//	                      was stored twice or delivered twice)
//	history-in-order      none arrived after a later one
//	history-no-false-gap  no gap packet where nothing around it was lost
//	                      (issue 9, item 6)
//	plain-gap-on-loss     on a channel without history, every run of lost
//	                      messages was followed by a gap packet before the
//	                      next loss
//	sessions-kept         no session on a node the fault did not touch was
//	                      replaced by a new one; a SockJS-over-HTTP session
//	                      one of whose requests failed at the struck node
//	                      (the balancer had sent it there) was touched:
//	                      sockjs-client ends a session on a failed request
//	                      (counted apart, "via hit")
//	drain-3000            (sigterm, rolling) every client whose session was
//	                      on a draining node got close 3000 in that session
//	stream-replicas       (natscluster) the stream keeps its 3 replicas
//
// Recovery times (from the fault to a hit client's first message in a new
// session; for an outage from the broker's return) are logged per scenario
// and collected into one table at the end (COMETGATE_FAULTS_REPORT=FILE
// writes it to a file too).
//
// The suite runs in every `go test` of this package (and so in .ci/run)
// in its compact form: every scenario on both brokers, with short phases
// (a 10 s outage, 40 history messages per steady phase) and up to three
// scenarios at once. COMETGATE_FAULTS selects another form:
//
//	COMETGATE_FAULTS=full  the long form: a 20 s outage, 150 messages per
//	                       steady phase, three scenarios at once
//	COMETGATE_FAULTS=off   skipped (as with -short)
//
// One scenario:
//
//	go test -race -count=1 -run 'TestFaults/nats/kill9$' ./cmd/cometgate/
//
// COMETGATE_FAULTS_PARALLEL bounds the scenarios that run at once;
// COMETGATE_FAULTS_LOGDIR keeps every node's and nats-server's log and
// every client's record (clients/*.events) there.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/cometgate/cometgate/brokers/brokertest"
)

// The suite's timing. The waits bound how long a scenario waits for
// what must happen; they are not expected durations.
const (
	faultRate         = 10 * time.Millisecond // per channel: 100 msg/s each, 200 msg/s in all
	faultHeartbeat    = "2s"
	faultSetupWait    = 10 * time.Second
	faultRecoverWait  = 30 * time.Second
	faultFinalWait    = 30 * time.Second
	faultHealthyAfter = 3 * time.Second
)

// faultForm is what differs between the compact and the full suite.
type faultForm struct {
	name       string
	outage     time.Duration // brokerdown: how long the broker is unreachable
	steadyMsgs int           // history messages published in each steady phase
	parallel   int           // scenarios at once (COMETGATE_FAULTS_PARALLEL overrides)
}

var (
	faultCompact = faultForm{name: "compact", outage: 10 * time.Second, steadyMsgs: 40, parallel: 3}
	faultFull    = faultForm{name: "full", outage: 20 * time.Second, steadyMsgs: 150, parallel: 3}
)

// faultTransports are the client kinds, in table order.
var faultTransports = []struct {
	name string
	run  runner
}{
	{"websocket", runWS},
	{"sse", runSSE},
	{"xhr-streaming", runPollFamily(famClientXHR)},
	{"long-polling", runPollFamily(famClientPoll)},
	{"htmlfile", runPollFamily(famClientHTML)},
	{"jsonp", runPollFamily(famClientJSONP)},
	{"sockjs-xhr-streaming", runSockJS(sjsXHRStreaming)},
	{"sockjs-xhr-polling", runSockJS(sjsXHRPolling)},
	{"sockjs-websocket", runSockJS(sjsWebsocket)},
}

var faultScenarios = []struct {
	name    string
	brokers []string
}{
	{"kill9", []string{"nats", "rabbitmq"}},
	{"sigterm", []string{"nats", "rabbitmq"}},
	{"rolling", []string{"nats", "rabbitmq"}},
	{"brokerdown", []string{"nats", "rabbitmq"}},
	{"natscluster", []string{"nats"}},
}

func TestFaults(t *testing.T) {
	var form faultForm
	switch v := os.Getenv("COMETGATE_FAULTS"); v {
	case "", "compact":
		form = faultCompact
	case "full", "1":
		form = faultFull
	case "off":
		t.Skip("COMETGATE_FAULTS=off")
	default:
		t.Fatalf("COMETGATE_FAULTS=%q: want compact (the default), full or off", v)
	}
	if testing.Short() {
		t.Skip("the fault-injection suite runs real nodes and brokers for minutes: not with -short")
	}
	parallel := form.parallel
	if v := os.Getenv("COMETGATE_FAULTS_PARALLEL"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("COMETGATE_FAULTS_PARALLEL=%q: want a positive number", v)
		}
		parallel = n
	}
	began := time.Now()
	bin := buildCometgate(t, t.TempDir())
	natsBin := needNATSServer(t)
	sem := make(chan struct{}, parallel)
	table := &faultTable{}
	t.Cleanup(func() { table.log(t, form.name, time.Since(began)) })
	for _, broker := range []string{"nats", "rabbitmq"} {
		t.Run(broker, func(t *testing.T) {
			t.Parallel()
			if broker == "rabbitmq" {
				needRabbit(t)
			}
			for _, sc := range faultScenarios {
				if !slices.Contains(sc.brokers, broker) {
					continue
				}
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					sem <- struct{}{}
					defer func() { <-sem }()
					s := &scen{t: t, name: sc.name, broker: broker, bin: bin, natsBin: natsBin, table: table, form: form}
					s.run()
				})
			}
		})
	}
}

// scen is one run of a scenario on one broker.
type scen struct {
	t       *testing.T
	name    string
	broker  string
	bin     string
	natsBin string
	table   *faultTable
	form    faultForm

	dir      string // logs and configuration
	nodes    []*fnode
	servers  []*natsProc
	bproxy   *brokertest.Proxy // brokerdown: between the nodes and the broker
	lb       *faultLB
	env      *clientEnv
	clients  []*fclient
	chans    []*fchan
	main     *publisher // the API-published channel with history: the progress signal
	steps    []faultStep
	stream   string
	exchange string
	began    time.Time
	stopped  time.Time // the clients stopped: the record ends
	replicas [2]int    // natscluster: the stream's replicas once the nodes ran, and after the fault
	notes    []string  // what the scenario observed outside the assertions
}

// fchan is a channel of the scenario and its publisher.
type fchan struct {
	chanSpec
	via string // "api": the balancer's POST /api/publish; "broker": straight into the broker
	pub *publisher
}

// faultStep is one fault: when it struck and when it was over.
type faultStep struct {
	what   string
	node   int // the node it touched, -1 for none
	drain  bool
	outage bool // recovery counts from end (the broker is back)
	start  time.Time
	end    time.Time
}

func (s *scen) logf(format string, args ...any) {
	s.t.Helper()
	s.t.Logf("%s %s/%s: %s", time.Now().Format("15:04:05.000"), s.broker, s.name, fmt.Sprintf(format, args...))
}

func (s *scen) run() {
	t := s.t
	s.began = time.Now()
	s.dir = t.TempDir()
	if d := os.Getenv("COMETGATE_FAULTS_LOGDIR"); d != "" {
		// Empty: nats-server keeps its JetStream state here, which must
		// not come back from an earlier run.
		s.dir = filepath.Join(d, s.broker+"-"+s.name)
		if err := os.RemoveAll(s.dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.setupBroker()
	s.startNodes()
	s.lb = newFaultLB(t, s.nodes)
	s.env = &clientEnv{base: s.lb.url(""), wsBase: "ws" + strings.TrimPrefix(s.lb.url(""), "http"), sockPrefix: "/sockjs"}
	for _, n := range s.nodes {
		s.env.nodeIDs = append(s.env.nodeIDs, n.id)
	}
	s.startPublishers()
	for _, ch := range s.chans {
		s.env.chans = append(s.env.chans, ch.chanSpec)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stopClients := func() {
		if s.stopped.IsZero() {
			s.stopped = time.Now()
		}
		cancel()
		wg.Wait()
	}
	defer stopClients()
	for _, tr := range faultTransports {
		for home := range s.nodes {
			c := newClient(s.env, tr.name, home)
			s.clients = append(s.clients, c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.run(ctx, tr.run)
			}()
		}
	}

	// Every client subscribed, then publishing starts: every message from
	// then on is expected by every client.
	s.waitFor("every client subscribed", faultSetupWait, func() []string {
		return s.clientsWhere(func(c *fclient) bool { return !c.subscribed() })
	})
	var pwg sync.WaitGroup
	defer pwg.Wait()
	pctx, pcancel := context.WithCancel(context.Background())
	defer pcancel() // first: then the publishers end
	for _, ch := range s.chans {
		p := ch.pub
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			p.run(pctx)
		}()
	}
	s.waitSteady("warm-up")

	switch s.name {
	case "kill9":
		s.kill9()
	case "sigterm":
		s.sigterm()
	case "rolling":
		s.rolling()
	case "brokerdown":
		s.brokerDown()
	case "natscluster":
		s.natsCluster()
	}
	s.waitSteady("after the fault")

	// The end: the publishers stop, and every client gets to the last
	// message (or the wait ends: what it did not get is lost).
	for _, ch := range s.chans {
		ch.pub.stop()
	}
	pwg.Wait()
	s.waitFor("clients at the last message", faultFinalWait, func() []string {
		var late []string
		for _, c := range s.live() {
			for _, ch := range s.chans {
				if last := ch.pub.count() - 1; c.max(ch.name) < last {
					late = append(late, fmt.Sprintf("%s (%s %d/%d)", c.name, ch.name, c.max(ch.name), last))
				}
			}
		}
		return late
	})
	stopClients()
	for _, ch := range s.chans {
		s.logf("publisher of %s (%s): %s", ch.name, ch.via, ch.pub.stats())
	}
	s.logf("ran %v; balancer: served %v, failed %v", time.Since(s.began).Round(time.Second), counts(s.lb.served), counts(s.lb.failed))
	s.logNodeLogs()
	s.dumpClients()
	s.judge()
}

func counts(a []atomic.Int64) []int64 {
	out := make([]int64, len(a))
	for i := range a {
		out[i] = a[i].Load()
	}
	return out
}

// ---- setup -----------------------------------------------------------------

func (s *scen) setupBroker() {
	t := s.t
	suffix := fmt.Sprintf("%d", rand.Uint32())
	s.stream = "cgfault_" + s.name + "_" + suffix
	switch s.broker {
	case "nats":
		count := 1
		if s.name == "natscluster" {
			count = 3
		}
		s.servers = newNATSServers(t, s.natsBin, s.dir, count)
		if s.name == "brokerdown" {
			s.bproxy = brokertest.NewProxy(t, strings.TrimPrefix(s.servers[0].url(), "nats://"))
		}
		if s.name == "natscluster" {
			// The stream exists with three replicas before the nodes
			// start; the nodes create or update it at start-up.
			nc, err := nats.Connect(s.servers[0].url())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, _ := nc.JetStream(nats.MaxWait(10 * time.Second))
			// Until every server has joined the JetStream cluster, three
			// replicas find "no suitable peers for placement".
			deadline := time.Now().Add(60 * time.Second)
			for {
				_, err := js.AddStream(&nats.StreamConfig{Name: s.stream, Subjects: []string{"fault.h.>"},
					Replicas: 3, Storage: nats.FileStorage, MaxBytes: 64 << 20})
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("creating the stream with 3 replicas: %v", err)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	case "rabbitmq":
		s.exchange = "cometgate-fault-" + suffix
		if s.name == "brokerdown" {
			u, err := amqp.ParseURI(amqpURL())
			if err != nil {
				t.Fatal(err)
			}
			s.bproxy = brokertest.NewProxy(t, fmt.Sprintf("%s:%d", u.Host, u.Port))
		}
		// After the nodes are gone (cleanups run last-in first-out).
		t.Cleanup(func() { deleteAMQP(t, s.exchange, s.stream) })
	}
}

// brokerURL is where the nodes connect.
func (s *scen) brokerEnv() []string {
	switch s.broker {
	case "nats":
		var urls []string
		for _, srv := range s.servers {
			urls = append(urls, srv.url())
		}
		if s.bproxy != nil {
			urls = []string{"nats://" + s.bproxy.Addr()}
		}
		return []string{"COMETGATE_BROKER_KIND=nats", "COMETGATE_BROKER_NATS_URLS=" + strings.Join(urls, ","),
			"COMETGATE_BROKER_NATS_RECONNECT_WAIT=250ms", "COMETGATE_BROKER_NATS_MAX_RECONNECT_WAIT=2s"}
	default:
		u := amqpURL()
		if s.bproxy != nil {
			pu, _ := amqp.ParseURI(u)
			pu.Host, pu.Port = "127.0.0.1", 0
			host, port, _ := strings.Cut(s.bproxy.Addr(), ":")
			pu.Host = host
			pu.Port, _ = strconv.Atoi(port)
			u = pu.String()
		}
		return []string{"COMETGATE_BROKER_KIND=amqp", "COMETGATE_BROKER_AMQP_URL=" + u,
			"COMETGATE_BROKER_AMQP_EXCHANGE=" + s.exchange,
			"COMETGATE_BROKER_AMQP_RECONNECT_WAIT=250ms", "COMETGATE_BROKER_AMQP_MAX_RECONNECT_WAIT=2s"}
	}
}

func (s *scen) startNodes() {
	t := s.t
	history := "jetstream"
	if s.broker == "rabbitmq" {
		history = "stream"
	}
	cfg := filepath.Join(s.dir, "cometgate.yaml")
	yaml := fmt.Sprintf(`channels:
  - pattern: "fault.h.>"
    subscribe: anyone
    publish: anyone
    history: %s
    history_stream: %s
    history_max_bytes: 67108864
  - pattern: "fault.>"
    subscribe: anyone
    publish: anyone
sockjs:
  - prefix: /sockjs
    mode: pubsub
    websocket: true
    heartbeat_delay: %s
    disconnect_delay: 5s
`, history, s.stream, faultHeartbeat)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append([]string{
		"COMETGATE_SESSION_HEARTBEAT=" + faultHeartbeat,
		"COMETGATE_SESSION_DISCONNECT_DELAY=5s",
		"COMETGATE_HTTP_SHUTDOWN_TIMEOUT=5s",
	}, s.brokerEnv()...)
	for i := range 3 {
		s.nodes = append(s.nodes, &fnode{idx: i, id: fmt.Sprintf("n%d", i+1), addr: freePort(t),
			bin: s.bin, cfg: cfg, env: env, logDir: s.dir})
	}
	for _, n := range s.nodes {
		n.start(t)
	}
	waitPeers(t, s.nodes)
}

// startPublishers makes the scenario's channels: one with history and one
// without, published through the balancer's publish API (retried until
// confirmed, as a server-side publisher would); for a broker outage also
// one of each published straight into the broker, which the cut-off
// nodes miss and must recover (history) or report (gap).
func (s *scen) startPublishers() {
	add := func(name string, history bool, via string) {
		ch := &fchan{chanSpec: chanSpec{name: name, history: history}, via: via}
		ch.pub = s.newPublisher(name, history, via)
		s.chans = append(s.chans, ch)
	}
	add("fault.h.x", true, "api")
	add("fault.p.x", false, "api")
	if s.name == "brokerdown" {
		add("fault.h.b", true, "broker")
		add("fault.p.b", false, "broker")
	}
	s.main = s.chans[0].pub
}

// ---- waiting ---------------------------------------------------------------

// waitFor polls cond (the names of what is not there yet) until it is
// empty or d passed; it logs what was still missing.
func (s *scen) waitFor(what string, d time.Duration, cond func() []string) bool {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		missing := cond()
		if len(missing) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			s.logf("%s: still not after %v: %s", what, d, strings.Join(missing, ", "))
			s.notes = append(s.notes, fmt.Sprintf("%s: not after %v: %s", what, d, strings.Join(missing, ", ")))
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *scen) clientsWhere(f func(*fclient) bool) []string {
	var out []string
	for _, c := range s.clients {
		if f(c) {
			out = append(out, c.name)
		}
	}
	return out
}

// live are the clients that have not stopped for good.
func (s *scen) live() []*fclient {
	var out []*fclient
	for _, c := range s.clients {
		if !c.isStopped() {
			out = append(out, c)
		}
	}
	return out
}

// healthy are the clients that received a history message lately.
func (s *scen) healthy() []*fclient {
	var out []*fclient
	since := time.Now().Add(-faultHealthyAfter)
	for _, c := range s.clients {
		if !c.isStopped() && c.lastMsg(s.chans[0].name).After(since) {
			out = append(out, c)
		}
	}
	return out
}

// waitSteady lets the form's steadyMsgs history messages go out and waits until
// the clients that receive have them.
func (s *scen) waitSteady(phase string) {
	target := s.main.count() + s.form.steadyMsgs
	s.waitFor(phase+": publisher", faultRecoverWait, func() []string {
		if n := s.main.count(); n < target {
			return []string{fmt.Sprintf("history publisher at %d of %d", n, target)}
		}
		return nil
	})
	s.waitFor(phase+": clients", faultRecoverWait, func() []string {
		var late []string
		for _, c := range s.live() {
			if c.max(s.chans[0].name) < target-1 {
				late = append(late, c.name)
			}
		}
		return late
	})
	s.logf("%s: %d of %d clients receiving", phase, len(s.healthy()), len(s.clients))
}

// recovered waits, after a step, until every client received a history
// message published after it ended.
func (s *scen) recovered(step faultStep) {
	target := s.main.count()
	s.waitFor("recovery after "+step.what, faultRecoverWait, func() []string {
		var late []string
		for _, c := range s.live() {
			if c.max(s.chans[0].name) < target {
				late = append(late, c.name)
			}
		}
		return late
	})
}

// ---- faults ----------------------------------------------------------------

func (s *scen) addStep(st faultStep) {
	s.steps = append(s.steps, st)
	s.logf("fault: %s (%v)", st.what, st.end.Sub(st.start).Round(time.Millisecond))
}

func (s *scen) kill9() {
	n := s.nodes[0]
	st := faultStep{what: "kill -9 " + n.id, node: n.idx, start: time.Now()}
	p := n.current()
	p.signal(syscall.SIGKILL)
	if err := p.wait(10 * time.Second); err != nil {
		s.t.Fatal(err)
	}
	st.end = st.start
	s.addStep(st)
	s.recovered(st)
}

// drain sends SIGTERM to node n and waits for it to exit.
func (s *scen) drain(n *fnode) faultStep {
	st := faultStep{what: "SIGTERM " + n.id, node: n.idx, drain: true, start: time.Now()}
	p := n.current()
	p.signal(syscall.SIGTERM)
	if err := p.wait(30 * time.Second); err != nil {
		s.t.Fatalf("%v: the drain did not end\n%s", err, p.logTail(4096))
	}
	st.end = time.Now()
	return st
}

func (s *scen) sigterm() {
	st := s.drain(s.nodes[0])
	s.addStep(st)
	s.recovered(st)
}

func (s *scen) rolling() {
	for _, n := range s.nodes {
		st := s.drain(n)
		st.what += " and start again"
		n.start(s.t)
		st.end = time.Now()
		s.addStep(st)
		s.recovered(st)
	}
}

func (s *scen) brokerDown() {
	st := faultStep{what: fmt.Sprintf("broker unreachable for %v", s.form.outage), node: -1, outage: true, start: time.Now()}
	s.bproxy.Cut()
	time.Sleep(s.form.outage) // the fault's own duration
	s.bproxy.Restore()
	st.end = time.Now()
	s.addStep(st)
	s.recovered(st)
}

// natsCluster kills the NATS server that leads the history stream, whose
// three replicas are current. The nodes have no key for a stream's
// replicas and create or update it with one at start-up, so the suite
// does what an operator would: it sets the stream back to three replicas
// (recorded for stream-replicas), then kills the leader; afterwards it
// records the replicas again, since a node that reconnects updates the
// stream once more.
func (s *scen) natsCluster() {
	t := s.t
	info, err := s.streamInfo(s.servers[0])
	if err != nil {
		t.Fatal(err)
	}
	s.replicas[0] = info.Config.Replicas
	if info.Config.Replicas < 3 {
		cfg := info.Config
		cfg.Replicas = 3
		nc, err := nats.Connect(s.servers[0].url())
		if err != nil {
			t.Fatal(err)
		}
		js, _ := nc.JetStream(nats.MaxWait(10 * time.Second))
		_, err = js.UpdateStream(&cfg)
		nc.Close()
		if err != nil {
			t.Fatalf("setting the stream back to 3 replicas: %v", err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if info, err = s.streamInfo(s.servers[0]); err != nil {
			t.Fatal(err)
		}
		current := 0
		if info.Cluster != nil && info.Cluster.Leader != "" {
			for _, r := range info.Cluster.Replicas {
				if r.Current {
					current++
				}
			}
		}
		if info.Config.Replicas == 3 && current == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream did not get 3 current replicas: %+v %+v", info.Config, info.Cluster)
		}
		time.Sleep(200 * time.Millisecond)
	}
	victim := s.servers[0]
	for _, srv := range s.servers {
		if srv.name == info.Cluster.Leader {
			victim = srv
		}
	}
	st := faultStep{what: "kill -9 nats-server " + victim.name + " (the stream's leader)", node: -1, start: time.Now()}
	p := victim.current()
	p.signal(syscall.SIGKILL)
	if err := p.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	st.end = st.start
	s.addStep(st)
	s.recovered(st)
	// The replicas now, from a server that is left (-1: none answered).
	s.replicas[1] = -1
	s.waitFor("the stream's info after the fault", faultRecoverWait, func() []string {
		var errs []string
		for _, srv := range s.servers {
			if srv == victim {
				continue
			}
			info, err := s.streamInfo(srv)
			if err == nil {
				s.replicas[1] = info.Config.Replicas
				return nil
			}
			errs = append(errs, srv.name+": "+err.Error())
		}
		return errs
	})
}

func (s *scen) streamInfo(srv *natsProc) (*nats.StreamInfo, error) {
	nc, err := nats.Connect(srv.url(), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, _ := nc.JetStream(nats.MaxWait(5 * time.Second))
	info, err := js.StreamInfo(s.stream)
	if err != nil {
		return nil, fmt.Errorf("stream info from %s: %w", srv.name, err)
	}
	return info, nil
}

// ---- node logs -------------------------------------------------------------

var (
	logMsgRE = regexp.MustCompile(`level=(WARN|ERROR) msg="((?:[^"\\]|\\.)*)"`)
	logErrRE = regexp.MustCompile(` err=("(?:[^"\\]|\\.)*"|\S+)`)
)

// logNodeLogs logs how often each warning and error occurred in each
// node's log, with the error of its last occurrence: the first place to
// look when an assertion fails (a CI log keeps nothing else).
func (s *scen) logNodeLogs() {
	for _, n := range s.nodes {
		tally := map[string]int{}
		lastErr := map[string]string{}
		for _, line := range strings.Split(n.logs(), "\n") {
			if m := logMsgRE.FindStringSubmatch(line); m != nil {
				key := m[1] + " " + m[2]
				tally[key]++
				if e := logErrRE.FindStringSubmatch(line); e != nil {
					lastErr[key] = e[1]
				}
			}
		}
		keys := make([]string, 0, len(tally))
		for k := range tally {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return tally[keys[i]] > tally[keys[j]] })
		var parts []string
		for _, k := range keys {
			part := fmt.Sprintf("%d× %s", tally[k], k)
			if e := lastErr[k]; e != "" {
				part += " (last err=" + e + ")"
			}
			parts = append(parts, part)
		}
		if len(parts) > 0 {
			s.logf("node %s log: %s", n.id, strings.Join(parts, "; "))
		}
	}
	if os.Getenv("COMETGATE_FAULTS_LOGDIR") != "" {
		s.logf("logs in %s", s.dir)
	}
}

// dumpClients writes every client's record into the log directory, when
// one is kept.
func (s *scen) dumpClients() {
	if os.Getenv("COMETGATE_FAULTS_LOGDIR") == "" {
		return
	}
	dir := filepath.Join(s.dir, "clients")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Error(err)
		return
	}
	for _, c := range s.clients {
		var b strings.Builder
		for _, e := range c.events() {
			b.WriteString(e.String())
			b.WriteByte('\n')
		}
		if err := os.WriteFile(filepath.Join(dir, strings.ReplaceAll(c.name, "@", "_")+".events"), []byte(b.String()), 0o644); err != nil {
			s.t.Error(err)
		}
	}
	var b strings.Builder
	for _, st := range s.steps {
		fmt.Fprintf(&b, "%s %s .. %s\n", st.what, st.start.Format("15:04:05.000"), st.end.Format("15:04:05.000"))
	}
	_ = os.WriteFile(filepath.Join(s.dir, "steps"), []byte(b.String()), 0o644)
}

// ---- publisher ---------------------------------------------------------------

// publisher publishes 0, 1, 2, … on one channel at faultRate, each
// retried until confirmed (so the numbers stored are contiguous), through
// the balancer's publish API or straight into the broker; every message
// carries an id (its channel and number), the same on every attempt, as a
// publisher that retries must send.
type publisher struct {
	ch    string
	every time.Duration
	pub   func(ctx context.Context, n int) error
	close func()

	mu       sync.Mutex
	recs     []pubRec
	stopping time.Time
	stopc    chan struct{}
	once     sync.Once
}

type pubRec struct {
	start, confirmed time.Time
	failures         []string
}

func (s *scen) newPublisher(ch string, history bool, mode string) *publisher {
	t := s.t
	p := &publisher{ch: ch, every: faultRate, stopc: make(chan struct{}), close: func() {}}
	switch {
	case mode == "api":
		tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		p.close = tr.CloseIdleConnections
		p.pub = func(ctx context.Context, n int) error {
			body := fmt.Sprintf(`{"channel":%q,"id":%q,"data":%d}`, ch, msgID(ch, n), n)
			resp, err := hc.Post(s.lb.url("/api/publish"), "application/json", strings.NewReader(body))
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("publish %d: %d %s", n, resp.StatusCode, bytes.TrimSpace(b))
			}
			return nil
		}
	case s.broker == "nats":
		nc, err := nats.Connect(s.servers[0].url(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		js, _ := nc.JetStream(nats.MaxWait(5 * time.Second))
		p.close = nc.Close
		p.pub = func(ctx context.Context, n int) error {
			data := []byte(strconv.Itoa(n))
			if history {
				_, err := js.Publish(ch, data, nats.MsgId(msgID(ch, n)))
				return err
			}
			m := nats.NewMsg(ch)
			m.Data = data
			m.Header.Set(nats.MsgIdHdr, msgID(ch, n))
			if err := nc.PublishMsg(m); err != nil {
				return err
			}
			return nc.FlushTimeout(5 * time.Second)
		}
	default:
		conn, err := amqp.Dial(amqpURL())
		if err != nil {
			t.Fatal(err)
		}
		ach, err := conn.Channel()
		if err == nil {
			err = ach.Confirm(false)
		}
		if err != nil {
			t.Fatal(err)
		}
		// The nodes declare the exchange; it may not exist yet.
		if err := ach.ExchangeDeclare(s.exchange, "topic", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		p.close = func() { conn.Close() }
		p.pub = func(ctx context.Context, n int) error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			dc, err := ach.PublishWithDeferredConfirmWithContext(cctx, s.exchange, ch, false, false,
				amqp.Publishing{ContentType: "application/json", MessageId: msgID(ch, n), Body: []byte(strconv.Itoa(n))})
			if err != nil {
				return err
			}
			ok, err := dc.WaitContext(cctx)
			if err == nil && !ok {
				err = fmt.Errorf("nacked")
			}
			return err
		}
	}
	t.Cleanup(p.close)
	return p
}

// msgID is the publisher's id of message n on channel ch: unique per
// stream, which JetStream deduplicates by (both history channels share one).
func msgID(ch string, n int) string { return ch + "/" + strconv.Itoa(n) }

func (p *publisher) run(ctx context.Context) {
	next := time.Now()
	for n := 0; ; n++ {
		select {
		case <-p.stopc:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(p.every)
		if now := time.Now(); next.Before(now) {
			next = now // no bursts after a stall
		}
		rec := pubRec{start: time.Now()}
		for attempt := 0; ; attempt++ {
			err := p.pub(ctx, n)
			if err == nil {
				rec.confirmed = time.Now()
				break
			}
			rec.failures = append(rec.failures, err.Error())
			p.mu.Lock()
			stopping := p.stopping
			p.mu.Unlock()
			if ctx.Err() != nil || (!stopping.IsZero() && time.Since(stopping) > faultFinalWait) {
				break // unconfirmed: it may or may not be stored
			}
			if !sleepCtx(ctx, backoff(attempt, 50*time.Millisecond, time.Second)) {
				break
			}
		}
		p.mu.Lock()
		p.recs = append(p.recs, rec)
		p.mu.Unlock()
		if rec.confirmed.IsZero() {
			return
		}
	}
}

// stop makes run return after the number it is publishing.
func (p *publisher) stop() {
	p.once.Do(func() {
		p.mu.Lock()
		p.stopping = time.Now()
		p.mu.Unlock()
		close(p.stopc)
	})
}

// count is how many numbers are confirmed (they are 0..count-1).
func (p *publisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.recs)
	if n > 0 && p.recs[n-1].confirmed.IsZero() {
		n--
	}
	return n
}

// stats summarises the publisher: confirmed numbers, retries, latency,
// and why attempts failed.
func (p *publisher) stats() string {
	recs := p.records()
	retried, worst := 0, 0
	var lat []time.Duration
	why := map[string]int{}
	for _, r := range recs {
		if len(r.failures) > 0 {
			retried++
			worst = max(worst, len(r.failures))
		}
		for _, f := range r.failures {
			if len(f) > 120 {
				f = f[:120]
			}
			why[f]++
		}
		if !r.confirmed.IsZero() {
			lat = append(lat, r.confirmed.Sub(r.start))
		}
	}
	txt := fmt.Sprintf("%d confirmed, %d needed retries (at most %d failed attempts)", confirmedCount(recs), retried, worst)
	if len(lat) > 0 {
		slices.Sort(lat)
		txt += fmt.Sprintf(", latency median %v p99 %v max %v", lat[len(lat)/2].Round(time.Millisecond),
			lat[len(lat)*99/100].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	}
	keys := make([]string, 0, len(why))
	for k := range why {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return why[keys[i]] > why[keys[j]] })
	for i, k := range keys {
		if i == 3 {
			break
		}
		txt += fmt.Sprintf("; %d× %s", why[k], k)
	}
	return txt
}

func (p *publisher) records() []pubRec {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pubRec(nil), p.recs...)
}
