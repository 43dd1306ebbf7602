package gateway

import (
	"fmt"

	"github.com/cometgate/cometgate/brokers"
)

// Permission says who may do something on a namespace.
type Permission int

const (
	// Nobody may: the default for anything no namespace grants.
	Nobody Permission = iota
	// Anyone may, without authentication.
	Anyone
	// Token: a session whose principal's token grants a pattern that
	// covers the channel or subscription (see auth.go).
	Token
)

// SlowPolicy is what happens when a session's queue is full.
type SlowPolicy int

const (
	// SlowDisconnect closes the session with DisconnectSlow; the client
	// reconnects and resumes from its cursors. The default.
	SlowDisconnect SlowPolicy = iota
	// SlowDropOldest drops the oldest queued messages of the subscription
	// and tells the client with a gap packet.
	SlowDropOldest
	// SlowConflate keeps only the newest queued message per channel of the
	// subscription (tickers: the latest value is what matters).
	SlowConflate
)

// ParseSlowPolicy maps the configuration words to a SlowPolicy.
func ParseSlowPolicy(s string) (SlowPolicy, error) {
	switch s {
	case "", "disconnect":
		return SlowDisconnect, nil
	case "drop_oldest":
		return SlowDropOldest, nil
	case "conflate":
		return SlowConflate, nil
	}
	return 0, fmt.Errorf("gateway: unknown slow-consumer policy %q", s)
}

// Namespace is the rule set for the channels a pattern covers.
type Namespace struct {
	Pattern   string
	Subscribe Permission
	Publish   Permission
	Slow      SlowPolicy
}

// Rules are the namespaces in order; the first one that covers a channel or
// subscription pattern decides. Anything no namespace covers is denied.
type Rules []Namespace

// Find returns the namespace governing pattern (a channel or subscription
// pattern), or nil.
func (r Rules) Find(pattern string) *Namespace {
	for i := range r {
		if brokers.PatternCovers(r[i].Pattern, pattern) {
			return &r[i]
		}
	}
	return nil
}

// ForSubscribe returns the namespace governing a subscription to pattern
// by a session acting for p (nil: anonymous), or nil when the
// subscription is not allowed. Each channel is governed by the first
// namespace that matches it, so the first namespace that covers pattern
// entirely must grant subscribing, and so must every earlier namespace
// that shares a channel with pattern: otherwise a wide wildcard ("t.>")
// could reach channels an earlier, narrower namespace ("t.secret.>")
// denies.
func (r Rules) ForSubscribe(pattern string, p *Principal) *Namespace {
	for i := range r {
		ns := &r[i]
		allowed := mayDo(ns.Subscribe, p, subscribeGrants, pattern)
		if brokers.PatternCovers(ns.Pattern, pattern) {
			if !allowed {
				return nil
			}
			return ns
		}
		if !allowed && brokers.PatternsOverlap(ns.Pattern, pattern) {
			return nil
		}
	}
	return nil
}

// MayPublish reports whether a session acting for p (nil: anonymous) may
// publish on channel.
func (r Rules) MayPublish(channel string, p *Principal) bool {
	ns := r.Find(channel)
	return ns != nil && mayDo(ns.Publish, p, publishGrants, channel)
}

// Validate checks every namespace pattern.
func (r Rules) Validate() error {
	for i, ns := range r {
		if err := brokers.ValidatePattern(ns.Pattern); err != nil {
			return fmt.Errorf("gateway: namespace %d: %w", i, err)
		}
	}
	return nil
}
