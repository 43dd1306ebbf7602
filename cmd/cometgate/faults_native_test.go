package main

// Fault-injection suite (faults_test.go): the clients of the native
// transports, WebSocket, SSE and the request-per-poll family (long-polling,
// XHR streaming, htmlfile, JSONP), each as web/cometgate.js carries it (the
// callback families, which cometgate.js does not speak, by the same rules
// as its request-per-poll transports).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// ---- WebSocket ------------------------------------------------------------

// wsIn is what a WebSocket reader hands the client's loop.
type wsIn struct {
	data  []byte
	at    time.Time
	err   error // the connection ended (closeCode set for a close frame)
	code  int
	text  string
	ended bool
}

// wsLink is a client WebSocket: a reader goroutine that hands text
// messages and pings to the loop, which alone writes.
type wsLink struct {
	conn  net.Conn
	in    chan wsIn
	pings chan []byte
	done  chan struct{} // closed by close: the reader stops handing over
	wg    sync.WaitGroup
	node  string
}

// dialWSLink opens a WebSocket through the balancer.
func dialWSLink(ctx context.Context, c *fclient, path string) (*wsLink, error) {
	h := http.Header{}
	c.placeHeader(h)
	l := &wsLink{in: make(chan wsIn, 1024), pings: make(chan []byte, 8), done: make(chan struct{})}
	d := ws.Dialer{
		Header:  ws.HandshakeHeaderHTTP(h),
		Timeout: clientConnectLimit,
		OnHeader: func(key, value []byte) error {
			if strings.EqualFold(string(key), headerBackend) {
				l.node = string(value)
			}
			return nil
		},
	}
	dctx, cancel := context.WithTimeout(ctx, clientConnectLimit)
	defer cancel()
	conn, br, _, err := d.Dial(dctx, c.env.wsBase+path)
	if err != nil {
		if l.node != "" {
			return nil, fmt.Errorf("%w (via %s)", err, l.node)
		}
		return nil, err
	}
	if br != nil {
		conn = &bufferedConn{Conn: conn, r: br}
	}
	l.conn = conn
	l.wg.Add(1)
	go l.read()
	return l, nil
}

func (l *wsLink) hand(m wsIn) bool { return handOver(l.in, l.done, m) }

// read reads server frames: text (and binary) messages, pings, the close
// frame; fragmented messages are put together.
func (l *wsLink) read() {
	defer l.wg.Done()
	r := bufio.NewReaderSize(l.conn, 64<<10)
	var msg []byte
	for {
		hdr, err := ws.ReadHeader(r)
		if err != nil {
			l.hand(wsIn{err: err, ended: true, code: 1006, text: err.Error(), at: time.Now()})
			return
		}
		if hdr.Length > 16<<20 {
			l.hand(wsIn{ended: true, code: 1009, text: fmt.Sprintf("a %d-byte frame", hdr.Length), at: time.Now()})
			return
		}
		payload := make([]byte, hdr.Length)
		if _, err := io.ReadFull(r, payload); err != nil {
			l.hand(wsIn{err: err, ended: true, code: 1006, text: err.Error(), at: time.Now()})
			return
		}
		if hdr.Masked {
			ws.Cipher(payload, hdr.Mask, 0)
		}
		switch hdr.OpCode {
		case ws.OpPing:
			select {
			case l.pings <- payload:
			default:
			}
		case ws.OpPong:
		case ws.OpClose:
			code, text := 1005, ""
			if len(payload) >= 2 {
				code, text = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
			}
			l.hand(wsIn{ended: true, code: code, text: "close frame: " + text, at: time.Now()})
			return
		default: // text, binary, continuation
			msg = append(msg, payload...)
			if hdr.Fin {
				if !l.hand(wsIn{data: msg, at: time.Now()}) {
					return
				}
				msg = nil
			}
		}
	}
}

