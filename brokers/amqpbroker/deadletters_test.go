package amqpbroker_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/amqpbroker"
	"github.com/cometgate/cometgate/brokers/brokertest"
)

// TestServerDropsBecomeGaps: with the node's queue bounded
// (QueueMaxLength) and the node stalled, the server drops the oldest
// messages; the subscription they were for gets a Gap marker and then
// the newest messages, in order, and a subscription of another pattern
// gets no marker.
func TestServerDropsBecomeGaps(t *testing.T) {
	u := serverURL(t)
	b := connect(t, amqpbroker.Options{URL: u, Exchange: testExchange, DeclareExchange: true, Prefetch: 1, QueueMaxLength: 5})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	checkDropsBecomeGaps(t, b, 5)
}

// TestServerDropsByPolicyBecomeGaps: the same with the bound set by an
// operator's policy on the server (in a virtual host of the test's own)
// rather than by the node.
func TestServerDropsByPolicyBecomeGaps(t *testing.T) {
	serverURL(t)
	if os.Getenv("AMQP_URL") != "" {
		t.Skip("AMQP_URL set: rabbitmqctl reaches the local server only")
	}
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		t.Skip("rabbitmqctl not installed")
	}
	vhost := "cgtest-" + token()
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, ctl, args...).CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
		}
	}
	run("add_vhost", vhost)
	t.Cleanup(func() { run("delete_vhost", vhost) })
	run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
	run("set_policy", "-p", vhost, "--apply-to", "queues", "bounded", `^amq\.gen-`, `{"max-length":5}`)
	b := connect(t, amqpbroker.Options{URL: "amqp://guest:guest@127.0.0.1:5672/" + url.PathEscape(vhost), Exchange: testExchange, DeclareExchange: true, Prefetch: 1})
	brokertest.WaitUntil(t, "Ready", b.Ready)
	checkDropsBecomeGaps(t, b, 5)
}

// checkDropsBecomeGaps stalls a subscription of b (whose queue holds at
// most bound messages) on its first message, publishes more than the
// queue holds, and checks what the subscriptions get once it goes on.
func checkDropsBecomeGaps(t *testing.T, b *amqpbroker.Broker, bound int) {
	t.Helper()
	base := "dl" + token()
	ch := base + ".a"
	var in brokertest.Inbox
	stalled := in.Stall()
	sub, err := b.Subscribe(ctxT(t), base+".*", in.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	defer in.Release()
	other, err := b.Subscribe(ctxT(t), "other"+base, func(m brokers.Message) {
		if m.Gap {
			t.Errorf("a subscription of another pattern got a gap")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Unsubscribe()

	publish := func(i int) {
		t.Helper()
		if err := b.Publish(ctxT(t), brokers.Message{Channel: ch, Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	publish(0)
	<-stalled
	// The node holds message 0 (Prefetch 1) and takes nothing more: the
	// queue keeps the last `bound` of these, the server drops the rest.
	const more = 30
	for i := 1; i <= more; i++ {
		publish(i)
	}
	brokertest.WaitUntil(t, "the server to drop messages", func() bool { return b.ServerDrops() > 0 })
	in.Release()
	want := more - bound
	var got []brokers.Message
	brokertest.WaitUntil(t, "every drop to be told and the kept messages to arrive", func() bool {
		got = in.Messages()
		n := 0
		for _, m := range got {
			if !m.Gap {
				n++
			}
		}
		return b.ServerDrops() == uint64(want) && n == 1+bound
	})
	gaps, prev := 0, -1
	for _, m := range got {
		if m.Gap {
			gaps++
			continue
		}
		i, _ := strconv.Atoi(string(m.Data))
		if i <= prev {
			t.Errorf("message %d after %d (gaps so far %d): %v", i, prev, gaps, got)
		}
		prev = i
	}
	if gaps == 0 {
		t.Errorf("%d messages dropped and no gap: %v", want, got)
	}
	if prev != more {
		t.Errorf("the last message was %d, want %d (the newest are kept)", prev, more)
	}
}
