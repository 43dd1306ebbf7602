package brokers

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The channel-name grammar lives here, once, because brokers is the
// contract package every layer may import: the gateway checks what
// browsers send with it, configs checks namespaces with it, and the broker
// implementations check what they carry with it.
//
// A channel is one or more non-empty tokens separated by dots. A pattern
// is a channel whose tokens may also be "*" (exactly one token) or, as the
// last token only, ">" (one or more tokens). Two alphabets fill the tokens:
//
//   - The portable alphabet (ValidateChannel, ValidatePattern): letters,
//     digits and "_-:@=", at most MaxNameLen bytes. Every broker carries
//     such a name unchanged, so it is what the gateway admits from
//     browsers and configs admits in namespaces.
//   - A broker's alphabet (CheckName): any byte but whitespace, control
//     characters and the wildcards, and no length bound here. A broker
//     must carry whatever its other clients publish.
//
// PatternCovers, MatchChannel and PatternsOverlap (patterns.go) compare
// names in this grammar.

// ErrInvalidName is wrapped by every error about a channel name, pattern or
// header a broker cannot carry. It is not a broker outage: retrying the
// same call fails again.
var ErrInvalidName = errors.New("brokers: invalid name")

// MaxNameLen is the longest channel name or pattern in the portable
// alphabet, in bytes: an AMQP routing key is a short string of at most 255
// bytes.
const MaxNameLen = 255

// NameError is the error for a channel name or pattern that breaks a rule
// of the grammar; Rule names the rule so that a client (or an operator
// editing a configuration) can fix the name. It wraps ErrInvalidName.
type NameError struct {
	// Name is the name as given.
	Name string
	// Rule is the rule it breaks, e.g. "must not be empty".
	Rule string
}

// Error says which name breaks which rule: `invalid channel "a..b": has an
// empty token (...)`.
func (e *NameError) Error() string {
	return fmt.Sprintf("invalid channel %q: %s", e.Name, e.Rule)
}

// Unwrap returns ErrInvalidName.
func (e *NameError) Unwrap() error { return ErrInvalidName }

// ValidateChannel checks a concrete channel name (one that can be published
// to) in the portable alphabet: no wildcards. Errors are *NameError.
func ValidateChannel(name string) error {
	return checkName(name, false, true, "")
}

// ValidatePattern checks a subscription pattern in the portable alphabet.
// Errors are *NameError.
func ValidatePattern(pattern string) error {
	return checkName(pattern, true, true, "")
}

// CheckName reports whether name is a channel (wildcards false) or a
// subscription pattern (wildcards true) in a broker's alphabet. The bytes
// in forbidden are refused in any token too, for brokers that give other
// characters a meaning (AMQP's "#"). Errors are *NameError.
func CheckName(name string, wildcards bool, forbidden string) error {
	return checkName(name, wildcards, false, forbidden)
}

// IsPattern reports whether the valid pattern s has a wildcard token.
func IsPattern(s string) bool {
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "*" || tok == ">" {
			return true
		}
	}
	return false
}

// checkName walks the tokens of name once. It allocates nothing unless
// name is invalid: brokers call it on every publish.
func checkName(name string, wildcards, portable bool, forbidden string) error {
	fail := func(rule string) error { return &NameError{Name: name, Rule: rule} }
	if name == "" {
		return fail("must not be empty")
	}
	if portable && len(name) > MaxNameLen {
		return fail(fmt.Sprintf("must be at most %d bytes, got %d", MaxNameLen, len(name)))
	}
	for rest := name; ; {
		tok, after, more := strings.Cut(rest, ".")
		switch {
		case tok == "":
			return fail("has an empty token (tokens between dots must not be empty)")
		case tok == "*" || tok == ">":
			if !wildcards {
				return fail(`wildcards "*" and ">" are only allowed in subscriptions`)
			}
			if tok == ">" && more {
				return fail(`">" must be the last token`)
			}
		default:
			for i := 0; i < len(tok); i++ {
				if c := tok[i]; !tokenByte(c, portable, forbidden) {
					r, _ := utf8.DecodeRuneInString(tok[i:])
					return fail(fmt.Sprintf("token %q is not valid: character %q not allowed (%s)", tok, r, alphabet(portable, forbidden)))
				}
			}
		}
		if !more {
			return nil
		}
		rest = after
	}
}

// tokenByte reports whether c may appear in a token that is not a
// wildcard.
func tokenByte(c byte, portable bool, forbidden string) bool {
	if portable {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			return true
		}
		return strings.IndexByte("_-:@=", c) >= 0
	}
	return c > ' ' && c != 0x7f && c != '*' && c != '>' && strings.IndexByte(forbidden, c) < 0
}

// alphabet describes the bytes tokenByte accepts, for error messages.
func alphabet(portable bool, forbidden string) string {
	if portable {
		return "use letters, digits and _ - : @ ="
	}
	s := `no whitespace, control characters, "*" or ">" inside a token`
	if forbidden != "" {
		s += fmt.Sprintf(", nor any of %q", forbidden)
	}
	return s
}