// write sends one frame in a single write.
func (l *wsLink) write(op ws.OpCode, payload []byte) error {
	var b bytes.Buffer
	f := ws.MaskFrameInPlace(ws.NewFrame(op, true, payload))
	if err := ws.WriteFrame(&b, f); err != nil {
		return err
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := l.conn.Write(b.Bytes())
	return err
}

func (l *wsLink) text(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return l.write(ws.OpText, b)
}

// close ends the connection (with a close frame, as a page's close()
// would) and waits for the reader.
func (l *wsLink) close() {
	close(l.done)
	_ = l.write(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "client closed"))
	_ = l.conn.Close()
	l.wg.Wait()
}

// runWS carries one session over /ws: subscriptions after the hello, acks
// as frames, pongs, and the liveness rule of cometgate.js.
func runWS(ctx context.Context, c *fclient) sessionResult {
	start := time.Now()
	l, err := dialWSLink(ctx, c, "/ws")
	if err != nil {
		c.record(cevent{kind: evBreak, text: "websocket: " + err.Error()})
		return sessionResult{code: 1006, reason: "websocket failed: " + err.Error()}
	}
	defer l.close()
	s := newSess(c)
	var helloAt time.Time
	live := liveness{lastRecv: time.Now()}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	res := func(code int, reason string) sessionResult {
		return sessionResult{hello: s.sid != "", connectedAt: helloAt, code: code, reason: reason}
	}
	send := func(frames []map[string]any) error {
		for _, f := range frames {
			if err := l.text(f); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return sessionResult{}
		case m := <-l.in:
			if m.ended {
				if s.closed != nil {
					return s.closeResult(helloAt)
				}
				c.record(cevent{at: m.at, kind: evBreak, sid: s.sid, code: m.code, text: "websocket ended: " + m.text, node: l.node})
				return res(m.code, "websocket ended: "+m.text)
			}
			live.lastRecv = m.at
			p, err := parsePacket(m.data, m.at, l.node)
			if err != nil {
				c.record(cevent{at: m.at, kind: evBreak, sid: s.sid, text: fmt.Sprintf("bad packet %q", m.data)})
				continue
			}
			switch s.handle(p) {
			case pktHello:
				helloAt = p.at
				if err := send(s.subsAfter(nil)); err != nil {
					return res(1006, "websocket write: "+err.Error())
				}
			case pktJump:
				c.record(cevent{at: m.at, kind: evBreak, sid: s.sid, text: fmt.Sprintf("seq jumped from %d to %d", s.lastSeq, p.Seq)})
				return res(1006, "seq jumped")
			case pktClosed:
				return s.closeResult(helloAt)
			}
		case pl := <-l.pings:
			_ = l.write(ws.OpPong, pl)
		case now := <-tick.C:
			if s.sid == "" {
				if now.Sub(start) > clientConnectLimit {
					return res(1006, "no hello")
				}
				continue
			}
			frames := s.due(now, true)
			ping, dead := live.check(now, s)
			if dead {
				c.record(cevent{kind: evBreak, sid: s.sid, text: "websocket: heartbeat timeout"})
				return res(1006, "heartbeat timeout")
			}
			if ping != nil {
				frames = append(frames, ping)
			}
			if err := send(frames); err != nil {
				return res(1006, "websocket write: "+err.Error())
			}
		}
	}
}

// liveness is cometgate.js's rule for the transports whose heartbeats a
// browser page cannot see (WebSocket pings, SSE comments): after one
// silent heartbeat interval the client pings (a ping frame, answered with
// ok), and it gives the connection up when nothing at all arrived for
// another interval (at least 10 s) after that.
type liveness struct {
	lastRecv time.Time
	pingAt   time.Time
}

// check returns a ping frame to send, or dead.
func (l *liveness) check(now time.Time, s *csess) (ping map[string]any, dead bool) {
	if !l.pingAt.IsZero() {
		if !l.lastRecv.Before(l.pingAt) {
			l.pingAt = time.Time{}
		} else {
			return nil, now.Sub(l.pingAt) > max(s.hb, 10*time.Second)
		}
	}
	if now.Sub(l.lastRecv) >= s.hb {
		l.pingAt = now
		s.nextID++
		return map[string]any{"op": "ping", "id": s.nextID}, false
	}
	return nil, false
}

// ---- upstream by POST ----------------------------------------------------

