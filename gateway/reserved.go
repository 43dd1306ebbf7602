package gateway

import "strings"

// The channel-name grammar has one home, brokers/names.go
// (brokers.ValidateChannel, brokers.ValidatePattern): the gateway admits
// what it admits. What is the gateway's own is the reserved prefix.

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
