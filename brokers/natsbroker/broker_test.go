package natsbroker_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 15 * time.Second

// startEmbedded starts an embedded server closed at the end of the test.
func startEmbedded(t *testing.T, eo natsbroker.EmbeddedOptions) *natsbroker.Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	e, err := natsbroker.StartEmbedded(ctx, eo)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Embedded.Close: %v", err)
		}
	})
	return e
}

// connect returns a Broker closed at the end of the test.
func connect(t *testing.T, opts natsbroker.Options) *natsbroker.Broker {
	t.Helper()
	b, err := natsbroker.Connect(t.Context(), opts)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// rawConn is a plain nats.go client, closed (and waited for) at the end
// of the test.
func rawConn(t *testing.T, url string) *nats.Conn {
	t.Helper()
	closed := make(chan struct{})
	nc, err := nats.Connect(url, nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatalf("nats.Connect(%s): %v", url, err)
	}
	t.Cleanup(func() { nc.Close(); <-closed })
	return nc
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConformanceInProcess(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{})
	if e.ClientURL() != "" {
		t.Fatalf("ClientURL() = %q without a listener", e.ClientURL())
	}
	brokertest.Run(t, func(t *testing.T) brokers.Broker {
		b, err := e.NewBroker(t.Context(), natsbroker.Options{})
		if err != nil {
			t.Fatalf("NewBroker: %v", err)
		}
		return b
	})
}

func TestConformanceListener(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0"})
	brokertest.Run(t, func(t *testing.T) brokers.Broker {
		return connect(t, natsbroker.Options{URLs: []string{e.ClientURL()}})
	})
}

func TestConformanceExternal(t *testing.T) {
	u := os.Getenv("NATS_URL")
	if u == "" {
		u = nats.DefaultURL
	}
	probe, err := nats.Connect(u, nats.Timeout(2*time.Second), nats.Name("cometgate-test-probe"))
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("external NATS server %s not reachable: %v", u, err)
		}
		t.Skipf("external NATS server %s not reachable (set NATS_URL): %v", u, err)
	}
	probe.Close()
	brokertest.Run(t, func(t *testing.T) brokers.Broker {
		return connect(t, natsbroker.Options{URLs: []string{u}})
	})
}

// A plain NATS client and the gateway's Broker see each other's messages.
func TestRawClientInterop(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0"})
	b := e.Broker()
	brokertest.WaitUntil(t, "embedded broker ready", b.Ready)

	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "demo.x", in.Handle)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Unsubscribe()

	nc := rawConn(t, e.ClientURL())
	m := nats.NewMsg("demo.x")
	m.Data = []byte("from raw")
	m.Header.Set("Content-Type", "text/plain")
	if err := nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	got := in.Wait(t, "demo.x", "from raw")
	if got.Header["Content-Type"] != "text/plain" || got.Seq != 0 {
		t.Errorf("got header %v seq %d", got.Header, got.Seq)
	}

	raw, err := nc.SubscribeSync("demo.y")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "demo.y", Data: []byte("from broker")}); err != nil {
		t.Fatal(err)
	}
	rm, err := raw.NextMsg(waitTimeout)
	if err != nil || string(rm.Data) != "from broker" {
		t.Fatalf("raw client got %v, %v", rm, err)
	}
}

func TestSubjectPrefix(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0", SubjectPrefix: "app"})
	b := e.Broker()
	brokertest.WaitUntil(t, "embedded broker ready", b.Ready)
	nc := rawConn(t, e.ClientURL())

	// Broker → server: the prefix is prepended.
	raw, err := nc.SubscribeSync("app.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "x.y", Data: []byte("out")}); err != nil {
		t.Fatal(err)
	}
	rm, err := raw.NextMsg(waitTimeout)
	if err != nil || rm.Subject != "app.x.y" || string(rm.Data) != "out" {
		t.Fatalf("raw client got %v, %v; want app.x.y", rm, err)
	}

	// Server → Broker: the prefix is stripped, and ">" means everything
	// under the prefix only.
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), ">", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for _, subj := range []string{"other.z", "z", "app.z", "app.sentinel"} {
		if err := nc.Publish(subj, []byte(subj)); err != nil {
			t.Fatal(err)
		}
	}
	in.Wait(t, "z", "app.z")
	in.Wait(t, "sentinel", "app.sentinel")
	time.Sleep(50 * time.Millisecond)
	for _, m := range in.Messages() {
		if m.Channel != "z" && m.Channel != "sentinel" && m.Channel != "x.y" {
			t.Errorf("unexpected delivery %q (data %q)", m.Channel, m.Data)
		}
	}
}

