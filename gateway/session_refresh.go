package gateway

import (
	"errors"
	"fmt"
	"time"
)

// In-band token refresh: a client sends {"op":"refresh","token":"…"}
// before its token expires, on whatever transport carries its frames.
// The admission gate checks the token (OpenOptions.Reauth: the same
// verification as at the session's start, bound to the same subject); the
// session then acts with the new grants and lives until the new token's
// expiry. Subscriptions the new grants no longer allow end, each with an
// err packet naming its channel (code 403, no id). A session whose token
// expires without a refresh closes with DisconnectTokenExpired (3004).

// ErrOtherPrincipal is the Reauth error of a token for another subject
// than the session's: a session is bound to its principal.
var ErrOtherPrincipal = errors.New("the token is for another principal than the session's")

// armTokenEndLocked (re)arms the timer that ends the session when p's
// token expires; s.mu must be held.
func (s *Session) armTokenEndLocked(p *Principal) {
	if s.tokenEnd != nil {
		s.tokenEnd.Stop()
		s.tokenEnd = nil
	}
	if p == nil || p.Expires.IsZero() {
		return
	}
	s.tokenEnd = time.AfterFunc(time.Until(p.Expires), func() {
		// A refresh may have raced with this timer: only the token that
		// is still the session's ends it.
		if s.Principal() == p {
			s.Close(DisconnectTokenExpired)
		}
	})
}

// subscriptionEnded is the packet that ends a subscription a refresh no
// longer grants.
func subscriptionEnded(pattern string) *Body {
	return errBody(0, pattern, 403, fmt.Sprintf("subscription ended: the refreshed token does not grant subscribing to %q", pattern))
}

// refresh applies a refresh frame.
func (s *Session) refresh(id int64, token string) {
	if s.reauth == nil {
		s.push(errBody(id, "", 400, "refresh: the session was opened without a token"))
		return
	}
	if token == "" {
		s.push(errBody(id, "", 400, `refresh: "token" is required`))
		return
	}
	p, err := s.reauth(token)
	if err != nil {
		code := 401
		if errors.Is(err, ErrOtherPrincipal) {
			code = 403
		}
		s.push(errBody(id, "", code, "refresh refused: "+err.Error()))
		return
	}
	s.mu.Lock()
	if s.state != stateOpen {
		s.mu.Unlock()
		return
	}
	s.principal.Store(p)
	s.armTokenEndLocked(p)
	var ended []string
	// Backwards: remove moves the last subscription, already seen, into
	// the place of the one it removes.
	for i := len(s.subs) - 1; i >= 0; i-- {
		st := s.subs[i]
		if s.g.cfg.Rules.ForSubscribe(st.pattern, p) != nil {
			continue
		}
		if !st.ready {
			st.revoked = true // subscribe ends it when the hub has it
			continue
		}
		s.subs.remove(st)
		if st.cancel != nil {
			st.cancel()
		}
		ended = append(ended, st.pattern)
	}
	s.mu.Unlock()
	for _, pattern := range ended {
		s.g.hub.unsubscribe(s, pattern)
		s.push(subscriptionEnded(pattern))
	}
	s.push(okBody(id, ""))
}
