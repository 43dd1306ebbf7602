package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cometgate/cometgate/gateway"
)

// TestRevokeAcrossNodes: two nodes on the real NATS server share a
// cluster key; "cometgate revoke" through node A ends alice's sessions on
// A and on B with code 4010 and the reason, and leaves bob's; a forged
// (unsigned) revocation published on the broker ends nothing.
func TestRevokeAcrossNodes(t *testing.T) {
	raw := make([]byte, 6)
	_, _ = rand.Read(raw)
	prefix := "rv" + hex.EncodeToString(raw) + "."
	cfg := authConfig(t)
	env := []string{"COMETGATE_BROKER_KIND=nats", "COMETGATE_BROKER_NATS_URLS=nats://127.0.0.1:4222",
		"COMETGATE_BROKER_SUBJECT_PREFIX=" + prefix, "COMETGATE_NODE_CLUSTER_KEY=" + strings.Repeat("c", 32)}
	a := startNodeArgs(t, []string{"--config", cfg}, append([]string{"COMETGATE_NODE_ID=nodea"}, env...)...)
	b := startNodeArgs(t, []string{"--config", cfg}, append([]string{"COMETGATE_NODE_ID=nodeb"}, env...)...)

	alice := makeToken(t, cfg, "--sub", "alice", "--subscribe", "secret.>")
	bob := makeToken(t, cfg, "--sub", "bob", "--subscribe", "secret.>")
	type session struct {
		name    string
		conn    net.Conn
		packets <-chan map[string]any
	}
	open := func(n *node, name, tok string) session {
		conn := dialWSWith(t, n, "/ws", http.Header{"Authorization": {"Bearer " + tok}})
		packets, _ := wsPackets(t, conn)
		next(t, packets, "hello")
		return session{name, conn, packets}
	}
	aliceA, aliceB := open(a, "alice on A", alice), open(b, "alice on B", alice)
	bobB := open(b, "bob on B", bob)

	// A forged revocation of bob: unsigned, straight on the broker.
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(prefix+gateway.RevokeChannel, []byte(`{"sub":"bob"}`)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var out strings.Builder
	if err := run(context.Background(), []string{"revoke", "--url", a.url(""), "--reason", "password changed", "alice"}, nil, &out, io.Discard); err != nil {
		t.Fatalf("cometgate revoke: %v", err)
	}
	for _, s := range []session{aliceA, aliceB} {
		c := next(t, s.packets, "close")
		if c["code"] != 4010.0 || c["reason"] != "access revoked: password changed" || c["reconnect"] != false {
			t.Errorf("%s: close %v", s.name, c)
		}
	}
	// Bob's sessions on B live on: the forged revocation came before.
	wantAnswer(t, bobB.conn, bobB.packets, 1, `{"op":"ping","id":1}`, "ok")
	if !strings.Contains(out.String(), "revoked alice") {
		t.Errorf("output %q", out.String())
	}
	revokedBy := time.Now() // the revocation was made before this

	// Alice's token is refused from now on, on both nodes, and on a node
	// that starts later (it asks the others for what they hold).
	openPoll := func(n *node, tok string) (int, errorReply) {
		return request(t, http.MethodPost, n.url("/poll"), http.Header{"Authorization": {"Bearer " + tok}}, "")
	}
	refusedAlice := func(n *node) bool {
		status, e := openPoll(n, alice)
		return status == http.StatusUnauthorized && e.Code == 4010 && e.Error == "access revoked: password changed"
	}
	for _, n := range []*node{a, b} {
		if status, e := openPoll(n, alice); status != http.StatusUnauthorized || e.Code != 4010 || e.Error != "access revoked: password changed" {
			t.Errorf("alice's token after the revocation: %d %+v", status, e)
		}
	}
	c := startNodeArgs(t, []string{"--config", cfg}, append([]string{"COMETGATE_NODE_ID=nodec"}, env...)...)
	waitUntil(t, "the later node to refuse alice's token", func() bool { return refusedAlice(c) })
	// A token issued after the revocation ("iat" counts whole seconds)
	// is admitted; so is bob's.
	time.Sleep(time.Until(revokedBy.Truncate(time.Second).Add(time.Second)))
	again := makeToken(t, cfg, "--sub", "alice", "--subscribe", "secret.>")
	for _, n := range []*node{a, b, c} {
		for _, tok := range []string{again, bob} {
			if status, e := openPoll(n, tok); status != http.StatusOK {
				t.Errorf("%s: a token issued after the revocation, or another subject's: %d %+v", n.addr, status, e)
			}
		}
	}

	// The API refuses what it cannot send.
	status, e := request(t, http.MethodPost, a.url("/api/revoke"), http.Header{"Content-Type": {"application/json"}}, `{"reason":"x"}`)
	if status != http.StatusBadRequest || !strings.Contains(e.Error, `{"sub":"alice"`) {
		t.Errorf("revoke without sub: %d %+v", status, e)
	}
}

// waitUntil polls cond until it holds, or fails the test after 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
