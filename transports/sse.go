package transports

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/cometgate/cometgate/gateway"
)

// EventSource (SSE). The handler writes the response head itself on the
// hijacked connection, so net/http's per-request buffers are released as
// with WebSocket, and the body is not chunk-encoded: it is a plain stream
// that ends when the connection closes (HTTP/1.1 with "Connection: close").
// Each packet is one event whose data line is the packet JSON; packet JSON
// never contains a newline, so one data line always suffices. Heartbeats
// are comment lines.
//
// Subscriptions are named in the URL (?ch=a&ch=b), each optionally resuming
// from a cursor (&cursor.a=41) or starting with the current state
// (&latest.a=1, &last.a=10; see urlStarts); later requests (sub, unsub,
// pub, ack) go by POST /session/{sid}/send.
//
// Resuming with a plain EventSource: the stream's first event, and every
// msg packet with a cursor on a URL subscription, set the event id to the
// cursors of all URL subscriptions, in URL order, comma-separated
// ("41,~,7": "~" is gateway.ResumeCursor, for a channel that has no
// history or no message yet). EventSource sends the last id back as
// Last-Event-ID when it reconnects by itself to the same URL, and the new
// session resumes every URL subscription from its cursor, or, for "~",
// tells the client with a gap packet that messages published meanwhile
// may be lost: no loss is silent, on channels without history either. One
// channel's cursor alone would not do: deliveries on different channels
// are not ordered against each other.

type sseConn struct {
	n    *node
	conn net.Conn
	sess *gateway.Session
	raw  syscall.RawConn // the socket's descriptor access (see wsConn.raw)
	reg  *pollReg        // set when the poller watches the connection
	// wmu is the write lock; a TryWritePackets that leaves a rest keeps
	// it until Flush.
	wmu       sync.Mutex
	out       sockOut // guarded by wmu
	closeOnce sync.Once

	// The resume id: the URL subscriptions and their latest cursors, and
	// whether the stream has set it yet. Only the session's writer touches
	// them.
	idSent      bool
	urlChannels []string
	cursors     []string
}

// sseResumeCursors works out the cursor of each URL subscription: from
// Last-Event-ID when it is a resume id for the same list of channels
// (newer than the URL), else from the cursor.CH parameters.
func sseResumeCursors(r *http.Request, channels []string) []string {
	cursors := make([]string, len(channels))
	q := r.URL.Query()
	for i, ch := range channels {
		cursors[i] = q.Get("cursor." + ch)
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("lastEventId") // EventSource polyfills send it here
	}
	if last != "" {
		if ids := strings.Split(last, ","); len(ids) == len(channels) {
			for i, id := range ids {
				if id != "" {
					cursors[i] = id
				}
			}
		}
	}
	return cursors
}

var (
	_ gateway.Transport   = (*sseConn)(nil)
	_ gateway.Backlogger  = (*sseConn)(nil)
	_ gateway.BatchWriter = (*sseConn)(nil)
	_ gateway.HotMemory   = (*sseConn)(nil)
)

// HotMemory is where the memory a write touches lies: the connection,
// whatever lines its 144 bytes straddle (gateway.HotMemory).
func (c *sseConn) HotMemory() [3]uintptr {
	p := uintptr(unsafe.Pointer(c))
	return [3]uintptr{p, p + 64, p + 128}
}

// Backlog is what the kernel still holds of the stream's writes (see
// wsSession.Backlog).
func (c *sseConn) Backlog() int { return socketBacklog(c.raw) }

// sseHeaders gives set the headers of an event stream's response to r.
func sseHeaders(r *http.Request, set func(name, value string)) {
	set("Content-Type", "text/event-stream; charset=utf-8")
	set("Cache-Control", "no-store, no-transform")
	set("X-Accel-Buffering", "no")
	set("X-Content-Type-Options", "nosniff")
	set("Connection", "close")
	if origin := r.Header.Get("Origin"); origin != "" {
		// Allowed by the gate; EventSource needs these for cross-origin
		// streams (withCredentials included).
		set("Access-Control-Allow-Origin", sanitizeHeader(origin))
		set("Vary", "Origin")
		if origin != "null" { // a sandboxed frame or local file: no credentials
			set("Access-Control-Allow-Credentials", "true")
		}
	}
}

