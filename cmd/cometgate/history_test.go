package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/cometgate/cometgate/brokers/natsbroker"
)

// historyConfig writes a config file with a history-backed namespace
// demo.h.> (kind "jetstream" or "stream", stored in the named stream) and
// the plain demo.> namespace.
func historyConfig(t *testing.T, kind, stream string) string {
	t.Helper()
	yaml := fmt.Sprintf(`channels:
  - pattern: "demo.h.>"
    subscribe: anyone
    publish: anyone
    history: %s
    history_stream: %s
    history_max_bytes: 16777216
  - pattern: "demo.>"
    subscribe: anyone
    publish: anyone
`, kind, stream)
	path := writeTemp(t, "cometgate.yaml", yaml)
	return path
}

func publishAPI(t *testing.T, n *node, ch string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if code, body := postPublish(t, n, fmt.Sprintf(`{"channel":%q,"data":%d}`, ch, i)); code != 200 {
			t.Fatalf("publish %d: %d %s", i, code, body)
		}
	}
}

// expectSeq reads msg packets on ch until it has seen data from..to, in
// that order, and returns their cursors. Any other msg on ch, a duplicate
// or a gap fails the test.
func expectSeq(t *testing.T, packets <-chan map[string]any, ch string, from, to int) []string {
	t.Helper()
	var cursors []string
	for i := from; i <= to; i++ {
		p := next(t, packets, "msg")
		if p["ch"] != ch || p["data"] != float64(i) {
			t.Fatalf("want %s data %d, got %v", ch, i, p)
		}
		cur, _ := p["cur"].(string)
		if cur == "" {
			t.Fatalf("msg on a history channel without a cursor: %v", p)
		}
		if len(cursors) > 0 {
			prev, _ := strconv.ParseUint(cursors[len(cursors)-1], 10, 64)
			if c, _ := strconv.ParseUint(cur, 10, 64); c <= prev {
				t.Fatalf("cursor %s after %d", cur, prev)
			}
		}
		cursors = append(cursors, cur)
	}
	return cursors
}

// resumeAcrossNodes is the resume scenario of issue 3 on two gateway nodes
// sharing one broker: a client receives, goes away, messages are
// published, and it resumes on the OTHER node from its cursor, getting
// exactly what it missed, then live messages. A plain EventSource resumes
// by itself through Last-Event-ID.
func resumeAcrossNodes(t *testing.T, n1, n2 *node) {
	ws1 := dialWS(t, n1)
	p1, _ := wsPackets(t, ws1)
	next(t, p1, "hello")
	sendWS(t, ws1, `{"op":"sub","id":1,"ch":"demo.h.x"}`)
	if ok := next(t, p1, "ok"); ok["history"] != true {
		t.Fatalf("ok %v: the channel should have history", ok)
	}
	publishAPI(t, n1, "demo.h.x", 1, 3)
	cursors := expectSeq(t, p1, "demo.h.x", 1, 3)
	ws1.Close()

	publishAPI(t, n1, "demo.h.x", 4, 6)

	ws2 := dialWS(t, n2)
	p2, _ := wsPackets(t, ws2)
	next(t, p2, "hello")
	sendWS(t, ws2, fmt.Sprintf(`{"op":"sub","id":1,"ch":"demo.h.x","cursor":%q}`, cursors[2]))
	next(t, p2, "ok")
	missed := expectSeq(t, p2, "demo.h.x", 4, 6)
	publishAPI(t, n2, "demo.h.x", 7, 7)
	expectSeq(t, p2, "demo.h.x", 7, 7)

	// SSE: the event id carries the cursor; Last-Event-ID resumes.
	s := openSSEWith(t, n2.url("/sse?ch=demo.h.x"), http.Header{"Last-Event-ID": {missed[1]}})
	next(t, s.packets, "hello")
	next(t, s.packets, "ok")
	expectSeq(t, s.packets, "demo.h.x", 6, 7)
	publishAPI(t, n1, "demo.h.x", 8, 8)
	p := next(t, s.packets, "msg")
	if p["data"] != 8.0 || p["_id"] != p["cur"] {
		t.Fatalf("live msg %v: the event id should be its cursor", p)
	}
}

func TestResumeJetStreamAcrossNodes(t *testing.T) {
	cfg := historyConfig(t, "jetstream", "cgtest_resume")
	n1 := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0")
	n2 := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_BROKER_KIND=nats",
		"COMETGATE_BROKER_NATS_URLS="+n1.emb.ClientURL())
	resumeAcrossNodes(t, n1, n2)
}

