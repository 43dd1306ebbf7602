package gateway

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

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

// TestRevocationRefusesHeldCredentials: after a revocation the node
// refuses the credentials its subject held (issued at or before it, or
// at an unknown time) and admits newer ones and other subjects'; a node
// that starts later learns it from the first and ends the sessions it
// had admitted with such credentials.
func TestRevocationRefusesHeldCredentials(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.Rules = tokenRules() })
	if err := g.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Minute)
	old := &Principal{Subject: "alice", IssuedAt: before}
	unknown := &Principal{Subject: "alice"}
	if _, revoked := g.Revoked(old); revoked {
		t.Fatal("refused before any revocation")
	}
	if err := g.Revoke(context.Background(), "alice", "password changed"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the revocation to be held", func() bool { _, revoked := g.Revoked(old); return revoked })
	want := Disconnect{DisconnectRevoked.Code, "access revoked: password changed"}
	for _, p := range []*Principal{old, unknown} {
		_, err := g.Open(OpenOptions{Transport: "fake", Principal: p})
		rev, ok := errors.AsType[*RevokedError](err)
		if !ok || rev.Disconnect != want {
			t.Errorf("Open as alice issued at %v: %v, want a RevokedError with %v", p.IssuedAt, err, want)
		}
	}
	// A token issued after the revocation (in a later second: "iat"
	// counts seconds), another subject, anonymous: admitted.
	fresh := &Principal{Subject: "alice", IssuedAt: time.Now().Add(2 * time.Second)}
	openAs(t, g, fresh)
	openAs(t, g, &Principal{Subject: "bob", IssuedAt: before})
	openAs(t, g, nil)

	// A node that starts later, on the same broker.
	g2 := &testGateway{Gateway: laterNode(t, g), b: g.b}
	// Admitted before it knows; ended once it learns.
	early, etr := openAs(t, g2, old)
	kept, ktr := openAs(t, g2, fresh)
	if err := g2.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitDone(t, early)
	expectClose(t, etr, want)
	if _, revoked := g2.Revoked(unknown); !revoked {
		t.Error("the later node does not refuse a token without iat")
	}
	ping(t, kept, ktr, 1)
}

// TestRevocationHold: what a revocation refuses and for how long, and
// how two revocations of one subject combine.
func TestRevocationHold(t *testing.T) {
	at := time.Date(2026, 12, 6, 12, 0, 0, 500e6, time.UTC)
	r := revocation{Sub: "alice", At: at.UnixMicro(), Until: at.Add(time.Hour).UnixMicro()}
	for _, c := range []struct {
		issued time.Time
		now    time.Time
		want   bool
	}{
		{time.Time{}, at, true},                               // no "iat"
		{at.Add(-time.Hour), at, true},                        // before
		{at, at, true},                                        // at the same instant
		{at.Truncate(time.Second), at.Add(time.Minute), true}, // "iat" of the same second
		{at.Add(time.Millisecond), at, false},                 // after
		{at.Add(-time.Hour), at.Add(time.Hour), false},        // the hold is over
		{at.Add(-time.Hour), at.Add(time.Hour - time.Millisecond), true},
	} {
		if got := r.refuses(&Principal{Subject: "alice", IssuedAt: c.issued}, c.now); got != c.want {
			t.Errorf("issued %v, at %v: refused %v, want %v", c.issued, c.now, got, c.want)
		}
	}

	// Revoke rounds the revocation's time up: a credential of the same
	// microsecond counts as issued before it.
	if got, want := ceilMicro(at.Add(time.Nanosecond)), at.UnixMicro()+1; got != want {
		t.Errorf("ceilMicro(at + 1ns) = %d, want %d", got, want)
	}
	if got, want := ceilMicro(at), at.UnixMicro(); got != want {
		t.Errorf("ceilMicro(at) = %d, want %d", got, want)
	}

	g := newTestGateway(t, nil)
	now := at
	if g.hold(revocation{Sub: "bob", At: at.Add(-2 * time.Hour).UnixMicro(), Until: at.Add(-time.Hour).UnixMicro()}, now) {
		t.Error("held a revocation whose hold is over")
	}
	if !g.hold(r, now) {
		t.Fatal("did not hold a revocation")
	}
	if g.hold(r, now) {
		t.Error("the same revocation twice changed what is held")
	}
	// A hold is at most the node's own RevocationTTL (24 h here).
	long := revocation{Sub: "carol", At: at.UnixMicro(), Until: at.Add(1000 * time.Hour).UnixMicro()}
	if !g.hold(long, now) || g.revoked["carol"].Until != at.Add(DefaultRevocationTTL).UnixMicro() {
		t.Errorf("held %+v for a revocation asking 1000 h", g.revoked["carol"])
	}
	// An earlier one that ends later extends the hold, keeping the later
	// time and its reason; a later one moves the time.
	earlier := revocation{Sub: "alice", Reason: "older", At: at.Add(-time.Minute).UnixMicro(), Until: at.Add(2 * time.Hour).UnixMicro()}
	if !g.hold(earlier, now) {
		t.Error("a longer hold changed nothing")
	}
	if got := g.revoked["alice"]; got.At != r.At || got.Until != earlier.Until || got.Reason != "" {
		t.Errorf("held %+v", got)
	}
	later := revocation{Sub: "alice", Reason: "banned", At: at.Add(time.Minute).UnixMicro(), Until: at.Add(time.Hour).UnixMicro()}
	if !g.hold(later, now) {
		t.Error("a later revocation changed nothing")
	}
	if got := g.revoked["alice"]; got.At != later.At || got.Until != earlier.Until || got.Reason != "banned" {
		t.Errorf("held %+v", got)
	}
}

