package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// startTestNodes starts a node table on b; Close runs at cleanup.
func startTestNodes(t *testing.T, b brokers.Broker, id, url string, interval time.Duration) *Nodes {
	t.Helper()
	n, err := StartNodes(context.Background(), NodesOptions{
		Broker: b, SelfID: id, SelfURL: url, Interval: interval,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return n
}

func announce(t *testing.T, b brokers.Broker, data string) {
	t.Helper()
	if err := b.Publish(context.Background(), brokers.Message{Channel: NodesChannel, Data: []byte(data)}); err != nil {
		t.Fatal(err)
	}
}

func TestNodesDiscoverEachOther(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Second)
		c := startTestNodes(t, b, "c", "http://127.0.0.1:1003", time.Second)
		synctest.Wait()
		// c learnt of a from the announcement a sent when c appeared, long
		// before a's next tick.
		if u, ok := a.Lookup("c"); !ok || u != "http://127.0.0.1:1003" {
			t.Errorf("a.Lookup(c) = %q, %v", u, ok)
		}
		if u, ok := c.Lookup("a"); !ok || u != "http://127.0.0.1:1001" {
			t.Errorf("c.Lookup(a) = %q, %v", u, ok)
		}
		// Own id ignored, even though each node hears its own announcements.
		if _, ok := a.Lookup("a"); ok {
			t.Error("a knows itself")
		}
		if a.Len() != 1 || c.Len() != 1 {
			t.Errorf("Len: a %d, c %d; want 1 each", a.Len(), c.Len())
		}
	})
}

func TestNodesExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Second)
		announce(t, b, `{"id":"gone","url":"http://127.0.0.1:2000"}`)
		synctest.Wait()
		if _, ok := a.Lookup("gone"); !ok {
			t.Fatal("announced node not known")
		}
		// TTL is three intervals: still known just before, gone after.
		time.Sleep(3*time.Second - time.Millisecond)
		if _, ok := a.Lookup("gone"); !ok {
			t.Error("node forgotten before three intervals")
		}
		time.Sleep(2 * time.Millisecond)
		if _, ok := a.Lookup("gone"); ok {
			t.Error("node still known after three missed announcements")
		}
		// A node that keeps announcing stays.
		for range 10 {
			announce(t, b, `{"id":"alive","url":"http://127.0.0.1:2001"}`)
			time.Sleep(time.Second)
		}
		synctest.Wait()
		if _, ok := a.Lookup("alive"); !ok {
			t.Error("a node announcing every interval was forgotten")
		}
		// The announcer prunes the table on its ticks.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		a.mu.Lock()
		size := len(a.table)
		a.mu.Unlock()
		if size != 0 {
			t.Errorf("table holds %d entries after every node went quiet", size)
		}
	})
}

func TestNodesAnnounceEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		startTestNodes(t, b, "a", "http://10.0.0.5:8080", time.Second)
		time.Sleep(4*time.Second + time.Millisecond)
		synctest.Wait()
		var got []announcement
		for _, m := range b.Published() {
			if m.Channel != NodesChannel {
				t.Fatalf("published on %q", m.Channel)
			}
			var a announcement
			if err := json.Unmarshal(m.Data, &a); err != nil {
				t.Fatal(err)
			}
			got = append(got, a)
		}
		// At start, then at 1s, 2s, 3s and 4s.
		if len(got) != 5 {
			t.Fatalf("%d announcements in 4s at a 1s interval, want 5: %v", len(got), got)
		}
		if got[0] != (announcement{ID: "a", URL: "http://10.0.0.5:8080"}) {
			t.Errorf("announcement %+v", got[0])
		}
	})
}

