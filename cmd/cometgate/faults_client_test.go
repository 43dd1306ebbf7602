package main

// Fault-injection suite (faults_test.go): what every client shares. A
// client is one simulated browser page on one transport, subscribed to the
// scenario's channel with history and its channel without. It behaves as
// web/cometgate.js does (and, for SockJS, as sockjs-client plus an
// application that reconnects): numbered packets de-duplicated by seq,
// acknowledgements, in-session retries of the request-per-poll transports
// for resumeWindow, a new session after "session not found" or a close
// code 3000-3999 with jittered exponential backoff, and subscriptions sent
// again from the last cursor. It records everything that happened to it
// with a timestamp; faults_test.go judges the record.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// What web/cometgate.js uses (its DEFAULTS and constants).
const (
	clientMinReconnect = 500 * time.Millisecond
	clientMaxReconnect = 30 * time.Second
	clientResumeWindow = 5 * time.Second // = session.disconnect_delay
	clientResumeMin    = 100 * time.Millisecond
	clientResumeMax    = time.Second
	clientMaxResumes   = 10
	clientStableAfter  = 10 * time.Second
	clientAckEvery     = 100
	clientAckInterval  = time.Second
	clientRequestSlack = 10 * time.Second // a poll is given up after 2 heartbeats + this
	clientConnectLimit = 10 * time.Second // no hello by then: the attempt failed
	clientUpMinRetry   = 250 * time.Millisecond
	clientUpMaxRetry   = 5 * time.Second
)

var discardLogger = log.New(io.Discard, "", 0)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// fpacket is a server packet: packet (forward_test.go) and the fields the
// suite needs besides.
type fpacket struct {
	packet
	Cur       string `json:"cur"`
	Sub       string `json:"sub"`
	HB        int    `json:"hb"`
	Reconnect *bool  `json:"reconnect"`
	Error     string `json:"error"`
	Oldest    string `json:"oldest"`

	at   time.Time // when it arrived (set by the reader)
	node string    // the node whose response carried it, when known
}

// backoff is cometgate.js's backoffDelay: full jitter, uniform in
// [min, min(max, min*2^(attempt+1))].
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	capd := lo << min(attempt+1, 30)
	if capd > hi || capd <= 0 {
		capd = hi
	}
	return lo + time.Duration(rand.Float64()*float64(capd-lo))
}

// handOver sends v on out unless done is closed first (the reader of out
// is gone); it reports whether v went.
func handOver[T any](out chan<- T, done <-chan struct{}, v T) bool {
	select {
	case out <- v:
		return true
	case <-done:
		return false
	}
}

// receiveLimit is how long a receiving request may go without data
// (cometgate.js): connectTimeout until the session said hello, then two
// heartbeat intervals and a margin (the server answers a poll, or writes
// a heartbeat, within two).
func receiveLimit(open bool, hb time.Duration) time.Duration {
	if !open {
		return clientConnectLimit
	}
	return 2*hb + clientRequestSlack
}

// sleepCtx sleeps d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// evKind is what a client recorded.
type evKind int

const (
	evHello  evKind = iota // a session began (sid)
	evOK                   // a subscription was confirmed (ch)
	evSubErr               // a subscription was refused (ch, code, text)
	evMsg                  // a message (ch, num, cur)
	evGap                  // a gap packet (ch, text)
	evClose                // the session was closed by the server (code, text)
	evBreak                // the transport broke or a request failed (text); the session may go on
	evEnd                  // the client gave the session up (code, text)
	evFinal                // the client stopped for good (code, text)
	evSend                 // an upstream request (frames, acks) failed; the downstream goes on
)

var evNames = [...]string{"hello", "ok", "sub-err", "msg", "gap", "close", "break", "end", "final", "send-fail"}

func (k evKind) String() string { return evNames[k] }

type cevent struct {
	at   time.Time
	kind evKind
	sid  string
	ch   string
	num  int
	cur  string
	code int
	text string
	node string
}

func (e cevent) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", e.at.Format("15:04:05.000"), e.kind)
	if e.sid != "" {
		fmt.Fprintf(&b, " sid=%s", e.sid)
	}
	if e.ch != "" {
		fmt.Fprintf(&b, " ch=%s", e.ch)
	}
	if e.kind == evMsg {
		fmt.Fprintf(&b, " num=%d cur=%q", e.num, e.cur)
	}
	if e.code != 0 {
		fmt.Fprintf(&b, " code=%d", e.code)
	}
	if e.node != "" {
		fmt.Fprintf(&b, " via=%s", e.node)
	}
	if e.text != "" {
		fmt.Fprintf(&b, " %q", e.text)
	}
	return b.String()
}

