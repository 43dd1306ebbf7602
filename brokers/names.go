package brokers

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidName is wrapped by every error about a channel name, pattern or
// header a broker cannot carry. It is not a broker outage: retrying the
// same call fails again.
var ErrInvalidName = errors.New("brokers: invalid name")

// CheckName reports whether name is a channel (wildcards false) or a
// subscription pattern (wildcards true) in the contract's syntax:
// non-empty dot-separated tokens without whitespace or control characters;
// in a pattern a token may be "*" and the last one ">". The bytes in
// forbidden are refused in any token too, for brokers that give other
// characters a meaning (AMQP's "#"). Errors wrap ErrInvalidName.
//
// Brokers are more lenient than the gateway, which admits a narrower
// alphabet from browsers: a broker must carry whatever its other clients
// publish.
func CheckName(name string, wildcards bool, forbidden string) error {
	what := "channel"
	if wildcards {
		what = "pattern"
	}
	if name == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalidName, what)
	}
	for i := 0; ; {
		tok, last := name[i:], true
		if j := strings.IndexByte(tok, '.'); j >= 0 {
			tok, last = tok[:j], false
		}
		switch {
		case tok == "":
			return fmt.Errorf("%w: %s %q has an empty token", ErrInvalidName, what, name)
		case tok == "*" && wildcards:
		case tok == ">" && wildcards:
			if !last {
				return fmt.Errorf("%w: %s %q has \">\" before its last token", ErrInvalidName, what, name)
			}
		default:
			for k := 0; k < len(tok); k++ {
				if c := tok[k]; c <= ' ' || c == 0x7f || c == '*' || c == '>' || strings.IndexByte(forbidden, c) >= 0 {
					return fmt.Errorf("%w: %s %q contains %q", ErrInvalidName, what, name, c)
				}
			}
		}
		if last {
			return nil
		}
		i += len(tok) + 1
	}
}
