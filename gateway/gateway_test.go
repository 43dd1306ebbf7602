package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cometgate/cometgate/brokers"
)

func TestNewChecksConfig(t *testing.T) {
	b := newFakeBroker()
	t.Cleanup(func() { _ = b.Close() })
	if _, err := New(Config{}, b); err == nil {
		t.Error("New without NodeID succeeded")
	}
	_, err := New(Config{NodeID: "n1", Rules: Rules{{Pattern: "a..b"}}}, b)
	var ce *brokers.NameError
	if !errors.As(err, &ce) {
		t.Errorf("New with a bad namespace: err %v, want a *brokers.NameError", err)
	}
}

func TestHello(t *testing.T) {
	g := newTestGateway(t, nil)
	s, err := g.Open(OpenOptions{Transport: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	tr := newFakeTransport(0)
	if err := s.Attach(tr, false); err != nil {
		t.Fatal(err)
	}
	w := next(t, tr)
	if w.Seq != 1 || w.T != TypeHello || w.V != ProtocolVersion || w.Hb == nil || *w.Hb != 25 {
		t.Errorf("hello = %s", w)
	}
	if w.Sid != s.ID() || !strings.HasPrefix(w.Sid, "n1.") || len(w.Sid) < len("n1.")+22 {
		t.Errorf("sid %q, session id %q: want the node id, a dot and 128 random bits", w.Sid, s.ID())
	}
	if g.Session(s.ID()) != s || g.SessionCount() != 1 {
		t.Error("the gateway does not know the session")
	}
	s2, tr2 := openSession(t, g, false)
	if s2.ID() == s.ID() {
		t.Error("two sessions with the same id")
	}
	noPacket(t, tr2)
}

func TestOpenWithoutAttachWritesNothingUntilAttach(t *testing.T) {
	g := newTestGateway(t, nil)
	s, err := g.Open(OpenOptions{Transport: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	send(s, `{"op":"ping","id":1}`)
	tr := newFakeTransport(0)
	if err := s.Attach(tr, false); err != nil {
		t.Fatal(err)
	}
	if w := nextType(t, tr, TypeHello); w.Seq != 1 {
		t.Errorf("hello seq %d", w.Seq)
	}
	if w := nextType(t, tr, TypeOK); w.Seq != 2 || w.ID != 1 {
		t.Errorf("ok = %s", w)
	}
}

func TestSubscribeOKPrecedesMessages(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)

	// Messages flow on the channel before, during and after the subscribe.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = g.b.Publish(context.Background(), brokers.Message{Channel: "t.a", Data: fmt.Appendf(nil, "%d", i)})
			time.Sleep(100 * time.Microsecond)
		}
	}()
	defer wg.Wait()
	defer close(stop)

	send(s, `{"op":"sub","id":7,"ch":"t.a"}`)
	ok := next(t, tr)
	if ok.T != TypeOK || ok.ID != 7 || ok.Ch != "t.a" || ok.Seq != 2 {
		t.Fatalf("first packet after subscribing: %s, want ok id 7 ch t.a seq 2", ok)
	}
	last := -1
	for i := range 5 {
		m := nextType(t, tr, TypeMsg)
		if m.Seq != uint64(3+i) || m.Ch != "t.a" || m.Sub != "" {
			t.Fatalf("msg %s", m)
		}
		var n int
		if err := json.Unmarshal(m.Data, &n); err != nil || n <= last {
			t.Fatalf("msg %s out of order after %d", m, last)
		}
		last = n
	}
}

func TestMessagePayloads(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		msg     brokers.Message
		want    func(w wire) string // "" if right
	}{
		{
			name: "JSON object is compacted and HTML-escaped", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte(" { \"a\" : 1, \"h\": \"<b>&\" } ")},
			want: func(w wire) string {
				if string(w.Data) != `{"a":1,"h":"\u003cb\u003e\u0026"}` || w.Text != nil || w.B64 != nil {
					return "want data {\"a\":1,\"h\":\"\\u003cb\\u003e\\u0026\"}"
				}
				return ""
			},
		},
		{
			name: "JSON number", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte("1.0841")},
			want: func(w wire) string {
				if string(w.Data) != "1.0841" {
					return "want data 1.0841"
				}
				return ""
			},
		},
		{
			name: "JSON with line separators", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte("\"a\u2028b\u2029c\"")},
			want: func(w wire) string {
				var s string
				if err := json.Unmarshal(w.Data, &s); err != nil || s != "a\u2028b\u2029c" {
					return "want data \"a\\u2028b\\u2029c\""
				}
				return ""
			},
		},
		{
			name: "UTF-8 text", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte("héllo wörld ✓ <script>")},
			want: func(w wire) string {
				if w.Text == nil || *w.Text != "héllo wörld ✓ <script>" || w.Data != nil || w.B64 != nil {
					return "want text"
				}
				return ""
			},
		},
		{
			name: "empty payload is empty text", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: nil},
			want: func(w wire) string {
				if w.Text == nil || *w.Text != "" {
					return "want text \"\""
				}
				return ""
			},
		},
		{
			name: "binary", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte{0, 0xff, 0xfe}},
			want: func(w wire) string {
				if w.B64 == nil || *w.B64 != "AP/+" || w.Data != nil || w.Text != nil {
					return "want b64 AP/+"
				}
				return ""
			},
		},
		{
			name: "JSON holding invalid UTF-8 goes as b64", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte("\"\xff\"")},
			want: func(w wire) string {
				if w.B64 == nil || *w.B64 != "Iv8i" {
					return "want b64 Iv8i"
				}
				return ""
			},
		},
		{
			name: "wildcard subscription names its pattern", pattern: "t.*",
			msg: brokers.Message{Channel: "t.x", Data: []byte("1")},
			want: func(w wire) string {
				if w.Ch != "t.x" || w.Sub != "t.*" {
					return "want ch t.x sub t.*"
				}
				return ""
			},
		},
		{
			name: "tail wildcard", pattern: "t.>",
			msg: brokers.Message{Channel: "t.x.y", Data: []byte("1")},
			want: func(w wire) string {
				if w.Ch != "t.x.y" || w.Sub != "t.>" {
					return "want ch t.x.y sub t.>"
				}
				return ""
			},
		},
		{
			name: "cursor", pattern: "t.a",
			msg: brokers.Message{Channel: "t.a", Data: []byte("1"), Seq: 1041},
			want: func(w wire) string {
				if w.Cur != "1041" || w.Sub != "" {
					return "want cur 1041 and no sub"
				}
				return ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t, nil)
			s, tr := openSession(t, g, false)
			subscribe(t, s, tr, 1, tt.pattern)
			if err := g.b.Publish(context.Background(), tt.msg); err != nil {
				t.Fatal(err)
			}
			w := nextType(t, tr, TypeMsg)
			if w.Ch != tt.msg.Channel || w.Seq != 3 {
				t.Errorf("msg %s: want ch %q seq 3", w, tt.msg.Channel)
			}
			if problem := tt.want(w); problem != "" {
				t.Errorf("msg %s: %s", w, problem)
			}
		})
	}
}