// upstream sends a session's frames by POST /session/{sid}/send (or
// /jsonp_send), one batch at a time, numbered with "n" and retried with the
// same numbers (cometgate.js's _post/_upRetry). The client's loop calls
// pump; a POST is synchronous, the downstream reader goes on meanwhile.
type upstream struct {
	c        *fclient
	s        *csess
	jsonp    bool
	queue    []map[string]any // not numbered yet
	batch    []map[string]any // numbered, on its way
	nextTry  time.Time
	failures int
}

func (u *upstream) add(frames []map[string]any) {
	for _, f := range frames {
		if f["op"] == "ack" { // only the newest matters
			q := u.queue[:0]
			for _, o := range u.queue {
				if o["op"] != "ack" {
					q = append(q, o)
				}
			}
			u.queue = q
		}
		u.queue = append(u.queue, f)
	}
}

// pump makes one attempt when one is due. gone reports a 404: the session
// does not exist where the request landed (cometgate.js then gives the
// session up).
func (u *upstream) pump(ctx context.Context) (gone bool, why string) {
	if u.s.sid == "" || time.Now().Before(u.nextTry) {
		return false, ""
	}
	if u.batch == nil {
		if len(u.queue) == 0 {
			return false, ""
		}
		u.batch = u.s.number(u.queue)
		u.queue = nil
	}
	body, _ := json.Marshal(u.batch)
	status, node, detail := u.post(ctx, body)
	if ctx.Err() != nil {
		return false, ""
	}
	switch {
	case status >= 200 && status < 300:
		u.batch, u.failures = nil, 0
	case status == http.StatusNotFound:
		u.c.record(cevent{kind: evSend, sid: u.s.sid, code: 404, text: "send: " + detail, node: node})
		return true, fmt.Sprintf("session not found by a send (via %s): %s", node, detail)
	case status == 0 || status == 408 || status == 429 || status >= 500:
		u.c.record(cevent{kind: evSend, sid: u.s.sid, code: status, text: "send: " + detail, node: node})
		u.nextTry = time.Now().Add(backoff(u.failures, clientUpMinRetry, clientUpMaxRetry))
		u.failures++
	default: // refused frames: sending them again would not help
		u.c.record(cevent{kind: evSend, sid: u.s.sid, code: status, text: "send refused: " + detail, node: node})
		u.batch = nil
	}
	return false, ""
}

