package transports

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/gateway"
)

// publishRequest is the body of POST /api/publish: a channel and exactly one
// of data (any JSON value), text (a string sent as UTF-8 bytes) or b64
// (bytes, standard base64), and optionally the publisher's message id: a
// publisher that retries a publish it got no answer for sends the same
// id, and subscribers get the message once.
type publishRequest struct {
	Channel string          `json:"channel"`
	ID      string          `json:"id"`
	Data    json.RawMessage `json:"data"`
	Text    *string         `json:"text"`
	B64     *string         `json:"b64"`
}

func (p *publishRequest) payload() ([]byte, string, error) {
	n := 0
	for _, set := range []bool{p.Data != nil, p.Text != nil, p.B64 != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, "", errors.New(`exactly one of "data", "text" or "b64" is required`)
	}
	switch {
	case p.Data != nil:
		b, err := compactJSON(p.Data)
		return b, gateway.ContentTypeJSON, err
	case p.Text != nil:
		return []byte(*p.Text), gateway.ContentTypeText, nil
	}
	b, err := base64.StdEncoding.DecodeString(*p.B64)
	if err != nil {
		return nil, "", fmt.Errorf(`"b64" is not valid base64: %w`, err)
	}
	return b, gateway.ContentTypeBinary, nil
}

func compactJSON(raw json.RawMessage) ([]byte, error) {
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// publishHandler serves POST /api/publish, the server-side publish API.
// It answers 200 only once the broker confirmed the message.
type publishHandler struct{ *node }

func (h publishHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	keyed := h.hasKey(r)
	if !keyed && h.crossSite(r) {
		// A browser on the node's own machine is loopback too: a page of
		// any site could publish through it with a simple POST.
		writeJSON(w, http.StatusForbidden, errorBody{Error: "a cross-site request to the publish API needs an API key", Code: gateway.DisconnectForbidden.Code})
		return
	}
	if !keyed && !(h.opts.AllowLoopback && h.gate.clientAddr(r).IsLoopback()) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cometgate"`)
		writeError(w, http.StatusUnauthorized, "an API key is required: Authorization: Bearer KEY")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		// Also what keeps a browser from sending a cross-site form or
		// text/plain POST without a CORS preflight.
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return
	}
	var req publishRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "body must be JSON like {\"channel\":\"demo.x\",\"data\":{}}: "+err.Error())
		return
	}
	if err := brokers.ValidateChannel(req.Channel); err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	data, contentType, err := req.payload()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := gateway.CheckMessageID(req.ID); err != nil {
		writeError(w, http.StatusBadRequest, `"id": `+err.Error())
		return
	}
	if err := h.gw.PublishWithID(r.Context(), req.Channel, req.ID, data, contentType); err != nil {
		writeError(w, http.StatusServiceUnavailable, "publish failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// sendHandler serves POST /session/{sid}/send: upstream frames for a
// session whose downstream cannot carry them (SSE, and the polling
// transports), a frame or a JSON array of frames. Answers to requests go
// down the session's stream as packets.
type sendHandler struct{ *node }

func (h sendHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.forward(w, r, chi.URLParam(r, "sid")) {
		return
	}
	if ref := h.gate.origin(r); ref != nil {
		ref.writeJSON(w)
		return
	}
	h.cors(w, r)
	sess := h.gw.Session(chi.URLParam(r, "sid"))
	if sess == nil {
		h.gate.sessionGone().writeJSON(w)
		return
	}
	if ref := h.gate.join(r, sess, false); ref != nil {
		ref.writeJSON(w)
		return
	}
	limit := int64(h.maxFrame) * 8
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", limit))
		return
	}
	frames, errs, err := gateway.DecodeFrames(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	for i, f := range frames {
		if errs[i] != nil {
			// Answered on the stream like any bad frame, so the client's
			// request ids stay in one place.
			sess.Reject(f, errs[i])
			continue
		}
		sess.Apply(r.Context(), f)
	}
	w.WriteHeader(http.StatusNoContent)
}

// crossSite reports whether a browser sent r from a page of another site:
// its Origin is one the node does not allow, or the browser says so
// (Sec-Fetch-Site, sent even where Origin is not).
func (h publishHandler) crossSite(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Sec-Fetch-Site"), "cross-site") || h.gate.origin(r) != nil
}

// hasKey reports whether r carries one of the API keys.
func (h publishHandler) hasKey(r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	key, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || key == "" {
		return false
	}
	for _, k := range h.opts.APIKeys {
		if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			return true
		}
	}
	return false
}
