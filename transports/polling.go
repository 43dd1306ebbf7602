package transports

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/cometgate/cometgate/gateway"
)

// The request-per-poll family: long-polling, XHR streaming, htmlfile
// (iframe streaming) and JSONP polling. They share one mechanism: a
// retaining session (gateway.OpenOptions.Retain) outlives the requests that
// carry it; each request attaches as the session's downstream (an httpDown),
// the session writes what is pending into it (unacknowledged packets first,
// with their original seq), and the request ends after one write (polling)
// or after StreamLimit bytes (streaming). The client acknowledges what it
// got on its next request (ack=N), so a response lost on the way is simply
// written again. The URL scheme is documented in PROTOCOL.md.
//
// Held on a goroutine: the handler goroutine waits while the request is
// held; the session's writer writes into the ResponseWriter under
// httpDown's locks, and the handler does not return before that write is
// over, so the ResponseWriter is never used after the handler returned.
// SockJS's receivers, HTTP/2, TLS, HTTP/1.0, and polls the session
// answers within Options.ParkAfter take this path; the others are parked.
//
// # Parked requests
//
// A long-poll (or JSONP poll) that the session has nothing to answer yet
// may wait for a long time, and a stream (XHR streaming, htmlfile) waits
// between its packets; while net/http serves such a request it costs its
// connection goroutine, the handler's wait and net/http's per-request
// buffers: about 30 KiB, seven times an idle WebSocket. So the request is
// parked instead (parkLocked, polling_park.go), like an idle WebSocket or
// SSE stream:
//
//   - When: a stream at once, before its prelude (the handler attaches it
//     to the session under wmu, so the session's first write waits for
//     the decision); a poll once it has waited Options.ParkAfter (100 ms)
//     with nothing to answer. A busy session's poll cycles (several
//     messages a second) stay on net/http's keep-alive path, which costs
//     less CPU per cycle than a hijack, the poller and the way back
//     (BenchmarkParkedPollCycle); an idle poll waits up to a heartbeat
//     and is parked early in its wait.
//   - How: the handler renders the response head (status line and every
//     header set so far: CORS, Content-Type, Cache-Control...), hijacks
//     the connection, which drops net/http's buffers, registers the raw
//     connection on the node's poller (netpoll_linux.go) and returns. No
//     goroutine waits; the parked request holds the connection, the
//     rendered head and a poller slot.
//   - A poll's response is the session's one write (WritePackets,
//     WriteHeartbeat): head, Date, Content-Length and body in one write,
//     from a buffer pooled for that write only. A stream's response is
//     chunked as net/http would have it: its first write carries the head
//     and the prelude, each write one chunk, and the write that reaches
//     StreamLimit the last chunk too. A Close that comes first (the
//     session ended, a newer request replaced this one) has the end hold
//     would give written on a short goroutine of the poller's
//     (finishParked), since Close must not block its caller.
//   - Keep-alive: the connection then goes back to net/http through a
//     listener of the node's own (reentry.go, Server.Reentry) that the
//     node's http.Server serves beside its real one, so net/http reads
//     the client's next request as on a new connection (within
//     ReadHeaderTimeout rather than IdleTimeout: a polling client sends
//     its next request at once). "Connection: close" from the client
//     closes it instead; HTTP/1.0 is never parked.
//   - Input on a parked connection (onInput) is the client going away
//     (EOF, RST): the request ends as when a held request's context ends,
//     and a retaining session waits for its next request for its
//     disconnect delay. Anything else is a request pipelined on a held
//     request, which no browser sends; the connection is closed.
//   - Bytes the client had sent beyond the request, which net/http read
//     ahead, are kept (withBuffered) and read by net/http after the
//     response. Such a connection is not watched (its input is already
//     there), so a client that goes away meanwhile is noticed by the
//     next write, at the latest the heartbeat, which completes a poll.
//   - Ownership: the connection belongs to whichever of the write,
//     finishParked and onInput takes it first under wmu (parkedConn.taken);
//     it leaves the poller before it is written to, so the client's next
//     request can never reach onInput. A parked request counts as a reader
//     of the node (Server.Wait) until its connection is handed back or
//     closed, and node shutdown ends it like a held one: the session's
//     close packet is its response (a stream's last packet).
//
// A node whose Server.Reentry is never served (a server that cannot give
// connections back) holds every request on a goroutine as before.

