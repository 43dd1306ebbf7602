// Package amqpbroker implements brokers.Broker on RabbitMQ (AMQP 0.9.1),
// with github.com/rabbitmq/amqp091-go.
//
// # Topology
//
// Every channel is published to one exchange (Options.Exchange, default
// "cometgate", a durable topic exchange) with the channel as routing key.
// Each Broker — one per gateway node — has ONE queue: server-named,
// exclusive and auto-deleted, so it lives exactly as long as the node's
// connection and a node that dies leaves nothing behind on the server. The
// queue has ONE binding per active pattern, added by the first Subscribe
// of that pattern and removed after its last Unsubscribe (patterns are
// reference-counted; a second Subscribe of a bound pattern costs the
// server nothing). The gateway keeps one subscription per pattern per
// node and fans out to its browsers itself, so RabbitMQ sees a handful of
// queues (one per node) and bindings (one per pattern per node), never one
// per browser or per Subscribe, and copies each message once per node.
// The queue is not durable and messages are published transient: this
// is the live mode without history, where a message cannot be resumed
// from (Message.Seq is 0).
//
// # Patterns
//
// Channels and patterns use the contract's (NATS) syntax: dot-separated
// tokens, "*" for exactly one token, ">" (last token only) for one or
// more. "*" is the same in AMQP; ">" becomes "#". But AMQP's "#" matches
// ZERO or more words, so the binding "a.#" also routes "a", which "a.>"
// must not receive. All bindings feed the one queue anyway, so the
// dispatcher matches every delivery's channel against the active patterns
// in the contract's semantics (a map lookup for patterns without
// wildcards, brokers.MatchChannel over the wildcard patterns) and hands
// it to every Subscription whose pattern matches, once each; a delivery
// that matches none (the zero-word case, or a binding being removed) is
// dropped.
// Names are validated like natsbroker's (non-empty tokens without
// whitespace or control characters, wildcards only as whole tokens in
// patterns), and additionally refuse "#" anywhere and anything longer
// than AMQP's 255 bytes with the prefix. Options.SubjectPrefix namespaces
// the channels on a shared exchange exactly as in natsbroker: channel
// "x.y" is routing key "<prefix>.x.y", pattern ">" binds "<prefix>.#",
// and a routing key without the prefix is ignored (as is any routing key
// that is not a valid channel: plain AMQP clients may publish anything).
//
// # Delivery and flow control
//
// One consumer on the queue feeds one dispatcher goroutine, so Handlers
// are called one at a time, in the queue's order, which is publish order
// per channel (per publishing connection). The first Subscription a
// message goes to gets the delivery's own buffer, any other a copy.
//
// The consumer uses manual acknowledgements with a prefetch window
// (Options.Prefetch, default 256), acknowledging several deliveries at
// once after they were handed to the Handlers. Auto-ack would be safe
// here — the queue is exclusive and dies with the connection, so an
// acknowledgement protects nothing — but with auto-ack the server pushes
// as fast as TCP allows and amqp091-go buffers every delivery in client
// memory without bound. With a window, a node that falls behind holds at
// most Prefetch messages and the backlog stays in its queue on the
// server, where it is visible and RabbitMQ's memory and paging limits
// apply. What the server drops from the queue (Options.QueueMaxLength, or
// a length or TTL policy) comes back to the node as a dead letter and
// becomes a Gap marker (deadletters.go).
//
// # What Publish's confirmation means
//
// Publish uses its own channel in publisher-confirm mode and returns
// after the server's basic.ack: the server has accepted the message and
// routed it to every queue bound to a matching key at that moment (each
// subscribed node's queue, in memory). A message that matches no binding
// is acknowledged too: no subscriber is not an error, as on NATS. A
// basic.nack yields an error wrapping ErrNacked. While the connection is
// down, or the server blocks publishers (a memory or disk alarm), Publish
// fails at once with an error wrapping brokers.ErrUnavailable, and so it
// does when the connection is lost before the confirm arrives or the
// confirm does not arrive before ctx's deadline (Options.ConfirmTimeout
// when ctx has none): such a message may or may not have been routed, and
// the caller may retry. The write itself cannot be interrupted: under
// TCP back-pressure it waits for the connection (whose loss is noticed by
// heartbeats).
//
// # Reconnects
//
// A supervisor goroutine owns the connection. When the connection, the
// consumer channel or the publish channel closes (NotifyClose), or the
// server cancels the consumer, it reports StateDisconnected, closes what
// is left, and redials forever with an exponential, jittered delay
// between Options.ReconnectWait and MaxReconnectWait; each new connection
// re-declares the exchange, a new queue, every binding and the consumer,
// and only then reports StateConnected. Subscriptions survive reconnects;
// Subscribe while disconnected registers the Subscription and returns at
// once. Messages published while a node had no queue are lost for that
// node: the live mode has no history, and the gateway signals such gaps.
// If the very first connect fails because the server cannot be reached,
// the Broker retries the same way; if the server refuses the setup, Connect
// fails. A binding the server refuses (a channel exception on the
// declaring channel, which is then reopened) fails that Subscribe without
// disturbing the consumer. Every Notify* channel registered with the
// library is buffered and drained, which amqp091-go requires to avoid
// deadlocking its reader goroutine.
//
// # History (RabbitMQ streams)
//
// Options.Streams declares stream queues (StreamSpec): durable queues with
// "x-queue-type: stream", an append-only log that consumers read from any
// offset without removing anything, bounded by retention (x-max-age,
// x-max-length-bytes) that removes whole segment files
// (x-stream-max-segment-size-bytes), oldest first. Each stream is
// declared with its limits and bound to the exchange with its patterns
// on every connect and reconnect (StreamSpec.Declare), or checked to
// exist. Publishing needs nothing special: the exchange routes a message
// to the stream like to any bound queue, and the publisher confirm
// arrives once the stream has stored it.
//
// A pattern that one stream covers entirely has history (HasHistory);
// everything else is served by the node's queue as above, with Seq 0.
// Messages are read over AMQP 0.9.1 with a prefetch window, manual
// acknowledgements and the x-stream-offset consumer argument; each
// delivery carries its offset in the x-stream-offset header (stripped
// from Message.Header). Offsets start at 0, where Message.Seq 0 means "no
// history", so Seq = offset + 1 and a cursor c is offset c - 1. Offsets
// are not contiguous: RabbitMQ writes bookkeeping chunks that take
// offsets and are never delivered.
//
//   - Subscribe on a history pattern binds nothing (the node's queue would
//     deliver the same messages again, without positions). Each stream
//     with subscriptions has ONE live consumer per Broker, on a channel of
//     its own, whose records go to every subscription of that stream whose
//     pattern matches (the stream may hold records of channels a pattern
//     does not match, such as "a" for "a.>": they are filtered like the
//     node queue's). It starts after the stream's current end, so every
//     message published after the first Subscribe returned is delivered;
//     it stops after the last Unsubscribe. After a reconnect it resumes at
//     the offset of the last record it delivered, so what was published
//     during the outage arrives after recovery, in order, once. If
//     retention removed records it had not delivered, or the stream was
//     deleted and created again (its offsets started over: it then starts
//     from the oldest record), it carries on and the gap is logged,
//     counted (HistoryGaps) and told to the stream's subscriptions as a
//     brokers.Message with Gap set, before the next record. A stream consumer cancelled by the server
//     (the stream was deleted) is a loss like a closed channel: the Broker
//     reconnects and declares again.
//   - Replay reads the stream on a channel and consumer of its own; see
//     Broker.Replay for how it finds gaps.
//   - ReplayRecent (the current state: the last record per channel, or
//     the last N) reads the stream the same way. What RabbitMQ offers
//     for it is little: a consumer starts at "first", "last" (the start
//     of the last chunk, whatever its channels), "next", an offset or a
//     timestamp, and the records are filtered by channel here. So the
//     last N are found by reading windows of offsets backwards from the
//     end, and the last record per channel of a wildcard pattern by
//     reading the whole stream (see Broker.ReplayRecent for the costs).
//
// The end of a stream. Both the start of a live consumer and a Replay
// need the stream's current end, which AMQP 0.9.1 does not tell (the
// message count of queue.declare-ok is a statistic refreshed every few
// seconds, and a consumer is never told that it reached the end). The
// Broker finds it by writing an end marker: an empty record with the
// x-cometgate-end-marker header, published through the default exchange
// (so only the stream receives it) on a channel that consumes the stream
// from "next"; its offset, once it comes back, is beyond everything
// stored before. Markers are never delivered to Handlers, by this node or
// any other, but they are stored like any record: one per Replay and
// ReplayRecent and per live consumer start (first Subscribe, reconnect). Plain AMQP consumers
// of the stream see them, and the Broker's user needs write access to
// the default exchange.
//
// # Headers
//
// Message.Header["Content-Type"] travels as the AMQP content-type
// property and every other entry as a string in the headers table; both
// come back the same way on delivery. Non-string header values sent by
// plain AMQP clients are formatted as text; nested tables and arrays are
// left out.
package amqpbroker
