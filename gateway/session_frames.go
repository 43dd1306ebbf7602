package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/cometgate/cometgate/brokers"
)

// The session's incoming side: client frames, subscriptions, and the
// publisher that takes the client's publishes to the broker.

type subState struct {
	pattern string
	ready   bool // the hub holds the subscription (false while subscribing)
	// History-backed subscriptions only (resume.go):
	history   bool
	recent    brokers.Recent     // the first replay round reads the current state
	replaying bool               // a replay runs; live messages are not queued
	lastSeq   uint64             // position of the last message queued
	liveSeen  uint64             // newest live position seen while replaying
	cancel    context.CancelFunc // stops the replay
	// liveBuf holds, in order, the live messages that arrived while the
	// replay ran (up to liveBufBytes), so that the switch to live needs
	// no further round once the replay reached the first of them.
	liveBuf      []*Body
	liveBufBytes int
	liveBufLost  bool // the buffer overflowed: later rounds catch up instead
	// revoked: a refresh took the grant away before the subscription was
	// ready; subscribe ends it once it is.
	revoked bool
}

// subList is a session's subscriptions. A slice searched in order
// rather than a map: a session holds few (browsers open one to a few,
// and Config.MaxSubscriptions bounds them, 128 by default), and the
// smallest map, for one entry, is a table of eight slots and a header,
// about 250 bytes on every idle session, where the slice is 8. Lookups
// are one string comparison per subscription: a subscribe or unsubscribe
// frame, and a live message on a history-backed pattern.
type subList []*subState

// get returns the subscription to pattern, or nil.
func (l subList) get(pattern string) *subState {
	for _, st := range l {
		if st.pattern == pattern {
			return st
		}
	}
	return nil
}

func (l *subList) add(st *subState) { *l = append(*l, st) }

// remove removes st (if it is there), moving the last subscription into
// its place.
func (l *subList) remove(st *subState) {
	s := *l
	for i := range s {
		if s[i] == st {
			last := len(s) - 1
			s[i] = s[last]
			s[last] = nil
			*l = s[:last]
			return
		}
	}
}

// HandleFrame applies one client frame. Errors are answered with an err
// packet; a frame that cannot be decoded at all gets an err packet with code
// 400 too, so a client bug never ends its session. Only a frame over
// Config.MaxFrameBytes does (DisconnectTooLarge), and a frame past the
// session's frame rate (DisconnectFrameRate).
func (s *Session) HandleFrame(ctx context.Context, data []byte) {
	if !s.admitFrame() {
		return
	}
	if len(data) > s.g.cfg.MaxFrameBytes {
		s.Close(DisconnectTooLarge)
		return
	}
	f, err := DecodeFrame(data)
	if err != nil {
		s.reject(f, err)
		return
	}
	s.applyFrame(ctx, f)
}

// admitFrame counts one client frame against Config.FrameRate: every
// frame of every transport comes through HandleFrame, Apply or Reject,
// and only there. Past the burst it closes the session (once: later
// frames of a closing session are dropped) and reports false.
func (s *Session) admitFrame() bool {
	return s.takeToken(&s.frames, s.g.cfg.FrameRate, DisconnectFrameRate, RefusedFrameRate)
}

// takeToken takes a token from b, a bucket of the session's in rate r.
// Without one the session is closed with d (counted as refusal why) and
// takeToken reports false; so it does for a session no longer open.
func (s *Session) takeToken(b *Bucket, r Rate, d Disconnect, why Refusal) bool {
	if r.Unlimited() {
		return true
	}
	now := s.g.cfg.Clock()
	s.mu.Lock()
	open := s.state == stateOpen
	ok := open && b.Take(r, now)
	s.mu.Unlock()
	if ok || !open {
		return ok
	}
	s.g.metrics.Refused(why)
	s.Close(d)
	return false
}

// Reject answers a frame that could not be decoded with an err packet
// (code 400), carrying the frame's id when it could be read. It counts
// as a frame (Config.FrameRate).
func (s *Session) Reject(f Frame, err error) {
	if s.admitFrame() {
		s.reject(f, err)
	}
}

func (s *Session) reject(f Frame, err error) {
	var fe *FrameError
	if errors.As(err, &fe) {
		s.push(errBody(fe.ID, "", 400, fe.Error()))
		return
	}
	s.push(errBody(f.ID, "", 400, err.Error()))
}

// Apply applies one decoded frame. A frame numbered (n) at or below the
// last one applied is a retried request and is ignored; one that skips a
// number is answered with 409. It counts against Config.FrameRate.
func (s *Session) Apply(ctx context.Context, f Frame) {
	if s.admitFrame() {
		s.applyFrame(ctx, f)
	}
}

