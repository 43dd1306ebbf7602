package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// hub keeps one broker subscription per active pattern on this node,
// reference-counted by the sessions subscribed to it, and fans each message
// out to them.
type hub struct {
	broker  brokers.Broker
	metrics *Metrics

	mu      sync.Mutex // guards entries and every entry's refs
	entries map[string]*hubEntry
}

type hubEntry struct {
	pattern string
	policy  SlowPolicy
	history bool          // the broker stores the pattern's channels
	refs    int           // sessions holding or acquiring this entry; guarded by hub.mu
	ready   chan struct{} // closed once the broker subscription exists or failed
	err     error         // set before ready is closed
	bsub    brokers.Subscription

	mu       sync.RWMutex // guards sessions and index; fan-out holds it for reading
	sessions []*Session
	index    map[*Session]int
}

// brokerSubscribeTimeout bounds the creation of a broker subscription.
const brokerSubscribeTimeout = 30 * time.Second

func newHub(b brokers.Broker, m *Metrics) *hub {
	return &hub{broker: b, metrics: m, entries: make(map[string]*hubEntry)}
}

// subscribe adds s to pattern's fan-out set, creating the broker
// subscription if s is the first local subscriber. added runs under the
// entry's lock right after s joined, before any message can reach s, so the
// answer it queues precedes every delivery.
func (h *hub) subscribe(ctx context.Context, s *Session, pattern string, policy SlowPolicy, added func()) error {
	h.mu.Lock()
	e := h.entries[pattern]
	creator := e == nil
	if creator {
		e = &hubEntry{pattern: pattern, policy: policy, ready: make(chan struct{}), index: make(map[*Session]int)}
		if hist, ok := h.broker.(brokers.History); ok {
			e.history = hist.HasHistory(pattern)
		}
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
	e.index[s] = len(e.sessions)
	e.sessions = append(e.sessions, s)
	if added != nil {
		added()
	}
	e.mu.Unlock()
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
		last := len(e.sessions) - 1
		e.sessions[i] = e.sessions[last]
		e.index[e.sessions[i]] = i
		e.sessions[last] = nil
		e.sessions = e.sessions[:last]
		delete(e.index, s)
	}
	e.mu.Unlock()
	if ok {
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

// fanout runs on the broker's delivery goroutine for e's subscription. A
// Gap marker (only history subscriptions get them) becomes a gap packet
// for every session on the pattern, in order with the messages around it.
func (h *hub) fanout(e *hubEntry, m brokers.Message) {
	if m.Gap {
		gap := GapBody(e.pattern, "messages were lost between the broker and this node", "")
		e.mu.RLock()
		for _, s := range e.sessions {
			s.push(gap)
		}
		e.mu.RUnlock()
		return
	}
	if IsReserved(m.Channel) {
		return // the nodes' own traffic, which a broad pattern matches too
	}
	h.metrics.received()
	// Encoded once for every session; a session only queues the pointer,
	// so a slow client never holds up the others or the broker.
	body := EncodeMessage(m, e.pattern, time.Now())
	e.mu.RLock()
	for _, s := range e.sessions {
		s.deliver(body, e.policy)
	}
	e.mu.RUnlock()
}

// outageGaps tells every session on a pattern without history that
// messages may have been lost while the broker connection was down; on
// history-backed patterns the broker's consumer resumes where it stopped, so
// nothing is lost there.
func (h *hub) outageGaps() {
	h.mu.Lock()
	entries := make([]*hubEntry, 0, len(h.entries))
	for _, e := range h.entries {
		if !e.history {
			entries = append(entries, e)
		}
	}
	h.mu.Unlock()
	for _, e := range entries {
		gap := GapBody(e.pattern, "broker connection was lost: messages may be missing", "")
		e.mu.RLock()
		for _, s := range e.sessions {
			s.push(gap)
		}
		e.mu.RUnlock()
	}
}
