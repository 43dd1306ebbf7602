package gateway

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"
)

// refreshing opens a session for p whose refresh frames are checked as
// the admission gate checks them: a token of v, for p's subject.
func refreshing(t *testing.T, g *testGateway, v *TokenVerifier, p *Principal) (*Session, *fakeTransport) {
	t.Helper()
	return openWith(t, g, OpenOptions{Transport: "fake", Principal: p, Reauth: func(token string) (*Principal, error) {
		np, err := v.Verify(token)
		if err != nil {
			return nil, fmt.Errorf("invalid token: %w", err)
		}
		if np.Subject != p.Subject {
			return nil, ErrOtherPrincipal
		}
		return np, nil
	}})
}

// TestSessionRefresh: a refresh frame with a fresh token keeps the session
// past the first token's expiry, with the new token's grants:
// subscriptions they no longer allow end with an err packet naming the
// channel; without another refresh the session closes with 3004 when the
// new token expires. Refused refreshes change nothing.
func TestSessionRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newTestGateway(t, func(c *Config) { c.Rules = tokenRules() })
		v := newVerifier(t, TokenOptions{HMACSecret: testSecret})
		tok := func(sub string, ttl time.Duration, grants ...string) string {
			s, err := SignToken(testSecret, Principal{Subject: sub, Subscribe: grants, Publish: grants}, "", "", ttl)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		first, err := v.Verify(tok("alice", time.Minute, "prices.>"))
		if err != nil {
			t.Fatal(err)
		}
		s, tr := refreshing(t, g, v, first)
		subscribe(t, s, tr, 1, "prices.AAPL")
		subscribe(t, s, tr, 2, "prices.MSFT")

		// Refused: another subject, a bad token, no token. The session
		// keeps its grants.
		send(s, `{"op":"refresh","id":3,"token":%q}`, tok("mallory", time.Hour, ">"))
		expectErr(t, tr, 3, 403, "another principal")
		send(s, `{"op":"refresh","id":4,"token":"not.a.token"}`)
		expectErr(t, tr, 4, 401, "refresh refused: invalid token")
		send(s, `{"op":"refresh","id":5}`)
		expectErr(t, tr, 5, 400, `"token" is required`)
		if s.Principal() != first {
			t.Fatal("a refused refresh changed the principal")
		}

		// Accepted: prices.AAPL only, for two more minutes.
		time.Sleep(30 * time.Second)
		send(s, `{"op":"refresh","id":6,"token":%q}`, tok("alice", 2*time.Minute, "prices.AAPL"))
		ended := expectErr(t, tr, 0, 403, "subscription ended")
		if ended.Ch != "prices.MSFT" {
			t.Errorf("ended %s, want prices.MSFT", ended)
		}
		if w := nextType(t, tr, TypeOK); w.ID != 6 {
			t.Fatalf("refresh answer %s", w)
		}
		if n := g.b.SubsFor("prices.MSFT"); n != 0 {
			t.Errorf("%d broker subscriptions left for the ended subscription", n)
		}
		publish(t, g.b, "prices.AAPL", `1`)
		if w := nextType(t, tr, TypeMsg); w.Ch != "prices.AAPL" {
			t.Errorf("message %s", w)
		}
		send(s, `{"op":"sub","id":7,"ch":"prices.MSFT"}`)
		expectErr(t, tr, 7, 403, "permission denied")
		send(s, `{"op":"pub","id":8,"ch":"prices.MSFT","text":"1"}`)
		expectErr(t, tr, 8, 403, "permission denied")

		// Past the first token's expiry the session lives on.
		time.Sleep(time.Minute)
		synctest.Wait()
		if isDone(s) {
			t.Fatalf("the session ended at the first token's expiry: %v", s.Reason())
		}
		ping(t, s, tr, 9)
		// At the second token's, it closes with 3004.
		time.Sleep(time.Minute)
		synctest.Wait()
		if !isDone(s) || s.Reason() != DisconnectTokenExpired {
			t.Fatalf("after the refreshed token expired: done %v, reason %v", isDone(s), s.Reason())
		}
		expectClose(t, tr, DisconnectTokenExpired)

		// A session without a token cannot refresh into one.
		anon, atr := openAs(t, g, nil)
		send(anon, `{"op":"refresh","id":1,"token":%q}`, tok("alice", time.Hour, ">"))
		expectErr(t, atr, 1, 400, "opened without a token")
		if anon.Principal() != nil {
			t.Error("an anonymous session got a principal")
		}
	})
}

// TestSessionRefreshDuringSubscribe: a refresh that takes a grant away
// while the subscription is still being made ends it once it is made:
// its ok, then the err that ends it, and no broker subscription left.
func TestSessionRefreshDuringSubscribe(t *testing.T) {
	g := newTestGateway(t, func(c *Config) { c.Rules = tokenRules() })
	v := newVerifier(t, TokenOptions{HMACSecret: testSecret})
	tok := func(grants ...string) string {
		s, err := SignToken(testSecret, Principal{Subject: "alice", Subscribe: grants}, "", "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first, err := v.Verify(tok("prices.>"))
	if err != nil {
		t.Fatal(err)
	}
	s, tr := refreshing(t, g, v, first)
	release := g.b.HoldSubscribes()
	defer release()
	done := make(chan struct{})
	go func() {
		defer close(done)
		send(s, `{"op":"sub","id":1,"ch":"prices.MSFT"}`)
	}()
	waitFor(t, "the subscription to be under way", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.subs.get("prices.MSFT") != nil
	})
	send(s, `{"op":"refresh","id":2,"token":%q}`, tok("prices.AAPL"))
	if w := nextType(t, tr, TypeOK); w.ID != 2 {
		t.Fatalf("refresh answer %s", w)
	}
	release()
	<-done
	if w := nextType(t, tr, TypeOK); w.ID != 1 || w.Ch != "prices.MSFT" {
		t.Fatalf("subscribe answer %s", w)
	}
	if w := expectErr(t, tr, 0, 403, "subscription ended"); w.Ch != "prices.MSFT" {
		t.Errorf("ended %s", w)
	}
	waitFor(t, "the broker subscription to go", func() bool { return g.b.SubsFor("prices.MSFT") == 0 })
	s.mu.Lock()
	left := len(s.subs)
	s.mu.Unlock()
	if left != 0 {
		t.Errorf("%d subscriptions left", left)
	}
}
