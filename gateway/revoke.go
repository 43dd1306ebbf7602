package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/cometgate/cometgate/brokers"
)

// Server-side revocation: a message on RevokeChannel ends every session of
// a principal on every node that shares the broker (a password change, a
// banned user, a leaked token), and from then on refuses the credentials
// the principal held: a token issued before the revocation (its "iat" not
// after it, or no "iat" at all), an auth webhook answer the node cached
// before it. A credential issued after it (the user logged in again) is
// admitted. Each node listens there (StartRevocations); Revoke sends the
// message (the publish API's POST /api/revoke and "cometgate revoke" do).
//
// A node holds each revocation for Config.RevocationTTL (the sender's,
// carried in the message as "until"), which should be at least the
// longest lifetime of the tokens the application issues: past it, no
// token issued before the revocation is still valid. Nodes share no
// state, so a node that starts later asks the others for what they hold
// (an "ask" on RevokeChannel, answered with "held" lists); a revocation is
// lost only when every node that held it is gone.
//
// With a cluster key every message is signed like the node announcements,
// and unsigned or stale ones are ignored: whoever can publish on the
// broker cannot then log users out.
//
// Race with admission: a revocation is recorded (revMu) before the
// node's sessions are scanned (mu), and Open checks it while it holds mu
// to register the session; so a session either is refused by the
// revocation or is found by its scan.

// RevokeChannel carries revocations. It is reserved (ReservedPrefix): no
// browser or publish API caller can publish or subscribe there.
const RevokeChannel = ReservedPrefix + "revoke"

// DefaultRevocationTTL is Config.RevocationTTL's default.
const DefaultRevocationTTL = 24 * time.Hour

const (
	// maxRevokeReason bounds the reason a revocation carries to the
	// clients.
	maxRevokeReason = 200
	// maxRevokeSubject bounds a revoked subject.
	maxRevokeSubject = 1024
	// maxRevocationsHeld bounds the revocations a node holds; past it
	// the one whose hold ends first is dropped (and the log says so).
	maxRevocationsHeld = 100_000
	// heldPerMessage is how many revocations go in one answer to a
	// starting node (about 100 KiB at most with the bounds above, under
	// every broker's message size).
	heldPerMessage = 64
)

// revocation is one revocation: Sub's credentials issued at or before At
// are refused until Until, both Unix microseconds (At rounded up: a
// credential issued in the same microsecond, before or after, is
// refused).
type revocation struct {
	Sub    string `json:"sub"`
	Reason string `json:"reason,omitempty"`
	At     int64  `json:"at,omitempty"`
	Until  int64  `json:"until,omitempty"`
}

// revokeMsg is a message on RevokeChannel: a revocation (its fields at
// the top level, as nodes before "at" and "until" sent it), a starting
// node's request for the revocations held (Ask), or an answer to one
// (Held), which ends only the sessions the revocations refuse.
type revokeMsg struct {
	revocation
	Ask  bool         `json:"ask,omitempty"`
	Held []revocation `json:"held,omitempty"`
}

// Revoke's errors for what it was given.
var (
	ErrNoSubject  = errors.New("gateway: revoke: a subject is required")
	ErrBadReason  = fmt.Errorf("gateway: revoke: the reason is at most %d bytes of UTF-8", maxRevokeReason)
	ErrBadSubject = fmt.Errorf("gateway: revoke: the subject is at most %d bytes of UTF-8", maxRevokeSubject)
)

// RevokedError is Open's error for a principal that a revocation
// refuses; Disconnect is what its client is told (DisconnectRevoked with
// the revocation's reason).
type RevokedError struct{ Disconnect Disconnect }

func (e *RevokedError) Error() string { return "gateway: " + e.Disconnect.Reason }

// Revoke asks every node to end the sessions of subject, telling their
// clients reason (optional, at most 200 bytes), and to refuse the
// credentials subject holds now for Config.RevocationTTL. It returns once
// the broker confirmed the message.
func (g *Gateway) Revoke(ctx context.Context, subject, reason string) error {
	switch {
	case subject == "":
		return ErrNoSubject
	case len(subject) > maxRevokeSubject || !utf8.ValidString(subject):
		return ErrBadSubject
	case len(reason) > maxRevokeReason || !utf8.ValidString(reason):
		return ErrBadReason
	}
	at := time.Now()
	r := revocation{Sub: subject, Reason: reason, At: ceilMicro(at), Until: ceilMicro(at.Add(g.cfg.RevocationTTL))}
	data, _ := json.Marshal(revokeMsg{revocation: r})
	return g.publishRevoke(ctx, data)
}

