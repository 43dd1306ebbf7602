package amqpbroker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/amqpbroker"
	"github.com/cometgate/cometgate/brokers/brokertest"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	waitTimeout = 15 * time.Second
	// testExchange is the exchange the tests share; each test names its
	// channels with a random token.
	testExchange = "cometgate.test"
)

// serverURL returns the RabbitMQ under test (AMQP_URL, default
// amqpbroker.DefaultURL), skipping the test when it is unreachable
// (failing it under CI).
func serverURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("AMQP_URL")
	if u == "" {
		u = amqpbroker.DefaultURL
	}
	c, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("RabbitMQ at %s not reachable: %v", u, err)
		}
		t.Skipf("RabbitMQ at %s not reachable (set AMQP_URL): %v", u, err)
	}
	_ = c.Close()
	return u
}

// connect returns a Broker closed at the end of the test.
func connect(t *testing.T, opts amqpbroker.Options) *amqpbroker.Broker {
	t.Helper()
	b, err := amqpbroker.Connect(t.Context(), opts)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// node returns a ready Broker on the test exchange.
func node(t *testing.T, u string) *amqpbroker.Broker {
	t.Helper()
	b := connect(t, amqpbroker.Options{URL: u, Exchange: testExchange, DeclareExchange: true})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	return b
}

// rawChannel is a plain amqp091-go client's channel, closed at the end
// of the test.
func rawChannel(t *testing.T, u string) *amqp.Channel {
	t.Helper()
	c, err := amqp.Dial(u)
	if err != nil {
		t.Fatalf("amqp.Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// rawQueue declares an exclusive queue bound to key on exchange and
// consumes it.
func rawQueue(t *testing.T, ch *amqp.Channel, exchange, key string) <-chan amqp.Delivery {
	t.Helper()
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, key, exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	d, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func next(t *testing.T, d <-chan amqp.Delivery) amqp.Delivery {
	t.Helper()
	select {
	case m := <-d:
		return m
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a delivery to the plain client")
	}
	panic("unreachable")
}

func token() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	u := serverURL(t)
	brokertest.Run(t, func(t *testing.T) brokers.Broker {
		return connect(t, amqpbroker.Options{URL: u, Exchange: testExchange, DeclareExchange: true})
	})
}

func TestOutage(t *testing.T) {
	u := serverURL(t)
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := amqp.ParseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	brokertest.RunOutage(t, func(t *testing.T, proxyAddr string, onState brokers.StateFunc) brokers.Broker {
		viaProxy := *pu
		viaProxy.Host = proxyAddr
		return connect(t, amqpbroker.Options{
			URL:              viaProxy.String(),
			Exchange:         testExchange,
			DeclareExchange:  true,
			ReconnectWait:    10 * time.Millisecond,
			MaxReconnectWait: 200 * time.Millisecond,
			OnState:          onState,
		})
	}, target)
}

// A plain AMQP client and the Broker see each other's messages, headers
// and content types included.
func TestRawClientInterop(t *testing.T) {
	u := serverURL(t)
	b := node(t, u)
	raw := rawChannel(t, u)

	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "demo.x", in.Handle)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Unsubscribe()
	data := "from raw " + token()
	err = raw.PublishWithContext(ctxT(t), testExchange, "demo.x", false, false, amqp.Publishing{
		ContentType: "text/plain",
		Headers: amqp.Table{
			"X-Str": "v", "X-Int": int32(7), "X-Bool": true, "X-Bytes": []byte("raw"),
			"X-Nested": amqp.Table{"a": "b"},
		},
		Body: []byte(data),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := in.Wait(t, "demo.x", data)
	want := map[string]string{"Content-Type": "text/plain", "X-Str": "v", "X-Int": "7", "X-Bool": "true", "X-Bytes": "raw"}
	if len(got.Header) != len(want) {
		t.Errorf("header %v, want %v", got.Header, want)
	}
	for k, v := range want {
		if got.Header[k] != v {
			t.Errorf("header %q = %q, want %q", k, got.Header[k], v)
		}
	}
	if got.Seq != 0 {
		t.Errorf("Seq %d, want 0 (no history)", got.Seq)
	}

	// And the other way.
	d := rawQueue(t, raw, testExchange, "demo.y")
	data = "from broker " + token()
	err = b.Publish(ctxT(t), brokers.Message{Channel: "demo.y", Data: []byte(data), Header: map[string]string{
		"Content-Type": "application/json", "X-K": "v",
	}})
	if err != nil {
		t.Fatal(err)
	}
	m := next(t, d)
	if m.RoutingKey != "demo.y" || string(m.Body) != data || m.ContentType != "application/json" || m.Headers["X-K"] != "v" {
		t.Errorf("plain client got key %q body %q content type %q headers %v", m.RoutingKey, m.Body, m.ContentType, m.Headers)
	}
	if _, ok := m.Headers["Content-Type"]; ok {
		t.Error("Content-Type also travelled in the headers table")
	}
	if m.DeliveryMode != amqp.Transient {
		t.Errorf("delivery mode %d, want transient", m.DeliveryMode)
	}
}

// Two gateway nodes subscribed to the same pattern each get every
// message: each has its own queue.
func TestTwoNodes(t *testing.T) {
	u := serverURL(t)
	n1, n2 := node(t, u), node(t, u)
	if n1.Queue() == "" || n1.Queue() == n2.Queue() {
		t.Fatalf("queues %q and %q, want two different ones", n1.Queue(), n2.Queue())
	}
	base := "nodes." + token()
	var in1, in2 brokertest.Inbox
	for _, x := range []struct {
		b  *amqpbroker.Broker
		in *brokertest.Inbox
	}{{n1, &in1}, {n2, &in2}} {
		sub, err := x.b.Subscribe(ctxT(t), base+".>", x.in.Handle)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	raw := rawChannel(t, u)
	const n = 50
	for i := range n {
		ch := base + ".a"
		if i%2 == 1 {
			ch = base + ".b.c"
		}
		pub := n1
		if i%3 == 0 {
			pub = n2
		}
		if i%5 == 0 {
			if err := raw.PublishWithContext(ctxT(t), testExchange, ch, false, false, amqp.Publishing{Body: []byte(strconv.Itoa(i))}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for name, in := range map[string]*brokertest.Inbox{"node 1": &in1, "node 2": &in2} {
		brokertest.WaitUntil(t, name+" to get every message", func() bool { return in.Count() >= n })
		seen := make(map[string]int)
		for _, m := range in.Messages() {
			seen[string(m.Data)]++
		}
		for i := range n {
			if seen[strconv.Itoa(i)] != 1 {
				t.Errorf("%s got message %d %d times, want once", name, i, seen[strconv.Itoa(i)])
			}
		}
	}
}

// Subscribe adds no queue: one queue per node, one binding per pattern,
// reference-counted; each Subscription to a pattern gets each message
// once.
func TestOneQueueOneBindingPerPattern(t *testing.T) {
	u := serverURL(t)
	b := node(t, u)
	queue := b.Queue()
	base := "bind." + token()

	const patterns = 10
	var ins [patterns]brokertest.Inbox
	subs := make([]brokers.Subscription, patterns)
	for i := range patterns {
		p := base + "." + strconv.Itoa(i)
		if i%2 == 1 {
			p += ".*"
		}
		sub, err := b.Subscribe(ctxT(t), p, ins[i].Handle)
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = sub
	}
	// Pattern 0 twice more, and one overlapping wildcard.
	var twin, twin2, wide brokertest.Inbox
	twinSub, err := b.Subscribe(ctxT(t), base+".0", twin.Handle)
	if err != nil {
		t.Fatal(err)
	}
	twin2Sub, err := b.Subscribe(ctxT(t), base+".0", twin2.Handle)
	if err != nil {
		t.Fatal(err)
	}
	wideSub, err := b.Subscribe(ctxT(t), base+".>", wide.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer wideSub.Unsubscribe()
	if b.Queue() != queue {
		t.Errorf("queue changed from %q to %q while subscribing", queue, b.Queue())
	}
	if got := b.Bindings(); got != patterns+1 {
		t.Errorf("Bindings() = %d, want %d (one per pattern)", got, patterns+1)
	}
	checkServerBindings(t, queue, base, patterns+1)

	if err := b.Publish(ctxT(t), brokers.Message{Channel: base + ".0", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: base + ".0", Data: []byte("sentinel")}); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]*brokertest.Inbox{"first": &ins[0], "twin": &twin, "twin2": &twin2, "wide": &wide} {
		in.Wait(t, base+".0", "sentinel")
		if n := in.Count(); n != 2 {
			t.Errorf("%s subscription got %d messages, want 2 (x and sentinel, once each)", name, n)
		}
	}
	if all := twin.Messages(); &all[0].Data[0] == &ins[0].Messages()[0].Data[0] {
		t.Error("two subscriptions share one Data buffer")
	}

	// Ending two of the three Subscriptions of pattern 0 keeps its binding.
	if err := subs[0].Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := twinSub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: base + ".0", Data: []byte("still")}); err != nil {
		t.Fatal(err)
	}
	twin2.Wait(t, base+".0", "still")
	if got := b.Bindings(); got != patterns+1 {
		t.Errorf("Bindings() = %d after ending 2 of 3 subscriptions of a pattern, want %d", got, patterns+1)
	}
	// Ending the last one removes it.
	if err := twin2Sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "the binding of the ended pattern to go", func() bool { return b.Bindings() == patterns })
	checkServerBindings(t, queue, base, patterns)
	for i := 1; i < patterns; i++ {
		if err := subs[i].Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	brokertest.WaitUntil(t, "only the wide binding left", func() bool { return b.Bindings() == 1 })
	if b.Queue() != queue {
		t.Errorf("queue changed from %q to %q", queue, b.Queue())
	}
}

// checkServerBindings asks the server (with rabbitmqctl, when it is
// installed and the server is local) which bindings of the test exchange
// have keys under base: there must be want of them, all to queue.
func checkServerBindings(t *testing.T, queue, base string, want int) {
	t.Helper()
	if os.Getenv("AMQP_URL") != "" {
		t.Log("AMQP_URL set: not asking rabbitmqctl (it reaches the local server only)")
		return
	}
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		t.Log("rabbitmqctl not installed: checked the Broker's own count only")
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, "list_bindings", "-q", "--no-table-headers",
		"source_name", "destination_name", "routing_key").Output()
	if err != nil {
		t.Logf("rabbitmqctl list_bindings failed (%v): checked the Broker's own count only", err)
		return
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != testExchange || !strings.HasPrefix(f[2], base+".") {
			continue
		}
		n++
		if f[1] != queue {
			t.Errorf("binding %q goes to %q, want the node's queue %q", f[2], f[1], queue)
		}
	}
	if n != want {
		t.Errorf("server has %d bindings under %s, want %d:\n%s", n, base, want, out)
	}
}

func TestHeadersRoundTrip(t *testing.T) {
	u := serverURL(t)
	pub, sub := node(t, u), node(t, u)
	ch := "headers." + token()
	var in brokertest.Inbox
	s, err := sub.Subscribe(ctxT(t), ch, in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unsubscribe()
	want := map[string]string{
		"Content-Type": "text/html; charset=utf-8",
		"X-Empty":      "",
		"x-lower":      "ünïcödé ✓",
		"Trace-Id":     token(),
	}
	if err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("h"), Header: want}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("bare")}); err != nil {
		t.Fatal(err)
	}
	got := in.Wait(t, ch, "h")
	if len(got.Header) != len(want) {
		t.Errorf("header %v, want %v", got.Header, want)
	}
	for k, v := range want {
		if g, ok := got.Header[k]; !ok || g != v {
			t.Errorf("header %q = %q (present %v), want %q", k, g, ok, v)
		}
	}
	if bare := in.Wait(t, ch, "bare"); bare.Header != nil {
		t.Errorf("message without header arrived with %v", bare.Header)
	}
}

func TestSubjectPrefix(t *testing.T) {
	u := serverURL(t)
	prefix := "app" + token()
	b := connect(t, amqpbroker.Options{URL: u, Exchange: testExchange, DeclareExchange: true, SubjectPrefix: prefix + "."})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	raw := rawChannel(t, u)

	// Broker → server: the prefix is prepended.
	d := rawQueue(t, raw, testExchange, prefix+".#")
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "x.y", Data: []byte("out")}); err != nil {
		t.Fatal(err)
	}
	if m := next(t, d); m.RoutingKey != prefix+".x.y" || string(m.Body) != "out" {
		t.Fatalf("plain client got %q on %q, want out on %s.x.y", m.Body, m.RoutingKey, prefix)
	}

	// Server → Broker: the prefix is stripped, and ">" (bound as
	// "<prefix>.#") delivers neither the bare prefix nor other keys.
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), ">", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	dropped := b.Dropped()
	for _, key := range []string{prefix, "other.z", prefix + ".z", prefix + "..bad", prefix + ".sentinel"} {
		if err := raw.PublishWithContext(ctxT(t), testExchange, key, false, false, amqp.Publishing{Body: []byte(key)}); err != nil {
			t.Fatal(err)
		}
	}
	in.Wait(t, "z", prefix+".z")
	in.Wait(t, "sentinel", prefix+".sentinel")
	time.Sleep(50 * time.Millisecond)
	for _, m := range in.Messages() {
		if m.Channel != "z" && m.Channel != "sentinel" {
			t.Errorf("unexpected delivery on %q (data %q)", m.Channel, m.Data)
		}
	}
	// The bare prefix (routed by "#" matching zero words) and the key
	// with an empty token were dropped as not being channels.
	if got := b.Dropped() - dropped; got != 2 {
		t.Errorf("Dropped() grew by %d, want 2", got)
	}
}

func TestFanoutExchange(t *testing.T) {
	u := serverURL(t)
	ex := "cometgate.test.fanout." + token()
	b := connect(t, amqpbroker.Options{URL: u, Exchange: ex, ExchangeType: "fanout", DeclareExchange: true})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	t.Cleanup(func() { _ = rawChannel(t, u).ExchangeDelete(ex, false, false) })
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "f.*", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for _, ch := range []string{"g.a", "f.a.b", "f.a"} {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(ch)}); err != nil {
			t.Fatal(err)
		}
	}
	in.Wait(t, "f.a", "f.a")
	time.Sleep(50 * time.Millisecond)
	if n := in.Count(); n != 1 {
		t.Errorf("got %d messages on a fanout exchange, want only f.a (the dispatcher filters)", n)
	}
}