func TestFanoutSharesSubscriptionAndBody(t *testing.T) {
	g := newTestGateway(t, nil)
	s1, tr1 := openSession(t, g, false)
	s2, tr2 := openSession(t, g, false)
	subscribe(t, s1, tr1, 1, "t.shared")
	subscribe(t, s2, tr2, 1, "t.shared")
	if n := g.b.SubsFor("t.shared"); n != 1 {
		t.Fatalf("%d broker subscriptions for two sessions on one pattern, want 1", n)
	}

	publish(t, g.b, "t.shared", `{"v":1}`)
	m1, m2 := nextType(t, tr1, TypeMsg), nextType(t, tr2, TypeMsg)
	if m1.body != m2.body {
		t.Error("the two sessions got different *Body values: the message was encoded twice")
	}
	if m1.raw != m2.raw {
		t.Errorf("packets differ: %s vs %s", m1, m2)
	}

	send(s1, `{"op":"unsub","id":2,"ch":"t.shared"}`)
	if w := nextType(t, tr1, TypeOK); w.ID != 2 || w.Ch != "t.shared" {
		t.Errorf("unsub answer %s", w)
	}
	if n := g.b.SubsFor("t.shared"); n != 1 {
		t.Fatalf("%d broker subscriptions with one session left, want 1", n)
	}
	publish(t, g.b, "t.shared", `{"v":2}`)
	if w := nextType(t, tr2, TypeMsg); string(w.Data) != `{"v":2}` {
		t.Errorf("msg %s", w)
	}
	waitFor(t, "delivery", g.delivered)
	noPacket(t, tr1)

	send(s2, `{"op":"unsub","id":2,"ch":"t.shared"}`)
	nextType(t, tr2, TypeOK)
	if n := g.b.Subs(); n != 0 {
		t.Errorf("%d broker subscriptions after the last unsubscribe, want 0", n)
	}
}

func TestSessionEndReleasesSubscriptions(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "t.a")
	subscribe(t, s, tr, 2, "t.*")
	other, otr := openSession(t, g, false)
	subscribe(t, other, otr, 1, "t.a")
	if n := g.b.Subs(); n != 2 {
		t.Fatalf("%d broker subscriptions, want 2", n)
	}
	s.Close(DisconnectGone())
	waitDone(t, s)
	if s.Reason() != DisconnectGone() {
		t.Errorf("reason %v", s.Reason())
	}
	if n := g.b.Subs(); n != 1 {
		t.Errorf("%d broker subscriptions after the session ended, want 1", n)
	}
	if g.Session(s.ID()) != nil || g.SessionCount() != 1 {
		t.Error("the ended session is still known")
	}
	if err := s.Attach(newFakeTransport(0), false); err == nil {
		t.Error("Attach to an ended session succeeded")
	}
	noPacket(t, tr) // gone: no close packet
}

func TestSubscribeErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup []string // patterns subscribed first
		frame string
		code  int
		msg   string
	}{
		{"empty token", nil, `{"op":"sub","id":1,"ch":"t..a"}`, 422, "tokens between dots must not be empty"},
		{"empty name", nil, `{"op":"sub","id":1}`, 422, "must not be empty"},
		{"tail wildcard not last", nil, `{"op":"sub","id":1,"ch":"t.>.a"}`, 422, `">" must be the last token`},
		{"bad character", nil, `{"op":"sub","id":1,"ch":"t.a b"}`, 422, "not allowed"},
		{"too long", nil, `{"op":"sub","id":1,"ch":"t.` + strings.Repeat("a", brokers.MaxNameLen) + `"}`, 422, "at most 255 bytes"},
		{"no namespace", nil, `{"op":"sub","id":1,"ch":"nope.x"}`, 403, "permission denied"},
		{"wider than its namespace", nil, `{"op":"sub","id":1,"ch":"demo.>"}`, 403, "permission denied"},
		{"star wider than its namespace", nil, `{"op":"sub","id":1,"ch":"demo.*.y"}`, 403, "permission denied"},
		{"everything", nil, `{"op":"sub","id":1,"ch":">"}`, 403, "permission denied"},
		{"namespace denies subscribe", nil, `{"op":"sub","id":1,"ch":"nosub.a"}`, 403, "permission denied"},
		{"twice", []string{"t.a"}, `{"op":"sub","id":1,"ch":"t.a"}`, 409, "already subscribed"},
		{"unsubscribe unknown", nil, `{"op":"unsub","id":1,"ch":"t.zzz"}`, 404, "not subscribed"},
		{"too many", []string{"t.a", "t.b"}, `{"op":"sub","id":1,"ch":"t.c"}`, 429, "at most 2 subscriptions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t, func(c *Config) { c.MaxSubscriptions = 2 })
			s, tr := openSession(t, g, false)
			for i, p := range tt.setup {
				subscribe(t, s, tr, 100+i, p)
			}
			send(s, "%s", tt.frame)
			w := expectErr(t, tr, 1, tt.code, tt.msg)
			var f Frame
			_ = json.Unmarshal([]byte(tt.frame), &f)
			if w.Ch != f.Ch {
				t.Errorf("err names channel %q, want %q", w.Ch, f.Ch)
			}
			ping(t, s, tr, 2) // a failed request never ends the session
			if n := g.b.Subs(); n != len(tt.setup) {
				t.Errorf("%d broker subscriptions, want %d", n, len(tt.setup))
			}
		})
	}
}

func TestSubscribeAllowedNarrowPattern(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "demo.x.y")
	subscribe(t, s, tr, 2, "demo.x.>")
	subscribe(t, s, tr, 3, "demo.x.*.z")
	subscribe(t, s, tr, 4, "ro.a") // read-only namespaces may be subscribed
}

func TestSubscribeBrokerFailure(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	g.b.SetSubscribeErr(errors.New("boom"))
	send(s, `{"op":"sub","id":1,"ch":"t.a"}`)
	expectErr(t, tr, 1, 503, "boom")
	g.b.SetSubscribeErr(nil)
	subscribe(t, s, tr, 2, "t.a") // not 409: the failed attempt left nothing behind
	if n := g.b.Subs(); n != 1 {
		t.Errorf("%d broker subscriptions, want 1", n)
	}
}

