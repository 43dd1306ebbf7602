// Package brokertest is the conformance suite of the brokers contract:
// every implementation runs Run, unchanged, against a real broker.
//
// Each subtest gets a fresh Broker from the factory and names its channels
// with a random token, so runs against a shared external server do not see
// each other's messages. Assertions about delivery poll with generous
// timeouts; assertions that something is NOT delivered publish a sentinel
// afterwards on a channel the same subscription receives, wait for it, and
// then allow a short quiet period for stragglers (that period can only
// make a broken broker pass, never make a correct one fail).
//
// The suite does not check goroutine leaks itself: the implementation's
// test package should use goleak.VerifyTestMain, which then covers every
// Close the suite performs.
package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

const (
	// waitTimeout bounds every wait for a delivery or a state.
	waitTimeout = 15 * time.Second
	// quietPeriod is how long to keep watching for unwanted deliveries
	// after a sentinel arrived.
	quietPeriod = 50 * time.Millisecond
	// opTimeout bounds each Publish and Subscribe call.
	opTimeout = 10 * time.Second
)

// Run runs the conformance suite. newBroker returns a new, independent
// Broker connected to the broker under test; it is called once or more
// per subtest and may register cleanups with t. Run closes the Brokers it
// gets (Close is idempotent, so the factory may close them too).
func Run(t *testing.T, newBroker func(t *testing.T) brokers.Broker) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"PublishSubscribe", testPublishSubscribe},
		{"Headers", testHeaders},
		{"MessageID", testMessageID},
		{"Unsubscribe", testUnsubscribe},
		{"WildcardStar", testWildcardStar},
		{"WildcardTail", testWildcardTail},
		{"Ordering", testOrdering},
		{"ManyChannels", testManyChannels},
		{"PublishConfirmed", testPublishConfirmed},
		{"CanceledContext", testCanceledContext},
		{"CloseWhileBusy", testCloseWhileBusy},
		{"CloseTwice", testCloseTwice},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, &suite{newBroker: newBroker, prefix: "cgtest." + token()})
		})
	}
}

type suite struct {
	newBroker func(t *testing.T) brokers.Broker
	prefix    string // unique per subtest: "cgtest.<random>"
}

// broker returns a new Broker that is Ready, closed at the end of the test.
func (s *suite) broker(t *testing.T) brokers.Broker {
	t.Helper()
	b := s.newBroker(t)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	WaitUntil(t, "broker ready", b.Ready)
	return b
}

// ch returns a channel name unique to this subtest.
func (s *suite) ch(parts ...string) string {
	name := s.prefix
	for _, p := range parts {
		name += "." + p
	}
	return name
}

// token returns a random channel-safe token.
func token() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

func publish(t *testing.T, b brokers.Broker, channel string, data string) {
	t.Helper()
	if err := b.Publish(ctxT(t), brokers.Message{Channel: channel, Data: []byte(data)}); err != nil {
		t.Fatalf("Publish(%q): %v", channel, err)
	}
}

func subscribe(t *testing.T, b brokers.Broker, pattern string, h brokers.Handler) brokers.Subscription {
	t.Helper()
	sub, err := b.Subscribe(ctxT(t), pattern, h)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", pattern, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return sub
}

func describe(msgs []brokers.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = fmt.Sprintf("%s=%q", m.Channel, m.Data)
	}
	return out
}