// With DeclareExchange false the exchange must exist.
func TestPassiveExchange(t *testing.T) {
	u := serverURL(t)
	missing := "cometgate.test.missing." + token()
	_, err := amqpbroker.Connect(ctxT(t), amqpbroker.Options{URL: u, Exchange: missing})
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("Connect to a missing exchange: %v, want a 404 error", err)
	}

	ex := "cometgate.test.passive." + token()
	raw := rawChannel(t, u)
	if err := raw.ExchangeDeclare(ex, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	b := connect(t, amqpbroker.Options{URL: u, Exchange: ex})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "p.x", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "p.x", Data: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	in.Wait(t, "p.x", "ok")

	// An existing exchange of another type is refused too.
	_, err = amqpbroker.Connect(ctxT(t), amqpbroker.Options{URL: u, Exchange: ex, ExchangeType: "fanout", DeclareExchange: true})
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		t.Errorf("Connect declaring a topic exchange as fanout: %v, want a 406 error", err)
	}
}

// A channel exception on the publish channel (the exchange was deleted
// under the Broker) is a loss like any other: the Broker reconnects,
// re-declares, and its subscription works again.
func TestExchangeDeletedRecovers(t *testing.T) {
	u := serverURL(t)
	ex := "cometgate.test.deleted." + token()
	var st brokertest.StateLog
	b := connect(t, amqpbroker.Options{
		URL: u, Exchange: ex, DeclareExchange: true, OnState: st.Record,
		ReconnectWait: 10 * time.Millisecond, MaxReconnectWait: 100 * time.Millisecond,
	})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	raw := rawChannel(t, u)
	t.Cleanup(func() { _ = raw.ExchangeDelete(ex, false, false) })
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "del.x", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	if err := raw.ExchangeDelete(ex, false, false); err != nil {
		t.Fatal(err)
	}
	err = b.Publish(ctxT(t), brokers.Message{Channel: "del.x", Data: []byte("into the void")})
	if !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Publish to a deleted exchange: %v, want ErrUnavailable", err)
	}
	brokertest.WaitUntil(t, "a reconnect", func() bool { return b.Reconnects() >= 1 && b.Ready() })
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "del.x", Data: []byte("back")}); err != nil {
		t.Fatalf("Publish after recovery: %v", err)
	}
	in.Wait(t, "del.x", "back")
	want := []brokers.State{brokers.StateConnected, brokers.StateDisconnected, brokers.StateConnected}
	if got := st.List(); !slices.Equal(got, want) {
		t.Errorf("states %v, want %v", got, want)
	}
}

