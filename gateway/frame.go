package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// ProtocolVersion is the wire-format version announced in hello packets.
const ProtocolVersion = 1

// Client frame operations, the "op" field.
const (
	OpSub   = "sub"
	OpUnsub = "unsub"
	OpPub   = "pub"
	OpAck   = "ack"
	OpPing  = "ping"
	// OpRefresh carries a fresh token for the session's principal (in-band
	// token refresh, see Session.Apply).
	OpRefresh = "refresh"
)

// Frame is one decoded client→server frame. The wire format is documented
// in package transports.
type Frame struct {
	Op     string          `json:"op"`
	ID     int64           `json:"id,omitempty"`
	Ch     string          `json:"ch,omitempty"`
	Cursor string          `json:"cursor,omitempty"`
	Latest bool            `json:"latest,omitempty"`
	Last   int             `json:"last,omitempty"`
	Seq    uint64          `json:"seq,omitempty"`
	N      uint64          `json:"n,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
	Text   *string         `json:"text,omitempty"`
	B64    *string         `json:"b64,omitempty"`
	// MID is a pub frame's message id: a client that publishes again
	// after it lost the answer sends the same MID, and the message is
	// delivered once (see brokers.Message.ID).
	MID string `json:"mid,omitempty"`
	// Token is a refresh frame's token.
	Token string `json:"token,omitempty"`
}

var errPayloadFields = errors.New(`exactly one of "data", "text" or "b64" is required`)

// FrameError is a client frame that could not be read. The session answers
// it with an err packet (code 400); it does not end the session.
type FrameError struct {
	ID  int64 // the frame's id, when it could be read
	Msg string
}

func (e *FrameError) Error() string { return "bad frame: " + e.Msg }

// DecodeFrame decodes a single client frame. Unknown fields are ignored, so
// newer clients can talk to older servers.
func DecodeFrame(data []byte) (Frame, error) {
	var f Frame
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return f, &FrameError{Msg: "a frame must be a JSON object"}
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, &FrameError{ID: f.ID, Msg: jsonErrorText(err)}
	}
	if f.ID < 0 {
		return f, &FrameError{Msg: `"id" must be a positive integer`}
	}
	if err := CheckMessageID(f.MID); err != nil {
		return f, &FrameError{ID: f.ID, Msg: `"mid": ` + err.Error()}
	}
	switch f.Op {
	case OpSub, OpUnsub, OpPub, OpAck, OpPing, OpRefresh:
	case "":
		return f, &FrameError{ID: f.ID, Msg: `missing "op"`}
	default:
		return f, &FrameError{ID: f.ID, Msg: fmt.Sprintf("unknown op %q", f.Op)}
	}
	return f, nil
}

// DecodeFrames decodes a request body that holds one frame or a JSON array
// of frames (the polling transports send arrays). It fails as a whole when
// the body is not JSON; per-frame errors come back in errs, index-aligned
// with frames.
func DecodeFrames(data []byte) (frames []Frame, errs []error, err error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '{' {
		f, ferr := DecodeFrame(data)
		return []Frame{f}, []error{ferr}, nil
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		return nil, nil, &FrameError{Msg: "body must be a frame or a JSON array of frames: " + jsonErrorText(err)}
	}
	frames = make([]Frame, len(raws))
	errs = make([]error, len(raws))
	for i, raw := range raws {
		frames[i], errs[i] = DecodeFrame(raw)
	}
	return frames, errs, nil
}

func jsonErrorText(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type, te.Value)
	}
	return err.Error()
}

// MaxMessageIDLen bounds a message id.
const MaxMessageIDLen = 64

// CheckMessageID accepts a message id ("" is none): 1 to 64 bytes of
// printable ASCII, as every broker can carry it in a header.
func CheckMessageID(id string) error {
	if len(id) > MaxMessageIDLen {
		return fmt.Errorf("a message id is at most %d bytes, got %d", MaxMessageIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("a message id is printable ASCII without spaces, got byte %#x", c)
		}
	}
	return nil
}
