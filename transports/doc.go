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
//     is their only writer of packets. The hijacked ones (wsSession,
//     sseConn) are gateway.TryWriters: the gateway's write workers write
//     them with one non-blocking write(2) (sockout.go), and a rest the
//     kernel did not take is flushed by a goroutine of the session's own.
//   - One WebSocket connection type (wsconn.go) owns the wire of every
//     WebSocket: RFC 6455 checks, the write lock, deadlines, pings on busy
//     connections, the close handshake, and permessage-deflate on the
//     packet WebSockets (wsdeflate.go: why no context takeover, and how a
//     broadcast message is compressed once and shared by every session
//     after its own seq prefix).
//   - Hijacked connections that are idle (WebSocket, SSE, parked polls and
//     streams) are watched by one epoll poller per node
//     (netpoll_linux.go), with no goroutine per connection; input starts a
//     short-lived reader. Elsewhere, and for the
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
// waits for an idle WebSocket or SSE client, nor for a long-poll or a stream of
// the request-per-poll family (parked: polling.go, "Parked requests"). One epoll instance per node (one
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
// # Wire protocol
//
// The protocol every transport carries (frames, packets, close codes, URLs,
// authentication, the TCP bridge's stream) is specified in PROTOCOL.md in
// this folder, written for client authors.
package transports
