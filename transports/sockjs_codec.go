package transports

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// The SockJS codec: the parsers of what clients send (session paths,
// callback names, xhr_send and jsonp_send bodies, cookies) and the quoting
// of what the server sends. Every parser here is fuzzed.

// sjsBodyError is one of the protocol's answers to a bad send body
// (status 500 with exactly this text, capital and full stop included).
type sjsBodyError string

func (e sjsBodyError) Error() string { return string(e) }

// The protocol's answers to a bad send body.
const (
	errSJSPayloadExpected sjsBodyError = "Payload expected."
	errSJSBrokenJSON      sjsBodyError = "Broken JSON encoding."
)

// sjsMaxIDLen bounds the server and session ids of a session URL; clients
// use a few characters (sockjs-client: 3 and 8, test suites: a UUID).
const sjsMaxIDLen = 128

// The bounds of a callback name: sockjs-node's 32 bytes for jsonp; for
// htmlfile, where sockjs-node has none, cometgate's own.
const (
	sjsMaxJSONPCallbackLen    = 32
	sjsMaxHTMLFileCallbackLen = 128
)

// sjsSessionPath splits "/{server}/{session}/{transport}". Server and
// session ids may hold anything but "/" and "." and must not be empty.
func sjsSessionPath(rest string) (server, session, transport string, ok bool) {
	if len(rest) < 2 || rest[0] != '/' {
		return "", "", "", false
	}
	parts := strings.Split(rest[1:], "/")
	if len(parts) != 3 || !sjsValidID(parts[0]) || !sjsValidID(parts[1]) || parts[2] == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

func sjsValidID(s string) bool {
	return s != "" && len(s) <= sjsMaxIDLen && !strings.ContainsAny(s, "/.")
}

// sjsIsIframe reports whether path is an iframe page URL: what
// sockjs-node 0.3.24 matches with /iframe[0-9-.a-z_]*.html (lib/sockjs.js),
// whose unescaped "." takes any one character before "html". Case
// matters: "/IFRAME.HTML" is not found. path is as sent (percent-encoded),
// so it is ASCII.
func sjsIsIframe(path string) bool {
	v, ok := strings.CutPrefix(path, "/iframe")
	if !ok {
		return false
	}
	v, ok = strings.CutSuffix(v, "html")
	if !ok || v == "" || len(v) > sjsMaxIDLen {
		return false
	}
	for i := 0; i < len(v)-1; i++ {
		c := v[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	c := v[len(v)-1] // the regexp's "." (no line terminator; ASCII here)
	return c < utf8.RuneSelf && c != '\n' && c != '\r'
}

// sjsValidCallback reports whether name may be written into a script as
// the callback of jsonp or htmlfile: 1 to max bytes of letters, digits,
// "_", "-" and ".", what sockjs-node allows ([^a-zA-Z0-9-_.] refused), so
// that nothing a client sends can become code. sockjs-node takes an empty
// name too (c=), and writes a script that cannot work; cometgate refuses
// it with the same answer as a bad one, so the page's author learns why.
func sjsValidCallback(name string, max int) bool {
	if name == "" || len(name) > max {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !sjsIsAlnum(c) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func sjsIsAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// sjsValidCookieValue bounds the JSESSIONID value echoed back to what a
// cookie value may hold without quoting.
func sjsValidCookieValue(v string) bool {
	if v == "" || len(v) > 256 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= 0x20 || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
}

// sjsJSONSpace is what JSON (and JavaScript's JSON.parse) takes as
// whitespace around a value.
const sjsJSONSpace = " \t\r\n"

// parseSJSMessages decodes a send body: a JSON array of messages. A string
// element is the message text; any other JSON value is passed on as its
// compact JSON text (hand-written clients may send frames as objects).
// The errors are the protocol's, as sockjs-node's xhr_send gives them:
// errSJSPayloadExpected for an empty body or a JSON value that is not an
// array, errSJSBrokenJSON for anything that is not JSON (whitespace
// alone included).
func parseSJSMessages(body []byte) ([][]byte, error) {
	if len(body) == 0 {
		return nil, errSJSPayloadExpected
	}
	if !json.Valid(body) {
		return nil, errSJSBrokenJSON
	}
	body = bytes.Trim(body, sjsJSONSpace)
	if body[0] != '[' {
		return nil, errSJSPayloadExpected
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		return nil, errSJSBrokenJSON
	}
	msgs := make([][]byte, 0, len(raws))
	for _, raw := range raws {
		if len(raw) > 0 && raw[0] == '"' {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, errSJSBrokenJSON
			}
			msgs = append(msgs, []byte(s))
			continue
		}
		var out bytes.Buffer
		if err := json.Compact(&out, raw); err != nil {
			return nil, errSJSBrokenJSON
		}
		msgs = append(msgs, out.Bytes())
	}
	return msgs, nil
}

// parseSJSWebSocketMessage decodes one WebSocket message of a SockJS
// session: a JSON array of messages or a single JSON value. An empty
// message carries nothing (the protocol says to ignore it); anything
// else that is not JSON, whitespace alone included, is broken framing,
// as for sockjs-node's WebSocketReceiver.didMessage.
func parseSJSWebSocketMessage(data []byte) ([][]byte, error) {
	if len(data) == 0 {
		return nil, nil
	}
	if !json.Valid(data) {
		return nil, errSJSBrokenJSON
	}
	data = bytes.Trim(data, sjsJSONSpace)
	if data[0] == '[' {
		return parseSJSMessages(data)
	}
	if data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, errSJSBrokenJSON
		}
		return [][]byte{[]byte(s)}, nil
	}
	var out bytes.Buffer
	if err := json.Compact(&out, data); err != nil {
		return nil, errSJSBrokenJSON
	}
	return [][]byte{out.Bytes()}, nil
}

const sjsHex = "0123456789abcdef"

// sjsEscaped reports whether r must go as \uXXXX in a SockJS JSON string:
// the characters browsers mangle or drop on some transports, which
// sockjs-node 0.3.24 escapes (utils.quote's escapable in lib/utils.js, the
// protocol's escapable_by_server): U+200C–U+200F, U+2028–U+202F,
// U+2060–U+206F, U+FFF0–U+FFFF; and every character beyond U+FFFF, which
// sockjs-node escapes as its two UTF-16 surrogates (its pattern matches
// U+D800–U+DFFF, and a JavaScript string holds such a character as a
// surrogate pair).
func sjsEscaped(r rune) bool {
	return r >= 0x200c && r <= 0x200f || r >= 0x2028 && r <= 0x202f || r >= 0x2060 && r <= 0x206f ||
		r >= 0xfff0 && r <= 0xffff || r > 0xffff
}

// appendSJSQuote appends s as a JSON string the way sockjs-node quotes
// messages (JSON.stringify, then the escapes of sjsEscaped): JSON's
// escapes (JSON.stringify's short forms for \b \f \n \r \t), lowercase
// \uXXXX for the other control characters and for sjsEscaped (a surrogate
// pair beyond U+FFFF), U+FFFD for invalid UTF-8 (escaped too: it is in
// U+FFF0–U+FFFF). With htmlSafe, "<", ">" and "&" are escaped too, so that
// the string can sit inside an HTML <script> without ending it.
func appendSJSQuote(dst, s []byte, htmlSafe bool) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!htmlSafe || c != '<' && c != '>' && c != '&') {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = appendSJSEscape(dst, rune(c))
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = appendSJSEscape(dst, utf8.RuneError)
		case r > 0xffff:
			dst = append(dst, s[start:i]...)
			hi, lo := utf16.EncodeRune(r)
			dst = appendSJSEscape(appendSJSEscape(dst, hi), lo)
		case sjsEscaped(r):
			dst = append(dst, s[start:i]...)
			dst = appendSJSEscape(dst, r)
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendSJSEscape appends \uXXXX (lowercase hex) for r <= U+FFFF.
func appendSJSEscape(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', sjsHex[r>>12&0xf], sjsHex[r>>8&0xf], sjsHex[r>>4&0xf], sjsHex[r&0xf])
}

// appendSJSEventData appends a frame as the data of an EventSource event.
// sockjs-client decodes it with decodeURI, so "%" must go as "%25"; CR, LF
// and NUL (which a quoted frame never holds) would end the line or the
// stream, so they are %-escaped too.
func appendSJSEventData(dst, frame []byte) []byte {
	start := 0
	for i, c := range frame {
		var esc string
		switch c {
		case '%':
			esc = "%25"
		case '\r':
			esc = "%0D"
		case '\n':
			esc = "%0A"
		case 0:
			esc = "%00"
		default:
			continue
		}
		dst = append(dst, frame[start:i]...)
		dst = append(dst, esc...)
		start = i + 1
	}
	return append(dst, frame[start:]...)
}

// appendSJSCloseFrame appends c[code,"reason"].
func appendSJSCloseFrame(dst []byte, code int, reason string) []byte {
	dst = append(dst, "c["...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ',')
	dst = appendSJSQuote(dst, []byte(reason), false)
	return append(dst, ']')
}

// Byte strings: how a SockJS tcp endpoint carries bytes in messages, which
// are Unicode strings. Each byte is the character with its value (U+0000
// to U+00FF), what JavaScript's String.fromCharCode and charCodeAt give
// for bytes, and what Orbited's TCPSocket used. It is exact for any bytes
// and costs nothing for ASCII text, which is what most bridged protocols
// (STOMP, IRC, Redis) mostly are; base64 would grow text by a third and
// need decoding on both sides.

// appendByteString appends the UTF-8 encoding of p read as a byte string.
func appendByteString(dst, p []byte) []byte {
	for _, b := range p {
		if b < utf8.RuneSelf {
			dst = append(dst, b)
			continue
		}
		dst = append(dst, 0xC0|b>>6, 0x80|b&0x3F)
	}
	return dst
}

// parseByteString returns the bytes of a message read as a byte string,
// or false when it has a character above U+00FF. An ASCII message is
// returned as it is.
func parseByteString(msg []byte) ([]byte, bool) {
	i := 0
	for i < len(msg) && msg[i] < utf8.RuneSelf {
		i++
	}
	if i == len(msg) {
		return msg, true
	}
	out := append(make([]byte, 0, len(msg)), msg[:i]...)
	for i < len(msg) {
		c := msg[i]
		if c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(msg[i:])
		if r > 0xFF || r == utf8.RuneError && size == 1 {
			return nil, false
		}
		out = append(out, byte(r))
		i += size
	}
	return out, true
}