func TestSubscribeWaitsForPendingBrokerSubscription(t *testing.T) {
	g := newTestGateway(t, nil)
	s1, tr1 := openSession(t, g, false)
	s2, tr2 := openSession(t, g, false)
	s3, tr3 := openSession(t, g, false)
	release := g.b.HoldSubscribes()
	t.Cleanup(release)

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() { defer wg.Done(); send(s1, `{"op":"sub","id":1,"ch":"t.a"}`) }()
	waitFor(t, "the broker subscribe to start", func() bool {
		g.b.mu.Lock()
		defer g.b.mu.Unlock()
		return g.b.subCalls == 1
	})
	go func() { defer wg.Done(); send(s2, `{"op":"sub","id":1,"ch":"t.a"}`) }()
	// A third subscriber gives up waiting (its request was cancelled).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s3.HandleFrame(ctx, []byte(`{"op":"sub","id":1,"ch":"t.a"}`))
	expectErr(t, tr3, 1, 503, "context canceled")

	noPacket(t, tr1)
	release()
	wg.Wait()
	nextType(t, tr1, TypeOK)
	nextType(t, tr2, TypeOK)
	if n := g.b.Subs(); n != 1 {
		t.Fatalf("%d broker subscriptions, want 1", n)
	}
	publish(t, g.b, "t.a", "1")
	nextType(t, tr1, TypeMsg)
	nextType(t, tr2, TypeMsg)
	s1.Close(DisconnectGone())
	s2.Close(DisconnectGone())
	waitDone(t, s1)
	waitDone(t, s2)
	if n := g.b.Subs(); n != 0 {
		t.Errorf("%d broker subscriptions after both subscribers left, want 0", n)
	}
}

func TestSessionEndsWhileSubscribing(t *testing.T) {
	g := newTestGateway(t, nil)
	s, _ := openSession(t, g, false)
	release := g.b.HoldSubscribes()
	t.Cleanup(release)
	done := make(chan struct{})
	go func() {
		defer close(done)
		send(s, `{"op":"sub","id":1,"ch":"t.a"}`)
	}()
	waitFor(t, "the broker subscribe to start", func() bool {
		g.b.mu.Lock()
		defer g.b.mu.Unlock()
		return g.b.subCalls == 1
	})
	s.Close(DisconnectGone())
	waitDone(t, s)
	release()
	<-done
	if n := g.b.Subs(); n != 0 {
		t.Errorf("%d broker subscriptions left by a session that ended while subscribing", n)
	}
}

func TestPublish(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)

	release := g.b.HoldPublishes()
	send(s, `{"op":"pub","id":4,"ch":"pub.lot7","data":{ "eur" : 120 }}`)
	noPacket(t, tr) // not confirmed yet
	release()
	if w := nextType(t, tr, TypeOK); w.ID != 4 || w.Ch != "pub.lot7" {
		t.Errorf("ok = %s", w)
	}
	pubs := g.b.Published()
	if len(pubs) != 1 || pubs[0].Channel != "pub.lot7" || string(pubs[0].Data) != `{"eur":120}` {
		t.Errorf("broker got %+v", pubs)
	}

	g.b.SetPublishErr(fmt.Errorf("no route: %w", brokers.ErrUnavailable))
	send(s, `{"op":"pub","id":5,"ch":"pub.lot7","text":"x"}`)
	expectErr(t, tr, 5, 503, "broker unavailable")
	g.b.SetPublishErr(nil)
	ping(t, s, tr, 6)
}

func TestPublishPayloads(t *testing.T) {
	long := strings.Repeat("x", 100)
	tests := []struct {
		name  string
		frame string
		code  int    // 0: ok
		msg   string // err text
		data  string // broker payload, when ok
	}{
		{"data", `{"op":"pub","id":1,"ch":"pub.a","data":[1, 2]}`, 0, "", "[1,2]"},
		{"text", `{"op":"pub","id":1,"ch":"pub.a","text":"héllo"}`, 0, "", "héllo"},
		{"b64", `{"op":"pub","id":1,"ch":"pub.a","b64":"AAEC"}`, 0, "", "\x00\x01\x02"},
		{"no payload", `{"op":"pub","id":1,"ch":"pub.a"}`, 400, "exactly one of", ""},
		{"two payloads", `{"op":"pub","id":1,"ch":"pub.a","data":1,"text":"1"}`, 400, "exactly one of", ""},
		{"three payloads", `{"op":"pub","id":1,"ch":"pub.a","data":1,"text":"1","b64":"AA=="}`, 400, "exactly one of", ""},
		{"bad base64", `{"op":"pub","id":1,"ch":"pub.a","b64":"!!"}`, 400, "bad payload", ""},
		{"read-only namespace", `{"op":"pub","id":1,"ch":"ro.a","text":"x"}`, 403, "permission denied", ""},
		{"no namespace", `{"op":"pub","id":1,"ch":"nope.a","text":"x"}`, 403, "permission denied", ""},
		{"wildcard", `{"op":"pub","id":1,"ch":"pub.*","text":"x"}`, 422, "only allowed in subscriptions", ""},
		{"invalid channel", `{"op":"pub","id":1,"ch":"pub..a","text":"x"}`, 422, "must not be empty", ""},
		{"too large", `{"op":"pub","id":1,"ch":"pub.a","text":"` + long + `"}`, 413, "exceeds 90", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t, func(c *Config) { c.MaxFrameBytes = 90 })
			s, tr := openSession(t, g, false)
			f, err := DecodeFrame([]byte(tt.frame))
			if err != nil {
				t.Fatal(err)
			}
			// Apply, not HandleFrame: the too-large case stands for a frame
			// that came in a polling body, whose size the transport bounds.
			s.Apply(context.Background(), f)
			if tt.code != 0 {
				w := expectErr(t, tr, 1, tt.code, tt.msg)
				if w.Ch != f.Ch {
					t.Errorf("err names %q, want %q", w.Ch, f.Ch)
				}
				if n := len(g.b.Published()); n != 0 {
					t.Errorf("%d messages reached the broker", n)
				}
				ping(t, s, tr, 2)
				return
			}
			if w := nextType(t, tr, TypeOK); w.ID != 1 || w.Ch != "pub.a" {
				t.Errorf("ok = %s", w)
			}
			pubs := g.b.Published()
			if len(pubs) != 1 || string(pubs[0].Data) != tt.data {
				t.Errorf("broker got %+v, want %q", pubs, tt.data)
			}
		})
	}
}

func TestPublishOrderAndLimit(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	release := g.b.HoldPublishes()
	t.Cleanup(release)
	const n = maxPendingPublishes + 10
	for i := 1; i <= n; i++ {
		send(s, `{"op":"pub","id":%d,"ch":"pub.a","text":"%d"}`, i, i)
	}
	// Everything beyond the bound is refused at once.
	refused := map[int64]bool{}
	for {
		w := next(t, tr)
		if w.T != TypeErr {
			t.Fatalf("before the broker confirmed: %s", w)
		}
		if w.Code != 429 {
			t.Fatalf("err %s, want 429", w)
		}
		refused[w.ID] = true
		if len(refused) >= n-maxPendingPublishes-1 {
			break
		}
	}
	release()
	var last int64
	for range n - len(refused) {
		w := next(t, tr)
		if w.T == TypeErr && w.Code == 429 && !refused[w.ID] {
			refused[w.ID] = true
			continue
		}
		if w.T != TypeOK || w.ID <= last || refused[w.ID] {
			t.Fatalf("got %s after ok %d", w, last)
		}
		last = w.ID
	}
	var prev int
	for _, m := range g.b.Published() {
		var v int
		fmt.Sscan(string(m.Data), &v)
		if v <= prev {
			t.Fatalf("publishes reached the broker out of order: %d after %d", v, prev)
		}
		prev = v
	}
}

