// Package examples holds backends that publish to browsers through
// cometgate the way a real application does: straight into the broker,
// with the broker's own client library, never through cometgate's code.
// cometgate subscribes to the broker; whatever reaches a subject (NATS) or
// a routing key on the gateway's exchange (RabbitMQ) named like a channel
// reaches every browser subscribed to that channel.
//
//   - publish-nats: Go, nats.go; with -jetstream the publish waits for the
//     stream's acknowledgement (channels with history).
//   - publish-amqp: Go, amqp091-go, with publisher confirms.
//   - python/publish_amqp.py: Python, pika.
//   - python/publish_http.py: Python standard library, through the
//     gateway's POST /api/publish (when the backend cannot reach the broker).
//   - node/publish_nats.mjs and node/publish_amqp.mjs: Node.js, the npm
//     packages nats and amqplib.
//
// Each one publishes one JSON message with a content type (so browsers get
// it as "data", not text) and a message id (so a retry is delivered once:
// see "Publishing once" in the README). cmd/cometgate's TestPublishingExamples
// runs every one of them against a real gateway and broker.
package examples