// TestRevokeMessagesChecked: malformed or oversized messages on the
// channel change nothing, and Revoke refuses what it could not send.
func TestRevokeMessagesChecked(t *testing.T) {
	g := newTestGateway(t, nil)
	if err := g.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := &Principal{Subject: "alice", IssuedAt: time.Now().Add(-time.Minute)}
	s, tr := openAs(t, g, old)
	now := time.Now().UnixMicro()
	for _, data := range []string{
		`not json`,
		`{}`,
		`{"reason":"no subject"}`,
		`{"sub":"alice","at":` + strconv.FormatInt(now, 10) + `,"until":` + strconv.FormatInt(now-1, 10) + `}`,
		`{"sub":"alice","reason":"` + strings.Repeat("r", maxRevokeReason+1) + `"}`,
		`{"sub":"` + strings.Repeat("a", maxRevokeSubject+1) + `"}`,
		`{"held":[{"sub":"alice"}]}`, // a held revocation without its times
		// dated ahead of the clock (it would refuse later tokens too)
		`{"sub":"alice","at":` + strconv.FormatInt(now+int64(time.Hour/time.Microsecond), 10) + `,"until":` + strconv.FormatInt(now+int64(2*time.Hour/time.Microsecond), 10) + `}`,
	} {
		if err := g.b.Publish(context.Background(), brokers.Message{Channel: RevokeChannel, Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the messages to be handled", g.b.Drained)
	if _, revoked := g.Revoked(old); revoked {
		t.Error("a malformed message made a revocation")
	}
	ping(t, s, tr, 1)
	if err := g.Revoke(context.Background(), strings.Repeat("a", maxRevokeSubject+1), ""); err != ErrBadSubject {
		t.Errorf("Revoke with a long subject: %v", err)
	}
}

// TestRevocationsLearntInParts: a node that starts learns every
// revocation the others hold, however many answers they take.
func TestRevocationsLearntInParts(t *testing.T) {
	g := newTestGateway(t, nil)
	if err := g.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	const n = 3*heldPerMessage + 5
	for i := range n {
		g.hold(revocation{Sub: "user" + strconv.Itoa(i), At: now.UnixMicro(), Until: now.Add(time.Hour).UnixMicro()}, now)
	}
	g2 := laterNode(t, g)
	if err := g2.StartRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every revocation to be learnt", func() bool { return g2.revokedHeld.Load() == n })
	before := &Principal{IssuedAt: now.Add(-time.Second)}
	for i := range n {
		before.Subject = "user" + strconv.Itoa(i)
		if _, revoked := g2.Revoked(before); !revoked {
			t.Fatalf("%s: not refused by the node that started later", before.Subject)
		}
	}
}

// laterNode is a second node on g's broker, with g's configuration but
// its id, shut down at the end of the test.
func laterNode(t *testing.T, g *testGateway) *Gateway {
	t.Helper()
	cfg := g.Config()
	cfg.NodeID = "n2"
	g2, err := New(cfg, g.b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := shutdownWithin(g2, waitTimeout); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return g2
}
