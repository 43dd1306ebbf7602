package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"unicode/utf8"

	"github.com/cometgate/cometgate/brokers"
)

// Server-side revocation: a message on RevokeChannel ends every session of
// a principal on every node that shares the broker (a password change, a
// banned user, a leaked token). Each node listens there
// (StartRevocations); Revoke sends the message (the publish API's
// POST /api/revoke and "cometgate revoke" do). With a cluster key the
// message is signed like the node announcements, and unsigned or stale
// ones are ignored: whoever can publish on the broker cannot then log
// users out. The sessions end with DisconnectRevoked, which the client
// does not reconnect after; tokens the principal still holds are not
// refused by it (the application stops handing them out).

// RevokeChannel carries revocations. It is reserved (ReservedPrefix): no
// browser or publish API caller can publish or subscribe there.
const RevokeChannel = ReservedPrefix + "revoke"

// maxRevokeReason bounds the reason a revocation carries to the clients.
const maxRevokeReason = 200

// revocation is a message on RevokeChannel.
type revocation struct {
	Sub    string `json:"sub"`
	Reason string `json:"reason,omitempty"`
}

// Revoke's errors for what it was given.
var (
	ErrNoSubject = errors.New("gateway: revoke: a subject is required")
	ErrBadReason = fmt.Errorf("gateway: revoke: the reason is at most %d bytes of UTF-8", maxRevokeReason)
)

// Revoke asks every node to end the sessions of subject, telling their
// clients reason (optional, at most 200 bytes). It returns once the broker
// confirmed the message.
func (g *Gateway) Revoke(ctx context.Context, subject, reason string) error {
	if subject == "" {
		return ErrNoSubject
	}
	if len(reason) > maxRevokeReason || !utf8.ValidString(reason) {
		return ErrBadReason
	}
	data, _ := json.Marshal(revocation{Sub: subject, Reason: reason})
	ctx, cancel := context.WithTimeout(ctx, g.cfg.PublishTimeout)
	defer cancel()
	return g.broker.Publish(ctx, brokers.Message{Channel: RevokeChannel, Data: sealMsg(g.cfg.ClusterKey, RevokeChannel, data)})
}

// StartRevocations subscribes the node to RevokeChannel; Shutdown
// unsubscribes. ctx bounds the subscribe only.
func (g *Gateway) StartRevocations(ctx context.Context) error {
	sub, err := g.broker.Subscribe(ctx, RevokeChannel, g.revoked)
	if err != nil {
		return fmt.Errorf("gateway: subscribing to %s: %w", RevokeChannel, err)
	}
	g.mu.Lock()
	g.revokeSub = sub
	g.mu.Unlock()
	return nil
}

// revoked is the subscription's handler.
func (g *Gateway) revoked(m brokers.Message) {
	data, reason := openMsg(g.cfg.ClusterKey, RevokeChannel, m.Data)
	if reason != "" {
		g.log.Warn("ignoring a message on " + RevokeChannel + ": " + reason)
		return
	}
	var r revocation
	if err := json.Unmarshal(data, &r); err != nil || r.Sub == "" || len(r.Reason) > maxRevokeReason {
		g.log.Warn("ignoring a malformed message on " + RevokeChannel)
		return
	}
	n := g.EndSessionsOf(r.Sub, r.Reason)
	g.log.Info("revocation", slog.String("subject", r.Sub), slog.Int("sessions", n))
}

// EndSessionsOf ends this node's sessions acting for subject with
// DisconnectRevoked (its reason followed by reason, when not "") and
// returns how many there were.
func (g *Gateway) EndSessionsOf(subject, reason string) int {
	d := DisconnectRevoked
	if reason != "" {
		d.Reason += ": " + reason
	}
	g.mu.Lock()
	var hit []*Session
	for _, s := range g.sessions {
		if p := s.Principal(); p != nil && p.Subject == subject {
			hit = append(hit, s)
		}
	}
	g.mu.Unlock()
	for _, s := range hit {
		s.Close(d)
	}
	return len(hit)
}
