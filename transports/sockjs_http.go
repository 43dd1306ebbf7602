package transports

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
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

// sjsHTMLFileHead is the htmlfile page before the frames; %s is the
// callback (validated: letters, digits, "_" and ".").
const sjsHTMLFileHead = `<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>
`

// sjsHTMLFilePrelude returns the htmlfile head for callback, padded past
// the 1 KiB Safari needs before it renders anything.
func sjsHTMLFilePrelude(callback string) []byte {
	b := fmt.Appendf(nil, sjsHTMLFileHead, callback)
	if pad := 1024 - len(b); pad > 0 {
		b = append(b, bytes.Repeat([]byte{' '}, pad)...)
	}
	return append(b, "\r\n\r\n"...)
}

// sjsMaxBody bounds a send body (and a websocket message) of a session.
func (ep *sockjsEndpoint) maxBody() int {
	return max(ep.srv.maxFrame*8, 64<<10)
}

// serveReceiver serves a receiving request of the given kind for session
// sid, opening the session if it does not exist.
func (ep *sockjsEndpoint) serveReceiver(w http.ResponseWriter, r *http.Request, sid string, kind sjsKind) {
	var callback string
	if kind == sjsHTMLFile || kind == sjsJSONP {
		q := r.URL.Query()
		switch {
		case q.Has("c"):
			callback = q.Get("c")
		case q.Has("callback"):
			callback = q.Get("callback")
		default:
			sjsPlain(w, http.StatusInternalServerError, `"callback" parameter required`)
			return
		}
		if !sjsValidCallback(callback) {
			sjsPlain(w, http.StatusInternalServerError, `invalid "callback" parameter`)
			return
		}
	}
	if ep.srv.gate.origin(r) != nil {
		sjsPlain(w, http.StatusForbidden, "origin not allowed")
		return
	}
	// A receiver's body carries nothing; reading it to the end lets
	// net/http notice when the client goes away (the request's context).
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, int64(ep.maxBody())))

	h := w.Header()
	ep.setCookie(w, r)
	sjsNoCache(h)
	h.Set("X-Content-Type-Options", "nosniff")
	switch kind {
	case sjsXHR, sjsXHRStreaming:
		sjsCORS(w, r)
		h.Set("Content-Type", "application/javascript; charset=UTF-8")
	case sjsEventSource:
		// Not in the protocol, but what lets a cross-origin page use
		// eventsource rather than fall back to an iframe.
		sjsCORS(w, r)
		h.Set("Content-Type", "text/event-stream; charset=UTF-8")
	case sjsHTMLFile:
		h.Set("Content-Type", "text/html; charset=UTF-8")
	case sjsJSONP:
		h.Set("Content-Type", "application/javascript; charset=UTF-8")
	}
	oneShot := kind == sjsXHR || kind == sjsJSONP
	out := &sjsHTTPOut{
		w: w, rc: http.NewResponseController(w), kind: kind, callback: callback,
		timeout: ep.srv.opts.WriteTimeout, buf: getBuffer(512), started: !oneShot,
	}
	defer out.finish()
	limit := 0
	if !oneShot {
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		var prelude []byte
		switch kind {
		case sjsXHRStreaming:
			prelude = sjsXHRPrelude
		case sjsEventSource:
			prelude = []byte("\r\n")
		case sjsHTMLFile:
			prelude = sjsHTMLFilePrelude(callback)
		}
		if _, err := out.write(prelude); err != nil {
			return
		}
		limit = ep.cfg.ResponseLimit
	}
	// A session that expires between lookup and attach is gone: the
	// request opens a new one (bounded: expiry takes a disconnect delay).
	for range 3 {
		s, ref := ep.session(r, sid)
		if ref != nil {
			_, _ = out.writeFrame(ref.frame)
			return
		}
		if s.run(r.Context(), newSJSRecv(out, oneShot, limit)) {
			return
		}
	}
	_, _ = out.writeFrame(sjsFrameInterrupted)
}

// sjsHTTPOut writes the frames of one receiving response.
type sjsHTTPOut struct {
	w        http.ResponseWriter
	rc       *http.ResponseController
	kind     sjsKind
	callback string
	timeout  time.Duration
	buf      *[]byte
	started  bool // the status line went out (streaming: at once; polling: with the frame)
}

var _ sjsOut = (*sjsHTTPOut)(nil)