// Ack acknowledges the packets up to seq, as an ack frame would, for a
// transport that carries the acknowledgement in its request (a poll's
// ?ack=): part of a request, not a frame, so it is not counted against
// Config.FrameRate.
func (s *Session) Ack(seq uint64) { s.ack(seq) }

func (s *Session) applyFrame(ctx context.Context, f Frame) {
	if f.N != 0 {
		s.mu.Lock()
		switch {
		case f.N <= s.lastN:
			s.mu.Unlock()
			return // a retried POST: applied already
		case f.N != s.lastN+1:
			want := s.lastN + 1
			s.mu.Unlock()
			s.push(errBody(f.ID, f.Ch, 409, fmt.Sprintf("upstream frame n=%d out of order, expected %d", f.N, want)))
			return
		}
		s.lastN = f.N
		s.mu.Unlock()
	}
	switch f.Op {
	case OpSub:
		s.subscribe(ctx, f.ID, f.Ch, Start{Cursor: f.Cursor, Latest: f.Latest, Last: f.Last})
	case OpUnsub:
		s.unsubscribe(f.ID, f.Ch)
	case OpPub:
		s.enqueuePublish(f)
	case OpAck:
		s.ack(f.Seq)
	case OpPing:
		s.push(okBody(f.ID, ""))
	case OpRefresh:
		s.refresh(f.ID, f.Token)
	}
}

// Start says where a subscription starts: live (the zero Start), after a
// cursor, or with the current state of its channels (resume.go).
type Start struct {
	// Cursor resumes after the message with this cursor. It wins over
	// Latest and Last: a client that holds a cursor has the state already.
	Cursor string
	// Latest starts with the last stored message of each channel.
	Latest bool
	// Last starts with the last Last stored messages (1 to
	// brokers.MaxRecent).
	Last int
}

// Subscribe subscribes the session to pattern as if the client had sent a
// sub frame without id (transports use it for subscriptions named in the
// URL). The answer is an ok or err packet carrying the channel.
func (s *Session) Subscribe(ctx context.Context, pattern string, start Start) {
	s.subscribe(ctx, 0, pattern, start)
}

func (s *Session) subscribe(ctx context.Context, id int64, pattern string, start Start) {
	cursor := start.Cursor
	if err := brokers.ValidatePattern(pattern); err != nil {
		s.push(errBody(id, pattern, 422, err.Error()))
		return
	}
	principal := s.Principal()
	ns := s.g.cfg.Rules.ForSubscribe(pattern, principal)
	if ns == nil || IsReserved(pattern) {
		s.push(errBody(id, pattern, 403, fmt.Sprintf("permission denied: subscribe to %q", pattern)))
		return
	}
	after, err := parseCursor(cursor)
	if err != nil {
		s.push(errBody(id, pattern, 400, err.Error()))
		return
	}
	recent, err := start.recent()
	if err != nil {
		s.push(errBody(id, pattern, 400, err.Error()))
		return
	}
	history := s.g.hasHistory(pattern)
	s.mu.Lock()
	switch {
	case s.state != stateOpen:
		s.mu.Unlock()
		return
	case s.Principal() != principal && s.g.cfg.Rules.ForSubscribe(pattern, s.Principal()) == nil:
		// A refresh replaced the grants since the check.
		s.mu.Unlock()
		s.push(errBody(id, pattern, 403, fmt.Sprintf("permission denied: subscribe to %q", pattern)))
		return
	case s.subs.get(pattern) != nil:
		s.mu.Unlock()
		s.push(errBody(id, pattern, 409, fmt.Sprintf("already subscribed to %q", pattern)))
		return
	case len(s.subs) >= s.g.cfg.MaxSubscriptions:
		s.mu.Unlock()
		s.push(errBody(id, pattern, 429, fmt.Sprintf("at most %d subscriptions per session", s.g.cfg.MaxSubscriptions)))
		return
	}
	// Resuming without a cursor has nothing to resume from: the client
	// gets a gap, unless the current state it asked for covers the break.
	blind := cursor == ResumeCursor
	if blind {
		cursor = ""
	}
	st := &subState{pattern: pattern, history: history, lastSeq: after, replaying: history && (cursor != "" || !recent.IsZero())}
	if history {
		st.recent = recent
	}
	s.subs.add(st)
	s.mu.Unlock()

	err = s.g.hub.subscribe(ctx, s, pattern, ns, func() {
		s.push(subOKBody(id, pattern, history))
		switch {
		case blind && history && recent.IsZero():
			s.push(GapBody(pattern, "resumed without a cursor: messages published while the session was away are not replayed", ""))
		case blind && !history:
			s.push(GapBody(pattern, "channel has no history: messages published while the session was away are lost", ""))
		case history:
		case cursor != "":
			s.push(GapBody(pattern, "channel has no history: recovery is not possible", ""))
		case !recent.IsZero():
			s.push(GapBody(pattern, "channel has no history: its current state is not available", ""))
		}
	})
	s.mu.Lock()
	if err != nil {
		s.subs.remove(st)
		s.mu.Unlock()
		s.push(errBody(id, pattern, 503, "subscribe failed: "+err.Error()))
		return
	}
	st.ready = true
	// A session that ended meanwhile released the subscriptions that were
	// ready then, not this one; a refresh that took the grant away
	// meanwhile left this one to end here.
	gone := s.state == stateEnded
	if st.revoked {
		s.subs.remove(st)
	}
	if s.state == stateOpen && st.replaying && !st.revoked {
		s.startReplayLocked(pattern, st)
	}
	s.mu.Unlock()
	if gone || st.revoked {
		s.g.hub.unsubscribe(s, pattern)
	}
	if st.revoked {
		s.push(subscriptionEnded(pattern))
	}
}

