package natsbroker_test

import (
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/nats-io/nats.go"
)

// The outage conformance test against the external server (NATS_URL),
// through a proxy that cuts the connection.
func TestOutageExternal(t *testing.T) {
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
	pu, err := url.Parse(u)
	if err != nil || pu.Hostname() == "" {
		t.Fatalf("NATS_URL %q: want nats://host:port (%v)", u, err)
	}
	if pu.Port() == "" {
		pu.Host = net.JoinHostPort(pu.Hostname(), "4222")
	}
	brokertest.RunOutage(t, func(t *testing.T, proxyAddr string, onState brokers.StateFunc) brokers.Broker {
		viaProxy := *pu
		viaProxy.Host = proxyAddr
		return connect(t, natsbroker.Options{
			URLs:             []string{viaProxy.String()},
			ReconnectWait:    10 * time.Millisecond,
			MaxReconnectWait: 200 * time.Millisecond,
			OnState:          onState,
		})
	}, pu.Host)
}

// After a reconnect, a plain subscription's next message comes after a
// Gap marker (what was published while down is lost to it). One that
// delivered messages within the settle window after the reconnect gets a
// second marker before its first message after the window: in a cluster
// its interest reaches the other servers only then, and a message
// published through one of them meanwhile may be lost between two it
// received. One that delivered nothing within the window gets no second
// marker.
func TestGapAfterInterestSettles(t *testing.T) {
	e := startEmbedded(t, natsbroker.EmbeddedOptions{Listen: "127.0.0.1:0"})
	p := brokertest.NewProxy(t, strings.TrimPrefix(e.ClientURL(), "nats://"))
	const settle = 2 * time.Second
	b := connect(t, natsbroker.WithInterestSettle(natsbroker.Options{
		URLs:             []string{"nats://" + p.Addr()},
		ReconnectWait:    10 * time.Millisecond,
		MaxReconnectWait: 100 * time.Millisecond,
	}, settle))
	brokertest.WaitUntil(t, "Ready", b.Ready)
	var busy, quiet brokertest.Inbox
	for ch, in := range map[string]*brokertest.Inbox{"settle.busy": &busy, "settle.quiet": &quiet} {
		sub, err := b.Subscribe(ctxT(t), ch, in.Handle)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	nc := rawConn(t, e.ClientURL())
	publish := func(ch, data string) {
		t.Helper()
		if err := nc.Publish(ch, []byte(data)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	publish("settle.busy", "before")
	busy.Wait(t, "settle.busy", "before")

	p.Cut()
	brokertest.WaitUntil(t, "not Ready", func() bool { return !b.Ready() })
	restored := time.Now()
	p.Restore()
	brokertest.WaitUntil(t, "Ready again", b.Ready)
	publish("settle.busy", "within")
	busy.Wait(t, "settle.busy", "within")
	if waited := time.Since(restored); waited >= settle {
		t.Fatalf("the message after the reconnect took %v, longer than the settle window (%v): the machine is too slow for this test", waited, settle)
	}
	// Past the window, however long the reconnect took to be reported.
	time.Sleep(time.Until(restored.Add(settle + 100*time.Millisecond)))
	publish("settle.busy", "after")
	publish("settle.quiet", "after")
	busy.Wait(t, "settle.busy", "after")
	quiet.Wait(t, "settle.quiet", "after")
	publish("settle.busy", "later")
	busy.Wait(t, "settle.busy", "later")

	shape := func(ms []brokers.Message) []string {
		var out []string
		for _, m := range ms {
			if m.Gap {
				out = append(out, "gap")
			} else {
				out = append(out, string(m.Data))
			}
		}
		return out
	}
	if got, want := shape(busy.Messages()), []string{"before", "gap", "within", "gap", "after", "later"}; !slices.Equal(got, want) {
		t.Errorf("busy subscription got %v, want %v", got, want)
	}
	if got, want := shape(quiet.Messages()), []string{"gap", "after"}; !slices.Equal(got, want) {
		t.Errorf("quiet subscription got %v, want %v", got, want)
	}
}