// chanSpec is a channel every client subscribes to.
type chanSpec struct {
	name    string
	history bool
}

// clientEnv is what the clients of a scenario share.
type clientEnv struct {
	base       string     // the balancer's URL
	wsBase     string     // the same, ws://
	chans      []chanSpec // what every client subscribes to, in this order
	nodeIDs    []string   // node ids, for placement
	sockPrefix string     // "/sockjs"
}

func (e *clientEnv) names() []string {
	out := make([]string, len(e.chans))
	for i, c := range e.chans {
		out[i] = c.name
	}
	return out
}

// fclient is one simulated page.
type fclient struct {
	name string // transport@node
	kind string // transport
	home int    // the node its first session is opened on
	env  *clientEnv
	hc   *http.Client
	tr   *http.Transport

	mu      sync.Mutex
	ev      []cevent
	cursors map[string]string // the last cursor per channel with history
	maxNum  map[string]int    // highest num received per channel
	// confirmed are the channels a session of the client subscribed
	// (an "ok"): after a break each is subscribed again with its
	// cursor, or "~" when it has none.
	confirmed map[string]bool
	sid       string // the current session
	placed    bool   // the first open went to home
	stopped   bool   // final: the client gave up for good
}

func newClient(env *clientEnv, kind string, home int) *fclient {
	// Each page has its own connections, as browsers of different users
	// would (cometgate.js keeps at most two requests in flight).
	tr := &http.Transport{Proxy: nil, MaxConnsPerHost: 6, MaxIdleConnsPerHost: 6, DisableCompression: true}
	return &fclient{
		name:      fmt.Sprintf("%s@%s", kind, env.nodeIDs[home]),
		kind:      kind,
		home:      home,
		env:       env,
		tr:        tr,
		hc:        &http.Client{Transport: tr},
		maxNum:    map[string]int{},
		cursors:   map[string]string{},
		confirmed: map[string]bool{},
	}
}

// record appends an event.
func (c *fclient) record(e cevent) {
	if e.at.IsZero() {
		e.at = time.Now()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recordLocked(e)
}

func (c *fclient) recordLocked(e cevent) {
	c.ev = append(c.ev, e)
	switch e.kind {
	case evMsg:
		if old, ok := c.maxNum[e.ch]; !ok || e.num > old {
			c.maxNum[e.ch] = e.num
		}
		if e.cur != "" {
			c.cursors[e.ch] = e.cur
		}
	case evHello:
		c.sid = e.sid
	case evOK:
		c.confirmed[e.ch] = true
	case evFinal:
		c.stopped = true
	}
}

func (c *fclient) events() []cevent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]cevent(nil), c.ev...)
}

// max returns the highest num received on ch (-1: none).
func (c *fclient) max(ch string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.maxNum[ch]; ok {
		return n
	}
	return -1
}

// lastMsg is when the last message on ch arrived (zero: none).
func (c *fclient) lastMsg(ch string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.ev) - 1; i >= 0; i-- {
		if c.ev[i].kind == evMsg && c.ev[i].ch == ch {
			return c.ev[i].at
		}
	}
	return time.Time{}
}

// cursor is the last cursor received on ch; "~" (gateway.ResumeCursor)
// where it has none but a session of the client subscribed ch already, as
// cometgate.js resubscribes after a break (a subscription that is not
// pending and has no cursor); "" before ch was first confirmed. (Not
// "once the client has a session": the first session's subscriptions,
// sent after its hello, would ask for a resume that nothing precedes,
// and get a gap for a loss that cannot have happened.)
func (c *fclient) cursor(ch string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.cursors[ch]; cur != "" || !c.confirmed[ch] {
		return cur
	}
	return gateway.ResumeCursor
}

func (c *fclient) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

func (c *fclient) currentSID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sid
}

// subscribed reports whether the client's current session confirmed every
// subscription.
func (c *fclient) subscribed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	got := map[string]bool{}
	for i := len(c.ev) - 1; i >= 0; i-- {
		e := c.ev[i]
		if e.kind == evOK && e.sid == c.sid {
			got[e.ch] = true
		}
		if e.kind == evHello {
			break
		}
	}
	for _, ch := range c.env.chans {
		if !got[ch.name] {
			return false
		}
	}
	return true
}

// placeHeader adds the placement of the client's first session to h, once.
func (c *fclient) placeHeader(h http.Header) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.placed {
		c.placed = true
		h.Set(headerPlace, strconv.Itoa(c.home))
	}
}