func TestInvalidNames(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{})
	b := e.Broker()
	brokertest.WaitUntil(t, "embedded broker ready", b.Ready)
	for _, ch := range []string{"", "a.*", "a.>", "a..b", "a b", "a."} {
		err := b.Publish(ctxT(t), brokers.Message{Channel: ch})
		if err == nil || errors.Is(err, brokers.ErrUnavailable) {
			t.Errorf("Publish(%q) = %v, want a validation error", ch, err)
		}
	}
	for _, p := range []string{"", "a.>.b", "a*", "a b"} {
		if _, err := b.Subscribe(ctxT(t), p, func(brokers.Message) {}); err == nil {
			t.Errorf("Subscribe(%q) accepted", p)
		}
	}
	if _, err := b.Subscribe(ctxT(t), "a", nil); err == nil {
		t.Error("Subscribe with nil handler accepted")
	}
	err := b.Publish(ctxT(t), brokers.Message{Channel: "a", Header: map[string]string{"K": "v\r\nX: y"}})
	if err == nil {
		t.Error("header with CRLF accepted")
	}
}

// The reconnect test: the server goes away and comes back on the same
// port; the Broker reports it, refuses publishes meanwhile, and its old
// subscriptions work again afterwards.
func TestReconnect(t *testing.T) {
	dir := t.TempDir()
	e1 := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "1")})
	clientURL := e1.ClientURL()
	u, err := url.Parse(clientURL)
	if err != nil {
		t.Fatal(err)
	}

	var st brokertest.StateLog
	b := connect(t, natsbroker.Options{
		URLs:             []string{clientURL},
		ReconnectWait:    10 * time.Millisecond,
		MaxReconnectWait: 100 * time.Millisecond,
		OnState:          st.Record,
	})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	brokertest.WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) == 1 })

	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "demo.reconnect", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "demo.reconnect", Data: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	in.Wait(t, "demo.reconnect", "before")

	// Outage.
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	brokertest.WaitUntil(t, "StateDisconnected", func() bool { return st.Count(brokers.StateDisconnected) == 1 })

	// Publishing fails at once with ErrUnavailable; it does not wait for
	// the (long) context deadline.
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	err = b.Publish(ctx, brokers.Message{Channel: "demo.reconnect", Data: []byte("lost")})
	cancel()
	if !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Publish during outage: %v, want ErrUnavailable", err)
	}
	// Subscribing during the outage works; it takes effect on reconnect.
	var later brokertest.Inbox
	sub2, err := b.Subscribe(ctxT(t), "demo.later", later.Handle)
	if err != nil {
		t.Fatalf("Subscribe during outage: %v", err)
	}
	defer sub2.Unsubscribe()

	// The server comes back on the same port.
	e2 := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: u.Host, StoreDir: filepath.Join(dir, "2")})
	if e2.ClientURL() != clientURL {
		t.Fatalf("restarted server at %s, want %s", e2.ClientURL(), clientURL)
	}
	brokertest.WaitUntil(t, "Ready again", b.Ready)
	brokertest.WaitUntil(t, "StateConnected again", func() bool { return st.Count(brokers.StateConnected) == 2 })
	if s, _ := st.Last(); s != brokers.StateConnected {
		t.Errorf("last state %v, want connected", s)
	}
	if b.Reconnects() != 1 {
		t.Errorf("Reconnects() = %d, want 1", b.Reconnects())
	}

	// Old and new subscriptions receive messages from another client.
	nc := rawConn(t, e2.ClientURL())
	if err := nc.Publish("demo.reconnect", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("demo.later", []byte("later")); err != nil {
		t.Fatal(err)
	}
	in.Wait(t, "demo.reconnect", "after")
	later.Wait(t, "demo.later", "later")
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "demo.reconnect", Data: []byte("again")}); err != nil {
		t.Fatalf("Publish after reconnect: %v", err)
	}
	in.Wait(t, "demo.reconnect", "again")
	if in.Has("demo.reconnect", "lost") {
		t.Error("a publish refused during the outage was delivered later")
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if s, _ := st.Last(); s != brokers.StateClosed {
		t.Errorf("last state after Close %v, want closed", s)
	}
}

