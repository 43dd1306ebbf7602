package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// The request-per-poll transports: long-polling (/poll) and XHR streaming
// (/xhr_stream). A session outlives its requests; each request after the
// first names the session and acknowledges the highest seq received
// (ack=N), and the gateway writes again whatever was not acknowledged, so
// the client drops packets whose seq it already has. Requests go over one
// keep-alive connection per session, written by hand (no net/http
// transport goroutines per session); a session keeps one reader goroutine.

func init() {
	registerTransport("poll", pollTransport{path: "/poll", streaming: false})
	registerTransport("xhr_stream", pollTransport{path: "/xhr_stream", streaming: true})
}

type pollTransport struct {
	path      string
	streaming bool
}

var _ clientTransport = pollTransport{}

func (t pollTransport) Open(ctx context.Context, o openOptions) (packetStream, error) {
	s := &pollStream{t: t, o: o, base: o.Base}
	if dl, ok := ctx.Deadline(); ok {
		s.deadline = dl
	}
	if err := s.request(ctx, t.path+"?ch="+url.QueryEscape(o.Channel)); err != nil {
		s.closeConn()
		return nil, err
	}
	s.deadline = time.Time{}
	if t.streaming {
		// The stream goes on on this connection: the opening deadline
		// must not end it later (an idle stream would read until then).
		s.mu.Lock()
		if s.conn != nil {
			_ = s.conn.SetDeadline(time.Time{})
		}
		s.mu.Unlock()
	}
	return s, nil
}

// pollStream is one session of a polling transport.
type pollStream struct {
	t        pollTransport
	o        openOptions
	base     *url.URL
	deadline time.Time // bounds the opening request only

	mu     sync.Mutex // guards conn and closed against Close
	conn   net.Conn
	closed bool

	br      *bufio.Reader
	body    io.ReadCloser // the current response body
	bodyR   *bufio.Reader // XHR streaming: lines of body
	queue   [][]byte      // long-polling: packets of the last response
	sid     string        // from hello
	lastSeq uint64        // highest seq received
	line    []byte        // scratch for a long line
}

func (s *pollStream) closeConn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		_ = abortClose(s.conn)
		s.conn = nil
	}
}

func (s *pollStream) Close() error {
	s.mu.Lock()
	s.closed = true
	c := s.conn
	s.conn = nil
	s.mu.Unlock()
	if c != nil {
		return abortClose(c)
	}
	return nil
}

// request sends GET path on the session's connection (dialling it again
// if the server closed it) and reads the response head. A long-poll
// response is read whole into the queue; a stream's body is left to Next.
func (s *pollStream) request(ctx context.Context, path string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	conn := s.conn
	s.mu.Unlock()
	if conn == nil {
		c, err := s.o.Dial(ctx, hostPort(s.base))
		if err != nil {
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return net.ErrClosed
		}
		s.conn, conn = c, c
		s.mu.Unlock()
		s.br = bufio.NewReaderSize(c, s.o.ReadBuffer)
	}
	_ = conn.SetDeadline(s.deadline)
	req := "GET " + path + " HTTP/1.1\r\nHost: " + s.base.Host + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		return fmt.Errorf("%s: reading response: %w", s.t.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return fmt.Errorf("%s: %s: %s", s.t.path, resp.Status, bytes.TrimSpace(b))
	}
	if resp.Close {
		defer s.closeConn() // the next request needs a new connection
	}
	if s.t.streaming {
		s.body = resp.Body
		s.bodyR = bufio.NewReaderSize(resp.Body, s.o.ReadBuffer)
		return nil
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("%s: reading response: %w", s.t.path, err)
	}
	var pkts []json.RawMessage
	if err := json.Unmarshal(b, &pkts); err != nil {
		return fmt.Errorf("%s: response is not a JSON array of packets: %w", s.t.path, err)
	}
	for _, p := range pkts {
		s.queue = append(s.queue, p)
	}
	return nil
}

// Next returns the next packet not seen before.
func (s *pollStream) Next() ([]byte, error) {
	for {
		p, err := s.next()
		if err != nil {
			return nil, err
		}
		seq, ok := packetSeq(p)
		if !ok {
			continue // a transport-level packet without seq
		}
		if seq <= s.lastSeq {
			continue // sent again: the ack did not arrive before it was written
		}
		s.lastSeq = seq
		if s.sid == "" && bytes.Equal(packetType(p), []byte("hello")) {
			if c, err := decodeCtl(p); err == nil {
				s.sid = c.Sid
			}
		}
		return p, nil
	}
}

func (s *pollStream) next() ([]byte, error) {
	for {
		if !s.t.streaming && len(s.queue) > 0 {
			p := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			return p, nil
		}
		if s.t.streaming && s.bodyR != nil {
			line, err := s.readLine()
			if err == nil {
				if line = bytes.TrimSpace(line); len(line) > 0 {
					return line, nil
				}
				continue // the prelude or a heartbeat
			}
			if !errors.Is(err, io.EOF) {
				return nil, err
			}
			s.body.Close() // the stream reached its limit: open the next
			s.body, s.bodyR = nil, nil
		}
		if s.sid == "" {
			return nil, errors.New(s.t.path + ": no hello packet")
		}
		path := s.t.path + "/" + url.PathEscape(s.sid) + "?ack=" + strconv.FormatUint(s.lastSeq, 10)
		if err := s.request(context.Background(), path); err != nil {
			return nil, err
		}
	}
}

func (s *pollStream) readLine() ([]byte, error) {
	line, err := s.bodyR.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.line = append(s.line[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = s.bodyR.ReadSlice('\n')
			s.line = append(s.line, line...)
		}
		line = s.line
	}
	return line, err
}

// packetSeq reads the "seq" a packet starts with ({"seq":N,…}).
func packetSeq(p []byte) (uint64, bool) {
	const prefix = `{"seq":`
	if !bytes.HasPrefix(p, []byte(prefix)) {
		return 0, false
	}
	v, n := parseUint(p[len(prefix):])
	return v, n > 0
}