// A binding the server refuses fails that Subscribe only; the node's
// consumer and other subscriptions are not disturbed.
func TestRefusedBinding(t *testing.T) {
	u := serverURL(t)
	ex := "cometgate.test.refused." + token()
	b := connect(t, amqpbroker.Options{URL: u, Exchange: ex, DeclareExchange: true})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	raw := rawChannel(t, u)
	t.Cleanup(func() { _ = raw.ExchangeDelete(ex, false, false) })
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "ok.x", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	queue := b.Queue()

	// Deleting the exchange makes the next bind fail with 404 on the
	// declaring channel, while the connection and the consumer stay.
	if err := raw.ExchangeDelete(ex, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Subscribe(ctxT(t), "refused.x", func(brokers.Message) {}); err == nil {
		t.Fatal("Subscribe with its binding refused returned no error")
	}
	if !b.Ready() || b.Queue() != queue || b.Reconnects() != 0 {
		t.Errorf("after a refused binding: Ready %v, queue %q (was %q), reconnects %d", b.Ready(), b.Queue(), queue, b.Reconnects())
	}
	// The exchange comes back (as an operator would restore it); the
	// declaring channel was reopened, so binding works again.
	if err := raw.ExchangeDeclare(ex, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	var in2 brokertest.Inbox
	sub2, err := b.Subscribe(ctxT(t), "again.x", in2.Handle)
	if err != nil {
		t.Fatalf("Subscribe after the exchange is back: %v", err)
	}
	defer sub2.Unsubscribe()
	if err := raw.PublishWithContext(ctxT(t), ex, "again.x", false, false, amqp.Publishing{Body: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	in2.Wait(t, "again.x", "y")
}

// Connect returns a Broker that is not Ready while no server listens,
// and Close works on it.
func TestConnectUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	var st brokertest.StateLog
	b := connect(t, amqpbroker.Options{URL: "amqp://guest:guest@" + addr + "/", ReconnectWait: 5 * time.Millisecond, OnState: st.Record})
	if b.Ready() || b.Queue() != "" || b.Bindings() != 0 {
		t.Fatal("Ready without a server")
	}
	err = b.Publish(ctxT(t), brokers.Message{Channel: "early", Data: []byte("x")})
	if !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Publish without a server: %v, want ErrUnavailable", err)
	}
	sub, err := b.Subscribe(ctxT(t), "early", func(brokers.Message) {})
	if err != nil {
		t.Fatalf("Subscribe without a server: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Errorf("Unsubscribe after Close: %v", err)
	}
	if got := st.List(); !slices.Equal(got, []brokers.State{brokers.StateClosed}) {
		t.Errorf("states %v, want only closed", got)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "early"}); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(ctxT(t), "early", func(brokers.Message) {}); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
}

// Connect gives up at once when the server refuses the credentials.
func TestConnectBadCredentials(t *testing.T) {
	u := serverURL(t)
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	pu.User = url.UserPassword("cometgate-no-such-user", "wrong")
	_, err = amqpbroker.Connect(ctxT(t), amqpbroker.Options{URL: pu.String()})
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.AccessRefused {
		t.Errorf("Connect with bad credentials: %v, want a 403 error", err)
	}
}

func TestConnectCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := amqpbroker.Connect(ctx, amqpbroker.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Connect with a canceled ctx: %v", err)
	}
}

// Bad names, headers and options are errors, found before the server is
// asked (so this runs without a server).
func TestInvalidInput(t *testing.T) {
	for _, o := range []amqpbroker.Options{
		{URL: "http://127.0.0.1/"},
		{ExchangeType: "direct"},
		{SubjectPrefix: "a b"},
		{Prefetch: -1},
	} {
		if b, err := amqpbroker.Connect(t.Context(), o); err == nil {
			b.Close()
			t.Errorf("Connect accepted %+v", o)
		}
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	b := connect(t, amqpbroker.Options{URL: "amqp://guest:guest@" + addr + "/", SubjectPrefix: "pre"})
	for _, ch := range []string{"", "a.*", "a.>", "a.#", "a..b", "a b", "a.", strings.Repeat("x", 252)} {
		err := b.Publish(ctxT(t), brokers.Message{Channel: ch})
		if err == nil || errors.Is(err, brokers.ErrUnavailable) {
			t.Errorf("Publish(%.20q) = %v, want a validation error", ch, err)
		}
	}
	for _, h := range []map[string]string{{"": "v"}, {strings.Repeat("k", 300): "v"}} {
		err := b.Publish(ctxT(t), brokers.Message{Channel: "a", Header: h})
		if err == nil || errors.Is(err, brokers.ErrUnavailable) {
			t.Errorf("Publish with header %.20v = %v, want a validation error", h, err)
		}
	}
	for _, p := range []string{"", "a.>.b", "a*", "#", "a.#", "a b"} {
		if _, err := b.Subscribe(ctxT(t), p, func(brokers.Message) {}); err == nil {
			t.Errorf("Subscribe(%q) accepted", p)
		}
	}
	if _, err := b.Subscribe(ctxT(t), "a", nil); err == nil {
		t.Error("Subscribe with a nil handler accepted")
	}
}

// Connect returns a Broker that is Ready at once when the server is up.
func TestReadyAfterConnect(t *testing.T) {
	u := serverURL(t)
	var st brokertest.StateLog
	b := connect(t, amqpbroker.Options{URL: u, Exchange: testExchange, DeclareExchange: true, OnState: st.Record})
	if !b.Ready() {
		t.Error("not Ready when Connect returned")
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "ready." + token(), Data: []byte("x")}); err != nil {
		t.Errorf("Publish right after Connect: %v", err)
	}
	brokertest.WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) == 1 })
}

