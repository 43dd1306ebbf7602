package amqpbroker_test

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/amqpbroker"
	"github.com/cometgate/cometgate/brokers/brokertest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Retention limits of the tests' short streams: segments of a few dozen
// messages, a handful of segments kept.
const (
	shortSegment = 4000
	shortMax     = 16000
)

// history is a stream on an exchange of its own, both unique to one test
// and deleted at its end.
type history struct {
	u        string
	exchange string
	spec     amqpbroker.StreamSpec
	prefix   string // channels under prefix + "." are stored
}

// newHistory declares nothing yet: the first Broker does (Declare).
func newHistory(t *testing.T, u string, short bool) *history {
	t.Helper()
	id := token()
	h := &history{
		u:        u,
		exchange: "cometgate.test.hist." + id,
		prefix:   "hist." + id,
	}
	h.spec = amqpbroker.StreamSpec{
		Name:     "cometgate.test.hist." + id,
		Patterns: []string{h.prefix + ".>"},
		Declare:  true,
	}
	if short {
		h.spec.SegmentBytes = shortSegment
		h.spec.MaxLengthBytes = shortMax
	}
	t.Cleanup(func() { h.delete(t) })
	return h
}

// delete removes the stream and the exchange (cleanups run after the
// Brokers closed).
func (h *history) delete(t *testing.T) {
	c, err := amqp.Dial(h.u)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	if _, err := ch.QueueDelete(h.spec.Name, false, false, false); err != nil {
		t.Errorf("cleanup: delete stream %s: %v", h.spec.Name, err)
	}
	if err := ch.ExchangeDelete(h.exchange, false, false); err != nil {
		t.Errorf("cleanup: delete exchange %s: %v", h.exchange, err)
	}
}

func (h *history) options() amqpbroker.Options {
	return amqpbroker.Options{
		URL: h.u, Exchange: h.exchange, DeclareExchange: true,
		Streams:       []amqpbroker.StreamSpec{h.spec},
		ReconnectWait: 10 * time.Millisecond, MaxReconnectWait: 200 * time.Millisecond,
	}
}

// node returns a ready Broker with the history.
func (h *history) node(t *testing.T) *amqpbroker.Broker {
	t.Helper()
	b := connect(t, h.options())
	brokertest.WaitUntil(t, "Ready", b.Ready)
	return b
}

// viaProxy returns a ready Broker with the history whose connection goes
// through a proxy the test can cut.
func (h *history) viaProxy(t *testing.T) (*amqpbroker.Broker, *brokertest.Proxy) {
	t.Helper()
	pu, err := url.Parse(h.u)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := amqp.ParseURI(h.u)
	if err != nil {
		t.Fatal(err)
	}
	p := brokertest.NewProxy(t, net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	pu.Host = p.Addr()
	opts := h.options()
	opts.URL = pu.String()
	b := connect(t, opts)
	brokertest.WaitUntil(t, "Ready", b.Ready)
	return b, p
}

func TestHistoryConformance(t *testing.T) {
	u := serverURL(t)
	var mu sync.Mutex
	known := make(map[string]*history)
	brokertest.RunHistory(t, func(t *testing.T, ho brokertest.HistoryOptions) (brokers.Broker, string) {
		t.Helper()
		mu.Lock()
		h := known[ho.Pattern]
		mu.Unlock()
		if h == nil {
			if ho.Pattern != "" {
				t.Fatalf("factory: unknown pattern %q", ho.Pattern)
			}
			h = newHistory(t, u, ho.Short)
			mu.Lock()
			known[h.prefix+".>"] = h
			mu.Unlock()
		}
		return connect(t, h.options()), h.prefix + ".>"
	})
}

// The contract suite, unchanged, on channels that all have history:
// every Subscribe is served by the stream's live consumer.
func TestConformanceStreams(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	h.spec.Patterns = []string{"cgtest.>"}
	brokertest.Run(t, func(t *testing.T) brokers.Broker {
		b := connect(t, h.options())
		if !b.HasHistory("cgtest.x.>") {
			t.Fatal("no history on cgtest.x.>")
		}
		return b
	})
}

// The outage suite, unchanged, on channels that all have history.
func TestOutageStreams(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	h.spec.Patterns = []string{"cgtest.>"}
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
		opts := h.options()
		opts.URL = viaProxy.String()
		opts.OnState = onState
		return connect(t, opts)
	}, target)
}

