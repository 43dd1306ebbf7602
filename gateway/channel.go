package gateway

import (
	"strings"

	"github.com/cometgate/cometgate/brokers"
)

// The channel-name grammar is brokers' (see brokers/names.go): the names
// below are what the gateway's callers (the session layer, the transports'
// publish API) have long used for the portable alphabet, which is what the
// gateway admits from browsers.

// MaxChannelLen is the longest channel name or pattern accepted, in bytes.
const MaxChannelLen = brokers.MaxNameLen

// ChannelError is the error for a channel name or pattern that breaks a
// rule; its message names the rule so a client can fix its request.
type ChannelError = brokers.NameError

// ValidateChannel checks a concrete channel name (one that can be published
// to): dot-separated tokens of letters, digits and "_-:@=", no wildcards.
func ValidateChannel(name string) error { return brokers.ValidateChannel(name) }

// ValidatePattern checks a subscription pattern: a channel name whose tokens
// may also be "*" (exactly one token) or, as the last token only, ">" (one or
// more tokens).
func ValidatePattern(pattern string) error { return brokers.ValidatePattern(pattern) }

// ReservedPrefix starts the channels the gateway nodes keep for
// themselves (NodesChannel): no browser and no publish API caller may
// publish on them, none may subscribe to one by name, and no
// subscription delivers them, whatever the namespace rules grant (a rule
// for ">" included). They steer forwarding between nodes, which carries
// browsers' cookies.
const ReservedPrefix = "cometgate-"

// IsReserved reports whether channel is one of the gateway's own (see
// ReservedPrefix); a pattern is reserved when its first token is.
func IsReserved(channel string) bool {
	first, _, _ := strings.Cut(channel, ".")
	return strings.HasPrefix(first, ReservedPrefix)
}
