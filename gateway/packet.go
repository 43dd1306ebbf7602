package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cometgate/cometgate/brokers"
)

// Packet types, the "t" field of a server→client packet.
const (
	TypeHello = "hello"
	TypeMsg   = "msg"
	TypeOK    = "ok"
	TypeErr   = "err"
	TypeGap   = "gap"
	TypeClose = "close"
	// TypeData is not a packet: it is a raw payload queued by
	// Session.SendData for a transport mode that carries bytes rather than
	// packets (SockJS echo and tcp endpoints). It has no JSON form; the
	// transport writes Body.Data in its own framing.
	TypeData = "data"
)

// Body is the encoded part of a packet that does not depend on the session:
// everything after `{"seq":N,`. A message's Body is encoded once when it
// arrives from the broker and the same Body is queued to every subscriber;
// it is immutable after creation and may be read from any goroutine.
// (Derived adds to it encodings computed once, on first use.)
//
// The JSON is compact and HTML-safe ("<", ">", "&", U+2028 and U+2029 are
// escaped), so the same bytes can go into an SSE data line, a WebSocket
// frame, a JSONP callback argument or an inline <script> without another
// encoding pass. A TypeData body holds raw bytes instead (see Data).
type Body struct {
	json    []byte // `"t":"msg",…}`
	typ     string
	channel string // msg, gap: the channel or pattern concerned
	pattern string // msg: the subscription pattern that matched
	cursor  string // msg: the message's cursor, if the channel has history
	seq     uint64 // msg: the message's position in history, 0 if none
	arrived time.Time
	// derived holds the encodings transports derive from json (see
	// Derived), allocated by the first of them: nil costs a body one
	// pointer.
	derived atomic.Pointer[derivedSet]
}

// MaxDerived is the number of encodings a body can hold for transports
// (see Derived): slots 0 to MaxDerived-1.
const MaxDerived = 2

// derivedSet is a body's derived encodings, one per slot.
type derivedSet [MaxDerived]struct {
	once sync.Once
	b    []byte
}

// Derived returns the encoding of the body's JSON that derive computes
// (a transport's compressed form, say), computing it once per body and
// slot, on first use, however many sessions send the body: the first
// caller pays, concurrent callers wait for it, later ones read it. A
// slot is a transport's own (0 to MaxDerived-1), and must always be
// asked with the same derive. The result must not be modified.
func (b *Body) Derived(slot int, derive func(json []byte) []byte) []byte {
	set := b.derived.Load()
	if set == nil {
		b.derived.CompareAndSwap(nil, new(derivedSet))
		set = b.derived.Load()
	}
	d := &set[slot]
	d.once.Do(func() { d.b = derive(b.json) })
	return d.b
}

// Type is the packet type ("msg", "ok", …).
func (b *Body) Type() string { return b.typ }

// Size is the packet's encoded size without the per-session seq prefix
// (for TypeData, the payload's size).
func (b *Body) Size() int { return len(b.json) }

// Data is the payload of a TypeData body, nil for every other type. It
// must not be modified.
func (b *Body) Data() []byte {
	if b.typ != TypeData {
		return nil
	}
	return b.json
}

// dataBody wraps a raw payload (see TypeData); data is kept, not copied.
func dataBody(data []byte) *Body { return &Body{typ: TypeData, json: data} }

// Packet is one numbered server→client packet: a session's seq and a
// (usually shared) Body. It is small and passed by value.
type Packet struct {
	Seq  uint64
	body *Body
}

// NewPacket numbers body for a session: what the session's queue does,
// for transports' tests and benchmarks of their framing.
func NewPacket(seq uint64, body *Body) Packet { return Packet{Seq: seq, body: body} }

// Body returns the packet's shared body.
func (p Packet) Body() *Body { return p.body }

// Type is the packet type ("msg", "ok", …).
func (p Packet) Type() string { return p.body.typ }

// Cursor is the cursor of a msg packet on a channel with history, else "".
func (p Packet) Cursor() string { return p.body.cursor }

// Channel is the channel of a msg or gap packet, else "".
func (p Packet) Channel() string { return p.body.channel }

// Pattern is the subscription pattern a msg packet was delivered for.
func (p Packet) Pattern() string { return p.body.pattern }

// Size is an upper bound of the bytes AppendJSON adds (not meaningful for
// TypeData, which has no JSON form).
func (p Packet) Size() int { return len(p.body.json) + len(`{"seq":,`) + 20 }