func TestGatewayPublish(t *testing.T) {
	g := newTestGateway(t, nil)
	if err := g.Publish(context.Background(), "ro.a", []byte("1"), ""); err != nil {
		t.Errorf("Publish to a read-only namespace from the API: %v", err)
	}
	var ce *brokers.NameError
	if err := g.Publish(context.Background(), "ro.*", []byte("1"), ""); !errors.As(err, &ce) {
		t.Errorf("Publish to a pattern: %v, want *brokers.NameError", err)
	}
	g.b.SetPublishErr(brokers.ErrUnavailable)
	if err := g.Publish(context.Background(), "ro.a", []byte("1"), ""); !errors.Is(err, brokers.ErrUnavailable) {
		t.Errorf("Publish with the broker down: %v", err)
	}
}

func TestPing(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	send(s, `{"op":"ping","id":7}`)
	w := nextType(t, tr, TypeOK)
	if w.ID != 7 || w.Ch != "" || w.Seq != 2 {
		t.Errorf("ok = %s", w)
	}
}

func TestUpstreamFrameNumbers(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	send(s, `{"op":"ping","id":1,"n":1}`)
	nextType(t, tr, TypeOK)
	send(s, `{"op":"ping","id":1,"n":1}`) // a retried POST: not applied again
	send(s, `{"op":"ping","id":3,"n":3}`)
	expectErr(t, tr, 3, 409, "n=3 out of order, expected 2")
	send(s, `{"op":"ping","id":2,"n":2}`)
	if w := nextType(t, tr, TypeOK); w.ID != 2 {
		t.Errorf("got %s, want ok id 2 (the duplicate must not be answered twice)", w)
	}
	send(s, `{"op":"pub","id":4,"n":3,"ch":"pub.a","text":"x"}`)
	nextType(t, tr, TypeOK)
	send(s, `{"op":"pub","id":4,"n":3,"ch":"pub.a","text":"x"}`)
	ping(t, s, tr, 5) // frames without n are always applied
	if n := len(g.b.Published()); n != 1 {
		t.Errorf("a retried pub reached the broker %d times", n)
	}
}

func TestHandleFrameTooLarge(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.MaxFrameBytes = 64 })
	s, tr := openSession(t, g, false)
	s.HandleFrame(context.Background(), fmt.Appendf(nil, `{"op":"pub","id":1,"ch":"pub.a","text":%q}`, strings.Repeat("x", 64)))
	expectClose(t, tr, DisconnectTooLarge)
	waitDone(t, s)
	if s.Reason() != DisconnectTooLarge {
		t.Errorf("reason %v", s.Reason())
	}
	if r := tr.Reasons(); len(r) != 1 || r[0] != DisconnectTooLarge {
		t.Errorf("transport closed with %v", r)
	}
}

func TestMalformedFrames(t *testing.T) {
	tests := []struct {
		frame string
		id    int64
		msg   string
	}{
		{``, 0, "must be a JSON object"},
		{`   `, 0, "must be a JSON object"},
		{`not json`, 0, "must be a JSON object"},
		{`[{"op":"ping"}]`, 0, "must be a JSON object"},
		{`{"op":`, 0, "bad frame"},
		{`{"op":"ping"} x`, 0, "invalid JSON"},
		{`{"op":"nope","id":5}`, 5, `unknown op "nope"`},
		{`{"id":3}`, 3, `missing "op"`},
		{`{"op":"sub","id":"x"}`, 0, `field "id" must be int64, not string`},
		{`{"op":"ping","id":-2}`, 0, `"id" must be a positive integer`},
		{`{"op":"ack","seq":-1}`, 0, `field "seq"`},
		{`{"op":"pub","id":9,"text":5}`, 9, `field "text"`},
	}
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	for i, tt := range tests {
		s.HandleFrame(context.Background(), []byte(tt.frame))
		w := expectErr(t, tr, tt.id, 400, tt.msg)
		if !strings.HasPrefix(w.Error, "bad frame: ") {
			t.Errorf("frame %q: error %q", tt.frame, w.Error)
		}
		ping(t, s, tr, 100+i)
	}
	if isDone(s) {
		t.Error("bad frames ended the session")
	}
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) {
		c.QueueBytes = 2048
		c.Metrics = NewMetrics(reg)
	})
	slow, slowT := openSession(t, g, false)
	fast, fastT := openSession(t, g, false)
	subscribe(t, slow, slowT, 1, "t.slow")
	subscribe(t, fast, fastT, 1, "t.slow")

	release := slowT.Block(false)
	t.Cleanup(release)
	publish(t, g.b, "t.slow", `{"i":0}`)
	<-slowT.entered // the slow session's writer is stuck on message 0
	if w := nextType(t, fastT, TypeMsg); string(w.Data) != `{"i":0}` {
		t.Fatalf("fast got %s", w)
	}
	const n = 200
	for i := 1; i < n; i++ {
		publish(t, g.b, "t.slow", fmt.Sprintf(`{"i":%d}`, i))
		// The fast session keeps up: it gets every message, in order.
		if w := nextType(t, fastT, TypeMsg); string(w.Data) != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("fast got %s, want message %d", w, i)
		}
	}
	waitFor(t, "the slow session to be closed", func() bool { return slow.Reason() == DisconnectSlow })
	if isDone(fast) {
		t.Fatal("the fast session ended too")
	}

	release()
	var got []wire
	for {
		w := next(t, slowT)
		got = append(got, w)
		if w.T != TypeMsg {
			break
		}
	}
	last := got[len(got)-1]
	if last.T != TypeClose || last.Code != 3001 || last.Reason != "slow consumer" || last.Reconnect == nil || !*last.Reconnect {
		t.Fatalf("slow session's last packet %s, want close 3001", last)
	}
	for i, w := range got {
		if w.Seq != uint64(3+i) {
			t.Errorf("packet %s: seq gap", w)
		}
	}
	waitDone(t, slow)
	if r := slowT.Reasons(); len(r) == 0 || r[0] != DisconnectSlow {
		t.Errorf("slow transport closed with %v", r)
	}
	if n := g.b.SubsFor("t.slow"); n != 1 {
		t.Errorf("%d broker subscriptions, want the fast session's one", n)
	}
	ping(t, fast, fastT, 2)
	if v := metricValue(t, reg, "cometgate_slow_consumer_closes_total"); v != 1 {
		t.Errorf("slow consumer closes = %v, want 1", v)
	}
}