// defaultParkAfter is Options.ParkAfter's default: a poll cycle of a
// session that gets several messages a second stays on net/http's
// keep-alive path (a parked cycle costs some 15 µs more CPU: the hijack,
// the poller, the way back through Server.Reentry, and net/http's
// buffers that a hijack leaves to the garbage collector), while an idle
// poll, which waits up to a heartbeat, is parked early in its wait.
const defaultParkAfter = 100 * time.Millisecond

// defaultStreamLimit is Options.StreamLimit's default.
const defaultStreamLimit = 128 << 10

// maxCallbackLen bounds a JSONP or htmlfile callback name.
const maxCallbackLen = 64

// HeaderSession names the session an XHR stream opened, in the response's
// headers (see PROTOCOL.md, "Request per poll").
const HeaderSession = "X-Cometgate-Session"

// maxSIDLen bounds a session id taken from a URL.
const maxSIDLen = 128

// framing is how one transport family delimits packets in a response body.
type framing interface {
	// appendPrelude appends what a stream writes before its first packet.
	appendPrelude(b []byte) []byte
	// appendBatch appends pkts and then ctl, a transport-level packet
	// without seq, when ctl is not nil. A one-shot response is exactly one
	// batch.
	appendBatch(b []byte, pkts []gateway.Packet, ctl []byte) []byte
	// appendHeartbeat appends the keep-alive.
	appendHeartbeat(b []byte) []byte
}

// family is one transport of the request-per-poll family.
type family struct {
	name        string // metrics and logs; Transport.Name
	streaming   bool   // many writes per response, recycled after StreamLimit bytes
	contentType string
	nosniff     bool // send X-Content-Type-Options: nosniff
	// callback: the request names a JavaScript callback (cb=). Once the
	// name is valid, every answer, refusals included, calls it.
	callback bool
	// inBandStatus is the HTTP status of an in-band refusal (0: refusals
	// are JSON with their own status). A script element does not run a
	// response whose status is not 2xx, so JSONP refuses with 200.
	inBandStatus func(status int) int
	// frames: a POST body may carry upstream frames.
	frames     bool
	newFraming func(cb string) framing
}

var (
	famPolling = &family{
		name:        "poll",
		contentType: "application/json",
		frames:      true,
		newFraming:  func(string) framing { return pollFraming{} },
	}
	famXHRStream = &family{
		name:        "xhr_stream",
		streaming:   true,
		contentType: "text/plain; charset=utf-8",
		nosniff:     true,
		frames:      true,
		newFraming:  func(string) framing { return xhrFraming{} },
	}
	famHTMLFile = &family{
		name:         "htmlfile",
		streaming:    true,
		contentType:  "text/html; charset=utf-8",
		nosniff:      true,
		callback:     true,
		inBandStatus: func(status int) int { return status },
		newFraming:   func(cb string) framing { return htmlFraming{cb: cb} },
	}
	famJSONP = &family{
		name:         "jsonp",
		contentType:  "application/javascript; charset=utf-8",
		nosniff:      true,
		callback:     true,
		inBandStatus: func(int) int { return http.StatusOK },
		newFraming:   func(cb string) framing { return jsonpFraming{cb: cb} },
	}
)

// routePolling adds the routes of the request-per-poll family.
func routePolling(r chi.Router, n *node) {
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		r.Method(m, "/poll", pollHandler{n, famPolling})
		r.Method(m, "/poll/{sid}", pollHandler{n, famPolling})
		r.Method(m, "/xhr_stream", pollHandler{n, famXHRStream})
		r.Method(m, "/xhr_stream/{sid}", pollHandler{n, famXHRStream})
	}
	for _, p := range []string{"/poll", "/poll/{sid}", "/xhr_stream", "/xhr_stream/{sid}"} {
		r.Options(p, n.preflight)
	}
	r.Method(http.MethodGet, "/htmlfile", pollHandler{n, famHTMLFile})
	r.Method(http.MethodGet, "/htmlfile/{sid}", pollHandler{n, famHTMLFile})
	r.Method(http.MethodGet, "/jsonp", pollHandler{n, famJSONP})
	r.Method(http.MethodGet, "/jsonp/{sid}", pollHandler{n, famJSONP})
	r.Method(http.MethodGet, "/jsonp_send/{sid}", jsonpSendHandler{n})
}