// Connect succeeds while no server runs, and the Broker connects once one
// starts.
func TestConnectBeforeServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	var st brokertest.StateLog
	b := connect(t, natsbroker.Options{
		URLs:             []string{"nats://" + addr},
		ReconnectWait:    10 * time.Millisecond,
		MaxReconnectWait: 100 * time.Millisecond,
		OnState:          st.Record,
	})
	if b.Ready() {
		t.Fatal("Ready without a server")
	}
	err = b.Publish(ctxT(t), brokers.Message{Channel: "early", Data: []byte("x"), Header: map[string]string{"K": "v"}})
	if !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Publish without a server: %v, want ErrUnavailable", err)
	}
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), "early", in.Handle)
	if err != nil {
		t.Fatalf("Subscribe without a server: %v", err)
	}
	defer sub.Unsubscribe()

	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: addr})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	brokertest.WaitUntil(t, "StateConnected", func() bool { return st.Count(brokers.StateConnected) == 1 })
	nc := rawConn(t, e.ClientURL())
	if err := nc.Publish("early", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	in.Wait(t, "early", "hello")
}

// Close works while the Broker has never reached a server.
func TestCloseWhileConnecting(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	var st brokertest.StateLog
	b := connect(t, natsbroker.Options{URLs: []string{"nats://" + addr}, ReconnectWait: 5 * time.Millisecond, OnState: st.Record})
	sub, err := b.Subscribe(ctxT(t), "never", func(brokers.Message) {})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Errorf("Unsubscribe after Close: %v", err)
	}
	if s, ok := st.Last(); !ok || s != brokers.StateClosed || st.Count(brokers.StateConnected) != 0 {
		t.Errorf("states %v, want only closed", st.List())
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: "never"}); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
}

