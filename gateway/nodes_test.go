package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
		var got []nodeMsg
		for _, m := range b.Published() {
			if m.Channel != NodesChannel {
				t.Fatalf("published on %q", m.Channel)
			}
			var a nodeMsg
			if err := json.Unmarshal(m.Data, &a); err != nil {
				t.Fatal(err)
			}
			got = append(got, a)
		}
		// At start, then at 1s, 2s, 3s and 4s.
		if len(got) != 5 {
			t.Fatalf("%d announcements in 4s at a 1s interval, want 5: %v", len(got), got)
		}
		// The first one also asks the others to announce themselves.
		if got[0] != (nodeMsg{ID: "a", URL: "http://10.0.0.5:8080", Ask: "nodes"}) {
			t.Errorf("first announcement %+v", got[0])
		}
		if got[1] != (nodeMsg{ID: "a", URL: "http://10.0.0.5:8080"}) {
			t.Errorf("announcement %+v", got[1])
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

// TestNodesStartingNodeAsks: a node that starts asks the others to
// announce themselves, and knows them long before their next tick; it
// reports ready once their answers settled.
func TestNodesStartingNodeAsks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		startTestNodes(t, b, "old", "http://127.0.0.1:1001", time.Hour)
		synctest.Wait()
		n := startTestNodes(t, b, "new", "http://127.0.0.1:1002", time.Hour)
		synctest.Wait()
		if u, ok := n.Lookup("old"); !ok || u != "http://127.0.0.1:1001" {
			t.Fatalf("the new node does not know the old one: %q %v", u, ok)
		}
		if n.Ready() {
			t.Error("ready before the answers settled")
		}
		time.Sleep(settleQuiet)
		if !n.Ready() {
			t.Error("not ready once the answers settled")
		}
	})
}

// TestNodesFind: a node the table does not know is asked for; one that
// answers is found, one that does not is gone, and known gone for a while
// without asking again.
func TestNodesFind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Hour)
		startTestNodes(t, b, "c", "http://127.0.0.1:1003", time.Hour)
		synctest.Wait()
		// a loses c (a restart of a would): asking finds it again.
		a.mu.Lock()
		delete(a.table, "c")
		a.mu.Unlock()
		if u, ok, err := a.Find(context.Background(), "c"); !ok || err != nil || u != "http://127.0.0.1:1003" {
			t.Fatalf("Find(c) = %q, %v, %v", u, ok, err)
		}
		start := time.Now()
		if _, ok, err := a.Find(context.Background(), "ghost"); ok || err != nil {
			t.Fatalf("Find(ghost) = %v, %v", ok, err)
		}
		if waited := time.Since(start); waited != DefaultAskTimeout {
			t.Errorf("Find(ghost) waited %v, want the ask timeout %v", waited, DefaultAskTimeout)
		}
		start = time.Now()
		if _, ok, _ := a.Find(context.Background(), "ghost"); ok || time.Since(start) != 0 {
			t.Errorf("a node known gone was asked for again")
		}
	})
}

// TestNodesSuspect: a node that stops answering (it crashed: no goodbye)
// is forgotten once asked about; one that answers stays.
func TestNodesSuspect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Hour)
		startTestNodes(t, b, "c", "http://127.0.0.1:1003", time.Hour)
		announce(t, b, `{"id":"dead","url":"http://127.0.0.1:2000"}`)
		synctest.Wait()
		if _, ok, err := a.Suspect(context.Background(), "c"); !ok || err != nil {
			t.Errorf("Suspect(c), alive: %v %v", ok, err)
		}
		if _, ok, err := a.Suspect(context.Background(), "dead"); ok || err != nil {
			t.Errorf("Suspect(dead): %v %v", ok, err)
		}
		if _, ok := a.Lookup("dead"); ok {
			t.Error("a node that did not answer is still known")
		}
	})
}

