// Command publish-nats publishes one JSON message to a cometgate channel
// with the NATS Go client, as an application backend would:
//
//	go run ./cmd/examples/publish-nats -channel demo.prices -data '{"ACME":12.5}'
//
// A channel is a NATS subject (prefixed with broker.subject_prefix when
// the gateway sets one). The Content-Type header tells the gateway the
// payload is JSON; Nats-Msg-Id makes a retry safe: JetStream stores the
// message once, and every gateway node delivers an id once per window.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	url := flag.String("url", nats.DefaultURL, "NATS server URL")
	channel := flag.String("channel", "demo.prices", "cometgate channel (NATS subject)")
	data := flag.String("data", `{"symbol":"ACME","price":12.5}`, "JSON payload")
	id := flag.String("id", "", "message id (default: a new one per run)")
	js := flag.Bool("jetstream", false, "wait for the JetStream acknowledgement (the channel's namespace has history: jetstream)")
	flag.Parse()
	if *id == "" {
		*id = fmt.Sprintf("example-%d", time.Now().UnixNano())
	}

	nc, err := nats.Connect(*url, nats.Name("cometgate publish-nats example"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	msg := nats.NewMsg(*channel)
	msg.Data = []byte(*data)
	msg.Header.Set("Content-Type", "application/json")
	msg.Header.Set(jetstream.MsgIDHeader, *id)

	if *js {
		// A stored message: the acknowledgement names the stream and its
		// sequence, which browsers see as the message's cursor.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := jetstream.New(nc)
		if err != nil {
			log.Fatal(err)
		}
		ack, err := stream.PublishMsg(ctx, msg)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("stored in %s at %d\n", ack.Stream, ack.Sequence)
		return
	}
	// Core NATS: fire and forget; Flush waits until the server has it.
	if err := nc.PublishMsg(msg); err != nil {
		log.Fatal(err)
	}
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		log.Fatal(err)
	}
	fmt.Println("published")
}
