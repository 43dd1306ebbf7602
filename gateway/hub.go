package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cometgate/cometgate/brokers"
)

// hub keeps one broker subscription per active pattern on this node,
// reference-counted by the sessions subscribed to it, and fans each message
// out to them.
type hub struct {
	broker  brokers.Broker
	metrics *Metrics
	writers *writerPool
	// dedupeWindow and dedupeMax configure each entry's dedupe
	// (Config.DedupeWindow, DedupeMax).
	dedupeWindow time.Duration
	dedupeMax    int

	mu      sync.Mutex // guards entries, every entry's refs, and down
	entries map[string]*hubEntry
	// down: the broker connection was lost and is not reported back yet;
	// a pattern subscribed meanwhile owes its sessions an outage gap too
	// (its subscription may have missed what was published in between).
	down bool
}

type hubEntry struct {
	pattern string
	policy  SlowPolicy // the namespace's that covered the first subscription
	// dropped counts what policy drops, under the namespace's label; nil
	// without metrics or for the disconnect policy.
	dropped prometheus.Counter
	history bool // the broker stores the pattern's channels
	// outage: the broker connection was lost, and the sessions of this
	// pattern (one without history) have not been told: the broker's next
	// Gap marker, or its reconnect report, brings the gap.
	outage atomic.Bool
	refs   int           // sessions holding or acquiring this entry; guarded by hub.mu
	ready  chan struct{} // closed once the broker subscription exists or failed
	err    error         // set before ready is closed
	bsub   brokers.Subscription

	// mu guards shards and index; fan-out holds it for reading. The
	// subscribers are kept by their write worker (Session.shard), so that
	// each worker fans a message out to its own (writers.go).
	mu     sync.RWMutex
	shards [][]*Session
	index  map[*Session]int // position in the session's shard
	// dedupe drops a message id seen lately; only fanout (the broker
	// subscription's one delivery goroutine) touches it.
	dedupe *dedupe
}

// brokerSubscribeTimeout bounds the creation of a broker subscription.
const brokerSubscribeTimeout = 30 * time.Second

func newHub(b brokers.Broker, m *Metrics, w *writerPool, dedupeWindow time.Duration, dedupeMax int) *hub {
	return &hub{broker: b, metrics: m, writers: w, entries: make(map[string]*hubEntry), dedupeWindow: dedupeWindow, dedupeMax: dedupeMax}
}

// subscribe adds s to pattern's fan-out set, creating the broker
// subscription if s is the first local subscriber. added runs under the
// entry's lock right after s joined, before any message can reach s, so the
// answer it queues precedes every delivery.
func (h *hub) subscribe(ctx context.Context, s *Session, pattern string, ns *Namespace, added func()) error {
	h.mu.Lock()
	e := h.entries[pattern]
	creator := e == nil
	if creator {
		e = &hubEntry{pattern: pattern, policy: ns.Slow, dropped: h.metrics.droppedCounter(ns.Pattern, ns.Slow),
			ready: make(chan struct{}), index: make(map[*Session]int), dedupe: newDedupe(h.dedupeWindow, h.dedupeMax),
			shards: make([][]*Session, len(h.writers.workers))}
		if hist, ok := h.broker.(brokers.History); ok {
			e.history = hist.HasHistory(pattern)
		}
		e.outage.Store(h.down && !e.history)
		h.entries[pattern] = e
	}
	e.refs++
	h.mu.Unlock()

	if creator {
		// Every session waiting for this entry depends on this call, not
		// only the one that happened to come first: its cancellation (a
		// POST that ended) must not fail them all.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), brokerSubscribeTimeout)
		e.bsub, e.err = h.broker.Subscribe(bctx, pattern, func(m brokers.Message) { h.fanout(e, m) })
		cancel()
		if e.err != nil {
			h.mu.Lock()
			if h.entries[pattern] == e {
				delete(h.entries, pattern)
			}
			h.mu.Unlock()
		}
		close(e.ready)
	} else {
		select {
		case <-e.ready:
		case <-ctx.Done():
			h.release(e)
			return ctx.Err()
		}
	}
	if e.err != nil {
		return e.err
	}
	e.mu.Lock()
	e.index[s] = len(e.shards[s.shard])
	e.shards[s.shard] = append(e.shards[s.shard], s)
	if added != nil {
		added()
	}
	e.mu.Unlock()
	s.metrics.subscribed(1)
	return nil
}

// unsubscribe removes s from pattern's fan-out set and drops the broker
// subscription after the last local subscriber left.
func (h *hub) unsubscribe(s *Session, pattern string) {
	h.mu.Lock()
	e := h.entries[pattern]
	h.mu.Unlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	i, ok := e.index[s]
	if ok {
		shard := e.shards[s.shard]
		last := len(shard) - 1
		shard[i] = shard[last]
		e.index[shard[i]] = i
		shard[last] = nil
		e.shards[s.shard] = shard[:last]
		delete(e.index, s)
	}
	e.mu.Unlock()
	if ok {
		s.metrics.subscribed(-1)
		h.release(e)
	}
}

