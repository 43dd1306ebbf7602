package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func amqpURL() string {
	if u := os.Getenv("AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// needRabbit skips when RabbitMQ is not reachable, except in CI.
func needRabbit(t *testing.T) {
	t.Helper()
	u, err := amqp.ParseURI(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(u.Host, fmt.Sprint(u.Port)), 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("RabbitMQ at %s is not reachable: %v", u.Host, err)
		}
		t.Skipf("RabbitMQ at %s is not reachable (%v); set AMQP_URL", u.Host, err)
	}
	c.Close()
}

// TestAMQPNodeDeliversExchangeMessages: with broker.kind amqp, a message any
// AMQP client publishes on the exchange reaches a browser session, and the
// publish API goes through RabbitMQ too.
func TestAMQPNodeDeliversExchangeMessages(t *testing.T) {
	needRabbit(t)
	exchange := fmt.Sprintf("cometgate-test-%d", rand.Uint64())
	// As an operator would run it: cometgate --config with an AMQP broker.
	yaml := fmt.Sprintf("broker:\n  kind: amqp\n  amqp:\n    url: %q\n    exchange: %q\n", amqpURL(), exchange)
	cfg := writeTemp(t, "amqp.yaml", yaml)
	n := startNodeArgs(t, []string{"--config", cfg})

	conn, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The node declared the exchange; remove it once the node is gone.
		if c, err := conn.Channel(); err == nil {
			_ = c.ExchangeDelete(exchange, false, false)
		}
	})

	s := openSSE(t, n.url("/sse?ch=demo.amqp"))
	next(t, s.packets, "hello")
	next(t, s.packets, "ok")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = ch.PublishWithContext(ctx, exchange, "demo.amqp", false, false, amqp.Publishing{
		ContentType: "application/json", Body: []byte(`{"bid":120}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	msg := next(t, s.packets, "msg")
	if msg["ch"] != "demo.amqp" || msg["data"].(map[string]any)["bid"] != 120.0 {
		t.Fatalf("msg %v", msg)
	}
	// An AMQP publisher's content type decides how the payload is shown.
	err = ch.PublishWithContext(ctx, exchange, "demo.amqp", false, false, amqp.Publishing{
		ContentType: "text/plain", Body: []byte(`123`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if msg := next(t, s.packets, "msg"); msg["text"] != "123" {
		t.Fatalf("msg %v", msg)
	}
	if code, body := postPublish(t, n, `{"channel":"demo.amqp","text":"via api"}`); code != 200 {
		t.Fatalf("publish: %d %s", code, body)
	}
	if msg := next(t, s.packets, "msg"); msg["text"] != "via api" {
		t.Fatalf("msg %v", msg)
	}
}
