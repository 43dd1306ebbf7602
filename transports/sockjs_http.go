package transports

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// The SockJS transports that ride on plain HTTP requests: the receivers
// (xhr, xhr_streaming, eventsource, htmlfile, jsonp) and the senders
// (xhr_send, jsonp_send). A receiver's handler goroutine is the only
// writer of its response: it waits for the session's messages, writes
// them in its framing and flushes each write. Polling receivers (xhr,
// jsonp) answer one frame with a Content-Length, so keep-alive connections
// stay usable; streaming receivers write a prelude (padding some browsers
// and proxies need before they pass data on) and end after ResponseLimit
// bytes, so that the browser can free what it received.

// sjsKind is a receiving transport.
type sjsKind int

const (
	sjsXHR sjsKind = iota
	sjsXHRStreaming
	sjsEventSource
	sjsHTMLFile
	sjsJSONP
)

// sjsXHRPrelude is 2 KiB of "h" and a newline: IE's XHR delivers nothing
// of a streaming response before that much arrived.
var sjsXHRPrelude = append(bytes.Repeat([]byte{'h'}, 2048), '\n')

// sjsHTMLFileTemplate is sockjs-node 0.3.24's htmlfile page before the
// frames (lib/trans-htmlfile.js), byte for byte: {{ callback }} is
// replaced by the callback (validated: letters, digits, "_", "-", ".").
const sjsHTMLFileTemplate = `<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{{ callback }};
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>`

// sjsHTMLFileHead is the template padded as sockjs-node pads it (past the
// 1 KiB Safari needs before it renders anything): 1024-len+13 spaces,
// counted with the placeholder, then two CRLFs.
var sjsHTMLFileHead = sjsHTMLFileTemplate + strings.Repeat(" ", 1024-len(sjsHTMLFileTemplate)+13) + "\r\n\r\n"

// sjsHTMLFilePrelude returns the htmlfile head for callback.
func sjsHTMLFilePrelude(callback string) []byte {
	return []byte(strings.Replace(sjsHTMLFileHead, "{{ callback }}", callback, 1))
}

// sjsMaxBody bounds a send body (and a websocket message) of a session.
func (ep *sockjsEndpoint) maxBody() int {
	return max(ep.n.maxFrame*8, 64<<10)
}

// sjsFamilies are the receiving transports as families of the
// request-per-poll mechanism (polling.go): each request is an httpDown of
// the session's gateway session, in a SockJS framing.
var sjsFamilies = map[sjsKind]*family{
	sjsXHR:          {name: "sockjs", contentType: "application/javascript; charset=UTF-8"},
	sjsXHRStreaming: {name: "sockjs", streaming: true, contentType: "application/javascript; charset=UTF-8"},
	// Exactly "text/event-stream", as sockjs-node's (lib/trans-eventsource.js)
	// and the protocol tests' (EventSource.test_transport).
	sjsEventSource: {name: "sockjs", streaming: true, contentType: "text/event-stream"},
	sjsHTMLFile:    {name: "sockjs", streaming: true, contentType: "text/html; charset=UTF-8"},
	sjsJSONP:       {name: "sockjs", contentType: "application/javascript; charset=UTF-8"},
}

