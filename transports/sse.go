package transports

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// EventSource (SSE). The handler writes the response head itself on the
// hijacked connection, so net/http's per-request buffers are released as
// with WebSocket, and the body is not chunk-encoded: it is a plain stream
// that ends when the connection closes (HTTP/1.1 with "Connection: close").
// Each packet is one event whose data line is the packet JSON; packet JSON
// never contains a newline, so one data line always suffices. A msg packet
// with a cursor also sets the event id, so a browser's EventSource sends
// Last-Event-ID when it reconnects by itself. Heartbeats are comment lines.
//
// Subscriptions are named in the URL (?ch=a&ch=b); later requests (sub,
// unsub, pub, ack) go by POST /session/{sid}/send.

type sseConn struct {
	srv       *Server
	conn      net.Conn
	wmu       sync.Mutex
	closeOnce sync.Once
}

var _ gateway.Transport = (*sseConn)(nil)

func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	channels := r.URL.Query()["ch"]
	if len(channels) > s.gw.Config().MaxSubscriptions {
		writeError(w, http.StatusBadRequest, "too many channels in the URL")
		return
	}
	sess := s.openSession(w, r, "sse", false)
	if sess == nil {
		return
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		sess.Close(gateway.DisconnectGone())
		writeError(w, http.StatusInternalServerError, "streaming not supported on this connection")
		return
	}
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n" +
		"Content-Type: text/event-stream; charset=utf-8\r\n" +
		"Cache-Control: no-store, no-transform\r\n" +
		"X-Accel-Buffering: no\r\n" +
		"X-Content-Type-Options: nosniff\r\n" +
		"Connection: close\r\n")
	if origin := r.Header.Get("Origin"); origin != "" {
		// Allowed by openSession; EventSource needs these for cross-origin
		// streams (withCredentials included).
		head.WriteString("Access-Control-Allow-Origin: " + sanitizeHeader(origin) + "\r\n" +
			"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n")
	}
	// The retry hint spreads reconnects after a node goes away.
	head.WriteString("\r\nretry: 2000\n\n")
	c := &sseConn{srv: s, conn: conn}
	if _, err := c.write(head.Bytes()); err != nil {
		_ = conn.Close()
		sess.Close(gateway.DisconnectGone())
		return
	}
	if err := sess.Attach(c, false); err != nil {
		_ = conn.Close()
		return
	}
	ctx := context.Background()
	for _, ch := range channels {
		sess.Subscribe(ctx, ch, "")
	}
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		c.watch(sess)
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
func (c *sseConn) watch(sess *gateway.Session) {
	var b [1]byte
	for {
		if _, err := c.conn.Read(b[:]); err != nil {
			sess.Close(gateway.DisconnectGone())
			return
		}
	}
}

func (c *sseConn) Name() string { return "sse" }

func (c *sseConn) WritePackets(pkts []gateway.Packet) (int, error) {
	size := 0
	for _, p := range pkts {
		size += p.Size() + len("id: \ndata: \n\n") + len(p.Cursor())
	}
	buf := getBuffer(size)
	b := *buf
	for _, p := range pkts {
		if cur := p.Cursor(); cur != "" {
			b = append(b, "id: "...)
			b = append(b, cur...)
			b = append(b, '\n')
		}
		b = append(b, "data: "...)
		b = p.AppendJSON(b)
		b = append(b, '\n', '\n')
	}
	n, err := c.write(b)
	*buf = b
	putBuffer(buf)
	return n, err
}

func (c *sseConn) write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.srv.opts.WriteTimeout))
	return c.conn.Write(b)
}

var sseHeartbeat = []byte(":\n\n")

func (c *sseConn) WriteHeartbeat() error {
	_, err := c.write(sseHeartbeat)
	return err
}

// Close ends the stream. The close packet was the last event; an SSE stream
// has no close frame of its own.
func (c *sseConn) Close(gateway.Disconnect) {
	c.closeOnce.Do(func() { _ = c.conn.Close() })
}
