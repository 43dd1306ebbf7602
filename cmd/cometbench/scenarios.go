package main

import (
	"fmt"
	"io"
	"strings"
)

// scenario is one documented benchmark: what it shows and the exact
// command. $GW is the gateway's process id (or a comma-separated list).
type scenario struct {
	name, what, cmd string
}

// scenarioSetup starts one gateway node with the default configuration
// (plus the embedded broker's listener, for --publish nats, and without the
// demo backend, whose 500 msg/s inside the gateway would count in its CPU),
// pinned to CPU 0; the load generator runs on CPU 1.
const scenarioSetup = `# build, and start one node pinned to CPU 0: the default configuration plus
# the embedded NATS server's listener, so the publishing scenarios publish
# straight into the broker (--publish api goes through POST /api/publish
# instead, one request at a time per channel, on the gateway's own core),
# and without the demo backend (its publishers run inside the gateway, ~500
# msg/s, and would count in the gateway's CPU)
go build -o cometgate ./cmd/cometgate && go build -o cometbench ./cmd/cometbench
# every session comes from one address, as fast as the generator opens them:
# lift the limits on new sessions (limits.new_sessions_*) for every node below
export COMETGATE_LIMITS_NEW_SESSIONS_PER_IP_PER_SECOND=0 COMETGATE_LIMITS_NEW_SESSIONS_PER_SECOND=0
COMETGATE_DEMO_ENABLED=off COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:4223 taskset -c 0 ./cometgate & GW=$!
B="taskset -c 1 ./cometbench run --pid $GW"`

// multiNodeSetup runs six nodes on one external NATS server (127.0.0.1:4222):
// one node may hold 20,000 open files, so 100k sessions need several.
const multiNodeSetup = `# several nodes on one broker (a NATS server at 127.0.0.1:4222), all on CPU 0,
# after stopping the single node above
kill $GW
GW=""; URLS=""
for i in 0 1 2 3 4 5; do
  COMETGATE_BROKER_KIND=nats COMETGATE_NODE_ID=n$i COMETGATE_HTTP_LISTEN=127.0.0.1:818$i \
    taskset -c 0 ./cometgate & GW="$GW${GW:+,}$!"; URLS="$URLS${URLS:+,}http://127.0.0.1:818$i"
done`

// tcpBridgeSetup starts one node whose only bridge target is the load
// generator's own echo server ("cometbench tcp" listens on 127.0.0.1:7001
// by default), on a port of its own and pinned to CPU 0 like the others,
// after stopping the nodes above so that it has the core alone.
const tcpBridgeSetup = `# the TCP bridge against direct TCP to the same echo server: stop the nodes
# above, then one node with a bridge target "bench" at the address where
# cometbench tcp starts its echo server
[ -n "$GW" ] && kill $(echo $GW | tr , ' ')
cat > bench-bridge.yaml <<'EOF'
http:
  listen: 127.0.0.1:8190
bridge:
  dial_timeout: 5s
  targets:
    - name: bench
      address: "127.0.0.1:7001"
      allow_networks: ["127.0.0.0/8"]   # loopback targets are refused unless listed
demo:
  enabled: off   # the demo backend's publishers would count in the gateway's CPU
EOF
taskset -c 0 ./cometgate serve --config bench-bridge.yaml & GW=$!
T="taskset -c 1 ./cometbench tcp --pid $GW --url http://127.0.0.1:8190 --target bench"`