// serveReceiver serves a receiving request of the given kind for session
// sid, opening the session if it does not exist.
func (ep *sockjsEndpoint) serveReceiver(w http.ResponseWriter, r *http.Request, sid string, kind sjsKind) {
	var callback string
	if kind == sjsHTMLFile || kind == sjsJSONP {
		// sockjs-node's checks and answers (lib/trans-jsonp.js,
		// lib/trans-htmlfile.js), with its cookie and cache header.
		q := r.URL.Query()
		switch {
		case q.Has("c"):
			callback = q.Get("c")
		case q.Has("callback"):
			callback = q.Get("callback")
		default:
			ep.privateHeaders(w, r)
			sjsPlain(w, http.StatusInternalServerError, `"callback" parameter required`)
			return
		}
		limit := sjsMaxJSONPCallbackLen
		if kind == sjsHTMLFile {
			limit = sjsMaxHTMLFileCallbackLen
		}
		if !sjsValidCallback(callback, limit) {
			ep.privateHeaders(w, r)
			sjsPlain(w, http.StatusInternalServerError, `invalid "callback" parameter`)
			return
		}
	}
	if ref := ep.n.gate.origin(r); ref != nil {
		sjsRefuse(w, ref)
		return
	}
	// Before anything reads the body or sets a header: a forwarded
	// request carries it on, and the owner's answer has its own.
	answered, release := ep.route(w, r, sid, true)
	defer release()
	if answered {
		return
	}
	h := w.Header()
	ep.privateHeaders(w, r)
	// A receiver's body carries nothing; reading it to the end lets
	// net/http notice when the client goes away (the request's context).
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, int64(ep.maxBody())))

	fam := sjsFamilies[kind]
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Type", fam.contentType)
	switch kind {
	case sjsXHR, sjsXHRStreaming:
		sjsCORS(h, r, "null")
	case sjsEventSource:
		sjsCORS(h, r, "*") // sockjs-node's eventsource answers null with "*"
	}
	if fam.streaming {
		h.Set("X-Accel-Buffering", "no")
	}
	// A session that expires between lookup and attach is gone: the
	// request opens a new one (bounded: expiry takes a disconnect delay).
	for range 3 {
		f := &sjsFraming{kind: kind, callback: callback, single: !fam.streaming}
		e, ref := ep.session(r, sid, callback != "")
		if ref != nil {
			f.respond(w, appendSJSCloseFrame(nil, ref.code, ref.sjsReason(w.Header())))
			return
		}
		// A close endpoint's session is closed before it attaches: its
		// hello and close packets go out together, the open frame first.
		ep.closeNew(e.sess)
		if !ep.receiveTurn(w, r, fam, f, e) {
			return
		}
	}
	(&sjsFraming{kind: kind, callback: callback, single: !fam.streaming}).respond(w, sjsFrameInterrupted)
}

// receiveTurn carries session e over one receiving request. It reports
// false once it has answered, true (having written nothing) when the
// session turned out to have expired, so that its id names a new one.
func (ep *sockjsEndpoint) receiveTurn(w http.ResponseWriter, r *http.Request, fam *family, f *sjsFraming, e *sjsEntry) (expired bool) {
	turn, ack, ok := e.claim()
	if !ok {
		f.respond(w, sjsFrameStillOpen)
		return false
	}
	f.entry, f.turn, f.mode = e, turn, e.mode()
	// A response that did not end with its last write (the session
	// closed it, the client went away) leaves nothing to acknowledge.
	defer e.endTurn(turn, 0)
	if frame := e.closeFrameOf(); frame != nil {
		f.respond(w, frame)
		return false
	}
	// This request proves the previous response arrived.
	if ack > 0 {
		e.sess.Ack(ack)
	}
	t := &httpDown{n: ep.n, sess: e.sess, fam: fam, f: f, w: w, rc: http.NewResponseController(w), done: make(chan struct{})}
	if fam.streaming {
		// The response limit counts frames, not the prelude.
		t.limit = ep.cfg.ResponseLimit + len(f.appendPrelude(nil))
	}
	if err := e.sess.Attach(t, !fam.streaming); err != nil {
		// The session is ending (its close frame may have just gone to
		// the previous request, whose client came straight back): once
		// it has ended, its close frame answers, unless it expired.
		select {
		case <-e.sess.Done():
		case <-r.Context().Done():
			return false
		}
		if frame := e.closeFrameOf(); frame != nil {
			f.respond(w, frame)
			return false
		}
		return true
	}
	if fam.streaming {
		t.start() // the prelude goes out at once
	}
	// The request broke off when the client went away or stopped reading
	// before the response was complete (a client may well close its
	// connection once it has a complete response, even before this
	// handler saw the write end): SockJS ends such a session.
	if _, reason := ep.n.hold(r, e.sess, t); reason == gateway.DisconnectGone() && !f.finished {
		e.sess.Close(sjsInterrupted)
	}
	return false
}

// privateHeaders sets what every answer on a session URL carries, errors
// included, as sockjs-node's h_sid and h_no_cache filters run first: the
// JSESSIONID cookie (CookieNeeded) and the no-cache header.
func (ep *sockjsEndpoint) privateHeaders(w http.ResponseWriter, r *http.Request) {
	ep.setCookie(w, r)
	sjsNoCache(w.Header())
}

// closeFrameOf returns the close frame of a session that ended, or nil,
// for a receiving request to answer with. Each such request keeps the id
// answering it for another disconnect delay, as sockjs-node re-arms a
// closing session's timer at every receiving request (lib/transport.js,
// Session.register).
func (e *sjsEntry) closeFrameOf() []byte {
	e.mu.Lock()
	frame := e.closeFrame
	if frame != nil {
		e.gone = time.Now()
	}
	e.mu.Unlock()
	if frame != nil {
		e.markCloseOut()
	}
	return frame
}

