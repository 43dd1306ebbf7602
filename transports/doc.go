// Package transports carries cometgate sessions over the transports browsers
// have: WebSocket, EventSource (SSE), the request-per-poll family
// (long-polling, XHR streaming, iframe/htmlfile, JSONP), the SockJS
// protocol for pages that use sockjs-client, and the TCP bridge. It owns the
// HTTP handlers (chi) and the byte framing of each transport; the session
// itself (queues, numbering, acknowledgements, subscriptions, permissions,
// expiry) lives in package gateway, and every transport uses it the same
// way.
//
// # Design
//
// One mechanism per concern:
//
//   - Admission (admission.go): gate.open admits a request and opens its
//     session (Origin, token and principal, per-address limit, draining);
//     gate.join admits a request to a session that exists. No handler
//     checks these itself; each renders the refusal in its own framing.
//   - Handlers: one type per transport family (wsHandler, sseHandler,
//     pollHandler, sendHandler, jsonpSendHandler, publishHandler,
//     bridgeHandler, sockjsEndpoint), each built from the node's shared
//     dependencies (node.go). Server (server.go) only routes to them.
//   - Downstreams are gateway.Transports: wsSession (a WebSocket in a
//     codec: native, SockJS, raw echo), sseConn, httpDown (one request of
//     the request-per-poll family, SockJS's receivers included, in a
//     framing), wsBridge (the bridge's byte stream). The session's writer
//     is their only writer of packets.
//   - One WebSocket connection type (wsconn.go) owns the wire of every
//     WebSocket: RFC 6455 checks, the write lock, deadlines, pings on busy
//     connections, the close handshake, and permessage-deflate on the
//     packet WebSockets (wsdeflate.go: why no context takeover, and how a
//     broadcast message is compressed once and shared by every session
//     after its own seq prefix).
//   - Hijacked connections that are idle (WebSocket, SSE) are watched by one
//     epoll poller per node (netpoll_linux.go), with no goroutine per
//     connection; input starts a short-lived reader. Elsewhere, and for the
//     bridge, a small reader goroutine per connection.
//   - Requests for a session of another node are proxied to it (forward.go).
//
// # Why gobwas/ws
//
// The WebSocket library was chosen by measurement: 5,000 idle connections to a
// net/http server on this project's kind of machine (2 vCPU), each library used
// the way its documentation suggests, clients in another process.
//
//	| library | heap/conn | stack/conn | PSS/conn | server CPU per delivery (one 100-byte frame to 5,000 conns) |
//	|---|---|---|---|---|
//	| gorilla/websocket (ReadMessage loop, PreparedMessage) | 11.9 KB | 4.1 KB | 16.9 KB | 6.8 µs |
//	| coder/websocket (Read loop) | 13.9 KB | 8.2 KB | 23.2 KB | 7.9–8.6 µs |
//	| gobwas/ws (hijack, handler returns, own small reader) | 0.87 KB | 2.1 KB | 3.3 KB | 6.7–7.1 µs |
//
// Fan-out cost is the write system call whatever the library; memory is where
// they differ, because gorilla's and coder's read loops keep net/http's request
// buffers alive. gobwas/ws leaves a plain net.Conn, so cometgate writes frames
// it built itself (one write for everything pending) and moves idle reads onto
// an epoll loop. The price: cometgate enforces the RFC 6455 rules itself
// (masking, control frames, fragmentation, close codes, UTF-8).
//
// # Idle connections
//
// Most sessions are idle most of the time, so an idle session's cost is what
// bounds a node. A goroutine parked in Read costs at least a 2 KiB stack plus
// its descriptor, more than half of the 4 KiB budget, so on Linux no goroutine
// waits for an idle WebSocket or SSE client. One epoll instance per node (one
// goroutine, transports/netpoll_linux.go) holds a one-shot registration per
// connection; when input arrives it starts a goroutine that reads the complete
// frames (through Go's own poller, within the usual read deadline), applies
// them, and re-arms the registration. Events carry a slot number and
// generation, never a file descriptor, so a closed connection's event cannot
// reach a new connection with the same descriptor number.
//
// Liveness without a parked reader: the gateway pings idle sessions every
// heartbeat, and any write to a client that has been quiet for a heartbeat
// carries a ping too (two bytes in the same system call), so busy sessions are
// pinged as well; the browser's pong is the input that proves it is there. A
// client that answers nothing for three heartbeats plus 5 s is closed by the
// next write. Elsewhere than Linux (and for bridged connections, which are
// busy by nature) each connection keeps a small reader goroutine, with a read
// deadline doing the same.
//
// # Wire format (protocol version 1)
//
// Every transport carries the same frames. A frame is one JSON object. The
// transport only decides how frames are delimited: one WebSocket text frame
// each, one SSE event each, a JSON array per HTTP request or response for the
// polling transports.
//
// # Client → server frames
//
// Each client frame has an "op". Requests that expect an answer carry an
// "id" (a positive integer chosen by the client); the server answers with an
// "ok" or "err" packet carrying the same id.
//
//	{"op":"sub","id":1,"ch":"prices.eur.usd"}          subscribe
//	{"op":"sub","id":2,"ch":"prices.*","cursor":"c"}   subscribe, resuming after cursor c
//	{"op":"sub","id":8,"ch":"votes.>","latest":true}   the latest message of each channel, then live
//	{"op":"sub","id":9,"ch":"bids.lot7","last":20}     the last 20 messages, then live
//	{"op":"unsub","id":3,"ch":"prices.*"}              unsubscribe
//	{"op":"pub","id":4,"ch":"bids.lot7","data":{"eur":120}}
//	{"op":"pub","id":5,"ch":"chat.room1","text":"hi"}  payload as text
//	{"op":"pub","id":6,"ch":"raw.x","b64":"AAEC"}      payload as base64 bytes
//	{"op":"pub","id":8,"ch":"bids.lot7","data":1,"mid":"bid-17"}  with a message id
//	{"op":"ack","seq":41}                              every packet up to seq 41 arrived
//	{"op":"ping","id":7}                               answered with ok
//	{"op":"refresh","id":10,"token":"eyJ…"}            a fresh token for the session's principal
//
// In-band token refresh: a session opened with a token ends with close
// 3004 "token expired" at its expiry, unless the client sent a refresh
// frame with a fresh token first (on any transport: a WebSocket message,
// a poll or send POST). The token is checked as at admission and must be
// for the same subject (else err 401 / 403; the session goes on with the
// old token). Accepted, the session acts with the new token's grants and
// lives until its expiry; each subscription the new grants no longer
// allow ends first, with an err packet carrying its "ch", code 403 and no
// id. Follow-up requests of the session (poll, send) must then carry the
// new token, as they carry the old one.
//
// Current state on subscribe: on a channel with history, "latest":true
// starts the subscription with the last stored message of each channel
// that matches the pattern, and "last":N (1 to 1000) with the last N
// messages matching it, in order; then the live messages follow, with no
// duplicate and nothing missing at the switch. They are ordinary msg
// packets with cursors, after the ok. A "cursor" wins over both: a
// client that holds one resumes after it (send both, and the cursor once
// you have one). "latest" and "last" together, or N out of range, get
// err 400. On a channel without history the subscription is made (ok
// with "history":false) and a gap packet follows at once, reason
// "channel has no history: its current state is not available". Which
// messages a broker can find: JetStream answers "latest" from its own
// index of the last message per subject; a RabbitMQ stream has no index
// per channel, so the gateway reads it (see package amqpbroker).
//
// A pub is answered with ok only after the broker confirmed the message.
// "mid" is the publisher's id of the message (1 to 64 bytes of printable
// ASCII): a client that publishes again after it got no answer sends the
// same mid, and subscribers get the message once (JetStream drops the
// second copy itself; every node drops a copy whose channel and mid it
// delivered within broker.dedupe_window).
// On the transports that send upstream frames by HTTP POST a frame may also
// carry "n", the client's own upstream counter starting at 1: a frame whose
// n was already applied is skipped (its answer, if it had one, is already
// in the session's packets, which are resent until acknowledged), so a
// retried POST is harmless. A frame whose n skips ahead is refused with
// err 409 and not applied: upstream frames apply in order.
//
// A WebSocket binary frame is read exactly like a text frame (the same JSON),
// for clients that send ArrayBuffers; the server always sends text frames.
// With permessage-deflate negotiated (RFC 7692, no context takeover both
// ways), messages of either side may be compressed; the server compresses
// those whose body reaches the configured threshold.
//
// # Server → client packets
//
// Every packet carries "seq", numbered per session from 1 with no gaps, and a
// type "t". Clients acknowledge the highest seq they hold with an ack frame
// (piggybacked on their next request by the polling transports); the server
// keeps unacknowledged packets of a polling session and sends them again
// when the next request attaches.
//
//	{"seq":1,"t":"hello","v":1,"sid":"n1.7Hq…","hb":25}
//	{"seq":2,"t":"ok","id":1}
//	{"seq":3,"t":"msg","ch":"prices.eur.usd","cur":"1041","data":1.0841}
//	{"seq":4,"t":"msg","ch":"prices.eur.gbp","sub":"prices.*","data":0.8611}
//	{"seq":5,"t":"err","id":4,"code":403,"error":"permission denied: publish to \"bids.lot7\""}
//	{"seq":6,"t":"gap","ch":"prices.*","reason":"history does not reach back","oldest":"977"}
//	{"seq":7,"t":"close","code":3000,"reason":"server shutting down","reconnect":true,"delay":1834}
//
// hello opens every session: "sid" names the session (its first token is the
// node that owns it), "hb" is the heartbeat interval in seconds.
//
// msg is a delivery. "ch" is the concrete channel; "sub" is the subscription
// pattern, present only when it differs from ch. "cur" is the message's
// cursor, present only on channels with history: a client that subscribes
// again with that cursor gets every later message, or a gap packet when
// history no longer reaches back. The payload is exactly one of "data" (a
// JSON value, embedded as is), "text" (a UTF-8 string) or "b64" (bytes,
// standard base64). The message's content type decides when it has one
// (application/json or +json, text/*, application/octet-stream: what the
// publish API and pub frames set, and what AMQP publishers set as
// content_type), so a text published as "42" arrives as text; without one,
// valid JSON is data, other UTF-8 is text, anything else is b64.
//
// err answers a request that failed. Its "code" follows HTTP: 400 malformed
// frame, 403 permission denied, 404 not subscribed, 409 already subscribed,
// 413 payload too large, 422 invalid channel name (the message names the
// rule), 429 a per-session limit was reached, 503 broker unavailable, 500
// anything else. A failed request never ends the session.
//
// gap tells the client that messages on a channel were lost to it (history
// did not reach back, a broker outage on a channel without history, or a
// slow-consumer policy dropped some). "oldest" is the oldest cursor still
// available, when there is one.
//
// close is the last packet of a session. Codes 3000–3999 mean "reconnect"
// (after a jittered delay, resuming from your cursors: "delay" is the
// server's advice in milliseconds, drawn per session so that the clients
// of a node that drains do not all return at once); codes 4000–4999 mean
// "do not reconnect, it will fail again":
//
//	3000 server shutting down        4000 protocol error (bad frames)
//	3001 slow consumer               4001 frame too large (in a body)
//	3002 session expired             4003 forbidden
//	3003 replaced by a newer request 4004 session not found
//	3005 node busy or full           4029 past a limit: sessions per
//	3029 too many new sessions from       address, frames or publishes
//	     this address                     per second
//
// A WebSocket session also ends with a WebSocket close frame carrying the
// same code and reason. A WebSocket client that breaks RFC 6455 is closed
// with the RFC's own codes instead of 4000, in the close packet too: 1002
// (protocol error), 1007 (a text message or close reason that is not
// UTF-8) and 1009 (a message over the size limit, session.max_frame_bytes;
// 4001 is for a frame too large in an HTTP body, answered 413); like
// 4000–4999 they mean "do not reconnect". Heartbeats are transport-level
// and carry no seq: a WebSocket ping, an SSE comment line, an empty poll
// response.
//
// # Transports and URLs
//
// Every transport opens a session at a URL of its own; channels named with
// ch= (repeatable) are subscribed before anything else, and their ok or err
// packets follow hello. Each may say where it starts, with the channel's
// name after a prefix: cursor.CH=41 (resume after cursor 41),
// latest.CH=1 (the latest message of each channel) or last.CH=N (the last
// N), as the sub frame's fields do: ?ch=votes.>&latest.votes.%3E=1. A
// latest. or last. parameter for a channel the URL does not name, or with
// another value, is refused with 400 and a message naming it. Frames the downstream cannot carry go by
// POST /session/{sid}/send (body: a frame or a JSON array of frames;
// answer 204, or 404 {"error":…,"code":4004} for an unknown session).
//
//	GET  /ws                                   WebSocket, both directions
//	GET  /sse?ch=…                             EventSource
//	GET|POST /poll?ch=…                        long-polling: open
//	GET|POST /poll/{sid}?ack=N                 long-polling: next poll
//	GET|POST /xhr_stream?ch=…                  XHR streaming: open
//	GET|POST /xhr_stream/{sid}?ack=N           XHR streaming: next stream
//	GET  /htmlfile?ch=…&cb=NAME                iframe streaming: open
//	GET  /htmlfile/{sid}?cb=NAME&ack=N         iframe streaming: next stream
//	GET  /jsonp?ch=…&cb=NAME                   JSONP polling: open
//	GET  /jsonp/{sid}?cb=NAME&ack=N            JSONP polling: next poll
//	GET  /jsonp_send/{sid}?cb=NAME&d=FRAMES    JSONP upstream
//
// Request per poll. The last eight are the request-per-poll family: the
// session outlives the requests that carry it, and every packet it wrote
// is kept until acknowledged. A request that names a session first applies
// ack=N (as an ack frame would: every packet up to seq N arrived), then
// writes every packet not yet acknowledged, oldest first and with the seq
// it had, then what is new. So a response lost on the way (a dropped
// connection, a proxy timeout) costs nothing: the next request, which
// acknowledges only what really arrived, gets the same packets again. The
// client drops packets whose seq it already holds. A POST to /poll or
// /xhr_stream may carry upstream frames in its body, exactly like
// /session/{sid}/send; they are applied after the ack and before the
// response is written, so their answers ride on this very response.
// Retried frames are harmless when they carry "n".
//
// Long-polling (/poll) and JSONP (/jsonp) answer one batch per request: the
// open request is answered at once (hello and the subscription answers);
// a next poll is held until there is at least one packet, and then carries
// every pending packet. With nothing to send, a poll is answered with an
// empty batch after one to two heartbeat intervals ("hb" in hello): that
// is the heartbeat of a long-poll. A poll body is a JSON array of packets
// (Content-Type: application/json); a JSONP body is /**/NAME([packets]);
// (Content-Type: application/javascript).
//
// XHR streaming (/xhr_stream) and htmlfile (/htmlfile) keep one response
// open and write packets as they come, each write flushed. The response
// that opens an XHR stream names its session in the X-Cometgate-Session
// header (exposed to CORS): behind a proxy that buffers the stream, the
// headers arrive but no packet does, and the client attaches to the same
// session by /poll/{sid}, which gets every packet not yet acknowledged,
// hello included. An XHR stream
// (Content-Type: text/plain; charset=utf-8) starts with 2,047 spaces and a
// newline (a prelude some browsers and proxies need before they deliver
// anything), then has one packet JSON per line; an empty line is a
// heartbeat. An htmlfile stream (Content-Type: text/html; charset=utf-8)
// is an HTML document whose head defines p(x) as parent.NAME(x), about
// 1 KiB of padding, then one <script>p(PACKET);</script> per packet;
// p(null) is a heartbeat. A stream ends after StreamLimit bytes (128 KiB by
// default) and the client opens the next one with its session id and ack;
// a client that keeps streams longer than the session queue bound must
// send ack frames meanwhile. htmlfile does not set document.domain: the
// hosting page must be on the gateway's origin.
//
// Callback names (cb=) are 1 to 64 bytes of dot-separated identifiers of
// ASCII letters, digits, "_" and "$", not starting with a digit
// ("cb", "jQuery3_1", "app.comet.$recv"). Packet JSON has "<", ">", "&",
// U+2028 and U+2029 escaped, so it cannot end a script element.
//
// One request at a time. Only one request carries a session's downstream.
// A newer request for the same session replaces the one holding it: the
// older one ends at once with a transport-level close packet (no seq; it
// ends that request, not the session), 3003 "replaced by a newer request"
// — as [{"t":"close",…}] on a poll, a line or a script on a stream. A
// client whose own loop made the newer request ignores it; a client that
// did not (two tabs sharing one session) should stop polling rather than
// take the session back. Packets the older request had not written go on
// the newer one.
//
// Expiry and errors. A session with no request attached for the
// disconnect delay is closed (3002; nothing can be sent, the client learns
// it from its next request). A request for a session that does not exist
// (ended, expired, or not opened by this family) gets 404
// {"error":"session not found","code":4004}. Refusals carry the close code
// a client acts on: 4000 bad request (the message names the parameter),
// 4001 body too large, 4003 origin not allowed, 4004 session not found,
// 4029 too many sessions from this address, 3000 shutting down (Retry-After,
// reconnect elsewhere), 3029 too many new sessions from this address (429)
// and 3005 node busy (503), both with Retry-After and "delay", the advised
// wait in milliseconds, jittered per answer. XHR transports get them as a JSON error with the
// HTTP status (400, 413, 403, 404, 429, 503). The callback transports
// cannot read a status, so once the callback name is valid every answer
// calls it: JSONP answers 200 with NAME([close packet]), htmlfile answers
// the status with a document that calls p(close packet), and
// /jsonp_send answers NAME({"ok":false,"code":…,"error":…}). A bad callback
// name is a JSON 400.
//
// Headers. Every response of the family carries
// Cache-Control: no-store, no-transform and X-Accel-Buffering: no (nginx
// must not buffer a held or streamed response), and CORS headers with
// credentials for an allowed Origin. The Origin is checked on every
// request; script and iframe loads send none, so JSONP and htmlfile rely on
// the session id being unguessable.
//
// # Authentication
//
// With Options.Tokens set, a request that opens a session may present a
// token (a JWT the application signed; its "cometgate" claim grants
// channel patterns, see gateway/auth.go): as the token query parameter
// (WebSocket and EventSource cannot set headers), an Authorization:
// Bearer header, or the cometgate_token cookie. A token that does not
// verify is refused with 401 {"error":"invalid token: …","code":4401}
// (in a transport's own framing where it has one), and so is a request
// without a token when Options.RequireToken is set. The session acts for
// the token's subject: namespaces whose permission is Token let it
// subscribe and publish within the token's grants. Every later request of
// a request-per-poll session, and POST /session/{sid}/send, must present
// a token of the same subject, else 403 with code 4003 (SockJS: a close
// frame, or 404 for a sender). The session ends with close code 3004
// "token expired" when the token does; the client reconnects with a fresh
// one.
//
// # TCP bridge
//
// GET /tcp/{name} bridges a WebSocket to the TCP target the operator named
// name (Options.Bridge): binary (or text) messages from the client are
// written to the target as their bytes, the target's bytes come back as
// binary messages, and no packets of the wire format are sent. Refusals
// come before the upgrade as JSON: 404 {"error":"unknown TCP target",
// "code":4404}, 400 (4000: a Sec-WebSocket-Protocol offer the bridge cannot
// answer), 403 (4403 "target address not allowed"), 502 (3502 "target
// unreachable"), 503 (3503 "target busy": the node holds the target's
// MaxConnections already). A target with RequireGrant opens only for a
// session whose token names it in the "tcp" grant; others get 403 (code
// 4003).
//
// Subprotocols, as websockify answers them: "binary" when offered; else
// the first offered one of the target's Subprotocols (e.g. STOMP's
// v10.stomp, v11.stomp, v12.stomp), carried as binary; else "base64",
// websockify's text mode, where every message carries base64 text both
// ways. No offer is answered with none. The native /ws speaks none and
// refuses any offer the same way (400, code 4000).
//
// A message from the client over the target's MaxMessageBytes (1 MiB by
// default; the bridge's own limit, not the pub/sub frame limit) closes
// with 1009. The WebSocket closes with 1000 "target closed the connection"
// when the target does, 3520 "connection reset by target" when the target
// resets the connection, 3502 when it breaks otherwise, 1007 for a message
// that is not base64 in base64 mode, 3000 when the node shuts down. A
// SockJS endpoint in tcp mode carries the same stream as byte strings (one
// character U+0000-U+00FF per byte), with the same codes in its close
// frame. bridge.go has the address policy.
package transports
