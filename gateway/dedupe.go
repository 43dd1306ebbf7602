package gateway

import "time"

// dedupe remembers, for a while, the (channel, message id) pairs a
// delivery path has seen, so that a message a publisher sent twice (it
// retried a publish whose confirmation it never got, and the broker kept
// both: RabbitMQ does, JetStream drops the second within its own window)
// reaches each subscriber once. Messages without an id pass. It is not
// safe for concurrent use: each delivery path (a hub entry's broker
// subscription, one replay) has its own.
type dedupe struct {
	window time.Duration
	max    int
	seen   map[string]time.Time
	order  []dedupeItem // oldest first, for expiry
}

type dedupeItem struct {
	key string
	at  time.Time
}

func newDedupe(window time.Duration, max int) *dedupe {
	if window <= 0 || max <= 0 {
		return nil
	}
	return &dedupe{window: window, max: max, seen: make(map[string]time.Time)}
}

// first reports whether id on channel was not seen within the window, and
// remembers it. A nil dedupe lets everything pass.
func (d *dedupe) first(channel, id string, now time.Time) bool {
	if d == nil || id == "" {
		return true
	}
	d.expire(now)
	key := channel + "\x00" + id
	if _, ok := d.seen[key]; ok {
		return false
	}
	if len(d.order) >= d.max {
		// Full: the oldest goes early. The bound keeps memory fixed when
		// ids come faster than the window expires them.
		delete(d.seen, d.order[0].key)
		d.order[0] = dedupeItem{}
		d.order = d.order[1:]
	}
	d.seen[key] = now
	d.order = append(d.order, dedupeItem{key, now})
	return true
}

func (d *dedupe) expire(now time.Time) {
	i := 0
	for i < len(d.order) && now.Sub(d.order[i].at) > d.window {
		delete(d.seen, d.order[i].key)
		i++
	}
	if i > 0 {
		clear(d.order[:i])
		d.order = d.order[i:]
	}
}