func TestSlowPolicyDropOldest(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) { c.QueueBytes = 1024; c.Metrics = NewMetrics(reg) })
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "drop.x")
	release := tr.Block(false)
	t.Cleanup(release)
	publish(t, g.b, "drop.x", `{"i":0}`)
	<-tr.entered
	const n = 100
	for i := 1; i < n; i++ {
		publish(t, g.b, "drop.x", fmt.Sprintf(`{"i":%d}`, i))
	}
	waitFor(t, "delivery", g.delivered)
	if isDone(s) || s.Reason() != (Disconnect{}) {
		t.Fatalf("drop_oldest closed the session: %v", s.Reason())
	}
	release()

	if w := nextType(t, tr, TypeMsg); string(w.Data) != `{"i":0}` {
		t.Fatalf("first message %s", w)
	}
	gaps, msgs, prev := 0, 1, 0
	for prev != n-1 {
		w := next(t, tr)
		switch w.T {
		case TypeGap:
			gaps++
			if w.Ch != "drop.x" || !strings.Contains(w.Reason, "slow consumer") {
				t.Errorf("gap %s", w)
			}
		case TypeMsg:
			msgs++
			var v struct{ I int }
			_ = json.Unmarshal(w.Data, &v)
			if v.I <= prev {
				t.Fatalf("message %d after %d", v.I, prev)
			}
			prev = v.I
		default:
			t.Fatalf("unexpected %s", w)
		}
	}
	if gaps != 1 {
		t.Errorf("%d gap packets, want 1", gaps)
	}
	if msgs >= n {
		t.Errorf("%d messages delivered, want some dropped", msgs)
	}
	if v := metricValue(t, reg, "cometgate_messages_dropped_total", "namespace", "drop.>", "policy", "drop_oldest"); v != float64(n-msgs) {
		t.Errorf("dropped counter %v, want %d", v, n-msgs)
	}
	ping(t, s, tr, 2)
}

func TestSlowPolicyConflate(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) { c.Metrics = NewMetrics(reg) })
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "conf.*")
	release := tr.Block(false)
	t.Cleanup(release)
	publish(t, g.b, "conf.a", `{"v":0}`)
	<-tr.entered
	for i := 1; i <= 20; i++ {
		publish(t, g.b, "conf.a", fmt.Sprintf(`{"v":%d}`, i))
		publish(t, g.b, "conf.b", fmt.Sprintf(`{"w":%d}`, i))
	}
	waitFor(t, "delivery", g.delivered)
	release()
	for _, want := range []struct{ ch, data string }{
		{"conf.a", `{"v":0}`}, {"conf.a", `{"v":20}`}, {"conf.b", `{"w":20}`},
	} {
		w := nextType(t, tr, TypeMsg)
		if w.Ch != want.ch || string(w.Data) != want.data || w.Sub != "conf.*" {
			t.Errorf("got %s, want %s %s", w, want.ch, want.data)
		}
	}
	noPacket(t, tr)
	// v1..v19 and w1..w19 were each replaced by the next.
	if v := metricValue(t, reg, "cometgate_messages_dropped_total", "namespace", "conf.>", "policy", "conflate"); v != 38 {
		t.Errorf("conflated counter %v, want 38", v)
	}
	ping(t, s, tr, 2)
}

func TestRetainResendsUnacked(t *testing.T) {
	g := newTestGateway(t, nil)
	s, err := g.Open(OpenOptions{Transport: "poll", Retain: true})
	if err != nil {
		t.Fatal(err)
	}
	poll1 := newFakeTransport(0)
	if err := s.Attach(poll1, true); err != nil {
		t.Fatal(err)
	}
	hello := nextType(t, poll1, TypeHello)

	// No request attached: answers and messages wait.
	send(s, `{"op":"sub","id":1,"ch":"t.r"}`)
	publish(t, g.b, "t.r", "1")
	publish(t, g.b, "t.r", "2")
	waitFor(t, "delivery", g.delivered)

	poll2 := newFakeTransport(0)
	if err := s.Attach(poll2, true); err != nil {
		t.Fatal(err)
	}
	var second []wire
	for range 4 {
		second = append(second, next(t, poll2))
	}
	for i, typ := range []string{TypeHello, TypeOK, TypeMsg, TypeMsg} {
		if second[i].T != typ || second[i].Seq != uint64(i+1) {
			t.Errorf("second poll packet %d: %s, want %s seq %d", i, second[i], typ, i+1)
		}
	}
	if second[0].raw != hello.raw {
		t.Errorf("resent hello %s differs from %s", second[0], hello)
	}
	if r := poll1.Reasons(); len(r) != 0 {
		t.Errorf("the one-shot request was closed with %v after it completed", r)
	}

	send(s, `{"op":"ack","seq":2}`)
	stream := newFakeTransport(0)
	if err := s.Attach(stream, false); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		w := nextType(t, stream, TypeMsg)
		if w.Seq != uint64(3+i) || w.body != second[2+i].body {
			t.Errorf("resent %s, want the original seq %d and body", w, 3+i)
		}
	}
	publish(t, g.b, "t.r", "3")
	if w := nextType(t, stream, TypeMsg); w.Seq != 5 || string(w.Data) != "3" {
		t.Errorf("new message %s, want seq 5", w)
	}

	send(s, `{"op":"ack","seq":5}`)
	again := newFakeTransport(0)
	if err := s.Attach(again, false); err != nil {
		t.Fatal(err)
	}
	if r := stream.Reasons(); len(r) != 1 || r[0] != DisconnectReplaced {
		t.Errorf("the replaced downstream was closed with %v", r)
	}
	noPacket(t, again) // everything was acknowledged
	if isDone(s) {
		t.Error("replacing the downstream ended the session")
	}
}

func TestRetainQueueIncludesUnacked(t *testing.T) {
	for _, ack := range []bool{false, true} {
		t.Run(fmt.Sprintf("ack=%v", ack), func(t *testing.T) {
			g := newTestGateway(t, func(c *Config) { c.QueueBytes = 512 })
			s, tr := openSession(t, g, true)
			for i := 1; i <= 100; i++ {
				send(s, `{"op":"ping","id":%d}`, i)
				w := next(t, tr)
				if w.T == TypeClose {
					if ack {
						t.Fatalf("an acknowledging client was closed: %s", w)
					}
					if w.Code != DisconnectSlow.Code {
						t.Fatalf("close %s, want 3001", w)
					}
					waitDone(t, s)
					return
				}
				if ack {
					send(s, `{"op":"ack","seq":%d}`, w.Seq)
				}
			}
			if !ack {
				t.Fatal("a client that never acknowledges kept its session: retained packets are unbounded")
			}
		})
	}
}

func TestAttachReplacesDownstream(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr1 := openSession(t, g, false)
	tr2 := newFakeTransport(0)
	if err := s.Attach(tr2, false); err != nil {
		t.Fatal(err)
	}
	if r := tr1.Reasons(); len(r) != 1 || r[0] != DisconnectReplaced || r[0].Code != 3003 {
		t.Errorf("first downstream closed with %v, want 3003", r)
	}
	ping(t, s, tr2, 1)
	noPacket(t, tr1)
	if err := s.Attach(tr2, false); err != nil { // the same one again
		t.Fatal(err)
	}
	if tr2.IsClosed() {
		t.Error("re-attaching the same downstream closed it")
	}
}

func TestAttachReplacesDownstreamDuringWrite(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr1 := openSession(t, g, false)
	release := tr1.Block(false)
	t.Cleanup(release)
	send(s, `{"op":"ping","id":1}`)
	<-tr1.entered
	tr2 := newFakeTransport(0)
	if err := s.Attach(tr2, false); err != nil { // fails tr1's write
		t.Fatal(err)
	}
	ping(t, s, tr2, 2)
	if isDone(s) {
		t.Error("the replaced downstream's failed write ended the session")
	}
}

