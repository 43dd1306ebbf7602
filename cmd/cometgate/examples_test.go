package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestPublishingExamples runs every backend of cmd/examples in its own
// language, as a user would copy it, against a real node and broker: a
// browser session (SSE) subscribed to the channel must receive the
// example's JSON as data, once, although the example runs twice with the
// same message id (a retry). Go always
// runs; Python and Node are skipped outside CI when missing and fail in
// CI (.ci/services.sh installs python3-pika; npm installs the Node
// packages into a cache folder).
func TestPublishingExamples(t *testing.T) {
	bin := t.TempDir()
	goExample := func(t *testing.T, name string) string {
		t.Helper()
		out := filepath.Join(bin, name)
		if _, err := os.Stat(out); err == nil {
			return out
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "../examples/"+name)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, b)
		}
		return out
	}
	python := func(t *testing.T, module string) string {
		t.Helper()
		// Debian's python3, whose python3-pika .ci/services.sh installs
		// (another python3 may be first on PATH).
		py := "/usr/bin/python3"
		if module != "" {
			if out, err := exec.Command(py, "-c", "import "+module).CombinedOutput(); err != nil {
				sjsNeeds(t, "this example needs %s for %s: apt-get install python3-%s (%v: %s)", module, py, module, err, out)
			}
		}
		return py
	}
	nodeScript := func(t *testing.T, script, pkgSpec, pkgName string) []string {
		t.Helper()
		nodeBin, err := exec.LookPath("node")
		if err != nil {
			sjsNeeds(t, "this example needs node: apt-get install nodejs npm")
		}
		pkg := npmPackage(t, "examples-"+pkgName, pkgSpec, pkgName)
		// Node resolves "import … from 'nats'" from the script's folder
		// up: run a copy placed beside the installed node_modules.
		dir := filepath.Dir(filepath.Dir(pkg))
		src, err := os.ReadFile(filepath.Join("..", "examples", "node", script))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, script)
		if err := os.WriteFile(dst, src, 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{nodeBin, dst}
	}

	type example struct {
		name string
		// argv runs the example publishing data on channel with message
		// id id; env is added to the environment.
		argv func(t *testing.T, channel, data, id string) (argv, env []string)
		// cursor: the channel has history, so the message carries one.
		history bool
	}
	run := func(t *testing.T, n *node, ex example) {
		ch := fmt.Sprintf("demo.examples.%d", rand.Uint64())
		if ex.history {
			ch = fmt.Sprintf("demo.h.examples-%d", rand.Uint64())
		}
		id := "order-" + ex.name
		s := openSSE(t, n.url("/sse?ch="+ch))
		next(t, s.packets, "hello")
		next(t, s.packets, "ok")
		data := fmt.Sprintf(`{"example":%q,"price":12.5}`, ex.name)
		argv, env := ex.argv(t, ch, data, id)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
		// The same message again, as a publisher retries after a lost
		// answer: the id makes it a duplicate that nobody receives.
		retry := exec.CommandContext(ctx, argv[0], argv[1:]...)
		retry.Env = cmd.Env
		if out, err := retry.CombinedOutput(); err != nil {
			t.Fatalf("retry %v: %v\n%s", argv, err, out)
		}
		if code, body := postPublish(t, n, fmt.Sprintf(`{"channel":%q,"text":"after"}`, ch)); code != 200 {
			t.Fatalf("publish: %d %s", code, body)
		}
		msg := next(t, s.packets, "msg")
		d, _ := msg["data"].(map[string]any)
		if msg["ch"] != ch || d["example"] != ex.name || d["price"] != 12.5 {
			t.Fatalf("got %v, want data %s on %s", msg, data, ch)
		}
		if _, ok := msg["cur"]; ok != ex.history {
			t.Fatalf("cursor present %v, want %v: %v", ok, ex.history, msg)
		}
		if after := next(t, s.packets, "msg"); after["text"] != "after" {
			t.Fatalf("after the retried message: got %v, want the next message (the retry was delivered again)", after)
		}
	}

	t.Run("nats", func(t *testing.T) {
		cfg := historyConfig(t, "jetstream", "cgtest_examples")
		n := startNodeArgs(t, []string{"--config", cfg}, "COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:0")
		url := n.emb.ClientURL()
		for _, ex := range []example{
			{name: "go-nats", argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return []string{goExample(t, "publish-nats"), "-url", url, "-channel", ch, "-data", data, "-id", id}, nil
			}},
			{name: "go-jetstream", history: true, argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return []string{goExample(t, "publish-nats"), "-url", url, "-channel", ch, "-data", data, "-id", id, "-jetstream"}, nil
			}},
			{name: "node-nats", argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return append(nodeScript(t, "publish_nats.mjs", "nats@2.29.3", "nats"), ch, data), []string{"NATS_URL=" + url, "MSG_ID=" + id}
			}},
			{name: "python-http", argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return []string{python(t, ""), "../examples/python/publish_http.py", "--url", n.url(""), "--id", id, ch, data}, nil
			}},
		} {
			t.Run(ex.name, func(t *testing.T) { run(t, n, ex) })
		}
	})

	t.Run("amqp", func(t *testing.T) {
		needRabbit(t)
		exchange := fmt.Sprintf("cometgate-test-%d", rand.Uint64())
		t.Cleanup(func() { deleteAMQP(t, exchange, "") })
		n := startNode(t, "COMETGATE_BROKER_KIND=amqp", "COMETGATE_BROKER_AMQP_URL="+amqpURL(), "COMETGATE_BROKER_AMQP_EXCHANGE="+exchange)
		for _, ex := range []example{
			{name: "go-amqp", argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return []string{goExample(t, "publish-amqp"), "-url", amqpURL(), "-exchange", exchange, "-channel", ch, "-data", data, "-id", id}, nil
			}},
			{name: "python-amqp", argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return []string{python(t, "pika"), "../examples/python/publish_amqp.py", "--url", amqpURL(), "--exchange", exchange, "--id", id, ch, data}, nil
			}},
			{name: "node-amqp", argv: func(t *testing.T, ch, data, id string) ([]string, []string) {
				return append(nodeScript(t, "publish_amqp.mjs", "amqplib@2.3.1", "amqplib"), ch, data), []string{"AMQP_URL=" + amqpURL(), "EXCHANGE=" + exchange, "MSG_ID=" + id}
			}},
		} {
			t.Run(ex.name, func(t *testing.T) { run(t, n, ex) })
		}
	})
}