func (g *Gateway) publishRevoke(ctx context.Context, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.PublishTimeout)
	defer cancel()
	return g.broker.Publish(ctx, brokers.Message{Channel: RevokeChannel, Data: sealMsg(g.cfg.ClusterKey, RevokeChannel, data)})
}

// StartRevocations subscribes the node to RevokeChannel and asks the
// other nodes for the revocations they hold; Shutdown unsubscribes. ctx
// bounds the subscribe and the question. A question that could not be
// sent (the broker is down) is logged, not returned: the node then knows
// only the revocations made from now on.
func (g *Gateway) StartRevocations(ctx context.Context) error {
	sub, err := g.broker.Subscribe(ctx, RevokeChannel, g.revokeMessage)
	if err != nil {
		return fmt.Errorf("gateway: subscribing to %s: %w", RevokeChannel, err)
	}
	g.mu.Lock()
	g.revokeSub = sub
	g.mu.Unlock()
	ask, _ := json.Marshal(revokeMsg{Ask: true})
	if err := g.publishRevoke(ctx, ask); err != nil {
		g.log.Warn("could not ask the other nodes for the revocations they hold", slog.Any("err", err))
	}
	return nil
}

// revokeMessage is the subscription's handler.
func (g *Gateway) revokeMessage(m brokers.Message) {
	data, reason := openMsg(g.cfg.ClusterKey, RevokeChannel, m.Data)
	if reason != "" {
		g.log.Warn("ignoring a message on " + RevokeChannel + ": " + reason)
		return
	}
	var msg revokeMsg
	if err := json.Unmarshal(data, &msg); err != nil || (msg.Sub == "" && !msg.Ask && msg.Held == nil) {
		g.log.Warn("ignoring a malformed message on " + RevokeChannel)
		return
	}
	now := time.Now()
	switch {
	case msg.Ask:
		g.answerHeld(now)
	case msg.Held != nil:
		learnt, ended := 0, 0
		for _, r := range msg.Held {
			if !validRevocation(r, now) || r.At == 0 || r.Until == 0 {
				continue
			}
			if g.hold(r, now) {
				learnt++
				ended += g.endRevoked(r, false)
			}
		}
		if learnt > 0 {
			g.log.Info("revocations learnt from another node", slog.Int("revocations", learnt), slog.Int("sessions", ended))
		}
	default:
		r := msg.revocation
		if !validRevocation(r, now) {
			g.log.Warn("ignoring a malformed message on " + RevokeChannel)
			return
		}
		// A node from before "at" and "until" sent it: it was made now,
		// and held as long as this node holds its own.
		if r.At == 0 {
			r.At = ceilMicro(now)
		}
		if r.Until == 0 {
			r.Until = time.UnixMicro(r.At).Add(g.cfg.RevocationTTL).UnixMicro()
		}
		g.hold(r, now)
		n := g.endRevoked(r, true)
		g.log.Info("revocation", slog.String("subject", r.Sub), slog.Int("sessions", n))
	}
}

// ceilMicro is t in Unix microseconds, rounded up.
func ceilMicro(t time.Time) int64 { return (t.UnixNano() + 999) / 1000 }

// validRevocation checks a revocation received at now: its bounds, and a
// time no later than now allows (a revocation dated ahead would refuse
// the credentials issued after it too).
func validRevocation(r revocation, now time.Time) bool {
	return r.Sub != "" && len(r.Sub) <= maxRevokeSubject && len(r.Reason) <= maxRevokeReason &&
		r.Until >= r.At && r.At <= now.Add(MaxClockSkew).UnixMicro()
}