func TestWriteFailure(t *testing.T) {
	t.Run("persistent", func(t *testing.T) {
		g := newTestGateway(t, nil)
		s, tr := openSession(t, g, false)
		tr.Fail(errors.New("broken pipe"))
		send(s, `{"op":"ping","id":1}`)
		waitDone(t, s)
		if s.Reason() != DisconnectGone() {
			t.Errorf("reason %v", s.Reason())
		}
	})
	t.Run("retaining", func(t *testing.T) {
		g := newTestGateway(t, nil)
		s, tr := openSession(t, g, true)
		tr.Fail(errors.New("broken pipe"))
		send(s, `{"op":"ping","id":1}`)
		waitFor(t, "the write to fail", func() bool { return tr.writes.Load() == 2 })
		tr2 := newFakeTransport(0)
		if err := s.Attach(tr2, true); err != nil {
			t.Fatal(err)
		}
		nextType(t, tr2, TypeHello)
		if w := nextType(t, tr2, TypeOK); w.ID != 1 || w.Seq != 2 {
			t.Errorf("resent %s", w)
		}
		s.Close(DisconnectGone()) // or Shutdown would wait for its next poll
	})
}

func TestDetach(t *testing.T) {
	g := newTestGateway(t, nil)
	s, tr := openSession(t, g, false)
	s.Detach(newFakeTransport(0)) // not the downstream: no effect
	ping(t, s, tr, 1)
	s.Detach(tr)
	waitDone(t, s)
	if s.Reason() != DisconnectGone() {
		t.Errorf("reason %v", s.Reason())
	}
}

func TestShutdown(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) { c.Metrics = NewMetrics(reg) })
	s1, tr1 := openSession(t, g, false)
	s2, tr2 := openSession(t, g, true)
	subscribe(t, s1, tr1, 1, "t.a")
	subscribe(t, s2, tr2, 1, "t.a")
	unattached, err := g.Open(OpenOptions{Transport: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, reg, "cometgate_sessions", "transport", "fake"); v != 3 {
		t.Errorf("sessions gauge %v, want 3", v)
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range []struct {
		s  *Session
		tr *fakeTransport
	}{{s1, tr1}, {s2, tr2}} {
		w := expectClose(t, c.tr, DisconnectShutdown)
		if w.Code != 3000 || !*w.Reconnect {
			t.Errorf("close %s", w)
		}
		if !isDone(c.s) {
			t.Error("Shutdown returned before a session ended")
		}
		if r := c.tr.Reasons(); len(r) != 1 || r[0] != DisconnectShutdown {
			t.Errorf("transport closed with %v", r)
		}
	}
	if !isDone(unattached) {
		t.Error("a session without downstream outlived Shutdown")
	}
	if _, err := g.Open(OpenOptions{}); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("Open after Shutdown: %v", err)
	}
	if g.Ready() {
		t.Error("Ready while draining")
	}
	if n := g.b.Subs(); n != 0 || g.SessionCount() != 0 {
		t.Errorf("%d broker subscriptions and %d sessions after Shutdown", n, g.SessionCount())
	}
	if v := metricValue(t, reg, "cometgate_sessions", "transport", "fake"); v != 0 {
		t.Errorf("sessions gauge %v after Shutdown", v)
	}
	if err := g.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestShutdownDeliversCloseToDetachedPollingSession(t *testing.T) {
	g := newTestGateway(t, nil)
	s, _ := openPolled(t, g)

	done := make(chan error, 1)
	go func() { done <- shutdownWithin(g.Gateway, waitTimeout) }()
	waitFor(t, "the session to be closing", func() bool { return s.Reason() == DisconnectShutdown })
	if isDone(s) {
		t.Fatal("the session ended before its next request came")
	}
	poll2 := newFakeTransport(0)
	if err := s.Attach(poll2, true); err != nil {
		t.Fatalf("the next poll could not attach: %v", err)
	}
	if w := expectClose(t, poll2, DisconnectShutdown); w.Seq != 2 {
		t.Errorf("close %s, want seq 2", w)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	waitDone(t, s)
	if err := s.Attach(newFakeTransport(0), true); err == nil {
		t.Error("Attach after the close packet was delivered succeeded")
	}
}

func TestShutdownWithStuckTransport(t *testing.T) {
	for _, stubborn := range []bool{false, true} {
		t.Run(fmt.Sprintf("stubborn=%v", stubborn), func(t *testing.T) {
			g := newTestGateway(t, nil)
			g.shutdownErr = true
			s, tr := openSession(t, g, false)
			release := tr.Block(stubborn) // stubborn: even Close does not unblock it
			t.Cleanup(release)
			send(s, `{"op":"ping","id":1}`)
			<-tr.entered

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			err := g.Shutdown(ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown with a stuck transport: %v, want a deadline error", err)
			}
			if !tr.IsClosed() {
				t.Error("the stuck downstream was not closed")
			}
			if err2 := g.Shutdown(context.Background()); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("second Shutdown: %v, want %v", err2, err)
			}
			release()
			waitDone(t, s)
		})
	}
}

func TestBrokerStateReadyAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) { c.Metrics = NewMetrics(reg) })
	up := func() float64 { return metricValue(t, reg, "cometgate_broker_up") }
	reconnects := func() float64 { return metricValue(t, reg, "cometgate_broker_reconnects_total") }
	if !g.Ready() || up() != 1 || reconnects() != 0 {
		t.Fatalf("at start: ready %v up %v reconnects %v", g.Ready(), up(), reconnects())
	}
	steps := []struct {
		st         brokers.State
		ready      bool
		reconnects float64
	}{
		{brokers.StateConnected, true, 0}, // a repeated report is no reconnect
		{brokers.StateDisconnected, false, 0},
		{brokers.StateDisconnected, false, 0},
		{brokers.StateConnected, true, 1},
		{brokers.StateConnected, true, 1},
		{brokers.StateDisconnected, false, 1},
		{brokers.StateConnected, true, 2},
		{brokers.StateClosed, false, 2},
	}
	for i, st := range steps {
		g.BrokerState(st.st)
		wantUp := 0.0
		if st.ready {
			wantUp = 1
		}
		if g.Ready() != st.ready || up() != wantUp || reconnects() != st.reconnects {
			t.Errorf("step %d (%v): ready %v up %v reconnects %v, want %v %v %v",
				i, st.st, g.Ready(), up(), reconnects(), st.ready, wantUp, st.reconnects)
		}
	}
}