func TestNodesIgnoreBadAnnouncements(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		var logs bytes.Buffer
		n, err := StartNodes(context.Background(), NodesOptions{
			Broker: b, SelfID: "a", SelfURL: "http://127.0.0.1:1001", Interval: time.Second,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		bad := []string{
			`not json`,
			`{"id":"","url":"http://127.0.0.1:1"}`,
			`{"id":"x.y","url":"http://127.0.0.1:1"}`,
			`{"id":"` + strings.Repeat("x", 65) + `","url":"http://127.0.0.1:1"}`,
			`{"id":"b","url":""}`,
			`{"id":"b","url":"ftp://127.0.0.1:1"}`,
			`{"id":"b","url":"http://127.0.0.1:1/path"}`,
			`{"id":"b","url":"http://user:pw@127.0.0.1:1"}`,
			`{"id":"b","url":"http://127.0.0.1:1?q=1"}`,
			`{"id":"b","url":"http://:80"}`,
			`{"id":"b","url":"127.0.0.1:80"}`,
			`{"id":"b","url":42}`,
			`{"id":"b","url":"http://127.0.0.1:1","pad":"` + strings.Repeat("x", 1100) + `"}`,
			`{"id":"a","url":"http://127.0.0.1:9999"}`, // another node claims our id
		}
		for _, d := range bad {
			announce(t, b, d)
		}
		synctest.Wait()
		if n.Len() != 0 {
			n.mu.Lock()
			t.Errorf("bad announcements accepted: %v", n.table)
			n.mu.Unlock()
		}
		if _, ok := n.Lookup("b"); ok {
			t.Error("node b known")
		}
		if !strings.Contains(logs.String(), "node ids must be unique") {
			t.Errorf("a duplicate node id was not logged:\n%s", logs.String())
		}
		// A good one still works after all that.
		announce(t, b, `{"id":"b","url":"https://node-b.example:8443"}`)
		synctest.Wait()
		if u, ok := n.Lookup("b"); !ok || u != "https://node-b.example:8443" {
			t.Errorf("Lookup(b) = %q, %v", u, ok)
		}
	})
}

func TestNodesOptionsChecked(t *testing.T) {
	b := newFakeBroker()
	for _, o := range []NodesOptions{
		{SelfID: "a", SelfURL: "http://127.0.0.1:1"},
		{Broker: b, SelfURL: "http://127.0.0.1:1"},
		{Broker: b, SelfID: "a", SelfURL: "http://0.0.0.0:8080/x"},
		{Broker: b, SelfID: "a", SelfURL: "http://127.0.0.1:1", Interval: -1},
	} {
		if n, err := StartNodes(context.Background(), o); err == nil {
			_ = n.Close()
			t.Errorf("StartNodes(%+v) succeeded", o)
		}
	}
	b.SetSubscribeErr(brokers.ErrClosed)
	if _, err := StartNodes(context.Background(), NodesOptions{Broker: b, SelfID: "a", SelfURL: "http://127.0.0.1:1"}); err == nil {
		t.Error("StartNodes succeeded without a subscription")
	}
}

func TestNodesCloseWhilePublishWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		release := b.HoldPublishes()
		defer release()
		n, err := StartNodes(context.Background(), NodesOptions{
			Broker: b, SelfID: "a", SelfURL: "http://127.0.0.1:1", Interval: time.Hour,
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the announcer is stuck in Publish
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if b.Subs() != 0 {
			t.Error("subscription left after Close")
		}
	})
}

// Browsers and the publish API can never write announcements: they would
// steer forwarded requests (cookies included) to any URL.
func TestNodesChannelIsReserved(t *testing.T) {
	g := newTestGateway(t, func(c *Config) {
		c.Rules = append(Rules{{Pattern: ">", Subscribe: Anyone, Publish: Anyone}}, c.Rules...)
	})
	s, tr := openSession(t, g, false)
	send(s, `{"op":"pub","id":1,"ch":%q,"data":{"id":"x","url":"http://evil:1"}}`, NodesChannel)
	expectErr(t, tr, 1, 403, "permission denied")
	if err := g.Publish(context.Background(), NodesChannel, []byte(`{}`), ""); err == nil {
		t.Fatal("the publish API wrote to the reserved channel")
	}
}

// TestNodesSayGoodbye: a node that closes tells the others, which forget
// it at once rather than after TTL; a goodbye from another URL under the
// same id (an older instance) does not remove the current one.
func TestNodesSayGoodbye(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Second)
		c, err := StartNodes(context.Background(), NodesOptions{
			Broker: b, SelfID: "c", SelfURL: "http://127.0.0.1:1003", Interval: time.Second,
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if _, ok := a.Lookup("c"); !ok {
			t.Fatal("a does not know c")
		}
		announce(t, b, `{"id":"c","url":"http://127.0.0.1:9999","bye":true}`)
		synctest.Wait()
		if _, ok := a.Lookup("c"); !ok {
			t.Error("a goodbye from another URL removed c")
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if _, ok := a.Lookup("c"); ok {
			t.Error("a still knows c after its goodbye")
		}
	})
}