// sessionResult is how one session (or one attempt to open one) ended.
type sessionResult struct {
	hello       bool      // the session said hello
	connectedAt time.Time // when
	code        int       // why it ended: a close code, or 1006
	reason      string
	final       bool // 4000-4999: do not reconnect
}

// runner opens and carries one session; it returns when the session is
// over or ctx ends.
type runner func(ctx context.Context, c *fclient) sessionResult

// run is the client's life: sessions one after the other, with
// cometgate.js's reconnect backoff between them, until ctx ends or the
// server says not to come back.
func (c *fclient) run(ctx context.Context, r runner) {
	defer c.tr.CloseIdleConnections()
	attempt := 0
	for ctx.Err() == nil {
		c.mu.Lock()
		c.sid = "" // until the next session's hello
		c.mu.Unlock()
		res := r(ctx, c)
		if ctx.Err() != nil {
			return
		}
		if res.final {
			c.record(cevent{kind: evFinal, code: res.code, text: res.reason})
			return
		}
		c.record(cevent{kind: evEnd, sid: c.currentSID(), code: res.code, text: res.reason})
		if res.hello && time.Since(res.connectedAt) >= clientStableAfter {
			attempt = 0
		}
		d := backoff(attempt, clientMinReconnect, clientMaxReconnect)
		attempt++
		if !sleepCtx(ctx, d) {
			return
		}
	}
}

// csess is the client's side of one server session: seq bookkeeping,
// acknowledgements, subscriptions and their answers.
type csess struct {
	c        *fclient
	sid      string
	hb       time.Duration
	lastSeq  uint64
	ackedSeq uint64
	ackedAt  time.Time
	nextID   int
	subs     map[int]string       // request id → channel
	retry    map[string]time.Time // channel → when to subscribe again (after 500/503)
	retries  int
	closed   *fpacket // the close packet, once it came
	upN      int      // upstream frame counter ("n")
}

func newSess(c *fclient) *csess {
	return &csess{c: c, hb: 25 * time.Second, subs: map[int]string{}, retry: map[string]time.Time{}}
}

// packetResult is what a packet means for the transport.
type packetResult int

const (
	pktOK      packetResult = iota
	pktDup                  // already held (a resend): dropped
	pktJump                 // seq skipped ahead: something is missing before it
	pktHello                // the session began: subscribe
	pktNewSess              // a hello of ANOTHER session (an EventSource reconnected into a new one)
	pktClosed               // the session's close packet
	pktControl              // a transport-level packet (no seq), such as close 3003
)

// handle takes one packet in arrival order.
func (s *csess) handle(p fpacket) packetResult {
	if p.Seq == 0 {
		return pktControl
	}
	if p.T == "hello" && s.sid != "" && p.SID != s.sid {
		return pktNewSess
	}
	if p.Seq <= s.lastSeq {
		return pktDup
	}
	if p.Seq != s.lastSeq+1 {
		return pktJump
	}
	s.lastSeq = p.Seq
	c := s.c
	switch p.T {
	case "hello":
		s.sid = p.SID
		if p.HB > 0 {
			s.hb = time.Duration(p.HB) * time.Second
		}
		s.ackedAt = p.at
		c.record(cevent{at: p.at, kind: evHello, sid: p.SID, node: p.node})
		return pktHello
	case "msg":
		n, err := strconv.Atoi(string(p.Data))
		if err != nil {
			c.record(cevent{at: p.at, kind: evBreak, sid: s.sid, text: "msg with a payload that is not a number: " + string(p.Data)})
			return pktOK
		}
		c.record(cevent{at: p.at, kind: evMsg, sid: s.sid, ch: p.Ch, num: n, cur: p.Cur, node: p.node})
	case "gap":
		c.record(cevent{at: p.at, kind: evGap, sid: s.sid, ch: p.Ch, text: p.Reason + " oldest=" + p.Oldest, node: p.node})
	case "ok", "err":
		if p.ID == 0 {
			s.urlAnswer(p) // a subscription named in the URL that opened the session
			return pktOK
		}
		ch, ok := s.subs[p.ID]
		if !ok {
			return pktOK
		}
		delete(s.subs, p.ID)
		if p.T == "ok" || p.Code == 409 {
			s.retries = 0
			c.record(cevent{at: p.at, kind: evOK, sid: s.sid, ch: ch, node: p.node})
			return pktOK
		}
		c.record(cevent{at: p.at, kind: evSubErr, sid: s.sid, ch: ch, code: p.Code, text: p.Error, node: p.node})
		if p.Code == 500 || p.Code == 503 {
			s.retry[ch] = time.Now().Add(backoff(s.retries, clientMinReconnect, clientMaxReconnect))
			s.retries++
		}
	case "close":
		cp := p
		s.closed = &cp
		c.record(cevent{at: p.at, kind: evClose, sid: s.sid, code: p.Code, text: p.Reason, node: p.node})
		return pktClosed
	}
	return pktOK
}

