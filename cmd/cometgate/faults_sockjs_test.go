package main

// Fault-injection suite (faults_test.go): SockJS clients of the pubsub
// endpoint, as the unmodified sockjs-client library carries its
// xhr-streaming, xhr-polling and websocket transports, under an
// application that speaks cometgate's frames inside SockJS messages and
// opens a new SockJS session (and subscribes again from its cursor) when
// one closes, with cometgate.js's backoff. sockjs-client itself never
// reconnects: a session ends on a close frame, on an "o" frame for a
// session that is already open ("Server lost session"), on a failed send
// ("Sending error") and on a failed receiving request. The application
// also gives a session up after two heartbeat intervals and 10 s without
// any frame (cometgate.js's rule; sockjs-client has none of its own): the
// server promises an "h" frame every heartbeat_delay on an idle HTTP
// session, and a ping on an idle websocket (as sockjs-node 0.3.24 does;
// a browser answers it without telling the page, and the connection is
// alive while it does).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// sjsClientKind is a sockjs-client transport.
type sjsClientKind int

const (
	sjsWebsocket sjsClientKind = iota
	sjsXHRStreaming
	sjsXHRPolling
)

// sjsConn is one SockJS session of a client.
type sjsConn struct {
	c       *fclient
	kind    sjsClientKind
	base    string // {base}{prefix}/{server}/{session}
	s       *csess
	opened  bool
	helloAt time.Time
	ws      *wsLink
}

func randomSJSSession() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 8)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}

func (x *sjsConn) result(code int, reason string) *sessionResult {
	return &sessionResult{hello: x.s.sid != "", connectedAt: x.helloAt, code: code, reason: reason,
		final: code >= 4000 && code < 5000}
}

// frame handles one SockJS frame; a result means the SockJS session is
// over.
func (x *sjsConn) frame(ctx context.Context, f []byte, at time.Time, node string) *sessionResult {
	c := x.c
	if len(f) == 0 {
		return nil
	}
	switch f[0] {
	case 'o':
		if x.opened {
			// sockjs-client: "The server might have been restarted, and
			// lost track of our connection."
			c.record(cevent{at: at, kind: evBreak, sid: x.s.sid, code: 1006, text: "sockjs: o frame for an open session: Server lost session", node: node})
			return x.result(1006, "Server lost session (a second o frame, via "+node+")")
		}
		x.opened = true
	case 'h':
	case 'a':
		var msgs []string
		if err := json.Unmarshal(f[1:], &msgs); err != nil {
			c.record(cevent{at: at, kind: evBreak, sid: x.s.sid, text: fmt.Sprintf("sockjs: bad a frame %.200q", f)})
			return x.result(1006, "bad a frame")
		}
		for _, m := range msgs {
			p, err := parsePacket([]byte(m), at, node)
			if err != nil {
				c.record(cevent{at: at, kind: evBreak, sid: x.s.sid, text: fmt.Sprintf("sockjs: bad message %.200q", m)})
				continue
			}
			switch x.s.handle(p) {
			case pktHello:
				x.helloAt = at
				if r := x.send(ctx, x.s.subsAfter(nil)); r != nil {
					return r
				}
			case pktJump:
				c.record(cevent{at: at, kind: evBreak, sid: x.s.sid, text: fmt.Sprintf("sockjs: seq jumped from %d to %d", x.s.lastSeq, p.Seq), node: node})
				return x.result(1006, "seq jumped")
			}
		}
	case 'c':
		var cl []any
		_ = json.Unmarshal(f[1:], &cl)
		code, reason := 1006, string(f)
		if len(cl) == 2 {
			if n, ok := cl[0].(float64); ok {
				code = int(n)
			}
			reason, _ = cl[1].(string)
		}
		if x.s.closed == nil {
			c.record(cevent{at: at, kind: evClose, sid: x.s.sid, code: code, text: "sockjs close frame: " + reason, node: node})
		}
		return x.result(code, fmt.Sprintf("sockjs close frame %d %s (via %s)", code, reason, node))
	default:
		c.record(cevent{at: at, kind: evBreak, sid: x.s.sid, text: fmt.Sprintf("sockjs: unknown frame %.200q", f)})
	}
	return nil
}

// send sends frames as SockJS messages: one websocket message, or one
// xhr_send. A failed send ends the session (sockjs-client: "Sending
// error").
func (x *sjsConn) send(ctx context.Context, frames []map[string]any) *sessionResult {
	if len(frames) == 0 {
		return nil
	}
	msgs := make([]string, len(frames))
	for i, f := range frames {
		b, _ := json.Marshal(f)
		msgs[i] = string(b)
	}
	body, _ := json.Marshal(msgs)
	if x.kind == sjsWebsocket {
		if err := x.ws.write(ws.OpText, body); err != nil {
			return x.result(1006, "websocket write: "+err.Error())
		}
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodPost, x.base+"/xhr_send", bytes.NewReader(body))
	req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
	resp, err := x.c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		x.c.record(cevent{kind: evSend, sid: x.s.sid, text: "sockjs xhr_send: " + err.Error()})
		return x.result(1006, "Sending error: "+err.Error())
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	node := resp.Header.Get(headerBackend)
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		x.c.record(cevent{kind: evSend, sid: x.s.sid, code: resp.StatusCode, text: fmt.Sprintf("sockjs xhr_send: HTTP %d %s", resp.StatusCode, bytes.TrimSpace(b)), node: node})
		return x.result(1006, fmt.Sprintf("Sending error: HTTP %d (via %s)", resp.StatusCode, node))
	}
	return nil
}