func testPublishSubscribe(t *testing.T, s *suite) {
	b := s.broker(t)
	ch := s.ch("news")
	var c Inbox
	subscribe(t, b, ch, c.Handle)

	publish(t, b, ch, "hello")
	c.WaitN(t, 1)
	// A sentinel on the same channel: once it is in, a duplicate of the
	// first message would have arrived already.
	publish(t, b, ch, "sentinel")
	c.Wait(t, ch, "sentinel")
	time.Sleep(quietPeriod)

	got := c.Messages()
	if len(got) != 2 {
		t.Fatalf("got %d messages %v, want exactly [hello sentinel]", len(got), describe(got))
	}
	m := got[0]
	if m.Channel != ch || string(m.Data) != "hello" {
		t.Errorf("got %s=%q, want %s=%q", m.Channel, m.Data, ch, "hello")
	}
	if string(got[1].Data) != "sentinel" {
		t.Errorf("second message %q, want sentinel", got[1].Data)
	}

	// Empty payloads are messages too.
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch}); err != nil {
		t.Fatalf("Publish(empty): %v", err)
	}
	c.WaitN(t, 3)
	if m := c.Messages()[2]; m.Channel != ch || len(m.Data) != 0 {
		t.Errorf("empty message arrived as %s=%q", m.Channel, m.Data)
	}
	c.CheckSerial(t)
}

func testHeaders(t *testing.T, s *suite) {
	b := s.broker(t)
	ch := s.ch("headers")
	var c Inbox
	subscribe(t, b, ch, c.Handle)

	want := map[string]string{
		"Content-Type":     "application/json",
		"X-Cometgate-Test": token(),
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(`{}`), Header: want}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("plain")}); err != nil {
		t.Fatalf("Publish without header: %v", err)
	}
	c.WaitN(t, 2)
	got := c.Messages()
	for k, v := range want {
		if got[0].Header[k] != v {
			t.Errorf("header %q = %q, want %q (all: %v)", k, got[0].Header[k], v, got[0].Header)
		}
	}
	for k, v := range got[1].Header {
		if _, ok := want[k]; ok {
			t.Errorf("header %q=%q leaked into a message published without it", k, v)
		}
	}
}

// testMessageID: a message's ID comes back on delivery, and a message
// published without one has none.
func testMessageID(t *testing.T, s *suite) {
	b := s.broker(t)
	ch := s.ch("msgid")
	var c Inbox
	subscribe(t, b, ch, c.Handle)
	id := "m-" + token()
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("1"), ID: id}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("2")}); err != nil {
		t.Fatalf("Publish without an ID: %v", err)
	}
	c.WaitN(t, 2)
	got := c.Messages()
	if got[0].ID != id || got[1].ID != "" {
		t.Errorf("IDs %q and %q, want %q and none", got[0].ID, got[1].ID, id)
	}
}

func testUnsubscribe(t *testing.T, s *suite) {
	b := s.broker(t)
	ch := s.ch("unsub")
	var c Inbox
	var unsubscribed atomic.Bool
	var lateCalls atomic.Int32
	sub := subscribe(t, b, ch, func(m brokers.Message) {
		if unsubscribed.Load() {
			lateCalls.Add(1)
		}
		c.Handle(m)
	})
	// A second subscription on the same channel receives the sentinel.
	var witness Inbox
	subscribe(t, b, ch, witness.Handle)

	publish(t, b, ch, "before")
	c.Wait(t, ch, "before")

	if err := sub.Unsubscribe(); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	unsubscribed.Store(true)
	if err := sub.Unsubscribe(); err != nil {
		t.Fatalf("second Unsubscribe: %v, want nil", err)
	}

	publish(t, b, ch, "after")
	witness.Wait(t, ch, "after")
	time.Sleep(quietPeriod)
	if n := lateCalls.Load(); n > 0 {
		t.Errorf("Handler called %d times after Unsubscribe returned", n)
	}
	if got := c.Messages(); len(got) != 1 {
		t.Errorf("unsubscribed handler got %v, want only \"before\"", describe(got))
	}
}

// checkPattern subscribes to pattern, publishes to every channel in
// publish (in order) and then to sentinel, which pattern must match, and
// checks that exactly the channels in want arrived.
func checkPattern(t *testing.T, b brokers.Broker, pattern string, channels []string, want []string, sentinel string) {
	t.Helper()
	var c Inbox
	subscribe(t, b, pattern, c.Handle)
	for _, ch := range channels {
		publish(t, b, ch, ch)
	}
	publish(t, b, sentinel, "sentinel")
	c.Wait(t, sentinel, "sentinel")
	time.Sleep(quietPeriod)

	var got []string
	for _, m := range c.Messages() {
		if m.Channel == sentinel {
			continue
		}
		if string(m.Data) != m.Channel {
			t.Errorf("message published on %q arrived with Channel %q", m.Data, m.Channel)
		}
		got = append(got, m.Channel)
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("pattern %q received %q, want %q", pattern, got, want)
	}
}