// hold records r, unless its hold is over or the node holds a later
// revocation of the same subject; it reports whether r changed what the
// node refuses. A node holds a revocation for its own RevocationTTL at
// most, whatever the message says.
func (g *Gateway) hold(r revocation, now time.Time) bool {
	nowUs := now.UnixMicro()
	r.Until = min(r.Until, time.UnixMicro(r.At).Add(g.cfg.RevocationTTL).UnixMicro())
	if r.Until <= nowUs {
		return false
	}
	g.revMu.Lock()
	defer g.revMu.Unlock()
	if old, ok := g.revoked[r.Sub]; ok && old.Until > nowUs {
		if old.At >= r.At && old.Until >= r.Until {
			return false
		}
		if old.At > r.At { // the later one refuses more; keep its reason
			r.At, r.Reason = old.At, old.Reason
		}
		r.Until = max(r.Until, old.Until)
	}
	if _, ok := g.revoked[r.Sub]; !ok && len(g.revoked) >= maxRevocationsHeld {
		g.dropRevocationLocked(nowUs)
	}
	g.revoked[r.Sub] = r
	g.revokedHeld.Store(int64(len(g.revoked)))
	return true
}

// dropRevocationLocked makes room for one revocation: every hold that is
// over goes, or, when none is, the one that ends first.
func (g *Gateway) dropRevocationLocked(nowUs int64) {
	var first string
	for sub, r := range g.revoked {
		if r.Until <= nowUs {
			delete(g.revoked, sub)
		} else if first == "" || r.Until < g.revoked[first].Until {
			first = sub
		}
	}
	if len(g.revoked) >= maxRevocationsHeld {
		g.log.Warn("too many revocations held: dropping the one whose hold ends first", slog.Int("held", len(g.revoked)), slog.String("subject", first))
		delete(g.revoked, first)
	}
}

// answerHeld publishes the revocations the node holds, for a node that
// just started.
func (g *Gateway) answerHeld(now time.Time) {
	nowUs := now.UnixMicro()
	g.revMu.Lock()
	held := make([]revocation, 0, len(g.revoked))
	for sub, r := range g.revoked {
		if r.Until <= nowUs {
			delete(g.revoked, sub)
			continue
		}
		held = append(held, r)
	}
	g.revokedHeld.Store(int64(len(g.revoked)))
	g.revMu.Unlock()
	for len(held) > 0 {
		n := min(len(held), heldPerMessage)
		data, _ := json.Marshal(revokeMsg{Held: held[:n]})
		held = held[n:]
		if err := g.publishRevoke(g.ctx, data); err != nil {
			g.log.Warn("could not answer a starting node with the revocations held", slog.Any("err", err))
			return
		}
	}
}

// Revoked reports whether a revocation the node holds refuses p (nil:
// anonymous, never refused), and what p's client is then told.
func (g *Gateway) Revoked(p *Principal) (Disconnect, bool) {
	if p == nil || g.revokedHeld.Load() == 0 {
		return Disconnect{}, false
	}
	g.revMu.RLock()
	r, ok := g.revoked[p.Subject]
	g.revMu.RUnlock()
	if !ok || !r.refuses(p, time.Now()) {
		return Disconnect{}, false
	}
	return revokedDisconnect(r.Reason), true
}

// refuses reports whether r refuses p's credential at now: one issued
// at or before the revocation (or at an unknown time), while the hold
// lasts. A token's "iat" counts whole seconds, so a token issued in the
// same second as the revocation, before or after it, is refused.
func (r revocation) refuses(p *Principal, now time.Time) bool {
	return now.UnixMicro() < r.Until && !p.IssuedAt.After(time.UnixMicro(r.At))
}

func revokedDisconnect(reason string) Disconnect {
	d := DisconnectRevoked
	if reason != "" {
		d.Reason += ": " + reason
	}
	return d
}

// endRevoked ends this node's sessions of r's subject (all of them, or
// only those r refuses) with DisconnectRevoked and r's reason, and
// returns how many there were.
func (g *Gateway) endRevoked(r revocation, all bool) int {
	now := time.Now()
	g.mu.Lock()
	var hit []*Session
	for _, s := range g.sessions {
		if p := s.Principal(); p != nil && p.Subject == r.Sub && (all || r.refuses(p, now)) {
			hit = append(hit, s)
		}
	}
	g.mu.Unlock()
	d := revokedDisconnect(r.Reason)
	for _, s := range hit {
		s.Close(d)
	}
	return len(hit)
}