var scenarios = []scenario{
	{"idle-ws-10k", "memory per idle WebSocket session",
		`$B --label idle-ws-10k --transport ws --sessions 10000 --rate 0 --duration 10s`},
	{"idle-sse-10k", "memory per idle SSE session",
		`$B --label idle-sse-10k --transport sse --sessions 10000 --rate 0 --duration 10s`},
	{"idle-ws-19k", "one node near its 20,000-file limit (two bench processes)",
		`$B --label idle-ws-19k --transport ws --sessions 19000 --rate 0 --duration 10s`},
	{"idle-sse-19k", "one node near its 20,000-file limit (two bench processes)",
		`$B --label idle-sse-19k --transport sse --sessions 19000 --rate 0 --duration 10s`},
	{"fanout-1k-100", "one channel, 1,000 subscribers, 100 msg/s (100k deliveries/s)",
		`$B --label fanout-1k-100 --transport ws --sessions 1000 --rate 100 --duration 10s --publish nats`},
	{"fanout-10k-10", "one channel, 10,000 subscribers, 10 msg/s (100k deliveries/s), twice: the first step is every connection's first messages (TCP's quick-ACK start), the second runs warm",
		`$B --label fanout-10k-10 --transport ws --sessions 10000 --rate 10,10 --duration 10s --publish nats`},
	{"fanout-10k-100", "one channel, 10,000 subscribers, 100 msg/s (1M deliveries/s asked)",
		`$B --label fanout-10k-100 --transport ws --sessions 10000 --rate 100 --duration 10s --publish nats`},
	{"fanout-10k-max", "the highest rate whose p99 stays under 100 ms, 10,000 subscribers",
		`$B --label fanout-10k-max --transport ws --sessions 10000 --rate 1,2,5,10,20,50,100 --duration 10s --max-p99 100ms --publish nats`},
	{"fanout-1k-max", "the highest rate whose p99 stays under 100 ms, 1,000 subscribers",
		`$B --label fanout-1k-max --transport ws --sessions 1000 --rate 10,20,50,100,200,500,1000 --duration 10s --max-p99 100ms --publish nats`},
	{"fanout-api-1k-100", "as fanout-1k-100, published through the gateway's HTTP API",
		`$B --label fanout-api-1k-100 --transport ws --sessions 1000 --rate 100 --duration 10s --publish api`},
	{"fanout-2k-1k-100", "as fanout-1k-100 with 2 KiB payloads, uncompressed (the client does not offer permessage-deflate)",
		`$B --label fanout-2k-1k-100 --transport ws --sessions 1000 --rate 100 --duration 10s --publish nats --payload 2048`},
	{"fanout-deflate-1k-100", "as fanout-2k-1k-100 with permessage-deflate: one compression per message, shared by the 1,000 subscribers",
		`$B --label fanout-deflate-1k-100 --transport ws --sessions 1000 --rate 100 --duration 10s --publish nats --payload 2048 --deflate`},
	{"fanout-sse-1k-100", "as fanout-1k-100 over SSE",
		`$B --label fanout-sse-1k-100 --transport sse --sessions 1000 --rate 100 --duration 10s --publish nats`},
	{"fanout-sse-10k-10", "as fanout-10k-10 over SSE",
		`$B --label fanout-sse-10k-10 --transport sse --sessions 10000 --rate 10,10 --duration 10s --publish nats`},
	{"idle-poll-10k", "memory per idle long-polling session (a request held open)",
		`$B --label idle-poll-10k --transport poll --sessions 10000 --rate 0 --duration 10s`},
	{"idle-xhr-10k", "memory per idle XHR streaming session (a stream open, nothing to send)",
		`$B --label idle-xhr-10k --transport xhr_stream --sessions 10000 --rate 0 --duration 10s`},
	{"poll-1k-10", "long-polling cycles: 1,000 sessions, 10 msg/s, one poll per message and session",
		`$B --label poll-1k-10 --transport poll --sessions 1000 --rate 10 --duration 10s --publish nats`},
	{"xhr-stream-1k-100", "XHR streaming, one channel, 1,000 subscribers, 100 msg/s",
		`$B --label xhr-stream-1k-100 --transport xhr_stream --sessions 1000 --rate 100 --duration 10s --publish nats`},
	{"many-channels-10k", "10,000 channels, one subscriber each, 10,000 msg/s into the broker",
		`$B --label many-channels-10k --transport ws --sessions 10000 --channels 10000 --rate 10000 --duration 10s --publish nats`},
}

var multiNodeScenarios = []scenario{
	{"idle-ws-100k", "100,000 idle WebSocket sessions over six nodes",
		`taskset -c 1 ./cometbench run --pid $GW --url $URLS --label idle-ws-100k --transport ws --sessions 100000 --procs 7 --src-ips 127.0.0.1-127.0.0.8 --ramp 4000 --rate 0 --duration 10s`},
	{"idle-sse-100k", "100,000 idle SSE sessions over six nodes",
		`taskset -c 1 ./cometbench run --pid $GW --url $URLS --label idle-sse-100k --transport sse --sessions 100000 --procs 7 --src-ips 127.0.0.1-127.0.0.8 --ramp 4000 --rate 0 --duration 10s`},
}

// tcpScenarios run "cometbench tcp" ($T) against tcpBridgeSetup's node.
var tcpScenarios = []scenario{
	{"tcp-bridge", "TCP bridge against direct TCP: bulk MB/s and 64 B round trips at 1, 10 and 100 connections",
		`$T --label tcp-bridge --conns 1,10,100 --duration 5s`},
	{"tcp-bridge-1k", "1,000 bridged connections doing 64 B round trips at once",
		`$T --label tcp-bridge-1k --conns 1000 --workload rtt --duration 5s`},
	{"tcp-bridge-idle", "the gateway's memory per idle bridged connection: 1,000 connections make one 64 B round trip each, then stay silent",
		`$T --label tcp-bridge-idle --conns 1000 --workload idle --duration 5s`},
	{"tcp-bridge-echo-cpu0", "as tcp-bridge with the echo server in its own process on the gateway's core: direct round trips cross cores too",
		`taskset -c 0 ./cometbench echo --listen 127.0.0.1:7001 & ECHO=$!
$T --label tcp-bridge-echo-cpu0 --target-addr 127.0.0.1:7001 --conns 1,10,100 --duration 5s
kill $ECHO`},
}

func printScenarios(w io.Writer) {
	fmt.Fprintln(w, scenarioSetup)
	fmt.Fprintln(w)
	for _, s := range scenarios {
		fmt.Fprintf(w, "# %s: %s\n%s\n\n", s.name, s.what, s.cmd)
	}
	fmt.Fprintln(w, multiNodeSetup)
	fmt.Fprintln(w)
	for _, s := range multiNodeScenarios {
		fmt.Fprintf(w, "# %s: %s\n%s\n\n", s.name, s.what, s.cmd)
	}
	fmt.Fprintln(w, tcpBridgeSetup)
	fmt.Fprintln(w)
	for _, s := range tcpScenarios {
		fmt.Fprintf(w, "# %s: %s\n%s\n\n", s.name, s.what, s.cmd)
	}
	fmt.Fprintln(w, strings.TrimSpace(`
# stop the nodes
kill $(echo $GW | tr , ' ')`))
}