func testWildcardStar(t *testing.T, s *suite) {
	b := s.broker(t)
	t.Run("last", func(t *testing.T) {
		// a.* matches a.b, not a, a.b.c or another prefix.
		checkPattern(t, b, s.ch("a", "*"),
			[]string{s.ch("a"), s.ch("a", "b"), s.ch("a", "c"), s.ch("a", "b", "c"), s.ch("b", "x")},
			[]string{s.ch("a", "b"), s.ch("a", "c")},
			s.ch("a", "zz"))
	})
	t.Run("middle", func(t *testing.T) {
		// m.*.c matches m.x.c, not m.x.d, m.c or m.x.y.c.
		checkPattern(t, b, s.ch("m", "*", "c"),
			[]string{s.ch("m", "x", "c"), s.ch("m", "y", "c"), s.ch("m", "x", "d"), s.ch("m", "c"), s.ch("m", "x", "y", "c")},
			[]string{s.ch("m", "x", "c"), s.ch("m", "y", "c")},
			s.ch("m", "zz", "c"))
	})
}

func testWildcardTail(t *testing.T, s *suite) {
	b := s.broker(t)
	// a.> matches a.b and a.b.c, not a itself or a sibling prefix.
	checkPattern(t, b, s.ch("a", ">"),
		[]string{s.ch("a"), s.ch("a", "b"), s.ch("a", "b", "c"), s.ch("ab"), s.ch("b", "a")},
		[]string{s.ch("a", "b"), s.ch("a", "b", "c")},
		s.ch("a", "zz"))
}

func testOrdering(t *testing.T, s *suite) {
	b := s.broker(t)
	ch := s.ch("ordered")
	const n = 1000
	var c Inbox
	subscribe(t, b, ch, c.Handle)
	for i := range n {
		publish(t, b, ch, strconv.Itoa(i))
	}
	c.WaitN(t, n)
	// The payloads are checked only now, which also catches a broker that
	// reuses Data buffers after delivery.
	got := c.Messages()
	if len(got) != n {
		t.Fatalf("got %d messages, want %d", len(got), n)
	}
	for i, m := range got {
		if string(m.Data) != strconv.Itoa(i) {
			t.Fatalf("message %d is %q, want %d (out of order, duplicated or reused buffer)", i, m.Data, i)
		}
	}
	c.CheckSerial(t)
}

