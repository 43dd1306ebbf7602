package gateway

import "fmt"

// Disconnect is why a session ended, or why a request was refused before
// one started. It is an error, and it is what the client sees: in the close
// packet, in a WebSocket close frame, in a SockJS c[code,"reason"] frame,
// or as the "code" of a JSON refusal.
//
// This file is the one table of close codes. The ranges:
//
//	0          the peer is gone: nothing is sent (DisconnectGone)
//	1000-2999  protocol codes: RFC 6455 close codes (1000 normal, 1002
//	           protocol error, 1007 invalid payload, 1009 message too big)
//	           and SockJS's (1002 interrupted, 2010 another connection)
//	3000-3999  reconnect: the client should come back (after a jittered
//	           delay) and resume from its cursors
//	4000-4999  do not reconnect: the same request would fail again
//
// Within the application ranges, x4xx and x5xx codes follow the HTTP status
// of the same condition where there is one (4003/403, 4004/404, 4029/429,
// 4401/401, 3029/429, 3502/502, 3503/503; 3520 as the 520 some proxies
// answer when an origin reset the connection). 4029 is every limit a
// client went past for good (sessions per address, frames or publishes
// per second); 3029 and 3005 are rate limits on new sessions, which the
// client should retry after a delay.
type Disconnect struct {
	Code   int
	Reason string
}

func (d Disconnect) Error() string {
	return fmt.Sprintf("disconnect %d: %s", d.Code, d.Reason)
}

// Reconnect reports whether the client should reconnect.
func (d Disconnect) Reconnect() bool { return d.Code >= 3000 && d.Code < 4000 }

// Protocol close codes (RFC 6455 section 7.4.1, SockJS).
const (
	CodeNormal          = 1000 // WebSocket: normal closure
	CodeProtocolError   = 1002 // WebSocket: protocol error; SockJS: connection interrupted
	CodeInvalidPayload  = 1007 // WebSocket: a text message or close reason that is not UTF-8
	CodeMessageTooBig   = 1009 // WebSocket: a message over the size limit
	CodeAnotherReceiver = 2010 // SockJS: another receiving request holds the session
)

// The disconnects the gateway and its transports send, so that the same
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
	// DisconnectNodeBusy: the node opens no more new sessions per second
	// than it is configured to (a reconnect storm); come back after the
	// refusal's jittered delay, to this node or another (HTTP 503).
	DisconnectNodeBusy = Disconnect{3005, "node busy: too many new sessions, try again later"}
	// DisconnectNodeFull: the node holds as many sessions as it may; the
	// same advice (HTTP 503).
	DisconnectNodeFull = Disconnect{3005, "node full: too many sessions, try again later"}
	// DisconnectSessionRate: the client's address opened new sessions
	// faster than it may; come back after the refusal's delay (HTTP 429).
	DisconnectSessionRate = Disconnect{3029, "too many new sessions from this address, try again later"}
	// DisconnectTargetUnreachable: a TCP bridge could not connect to its
	// target, or an established connection broke without a reset (timed
	// out, the route went away).
	DisconnectTargetUnreachable = Disconnect{3502, "target unreachable"}
	// DisconnectTargetBusy: the node holds as many connections to the TCP
	// target as it may.
	DisconnectTargetBusy = Disconnect{3503, "target busy"}
	// DisconnectTargetReset: the TCP target reset an established
	// connection (it aborted, crashed, or closed with data unread). Like
	// an HTTP 520 (an origin's reset after a successful connect), there
	// is no HTTP status for it.
	DisconnectTargetReset = Disconnect{3520, "connection reset by target"}

	// DisconnectProtocol: the client sent frames the server cannot read.
	DisconnectProtocol = Disconnect{4000, "protocol error"}
	// DisconnectTooLarge: the client sent a frame over the size limit in
	// a request body (HTTP 413) or inside a SockJS message. A WebSocket
	// message over its connection's limit closes with CodeMessageTooBig
	// instead, on every WebSocket.
	DisconnectTooLarge = Disconnect{4001, "frame too large"}
	// DisconnectForbidden: the client may not open a session here.
	DisconnectForbidden = Disconnect{4003, "forbidden"}
	// DisconnectNotFound: the session named by the request does not exist.
	DisconnectNotFound = Disconnect{4004, "session not found"}
	// DisconnectTooManySessions: the client's address holds as many
	// sessions as it may.
	DisconnectTooManySessions = Disconnect{4029, "too many sessions from this address"}
	// DisconnectFrameRate: the session sent frames faster than its limit
	// (Config.FrameRate) past the burst. A client that floods is not
	// asked back.
	DisconnectFrameRate = Disconnect{4029, "too many frames per second"}
	// DisconnectPublishRate: the session published faster than its limit
	// (Config.PublishRate) past the burst.
	DisconnectPublishRate = Disconnect{4029, "too many publishes per second"}
	// DisconnectUnauthorized: the request carries no valid token where one
	// is needed.
	DisconnectUnauthorized = Disconnect{4401, "authentication required"}
	// DisconnectRevoked: the application revoked the session's principal
	// (RevokeChannel); the reason may say why after a colon.
	DisconnectRevoked = Disconnect{4010, "access revoked"}
	// DisconnectTargetRefused: every address of a TCP target is one the
	// bridge's address policy refuses.
	DisconnectTargetRefused = Disconnect{4403, "target address not allowed"}
	// DisconnectTargetUnknown: no TCP target has the requested name.
	DisconnectTargetUnknown = Disconnect{4404, "unknown TCP target"}

	// DisconnectTargetClosed: the TCP target closed its side after
	// everything it sent was delivered (a normal closure).
	DisconnectTargetClosed = Disconnect{CodeNormal, "target closed the connection"}

	// disconnectGone is recorded when the peer went away (connection closed
	// or a write failed); nothing can be sent to it any more.
	disconnectGone = Disconnect{0, "connection closed"}
)

// DisconnectGone is the reason a transport reports when the peer closed the
// connection or it failed; nothing is sent for it.
func DisconnectGone() Disconnect { return disconnectGone }