// rawStream reads the stream with a plain client from its first record
// until n messages (not end markers) came, and returns them with their
// offsets.
func rawStream(t *testing.T, u, stream string, n int) (offsets []int64, bodies []string, keys []string) {
	t.Helper()
	ch := rawChannel(t, u)
	if err := ch.Qos(100, 0, false); err != nil {
		t.Fatal(err)
	}
	d, err := ch.Consume(stream, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatal(err)
	}
	for len(bodies) < n {
		m := next(t, d)
		if err := m.Ack(false); err != nil {
			t.Fatal(err)
		}
		if _, marker := m.Headers["x-cometgate-end-marker"]; marker {
			continue
		}
		offsets = append(offsets, m.Headers["x-stream-offset"].(int64))
		bodies = append(bodies, string(m.Body))
		keys = append(keys, m.RoutingKey)
	}
	return offsets, bodies, keys
}

// Publish stores a message in the stream without anything special (the
// stream is bound to the exchange); live delivery and Replay number it
// with Seq = offset + 1, which a plain client reading the stream sees.
func TestHistorySeqIsOffsetPlusOne(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	var live brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", live.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	const n = 20
	for i := range n {
		err := b.Publish(ctxT(t), brokers.Message{Channel: h.prefix + ".c" + strconv.Itoa(i%3), Data: []byte(strconv.Itoa(i)),
			Header: map[string]string{"Content-Type": "text/plain", "X-I": strconv.Itoa(i)}})
		if err != nil {
			t.Fatal(err)
		}
	}
	brokertest.WaitUntil(t, "live delivery", func() bool { return live.Count() >= n })
	offsets, bodies, keys := rawStream(t, u, h.spec.Name, n)
	got := live.Messages()
	for i, m := range got {
		if string(m.Data) != strconv.Itoa(i) || bodies[i] != strconv.Itoa(i) {
			t.Fatalf("message %d: live %q, stored %q", i, m.Data, bodies[i])
		}
		if m.Seq != uint64(offsets[i])+1 {
			t.Errorf("message %d: Seq %d, stored at offset %d: want offset+1", i, m.Seq, offsets[i])
		}
		if keys[i] != m.Channel {
			t.Errorf("message %d stored with routing key %q, delivered on %q", i, keys[i], m.Channel)
		}
		if m.Header["X-I"] != strconv.Itoa(i) || m.Header["Content-Type"] != "text/plain" || len(m.Header) != 2 {
			t.Errorf("message %d header %v, want exactly Content-Type and X-I (no stream bookkeeping)", i, m.Header)
		}
	}

	// Replay after the k-th gives exactly the rest, with the same Seq.
	for _, k := range []int{0, 1, 7, n - 2, n - 1} {
		var r brokertest.Inbox
		res, err := b.Replay(ctxT(t), h.prefix+".>", got[k].Seq, r.Handle)
		if err != nil {
			t.Fatal(err)
		}
		want := got[k+1:]
		rep := r.Messages()
		if len(rep) != len(want) {
			t.Fatalf("Replay after #%d: %d messages, want %d", k, len(rep), len(want))
		}
		for i := range want {
			if rep[i].Seq != want[i].Seq || string(rep[i].Data) != string(want[i].Data) || rep[i].Channel != want[i].Channel {
				t.Fatalf("Replay after #%d: message %d is %d:%s=%q, want %d:%s=%q", k, i,
					rep[i].Seq, rep[i].Channel, rep[i].Data, want[i].Seq, want[i].Channel, want[i].Data)
			}
			if rep[i].Header["X-I"] != want[i].Header["X-I"] || len(rep[i].Header) != 2 {
				t.Errorf("replayed header %v, want %v", rep[i].Header, want[i].Header)
			}
		}
		wantLast := uint64(0)
		if len(want) > 0 {
			wantLast = want[len(want)-1].Seq
		}
		if res.Gap || res.Last != wantLast {
			t.Errorf("Replay after #%d: %+v, want Last %d and no gap", k, res, wantLast)
		}
	}
}