func testManyChannels(t *testing.T, s *suite) {
	b := s.broker(t)
	const (
		channels   = 200
		perChannel = 5
		publishers = 8
	)
	cs := make([]Inbox, channels)
	names := make([]string, channels)
	for i := range channels {
		names[i] = s.ch("many", strconv.Itoa(i))
		subscribe(t, b, names[i], cs[i].Handle)
	}
	// Each publisher owns a subset of the channels, so per-channel order
	// is defined while channels interleave.
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		wg.Go(func() {
			ctx := ctxT(t)
			for k := range perChannel {
				for i := p; i < channels; i += publishers {
					data := fmt.Sprintf("%d/%d", i, k)
					if err := b.Publish(ctx, brokers.Message{Channel: names[i], Data: []byte(data)}); err != nil {
						errs <- fmt.Errorf("Publish(%q): %w", names[i], err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range cs {
		cs[i].WaitN(t, perChannel)
	}
	// Sentinels on every channel flush out stray deliveries.
	for i := range channels {
		publish(t, b, names[i], "sentinel")
	}
	for i := range cs {
		cs[i].Wait(t, names[i], "sentinel")
	}
	time.Sleep(quietPeriod)
	for i := range cs {
		got := cs[i].Messages()
		want := make([]string, 0, perChannel+1)
		for k := range perChannel {
			want = append(want, fmt.Sprintf("%s=%q", names[i], fmt.Sprintf("%d/%d", i, k)))
		}
		want = append(want, fmt.Sprintf("%s=%q", names[i], "sentinel"))
		if d := describe(got); !slices.Equal(d, want) {
			t.Errorf("channel %d got %v, want %v", i, d, want)
		}
	}
}

// testPublishConfirmed uses two Brokers (two connections): once Subscribe
// returned on one, and Publish returned on the other, the message is
// delivered without publishing again.
func testPublishConfirmed(t *testing.T, s *suite) {
	sub := s.broker(t)
	pub := s.broker(t)
	for i := range 20 {
		ch := s.ch("confirmed", strconv.Itoa(i))
		var c Inbox
		subscribe(t, sub, ch, c.Handle)
		publish(t, pub, ch, "x")
		c.Wait(t, ch, "x")
	}
}

func testCanceledContext(t *testing.T, s *suite) {
	b := s.broker(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := b.Publish(ctx, brokers.Message{Channel: s.ch("canceled"), Data: []byte("x")}); err == nil {
		t.Error("Publish with a canceled context returned nil")
	}
	// Subscribe with a canceled context may fail or succeed, but a
	// returned subscription must be usable.
	if sub, err := b.Subscribe(ctx, s.ch("canceled"), func(brokers.Message) {}); err == nil {
		if err := sub.Unsubscribe(); err != nil {
			t.Errorf("Unsubscribe: %v", err)
		}
	}
	// The broker still works.
	var c Inbox
	subscribe(t, b, s.ch("after"), c.Handle)
	publish(t, b, s.ch("after"), "ok")
	c.Wait(t, s.ch("after"), "ok")
}

func testCloseWhileBusy(t *testing.T, s *suite) {
	b := s.broker(t)
	const subscribers, publishers = 10, 4

	var closed atomic.Bool
	var lateCalls atomic.Int32
	var received atomic.Int64
	handler := func(brokers.Message) {
		if closed.Load() {
			lateCalls.Add(1)
		}
		received.Add(1)
	}
	subs := make([]brokers.Subscription, subscribers)
	for i := range subscribers {
		subs[i] = subscribe(t, b, s.ch("busy", strconv.Itoa(i%3)), handler)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			ch := s.ch("busy", strconv.Itoa(p%3))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := b.Publish(context.Background(), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(i))})
				if errors.Is(err, brokers.ErrClosed) {
					return
				}
			}
		})
	}
	// Subscribing and unsubscribing concurrently with Close, too.
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			sub, err := b.Subscribe(context.Background(), s.ch("busy", "churn"), handler)
			if errors.Is(err, brokers.ErrClosed) {
				return
			}
			if err == nil {
				_ = sub.Unsubscribe()
			}
		}
	})

	WaitUntil(t, "traffic before Close", func() bool { return received.Load() >= 100 })
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed.Store(true)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		close(stop)
		<-done
		t.Fatal("publishers and subscribers did not see ErrClosed after Close")
	}

	if err := b.Publish(ctxT(t), brokers.Message{Channel: s.ch("busy", "0"), Data: []byte("late")}); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(ctxT(t), s.ch("busy", "0"), handler); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
	if b.Ready() {
		t.Error("Ready after Close")
	}
	for _, sub := range subs {
		if err := sub.Unsubscribe(); err != nil {
			t.Errorf("Unsubscribe after Close: %v", err)
		}
	}
	if n := lateCalls.Load(); n > 0 {
		t.Errorf("Handler called %d times after Close returned", n)
	}
}

func testCloseTwice(t *testing.T, s *suite) {
	b := s.broker(t)
	var c Inbox
	subscribe(t, b, s.ch("twice"), c.Handle)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := b.Close(); err != nil {
				t.Errorf("concurrent Close: %v", err)
			}
		})
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Errorf("Close after Close: %v", err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: s.ch("twice"), Data: []byte("x")}); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
}
