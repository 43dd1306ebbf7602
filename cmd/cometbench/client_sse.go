package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// EventSource (SSE) client: a hand-written GET on a raw connection (no
// net/http transport goroutines per connection), then "data:" lines read
// from a small bufio.Reader. The gateway writes one data line per event
// (packet JSON has no newline), so each data line is one packet.

func init() { registerTransport("sse", sseTransport{}) }

type sseTransport struct{}

var _ clientTransport = sseTransport{}

func (sseTransport) Open(ctx context.Context, o openOptions) (packetStream, error) {
	conn, err := o.Dial(ctx, hostPort(o.Base))
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	path := "/sse?ch=" + url.QueryEscape(o.Channel)
	req := "GET " + path + " HTTP/1.1\r\nHost: " + o.Base.Host +
		"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		_ = conn.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(conn, o.ReadBuffer)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("sse: reading response head: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = conn.Close()
		return nil, fmt.Errorf("sse: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if len(resp.TransferEncoding) > 0 {
		// The stream is read straight from r below; a chunked body would
		// need de-chunking first. The gateway never chunks it.
		_ = conn.Close()
		return nil, fmt.Errorf("sse: unexpected Transfer-Encoding %v", resp.TransferEncoding)
	}
	_ = conn.SetDeadline(time.Time{})
	return &sseStream{conn: conn, r: r}, nil
}

// sseStream cuts the event stream into packets.
type sseStream struct {
	conn net.Conn
	r    *bufio.Reader
	long []byte // a line longer than r's buffer, assembled
}

var dataPrefix = []byte("data:")

// Next returns the next data line's content (the packet JSON), skipping
// comments (heartbeats), id and retry lines and event boundaries.
func (s *sseStream) Next() ([]byte, error) {
	for {
		line, err := s.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.long = append(s.long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = s.r.ReadSlice('\n')
				s.long = append(s.long, line...)
			}
			line = s.long
		}
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if !bytes.HasPrefix(line, dataPrefix) {
			continue
		}
		line = line[len(dataPrefix):]
		if len(line) > 0 && line[0] == ' ' {
			line = line[1:]
		}
		return line, nil
	}
}

func (s *sseStream) Close() error { return abortClose(s.conn) }

var _ pollable = (*sseStream)(nil)

// Handover gives the connection to the event loop (see pollable).
func (s *sseStream) Handover() (net.Conn, []byte, streamParser) {
	rest, _ := s.r.Peek(s.r.Buffered())
	return s.conn, append([]byte(nil), rest...), &sseParser{}
}

// sseParser cuts data lines out of the bytes the event loop reads.
type sseParser struct {
	left []byte // an incomplete line from the previous read
}

func (p *sseParser) Feed(b []byte, emit func([]byte)) error {
	if len(p.left) > 0 {
		p.left = append(p.left, b...)
		b = p.left
	}
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimRight(b[:i], "\r")
		b = b[i+1:]
		if !bytes.HasPrefix(line, dataPrefix) {
			continue
		}
		line = line[len(dataPrefix):]
		if len(line) > 0 && line[0] == ' ' {
			line = line[1:]
		}
		emit(line)
	}
	if len(b) > 64<<20 {
		return errors.New("sse: a line longer than 64 MiB")
	}
	p.left = keepRest(p.left, b)
	return nil
}