// pollRequest is what a request of the family asks for, parsed and
// validated before any session is touched.
type pollRequest struct {
	sid      string // "" opens a new session
	channels []string
	starts   []gateway.Start // where each of channels starts (urlStarts)
	ack      uint64
	hasAck   bool
	frames   []gateway.Frame
	errs     []error // per frame, index-aligned with frames
}

// pollHandler serves one transport of the family.
type pollHandler struct {
	*node
	fam *family
}

func (h pollHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fam := h.fam
	// Before anything reads the body: a forwarded request carries it on.
	if h.forward(w, r, chi.URLParam(r, "sid")) {
		return
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store, no-transform")
	hdr.Set("X-Accel-Buffering", "no")
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeRefusal(w, fam, nil, &refusal{status: http.StatusBadRequest, code: gateway.DisconnectProtocol.Code, msg: "malformed query string: " + err.Error()})
		return
	}
	var f framing
	if fam.callback {
		cb, err := parseCallback(q["cb"])
		if err != nil {
			writeRefusal(w, fam, nil, &refusal{status: http.StatusBadRequest, code: gateway.DisconnectProtocol.Code, msg: err.Error()})
			return
		}
		f = fam.newFraming(cb)
	} else {
		f = fam.newFraming("")
	}
	req, ref := h.parseRequest(w, r, q)
	if ref != nil {
		writeRefusal(w, fam, f, ref)
		return
	}
	if ref := h.gate.origin(r); ref != nil {
		writeRefusal(w, fam, f, ref)
		return
	}
	h.cors(w, r)

	ctx := r.Context()
	var sess *gateway.Session
	if req.sid == "" {
		sess, ref = h.gate.open(r, sessionSpec{transport: fam.name, retain: true, callback: fam.callback})
		if ref != nil {
			writeRefusal(w, fam, f, ref)
			return
		}
		if fam.streaming && !fam.callback {
			// A proxy that buffers the stream lets the headers through
			// and holds every packet: with the session id in a header
			// the client can attach to this very session with another
			// transport (GET /poll/{sid}) instead of losing it.
			hdr.Set(HeaderSession, sess.ID())
			hdr.Set("Access-Control-Expose-Headers", HeaderSession)
		}
		// Subscribe before attaching, so that the first response carries
		// the hello packet and every subscription's answer together.
		for i, ch := range req.channels {
			sess.Subscribe(ctx, ch, req.starts[i])
		}
	} else {
		sess = h.gw.Session(req.sid)
		if sess == nil || !sess.Retain() {
			writeRefusal(w, fam, f, h.gate.sessionGone())
			return
		}
		if ref := h.gate.join(r, sess, fam.callback); ref != nil {
			writeRefusal(w, fam, f, ref)
			return
		}
		if req.hasAck {
			sess.Ack(req.ack)
		}
	}
	applyFrames(ctx, sess, req.frames, req.errs)
	// net/http has read the whole request when it had no body, or when
	// parseRequest read the body of frames (to EOF, or it was refused).
	bodyRead := r.Body == nil || r.Body == http.NoBody || (r.Method == http.MethodPost && fam.frames)

	hdr.Set("Content-Type", fam.contentType)
	if fam.nosniff {
		hdr.Set("X-Content-Type-Options", "nosniff")
	}
	t := &httpDown{n: h.node, sess: sess, fam: fam, f: f, w: w, rc: http.NewResponseController(w), done: make(chan struct{})}
	if fam.streaming {
		t.limit = h.opts.StreamLimit
	}
	// Attach under wmu: the session's first write waits until the request
	// is parked or not (park), and a stream parks before its prelude.
	t.wmu.Lock()
	if err := sess.Attach(t, !fam.streaming); err != nil {
		t.wmu.Unlock()
		// The session ended since it was looked up (or opened).
		writeRefusal(w, fam, f, h.gate.sessionGone())
		return
	}
	parked := (fam.streaming || h.opts.ParkAfter < 0) && h.parkLocked(r, t, bodyRead)
	t.wmu.Unlock()
	if fam.streaming {
		// The prelude goes out at once, so the client sees the stream open
		// even when nothing is pending.
		t.start()
	} else if !parked {
		parked = h.parkLater(r, t, bodyRead)
	}
	if !parked {
		h.hold(r, sess, t)
	}
}

