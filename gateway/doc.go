// Package gateway holds cometgate's sessions and fans broker messages out
// to them. It knows no HTTP: package transports carries sessions through
// the Transport interface defined here.
//
// A Gateway is one node. Its hub holds one broker subscription per pattern
// in use, shared by the sessions on it, and encodes each message once (a
// Body: the packet minus its per-session seq). The broker's delivery
// goroutine hands the Body to the node's write workers, one per GOMAXPROCS
// (writers.go): each session belongs to one worker, which appends a
// pointer to the session's bounded queue and then writes every session
// with something pending, everything it has in one write, without ever
// waiting for a client. So fan-out never waits for a client, one hot
// channel uses every core, and a worker that falls behind under load
// writes several messages per system call. A Session is one client:
// subscriptions, queue, packet numbering. A transport opens it
// (Gateway.Open), attaches a Transport as its downstream (Attach) and
// feeds it frames (HandleFrame); many requests may carry one session.
// Rules and the session's Principal decide where it may subscribe and
// publish; Nodes is the table of the nodes sharing the broker.
//
// Goroutines (the Gateway owns them all; Shutdown waits for them): the
// write workers, only while they have work; a session's own writer, only
// while a write to it would wait (a slow client, a full socket buffer) or
// its downstream cannot be written without waiting (TryWriter), draining
// the whole queue into one WritePackets per round; its publisher, while
// its client's publishes wait for the broker (in order); one heartbeat
// ticker per interval, for the sessions that wrote nothing for that long;
// a replay per resumed subscription; a closer for a slow consumer met on
// the fan-out path. An idle session has no goroutine. One writer per
// session at a time (a worker, or its own goroutine): WritePackets,
// TryWritePackets, QueuePackets (with its EndQueued), Flush and
// WriteHeartbeat are never concurrent; Transport.Close may come at any
// time. On Linux a worker hands the sends of up to 64 sessions' writes
// to the kernel in one io_uring submission (sendbatch.go).
//
// Retain and ack: a session opened with OpenOptions.Retain (request-per-poll
// transports) keeps written packets until the client acks their seq; the
// next request gets them again, with the same seq, before anything new.
// Unacked packets count against the queue bound; without a request the
// session waits for one for its disconnect delay. Raw data: transports
// carrying bytes (SockJS echo, the TCP bridge) queue them with SendData,
// which waits while the queue is full: backpressure on the source.
//
// Resume: on channels with broker history, each message carries a cursor.
// A subscription with a cursor joins the live fan-out at once, but while a
// replay after the cursor runs (throttled by the queue: a slow client
// slows its replay) its live messages are buffered, not queued. At the end
// of a round the buffered messages the replay did not reach are queued in
// order and the subscription is live, under the lock delivery takes, so
// nothing falls between; only a buffer that overflowed the replay limit
// costs another round. Messages at or before the last position queued are
// dropped (no duplicates); what cannot be recovered gets a gap packet,
// never silence.
//
// Slow consumers: when a message would overflow a queue, the namespace's
// SlowPolicy decides: SlowDisconnect (default) closes with DisconnectSlow
// and the client resumes from its cursors; SlowDropOldest drops the
// pattern's oldest queued messages and queues a gap packet; SlowConflate
// replaces the channel's queued message with the newest.
//
// A session ends with its close packet, the downstream's Close, the release
// of its subscriptions, then Done; its states are tabled on sessionState.
package gateway