func TestResumeRabbitMQStreamAcrossNodes(t *testing.T) {
	needRabbit(t)
	suffix := fmt.Sprintf("%d", rand.Uint64())
	exchange, stream := "cometgate-test-"+suffix, "cgtest_"+suffix
	cfg := historyConfig(t, "stream", stream)
	env := []string{"COMETGATE_BROKER_KIND=amqp", "COMETGATE_BROKER_AMQP_URL=" + amqpURL(), "COMETGATE_BROKER_AMQP_EXCHANGE=" + exchange}
	t.Cleanup(func() { deleteAMQP(t, exchange, stream) })
	n1 := startNodeArgs(t, []string{"--config", cfg}, env...)
	n2 := startNodeArgs(t, []string{"--config", cfg}, env...)
	resumeAcrossNodes(t, n1, n2)
}

// deleteAMQP removes what a test's nodes declared (queue may be ""); it runs after the nodes
// stopped (Cleanup order is last-in first-out).
func deleteAMQP(t *testing.T, exchange, queue string) {
	conn, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		if queue != "" {
			_, _ = ch.QueueDelete(queue, false, false, false)
		}
		_ = ch.ExchangeDelete(exchange, false, false)
	}
}

func natsURL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

func needNATS(t *testing.T) string {
	t.Helper()
	u := natsURL()
	host := strings.TrimPrefix(u, "nats://")
	c, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("NATS at %s is not reachable: %v", u, err)
		}
		t.Skipf("NATS at %s is not reachable (%v); set NATS_URL", u, err)
	}
	c.Close()
	return host
}