// parseRequest reads the query and the body. It touches no session.
func (h pollHandler) parseRequest(w http.ResponseWriter, r *http.Request, q url.Values) (pollRequest, *refusal) {
	fam := h.fam
	bad := func(msg string) *refusal {
		return &refusal{status: http.StatusBadRequest, code: gateway.DisconnectProtocol.Code, msg: msg}
	}
	var req pollRequest
	req.sid = chi.URLParam(r, "sid")
	if req.sid != "" {
		if err := parseSID(req.sid); err != nil {
			return req, bad(err.Error())
		}
		if len(q["ch"]) > 0 {
			return req, bad(`"ch" is only allowed when opening a session; subscribe with a sub frame`)
		}
	}
	req.channels = q["ch"]
	if len(req.channels) > h.gw.Config().MaxSubscriptions {
		return req, bad(fmt.Sprintf("too many channels in the URL: at most %d", h.gw.Config().MaxSubscriptions))
	}
	starts, err := urlStarts(q, req.channels)
	if err != nil {
		return req, bad(err.Error())
	}
	req.starts = starts
	ack, has, err := parseAck(q["ack"])
	if err != nil {
		return req, bad(err.Error())
	}
	if has && req.sid == "" {
		return req, bad(`"ack" needs a session id in the path`)
	}
	req.ack, req.hasAck = ack, has
	if r.Method == http.MethodPost && fam.frames {
		body, ref := h.readFrames(w, r)
		if ref != nil {
			return req, ref
		}
		if len(body) > 0 {
			req.frames, req.errs, err = gateway.DecodeFrames(body)
			if err != nil {
				return req, bad(err.Error())
			}
		}
	}
	return req, nil
}

// readFrames reads a request body of upstream frames, bounded like
// POST /session/{sid}/send. It returns the trimmed body.
func (n *node) readFrames(w http.ResponseWriter, r *http.Request) ([]byte, *refusal) {
	body, ref := n.readBody(w, r, int64(n.maxFrame)*8)
	return bytes.TrimSpace(body), ref
}

// applyFrames applies upstream frames that came with a request, like
// POST /session/{sid}/send: a frame that could not be decoded is answered
// with an err packet on the session.
func applyFrames(ctx context.Context, sess *gateway.Session, frames []gateway.Frame, errs []error) {
	for i, f := range frames {
		if errs[i] != nil {
			sess.Reject(f, errs[i])
			continue
		}
		sess.Apply(ctx, f)
	}
}

// hold waits until the request is over: its one write is done, its stream
// reached the limit, the session closed it (ended, or replaced it with a
// newer request), or the client went away. Then it takes the response
// back from the session's writer and finishes it, and reports whether
// anything was written and why the request ended.
func (n *node) hold(r *http.Request, sess *gateway.Session, t *httpDown) (started bool, reason gateway.Disconnect) {
	select {
	case <-t.done:
	case <-r.Context().Done():
		t.Close(gateway.DisconnectGone())
	}
	// Whatever happened, this request no longer carries the session; a
	// retaining session keeps its packets for the next one.
	sess.Detach(t)
	started, reason = t.release()

	b := t.endAnswer(started, reason)
	if len(b) > 0 && r.Context().Err() == nil {
		if !t.fam.streaming && !started {
			t.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		}
		_ = t.rc.SetWriteDeadline(time.Now().Add(n.opts.WriteTimeout))
		if _, err := t.w.Write(b); err == nil {
			_ = t.rc.Flush()
		}
	}
	// net/http does not reset a write deadline between the requests of a
	// keep-alive connection (the server has no WriteTimeout: streams would
	// not survive one), so leave none behind.
	_ = t.rc.SetWriteDeadline(time.Time{})
	return started, reason
}

// endAnswer is what a request that the session did not complete gets
// when it ends: nothing more, or the end of a well-formed response.
func (t *httpDown) endAnswer(started bool, reason gateway.Disconnect) []byte {
	var b []byte
	switch {
	case reason == gateway.DisconnectReplaced && (t.fam.streaming || !started):
		// The newer request carries the session now. Tell this one why it
		// ends, so a client whose own loop did not start the newer
		// request (two tabs sharing a session) stops instead of taking the
		// session back.
		if !started {
			b = t.f.appendPrelude(b)
		}
		b = t.f.appendBatch(b, nil, ctlReplaced)
	case !started:
		// Ended without a write (the session was cut short): a well-formed
		// empty answer, after which the client learns the session's fate
		// on its next request.
		b = t.f.appendPrelude(b)
		if !t.fam.streaming {
			b = t.f.appendBatch(b, nil, nil)
		}
	}
	return b
}