// TestNodesBrokerOutage: while the broker is down nobody is forgotten,
// however long it lasts, and an unknown node cannot be asked for; once it
// is back every node gets a new TTL and is asked to announce itself.
func TestNodesBrokerOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Second)
		announce(t, b, `{"id":"peer","url":"http://127.0.0.1:2000"}`)
		synctest.Wait()
		b.ready.Store(false)
		b.SetPublishErr(brokers.ErrUnavailable)
		time.Sleep(time.Minute)
		if _, ok := a.Lookup("peer"); !ok {
			t.Fatal("a node was forgotten while the broker was down")
		}
		if _, _, err := a.Find(context.Background(), "other"); !errors.Is(err, ErrBrokerDown) {
			t.Errorf("Find while the broker is down: %v, want ErrBrokerDown", err)
		}
		b.SetPublishErr(nil)
		b.ready.Store(true)
		time.Sleep(1500 * time.Millisecond) // a tick sees the broker back
		if _, ok := a.Lookup("peer"); !ok {
			t.Fatal("a node was forgotten as soon as the broker came back")
		}
		// The peer may not be back on the broker yet: asked and silent,
		// it keeps its address until it has had a TTL to come back.
		if u, ok, err := a.Suspect(context.Background(), "peer"); !ok || err != nil || u != "http://127.0.0.1:2000" {
			t.Fatalf("Suspect right after the outage: %q %v %v", u, ok, err)
		}
		// The peer is really gone: without announcements it is forgotten
		// one TTL after the broker came back.
		time.Sleep(4 * time.Second)
		if _, ok := a.Lookup("peer"); ok {
			t.Error("a silent node is still known a TTL after the outage")
		}
	})
}

// TestNodesWhoOwns: every node answers whether it owns a key; the owner
// is found, nobody owning it says so, and two nodes claiming a new key at
// once agree that the lower id opens it.
func TestNodesWhoOwns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Hour)
		c := startTestNodes(t, b, "c", "http://127.0.0.1:1003", time.Hour)
		d := startTestNodes(t, b, "d", "http://127.0.0.1:1004", time.Hour)
		c.SetOwnerFunc(func(key string) (bool, bool) { return key == "/sockjs/k1", false })
		a.SetOwnerFunc(func(key string) (bool, bool) { return false, key == "/sockjs/new" })
		d.SetOwnerFunc(func(key string) (bool, bool) { return false, key == "/sockjs/new" })
		synctest.Wait()
		owner, u, claimant, err := a.WhoOwns(context.Background(), "/sockjs/k1")
		if owner != "c" || u != "http://127.0.0.1:1003" || claimant != "" || err != nil {
			t.Errorf("WhoOwns(k1) from a = %q %q %q %v", owner, u, claimant, err)
		}
		start := time.Now()
		owner, _, claimant, err = a.WhoOwns(context.Background(), "/sockjs/none")
		if owner != "" || claimant != "" || err != nil {
			t.Errorf("WhoOwns(none) = %q %q %v", owner, claimant, err)
		}
		if time.Since(start) != 0 {
			t.Errorf("WhoOwns waited %v although every node answered", time.Since(start))
		}
		if owner, _, claimant, _ = d.WhoOwns(context.Background(), "/sockjs/new"); owner != "" || claimant != "a" {
			t.Errorf("d asking about a key a claims too: owner %q claimant %q, want claimant a", owner, claimant)
		}
		if owner, _, claimant, _ = a.WhoOwns(context.Background(), "/sockjs/new"); owner != "" || claimant != "" {
			t.Errorf("a asking about a key d claims too: owner %q claimant %q, want none (a opens it)", owner, claimant)
		}
		// d heard c's answer to a's question: it knows k1's owner without
		// asking.
		published := len(b.Published())
		if owner, _, _, _ = d.WhoOwns(context.Background(), "/sockjs/k1"); owner != "c" || len(b.Published()) != published {
			t.Errorf("d asked again for an owner it heard of (owner %q)", owner)
		}
	})
}