func (s *Session) unsubscribe(id int64, pattern string) {
	s.mu.Lock()
	st := s.subs.get(pattern)
	if st == nil || !st.ready {
		s.mu.Unlock()
		s.push(errBody(id, pattern, 404, fmt.Sprintf("not subscribed to %q", pattern)))
		return
	}
	s.subs.remove(st)
	if st.cancel != nil {
		st.cancel()
	}
	s.mu.Unlock()
	s.g.hub.unsubscribe(s, pattern)
	s.push(okBody(id, pattern))
}

// ack drops retained packets up to seq.
func (s *Session) ack(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for i < len(s.unacked) && s.unacked[i].Seq <= seq {
		s.unackedBytes -= len(s.unacked[i].body.json)
		i++
	}
	if i > 0 {
		clear(s.unacked[:i])
		s.unacked = s.unacked[i:]
		if len(s.unacked) == 0 {
			s.unacked = nil
		}
		s.signalRoomLocked()
	}
}

// maxPendingPublishes bounds the publishes a session may have waiting for
// broker confirmation; more are refused with 429.
const maxPendingPublishes = 64

// enqueuePublish queues a client publish for the session's publisher.
// Every pub frame counts against Config.PublishRate, allowed or not.
func (s *Session) enqueuePublish(f Frame) {
	if !s.takeToken(&s.pubs, s.g.cfg.PublishRate, DisconnectPublishRate, RefusedPublishRate) {
		return
	}
	if err := brokers.ValidateChannel(f.Ch); err != nil {
		s.push(errBody(f.ID, f.Ch, 422, err.Error()))
		return
	}
	if !s.g.cfg.Rules.MayPublish(f.Ch, s.Principal()) || IsReserved(f.Ch) {
		s.push(errBody(f.ID, f.Ch, 403, fmt.Sprintf("permission denied: publish to %q", f.Ch)))
		return
	}
	s.mu.Lock()
	if s.state != stateOpen {
		s.mu.Unlock()
		return
	}
	if len(s.pubQ) >= maxPendingPublishes {
		s.mu.Unlock()
		s.push(errBody(f.ID, f.Ch, 429, fmt.Sprintf("at most %d publishes may await confirmation", maxPendingPublishes)))
		return
	}
	s.pubQ = append(s.pubQ, f)
	if !s.publishing {
		s.publishing = true
		s.g.wg.Add(1)
		go s.publishLoop()
	}
	s.mu.Unlock()
}

// publishLoop is the session's publisher goroutine: it runs while
// publishes are pending, one at a time, so that they reach the broker in
// the order the client sent them without blocking its read loop. It stops
// when the queue is empty or the session is no longer open.
func (s *Session) publishLoop() {
	defer s.g.wg.Done()
	for {
		s.mu.Lock()
		if len(s.pubQ) == 0 || s.state != stateOpen {
			s.pubQ = nil
			s.publishing = false
			s.mu.Unlock()
			return
		}
		f := s.pubQ[0]
		s.pubQ[0] = Frame{}
		s.pubQ = s.pubQ[1:]
		s.mu.Unlock()

		data, contentType, err := decodePayload(&f)
		if err != nil {
			s.push(errBody(f.ID, f.Ch, 400, "bad payload: "+err.Error()))
			continue
		}
		if len(data) > s.g.cfg.MaxFrameBytes {
			s.push(errBody(f.ID, f.Ch, 413, fmt.Sprintf("payload of %d bytes exceeds %d", len(data), s.g.cfg.MaxFrameBytes)))
			continue
		}
		err = s.g.publish(s.g.ctx, "client", f.Ch, f.MID, data, contentType)
		if err != nil {
			s.push(errBody(f.ID, f.Ch, 503, "publish failed: "+err.Error()))
			continue
		}
		s.push(okBody(f.ID, f.Ch))
	}
}