// refuseSSE answers a refused request for an event stream. A browser's
// EventSource cannot read the status or the body of a refused stream (it
// reports an error, and cometgate.js 1006), so a client that asks for it
// with refusal=close (cometgate.js does) gets a stream of one event, the
// transport-level close packet with the code, the reason and the retry
// advice, and the end (with a retry field far off: the client closes the
// EventSource when it reads the packet). A page from an Origin the node
// does not allow (403), and a client that does not ask, get the JSON
// refusal and its status.
func (h sseHandler) refuseSSE(w http.ResponseWriter, r *http.Request, ref *refusal) {
	if !h.gate.inBand(r) {
		ref.writeJSON(w)
		return
	}
	packet := ref.closePacket(w.Header())
	hdr := w.Header()
	sseHeaders(r, hdr.Set)
	body := append(append([]byte("retry: 600000\n\ndata: "), packet...), "\n\n"...)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// sseHandler serves GET /sse.
type sseHandler struct{ *node }

func (h sseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	channels := r.URL.Query()["ch"]
	if len(channels) > h.gw.Config().MaxSubscriptions {
		writeError(w, http.StatusBadRequest, "too many channels in the URL")
		return
	}
	starts, err := urlStarts(r.URL.Query(), channels)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	sess, ref := h.gate.open(r, sessionSpec{transport: "sse"})
	if ref != nil {
		h.refuseSSE(w, r, ref)
		return
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		sess.Close(gateway.DisconnectGone())
		writeError(w, http.StatusInternalServerError, "streaming not supported on this connection")
		return
	}
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	sseHeaders(r, func(name, value string) {
		head.WriteString(name)
		head.WriteString(": ")
		head.WriteString(value)
		head.WriteString("\r\n")
	})
	// The retry hint spreads reconnects after a node goes away: drawn
	// for each stream, so the EventSources of a node that fails do not
	// all come back at the same moment.
	fmt.Fprintf(&head, "\r\nretry: %d\n\n", 1000+rand.N(4000))
	cursors := sseResumeCursors(r, channels)
	c := &sseConn{n: h.node, conn: conn, sess: sess, raw: rawConn(conn)}
	if len(channels) > 0 {
		c.urlChannels, c.cursors = channels, slices.Clone(cursors)
	}
	if _, err := c.write(head.Bytes()); err != nil {
		_ = conn.Close()
		sess.Close(gateway.DisconnectGone())
		return
	}
	// The poller watches for the client going away, or, where there is
	// none, a goroutine waits in a read. Either counts as a reader from
	// before the session can close the connection.
	c.reg = h.watchIdle(conn, c.onInput)
	h.readers.Add(1)
	if err := sess.Attach(c, false); err != nil {
		c.Close(gateway.DisconnectGone())
		if c.reg == nil {
			h.readers.Done()
		}
		return
	}
	ctx := context.Background()
	for i, ch := range channels {
		starts[i].Cursor = cursors[i]
		sess.Subscribe(ctx, ch, starts[i])
	}
	if c.reg != nil {
		if err := c.reg.arm(); err != nil {
			sess.Close(gateway.DisconnectGone())
		}
		return
	}
	go func() {
		defer h.readers.Done()
		c.watch()
	}()
}

// sanitizeHeader drops characters that could end a header line.
func sanitizeHeader(v string) string {
	return string(bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, []byte(v)))
}

// watch waits for the client to go away. An EventSource sends nothing after
// its request, so this read returns only when the connection ends.
func (c *sseConn) watch() {
	var b [1]byte
	for {
		if _, err := c.conn.Read(b[:]); err != nil {
			c.sess.Close(gateway.DisconnectGone())
			return
		}
	}
}

// onInput is watch for a polled connection: the client closed it (or
// sent something, which is dropped) since the last look.
func (c *sseConn) onInput() {
	var b [64]byte
	_ = c.conn.SetReadDeadline(time.Now().Add(time.Second)) // input is there; never wait long
	if _, err := c.conn.Read(b[:]); err != nil {
		c.sess.Close(gateway.DisconnectGone())
		c.Close(gateway.DisconnectGone())
		return
	}
	if err := c.reg.arm(); err != nil {
		c.sess.Close(gateway.DisconnectGone())
	}
}