func TestBrokerNotReadyAtStart(t *testing.T) {
	b := newFakeBroker()
	b.ready.Store(false)
	reg := prometheus.NewRegistry()
	g, err := New(Config{NodeID: "n1", Metrics: NewMetrics(reg)}, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = g.Shutdown(context.Background())
		_ = b.Close()
	})
	if g.Ready() {
		t.Error("Ready before the broker connected")
	}
	g.BrokerState(brokers.StateDisconnected)
	g.BrokerState(brokers.StateConnected)
	if !g.Ready() || metricValue(t, reg, "cometgate_broker_reconnects_total") != 0 {
		t.Error("the first connect is not ready, or counted as a reconnect")
	}
}

func TestMetricsCountTraffic(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := newTestGateway(t, func(c *Config) { c.Metrics = NewMetrics(reg) })
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, "t.a")
	publish(t, g.b, "t.a", "1")
	nextType(t, tr, TypeMsg)
	send(s, `{"op":"pub","id":2,"ch":"pub.a","text":"x"}`)
	nextType(t, tr, TypeOK)
	waitFor(t, "metrics", func() bool { return metricValue(t, reg, "cometgate_messages_out_total", "transport", "fake") == 1 })
	fake := []string{"transport", "fake"}
	check := func(name string, labels []string, want float64) {
		t.Helper()
		if v := metricValue(t, reg, name, labels...); v != want {
			t.Errorf("%s%v = %v, want %v", name, labels, v, want)
		}
	}
	check("cometgate_messages_in_total", nil, 1)
	check("cometgate_delivery_latency_seconds", fake, 1)
	check("cometgate_sessions_opened_total", fake, 1)
	check("cometgate_subscriptions", fake, 1)
	check("cometgate_publishes_total", []string{"source", "client", "result", "ok"}, 1)
	check("cometgate_publish_duration_seconds", []string{"source", "client"}, 1)
	if v := metricValue(t, reg, "cometgate_bytes_out_total", fake...); v < 100 {
		t.Errorf("bytes out %v", v)
	}

	send(s, `{"op":"unsub","id":3,"ch":"t.a"}`)
	nextType(t, tr, TypeOK)
	check("cometgate_subscriptions", fake, 0)
	subscribe(t, s, tr, 4, "t.a")
	check("cometgate_subscriptions", fake, 1)
	s.Close(DisconnectSlow)
	waitFor(t, "the session to end", func() bool { return isDone(s) })
	check("cometgate_subscriptions", fake, 0)
	check("cometgate_sessions", fake, 0)
	check("cometgate_session_closes_total", []string{"transport", "fake", "code", "3001"}, 1)
}

// TestConcurrentSubscribers hammers the hub's reference counting: sessions
// subscribe and unsubscribe one pattern over and over while messages flow.
func TestConcurrentSubscribers(t *testing.T) {
	g := newTestGateway(t, nil)
	const sessions, rounds = 8, 30
	stop := make(chan struct{})
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = g.b.Publish(context.Background(), brokers.Message{Channel: "t.hot", Data: []byte("1")})
			time.Sleep(50 * time.Microsecond)
		}
	}()
	var wg sync.WaitGroup
	for range sessions {
		s, tr := openSession(t, g, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				send(s, `{"op":"sub","id":%d,"ch":"t.hot"}`, 2*r+1)
				if !awaitAnswer(tr, int64(2*r+1)) {
					t.Errorf("no ok for sub %d", 2*r+1)
					return
				}
				send(s, `{"op":"unsub","id":%d,"ch":"t.hot"}`, 2*r+2)
				if !awaitAnswer(tr, int64(2*r+2)) {
					t.Errorf("no ok for unsub %d", 2*r+2)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	pubWG.Wait()
	if n := g.b.Subs(); n != 0 {
		t.Errorf("%d broker subscriptions after everyone unsubscribed", n)
	}
}

// awaitAnswer skips messages until the ok for id; false on an err or timeout.
func awaitAnswer(tr *fakeTransport, id int64) bool {
	timeout := time.After(waitTimeout)
	for {
		select {
		case s := <-tr.sink:
			var w wire
			if json.Unmarshal([]byte(s.JSON), &w) != nil {
				return false
			}
			switch {
			case w.T == TypeOK && w.ID == id:
				return true
			case w.T == TypeErr:
				return false
			}
		case <-timeout:
			return false
		}
	}
}

// The tests below depend on timers (heartbeats, the disconnect delay). They
// run in a synctest bubble: time is virtual, so they neither sleep for real
// nor depend on the machine's speed.

func TestHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, func(c *Config) { c.Heartbeat = 20 * time.Millisecond })
		_, idleT := openSession(t, g, false)
		busy, busyT := openSession(t, g, false)
		for i := range 50 { // 250ms, a packet every 5ms
			ping(t, busy, busyT, i+1)
			time.Sleep(5 * time.Millisecond)
		}
		synctest.Wait()
		if n := idleT.heartbeats.Load(); n < 5 {
			t.Errorf("idle session: %d heartbeats in 250ms at a 20ms interval", n)
		}
		if n := busyT.heartbeats.Load(); n != 0 {
			t.Errorf("busy session: %d heartbeats, want none", n)
		}
	})
}

func TestHeartbeatCompletesOneShotRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, func(c *Config) {
			c.Heartbeat = 20 * time.Millisecond
			c.DisconnectDelay = time.Second
		})
		s, _ := openPolled(t, g)

		poll2 := newFakeTransport(0)
		_ = s.Attach(poll2, true)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if n := poll2.heartbeats.Load(); n != 1 {
			t.Fatalf("one-shot request got %d heartbeats, want exactly 1 (it completes the request)", n)
		}
		poll3 := newFakeTransport(0)
		_ = s.Attach(poll3, true)
		if r := poll2.Reasons(); len(r) != 0 {
			t.Errorf("the completed request was closed with %v", r)
		}
		send(s, `{"op":"ping","id":1}`)
		if w := nextType(t, poll3, TypeOK); w.ID != 1 {
			t.Errorf("ok = %s", w)
		}
		if len(poll2.sink) != 0 {
			t.Error("a packet went to the completed request")
		}
		s.Close(DisconnectGone())
	})
}

func TestCloseDuringHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, func(c *Config) { c.Heartbeat = 20 * time.Millisecond })
		s, tr := openSession(t, g, false)
		release := tr.BlockHeartbeats()
		defer release()
		<-tr.entered // a heartbeat write is in progress
		s.Close(DisconnectGone())
		waitDone(t, s)
	})
}

func TestRetainExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 5 * time.Second
		g := newTestGateway(t, func(c *Config) { c.DisconnectDelay = delay })
		s, _ := openPolled(t, g) // acknowledged, or the hello is resent to the next request

		time.Sleep(delay - time.Millisecond)
		synctest.Wait()
		if isDone(s) {
			t.Fatal("expired before the disconnect delay")
		}
		// A request that stays attached keeps the session, however long.
		held := newFakeTransport(0)
		_ = s.Attach(held, true)
		time.Sleep(3 * delay)
		synctest.Wait()
		if isDone(s) {
			t.Fatal("expired with a request attached")
		}
		s.Detach(held)
		time.Sleep(delay - time.Millisecond)
		synctest.Wait()
		if isDone(s) {
			t.Fatal("expired before the disconnect delay after Detach")
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if !isDone(s) {
			t.Fatal("did not expire after the disconnect delay")
		}
		if s.Reason() != DisconnectExpired || s.Reason().Code != 3002 {
			t.Errorf("reason %v, want 3002", s.Reason())
		}
		if len(held.sink) != 0 || len(held.Reasons()) != 0 {
			t.Error("the detached request was written to or closed")
		}
	})
}