// sjsFraming is the framing of one SockJS receiving request (see
// polling.go's framing): SockJS frames, each wrapped the way the
// transport carries it. The session's writer uses it one write at a
// time, and the handler reads rendered after hold, once no write can run.
type sjsFraming struct {
	kind     sjsKind
	callback string
	single   bool // a polling response: one frame
	entry    *sjsEntry
	turn     uint64 // the request's turn at receiving (sjsEntry.claim)
	mode     sjsSessionMode
	built    uint64 // the last seq the batch being written accounts for
	finished bool   // the bytes that end the response went out (lastWrite ran)
}

var (
	_ framing    = (*sjsFraming)(nil)
	_ lastWriter = (*sjsFraming)(nil)
)

func (f *sjsFraming) appendPrelude(b []byte) []byte {
	switch f.kind {
	case sjsXHRStreaming:
		return append(b, sjsXHRPrelude...)
	case sjsEventSource:
		return append(b, "\r\n"...)
	case sjsHTMLFile:
		return append(b, sjsHTMLFilePrelude(f.callback)...)
	}
	return b
}

// appendBatch appends the packets' frames; ctl (a native transport's
// control packet) never comes to a SockJS request.
func (f *sjsFraming) appendBatch(b []byte, pkts []gateway.Packet, _ []byte) []byte {
	b, f.built = appendSJSFrames(b, pkts, f.mode, f.entry.markOpened, f.single, nil, f.appendFrame)
	if n := len(pkts); n > 0 && pkts[n-1].Type() == gateway.TypeClose && pkts[n-1].Seq <= f.built {
		f.entry.markCloseOut() // the close packet is the last of a session's packets
	}
	return b
}

// lastWrite ends the request's turn as its last bytes go out: the next
// request may come at once, finds the session free and acknowledges what
// this response carried.
func (f *sjsFraming) lastWrite() {
	f.finished = true
	f.entry.endTurn(f.turn, f.built)
}

func (f *sjsFraming) appendHeartbeat(b []byte) []byte { return f.appendFrame(b, sjsFrameHeartbeat) }

// appendFrame appends one frame in the receiver's framing: a line (xhr),
// an event (eventsource), a script calling the callback (htmlfile, jsonp;
// the frame is quoted as a script string, HTML-safe for htmlfile). A
// JSONP answer starts with an empty comment, as sockjs-node's since 0.3.10
// (#163) and the current protocol tests (JsonPolling): a response that
// starts with the callback name could be read as a Flash file (Rosetta
// Flash), one that starts with /**/ cannot.
func (f *sjsFraming) appendFrame(b, frame []byte) []byte {
	switch f.kind {
	case sjsXHR, sjsXHRStreaming:
		b = append(b, frame...)
		return append(b, '\n')
	case sjsEventSource:
		b = append(b, "data: "...)
		b = appendSJSEventData(b, frame)
		return append(b, "\r\n\r\n"...)
	case sjsHTMLFile:
		b = append(b, "<script>\np("...)
		b = appendSJSQuote(b, frame, true)
		return append(b, ");\n</script>\r\n"...)
	}
	b = append(b, "/**/"...)
	b = append(b, f.callback...)
	b = append(b, '(')
	b = appendSJSQuote(b, frame, false)
	return append(b, ");\r\n"...)
}