// After a reconnect the node has a new queue with exactly the bindings of
// the patterns active then.
func TestReconnectRestoresTopology(t *testing.T) {
	u := serverURL(t)
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := amqp.ParseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	p := brokertest.NewProxy(t, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	pu.Host = p.Addr()
	b := connect(t, amqpbroker.Options{
		URL: pu.String(), Exchange: testExchange, DeclareExchange: true,
		ReconnectWait: 10 * time.Millisecond, MaxReconnectWait: 100 * time.Millisecond,
	})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	base := "restore." + token()
	ins := make([]brokertest.Inbox, 5)
	subs := make([]brokers.Subscription, 5)
	for i := range subs {
		pattern := base + ".p" + strconv.Itoa(i%4) + ".*" // p0 twice
		s, err := b.Subscribe(ctxT(t), pattern, ins[i].Handle)
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = s
		defer s.Unsubscribe()
	}
	if b.Bindings() != 4 {
		t.Fatalf("Bindings() = %d, want 4", b.Bindings())
	}
	oldQueue := b.Queue()

	p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	if b.Queue() != "" || b.Bindings() != 0 {
		t.Errorf("while disconnected: Queue() %q, Bindings() %d", b.Queue(), b.Bindings())
	}
	if err := subs[3].Unsubscribe(); err != nil { // pattern p3 ends
		t.Fatal(err)
	}
	if err := subs[4].Unsubscribe(); err != nil { // p0 keeps one subscription
		t.Fatal(err)
	}
	p.Restore()
	brokertest.WaitUntil(t, "Ready again", b.Ready)
	if b.Queue() == "" || b.Queue() == oldQueue {
		t.Errorf("queue after reconnect %q, want a new one (was %q)", b.Queue(), oldQueue)
	}
	if b.Bindings() != 3 || b.Reconnects() != 1 {
		t.Errorf("after reconnect: Bindings() %d, want 3; Reconnects() %d, want 1", b.Bindings(), b.Reconnects())
	}
	checkServerBindings(t, b.Queue(), base, 3)
	for i := range 4 {
		ch := base + ".p" + strconv.Itoa(i) + ".x"
		if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("after")}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		ins[i].Wait(t, base+".p"+strconv.Itoa(i)+".x", "after")
	}
	time.Sleep(50 * time.Millisecond)
	if n := ins[3].Count() + ins[4].Count(); n != 0 {
		t.Errorf("subscriptions ended during the outage got %d messages", n)
	}
}

// A server that accepts connections but never speaks AMQP: Connect's
// first attempt ends with ctx's deadline and returns a Broker that keeps
// trying; Close interrupts an attempt in its handshake.
func TestConnectSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	defer func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	accepted := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	b, err := amqpbroker.Connect(ctx, amqpbroker.Options{
		URL:           "amqp://guest:guest@" + ln.Addr().String() + "/",
		ReconnectWait: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Connect to a silent server: %v, want a Broker retrying in the background", err)
	}
	if b.Ready() {
		t.Error("Ready with a silent server")
	}
	brokertest.WaitUntil(t, "a second connection attempt", func() bool { return accepted() >= 2 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