// subFrame is a subscription request for ch, from its last cursor.
func (s *csess) subFrame(ch string) map[string]any {
	s.nextID++
	s.subs[s.nextID] = ch
	f := map[string]any{"op": "sub", "id": s.nextID, "ch": ch}
	if cur := s.c.cursor(ch); cur != "" {
		f["cursor"] = cur
	}
	return f
}

// openChannels is what the URL that opens a request-per-poll session
// subscribes (cometgate.js buildOpenURL): the channels without a cursor.
// The others are subscribed by frames after the hello (subsAfter).
func (c *fclient) openChannels() []string {
	var chs []string
	for _, ch := range c.env.chans {
		if c.cursor(ch.name) == "" {
			chs = append(chs, ch.name)
		}
	}
	return chs
}

// subsAfter is the sub frames a session sends after its hello: every
// channel not already named in the URL that opened it.
func (s *csess) subsAfter(inURL []string) []map[string]any {
	var out []map[string]any
	for _, ch := range s.c.env.names() {
		found := false
		for _, u := range inURL {
			found = found || u == ch
		}
		if !found {
			out = append(out, s.subFrame(ch))
		}
	}
	return out
}

// urlAnswer takes the answer to a subscription named in the URL that
// opened the session: it carries "ch" and no id.
func (s *csess) urlAnswer(p fpacket) {
	if p.ID != 0 || p.Ch == "" || (p.T != "ok" && p.T != "err") {
		return
	}
	if p.T == "ok" {
		s.c.record(cevent{at: p.at, kind: evOK, sid: s.sid, ch: p.Ch, node: p.node})
		return
	}
	s.c.record(cevent{at: p.at, kind: evSubErr, sid: s.sid, ch: p.Ch, code: p.Code, text: p.Error, node: p.node})
	if p.Code == 500 || p.Code == 503 {
		s.retry[p.Ch] = time.Now().Add(backoff(s.retries, clientMinReconnect, clientMaxReconnect))
		s.retries++
	}
}

// due returns the frames to send now: subscriptions whose retry is due,
// and an ack when withAck and there is something to acknowledge
// (cometgate.js: every ackEvery packets, or ackInterval after the first
// unacknowledged one).
func (s *csess) due(now time.Time, withAck bool) []map[string]any {
	var out []map[string]any
	for ch, at := range s.retry {
		if !now.Before(at) {
			delete(s.retry, ch)
			out = append(out, s.subFrame(ch))
		}
	}
	if withAck && s.lastSeq > s.ackedSeq && (s.lastSeq-s.ackedSeq >= clientAckEvery || now.Sub(s.ackedAt) >= clientAckInterval) {
		out = append(out, map[string]any{"op": "ack", "seq": s.lastSeq})
		s.ackedSeq, s.ackedAt = s.lastSeq, now
	}
	return out
}

// number gives upstream frames their "n" (the POST transports).
func (s *csess) number(frames []map[string]any) []map[string]any {
	for _, f := range frames {
		s.upN++
		f["n"] = s.upN
	}
	return frames
}

// closeResult is the sessionResult of a close packet.
func (s *csess) closeResult(hello time.Time) sessionResult {
	p := s.closed
	res := sessionResult{hello: true, connectedAt: hello, code: p.Code, reason: "close packet: " + p.Reason}
	res.final = p.Code >= 4000 && p.Code <= 4999
	return res
}

// parsePackets parses a JSON array of packets.
func parsePackets(b []byte, at time.Time, node string) ([]fpacket, error) {
	var pkts []fpacket
	if err := json.Unmarshal(b, &pkts); err != nil {
		return nil, err
	}
	for i := range pkts {
		pkts[i].at, pkts[i].node = at, node
	}
	return pkts, nil
}

func parsePacket(b []byte, at time.Time, node string) (fpacket, error) {
	var p fpacket
	err := json.Unmarshal(b, &p)
	p.at, p.node = at, node
	return p, err
}

// errorReplyOf reads a JSON refusal {"error":…,"code":…}.
func errorReplyOf(b []byte) (code int, msg string) {
	var e struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}
	if json.Unmarshal(b, &e) == nil {
		return e.Code, e.Error
	}
	return 0, strings.TrimSpace(string(b))
}
