package natsbroker_test

import (
	"net"
	"net/url"
	"os"
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