// post makes one upstream request. status 0 is a network error.
func (u *upstream) post(ctx context.Context, body []byte) (status int, node, detail string) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var req *http.Request
	if u.jsonp {
		q := url.Values{"cb": {"cgsend"}, "d": {string(body)}}
		req, _ = http.NewRequestWithContext(rctx, http.MethodGet, u.c.env.base+"/jsonp_send/"+u.s.sid+"?"+q.Encode(), nil)
	} else {
		req, _ = http.NewRequestWithContext(rctx, http.MethodPost, u.c.env.base+"/session/"+u.s.sid+"/send", bytes.NewReader(body))
		req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
	}
	resp, err := u.c.hc.Do(req)
	if err != nil {
		return 0, "", err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	node = resp.Header.Get(headerBackend)
	if !u.jsonp || resp.StatusCode != http.StatusOK {
		return resp.StatusCode, node, fmt.Sprintf("HTTP %d %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	// /**/cgsend({"ok":…,"code":…}); : a script cannot read a status.
	arg, ok := callbackArg(b, "cgsend")
	var a struct {
		OK   bool   `json:"ok"`
		Code int    `json:"code"`
		Err  string `json:"error"`
	}
	if !ok || json.Unmarshal(arg, &a) != nil {
		return 0, node, fmt.Sprintf("bad jsonp_send answer %q", b)
	}
	switch {
	case a.OK:
		return http.StatusNoContent, node, ""
	case a.Code == 4004:
		return http.StatusNotFound, node, fmt.Sprintf("code %d %s", a.Code, a.Err)
	case a.Code >= 3000 && a.Code < 4000:
		return http.StatusServiceUnavailable, node, fmt.Sprintf("code %d %s", a.Code, a.Err)
	}
	return http.StatusBadRequest, node, fmt.Sprintf("code %d %s", a.Code, a.Err)
}

// callbackArg extracts ARG from "/**/NAME(ARG);".
func callbackArg(b []byte, name string) ([]byte, bool) {
	b = bytes.TrimSpace(b)
	b = bytes.TrimPrefix(b, []byte("/**/"))
	if !bytes.HasPrefix(b, []byte(name+"(")) || !bytes.HasSuffix(b, []byte(");")) {
		return nil, false
	}
	return b[len(name)+1 : len(b)-2], true
}

// ---- SSE -----------------------------------------------------------------

// sseEvent is one event of an EventSource stream, or the stream's end.
type sseEvent struct {
	data  []byte
	id    string
	hasID bool
	at    time.Time
	end   error // the stream ended
}

// readSSE reads events from an SSE response body until it ends, and the
// retry: delay into *retry.
func readSSE(body io.Reader, out chan<- sseEvent, done <-chan struct{}, retry *time.Duration, rmu *sync.Mutex) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var data []byte
	id, hasID := "", false
	hand := func(e sseEvent) bool { return handOver(out, done, e) }
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != nil {
				if !hand(sseEvent{data: data, id: id, hasID: hasID, at: time.Now()}) {
					return
				}
			}
			data, hasID = nil, false
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "data:"):
			v := strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, v...)
			if data == nil {
				data = []byte{}
			}
		case strings.HasPrefix(line, "id:"):
			id, hasID = strings.TrimPrefix(strings.TrimPrefix(line, "id:"), " "), true
		case strings.HasPrefix(line, "retry:"):
			if ms, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "retry:"))); err == nil {
				rmu.Lock()
				*retry = time.Duration(ms) * time.Millisecond
				rmu.Unlock()
			}
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.EOF
	}
	hand(sseEvent{end: err, at: time.Now()})
}

// runSSE carries one EventSource, as a browser does, under cometgate.js:
// the channels and the history cursor in the URL; acks by POST; when the
// stream drops, the EventSource reconnects by itself after the server's
// retry: delay with Last-Event-ID, into the same session id if the server
// still has it or, as usually, a new one; an HTTP error ends the
// EventSource and the client opens a new one after its backoff; a close
// packet ends it at once.
func runSSE(ctx context.Context, c *fclient) sessionResult {
	q := url.Values{"ch": c.env.names()}
	for _, ch := range c.env.chans {
		if cur := c.cursor(ch.name); cur != "" {
			q.Set("cursor."+ch.name, cur)
		}
	}
	u := c.env.base + "/sse?" + q.Encode()
	retry := 3 * time.Second // EventSource's default, until the server says
	var rmu sync.Mutex
	lastID := ""
	s := newSess(c)
	up := &upstream{c: c, s: s}
	var helloAt time.Time
	var interruptedAt time.Time
	res := func(code int, reason string) sessionResult {
		return sessionResult{hello: s.sid != "", connectedAt: helloAt, code: code, reason: reason}
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			rmu.Lock()
			d := retry
			rmu.Unlock()
			if !sleepCtx(ctx, d) {
				return sessionResult{}
			}
		}
		rctx, cancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
		req.Header.Set("Accept", "text/event-stream")
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		c.placeHeader(req.Header)
		resp, err := c.hc.Do(req)
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return sessionResult{}
			}
			c.record(cevent{kind: evBreak, sid: s.sid, text: "sse: " + err.Error()})
			if s.sid == "" && attempt == 0 {
				return res(1006, "EventSource failed: "+err.Error())
			}
			// A network error: the browser keeps trying, cometgate.js
			// gives it connectTimeout.
			if interruptedAt.IsZero() {
				interruptedAt = time.Now()
			}
			if time.Since(interruptedAt) > clientConnectLimit {
				return res(1006, "EventSource did not reconnect")
			}
			continue
		}
		node := resp.Header.Get(headerBackend)
		interruptedAt = time.Time{}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			cancel()
			code, msg := errorReplyOf(b)
			c.record(cevent{kind: evBreak, sid: s.sid, code: resp.StatusCode, text: fmt.Sprintf("sse: HTTP %d code %d %s", resp.StatusCode, code, msg), node: node})
			// The EventSource gives up; cometgate.js reconnects.
			return res(max(code, 1006), fmt.Sprintf("EventSource failed: HTTP %d %s (via %s)", resp.StatusCode, msg, node))
		}
		r, reason := readSSEStream(ctx, c, resp, node, s, up, &retry, &rmu, &lastID, &helloAt)
		resp.Body.Close()
		cancel()
		switch {
		case ctx.Err() != nil:
			return sessionResult{}
		case r != nil:
			return *r
		}
		// The stream dropped: the EventSource reconnects by itself.
		c.record(cevent{kind: evBreak, sid: s.sid, text: "sse: " + reason, node: node})
		interruptedAt = time.Now()
	}
}