// respond answers a request that does not attach with one frame (a
// refusal, a closed session's close frame, c[2010]): after the prelude on
// a stream, as the whole body of a poll.
func (f *sjsFraming) respond(w http.ResponseWriter, frame []byte) {
	b := f.appendFrame(f.appendPrelude(nil), frame)
	if f.single {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// readSJSBody reads a send body; on failure it has answered.
func (ep *sockjsEndpoint) readSJSBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, ref := ep.n.readBody(w, r, int64(ep.maxBody()))
	if ref != nil {
		sjsPlain(w, ref.status, ref.msg)
		return nil, false
	}
	return body, true
}

// deliver hands the messages of a send to the session, in order. A
// session that has closed takes nothing, silently, as in every SockJS
// server: its next receiving request tells the client.
func (ep *sockjsEndpoint) deliver(r *http.Request, e *sjsEntry, msgs [][]byte) {
	if e.closed() {
		return
	}
	for _, m := range msgs {
		if ep.receive(r.Context(), e.sess, e.link, m) != nil {
			return // closed, or the client gave up waiting for room
		}
	}
}

// serveXHRSend takes messages for a session by XHR POST: a JSON array of
// messages. As sockjs-node 0.3.24's xhr_send (lib/trans-xhr.js, with
// expect_xhr in lib/webjs.js): the body is checked before the session is
// looked up, so a bad body gets 500 with the protocol's text whether or
// not the session exists, then 404 for an unknown session, else 204.
func (ep *sockjsEndpoint) serveXHRSend(w http.ResponseWriter, r *http.Request, sid string) {
	if ref := ep.n.gate.origin(r); ref != nil {
		sjsRefuse(w, ref)
		return
	}
	if answered, _ := ep.route(w, r, sid, false); answered {
		return
	}
	h := w.Header()
	ep.privateHeaders(w, r)
	sjsCORS(h, r, "null")
	body, ok := ep.readSJSBody(w, r)
	if !ok {
		return
	}
	if !sjsXHRContentTypes[sjsMediaType(r.Header.Get("Content-Type"))] {
		body = nil // sockjs-node reads no body of another type
	}
	msgs, err := parseSJSMessages(body)
	if err != nil {
		sjsPlain(w, http.StatusInternalServerError, err.Error())
		return
	}
	e := ep.lookup(r, sid, false)
	if e == nil {
		sjsNotFound(w)
		return
	}
	ep.deliver(r, e, msgs)
	// Firefox takes a 204 without a content type for XML and complains.
	h.Set("Content-Type", "text/plain; charset=UTF-8")
	w.WriteHeader(http.StatusNoContent)
}

// sjsXHRContentTypes are the media types whose body xhr_send reads
// (sockjs-node's expect_xhr); a body of another type is no payload.
var sjsXHRContentTypes = map[string]bool{
	"text/plain": true, "T": true, "application/json": true, "application/xml": true, "": true, "text/xml": true,
}

// sjsMediaType is a Content-Type's media type as sockjs-node reads it:
// what comes before the first ";", as it is (no trimming, no case
// folding).
func sjsMediaType(contentType string) string {
	mt, _, _ := strings.Cut(contentType, ";")
	return mt
}

// serveJSONPSend takes messages for a session by form POST (the jsonp
// transport's sender): field "d" of a form, or the body itself as
// text/plain. It answers "ok" with 200, as the protocol asks (some
// browsers mishandle a 204 here). As sockjs-node's jsonp_send
// (lib/trans-jsonp.js, with expect_form), the body is checked before the
// session is looked up.
func (ep *sockjsEndpoint) serveJSONPSend(w http.ResponseWriter, r *http.Request, sid string) {
	if ref := ep.n.gate.origin(r); ref != nil {
		sjsRefuse(w, ref)
		return
	}
	if answered, _ := ep.route(w, r, sid, false); answered {
		return
	}
	ep.privateHeaders(w, r)
	body, ok := ep.readSJSBody(w, r)
	if !ok {
		return
	}
	payload, err := sjsJSONPPayload(r.Header.Get("Content-Type"), body)
	var msgs [][]byte
	if err == nil {
		msgs, err = parseSJSMessages(payload)
	}
	if err != nil {
		sjsPlain(w, http.StatusInternalServerError, err.Error())
		return
	}
	e := ep.lookup(r, sid, true)
	if e == nil {
		sjsNotFound(w)
		return
	}
	ep.deliver(r, e, msgs)
	sjsPlain(w, http.StatusOK, "ok")
}

// sjsJSONPPayload extracts the messages' JSON from a jsonp_send body, as
// sockjs-node's jsonp_send does: from a form, field "d" (absent or empty:
// no payload); from a text/plain body (or one without a type), the body,
// which is JSON, and when that JSON is a non-empty string, the string
// (clients may quote the array once more). Another media type carries no
// payload.
func sjsJSONPPayload(contentType string, body []byte) ([]byte, error) {
	switch sjsMediaType(contentType) {
	case "application/x-www-form-urlencoded":
		// A malformed pair does not spoil the others: ParseQuery keeps
		// what it could read.
		vals, _ := url.ParseQuery(string(body))
		d := vals.Get("d")
		if d == "" {
			return nil, errSJSPayloadExpected
		}
		return []byte(d), nil
	case "text/plain", "":
		if len(body) == 0 {
			return nil, errSJSPayloadExpected
		}
		if !json.Valid(body) {
			return nil, errSJSBrokenJSON
		}
		var s string
		if t := bytes.Trim(body, sjsJSONSpace); t[0] == '"' && json.Unmarshal(t, &s) == nil && s != "" {
			return []byte(s), nil
		}
		return body, nil
	}
	return nil, errSJSPayloadExpected
}