func TestShutdownWaitsForDetachedPollingSessionAtMostTheDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 5 * time.Second
		g := newTestGateway(t, func(c *Config) { c.DisconnectDelay = delay })
		s, err := g.Open(OpenOptions{Transport: "poll", Retain: true})
		if err != nil {
			t.Fatal(err)
		}
		poll := newFakeTransport(0)
		_ = s.Attach(poll, true)
		nextType(t, poll, TypeHello)
		start := time.Now()
		if err := shutdownWithin(g.Gateway, time.Minute); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > delay {
			t.Errorf("Shutdown took %v (virtual), want at most the disconnect delay %v", d, delay)
		}
		if s.Reason() != DisconnectShutdown || !isDone(s) {
			t.Errorf("reason %v", s.Reason())
		}
	})
}

// TestShutdownCountsOnlyCutSessions: when the deadline passes while
// Shutdown waits for one session, the sessions that ended in time are not
// counted as cut with it.
func TestShutdownCountsOnlyCutSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, func(c *Config) { c.DisconnectDelay = time.Minute })
		g.shutdownErr = true
		openPolled(t, g) // its client never comes back for the close packet
		for range 100 {
			openSession(t, g, false)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := g.Shutdown(ctx)
		if err == nil || !strings.Contains(err.Error(), "timed out: 1 sessions cut") {
			t.Errorf("Shutdown: %v, want 1 session cut", err)
		}
	})
}

// TestSubscribeCannotReachEarlierDeniedNamespace: namespaces are ordered and
// the first one matching a channel decides, so a wide subscription covered by
// a permissive namespace must not reach the channels of an earlier, narrower
// namespace that denies them.
func TestSubscribeCannotReachEarlierDeniedNamespace(t *testing.T) {
	g := newTestGateway(t, func(c *Config) {
		c.Rules = Rules{
			{Pattern: "t.secret.>", Subscribe: Nobody},
			{Pattern: "t.open.*", Subscribe: Anyone},
			{Pattern: "t.>", Subscribe: Anyone},
		}
	})
	s, tr := openSession(t, g, false)
	for i, p := range []string{"t.>", "t.*.x", "t.*.>", "t.secret.x", "t.secret.*"} {
		send(s, `{"op":"sub","id":%d,"ch":%q}`, i+1, p)
		expectErr(t, tr, int64(i+1), 403, "permission denied")
	}
	for i, p := range []string{"t.x", "t.*", "t.open.*", "t.x.>", "t.open.>"} {
		subscribe(t, s, tr, 100+i, p)
	}
}

func TestRulesForSubscribe(t *testing.T) {
	rules := Rules{
		{Pattern: "t.secret.>", Subscribe: Nobody, Publish: Anyone},
		{Pattern: "t.open.*", Subscribe: Anyone, Slow: SlowConflate},
		{Pattern: "t.>", Subscribe: Anyone},
		{Pattern: "u.>", Subscribe: Nobody},
	}
	tests := []struct {
		pattern string
		want    string // governing namespace, "" = denied
	}{
		{"t.x", "t.>"},
		{"t.open.a", "t.open.*"},
		{"t.open.*", "t.open.*"},
		{"t.open.>", "t.>"},
		{"t.*", "t.>"},
		{"t.>", ""},
		{"t.*.>", ""},
		{"t.secret.a", ""},
		{"u.a", ""},
		{"v.a", ""},
		{">", ""},
	}
	for _, tt := range tests {
		got := rules.ForSubscribe(tt.pattern, nil)
		switch {
		case tt.want == "" && got != nil:
			t.Errorf("ForSubscribe(%q) = %q, want denied", tt.pattern, got.Pattern)
		case tt.want != "" && (got == nil || got.Pattern != tt.want):
			t.Errorf("ForSubscribe(%q) = %v, want %q", tt.pattern, got, tt.want)
		}
	}
	if ns := rules.Find("t.secret.a"); ns == nil || ns.Publish != Anyone {
		t.Errorf("Find(t.secret.a) = %v", ns)
	}
}

func TestParseSlowPolicy(t *testing.T) {
	for in, want := range map[string]SlowPolicy{"": SlowDisconnect, "disconnect": SlowDisconnect, "drop_oldest": SlowDropOldest, "conflate": SlowConflate} {
		if got, err := ParseSlowPolicy(in); err != nil || got != want {
			t.Errorf("ParseSlowPolicy(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseSlowPolicy("drop"); err == nil {
		t.Error("ParseSlowPolicy accepted an unknown policy")
	}
}

func TestDecodeFrames(t *testing.T) {
	tests := []struct {
		body    string
		ops     []string // "" where the frame has an error
		wantErr bool
	}{
		{`{"op":"ping","id":1}`, []string{"ping"}, false},
		{` [{"op":"sub","id":1,"ch":"a"}, {"op":"nope"}, 5, {"op":"ack","seq":2}] `, []string{"sub", "", "", "ack"}, false},
		{`[]`, nil, false},
		{`{"op":"nope"}`, []string{""}, false},
		{`[{"op":"ping"}`, nil, true},
		{`"ping"`, nil, true},
		{``, nil, true},
	}
	for _, tt := range tests {
		frames, errs, err := DecodeFrames([]byte(tt.body))
		if (err != nil) != tt.wantErr {
			t.Errorf("DecodeFrames(%s): err %v", tt.body, err)
			continue
		}
		if len(frames) != len(tt.ops) || len(errs) != len(tt.ops) {
			t.Errorf("DecodeFrames(%s): %d frames, %d errs, want %d", tt.body, len(frames), len(errs), len(tt.ops))
			continue
		}
		for i, op := range tt.ops {
			if (op == "") != (errs[i] != nil) || op != "" && frames[i].Op != op {
				t.Errorf("DecodeFrames(%s)[%d] = %+v, %v; want op %q", tt.body, i, frames[i], errs[i], op)
			}
		}
	}
}

func TestRetainExpiryAfterDetachDuringWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 5 * time.Second
		g := newTestGateway(t, func(c *Config) { c.DisconnectDelay = delay })
		s, tr := openSession(t, g, true)
		release := tr.Block(true)
		defer release()
		send(s, `{"op":"ping","id":1}`)
		<-tr.entered
		s.Detach(tr)
		time.Sleep(2 * delay) // the expiry fires while the write is stuck
		release()
		synctest.Wait()
		if isDone(s) {
			t.Fatal("expired while its write was still in progress")
		}
		time.Sleep(delay + time.Millisecond)
		synctest.Wait()
		if !isDone(s) || s.Reason() != DisconnectExpired {
			t.Fatalf("detached session did not expire: done %v reason %v", isDone(s), s.Reason())
		}
	})
}