// readSSEStream reads one SSE response. It returns a result when the session
// is over, or nil and why the stream dropped (the EventSource reconnects).
func readSSEStream(ctx context.Context, c *fclient, resp *http.Response, node string, s *csess, up *upstream,
	retry *time.Duration, rmu *sync.Mutex, lastID *string, helloAt *time.Time) (*sessionResult, string) {
	events := make(chan sseEvent, 4096)
	done := make(chan struct{})
	var wg sync.WaitGroup
	live := liveness{lastRecv: time.Now()} // comment lines are invisible to a page
	wg.Add(1)
	go func() {
		defer wg.Done()
		readSSE(resp.Body, events, done, retry, rmu)
	}()
	defer func() {
		close(done)
		resp.Body.Close()
		wg.Wait()
	}()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	result := func(code int, reason string) *sessionResult {
		return &sessionResult{hello: s.sid != "", connectedAt: *helloAt, code: code, reason: reason}
	}
	for {
		select {
		case <-ctx.Done():
			return nil, "done"
		case e := <-events:
			if e.end != nil {
				if s.closed != nil {
					r := s.closeResult(*helloAt)
					return &r, ""
				}
				return nil, "stream ended: " + e.end.Error()
			}
			live.lastRecv = e.at
			if e.hasID {
				*lastID = e.id
			}
			p, err := parsePacket(e.data, e.at, node)
			if err != nil {
				c.record(cevent{at: e.at, kind: evBreak, sid: s.sid, text: fmt.Sprintf("bad event %q", e.data)})
				continue
			}
			r := s.handle(p)
			if r == pktNewSess {
				// The EventSource reconnected into a new session: what was
				// sent to the old one is gone with it.
				*s = *newSess(c)
				up.queue, up.batch, up.failures = nil, nil, 0
				r = s.handle(p)
			}
			switch r {
			case pktHello:
				*helloAt = p.at
				up.add(s.subsAfter(c.env.names()))
			case pktJump:
				c.record(cevent{at: e.at, kind: evBreak, sid: s.sid, text: fmt.Sprintf("seq jumped from %d to %d", s.lastSeq, p.Seq)})
				return result(1006, "seq jumped"), ""
			case pktClosed:
				r := s.closeResult(*helloAt)
				return &r, ""
			}
		case now := <-tick.C:
			if s.sid == "" {
				continue
			}
			up.add(s.due(now, true))
			ping, dead := live.check(now, s)
			if dead {
				c.record(cevent{kind: evBreak, sid: s.sid, text: "sse: heartbeat timeout"})
				return result(1006, "heartbeat timeout"), ""
			}
			if ping != nil {
				up.add([]map[string]any{ping})
			}
			if gone, why := up.pump(ctx); gone {
				return result(1006, why), ""
			}
		}
	}
}

// ---- request-per-poll family ---------------------------------------------

// pollFamily is one transport of the request-per-poll family.
type pollFamily struct {
	path      string
	streaming bool // many packets per response, until the stream limit
	callback  bool // cb=; refusals come in-band
	bodySends bool // frames ride in the POST body of the next request (long-polling)
	jsonpSend bool // frames go by /jsonp_send
	ackFrames bool // an ack frame every ackEvery packets (long streams)
}