// Messages NATS drops for a slow subscription are counted, and the
// subscription's Handler is told with a Gap marker before the messages
// that follow: on a channel without history nothing else would say that
// some are missing.
func TestSlowConsumerGap(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{})
	b, err := e.NewBroker(t.Context(), natsbroker.Options{PendingMsgs: 2, PendingBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	brokertest.WaitUntil(t, "Ready", b.Ready)

	// The first call waits: the buffer behind it overflows.
	var in brokertest.Inbox
	in.Stall()
	sub, err := b.Subscribe(ctxT(t), "slow", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	defer in.Release()
	const n = 20
	for i := range n {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: "slow", Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	brokertest.WaitUntil(t, "a slow consumer event", func() bool { return b.SlowConsumers() > 0 })
	in.Release()
	// A message published after the drops arrives after the marker. It is
	// published again until one arrives: while the buffer is still full
	// it is dropped too.
	brokertest.WaitUntil(t, "a message published after the drops", func() bool {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: "slow", Data: []byte("last")}); err != nil {
			t.Fatal(err)
		}
		return in.Has("slow", "last")
	})
	got := in.Messages()
	gaps, data := 0, 0
	prev := -1
	for i, m := range got {
		if m.Gap {
			// It may be the first thing delivered: on a busy machine the
			// subscription's delivery goroutine can start after the
			// publishes overflowed its buffer, and then the marker comes
			// before message 0 (a CI run saw it).
			gaps++
			if m.Channel != "" || m.Data != nil {
				t.Errorf("marker %d: %+v", i, m)
			}
			continue
		}
		if string(m.Data) == "last" {
			if gaps == 0 {
				t.Errorf("a message published after the drops came before any gap marker")
			}
			break
		}
		data++
		k, err := strconv.Atoi(string(m.Data))
		if err != nil || k <= prev {
			t.Fatalf("message %d is %q after %d: not in order", i, m.Data, prev)
		}
		prev = k
	}
	if data >= n {
		t.Errorf("all %d messages delivered: nothing was dropped", data)
	}
}

func TestEmbedded(t *testing.T) {
	t.Run("TempStoreRemoved", func(t *testing.T) {
		e, err := natsbroker.StartEmbedded(t.Context(), natsbroker.EmbeddedOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dir := e.StoreDir()
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("store dir: %v", err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("temporary store %s still there: %v", dir, err)
		}
		if e.Broker().Ready() {
			t.Error("Broker ready after Close")
		}
		if _, err := e.NewBroker(t.Context(), natsbroker.Options{}); !errors.Is(err, brokers.ErrClosed) {
			t.Errorf("NewBroker after Close: %v, want ErrClosed", err)
		}
	})
	t.Run("GivenStoreKept", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "store")
		e, err := natsbroker.StartEmbedded(t.Context(), natsbroker.EmbeddedOptions{StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		// JetStream is enabled.
		js, err := jetstream.New(e.Broker().Conn())
		if err != nil {
			t.Fatal(err)
		}
		brokertest.WaitUntil(t, "Ready", e.Broker().Ready)
		if _, err := js.AccountInfo(ctxT(t)); err != nil {
			t.Errorf("JetStream AccountInfo: %v", err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("given store dir removed: %v", err)
		}
	})
	t.Run("Authentication", func(t *testing.T) {
		for _, eo := range []natsbroker.EmbeddedOptions{
			{Listen: "127.0.0.1:0", Token: "s3cret-token"},
			{Listen: "127.0.0.1:0", User: "gw", Password: "s3cret"},
		} {
			e := startEmbedded(t, eo)
			// The node's own in-process broker presents the credentials.
			brokertest.WaitUntil(t, "Ready", e.Broker().Ready)
			if err := e.Broker().Publish(ctxT(t), brokers.Message{Channel: "auth.x", Data: []byte("1")}); err != nil {
				t.Errorf("in-process publish: %v", err)
			}
			if nc, err := nats.Connect(e.ClientURL(), nats.Timeout(2*time.Second)); err == nil {
				nc.Close()
				t.Errorf("a client without credentials connected (%+v)", eo)
			}
			creds := nats.Token(eo.Token)
			if eo.User != "" {
				creds = nats.UserInfo(eo.User, eo.Password)
			}
			nc, err := nats.Connect(e.ClientURL(), creds, nats.Timeout(2*time.Second))
			if err != nil {
				t.Errorf("a client with the credentials: %v", err)
			} else {
				nc.Close()
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("RandomPortNot4222", func(t *testing.T) {
		for _, listen := range []string{"127.0.0.1:0", "127.0.0.1:-1"} {
			e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: listen})
			u, err := url.Parse(e.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			if p := u.Port(); p == "4222" || p == "0" || p == "" {
				t.Errorf("Listen %q: ClientURL %s", listen, e.ClientURL())
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("PortInUse", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		e, err := natsbroker.StartEmbedded(ctxT(t), natsbroker.EmbeddedOptions{Listen: l.Addr().String()})
		if err == nil {
			e.Close()
			t.Fatal("StartEmbedded on a busy port succeeded")
		}
	})
	t.Run("ServerLogToSlog", func(t *testing.T) {
		var buf syncBuffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		e := startEmbedded(t, natsbroker.EmbeddedOptions{Logger: logger})
		brokertest.WaitUntil(t, "Ready", e.Broker().Ready)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		for _, want := range []string{"component=nats-server", "level=DEBUG", "nats connected"} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("BadListen", func(t *testing.T) {
		if _, err := natsbroker.StartEmbedded(t.Context(), natsbroker.EmbeddedOptions{Listen: "nonsense"}); err == nil {
			t.Fatal("StartEmbedded accepted a bad listen address")
		}
	})
	t.Run("CloseClosesExtraBrokers", func(t *testing.T) {
		e, err := natsbroker.StartEmbedded(t.Context(), natsbroker.EmbeddedOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := e.NewBroker(t.Context(), natsbroker.Options{})
		if err != nil {
			t.Fatal(err)
		}
		brokertest.WaitUntil(t, "Ready", b.Ready)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		err = b.Publish(ctxT(t), brokers.Message{Channel: "x", Data: []byte("x")})
		if !errors.Is(err, brokers.ErrClosed) {
			t.Errorf("Publish on an extra broker after Embedded.Close: %v, want ErrClosed", err)
		}
	})
}