// TestNodesWhoOwnsAnswersPerQuestion: an answer closes only the question
// it answers. With two questions open at once, a node's answer to one
// must not count as its answer to the other, which then ended before
// the owner answered it (and the asker opened a second session under an
// id another node had).
func TestNodesWhoOwnsAnswersPerQuestion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Hour)
		announce(t, b, `{"id":"p","url":"http://127.0.0.1:1002"}`)
		time.Sleep(settleMax) // the table settled: WhoOwns asks at once
		synctest.Wait()
		type result struct{ owner string }
		x, y := make(chan result, 1), make(chan result, 1)
		go func() { o, _, _, _ := a.WhoOwns(context.Background(), "/sockjs/x"); x <- result{o} }()
		go func() { o, _, _, _ := a.WhoOwns(context.Background(), "/sockjs/y"); y <- result{o} }()
		synctest.Wait()
		q := map[string]uint64{}
		for _, m := range b.Published() {
			var nm nodeMsg
			if json.Unmarshal(m.Data, &nm) == nil && nm.Ask == "owner" {
				q[nm.Key] = nm.Q
			}
		}
		if q["/sockjs/x"] == 0 || q["/sockjs/y"] == 0 {
			t.Fatalf("questions published: %v", q)
		}
		announce(t, b, fmt.Sprintf(`{"id":"p","url":"http://127.0.0.1:1002","to":"a","q":%d,"key":"/sockjs/x"}`, q["/sockjs/x"]))
		synctest.Wait()
		if r := <-x; r.owner != "" {
			t.Errorf("WhoOwns(x) = %q, want none", r.owner)
		}
		select {
		case r := <-y:
			t.Fatalf("WhoOwns(y) returned %q before p answered it", r.owner)
		default:
		}
		announce(t, b, fmt.Sprintf(`{"id":"p","url":"http://127.0.0.1:1002","to":"a","q":%d,"key":"/sockjs/y","owns":true}`, q["/sockjs/y"]))
		synctest.Wait()
		if r := <-y; r.owner != "p" {
			t.Errorf("WhoOwns(y) = %q, want p", r.owner)
		}
	})
}

// TestNodesWhoOwnsWaitsToSettle: a node that has just started and heard
// of nobody yet does not take "nobody to ask" for "nobody owns it".
func TestNodesWhoOwnsWaitsToSettle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Hour)
		got := make(chan string, 1)
		go func() { o, _, _, _ := a.WhoOwns(context.Background(), "/sockjs/k"); got <- o }()
		synctest.Wait()
		c := startTestNodes(t, b, "c", "http://127.0.0.1:1003", time.Hour)
		c.SetOwnerFunc(func(key string) (bool, bool) { return key == "/sockjs/k", false })
		if o := <-got; o != "c" {
			t.Errorf("WhoOwns(k) on a node that had just started = %q, want c", o)
		}
	})
}

// TestNodesOwned: a node that opened a key tells the others, who then
// know its owner without asking, even while the broker is down. The
// owner is remembered for as long as its key keeps being asked about, so
// that no question has to be asked (and possibly go unheard, when the
// broker has just lost a server) while a session's requests keep coming;
// one that is not asked about any more is forgotten after ownerCacheFor.
func TestNodesOwned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBroker()
		a := startTestNodes(t, b, "a", "http://127.0.0.1:1001", time.Hour)
		c := startTestNodes(t, b, "c", "http://127.0.0.1:1003", time.Hour)
		synctest.Wait()
		a.Owned("/sockjs/k")
		synctest.Wait()
		b.SetPublishErr(brokers.ErrUnavailable)
		owner, u, _, err := c.WhoOwns(context.Background(), "/sockjs/k")
		if owner != "a" || u != "http://127.0.0.1:1001" || err != nil {
			t.Errorf("c.WhoOwns(k) after a said it owns k = %q %q %v, want a", owner, u, err)
		}
		// No question is heard from now on: only the remembered owner
		// answers.
		for i := range 5 {
			time.Sleep(ownerCacheFor / 2)
			if owner, _, _, err := c.WhoOwns(context.Background(), "/sockjs/k"); owner != "a" || err != nil {
				t.Fatalf("after %v of use: owner %q, %v; want a, remembered", time.Duration(i+1)*ownerCacheFor/2, owner, err)
			}
		}
		time.Sleep(ownerCacheFor + time.Second)
		if owner, _, _, _ := c.WhoOwns(context.Background(), "/sockjs/k"); owner != "" {
			t.Errorf("after %v unused: owner %q, want it forgotten", ownerCacheFor+time.Second, owner)
		}
	})
}

