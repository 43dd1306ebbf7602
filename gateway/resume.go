package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/cometgate/cometgate/brokers"
)

// Resuming from history (the design is in the package doc): a subscription
// with a cursor replays the broker's history after it, then switches to
// the live stream.

// replayLimit is how full (in bytes) a session's queue may get before a
// replay waits for the client.
func (s *Session) replayLimit() int { return s.g.cfg.QueueBytes / 2 }

// maxReplayRounds bounds the catch-up rounds of one resume; a channel that
// outruns that many rounds is handed to the live stream with a gap packet.
const maxReplayRounds = 64

func parseCursor(cursor string) (uint64, error) {
	if cursor == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(cursor, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad cursor %q: use the \"cur\" of a msg packet", cursor)
	}
	return n, nil
}

// hasHistory reports whether the broker stores every channel of pattern.
func (g *Gateway) hasHistory(pattern string) bool {
	h, ok := g.broker.(brokers.History)
	return ok && h.HasHistory(pattern)
}

// admitLiveLocked decides whether a live message on a history-backed
// subscription is queued: not while the subscription replays, and not if
// it was already queued. s.mu must be held.
func (s *Session) admitLiveLocked(b *Body) bool {
	st := s.subs[b.pattern]
	if st == nil {
		return false
	}
	if st.replaying {
		st.liveSeen = max(st.liveSeen, b.seq)
		return false
	}
	if b.seq <= st.lastSeq {
		return false
	}
	st.lastSeq = b.seq
	return true
}

// startReplayLocked starts the replay of st; s.mu must be held.
func (s *Session) startReplayLocked(pattern string, st *subState) {
	ctx, cancel := context.WithCancel(s.g.ctx)
	st.cancel = cancel
	s.g.wg.Add(1)
	go func() {
		defer s.g.wg.Done()
		defer cancel()
		s.replay(ctx, pattern, st)
	}()
}

// replay runs st's replay in rounds, each from the last position queued,
// until a round ends with no newer live message seen (st then goes live,
// under s.mu, which live delivery takes too) or until maxReplayRounds.
func (s *Session) replay(ctx context.Context, pattern string, st *subState) {
	hist := s.g.broker.(brokers.History)
	for round := 0; ; round++ {
		s.mu.Lock()
		after := st.lastSeq
		s.mu.Unlock()
		first := true
		res, err := hist.Replay(ctx, pattern, after, func(m brokers.Message) {
			if first && m.Seq <= after {
				// The broker restarted the replay at its oldest message
				// (a gap, or a cursor from a history that was reset):
				// what is queued now starts there.
				s.mu.Lock()
				st.lastSeq = m.Seq - 1
				s.mu.Unlock()
			}
			first = false
			s.queueReplayed(ctx, pattern, st, m)
		})
		if ctx.Err() != nil {
			return // unsubscribed, session over, or shutdown
		}
		if err != nil {
			// The history cannot be read now (broker down): say so and go
			// live; the client may resubscribe with its cursor later.
			s.g.log.Warn("replay failed", slog.String("sid", s.id), slog.String("pattern", pattern), slog.Any("err", err))
			s.finishReplay(st, GapBody(pattern, "history unavailable: "+errText(err), ""))
			return
		}
		if res.Gap {
			if res.Last == 0 {
				// Nothing was replayed: the history was reset and holds
				// nothing after its oldest position yet. Positions start
				// over there, so the old cursor must not hide them.
				s.mu.Lock()
				st.lastSeq = min(st.lastSeq, res.Oldest-min(res.Oldest, 1))
				s.mu.Unlock()
			}
			// Later rounds report a gap when retention removed messages
			// while the replay ran.
			s.push(GapBody(pattern, "history does not reach back to the cursor", strconv.FormatUint(res.Oldest, 10)))
		}
		s.mu.Lock()
		if st.liveSeen <= st.lastSeq || s.state != stateOpen {
			st.replaying = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		if round+1 >= maxReplayRounds {
			s.finishReplay(st, GapBody(pattern, "could not catch up with the channel", ""))
			return
		}
	}
}

// finishReplay switches st to live, first queueing the gap packet that
// says messages between the replay and the live stream may be missing.
func (s *Session) finishReplay(st *subState, gap *Body) {
	s.push(gap)
	s.mu.Lock()
	st.replaying = false
	s.mu.Unlock()
}

func errText(err error) string {
	if errors.Is(err, brokers.ErrUnavailable) {
		return "broker unavailable"
	}
	return err.Error()
}

// queueReplayed queues one replayed message, waiting while the session's
// queue is above the replay limit.
func (s *Session) queueReplayed(ctx context.Context, pattern string, st *subState, m brokers.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.heldLocked() > s.replayLimit() && s.state == stateOpen {
		room := s.roomLocked()
		s.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
		}
		s.mu.Lock()
		if ctx.Err() != nil {
			return
		}
	}
	// ctx is cancelled under s.mu when the subscription goes away, so this
	// check keeps replayed messages from following an unsubscribe's ok.
	if s.state != stateOpen || ctx.Err() != nil || m.Seq <= st.lastSeq {
		return
	}
	st.lastSeq = m.Seq
	s.queueLocked(EncodeMessage(m, pattern, time.Now()))
}