// runSockJS carries one SockJS session on the given transport.
func runSockJS(kind sjsClientKind) runner {
	return func(ctx context.Context, c *fclient) sessionResult {
		x := &sjsConn{
			c: c, kind: kind, s: newSess(c),
			base: fmt.Sprintf("%s%s/%03d/%s", c.env.base, c.env.sockPrefix, rand.IntN(1000), randomSJSSession()),
		}
		var r *sessionResult
		switch kind {
		case sjsWebsocket:
			r = x.runWebsocket(ctx)
		default:
			r = x.runXHR(ctx)
		}
		if ctx.Err() != nil || r == nil {
			return sessionResult{}
		}
		return *r
	}
}

func (x *sjsConn) runWebsocket(ctx context.Context) *sessionResult {
	c := x.c
	path := strings.TrimPrefix(x.base, c.env.base) + "/websocket"
	l, err := dialWSLink(ctx, c, path)
	if err != nil {
		c.record(cevent{kind: evBreak, text: "sockjs websocket: " + err.Error()})
		return x.result(1006, "sockjs websocket failed: "+err.Error())
	}
	x.ws = l
	defer l.close()
	start, lastRecv := time.Now(), time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-l.in:
			if m.ended {
				if x.s.closed != nil {
					r := x.s.closeResult(x.helloAt)
					return &r
				}
				c.record(cevent{at: m.at, kind: evBreak, sid: x.s.sid, code: m.code, text: "sockjs websocket ended: " + m.text, node: l.node})
				return x.result(1006, "sockjs websocket ended: "+m.text)
			}
			lastRecv = m.at
			if r := x.frame(ctx, m.data, m.at, l.node); r != nil {
				return r
			}
		case pl := <-l.pings:
			lastRecv = time.Now()
			_ = l.write(ws.OpPong, pl)
		case now := <-tick.C:
			if !x.opened && now.Sub(start) > clientConnectLimit {
				return x.result(1006, "no open frame")
			}
			if r := x.send(ctx, x.s.due(now, false)); r != nil {
				return r
			}
			if now.Sub(lastRecv) > 2*x.s.hb+clientRequestSlack {
				c.record(cevent{kind: evBreak, sid: x.s.sid, text: "sockjs websocket: heartbeat timeout"})
				return x.result(1006, "heartbeat timeout")
			}
		}
	}
}

// sjsLine is one line of a receiving response, or its end.
type sjsLine struct {
	data []byte
	at   time.Time
	end  error
}

// runXHR makes receiving requests one after the other (xhr: one frame
// each; xhr_streaming: frames until the response limit).
func (x *sjsConn) runXHR(ctx context.Context) *sessionResult {
	c := x.c
	recv := "/xhr"
	if x.kind == sjsXHRStreaming {
		recv = "/xhr_streaming"
	}
	for ctx.Err() == nil {
		limit := receiveLimit(x.opened, x.s.hb)
		rctx, cancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(rctx, http.MethodPost, x.base+recv, nil)
		c.placeHeader(req.Header)
		timer := time.AfterFunc(limit, cancel)
		resp, err := c.hc.Do(req)
		if err != nil {
			timer.Stop()
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			c.record(cevent{kind: evBreak, sid: x.s.sid, text: "sockjs receive: " + err.Error()})
			return x.result(1006, "receiving request failed: "+err.Error())
		}
		node := resp.Header.Get(headerBackend)
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			timer.Stop()
			cancel()
			c.record(cevent{kind: evBreak, sid: x.s.sid, code: resp.StatusCode, text: fmt.Sprintf("sockjs receive: HTTP %d %s", resp.StatusCode, bytes.TrimSpace(b)), node: node})
			return x.result(1006, fmt.Sprintf("receiving request: HTTP %d (via %s)", resp.StatusCode, node))
		}
		lines := make(chan sjsLine, 1024)
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			hand := func(l sjsLine) bool { return handOver(lines, done, l) }
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			for sc.Scan() {
				timer.Reset(limit)
				if !hand(sjsLine{data: append([]byte(nil), sc.Bytes()...), at: time.Now()}) {
					return
				}
			}
			err := sc.Err()
			if err == nil {
				err = io.EOF
			}
			hand(sjsLine{end: err, at: time.Now()})
		}()
		var out *sessionResult
		tick := time.NewTicker(250 * time.Millisecond)
	read:
		for {
			select {
			case <-ctx.Done():
				break read
			case l := <-lines:
				if l.end != nil {
					if l.end != io.EOF {
						c.record(cevent{at: l.at, kind: evBreak, sid: x.s.sid, text: "sockjs receive broke: " + l.end.Error(), node: node})
						out = x.result(1006, "receiving request broke: "+l.end.Error())
					}
					break read
				}
				if out = x.frame(ctx, bytes.TrimSpace(l.data), l.at, node); out != nil {
					break read
				}
			case now := <-tick.C:
				if out = x.send(ctx, x.s.due(now, false)); out != nil {
					break read
				}
			}
		}
		tick.Stop()
		close(done)
		cancel()
		resp.Body.Close()
		wg.Wait()
		timer.Stop()
		if out != nil || ctx.Err() != nil {
			return out
		}
		if !x.opened {
			c.record(cevent{kind: evBreak, text: "sockjs: a receiving response without an open frame", node: node})
			return x.result(1006, "no open frame")
		}
	}
	return nil
}