// writeFrame writes frame in the receiver's framing: a line (xhr), an
// event (eventsource), a script calling the callback (htmlfile, jsonp;
// the frame is quoted as a script string, HTML-safe for htmlfile).
func (o *sjsHTTPOut) writeFrame(frame []byte) (int, error) {
	b := (*o.buf)[:0]
	switch o.kind {
	case sjsXHR, sjsXHRStreaming:
		b = append(b, frame...)
		b = append(b, '\n')
	case sjsEventSource:
		b = append(b, "data: "...)
		b = appendSJSEventData(b, frame)
		b = append(b, "\r\n\r\n"...)
	case sjsHTMLFile:
		b = append(b, "<script>\np("...)
		b = appendSJSQuote(b, frame, true)
		b = append(b, ");\n</script>\r\n"...)
	case sjsJSONP:
		b = append(b, o.callback...)
		b = append(b, '(')
		b = appendSJSQuote(b, frame, false)
		b = append(b, ");\r\n"...)
	}
	*o.buf = b
	if !o.started {
		// A polling response is this one frame.
		o.started = true
		o.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		o.w.WriteHeader(http.StatusOK)
	}
	return o.write(b)
}

// write writes b and flushes it, within the write timeout.
func (o *sjsHTTPOut) write(b []byte) (int, error) {
	_ = o.rc.SetWriteDeadline(time.Now().Add(o.timeout))
	n, err := o.w.Write(b)
	if err == nil {
		err = o.rc.Flush()
	}
	return n, err
}

// finish clears the write deadline (net/http keeps it on the connection
// for its next request) and returns the buffer.
func (o *sjsHTTPOut) finish() {
	_ = o.rc.SetWriteDeadline(time.Time{})
	putBuffer(o.buf)
}

// readSJSBody reads a send body; on failure it has answered.
func (ep *sockjsEndpoint) readSJSBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := int64(ep.maxBody())
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			sjsPlain(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", limit))
		} else {
			sjsPlain(w, http.StatusBadRequest, "reading body: "+err.Error())
		}
		return nil, false
	}
	return body, true
}

// deliver hands the messages of a send to the session, in order.
func (ep *sockjsEndpoint) deliver(r *http.Request, s *sjsSession, msgs [][]byte) {
	for _, m := range msgs {
		if s.receive(r.Context(), m) != nil {
			return // closed, or the client gave up waiting for room
		}
	}
}

// serveXHRSend takes messages for a session by XHR POST: a JSON array of
// messages. 204 on success; 404 for an unknown session; 500 with the
// protocol's text for a missing or broken body.
func (ep *sockjsEndpoint) serveXHRSend(w http.ResponseWriter, r *http.Request, sid string) {
	if ep.srv.gate.origin(r) != nil {
		sjsPlain(w, http.StatusForbidden, "origin not allowed")
		return
	}
	h := w.Header()
	ep.setCookie(w, r)
	sjsNoCache(h)
	sjsCORS(w, r)
	s := ep.lookup(r, sid)
	if s == nil {
		sjsNotFound(w)
		return
	}
	body, ok := ep.readSJSBody(w, r)
	if !ok {
		return
	}
	msgs, err := parseSJSMessages(body)
	if err != nil {
		sjsPlain(w, http.StatusInternalServerError, err.Error())
		return
	}
	ep.deliver(r, s, msgs)
	// Firefox takes a 204 without a content type for XML and complains.
	h.Set("Content-Type", "text/plain; charset=UTF-8")
	w.WriteHeader(http.StatusNoContent)
}

// serveJSONPSend takes messages for a session by form POST (the jsonp
// transport's sender): field "d" of a form, or the body itself as
// text/plain. It answers "ok" with 200, as the protocol asks (some
// browsers mishandle a 204 here).
func (ep *sockjsEndpoint) serveJSONPSend(w http.ResponseWriter, r *http.Request, sid string) {
	if ep.srv.gate.origin(r) != nil {
		sjsPlain(w, http.StatusForbidden, "origin not allowed")
		return
	}
	ep.setCookie(w, r)
	sjsNoCache(w.Header())
	s := ep.lookup(r, sid)
	if s == nil {
		sjsNotFound(w)
		return
	}
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
	ep.deliver(r, s, msgs)
	sjsPlain(w, http.StatusOK, "ok")
}

// sjsJSONPPayload extracts the messages' JSON from a jsonp_send body.
func sjsJSONPPayload(contentType string, body []byte) ([]byte, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(strings.Split(contentType, ";")[0]))
	}
	switch mt {
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
		return body, nil
	}
	return nil, errSJSPayloadExpected
}
