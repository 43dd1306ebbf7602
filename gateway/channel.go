package gateway

import (
	"fmt"
	"strings"

	"github.com/cometgate/cometgate/brokers"
)

// MaxChannelLen is the longest channel name or pattern accepted, in bytes.
const MaxChannelLen = 255

// ChannelError is the error for a channel name or pattern that breaks a
// rule; its message names the rule so a client can fix its request.
type ChannelError struct {
	Name string
	Rule string
}

func (e *ChannelError) Error() string {
	return fmt.Sprintf("invalid channel %q: %s", e.Name, e.Rule)
}

// ValidateChannel checks a concrete channel name (one that can be published
// to): dot-separated tokens of letters, digits and "_-:@=", no wildcards.
func ValidateChannel(name string) error {
	return validate(name, false)
}

// ValidatePattern checks a subscription pattern: a channel name whose tokens
// may also be "*" (exactly one token) or, as the last token only, ">" (one or
// more tokens).
func ValidatePattern(pattern string) error {
	return validate(pattern, true)
}

func validate(name string, wildcards bool) error {
	fail := func(rule string) error { return &ChannelError{Name: name, Rule: rule} }
	if name == "" {
		return fail("must not be empty")
	}
	if len(name) > MaxChannelLen {
		return fail(fmt.Sprintf("must be at most %d bytes", MaxChannelLen))
	}
	toks := strings.Split(name, ".")
	for i, tok := range toks {
		switch {
		case tok == "":
			return fail("tokens between dots must not be empty")
		case tok == "*" || tok == ">":
			if !wildcards {
				return fail("wildcards \"*\" and \">\" are only allowed in subscriptions")
			}
			if tok == ">" && i != len(toks)-1 {
				return fail("\">\" must be the last token")
			}
		default:
			for j := 0; j < len(tok); j++ {
				if !tokenByte(tok[j]) {
					return fail(fmt.Sprintf("character %q not allowed: use letters, digits and _ - : @ =", rune(tok[j])))
				}
			}
		}
	}
	return nil
}

func tokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '_', '-', ':', '@', '=':
		return true
	}
	return false
}

// IsPattern reports whether s contains a wildcard token.
func IsPattern(s string) bool {
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "*" || tok == ">" {
			return true
		}
	}
	return false
}

// PatternCovers reports whether every channel matched by pattern p is also
// matched by pattern ns. Both must be valid patterns. It decides which
// namespace rules apply to a subscription: a subscription is governed by the
// first namespace that covers it entirely, so a wide wildcard can never reach
// channels its namespace does not grant. (The pattern algebra lives in the
// broker contract, which brokers share; the gateway uses the same.)
func PatternCovers(ns, p string) bool { return brokers.PatternCovers(ns, p) }

// patternsIntersect reports whether some channel matches both valid
// patterns a and b.
func patternsIntersect(a, b string) bool { return brokers.PatternsOverlap(a, b) }

// MatchChannel reports whether the concrete channel ch matches pattern p.
func MatchChannel(p, ch string) bool { return brokers.MatchChannel(p, ch) }