// release drops one reference to e.
func (h *hub) release(e *hubEntry) {
	h.mu.Lock()
	e.refs--
	last := e.refs == 0
	if last && h.entries[e.pattern] == e {
		delete(h.entries, e.pattern)
	}
	h.mu.Unlock()
	if last && e.err == nil {
		<-e.ready
		if e.bsub != nil {
			_ = e.bsub.Unsubscribe()
		}
	}
}

// fanout runs on the broker's delivery goroutine for e's subscription: it
// encodes the message once and posts it to the write workers of e's
// subscribers (writers.go), which queue and write it. A Gap marker (a
// history subscription that skipped positions, or a broker that dropped
// messages for the subscription: brokers.Message.Gap) becomes a gap
// packet for every session on the pattern, in order with the messages
// around it.
func (h *hub) fanout(e *hubEntry, m brokers.Message) {
	if m.Gap {
		if e.outage.Load() && e.outage.CompareAndSwap(true, false) {
			// The broker's marker for the outage itself (a NATS client
			// marks its plain subscriptions when it reconnects): one gap.
			h.post(e, outageGap(e.pattern), true)
			return
		}
		h.post(e, GapBody(e.pattern, "messages may have been lost between the broker and this node", ""), true)
		return
	}
	if IsReserved(m.Channel) {
		return // the nodes' own traffic, which a broad pattern matches too
	}
	if !e.dedupe.first(m.Channel, m.ID, time.Now()) {
		return // a publish retried: its first copy went out already
	}
	h.metrics.received()
	// Encoded once for every session; a session only queues the pointer,
	// so a slow client never holds up the others or the broker.
	h.post(e, EncodeMessage(m, e.pattern, time.Now()), false)
}

// post hands b to the worker of every shard of e that has subscribers,
// then waits while one of them is too far behind. Posting happens under
// e.mu, so a session that is still subscribed when post runs is counted
// by the worker before it can end (and Shutdown wait); the wait happens
// after, since a worker takes e.mu to fan out.
func (h *hub) post(e *hubEntry, b *Body, push bool) {
	var posted uint64 // a bit per shard; more than 64 shards are always awaited
	e.mu.RLock()
	for shard, ss := range e.shards {
		if len(ss) > 0 {
			h.writers.post(shard, writeJob{e: e, b: b, push: push})
			if shard < 64 {
				posted |= 1 << shard
			}
		}
	}
	e.mu.RUnlock()
	for shard := range e.shards {
		if shard >= 64 || posted&(1<<shard) != 0 {
			h.writers.await(shard)
		}
	}
}

// deliverShard queues b on e's subscribers in w's shard; it runs on w,
// and the sessions it hands to their writer go into w's batch.
func (e *hubEntry) deliverShard(w *writer, b *Body, push bool) {
	e.mu.RLock()
	sessions := e.shards[w.shard]
	for i, s := range sessions {
		if i+prefetchAhead < len(sessions) {
			sessions[i+prefetchAhead].prefetch(sessionLines)
		}
		if push {
			s.pushFrom(b, w)
		} else {
			s.deliver(b, e, w)
		}
	}
	e.mu.RUnlock()
}

// Outage gaps: every session on a pattern without history is told that
// messages may have been lost while the broker connection was down (on
// history-backed patterns the broker's consumer resumes where it stopped,
// so nothing is lost there). The gap goes through the write workers, in
// order with the messages around it, and it goes out at the first of two
// moments: a Gap marker the broker delivers on the pattern's subscription
// (fanout), or the broker's report that it is connected again
// (outageGaps). A broker may deliver plain subscriptions again well before
// it reports itself connected: a NATS client re-subscribes at once, while
// the JetStream consumers of its streams can take seconds to come back (a
// stream's leader died with the server); waiting for the report let
// sessions get messages after a loss for all that time with no word of
// it. So the NATS broker marks its plain subscriptions when it reconnects,
// and the marker, in order before the first message after the loss,
// brings the gap. (The first message itself could not: one the old
// connection delivered may still be on its way when the loss is reported,
// and a gap before it would come before the loss.)

// outageBegan marks every pattern without history as owing its sessions
// an outage gap; the broker connection was just lost.
func (h *hub) outageBegan() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down = true
	for _, e := range h.entries {
		if !e.history {
			e.outage.Store(true)
		}
	}
}

// outageGaps posts the outage gap of every pattern that still owes one:
// the broker is connected again.
func (h *hub) outageGaps() {
	h.mu.Lock()
	h.down = false
	entries := make([]*hubEntry, 0, len(h.entries))
	for _, e := range h.entries {
		if e.outage.Load() {
			entries = append(entries, e)
		}
	}
	h.mu.Unlock()
	for _, e := range entries {
		if e.outage.CompareAndSwap(true, false) {
			h.post(e, outageGap(e.pattern), true)
		}
	}
}

func outageGap(pattern string) *Body {
	return GapBody(pattern, "broker connection was lost: messages may be missing", "")
}
