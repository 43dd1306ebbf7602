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
// the live stream. A subscription that asks for the current state (Start's
// Latest or Last) does the same, with a first round that reads the recent
// messages (brokers.History.ReplayRecent) and the next ones after the
// position that round read up to.

// replayLimit is how full (in bytes) a session's queue may get before a
// replay waits for the client.
func (s *Session) replayLimit() int { return s.g.cfg.QueueBytes / 2 }

// maxReplayRounds bounds the catch-up rounds of one resume; a channel that
// outruns that many rounds is handed to the live stream with a gap packet.
const maxReplayRounds = 64

// ResumeCursor is the cursor a client gives when it resubscribes after a
// break in its session but holds no cursor: the channel has no history
// (its messages carry none), or none arrived before the break. It cannot
// be resumed from, so the answer is a gap packet: the client learns that
// messages published meanwhile may be lost, and can fetch the state
// another way. A plain EventSource sends it by itself (see transports'
// SSE resume id).
const ResumeCursor = "~"

func parseCursor(cursor string) (uint64, error) {
	if cursor == "" || cursor == ResumeCursor {
		return 0, nil
	}
	n, err := strconv.ParseUint(cursor, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad cursor %q: use the \"cur\" of a msg packet", cursor)
	}
	return n, nil
}

// recent is what s asks of the history before its cursor-less replay:
// nothing when it has a cursor (which wins), else the latest message per
// channel or the last N. Both at once, or N out of range, is an error
// the client can fix.
func (s Start) recent() (brokers.Recent, error) {
	if s.Cursor != "" {
		return brokers.Recent{}, nil
	}
	switch {
	case s.Latest && s.Last != 0:
		return brokers.Recent{}, errors.New(`"latest" and "last" exclude each other`)
	case s.Last < 0 || s.Last > brokers.MaxRecent:
		return brokers.Recent{}, fmt.Errorf(`"last" must be 1 to %d, not %d`, brokers.MaxRecent, s.Last)
	}
	return brokers.Recent{PerChannel: s.Latest, Last: s.Last}, nil
}

// hasHistory reports whether the broker stores every channel of pattern.
func (g *Gateway) hasHistory(pattern string) bool {
	h, ok := g.broker.(brokers.History)
	return ok && h.HasHistory(pattern)
}

// admitLiveLocked decides whether a live message on a history-backed
// subscription is queued now: not while the subscription replays (it is
// buffered for the end of the round instead), and not if it was already
// queued. s.mu must be held.
func (s *Session) admitLiveLocked(b *Body) bool {
	st := s.subs.get(b.pattern)
	if st == nil {
		return false
	}
	if st.replaying {
		st.liveSeen = max(st.liveSeen, b.seq)
		if !st.liveBufLost {
			if st.liveBufBytes+len(b.json) > s.replayLimit() {
				// Too much arrived meanwhile: forget it, later rounds
				// replay it from the history.
				clear(st.liveBuf)
				st.liveBuf, st.liveBufBytes, st.liveBufLost = nil, 0, true
			} else {
				st.liveBuf = append(st.liveBuf, b)
				st.liveBufBytes += len(b.json)
			}
		}
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
// until a round ends whose live buffer held every live message since it
// began (st then goes live, under s.mu, which live delivery takes too; see
// switchLiveLocked) or until maxReplayRounds.
func (s *Session) replay(ctx context.Context, pattern string, st *subState) {
	hist := s.g.broker.(brokers.History)
	// A publish retried and stored twice (see brokers.Message.ID) is
	// replayed once, as it is delivered live once.
	dup := newDedupe(s.g.cfg.DedupeWindow, s.g.cfg.DedupeMax)
	for round := 0; ; round++ {
		s.mu.Lock()
		after := st.lastSeq
		s.mu.Unlock()
		first := true
		queue := func(m brokers.Message) {
			if first && m.Seq <= after {
				// The broker restarted the replay at its oldest message
				// (a gap, or a cursor from a history that was reset):
				// what is queued now starts there.
				s.mu.Lock()
				st.lastSeq = m.Seq - 1
				s.mu.Unlock()
			}
			first = false
			if dup.first(m.Channel, m.ID, time.Now()) {
				s.queueReplayed(ctx, pattern, st, m)
			}
		}
		var res brokers.ReplayResult
		var err error
		if round == 0 && !st.recent.IsZero() {
			// The current state first; the next rounds go on after the
			// position it was read up to.
			res, err = hist.ReplayRecent(ctx, pattern, st.recent, queue)
			if err == nil {
				s.mu.Lock()
				st.lastSeq = max(st.lastSeq, res.End)
				s.mu.Unlock()
			}
		} else {
			res, err = hist.Replay(ctx, pattern, after, queue)
		}
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
		if s.switchLiveLocked(st) {
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

// switchLiveLocked ends st's replay, at the end of a round, when what it
// queued joins the live stream. A round replays every message stored when
// it began; every live message since then was buffered, unless too many
// came: then (and only then) another round is needed, with a fresh
// buffer. Joining queues the buffered messages the replay did not reach,
// in order. s.mu must be held.
func (s *Session) switchLiveLocked(st *subState) bool {
	if st.liveBufLost && st.liveSeen > st.lastSeq && s.state == stateOpen {
		st.liveBufLost = false
		return false
	}
	if s.state == stateOpen {
		for _, b := range st.liveBuf {
			if b.seq > st.lastSeq {
				st.lastSeq = b.seq
				s.queueLocked(b, nil)
			}
		}
	}
	clear(st.liveBuf)
	st.liveBuf, st.liveBufBytes = nil, 0
	st.replaying = false
	return true
}

// finishReplay switches st to live, first queueing the gap packet that
// says messages between the replay and the live stream may be missing.
func (s *Session) finishReplay(st *subState, gap *Body) {
	s.push(gap)
	s.mu.Lock()
	clear(st.liveBuf)
	st.liveBuf, st.liveBufBytes = nil, 0
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
	s.queueLocked(EncodeMessage(m, pattern, time.Now()), nil)
}