// errRequestEnded is what a write to a request that is over returns; the
// session keeps the packets for the next request.
var errRequestEnded = errors.New("transports: request ended")

// endWritten and endRecycled are why a request ended when the session did
// not close it: its one write is done, or its stream reached StreamLimit.
var (
	endWritten  = gateway.Disconnect{Reason: "response complete"}
	endRecycled = gateway.Disconnect{Reason: "stream limit reached"}
)

// httpDown is the Transport of one request of the family. The session's
// writer goroutine writes into the ResponseWriter while the handler
// goroutine waits in hold; release hands the response back to the handler.
type httpDown struct {
	n     *node
	sess  *gateway.Session
	fam   *family
	f     framing
	w     http.ResponseWriter
	rc    *http.ResponseController
	limit int // streaming: bytes after which the response ends

	// wmu is held for a whole write and by release: after release the
	// session cannot use w any more.
	wmu     sync.Mutex
	ended   bool // guarded by wmu; release has run, or the parked response is over
	started bool // guarded by wmu; the status line and headers are out
	written int  // guarded by wmu; body bytes written

	// pk is set, under wmu and dmu, when the request is parked: from then
	// on w and rc are net/http's no more, and the connection is pk's.
	pk *parkedConn
	// handoff is a parked connection whose response the write under way
	// completed; write gives it back (unpark) once wmu is released.
	handoff     *parkedConn // guarded by wmu
	handoffKeep bool        // guarded by wmu

	// dmu orders deadline changes with the end of the request: Close may
	// cut a write in progress (it does not wait for wmu), but must not
	// touch the connection after the handler took the response back.
	dmu    sync.Mutex
	closed bool               // guarded by dmu; done is closed
	gone   bool               // guarded by dmu; only the handler uses rc now
	reason gateway.Disconnect // guarded by dmu; why done was closed
	done   chan struct{}
}

var _ gateway.Transport = (*httpDown)(nil)

func (t *httpDown) Name() string { return t.fam.name }

// WritePackets writes one batch: the whole response of a poll, or the next
// part of a stream.
func (t *httpDown) WritePackets(pkts []gateway.Packet) (int, error) {
	size := 64
	for _, p := range pkts {
		size += p.Size() + 32
	}
	return t.write(size, func(b []byte) []byte { return t.f.appendBatch(b, pkts, nil) })
}

// WriteHeartbeat writes the keep-alive: an empty batch completes a poll.
func (t *httpDown) WriteHeartbeat() error {
	_, err := t.write(64, t.f.appendHeartbeat)
	return err
}

// Close ends the request. A write in progress is cut short (its packets
// stay unacknowledged and go out again on the next request); hold then
// finishes the response.
func (t *httpDown) Close(d gateway.Disconnect) {
	t.dmu.Lock()
	defer t.dmu.Unlock()
	if pk := t.pk; pk != nil {
		if !t.closed {
			// A write that completes the response sets closed before it
			// gives the connection back, so this cuts only a write that
			// is still this request's; finishParked answers.
			_ = pk.conn.SetWriteDeadline(time.Now())
			pk.p.run(t.finishParked)
		}
		t.endLocked(d)
		return
	}
	if !t.gone && !t.closed {
		_ = t.rc.SetWriteDeadline(time.Now())
	}
	t.endLocked(d)
}

func (t *httpDown) endLocked(d gateway.Disconnect) {
	if !t.closed {
		t.closed, t.reason = true, d
		close(t.done)
	}
}

// start writes the status line, the headers and a stream's prelude now
// unless a write did already.
func (t *httpDown) start() {
	_, _ = t.write(0, nil)
}

// lastWriter is a framing that must know when the bytes that complete
// the response are about to go out: the client may send its next request
// as soon as it has them, before this write returns (SockJS: the next
// request acknowledges what this one carried, and must not find the
// session still held).
type lastWriter interface {
	// lastWrite is called under the write lock just before the bytes
	// of the last batch built are written, when they end the response.
	lastWrite()
}

