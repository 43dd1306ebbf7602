package transports

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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
	body, ok := h.authorizedBody(w, r)
	if !ok {
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
	if gateway.IsReserved(req.Channel) {
		// Refused here, not by the broker's publish: a server's mistake
		// or probe is a 403, not a failed publish to retry.
		ref := &refusal{status: http.StatusForbidden, code: gateway.DisconnectForbidden.Code,
			msg: fmt.Sprintf("channel %q is reserved for the gateway nodes", req.Channel)}
		ref.writeJSON(w)
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

// authorizedBody authorises an API request (an API key, or loopback when
// allowed; never a cross-site page without a key; a JSON body) and reads
// its body. false: it answered already.
func (h publishHandler) authorizedBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	keyed := h.hasKey(r)
	if !keyed && h.crossSite(r) {
		// A browser on the node's own machine is loopback too: a page of
		// any site could publish through it with a simple POST.
		h.gate.metrics.Refused(gateway.RefusedAPIKey)
		writeJSON(w, http.StatusForbidden, errorBody{Error: "a cross-site request to the publish API needs an API key", Code: gateway.DisconnectForbidden.Code})
		return nil, false
	}
	if !keyed && !(h.opts.AllowLoopback && h.gate.clientAddr(r).IsLoopback()) {
		h.gate.metrics.Refused(gateway.RefusedAPIKey)
		w.Header().Set("WWW-Authenticate", `Bearer realm="cometgate"`)
		writeError(w, http.StatusUnauthorized, "an API key is required: Authorization: Bearer KEY")
		return nil, false
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		// Also what keeps a browser from sending a cross-site form or
		// text/plain POST without a CORS preflight.
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return nil, false
	}
	body, ref := h.readBody(w, r, h.opts.MaxBodyBytes)
	if ref != nil {
		ref.writeJSON(w)
		return nil, false
	}
	return body, true
}

// revokeRequest is the body of POST /api/revoke.
type revokeRequest struct {
	Sub    string `json:"sub"`
	Reason string `json:"reason"`
}

// revokeHandler serves POST /api/revoke, authorised like the publish
// API: {"sub":"alice","reason":"…"} ends alice's sessions on every node
// and has the nodes refuse the credentials she holds
// (gateway.Gateway.Revoke). It answers 200 once the broker confirmed.
type revokeHandler struct{ *node }

func (h revokeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := publishHandler(h).authorizedBody(w, r)
	if !ok {
		return
	}
	var req revokeRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Sub == "" {
		writeError(w, http.StatusBadRequest, `body must be JSON like {"sub":"alice","reason":"password changed"}`)
		return
	}
	if err := h.gw.Revoke(r.Context(), req.Sub, req.Reason); err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, gateway.ErrNoSubject) || errors.Is(err, gateway.ErrBadSubject) || errors.Is(err, gateway.ErrBadReason) {
			status = http.StatusBadRequest
		}
		writeError(w, status, "revoke failed: "+err.Error())
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
	body, ref := h.readFrames(w, r)
	if ref != nil {
		ref.writeJSON(w)
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
	return strings.EqualFold(r.Header.Get("Sec-Fetch-Site"), "cross-site") || !h.gate.originAllowed(r)
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