func ready(t *testing.T, n *node) bool {
	t.Helper()
	resp, err := http.Get(n.url("/readyz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func waitReady(t *testing.T, n *node, want bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for ready(t, n) != want {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not become %v\n%s", want, n.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBrokerOutage cuts a node's connection to a real NATS server while
// messages keep being published (straight into NATS): the browser session
// stays open, /readyz goes false and back, every message on the
// history-backed channel arrives after recovery, in order and once, and
// the channel without history reports a gap.
func TestBrokerOutage(t *testing.T) {
	host := needNATS(t)
	proxy := brokertest.NewProxy(t, host)
	stream := fmt.Sprintf("cgtest_outage_%d", rand.Uint64())
	// Unique channels on the shared server: a namespace of our own.
	prefix := fmt.Sprintf("t%d.", rand.Uint32())
	cfg := historyConfig(t, "jetstream", stream)
	n := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_BROKER_KIND=nats",
		"COMETGATE_BROKER_NATS_URLS=nats://"+proxy.Addr(), "COMETGATE_BROKER_SUBJECT_PREFIX="+prefix,
		"COMETGATE_BROKER_NATS_RECONNECT_WAIT=100ms", "COMETGATE_BROKER_NATS_MAX_RECONNECT_WAIT=500ms")
	direct, err := nats.Connect(natsURL())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	js, err := direct.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(stream) })

	s := openSSE(t, n.url("/sse?ch=demo.h.x&ch=demo.plain"))
	next(t, s.packets, "hello")
	next(t, s.packets, "ok")
	next(t, s.packets, "ok")
	publishAPI(t, n, "demo.h.x", 1, 2)
	expectSeq(t, s.packets, "demo.h.x", 1, 2)

	proxy.Cut()
	waitReady(t, n, false)
	for i := 3; i <= 7; i++ {
		if _, err := js.Publish(prefix+"demo.h.x", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		if err := direct.Publish(prefix+"demo.plain", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if code, _ := postPublish(t, n, `{"channel":"demo.plain","data":0}`); code != http.StatusServiceUnavailable {
		t.Fatalf("publish during the outage: %d, want 503", code)
	}
	proxy.Restore()
	waitReady(t, n, true)

	gotGap := false
	want := 3
	deadline := time.After(20 * time.Second)
	for want <= 7 || !gotGap {
		select {
		case p, ok := <-s.packets:
			if !ok {
				t.Fatal("stream ended: the session was closed during the outage")
			}
			switch {
			case p["t"] == "close":
				t.Fatalf("session closed: %v", p)
			case p["t"] == "gap" && p["ch"] == "demo.plain":
				gotGap = true
			case p["t"] == "msg" && p["ch"] == "demo.h.x":
				if p["data"] != float64(want) {
					t.Fatalf("history channel: want %d, got %v", want, p)
				}
				want++
			case p["t"] == "msg":
				t.Fatalf("unexpected %v", p)
			}
		case <-deadline:
			t.Fatalf("after recovery: history up to %d, gap %v\n%s", want-1, gotGap, n.logs)
		}
	}
	publishAPI(t, n, "demo.h.x", 8, 8)
	expectSeq(t, s.packets, "demo.h.x", 8, 8)
}

// TestBrokerRestart stops the NATS server a node uses and starts it again
// on the same port and store: the session survives and live delivery
// resumes; the channel without history reports a gap.
func TestBrokerRestart(t *testing.T) {
	store := t.TempDir()
	_, port, _ := net.SplitHostPort(freePort(t))
	srv := startNATS(t, port, store)
	cfg := historyConfig(t, "jetstream", "cgtest_restart")
	n := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_BROKER_KIND=nats",
		"COMETGATE_BROKER_NATS_URLS=nats://127.0.0.1:"+port,
		"COMETGATE_BROKER_NATS_RECONNECT_WAIT=100ms", "COMETGATE_BROKER_NATS_MAX_RECONNECT_WAIT=500ms")
	s := openSSE(t, n.url("/sse?ch=demo.h.x&ch=demo.plain"))
	next(t, s.packets, "hello")
	next(t, s.packets, "ok")
	next(t, s.packets, "ok")
	publishAPI(t, n, "demo.h.x", 1, 1)
	expectSeq(t, s.packets, "demo.h.x", 1, 1)

	srv.stop(t)
	waitReady(t, n, false)
	startNATS(t, port, store)
	waitReady(t, n, true)
	if p := next(t, s.packets, "gap"); p["ch"] != "demo.plain" {
		t.Fatalf("gap %v", p)
	}
	publishAPI(t, n, "demo.h.x", 2, 3)
	expectSeq(t, s.packets, "demo.h.x", 2, 3)
}

// natsServer is a real NATS server (nats-server, in this process) that a
// test can stop and start again on the same port and store.
type natsServer struct{ emb *natsbroker.Embedded }

func startNATS(t *testing.T, port, store string) *natsServer {
	t.Helper()
	emb, err := natsbroker.StartEmbedded(context.Background(), natsbroker.EmbeddedOptions{
		Listen: "127.0.0.1:" + port, StoreDir: store,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &natsServer{emb: emb}
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *natsServer) stop(t *testing.T) {
	if err := s.emb.Close(); err != nil {
		t.Errorf("stopping NATS: %v", err)
	}
}

// retriedPublishOnce: a publish retried with the same id (the publisher
// never got the first answer) reaches a live subscriber once, and so does
// a resume from history, on each broker: JetStream drops the second copy
// (Nats-Msg-Id), RabbitMQ's stream keeps both and the node drops it.
func retriedPublishOnce(t *testing.T, n *node) {
	ws := dialWS(t, n)
	p, _ := wsPackets(t, ws)
	next(t, p, "hello")
	sendWS(t, ws, `{"op":"sub","id":1,"ch":"demo.h.id"}`)
	next(t, p, "ok")
	publishAPI(t, n, "demo.h.id", 1, 1)
	for range 2 {
		if code, body := postPublish(t, n, `{"channel":"demo.h.id","id":"order-2","data":2}`); code != 200 {
			t.Fatalf("publish: %d %s", code, body)
		}
	}
	publishAPI(t, n, "demo.h.id", 3, 3)
	cursors := expectSeq(t, p, "demo.h.id", 1, 3)
	ws.Close()

	ws2 := dialWS(t, n)
	p2, _ := wsPackets(t, ws2)
	next(t, p2, "hello")
	sendWS(t, ws2, `{"op":"sub","id":1,"ch":"demo.h.id","cursor":"`+cursors[0]+`"}`)
	next(t, p2, "ok")
	expectSeq(t, p2, "demo.h.id", 2, 3)
	if code, body := postPublish(t, n, `{"channel":"demo.h.id","id":"has space","data":4}`); code != 400 {
		t.Fatalf("a bad id: %d %s", code, body)
	}
}

func TestRetriedPublishOnceJetStream(t *testing.T) {
	cfg := historyConfig(t, "jetstream", "cgtest_retry")
	retriedPublishOnce(t, startNodeArgs(t, []string{"--config", cfg}))
}

func TestRetriedPublishOnceRabbitMQStream(t *testing.T) {
	needRabbit(t)
	suffix := fmt.Sprintf("%d", rand.Uint64())
	exchange, stream := "cometgate-test-"+suffix, "cgtest_"+suffix
	cfg := historyConfig(t, "stream", stream)
	t.Cleanup(func() { deleteAMQP(t, exchange, stream) })
	retriedPublishOnce(t, startNodeArgs(t, []string{"--config", cfg},
		"COMETGATE_BROKER_KIND=amqp", "COMETGATE_BROKER_AMQP_URL="+amqpURL(), "COMETGATE_BROKER_AMQP_EXCHANGE="+exchange))
}