// write builds the bytes to write with build (nil: none), under the
// write lock so that the request cannot end between building and
// writing, writes them (after the prelude, on a stream's first write)
// and flushes. A one-shot response is complete after it; a stream that
// reached its limit detaches from the session and ends.
func (t *httpDown) write(size int, build func([]byte) []byte) (int, error) {
	t.wmu.Lock()
	var n int
	var err error
	if build == nil {
		n, err = t.writeLocked(nil)
	} else {
		buf := getBuffer(size)
		*buf = build(*buf)
		n, err = t.writeLocked(*buf)
		putBuffer(buf)
	}
	full := err == nil && t.fam.streaming && t.written >= t.limit
	ho, keep := t.handoff, t.handoffKeep
	t.handoff = nil
	t.wmu.Unlock()
	if ho != nil {
		t.n.unpark(ho, keep)
	}
	switch {
	case !t.fam.streaming && (n > 0 || err != nil):
		t.end(endWritten)
	case full:
		// Detach first: the session's writer must not pick this request
		// again, and the session starts waiting for the next one.
		t.sess.Detach(t)
		t.end(endRecycled)
	}
	return n, err
}

func (t *httpDown) end(d gateway.Disconnect) {
	t.dmu.Lock()
	t.endLocked(d)
	t.dmu.Unlock()
}

func (t *httpDown) writeLocked(b []byte) (int, error) {
	if t.pk != nil {
		return t.writeParkedLocked(b)
	}
	if t.ended {
		return 0, errRequestEnded
	}
	if t.started && len(b) == 0 {
		return 0, nil
	}
	t.dmu.Lock()
	if t.closed {
		t.dmu.Unlock()
		return 0, errRequestEnded
	}
	_ = t.rc.SetWriteDeadline(time.Now().Add(t.n.opts.WriteTimeout))
	t.dmu.Unlock()

	n := 0
	if !t.started {
		t.started = true
		if !t.fam.streaming {
			t.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		} else {
			var pre [4096]byte
			m, err := t.w.Write(t.f.appendPrelude(pre[:0]))
			n += m
			if err != nil {
				t.written += n
				return n, err
			}
		}
	}
	if lw, ok := t.f.(lastWriter); ok && len(b) > 0 && (!t.fam.streaming || t.written+n+len(b) >= t.limit) {
		lw.lastWrite()
	}
	m, err := t.w.Write(b)
	n += m
	if err == nil {
		err = t.rc.Flush()
	}
	t.written += n
	return n, err
}

// release takes the response back from the session: it waits for a write
// in progress, and after it the session's writes fail. It reports whether
// anything was written and why the request ended.
func (t *httpDown) release() (started bool, reason gateway.Disconnect) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.ended = true
	t.dmu.Lock()
	defer t.dmu.Unlock()
	t.gone = true
	t.endLocked(gateway.DisconnectGone())
	return t.started, t.reason
}

// ctlReplaced is the transport-level packet (no seq: it ends this request,
// not the session) that a request gets when a newer one of the same
// session replaced it.
var ctlReplaced = controlClose(gateway.DisconnectReplaced.Code, gateway.DisconnectReplaced.Reason, true, 0)

// controlClose encodes a transport-level close packet; a delay (a
// refusal's retry advice) goes in "delay", in milliseconds, as in the
// gateway's close packets. encoding/json escapes "<", ">", "&", U+2028
// and U+2029, so it is as HTML-safe as the gateway's packets.
func controlClose(code int, reason string, reconnect bool, delay time.Duration) []byte {
	b, _ := json.Marshal(struct {
		T         string `json:"t"`
		Code      int    `json:"code"`
		Reason    string `json:"reason"`
		Reconnect bool   `json:"reconnect"`
		Delay     int64  `json:"delay,omitempty"`
	}{"close", code, reason, reconnect, delay.Milliseconds()})
	return b
}

