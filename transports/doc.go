// Package transports carries cometgate sessions over the transports browsers
// have: WebSocket and EventSource (SSE) today, and the request-per-poll
// family (long-polling, XHR streaming, iframe/htmlfile, JSONP) on the same
// session layer. It owns the HTTP handlers (chi) and the byte framing of each
// transport; the session itself (queues, numbering, subscriptions,
// permissions) lives in package gateway.
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
//	{"op":"unsub","id":3,"ch":"prices.*"}              unsubscribe
//	{"op":"pub","id":4,"ch":"bids.lot7","data":{"eur":120}}
//	{"op":"pub","id":5,"ch":"chat.room1","text":"hi"}  payload as text
//	{"op":"pub","id":6,"ch":"raw.x","b64":"AAEC"}      payload as base64 bytes
//	{"op":"ack","seq":41}                              every packet up to seq 41 arrived
//	{"op":"ping","id":7}                               answered with ok
//
// A pub is answered with ok only after the broker confirmed the message.
// On the transports that send upstream frames by HTTP POST a frame may also
// carry "n", the client's own upstream counter starting at 1: a frame whose
// n was already applied is acknowledged again but not applied twice, so a
// retried POST is harmless.
//
// A WebSocket binary frame is read exactly like a text frame (the same JSON),
// for clients that send ArrayBuffers; the server always sends text frames.
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
//	{"seq":7,"t":"close","code":3000,"reason":"server shutting down","reconnect":true}
//
// hello opens every session: "sid" names the session (its first token is the
// node that owns it), "hb" is the heartbeat interval in seconds.
//
// msg is a delivery. "ch" is the concrete channel; "sub" is the subscription
// pattern, present only when it differs from ch. "cur" is the message's
// cursor, present only on channels with history: a client that subscribes
// again with that cursor gets every later message, or a gap packet when
// history no longer reaches back. The payload is exactly one of "data" (the
// payload was JSON; it is embedded as is), "text" (UTF-8 that is not JSON)
// or "b64" (other bytes, standard base64).
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
// (after a jittered delay, resuming from your cursors); codes 4000–4999
// mean "do not reconnect, it will fail again":
//
//	3000 server shutting down        4000 protocol error (bad frames)
//	3001 slow consumer               4001 frame too large
//	3002 session expired             4003 forbidden
//	3003 replaced by a newer request 4004 session not found
//
// A WebSocket session also ends with a WebSocket close frame carrying the
// same code and reason. Heartbeats are transport-level and carry no seq: a
// WebSocket ping, an SSE comment line, an empty poll response.
package transports
