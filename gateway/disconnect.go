package gateway

import "fmt"

// Disconnect is why a session ended. It is an error, and it is what the
// client sees in the close packet (and the WebSocket close frame). Codes
// 3000–3999 tell the client to reconnect and resume; 4000–4999 tell it not
// to, because the same request would fail again.
type Disconnect struct {
	Code   int
	Reason string
}

func (d Disconnect) Error() string {
	return fmt.Sprintf("disconnect %d: %s", d.Code, d.Reason)
}

// Reconnect reports whether the client should reconnect.
func (d Disconnect) Reconnect() bool { return d.Code >= 3000 && d.Code < 4000 }

// The disconnects the gateway sends. Transports use them too, so the same
// condition reads the same on every transport.
var (
	// DisconnectShutdown: the node is draining; reconnect (to any node) after
	// a jittered delay.
	DisconnectShutdown = Disconnect{3000, "server shutting down"}
	// DisconnectSlow: the session's outgoing queue overflowed; reconnect and
	// resume from cursors.
	DisconnectSlow = Disconnect{3001, "slow consumer"}
	// DisconnectExpired: a polling session had no request attached for too
	// long.
	DisconnectExpired = Disconnect{3002, "session expired"}
	// DisconnectReplaced: a newer request took over the session's downstream.
	DisconnectReplaced = Disconnect{3003, "replaced by a newer request"}
	// DisconnectTokenExpired: the session's token expired; reconnect with
	// a fresh one.
	DisconnectTokenExpired = Disconnect{3004, "token expired"}
	// DisconnectProtocol: the client sent frames the server cannot read.
	DisconnectProtocol = Disconnect{4000, "protocol error"}
	// DisconnectTooLarge: the client sent a frame over the size limit.
	DisconnectTooLarge = Disconnect{4001, "frame too large"}
	// DisconnectForbidden: the client may not open a session here.
	DisconnectForbidden = Disconnect{4003, "forbidden"}
	// DisconnectNotFound: the session named by the request does not exist.
	DisconnectNotFound = Disconnect{4004, "session not found"}
	// DisconnectUnauthorized: the request carries no valid token where one
	// is needed.
	DisconnectUnauthorized = Disconnect{4401, "authentication required"}

	// disconnectGone is recorded when the peer went away (connection closed
	// or a write failed); nothing can be sent to it any more.
	disconnectGone = Disconnect{0, "connection closed"}
)

// DisconnectGone is the reason a transport reports when the peer closed the
// connection or it failed; nothing is sent for it.
func DisconnectGone() Disconnect { return disconnectGone }