// AMQP's "#" also matches zero words, so the stream bound with "p.#" for
// pattern "p.>" stores messages on "p" itself; neither live delivery nor
// Replay hands them to "p.>" (which the contract says must not match
// "p").
func TestHistoryZeroWordMatchFiltered(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	var live brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", live.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	raw := rawChannel(t, u)
	for _, key := range []string{h.prefix, h.prefix + ".x", h.prefix, h.prefix + ".y"} {
		if err := raw.PublishWithContext(ctxT(t), h.exchange, key, false, false, amqp.Publishing{Body: []byte(key)}); err != nil {
			t.Fatal(err)
		}
	}
	live.Wait(t, h.prefix+".y", h.prefix+".y")
	_, bodies, _ := rawStream(t, u, h.spec.Name, 4)
	if bodies[0] != h.prefix {
		t.Fatalf("stream holds %q, expected the zero-word key to be stored too", bodies)
	}
	if got := live.Messages(); len(got) != 2 || got[0].Channel != h.prefix+".x" {
		t.Errorf("live delivery %v, want only .x and .y", got)
	}
	var r brokertest.Inbox
	if _, err := b.Replay(ctxT(t), h.prefix+".>", 0, r.Handle); err != nil {
		t.Fatal(err)
	}
	if got := r.Messages(); len(got) != 2 || got[0].Channel != h.prefix+".x" || got[1].Channel != h.prefix+".y" {
		t.Errorf("Replay %v, want only .x and .y", got)
	}
}

// checkOrdered fails on a duplicate or disorder of positions.
// gapIndexes returns where msgs holds Gap markers.
func gapIndexes(msgs []brokers.Message) []int {
	var out []int
	for i, m := range msgs {
		if m.Gap {
			out = append(out, i)
		}
	}
	return out
}

func checkOrdered(t *testing.T, what string, msgs []brokers.Message) {
	t.Helper()
	for i := 1; i < len(msgs); i++ {
		if msgs[i].Seq <= msgs[i-1].Seq {
			t.Fatalf("%s: Seq %d after %d (message %d): duplicate or out of order", what, msgs[i].Seq, msgs[i-1].Seq, i)
		}
	}
}

// A live history subscription loses nothing to an outage: what was
// published meanwhile (by another connection, straight to RabbitMQ)
// arrives after recovery, in order, once.
func TestHistoryOutageNoLoss(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b, p := h.viaProxy(t)
	pub := h.node(t)
	var witness, live brokertest.Inbox
	wsub, err := pub.Subscribe(ctxT(t), h.prefix+".>", witness.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer wsub.Unsubscribe()
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", live.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	narrow := h.prefix + ".a"
	var liveNarrow brokertest.Inbox
	nsub, err := b.Subscribe(ctxT(t), narrow, liveNarrow.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer nsub.Unsubscribe()

	published := 0
	publishSome := func(n int) {
		t.Helper()
		for range n {
			ch := h.prefix + ".a"
			if published%2 == 1 {
				ch = h.prefix + ".b"
			}
			if err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(published))}); err != nil {
				t.Fatal(err)
			}
			published++
		}
	}
	publishSome(10)
	brokertest.WaitUntil(t, "before the outage", func() bool { return live.Count() == 10 })
	for round := range 2 {
		p.Cut()
		brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
		publishSome(50)
		p.Restore()
		brokertest.WaitUntil(t, "Ready again", b.Ready)
		publishSome(10)
		brokertest.WaitUntil(t, fmt.Sprintf("every message after outage %d", round), func() bool { return live.Count() >= published })
	}
	brokertest.WaitUntil(t, "the witness", func() bool { return witness.Count() >= published })
	got, want := live.Messages(), witness.Messages()
	checkOrdered(t, "live", got)
	if len(got) != published {
		t.Fatalf("got %d messages, want %d", len(got), published)
	}
	for i := range want {
		if got[i].Seq != want[i].Seq || string(got[i].Data) != strconv.Itoa(i) {
			t.Fatalf("message %d: %d=%q, want %d=%q", i, got[i].Seq, got[i].Data, want[i].Seq, strconv.Itoa(i))
		}
	}
	brokertest.WaitUntil(t, "the narrow subscription", func() bool { return liveNarrow.Count() >= published/2 })
	ng := liveNarrow.Messages()
	checkOrdered(t, "narrow", ng)
	if len(ng) != published/2 {
		t.Errorf("narrow subscription got %d messages, want %d", len(ng), published/2)
	}
	if b.Reconnects() != 2 || b.HistoryGaps() != 0 {
		t.Errorf("Reconnects %d (want 2), HistoryGaps %d (want 0)", b.Reconnects(), b.HistoryGaps())
	}
}