// TestReservedChannelsInvisible: whatever the rules grant, a browser
// subscribed to a pattern that covers the nodes' channel never receives
// their traffic, and cannot subscribe to it by name.
func TestReservedChannelsInvisible(t *testing.T) {
	g := newTestGateway(t, func(c *Config) {
		c.Rules = append(Rules{{Pattern: ">", Subscribe: Anyone, Publish: Anyone}}, c.Rules...)
	})
	s, tr := openSession(t, g, false)
	subscribe(t, s, tr, 1, ">")
	send(s, `{"op":"sub","id":2,"ch":%q}`, NodesChannel)
	expectErr(t, tr, 2, 403, "permission denied")
	announce(t, g.b, `{"id":"x","url":"http://10.0.0.9:1"}`)
	publish(t, g.b, "demo.after", "1")
	if w := nextType(t, tr, TypeMsg); w.Ch != "demo.after" {
		t.Fatalf("got %s, want only demo.after: the announcement reached the browser", w)
	}
}

// TestNodesClusterKey: with a cluster key, nodes that share it find each
// other, and an announcement that is unsigned, signed with another key or
// signed too long ago is ignored, as is one naming a link-local address
// (a cloud metadata service) whoever signed it.
func TestNodesClusterKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		key := bytes.Repeat([]byte("k"), 32)
		b := newFakeBroker()
		start := func(id, u string, k []byte) *Nodes {
			n, err := StartNodes(context.Background(), NodesOptions{
				Broker: b, SelfID: id, SelfURL: u, Interval: time.Hour, ClusterKey: k,
				Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = n.Close() })
			return n
		}
		a := start("a", "http://10.0.0.1:8080", key)
		start("c", "http://10.0.0.3:8080", key)
		start("evil", "http://10.0.0.66:8080", bytes.Repeat([]byte("x"), 32))
		announce(t, b, `{"id":"forged","url":"http://10.0.0.99:8080"}`)
		sign := func(msg string, ts time.Time) string {
			data, _ := json.Marshal(signedMsg{Msg: json.RawMessage(msg), TS: ts.UnixMilli(), Sig: signMsg(key, NodesChannel, []byte(msg), ts.UnixMilli())})
			return string(data)
		}
		announce(t, b, sign(`{"id":"stale","url":"http://10.0.0.98:8080"}`, time.Now().Add(-time.Minute)))
		announce(t, b, sign(`{"id":"metadata","url":"http://169.254.169.254"}`, time.Now()))
		announce(t, b, sign(`{"id":"public","url":"http://203.0.113.7:8080"}`, time.Now()))
		synctest.Wait()
		if _, ok := a.Lookup("c"); !ok {
			t.Error("a node signing with the cluster key is not known")
		}
		for _, id := range []string{"evil", "forged", "stale", "metadata", "public"} {
			if u, ok := a.Lookup(id); ok {
				t.Errorf("%s is known at %s", id, u)
			}
		}
		if _, err := StartNodes(context.Background(), NodesOptions{Broker: b, SelfID: "s", SelfURL: "http://10.0.0.5:1", ClusterKey: []byte("short")}); err == nil {
			t.Error("a short cluster key was accepted")
		}
	})
}