func (c *sseConn) Name() string { return "sse" }

func (c *sseConn) WritePackets(pkts []gateway.Packet) (int, error) {
	return c.writePackets(pkts, false, nil)
}

// TryWritePackets is WritePackets for the gateway's write workers: it
// does not wait for the client (gateway.TryWriter).
func (c *sseConn) TryWritePackets(pkts []gateway.Packet, _ int64) (int, error) {
	return c.writePackets(pkts, true, nil)
}

// QueuePackets is TryWritePackets for a worker that batches its sends
// (gateway.BatchWriter).
func (c *sseConn) QueuePackets(pkts []gateway.Packet, _ int64, q *gateway.SendQueue) (int, error) {
	return c.writePackets(pkts, true, q)
}

// EndQueued completes a write QueuePackets queued, releasing the write
// lock unless a rest waits for Flush.
func (c *sseConn) EndQueued(sent int, err error) (int, error) {
	return c.out.endQueued(sent, err, &c.wmu)
}

// Flush writes what a TryWritePackets left and releases the write lock
// it kept.
func (c *sseConn) Flush() (int, error) {
	defer c.wmu.Unlock()
	return c.out.flush(c.conn, c.n.opts.WriteTimeout)
}

// writePackets writes pkts, without waiting for the client with try set,
// and queued on q when it is not nil (see QueuePackets).
func (c *sseConn) writePackets(pkts []gateway.Packet, try bool, q *gateway.SendQueue) (int, error) {
	size := 0
	for _, p := range pkts {
		size += p.Size() + len("data: \n\n")
		if p.Cursor() != "" {
			size += len("id: \n") + len(c.urlChannels)*(len(p.Cursor())+1)
		}
	}
	buf := getBuffer(size + 8*len(c.urlChannels))
	b := *buf
	for _, p := range pkts {
		if c.updateCursor(p) || (!c.idSent && len(c.urlChannels) > 0) {
			c.idSent = true
			b = append(b, "id: "...)
			for i, cur := range c.cursors {
				if i > 0 {
					b = append(b, ',')
				}
				if cur == "" {
					cur = gateway.ResumeCursor
				}
				b = append(b, cur...)
			}
			b = append(b, '\n')
		}
		b = append(b, "data: "...)
		b = p.AppendJSON(b)
		b = append(b, '\n', '\n')
	}
	*buf = b
	if !try {
		n, err := c.write(b)
		putBuffer(buf)
		return n, err
	}
	c.wmu.Lock()
	if q != nil && c.raw != nil {
		return c.out.queue(q, c.raw, buf)
	}
	n, err := c.out.try(c.raw, buf)
	if err != gateway.ErrWriteBlocked {
		c.wmu.Unlock()
		putBuffer(buf) // otherwise the connection keeps it until Flush
	}
	return n, err
}

// updateCursor records the cursor of a msg packet on a URL subscription
// and reports whether the resume id changed.
func (c *sseConn) updateCursor(p gateway.Packet) bool {
	cur := p.Cursor()
	if cur == "" {
		return false
	}
	for i, ch := range c.urlChannels {
		if ch == p.Pattern() {
			c.cursors[i] = cur
			return true
		}
	}
	return false
}

func (c *sseConn) write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.out.write(c.conn, b, time.Now().UnixNano(), c.n.opts.WriteTimeout)
}

var sseHeartbeat = []byte(":\n\n")

func (c *sseConn) WriteHeartbeat() error {
	_, err := c.write(sseHeartbeat)
	return err
}

// Close ends the stream. The close packet was the last event; an SSE stream
// has no close frame of its own.
func (c *sseConn) Close(gateway.Disconnect) {
	c.closeOnce.Do(func() {
		if c.reg != nil {
			// A polled connection leaves the poller before it is closed,
			// and is no longer a reader.
			c.reg.remove()
			_ = c.conn.Close()
			c.n.readers.Done()
			return
		}
		_ = c.conn.Close()
	})
}