// An outage before the first message: what was published meanwhile
// still arrives (the live consumer's position is the end it started at).
func TestHistoryOutageBeforeFirstMessage(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b, p := h.viaProxy(t)
	pub := h.node(t)
	var live brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", live.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	for i := range 5 {
		if err := pub.Publish(ctxT(t), brokers.Message{Channel: h.prefix + ".x", Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	p.Restore()
	brokertest.WaitUntil(t, "the messages of the outage", func() bool { return live.Count() >= 5 })
	got := live.Messages()
	checkOrdered(t, "live", got)
	for i, m := range got {
		if string(m.Data) != strconv.Itoa(i) {
			t.Fatalf("message %d is %q", i, m.Data)
		}
	}
}

// When retention removes messages a subscription had not received before
// the outage ended, the subscription carries on from the oldest stored
// one and the gap is counted; a Replay from before reports the gap with
// the oldest position.
func TestHistoryRetentionGap(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, true)
	b, p := h.viaProxy(t)
	pub := h.node(t)
	var witness, live brokertest.Inbox
	wsub, err := pub.Subscribe(ctxT(t), h.prefix+".>", witness.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer wsub.Unsubscribe()
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", live.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ch := h.prefix + ".g"
	publish := func(data string) {
		t.Helper()
		if err := pub.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("first")
	first := live.Wait(t, ch, "first")

	p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	// Publish until the first message is gone from the stream.
	published := 1
	for {
		if published > 5000 {
			t.Fatal("retention removed nothing after 5000 messages")
		}
		for range 50 {
			publish(strconv.Itoa(published))
			published++
		}
		var r brokertest.Inbox
		res, err := pub.Replay(ctxT(t), h.prefix+".>", first.Seq, r.Handle)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Gap {
			continue
		}
		got := r.Messages()
		if res.Oldest <= first.Seq+1 || len(got) == 0 || got[0].Seq < res.Oldest {
			t.Fatalf("gap %+v, replay starting with %v, after Seq %d", res, got[0], first.Seq)
		}
		break
	}
	// Some more segments, so that the oldest stored moves on while the
	// subscription cannot read.
	for range 100 {
		publish(strconv.Itoa(published))
		published++
	}
	p.Restore()
	brokertest.WaitUntil(t, "Ready again", b.Ready)
	publish("last")
	live.Wait(t, ch, "last")
	got := live.Messages()
	// The gap is told once, as a marker right before the first message
	// after it; its Seq is the first record read after the gap (perhaps
	// an end marker, never delivered).
	if gaps := gapIndexes(got); !slices.Equal(gaps, []int{1}) {
		t.Fatalf("gap markers at %v, want exactly one at 1 (right after the first message)", gaps)
	}
	if gm := got[1]; gm.Seq <= first.Seq+1 || gm.Seq > got[2].Seq || gm.Channel != "" || gm.Data != nil {
		t.Errorf("gap marker %+v, want Seq in (%d, %d] and no channel or data", gm, first.Seq+1, got[2].Seq)
	}
	got = slices.Delete(got, 1, 2)
	checkOrdered(t, "live", got)
	if got[1].Seq <= first.Seq+1 {
		t.Errorf("after the outage delivery went on at Seq %d, right after %d: nothing was skipped?", got[1].Seq, first.Seq)
	}
	// What came is exactly the tail of what was published.
	brokertest.WaitUntil(t, "the witness", func() bool { return witness.Count() >= published+1 })
	all := witness.Messages()
	i := slices.IndexFunc(all, func(m brokers.Message) bool { return m.Seq == got[1].Seq })
	if i < 2 {
		t.Fatalf("delivery resumed at Seq %d, which is not a dropped-past position", got[1].Seq)
	}
	if len(got)-1 != len(all)-i {
		t.Fatalf("after the gap got %d messages, want the %d of the tail", len(got)-1, len(all)-i)
	}
	for j, m := range got[1:] {
		if m.Seq != all[i+j].Seq || string(m.Data) != string(all[i+j].Data) {
			t.Fatalf("after the gap message %d is %d=%q, want %d=%q", j, m.Seq, m.Data, all[i+j].Seq, all[i+j].Data)
		}
	}
	if b.HistoryGaps() != 1 {
		t.Errorf("HistoryGaps %d, want 1", b.HistoryGaps())
	}
}

// A stream deleted under a live subscription and created again: the
// Broker reconnects, counts a gap, and delivers the new stream's
// messages; a cursor from the old stream replays as a gap from the
// oldest message.
func TestHistoryStreamRecreated(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	var live brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", live.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ch := h.prefix + ".r"
	for i := range 30 {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("old" + strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	old := live.Wait(t, ch, "old29")

	raw := rawChannel(t, u)
	if _, err := raw.QueueDelete(h.spec.Name, false, false, false); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "a reconnect", func() bool { return b.Reconnects() >= 1 && b.Ready() })
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	m := live.Wait(t, ch, "new")
	lived := live.Messages()
	if gaps := gapIndexes(lived); !slices.Equal(gaps, []int{30}) || lived[30].Seq == 0 || lived[30].Seq > m.Seq {
		t.Errorf("gap markers at %v (%+v), want exactly one at 30, before %q (Seq %d)", gaps, lived[min(30, len(lived)-1)], "new", m.Seq)
	}
	if m.Seq >= old.Seq {
		t.Errorf("new stream's message has Seq %d, want below the old stream's %d (offsets start over)", m.Seq, old.Seq)
	}
	if b.HistoryGaps() != 1 {
		t.Errorf("HistoryGaps %d, want 1", b.HistoryGaps())
	}
	var r brokertest.Inbox
	res, err := b.Replay(ctxT(t), h.prefix+".>", old.Seq, r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	got := r.Messages()
	if !res.Gap || len(got) != 1 || string(got[0].Data) != "new" || res.Oldest > got[0].Seq || res.Last != got[0].Seq {
		t.Errorf("Replay with a cursor of the old stream: %+v, %d messages; want a gap and the new message", res, len(got))
	}
}

// The stream's live consumer stops with the last subscription, and a
// later one starts at the end again: it does not get what was published
// while nobody subscribed.
func TestHistoryResubscribeStartsAtEnd(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	ch := h.prefix + ".s"
	var first brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), ch, first.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	first.Wait(t, ch, "1")
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitUntil(t, "the stream consumer to stop", func() bool { return amqpbroker.StreamConsumers(b) == 0 })
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	var second brokertest.Inbox
	sub2, err := b.Subscribe(ctxT(t), ch, second.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Unsubscribe()
	if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	second.Wait(t, ch, "3")
	if got := second.Messages(); len(got) != 1 {
		t.Errorf("new subscription got %d messages, want only the one published after it", len(got))
	}
	if first.Count() != 1 {
		t.Errorf("ended subscription got %d messages", first.Count())
	}
}

// Subscriptions on several patterns of one stream share one consumer
// per Broker; each gets what its pattern matches.
func TestHistoryOneConsumerPerStream(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	var all, a, star brokertest.Inbox
	for _, s := range []struct {
		p  string
		in *brokertest.Inbox
	}{{h.prefix + ".>", &all}, {h.prefix + ".a", &a}, {h.prefix + ".*.x", &star}} {
		sub, err := b.Subscribe(ctxT(t), s.p, s.in.Handle)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	if n := amqpbroker.StreamConsumers(b); n != 1 {
		t.Errorf("the Broker runs %d stream consumers, want 1", n)
	}
	for _, ch := range []string{h.prefix + ".a", h.prefix + ".b.x", h.prefix + ".a.x", h.prefix + ".end"} {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(ch)}); err != nil {
			t.Fatal(err)
		}
	}
	all.Wait(t, h.prefix+".end", h.prefix+".end")
	if all.Count() != 4 || a.Count() != 1 || star.Count() != 2 {
		t.Errorf("got %d, %d, %d messages; want 4, 1, 2", all.Count(), a.Count(), star.Count())
	}
	if b.Bindings() != 0 {
		t.Errorf("Bindings() = %d: history patterns must not bind the node's queue (duplicates)", b.Bindings())
	}
}

// Close while a Replay's Handler blocks: the Replay returns an error once
// the Handler returns, and nothing leaks (goleak).
func TestHistoryCloseDuringReplay(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	for i := range 20 {
		if err := b.Publish(ctxT(t), brokers.Message{Channel: h.prefix + ".c", Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	entered := make(chan struct{})
	release := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		calls := 0
		_, err := b.Replay(ctxT(t), h.prefix+".>", 0, func(brokers.Message) {
			if calls++; calls == 1 {
				close(entered)
				<-release
			}
		})
		errc <- err
	}()
	<-entered
	closed := make(chan struct{})
	go func() {
		_ = b.Close()
		close(closed)
	}()
	<-closed // Close does not wait for a Replay's Handler
	close(release)
	if err := <-errc; !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Replay during Close: %v, want ErrClosed", err)
	}
	if _, err := b.Replay(ctxT(t), h.prefix+".>", 0, func(brokers.Message) {}); !errors.Is(err, brokers.ErrClosed) {
		t.Errorf("Replay after Close: %v, want ErrClosed", err)
	}
}

// Replay while disconnected fails at once with ErrUnavailable.
func TestHistoryReplayDisconnected(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b, p := h.viaProxy(t)
	p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	_, err := b.Replay(ctxT(t), h.prefix+".>", 0, func(brokers.Message) {})
	if !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Replay while disconnected: %v, want ErrUnavailable", err)
	}
	// Subscribe while disconnected registers; the consumer starts on
	// reconnect and delivers what is published from then on.
	var in brokertest.Inbox
	sub, err := b.Subscribe(ctxT(t), h.prefix+".>", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	p.Restore()
	brokertest.WaitUntil(t, "Ready", b.Ready)
	if err := b.Publish(ctxT(t), brokers.Message{Channel: h.prefix + ".x", Data: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	if m := in.Wait(t, h.prefix+".x", "after"); m.Seq == 0 {
		t.Error("message on a history channel without Seq")
	}
}

// With Declare off the stream must exist; an operator's stream is used
// as it is.
func TestHistoryStreamNotDeclared(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	opts := h.options()
	opts.Streams[0].Declare = false
	_, err := amqpbroker.Connect(ctxT(t), opts)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("Connect with a missing stream: %v, want a 404 error", err)
	}

	raw := rawChannel(t, u)
	if err := raw.ExchangeDeclare(h.exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.QueueDeclare(h.spec.Name, true, false, false, false, amqp.Table{"x-queue-type": "stream"}); err != nil {
		t.Fatal(err)
	}
	if err := raw.QueueBind(h.spec.Name, h.prefix+".#", h.exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	b := connect(t, opts)
	brokertest.WaitUntil(t, "Ready", b.Ready)
	if err := b.Publish(ctxT(t), brokers.Message{Channel: h.prefix + ".o", Data: []byte("op")}); err != nil {
		t.Fatal(err)
	}
	var r brokertest.Inbox
	if _, err := b.Replay(ctxT(t), h.prefix+".>", 0, r.Handle); err != nil {
		t.Fatal(err)
	}
	if got := r.Messages(); len(got) != 1 || string(got[0].Data) != "op" {
		t.Errorf("Replay on an operator's stream: %v", got)
	}

	// Declaring it with other limits is refused at Connect.
	opts.Streams[0].Declare = true
	opts.Streams[0].MaxLengthBytes = 1 << 20
	_, err = amqpbroker.Connect(ctxT(t), opts)
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		t.Errorf("Connect redeclaring a stream with other limits: %v, want a 406 error", err)
	}
}

// Bad stream specs are errors at Connect, before the server is asked.
func TestStreamSpecInvalid(t *testing.T) {
	ok := amqpbroker.StreamSpec{Name: "s", Patterns: []string{"a.>"}}
	for _, tc := range []struct {
		name  string
		specs []amqpbroker.StreamSpec
	}{
		{"empty name", []amqpbroker.StreamSpec{{Patterns: []string{"a"}}}},
		{"reserved name", []amqpbroker.StreamSpec{{Name: "amq.x", Patterns: []string{"a"}}}},
		{"long name", []amqpbroker.StreamSpec{{Name: strings.Repeat("n", 256), Patterns: []string{"a"}}}},
		{"no patterns", []amqpbroker.StreamSpec{{Name: "s"}}},
		{"bad pattern", []amqpbroker.StreamSpec{{Name: "s", Patterns: []string{"a.#"}}}},
		{"negative", []amqpbroker.StreamSpec{{Name: "s", Patterns: []string{"a"}, MaxLengthBytes: -1}}},
		{"sub-second age", []amqpbroker.StreamSpec{{Name: "s", Patterns: []string{"a"}, MaxAge: 1500 * time.Millisecond}}},
		{"huge segments", []amqpbroker.StreamSpec{{Name: "s", Patterns: []string{"a"}, SegmentBytes: 4_000_000_000}}},
		{"twice", []amqpbroker.StreamSpec{ok, {Name: "s", Patterns: []string{"b"}}}},
		{"overlap", []amqpbroker.StreamSpec{ok, {Name: "t", Patterns: []string{"*.b"}}}},
	} {
		b, err := amqpbroker.Connect(t.Context(), amqpbroker.Options{URL: "amqp://guest:guest@127.0.0.1:1/", Streams: tc.specs})
		if err == nil {
			b.Close()
			t.Errorf("%s: Connect accepted %+v", tc.name, tc.specs)
		}
	}

	// Valid: coverage decides HasHistory, and Replay refuses the rest.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	b := connect(t, amqpbroker.Options{URL: "amqp://guest:guest@" + addr + "/", Streams: []amqpbroker.StreamSpec{
		ok, {Name: "t", Patterns: []string{"b.*", "c"}},
	}})
	for p, want := range map[string]bool{
		"a.>": true, "a.b": true, "a.*.c": true, "a": false, ">": false, "*.x": false,
		"b.x": true, "b.*": true, "b.x.y": false, "b.>": false, "c": true, "c.d": false, "bad..p": false,
	} {
		if got := b.HasHistory(p); got != want {
			t.Errorf("HasHistory(%q) = %v, want %v", p, got, want)
		}
	}
	if _, err := b.Replay(ctxT(t), "x.>", 0, func(brokers.Message) {}); !errors.Is(err, amqpbroker.ErrNoHistory) {
		t.Errorf("Replay without history: %v, want ErrNoHistory", err)
	}
	if _, err := b.Replay(ctxT(t), "a.>", 0, func(brokers.Message) {}); !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Replay without a server: %v, want ErrUnavailable", err)
	}
	if _, err := b.Replay(ctxT(t), "a.>", 0, nil); err == nil {
		t.Error("Replay with a nil handler accepted")
	}
}

// Stopping a stream's live consumer while records still pour in must not
// cost the connection. The consumer's dispatcher acknowledges on the
// consumer's channel; an acknowledgement written after that channel's
// channel.close reaches RabbitMQ once it has forgotten the channel, and
// it answers with a connection error (504 CHANNEL_ERROR "expected
// 'channel.open'"), which fails everything else on the connection. Each
// round's Publish is written after whatever the dispatcher sent (the
// dispatcher had ended when the consumer count dropped), so it is
// confirmed only if the connection survived.
func TestHistoryStopConsumerWhileDelivering(t *testing.T) {
	u := serverURL(t)
	h := newHistory(t, u, false)
	b := h.node(t)
	raw := rawChannel(t, u)
	flood := h.prefix + ".flood"
	const rounds, burst = 25, 1500
	for round := range rounds {
		var got atomic.Int64
		sub, err := b.Subscribe(ctxT(t), flood, func(brokers.Message) { got.Add(1) })
		if err != nil {
			t.Fatalf("round %d: Subscribe: %v", round, err)
		}
		// Records keep arriving while the consumer is stopped.
		stop := make(chan struct{})
		pubErr := make(chan error, 1)
		ctx := ctxT(t)
		go func() {
			defer close(pubErr)
			for i := 0; i < burst; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := raw.PublishWithContext(ctx, h.exchange, flood, false, false, amqp.Publishing{Body: []byte("f" + strconv.Itoa(i))})
				if err != nil {
					pubErr <- err
					return
				}
			}
		}()
		brokertest.WaitUntil(t, "the first flood records", func() bool { return got.Load() > 0 })
		if err := sub.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
		brokertest.WaitUntil(t, "the stream consumer to stop", func() bool { return amqpbroker.StreamConsumers(b) == 0 })
		close(stop)
		if err := <-pubErr; err != nil {
			t.Fatalf("round %d: raw publish: %v", round, err)
		}
		err = b.Publish(ctxT(t), brokers.Message{Channel: h.prefix + ".check", Data: []byte(strconv.Itoa(round))})
		if err != nil {
			t.Fatalf("round %d: Publish after the stream consumer stopped: %v (the connection was lost)", round, err)
		}
	}
	if n := b.Reconnects(); n != 0 {
		t.Errorf("Reconnects() = %d, want 0", n)
	}
}
