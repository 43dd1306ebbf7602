package natsbroker_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers/brokertest"
	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsCluster is three nats-server processes (the system's binary, as
// in production: an in-process server cannot be killed) with JetStream,
// routed to each other.
type natsCluster struct {
	t     *testing.T
	confs []brokertest.NATSServerConf
	procs []*exec.Cmd
}

func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("this test runs a NATS cluster and needs nats-server (apt-get install nats-server): %v", err)
	}
	dir := t.TempDir()
	c := &natsCluster{t: t, confs: brokertest.WriteNATSConfs(t, dir, "lost", 3)}
	for _, conf := range c.confs {
		logf, err := os.Create(filepath.Join(dir, conf.Name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-c", conf.Path)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.procs = append(c.procs, cmd)
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = logf.Close()
		})
	}
	for _, conf := range c.confs {
		brokertest.WaitUntil(t, conf.Name+" listening", func() bool {
			conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", conf.Port))
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	}
	return c
}

func (c *natsCluster) url(i int) string { return c.confs[i].URL() }

// kill ends server i with SIGKILL: no shutdown announced to its peers.
func (c *natsCluster) kill(i int) {
	if err := c.procs[i].Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	_ = c.procs[i].Wait()
}

// A NATS cluster that lost a server without a word (kill -9) places new
// one-replica consumers on any of the stream's peers, the lost one
// included, for a minute or more, and never answers for one placed
// there. History subscriptions whose consumers were on the lost server
// come back, and new subscriptions and replays are created, within the
// caller's deadline: an unanswered creation is tried again with a new
// consumer, and the old consumers' deletions (unanswered as well) do not
// hold the new ones up.
func TestHistoryConsumersAfterAServerIsLost(t *testing.T) {
	c := startNATSCluster(t)
	stream := "LOST_" + strings.ToUpper(rnd())
	nc, err := nats.Connect(c.url(0))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js := jsOf(t, nc)
	// Three replicas can be placed once every server has joined the
	// cluster, which can take a while on a busy machine.
	for deadline := time.Now().Add(time.Minute); ; {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{"lost.>"}, Replicas: 3})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("creating a three-replica stream: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	var logs syncBuffer
	opts := natsbroker.Options{
		URLs:    []string{c.url(0)},
		Streams: []natsbroker.StreamSpec{{Name: stream, Patterns: []string{"lost.>"}}},
		Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	b := connect(t, natsbroker.WithAnswerWait(natsbroker.WithTestTimings(opts, 200*time.Millisecond, 0), 500*time.Millisecond))
	brokertest.WaitUntil(t, "Ready", b.Ready)

	// Before the loss: consumers spread over the three servers.
	const before = 6
	early := make([]seqRecorder, before)
	for i := range early {
		sub, err := b.Subscribe(ctxT(t), fmt.Sprintf("lost.early%d", i), early[i].Handle)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	c.kill(2)
	// The cluster elects leaders again (the lost server may have been the
	// stream's or the cluster's); requests meanwhile fail outright.
	brokertest.WaitUntil(t, "the stream's leader on a live server", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return false
		}
		ci := s.CachedInfo().Cluster
		if ci == nil || ci.Leader == "" || ci.Leader == c.confs[2].Name {
			return false
		}
		_, err = js.AccountInfo(ctx)
		return err == nil
	})
	for i := range early {
		want := publishN(t, b, fmt.Sprintf("lost.early%d", i), "e", 0, 1)
		early[i].check(t, fmt.Sprintf("subscribed before the loss (%d)", i), want...)
	}

	// After the loss: subscribe (and replay) until creations went
	// unanswered a few times, so that the retry was taken; each one has a
	// third of a chance.
	unanswered := func() int { return strings.Count(logs.String(), "consumer creation went unanswered") }
	for i := 0; unanswered() < 3; i++ {
		if i == 60 {
			t.Fatalf("60 subscriptions after the loss, %d unanswered creations: the lost server was not chosen", unanswered())
		}
		ch := fmt.Sprintf("lost.late%d", i)
		var live seqRecorder
		sub, err := b.Subscribe(ctxT(t), ch, live.Handle)
		if err != nil {
			t.Fatalf("subscription %d after the loss: %v", i, err)
		}
		want := publishN(t, b, ch, "l", 0, 1)
		live.check(t, fmt.Sprintf("subscribed after the loss (%d)", i), want...)
		_ = sub.Unsubscribe()
		var replayed seqRecorder
		if _, err := b.Replay(ctxT(t), ch, 0, replayed.Handle); err != nil {
			t.Fatalf("replay %d after the loss: %v", i, err)
		}
		replayed.check(t, fmt.Sprintf("replay after the loss (%d)", i), want...)
	}
}
