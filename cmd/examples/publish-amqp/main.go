// Command publish-amqp publishes one JSON message to a cometgate channel
// through RabbitMQ with amqp091-go, as an application backend would:
//
//	go run ./cmd/examples/publish-amqp -channel demo.prices -data '{"ACME":12.5}'
//
// A channel is a routing key on the gateway's topic exchange
// (broker.amqp.exchange, "cometgate" by default, declared by the gateway).
// The content type tells the gateway the payload is JSON; the message id
// makes a retry safe (every gateway node delivers an id once per
// broker.dedupe_window). Publisher confirms say the broker has the message.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	url := flag.String("url", "amqp://guest:guest@127.0.0.1:5672/", "AMQP URL")
	exchange := flag.String("exchange", "cometgate", "the gateway's exchange (broker.amqp.exchange)")
	channel := flag.String("channel", "demo.prices", "cometgate channel (routing key)")
	data := flag.String("data", `{"symbol":"ACME","price":12.5}`, "JSON payload")
	id := flag.String("id", "", "message id (default: a new one per run)")
	flag.Parse()
	if *id == "" {
		*id = fmt.Sprintf("example-%d", time.Now().UnixNano())
	}

	conn, err := amqp.Dial(*url)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// mandatory: an unroutable message (no node subscribed to the channel,
	// or the exchange does not exist) comes back instead of vanishing.
	returned := ch.NotifyReturn(make(chan amqp.Return, 1))
	confirm, err := ch.PublishWithDeferredConfirmWithContext(ctx, *exchange, *channel, true, false, amqp.Publishing{
		ContentType:  "application/json",
		MessageId:    *id,
		DeliveryMode: amqp.Persistent,
		Body:         []byte(*data),
	})
	if err != nil {
		log.Fatal(err)
	}
	ok, err := confirm.WaitContext(ctx)
	if err != nil || !ok {
		log.Fatalf("not confirmed by the broker (%v)", err)
	}
	select {
	case r := <-returned:
		fmt.Printf("confirmed, but no queue took it (%d %s): no gateway node subscribes to %s\n", r.ReplyCode, r.ReplyText, *channel)
	default:
		fmt.Println("published")
	}
}
