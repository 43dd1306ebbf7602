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
	// The API refuses what it cannot send.
	status, e := request(t, http.MethodPost, a.url("/api/revoke"), http.Header{"Content-Type": {"application/json"}}, `{"reason":"x"}`)
	if status != http.StatusBadRequest || !strings.Contains(e.Error, `{"sub":"alice"`) {
		t.Errorf("revoke without sub: %d %+v", status, e)
	}
}