// JSONLen is the exact number of bytes AppendJSON adds, for framings that
// put the length first (WebSocket).
func (p Packet) JSONLen() int {
	n := len(`{"seq":,`) + len(p.body.json) + 1
	for v := p.Seq; v >= 10; v /= 10 {
		n++
	}
	return n
}

// AppendJSON appends the packet's complete JSON object to dst: the
// per-session prefix `{"seq":N,` followed by the shared body bytes.
func (p Packet) AppendJSON(dst []byte) []byte {
	return append(p.AppendPrefix(dst), p.body.json...)
}

// AppendPrefix appends the per-session part of the packet's JSON,
// `{"seq":N,`; what follows it is the body's (Derived's input).
func (p Packet) AppendPrefix(dst []byte) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, p.Seq, 10)
	return append(dst, ',')
}

// newBody starts a body of type typ; the caller appends fields and calls
// finish.
func newBody(typ string) ([]byte, *Body) {
	b := make([]byte, 0, 64)
	b = append(b, `"t":"`...)
	b = append(b, typ...)
	b = append(b, '"')
	return b, &Body{typ: typ}
}

func (b *Body) finish(buf []byte) *Body {
	b.json = append(buf, '}')
	return b
}

func appendField(dst []byte, name, value string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return appendJSONString(dst, value)
}

func appendIntField(dst []byte, name string, v int64) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return strconv.AppendInt(dst, v, 10)
}

// EncodeMessage builds the body of a msg packet for a broker message
// delivered through the subscription pattern. The hub calls it once per
// message and pattern, however many sessions receive it; a replay, once per
// message for its one session.
func EncodeMessage(m brokers.Message, pattern string, arrived time.Time) *Body {
	buf, b := newBody(TypeMsg)
	b.channel, b.arrived, b.seq = m.Channel, arrived, m.Seq
	if m.Seq != 0 {
		b.cursor = strconv.FormatUint(m.Seq, 10)
	}
	buf = appendField(buf, "ch", m.Channel)
	if pattern != m.Channel {
		b.pattern = pattern
		buf = appendField(buf, "sub", pattern)
	} else {
		b.pattern = m.Channel
	}
	if b.cursor != "" {
		buf = appendField(buf, "cur", b.cursor)
	}
	buf = appendPayload(buf, m.Data, m.Header["Content-Type"])
	return b.finish(buf)
}

// Content types that say how a payload is shown to clients. cometgate's own
// publishers (the API and browser pub frames) set them, so that a payload
// published as text stays text even when it looks like JSON ("42"); AMQP
// publishers set them as content_type.
const (
	ContentTypeJSON   = "application/json"
	ContentTypeText   = "text/plain; charset=utf-8"
	ContentTypeBinary = "application/octet-stream"
)

// payloadKind reads a Content-Type: "data", "text", "b64", or "" (unknown:
// decide by the bytes).
func payloadKind(contentType string) string {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		return "data"
	case strings.HasPrefix(mt, "text/"):
		return "text"
	case mt == "application/octet-stream":
		return "b64"
	}
	return ""
}