// writeRefusal answers a request that cannot be served. A family that
// answers in-band calls the callback (f is not nil once its name is
// valid) with a transport-level close packet; the others, and a request
// whose callback name is bad, get a JSON error carrying the same code.
func writeRefusal(w http.ResponseWriter, fam *family, f framing, ref *refusal) {
	h := w.Header()
	h.Set("Cache-Control", "no-store, no-transform")
	h.Set("X-Accel-Buffering", "no")
	if f == nil || fam.inBandStatus == nil {
		delay := ref.retryHint(h)
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		b, _ := json.Marshal(errorBody{Error: ref.msg, Code: ref.code, Delay: delay.Milliseconds()})
		b = append(b, '\n')
		h.Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(ref.status)
		_, _ = w.Write(b)
		return
	}
	b := f.appendPrelude(nil)
	b = f.appendBatch(b, nil, ref.closePacket(h))
	h.Set("Content-Type", fam.contentType)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(fam.inBandStatus(ref.status))
	_, _ = w.Write(b)
}

// pollFraming is long-polling: a response is one JSON array of packets;
// the heartbeat is an empty array.
type pollFraming struct{}

func (pollFraming) appendPrelude(b []byte) []byte { return b }

func (pollFraming) appendBatch(b []byte, pkts []gateway.Packet, ctl []byte) []byte {
	return appendArray(b, pkts, ctl)
}

func (pollFraming) appendHeartbeat(b []byte) []byte { return append(b, "[]"...) }

// appendArray appends pkts and ctl as one JSON array.
func appendArray(b []byte, pkts []gateway.Packet, ctl []byte) []byte {
	b = append(b, '[')
	for i, p := range pkts {
		if i > 0 {
			b = append(b, ',')
		}
		b = p.AppendJSON(b)
	}
	if ctl != nil {
		if len(pkts) > 0 {
			b = append(b, ',')
		}
		b = append(b, ctl...)
	}
	return append(b, ']')
}

// parseSID checks a session id taken from a URL: 1 to 128 bytes of
// letters, digits, ".", "_" and "-" (what gateway session ids are made
// of). It says nothing about whether the session exists.
func parseSID(sid string) error {
	if sid == "" || len(sid) > maxSIDLen {
		return fmt.Errorf("invalid session id: must be 1 to %d bytes", maxSIDLen)
	}
	for i := 0; i < len(sid); i++ {
		c := sid[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("invalid session id: character %q not allowed", rune(c))
		}
	}
	return nil
}

// parseAck reads the ack query parameter: absent, or one decimal seq
// (digits only, no sign, at most 20 digits, fitting in 64 bits).
func parseAck(vals []string) (seq uint64, ok bool, err error) {
	switch len(vals) {
	case 0:
		return 0, false, nil
	case 1:
	default:
		return 0, false, errors.New(`"ack" given more than once`)
	}
	v := vals[0]
	if v == "" || len(v) > 20 {
		return 0, false, fmt.Errorf(`"ack" must be a decimal seq number, got %q`, truncate(v, 32))
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false, fmt.Errorf(`"ack" must be a decimal seq number, got %q`, truncate(v, 32))
		}
	}
	seq, err = strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf(`"ack" %q is out of range`, v)
	}
	return seq, true, nil
}

// parseCallback validates a JSONP or htmlfile callback name: one name, at
// most 64 bytes, of dot-separated JavaScript identifiers made of ASCII
// letters, digits, "_" and "$" (not starting with a digit), such as
// "cb", "jQuery3_1" or "app.comet.$recv". Nothing else can reach a script:
// no brackets, quotes, spaces or "<", so the name can neither call
// arbitrary code nor end the enclosing script element.
func parseCallback(vals []string) (string, error) {
	switch len(vals) {
	case 0:
		return "", errors.New(`a callback name is required: cb=NAME`)
	case 1:
	default:
		return "", errors.New(`"cb" given more than once`)
	}
	cb := vals[0]
	if cb == "" || len(cb) > maxCallbackLen {
		return "", fmt.Errorf("invalid callback name: must be 1 to %d bytes", maxCallbackLen)
	}
	identStart := true
	for i := 0; i < len(cb); i++ {
		c := cb[i]
		switch {
		case c == '.':
			if identStart {
				return "", errors.New("invalid callback name: empty name around a dot")
			}
			identStart = true
			continue
		case c >= '0' && c <= '9':
			if identStart {
				return "", errors.New("invalid callback name: a name must not start with a digit")
			}
		case isAlnum(c) || c == '_' || c == '$':
		default:
			return "", fmt.Errorf("invalid callback name: character %q not allowed (use letters, digits, _ $ and .)", rune(c))
		}
		identStart = false
	}
	if identStart {
		return "", errors.New("invalid callback name: empty name around a dot")
	}
	return cb, nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