var (
	famClientPoll  = pollFamily{path: "/poll", bodySends: true}
	famClientXHR   = pollFamily{path: "/xhr_stream", streaming: true, ackFrames: true}
	famClientHTML  = pollFamily{path: "/htmlfile", streaming: true, callback: true, ackFrames: true}
	famClientJSONP = pollFamily{path: "/jsonp", callback: true, jsonpSend: true}
)

// pollLine is one packet (or the end) of a response, as the reader saw it.
type pollLine struct {
	pkts []fpacket
	at   time.Time
	end  error // nil: more may follow; io.EOF: the response ended
	data bool  // a heartbeat or packets: life
}

// runPollFamily carries one session of the request-per-poll family the
// way cometgate.js's HTTPPollTransport does.
func runPollFamily(fam pollFamily) runner {
	return func(ctx context.Context, c *fclient) sessionResult {
		s := newSess(c)
		up := &upstream{c: c, s: s, jsonp: fam.jsonpSend}
		var queue []map[string]any // a long-poll's frames for the next request
		var body []map[string]any  // numbered, on their way until a response shows them applied
		var helloAt time.Time
		var failingSince time.Time
		failures, replaced := 0, 0
		inURL := c.openChannels()
		res := func(code int, reason string) sessionResult {
			return sessionResult{hello: s.sid != "", connectedAt: helloAt, code: code, reason: reason}
		}
		// retryLater is cometgate.js's _retryLater: attach again after a
		// backoff while the session may still be there.
		retryLater := func(why, node string) (sessionResult, bool) {
			c.record(cevent{kind: evBreak, sid: s.sid, text: why, node: node})
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			failures++
			if time.Since(failingSince) >= clientResumeWindow || failures > clientMaxResumes {
				return res(1006, "gave the session up: "+why), true
			}
			if !sleepCtx(ctx, backoff(failures-1, clientResumeMin, clientResumeMax)) {
				return sessionResult{}, true
			}
			return sessionResult{}, false
		}
		for ctx.Err() == nil {
			// Frames that are due: on the next long-poll, or by a send.
			if s.sid != "" {
				due := s.due(time.Now(), fam.ackFrames && s.lastSeq-s.ackedSeq >= clientAckEvery)
				if fam.bodySends {
					queue = append(queue, due...)
					if body == nil && len(queue) > 0 {
						body, queue = s.number(queue), nil
					}
				} else {
					up.add(due)
					if fam.jsonpSend { // JSONP's sends go between polls
						if gone, why := up.pump(ctx); gone {
							return res(3002, why)
						}
					}
				}
			}
			q := url.Values{}
			path := fam.path
			if s.sid == "" {
				q["ch"] = inURL
			} else {
				path += "/" + s.sid
				q.Set("ack", strconv.FormatUint(s.lastSeq, 10))
				s.ackedSeq = s.lastSeq
			}
			if fam.callback {
				q.Set("cb", "cgcb")
			}
			method, reqBody := http.MethodGet, []byte(nil)
			if body != nil {
				method = http.MethodPost
				reqBody, _ = json.Marshal(body)
			}
			rctx, cancel := context.WithCancel(ctx)
			req, _ := http.NewRequestWithContext(rctx, method, c.env.base+path+"?"+q.Encode(), bytes.NewReader(reqBody))
			if method == http.MethodPost {
				req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
			}
			if s.sid == "" {
				c.placeHeader(req.Header)
			}
			limit := receiveLimit(s.sid != "", s.hb)
			timer := time.AfterFunc(limit, cancel)
			resp, err := c.hc.Do(req)
			if err != nil {
				timer.Stop()
				cancel()
				if ctx.Err() != nil {
					return sessionResult{}
				}
				why := "network error: " + err.Error()
				if errors.Is(rctx.Err(), context.Canceled) {
					why = fmt.Sprintf("no answer within %v", limit)
				}
				if s.sid == "" {
					c.record(cevent{kind: evBreak, text: "open: " + why})
					return res(1006, "open failed: "+why)
				}
				if r, over := retryLater(why, ""); over {
					return r
				}
				continue
			}
			node := resp.Header.Get(headerBackend)
			// The callback families answer refusals in-band, in their own
			// framing (a script or a document calling the callback); the
			// balancer's own errors and the others' are JSON or text.
			inBand := fam.callback && (strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
				strings.HasPrefix(resp.Header.Get("Content-Type"), "application/javascript"))
			if resp.StatusCode != http.StatusOK && !inBand {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				timer.Stop()
				cancel()
				code, msg := errorReplyOf(b)
				why := fmt.Sprintf("HTTP %d code %d %s", resp.StatusCode, code, msg)
				st := resp.StatusCode
				switch {
				case s.sid == "":
					c.record(cevent{kind: evBreak, code: st, text: "open refused: " + why, node: node})
					return sessionResult{code: max(code, 1006), reason: "open refused: " + why + " via " + node, final: code >= 4000 && code < 5000}
				case st == http.StatusNotFound:
					c.record(cevent{kind: evBreak, sid: s.sid, code: st, text: why, node: node})
					return res(3002, "session not found: "+why+" via "+node)
				case (st == 400 || st == 413) && body != nil:
					c.record(cevent{kind: evBreak, sid: s.sid, code: st, text: "frames refused: " + why, node: node})
					body = nil
					continue
				case st == 408 || st == 429 || (st >= 500 && code != 3000):
					if r, over := retryLater(why, node); over {
						return r
					}
					continue
				}
				c.record(cevent{kind: evBreak, sid: s.sid, code: st, text: why, node: node})
				return sessionResult{hello: s.sid != "", connectedAt: helloAt, code: max(code, 1006), reason: why + " via " + node, final: code >= 4000 && code < 5000}
			}
			// The session attached this request and applied its frames.
			failingSince = time.Time{}
			body = nil
			lines := make(chan pollLine, 1024)
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				readPollResponse(fam, resp.Body, node, lines, done, func() { timer.Reset(limit) })
			}()
			stop := func() {
				close(done)
				cancel()
				resp.Body.Close()
				wg.Wait()
				timer.Stop()
			}
			progress := false
			var out *sessionResult
			var retryWhy string
			tick := time.NewTicker(250 * time.Millisecond)
		read:
			for {
				select {
				case l := <-lines:
					if l.data {
						progress = true // heartbeats too: news from the session
						failures = 0
					}
					for _, p := range l.pkts {
						r := s.handle(p)
						switch r {
						case pktControl:
							if p.T != "close" {
								continue
							}
							switch {
							case p.Code == 3003:
								replaced++
								if replaced < 2 {
									c.record(cevent{at: p.at, kind: evBreak, sid: s.sid, code: 3003, text: "request replaced: " + p.Reason, node: node})
									break read
								}
								x := res(3003, "another request keeps taking over the session: "+p.Reason)
								out = &x
							case s.sid == "":
								c.record(cevent{at: p.at, kind: evBreak, code: p.Code, text: "open refused in-band: " + p.Reason, node: node})
								x := sessionResult{code: p.Code, reason: fmt.Sprintf("open refused in-band: %d %s via %s", p.Code, p.Reason, node), final: p.Code >= 4000 && p.Code < 5000}
								out = &x
							case p.Code == 4004:
								c.record(cevent{at: p.at, kind: evBreak, sid: s.sid, code: p.Code, text: "in-band: " + p.Reason, node: node})
								x := res(3002, fmt.Sprintf("session not found (in-band %d %s) via %s", p.Code, p.Reason, node))
								out = &x
							case p.Code >= 3000 && p.Code < 4000 && p.Code != 3000:
								retryWhy = fmt.Sprintf("in-band close %d %s", p.Code, p.Reason)
							default:
								c.record(cevent{at: p.at, kind: evBreak, sid: s.sid, code: p.Code, text: "in-band close: " + p.Reason, node: node})
								x := sessionResult{hello: s.sid != "", connectedAt: helloAt, code: p.Code, reason: fmt.Sprintf("in-band close %d %s via %s", p.Code, p.Reason, node), final: p.Code >= 4000 && p.Code < 5000}
								out = &x
							}
							break read
						case pktJump:
							retryWhy = fmt.Sprintf("packet seq jumped from %d to %d", s.lastSeq, p.Seq)
							break read
						case pktHello:
							helloAt = p.at
							frames := s.subsAfter(inURL)
							if fam.bodySends {
								queue = append(queue, frames...)
							} else {
								up.add(frames)
							}
						case pktClosed:
							x := s.closeResult(helloAt)
							out = &x
							break read
						}
						if r != pktDup {
							progress = true
							failures = 0
							replaced = 0
						}
					}
					if l.end != nil {
						if l.end != io.EOF {
							retryWhy = "response broke: " + l.end.Error()
						} else if fam.streaming && !progress {
							retryWhy = "the stream ended without new data"
						}
						break read
					}
				case now := <-tick.C:
					if !fam.streaming || s.sid == "" {
						continue
					}
					if fam.ackFrames {
						up.add(s.due(now, s.lastSeq-s.ackedSeq >= clientAckEvery))
					} else {
						up.add(s.due(now, false))
					}
					if gone, why := up.pump(ctx); gone {
						x := res(3002, why)
						out = &x
						break read
					}
				case <-ctx.Done():
					break read
				}
			}
			tick.Stop()
			stop()
			if ctx.Err() != nil {
				return sessionResult{}
			}
			if out != nil {
				return *out
			}
			if s.sid == "" {
				c.record(cevent{kind: evBreak, text: "open: no hello: " + retryWhy, node: node})
				return res(1006, "open: no hello "+retryWhy)
			}
			if retryWhy != "" {
				if r, over := retryLater(retryWhy, node); over {
					return r
				}
			}
		}
		return sessionResult{}
	}
}