// appendPayload appends exactly one of "data" (JSON, compacted and
// HTML-escaped), "text" (UTF-8) or "b64": as the content type says where
// the bytes allow it, else by the bytes. JSON whose strings hold invalid
// UTF-8 is not embedded as data: json.Valid accepts it, but the packet
// would not be UTF-8 (a browser fails a WebSocket on such a text frame),
// so it goes as b64.
func appendPayload(dst, data []byte, contentType string) []byte {
	kind := payloadKind(contentType)
	valid := utf8.Valid(data)
	switch {
	case kind == "text" && valid:
		dst = append(dst, `,"text":`...)
		return appendJSONString(dst, string(data))
	case kind == "b64":
		dst = append(dst, `,"b64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, data)
		return append(dst, '"')
	}
	if len(data) > 0 && valid && json.Valid(data) {
		dst = append(dst, `,"data":`...)
		var compact bytes.Buffer
		compact.Grow(len(data))
		if json.Compact(&compact, data) == nil {
			var safe bytes.Buffer
			safe.Grow(compact.Len())
			json.HTMLEscape(&safe, compact.Bytes())
			return append(dst, safe.Bytes()...)
		}
		dst = dst[:len(dst)-len(`,"data":`)]
	}
	if utf8.Valid(data) {
		dst = append(dst, `,"text":`...)
		return appendJSONString(dst, string(data))
	}
	dst = append(dst, `,"b64":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, data)
	return append(dst, '"')
}

// decodePayload is the inverse of the payload encoding for a client frame:
// it returns the broker bytes for exactly one of data, text or b64, and
// the content type that keeps that choice.
func decodePayload(f *Frame) ([]byte, string, error) {
	n := 0
	if f.Data != nil {
		n++
	}
	if f.Text != nil {
		n++
	}
	if f.B64 != nil {
		n++
	}
	if n != 1 {
		return nil, "", errPayloadFields
	}
	switch {
	case f.Data != nil:
		var out bytes.Buffer
		if err := json.Compact(&out, f.Data); err != nil {
			return nil, "", err
		}
		return out.Bytes(), ContentTypeJSON, nil
	case f.Text != nil:
		return []byte(*f.Text), ContentTypeText, nil
	default:
		b, err := base64.StdEncoding.DecodeString(*f.B64)
		return b, ContentTypeBinary, err
	}
}

func helloBody(sid string, hb time.Duration) *Body {
	buf, b := newBody(TypeHello)
	buf = appendIntField(buf, "v", ProtocolVersion)
	buf = appendField(buf, "sid", sid)
	buf = appendIntField(buf, "hb", int64(hb/time.Second))
	return b.finish(buf)
}

// okBody answers request id (0: an answer to a URL subscription, which has
// no id) about channel ch ("" when the request had none).
func okBody(id int64, ch string) *Body {
	buf, b := newBody(TypeOK)
	if id != 0 {
		buf = appendIntField(buf, "id", id)
	}
	if ch != "" {
		buf = appendField(buf, "ch", ch)
	}
	return b.finish(buf)
}

// subOKBody answers a subscription; "history" tells the client whether the
// channel keeps history, i.e. whether its cursors can be resumed from.
func subOKBody(id int64, ch string, history bool) *Body {
	buf, b := newBody(TypeOK)
	if id != 0 {
		buf = appendIntField(buf, "id", id)
	}
	buf = appendField(buf, "ch", ch)
	if history {
		buf = append(buf, `,"history":true`...)
	} else {
		buf = append(buf, `,"history":false`...)
	}
	return b.finish(buf)
}

func errBody(id int64, ch string, code int, msg string) *Body {
	buf, b := newBody(TypeErr)
	if id != 0 {
		buf = appendIntField(buf, "id", id)
	}
	if ch != "" {
		buf = appendField(buf, "ch", ch)
	}
	buf = appendIntField(buf, "code", int64(code))
	buf = appendField(buf, "error", msg)
	return b.finish(buf)
}

// GapBody tells a client that messages on channel (or pattern) ch were lost
// to it; oldest is the oldest cursor still available, or "".
func GapBody(ch, reason, oldest string) *Body {
	buf, b := newBody(TypeGap)
	b.channel = ch
	buf = appendField(buf, "ch", ch)
	buf = appendField(buf, "reason", reason)
	if oldest != "" {
		buf = appendField(buf, "oldest", oldest)
	}
	return b.finish(buf)
}

// closeBody is the session's last packet. A close that asks the client
// to reconnect also advises how long to wait first ("delay", in
// milliseconds), drawn at random for each session: when a node drains or
// fails, its clients come back spread over a few seconds instead of all
// at once.
func closeBody(d Disconnect) *Body {
	buf, b := newBody(TypeClose)
	buf = appendIntField(buf, "code", int64(d.Code))
	buf = appendField(buf, "reason", d.Reason)
	if d.Reconnect() {
		buf = append(buf, `,"reconnect":true`...)
		buf = appendIntField(buf, "delay", int64(reconnectDelay(d)/time.Millisecond))
	} else {
		buf = append(buf, `,"reconnect":false`...)
	}
	return b.finish(buf)
}

// reconnectDelay is the advice a close packet gives: up to 5 s after a
// node's shutdown (all of its clients leave at once), up to 1 s otherwise.
func reconnectDelay(d Disconnect) time.Duration {
	spread := time.Second
	if d == DisconnectShutdown {
		spread = 5 * time.Second
	}
	return rand.N(spread)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, escaping what JSON requires
// and also "<", ">", "&", U+2028 and U+2029, so that the result is safe
// inside HTML and JavaScript source. Invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
