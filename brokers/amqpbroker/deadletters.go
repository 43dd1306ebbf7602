package amqpbroker

import (
	"log/slog"
	"time"

	"github.com/cometgate/cometgate/brokers"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Messages the server drops. The node's queue holds what the node has not
// taken yet, and the server may drop from it: a length limit
// (Options.QueueMaxLength, or a policy an operator set, "max-length"
// with the default overflow, drop-head), a message TTL (a policy's
// "message-ttl"). Without a word to the node those would be silent
// losses on channels that have no history to resume from. So the queue
// is declared with a dead-letter exchange, the default exchange with the
// routing key of a second queue of the node's own (declared arguments
// overrule a policy's dead-letter settings, so an operator's DLX cannot
// take the letters away): every message the server drops from the queue
// comes back to the node there, and becomes a Gap marker for each
// Subscription whose pattern matches its original routing key (from its
// x-death header; every Subscription of the queue when that is missing).
//
// The dead letters are signals, not data: they are consumed on a channel
// of their own with a small prefetch and never read further, and their
// queue keeps the newest deadLetterBacklog (a node that stalls long
// enough to lose messages gets its gaps as soon as it reads again,
// however many were dropped). A burst of dead letters makes one marker
// per Subscription. The marker reaches a Subscription from this
// goroutine, not the dispatcher's, between two calls of its Handler (the
// Subscription's lock orders them); it tells that messages may be
// missing around it, as the NATS broker's slow-consumer marker does.

// deadLetterBacklog bounds the dead-letter queue, and is its consumer's
// prefetch window.
const deadLetterBacklog = 64

// deadLetterLogEvery is the least time between two log lines about
// dropped messages.
const deadLetterLogEvery = 10 * time.Second

// queueArgs are the arguments of the node's queue, whose dead letters go
// to the queue named dead.
func (b *Broker) queueArgs(dead string) amqp.Table {
	args := amqp.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
	if b.opts.QueueMaxLength > 0 {
		args["x-max-length"] = int64(b.opts.QueueMaxLength)
		args["x-overflow"] = "drop-head"
	}
	return args
}

// ServerDrops returns how many messages the server dropped from the
// node's queue (a length limit, a TTL) and told the node of by
// dead-lettering them; each reached its Subscriptions as a Gap marker.
func (b *Broker) ServerDrops() uint64 { return b.serverDrops.Load() }

// deadLetters turns the dead letters of s's queue into Gap markers until
// the consumer ends.
func (b *Broker) deadLetters(s *session, deliveries <-chan amqp.Delivery) {
	defer s.wg.Done()
	var (
		targets  []*subscription
		marked   = make(map[*subscription]bool)
		unlogged uint64    // drops since the last log line
		logged   time.Time // when the last log line went out
	)
	for d := range deliveries {
		// Every dead letter waiting now makes one burst, and one marker
		// per Subscription it touched.
		var (
			n    int
			last uint64
		)
		for more := true; more; {
			n++
			last = d.DeliveryTag
			targets = b.deadTargets(&d, targets)
			select {
			case next, ok := <-deliveries:
				if !ok {
					more = false
					break
				}
				d = next
			default:
				more = false
			}
		}
		b.serverDrops.Add(uint64(n))
		// One line per deadLetterLogEvery at most: a stalled node may
		// lose thousands of messages a second.
		if unlogged += uint64(n); time.Since(logged) >= deadLetterLogEvery {
			b.log.Warn("amqp server dropped messages from the node's queue (a length limit or a TTL): their subscriptions get a gap",
				slog.Uint64("messages", unlogged), slog.String("reason", deathReason(d.Headers)))
			unlogged, logged = 0, time.Now()
		}
		for _, sub := range targets {
			if !marked[sub] {
				marked[sub] = true
				sub.deliver(brokers.Message{Gap: true})
			}
		}
		clear(marked)
		clear(targets)
		targets = targets[:0]
		// An error means the channel is closed: deliveries ends next.
		_ = s.dead.Ack(last, true)
	}
}

// deadTargets appends the Subscriptions the dead letter d was for to
// targets.
func (b *Broker) deadTargets(d *amqp.Delivery, targets []*subscription) []*subscription {
	keys := deathKeys(d.Headers)
	b.mu.RLock()
	defer b.mu.RUnlock()
	if len(keys) == 0 {
		for _, p := range b.literal {
			targets = append(targets, p.subs...)
		}
		for _, p := range b.wild {
			targets = append(targets, p.subs...)
		}
		return targets
	}
	for _, k := range keys {
		if ch, ok := b.keys.channel(k); ok {
			targets = b.subscribersLocked(ch, targets)
		}
	}
	return targets
}

// deathKeys are the routing keys a dead letter was published with: the
// "routing-keys" of its latest x-death entry.
func deathKeys(h amqp.Table) []string {
	deaths, _ := h["x-death"].([]any)
	if len(deaths) == 0 {
		return nil
	}
	death, _ := deaths[0].(amqp.Table)
	raw, _ := death["routing-keys"].([]any)
	keys := make([]string, 0, len(raw))
	for _, k := range raw {
		if s, ok := k.(string); ok {
			keys = append(keys, s)
		}
	}
	return keys
}

// deathReason is why the server dead-lettered a message ("maxlen",
// "expired", "rejected"), for the log.
func deathReason(h amqp.Table) string {
	if r, ok := h["x-first-death-reason"].(string); ok {
		return r
	}
	return "unknown"
}