// readPollResponse reads one response of the family into lines: a poll's
// one batch, or a stream's packets as they come. alive restarts the
// request's silence timer.
func readPollResponse(fam pollFamily, body io.Reader, node string, out chan<- pollLine, done <-chan struct{}, alive func()) {
	hand := func(l pollLine) bool { return handOver(out, done, l) }
	if !fam.streaming {
		b, err := io.ReadAll(io.LimitReader(body, 16<<20))
		at := time.Now()
		if err != nil {
			hand(pollLine{end: err, at: at})
			return
		}
		arr := b
		if fam.callback {
			a, ok := callbackArg(b, "cgcb")
			if !ok {
				hand(pollLine{end: fmt.Errorf("malformed jsonp response %.200q", b), at: at})
				return
			}
			arr = a
		}
		pkts, err := parsePackets(arr, at, node)
		if err != nil {
			hand(pollLine{end: fmt.Errorf("malformed poll response %.200q: %v", b, err), at: at})
			return
		}
		hand(pollLine{pkts: pkts, at: at, data: true, end: io.EOF})
		return
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	first := true
	for sc.Scan() {
		alive()
		at := time.Now()
		line := strings.TrimSpace(sc.Text())
		var raw string
		switch {
		case !fam.callback:
			if line == "" { // the prelude, then heartbeats
				if !first && !hand(pollLine{at: at, data: true}) {
					return
				}
				first = false
				continue
			}
			raw = line
		default: // htmlfile: <script>p(PACKET);</script>
			inner, ok := strings.CutPrefix(line, "<script>p(")
			if !ok {
				continue // the document head and padding
			}
			inner, ok = strings.CutSuffix(inner, ");</script>")
			if !ok {
				hand(pollLine{end: fmt.Errorf("malformed htmlfile line %.200q", line), at: at})
				return
			}
			if inner == "null" {
				if !hand(pollLine{at: at, data: true}) {
					return
				}
				continue
			}
			raw = inner
		}
		first = false
		p, err := parsePacket([]byte(raw), at, node)
		if err != nil {
			hand(pollLine{end: fmt.Errorf("malformed stream line %.200q: %v", raw, err), at: at})
			return
		}
		if !hand(pollLine{pkts: []fpacket{p}, at: at}) {
			return
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.EOF
	}
	hand(pollLine{end: err, at: time.Now()})
}
