package gateway

import (
	"context"
	"strings"
	"testing"

	"github.com/cometgate/cometgate/brokers"
)

// TestRevoke: a revocation ends the subject's sessions on the node with
// DisconnectRevoked and the reason, and no one else's; with a cluster key
// an unsigned one is ignored.
func TestRevoke(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	g := newTestGateway(t, func(c *Config) { c.Rules, c.ClusterKey = tokenRules(), key })
	if err := g.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	alice1, tr1 := openAs(t, g, &Principal{Subject: "alice"})
	alice2, tr2 := openAs(t, g, &Principal{Subject: "alice"})
	bob, btr := openAs(t, g, &Principal{Subject: "bob"})
	anon, atr := openAs(t, g, nil)

	// Forged: unsigned, and signed with another key.
	forged := []byte(`{"sub":"bob"}`)
	for _, data := range [][]byte{forged, sealMsg([]byte(strings.Repeat("x", 32)), RevokeChannel, forged)} {
		if err := g.b.Publish(context.Background(), brokers.Message{Channel: RevokeChannel, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Revoke(context.Background(), "alice", "password changed"); err != nil {
		t.Fatal(err)
	}
	want := Disconnect{DisconnectRevoked.Code, "access revoked: password changed"}
	for _, c := range []struct {
		s  *Session
		tr *fakeTransport
	}{{alice1, tr1}, {alice2, tr2}} {
		waitDone(t, c.s)
		if c.s.Reason() != want || want.Reconnect() {
			t.Errorf("reason %v, want %v (final)", c.s.Reason(), want)
		}
		expectClose(t, c.tr, want)
	}
	ping(t, bob, btr, 1)
	ping(t, anon, atr, 1)
	if isDone(bob) || isDone(anon) {
		t.Error("a revocation ended another principal's session")
	}
	if err := g.Revoke(context.Background(), "", ""); err != ErrNoSubject {
		t.Errorf("Revoke without subject: %v", err)
	}
	if err := g.Revoke(context.Background(), "bob", strings.Repeat("r", 201)); err == nil {
		t.Error("Revoke with a 201-byte reason: accepted")
	}
}
