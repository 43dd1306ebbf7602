package transports

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/cometgate/cometgate/gateway"
)

// JSONP polling: long-polling for clients that can only load scripts. A
// response is /**/NAME([packets]); and the heartbeat is /**/NAME([]);.
// The leading empty comment keeps the body from starting with bytes the
// client chose (the "Rosetta Flash" family of attacks, where a crafted
// callback name makes a response parse as another format); nosniff stops
// the response from running as anything but a script.
//
// A script element runs a response only when its status is 2xx, so once
// the callback name is valid every answer is a 200 that calls it: a
// refused poll calls it with a transport-level close packet, a refused send
// with {"ok":false,"code":…,"error":…}. A bad callback name gets a JSON 400:
// there is nothing to call.
//
// Upstream frames go by GET /jsonp_send/{sid}?cb=NAME&d=FRAMES, where
// FRAMES is the URL-encoded frame or array of frames that
// POST /session/{sid}/send takes as its body.

type jsonpFraming struct {
	cb string // validated by parseCallback
}

func (jsonpFraming) appendPrelude(b []byte) []byte { return b }

func (f jsonpFraming) appendBatch(b []byte, pkts []gateway.Packet, ctl []byte) []byte {
	b = append(b, "/**/"...)
	b = append(b, f.cb...)
	b = append(b, '(')
	b = appendArray(b, pkts, ctl)
	return append(b, ");"...)
}

func (f jsonpFraming) appendHeartbeat(b []byte) []byte { return f.appendBatch(b, nil, nil) }

// sendAnswer is the argument of a /jsonp_send callback.
type sendAnswer struct {
	OK    bool   `json:"ok"`
	Code  int    `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// jsonpSendHandler serves GET /jsonp_send/{sid}: it applies upstream
// frames for a JSONP session and answers NAME({"ok":true}); once they are
// applied. As with POST /session/{sid}/send, answers to the frames
// themselves (ok and err packets) go down the session.
type jsonpSendHandler struct{ *node }

func (h jsonpSendHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.forward(w, r, chi.URLParam(r, "sid")) {
		return
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store, no-transform")
	hdr.Set("X-Accel-Buffering", "no")
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeRefusal(w, famJSONP, nil, &refusal{status: http.StatusBadRequest, code: gateway.DisconnectProtocol.Code, msg: "malformed query string: " + err.Error()})
		return
	}
	cb, err := parseCallback(q["cb"])
	if err != nil {
		writeRefusal(w, famJSONP, nil, &refusal{status: http.StatusBadRequest, code: gateway.DisconnectProtocol.Code, msg: err.Error()})
		return
	}
	answer := func(a sendAnswer) {
		arg, _ := json.Marshal(a) // escapes "<", ">", "&", U+2028 and U+2029
		b := make([]byte, 0, len(cb)+len(arg)+8)
		b = append(b, "/**/"...)
		b = append(b, cb...)
		b = append(b, '(')
		b = append(b, arg...)
		b = append(b, ");"...)
		hdr.Set("Content-Type", famJSONP.contentType)
		hdr.Set("X-Content-Type-Options", "nosniff")
		hdr.Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b)
	}
	fail := func(code int, msg string) { answer(sendAnswer{Code: code, Error: msg}) }

	sid := chi.URLParam(r, "sid")
	if err := parseSID(sid); err != nil {
		fail(gateway.DisconnectProtocol.Code, err.Error())
		return
	}
	if ref := h.gate.origin(r); ref != nil {
		fail(ref.code, ref.msg)
		return
	}
	h.cors(w, r)
	d := q["d"]
	if len(d) != 1 {
		fail(gateway.DisconnectProtocol.Code, `exactly one "d" is required: the URL-encoded frame or array of frames`)
		return
	}
	if limit := h.maxFrame * 8; len(d[0]) > limit {
		fail(gateway.DisconnectTooLarge.Code, fmt.Sprintf(`"d" exceeds %d bytes`, limit))
		return
	}
	frames, errs, err := gateway.DecodeFrames([]byte(d[0]))
	if err != nil {
		fail(gateway.DisconnectProtocol.Code, err.Error())
		return
	}
	sess := h.gw.Session(sid)
	if sess == nil || !sess.Retain() {
		ref := h.gate.sessionGone()
		fail(ref.code, ref.msg)
		return
	}
	if ref := h.gate.join(r, sess, true); ref != nil {
		fail(ref.code, ref.msg)
		return
	}
	applyFrames(r.Context(), sess, frames, errs)
	answer(sendAnswer{OK: true})
}
