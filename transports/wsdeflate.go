package transports

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// permessage-deflate (RFC 7692) on the packet WebSockets (/ws and the
// SockJS websocket; the bridge carries bytes it does not compress).
//
// Why no context takeover, both ways. With context takeover each
// connection's compressor remembers the messages it sent before, which
// compresses a ticker's repeated keys well but costs one compression per
// subscriber per message and a compressor (hundreds of KiB in Go, 32 KiB
// of window at least anywhere) per connection for its whole life. Without
// it every message is compressed on its own, so the node compresses a
// broadcast message once and every subscriber that negotiated deflate
// gets the same compressed bytes: compression costs per message, not per
// delivery, and an idle connection holds no compressor. The server asks
// for client_no_context_takeover too, so that inflating a client's
// message needs no per-connection window either (a pooled decompressor
// does it). The price: a message is compressed without the messages
// before it, so small messages gain little, and those below the threshold
// (Options.Compression.Threshold) are not compressed at all (RFC 7692
// lets each message choose: RSV1 clear).
//
// Sharing despite the per-session prefix. A packet is `{"seq":N,` (the
// session's) followed by the body (shared, gateway.Body). DEFLATE is a
// sequence of blocks, and a block may be stored (BTYPE 00: LEN, NLEN, the
// bytes as they are). So a packet's message is built as a stored block
// holding the prefix, built by hand per session (5 bytes of overhead),
// followed by the body compressed once per body (gateway.Body.Derived)
// and sync-flushed, with its trailing 00 00 ff ff removed as RFC 7692
// section 7.2.1 asks. The body's back-references never reach into the
// prefix (it was compressed alone), so the concatenation inflates to the
// packet. What removing 00 00 ff ff leaves is the 3-bit header of an
// empty stored block and its padding, byte-aligned: the next literal
// bytes complete it with their LEN and NLEN (deflateAsm), which is how
// the SockJS framing strings several packets into one message.
//
// Windows. Go's compress/flate compresses with a 32 KiB window. A client
// that asks for server_max_window_bits=N < 15 is still accepted: a body
// of at most 2^N bytes cannot refer further back than 2^N, so such a
// connection gets compressed only the bodies that fit (larger ones go
// uncompressed); the answer repeats server_max_window_bits=N. A client's
// client_max_window_bits is a limit the client may use and a
// decompressor with a 32 KiB window reads any smaller one, so it is
// accepted and left out of the answer (the client then uses what it
// offered or its default).
//
// Inflating is bounded: a compressed message inflates to at most the
// connection's message limit, beyond which it is closed with the limit's
// code (1009), so a small compressed message cannot make the node
// allocate more than an uncompressed one could.

// Compression configures permessage-deflate on the packet WebSockets.
type Compression struct {
	// Off declines every permessage-deflate offer.
	Off bool
	// Threshold is the size in bytes of the smallest message body that is
	// compressed; smaller ones go uncompressed. 0 means
	// DefaultCompressionThreshold.
	Threshold int
}

// DefaultCompressionThreshold is the default of Compression.Threshold:
// below it the stored prefix and the Huffman tables of a message eat
// most of what compressing a JSON body on its own saves.
const DefaultCompressionThreshold = 256

// deflateLevel is the level bodies are compressed at. BestSpeed (Go's
// deflatefast) is up to several times faster than the default level on
// JSON bodies of 2 to 16 KiB, and its output is within one percent of the
// body's size of the default level's (BenchmarkDeflateLevels: 17.1% of
// the body against 16.5% at 2 KiB, 10.5% against 9.9% at 16 KiB).
const deflateLevel = flate.BestSpeed

// Slots of gateway.Body.Derived that this package uses.
const (
	derivedDeflateJSON = 0 // the body's JSON compressed (the native framing)
	derivedDeflateSJS  = 1 // the body's JSON quoted for SockJS, compressed
)

// wsDeflate is a connection's negotiated permessage-deflate; nil when the
// connection has none. It is read-only after the handshake.
type wsDeflate struct {
	threshold int // the smallest body compressed
	maxInput  int // the largest body compressed: 2^server_max_window_bits
}

// compresses reports whether a body of n bytes is compressed on this
// connection.
func (z *wsDeflate) compresses(n int) bool {
	return z != nil && n >= z.threshold && n <= z.maxInput
}

// Negotiation (RFC 7692 section 5, 7.1).

// extParam is one parameter of an extension offer; value is unquoted.
type extParam struct {
	name, value string
	hasValue    bool
}

// extOffer is one element of a Sec-WebSocket-Extensions list.
type extOffer struct {
	name   string
	params []extParam
}

// parseExtensions reads the values of a request's Sec-WebSocket-Extensions
// headers (RFC 6455 section 9.1): a comma-separated list of extension
// tokens, each with ";"-separated parameters, token or quoted-string
// valued. An element that breaks the grammar is left out (as an offer the
// server declines), the elements after it are still read; the offers come
// back in the client's order of preference.
func parseExtensions(values []string) []extOffer {
	var out []extOffer
	for _, v := range values {
		p := extParser{s: v}
		for !p.done() {
			if o, ok := p.element(); ok && o.name != "" {
				out = append(out, o)
			}
		}
	}
	return out
}

// extParser scans one header value.
type extParser struct {
	s string
	i int
}

func (p *extParser) done() bool { return p.i >= len(p.s) }

func (p *extParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *extParser) token() string {
	start := p.i
	for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// quoted reads a quoted-string (the opening quote is next), unescaped.
func (p *extParser) quoted() (string, bool) {
	var b strings.Builder
	for p.i++; p.i < len(p.s); p.i++ {
		switch c := p.s[p.i]; c {
		case '"':
			p.i++
			return b.String(), true
		case '\\':
			p.i++
			if p.i == len(p.s) {
				return "", false
			}
			b.WriteByte(p.s[p.i])
		default:
			b.WriteByte(c)
		}
	}
	return "", false
}

// element reads one list element and the comma after it; an empty element
// has no name. On a syntax error it skips to the next comma outside a
// quoted string and reports false.
func (p *extParser) element() (extOffer, bool) {
	var o extOffer
	p.skipSpace()
	o.name = p.token()
	p.skipSpace()
	for ok := true; ; {
		switch {
		case p.done():
			return o, ok
		case p.s[p.i] == ',':
			p.i++
			return o, ok
		case p.s[p.i] == ';' && ok && o.name != "":
			p.i++
			p.skipSpace()
			var prm extParam
			if prm.name = p.token(); prm.name == "" {
				ok = false
				continue
			}
			p.skipSpace()
			if !p.done() && p.s[p.i] == '=' {
				p.i++
				p.skipSpace()
				prm.hasValue = true
				if !p.done() && p.s[p.i] == '"' {
					var q bool
					if prm.value, q = p.quoted(); !q || !validToken(prm.value) {
						// The unquoted value must be a token (RFC
						// 6455 section 9.1).
						ok = false
						continue
					}
				} else if prm.value = p.token(); prm.value == "" {
					ok = false
					continue
				}
				p.skipSpace()
			}
			o.params = append(o.params, prm)
		default:
			// Not the grammar: skip this element up to its comma.
			ok = false
			if p.s[p.i] == '"' {
				if _, q := p.quoted(); !q {
					p.i = len(p.s)
				}
				continue
			}
			p.i++
		}
	}
}

// validToken reports whether s is a non-empty token.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// deflateOffer is a valid permessage-deflate offer.
type deflateOffer struct {
	serverNoContext bool
	clientNoContext bool
	serverBits      int // server_max_window_bits, 0 when not offered
	clientBits      int // client_max_window_bits, 0 when not offered, -1 without a value
}

// readDeflateOffer checks the parameters of a permessage-deflate offer
// (RFC 7692 section 7.1): an offer with an unknown parameter, a parameter
// twice, or a value that is not allowed is declined (false).
func readDeflateOffer(params []extParam) (deflateOffer, bool) {
	var d deflateOffer
	seen := map[string]bool{}
	for _, p := range params {
		name := strings.ToLower(p.name)
		if seen[name] {
			return d, false
		}
		seen[name] = true
		switch name {
		case "server_no_context_takeover", "client_no_context_takeover":
			if p.hasValue {
				return d, false
			}
			if name == "server_no_context_takeover" {
				d.serverNoContext = true
			} else {
				d.clientNoContext = true
			}
		case "server_max_window_bits":
			bits, ok := windowBits(p)
			if !ok || bits < 0 {
				return d, false
			}
			d.serverBits = bits
		case "client_max_window_bits":
			bits, ok := windowBits(p)
			if !ok {
				return d, false
			}
			d.clientBits = bits
		default:
			return d, false
		}
	}
	return d, true
}

// windowBits reads a *_max_window_bits value: 8 to 15 written without
// leading zeros, or -1 when the parameter has no value.
func windowBits(p extParam) (int, bool) {
	if !p.hasValue {
		return -1, true
	}
	if len(p.value) == 0 || len(p.value) > 2 || p.value[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(p.value)
	if err != nil || n < 8 || n > 15 {
		return 0, false
	}
	return n, true
}

// negotiateDeflate chooses the answer to a request's extension offers
// (the values of its Sec-WebSocket-Extensions headers): the first valid
// permessage-deflate offer is accepted, answered with no context takeover
// both ways (and the window the client asked the server to keep within,
// if it did). It returns "" and nil when no offer is acceptable.
func negotiateDeflate(values []string, cfg Compression) (string, *wsDeflate) {
	if cfg.Off || len(values) == 0 {
		return "", nil
	}
	threshold := cfg.Threshold
	if threshold <= 0 {
		threshold = DefaultCompressionThreshold
	}
	for _, o := range parseExtensions(values) {
		if !strings.EqualFold(o.name, "permessage-deflate") {
			continue
		}
		d, ok := readDeflateOffer(o.params)
		if !ok {
			continue
		}
		answer := "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
		z := &wsDeflate{threshold: threshold, maxInput: 1 << 15}
		if d.serverBits > 0 {
			answer += "; server_max_window_bits=" + strconv.Itoa(d.serverBits)
			z.maxInput = 1 << d.serverBits
		}
		return answer, z
	}
	return "", nil
}

// Outgoing: compressing bodies once, assembling messages per session.

// deflaters keeps compressors for good, one per CPU at most: a
// compress/flate Writer is about 1.2 MiB and takes milliseconds to make
// (zeroing its tables), so a sync.Pool, which a garbage collection
// empties, would make one again and again on a node whose heap is small
// (measured: four times the CPU per delivery in
// BenchmarkDeflateBroadcast). A node that never compresses makes none.
var deflaters = make(chan *flate.Writer, runtime.GOMAXPROCS(0))

func getDeflater() *flate.Writer {
	select {
	case w := <-deflaters:
		return w
	default:
		w, _ := flate.NewWriter(nil, deflateLevel) // a valid level: no error
		return w
	}
}

func putDeflater(w *flate.Writer) {
	select {
	case deflaters <- w:
	default: // more compressions ran at once than there are CPUs
	}
}

// deflateCount counts the bodies compressed, for benchmarks and tests
// that check a broadcast is compressed once.
var deflateCount atomic.Int64

// deflateBody compresses in on its own (no context), sync-flushed, with
// the flush's trailing 00 00 ff ff removed (RFC 7692 section 7.2.1); nil
// when that saves nothing (the message then goes uncompressed). The result
// is kept with the body as long as it lives, so it is an exact-size copy.
func deflateBody(in []byte) []byte {
	deflateCount.Add(1)
	buf := getBuffer(len(in)/2 + 64)
	defer putBuffer(buf)
	out := bytes.NewBuffer(*buf)
	w := getDeflater()
	w.Reset(out)
	_, _ = w.Write(in) // a bytes.Buffer does not fail
	_ = w.Flush()
	w.Reset(nil) // keep no reference to out's memory
	putDeflater(w)
	*buf = out.Bytes()
	z := *buf
	if !bytes.HasSuffix(z, []byte{0, 0, 0xff, 0xff}) {
		return nil // cannot happen: Flush ends with an empty stored block
	}
	z = z[:len(z)-4]
	// A compressed message costs at least the stored prefix (5 bytes)
	// more than z; one that saves nothing goes as it is.
	if len(z)+5 >= len(in) {
		return nil
	}
	return bytes.Clone(z)
}

// deflateAsm assembles one compressed message from literal bytes (stored
// blocks, built here) and bodies compressed by deflateBody, in any order
// (see the comment at the top). Its zero value starts a message.
type deflateAsm struct {
	// open says the stream ends with the header of a stored block whose
	// LEN and NLEN are still to come: what a stripped body leaves, and
	// how a message must end (the receiver appends 00 00 ff ff).
	open bool
}

// literal appends lit as stored blocks.
func (a *deflateAsm) literal(dst, lit []byte) []byte {
	for len(lit) > 0 {
		n := min(len(lit), 0xffff)
		if !a.open {
			dst = append(dst, 0) // BFINAL 0, BTYPE 00, padding
		}
		dst = append(dst, byte(n), byte(n>>8), ^byte(n), ^byte(n>>8))
		dst = append(dst, lit[:n]...)
		lit = lit[n:]
		a.open = false
	}
	return dst
}

// body appends a body compressed by deflateBody.
func (a *deflateAsm) body(dst, z []byte) []byte {
	if a.open {
		dst = append(dst, deflateTail[:4]...) // close the empty stored block
	}
	a.open = true
	return append(dst, z...)
}

// end finishes the message.
func (a *deflateAsm) end(dst []byte) []byte {
	if !a.open {
		dst = append(dst, 0)
		a.open = true
	}
	return dst
}

// storedLen is what literal adds for n bytes at the start of a message.
func storedLen(n int) int { return n + 5*((n+0xfffe)/0xffff) }

// appendDeflatedPacket appends p as one compressed text message: the
// session's prefix as a stored block, then the body compressed once for
// every session (gateway.Body.Derived). It returns false, having appended
// nothing, when the body is not worth compressing.
func appendDeflatedPacket(dst []byte, p gateway.Packet) ([]byte, bool) {
	z := p.Body().Derived(derivedDeflateJSON, deflateBody)
	if z == nil {
		return dst, false
	}
	var pre [32]byte
	prefix := p.AppendPrefix(pre[:0])
	dst = appendFrameHeaderRSV1(dst, ws.OpText, storedLen(len(prefix))+len(z))
	var a deflateAsm
	dst = a.literal(dst, prefix)
	return a.body(dst, z), true // ends open
}

// appendFrameHeaderRSV1 is appendFrameHeader for the first frame of a
// compressed message (RSV1 set).
func appendFrameHeaderRSV1(dst []byte, op ws.OpCode, n int) []byte {
	i := len(dst)
	dst = appendFrameHeader(dst, op, n)
	dst[i] |= 0x40
	return dst
}

// Incoming: inflating clients' messages.

// deflateTail completes a message for a decompressor: the 00 00 ff ff
// RFC 7692 removes, then an empty final block, so that the stream ends
// with io.EOF.
const deflateTail = "\x00\x00\xff\xff\x01\x00\x00\xff\xff"

// inflater is a pooled decompressor with its input.
type inflater struct {
	fr  io.ReadCloser
	src inflateInput
}

var inflaters = sync.Pool{New: func() any {
	f := &inflater{}
	f.fr = flate.NewReader(&f.src)
	return f
}}

// inflateInput is a message's payload followed by deflateTail. It is an
// io.ByteReader, so the decompressor reads it without a bufio.Reader.
type inflateInput struct {
	p []byte
	i int
}

func (in *inflateInput) ReadByte() (byte, error) {
	switch {
	case in.i < len(in.p):
		in.i++
		return in.p[in.i-1], nil
	case in.i < len(in.p)+len(deflateTail):
		in.i++
		return deflateTail[in.i-1-len(in.p)], nil
	}
	return 0, io.EOF
}

func (in *inflateInput) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		c, err := in.ReadByte()
		if err != nil {
			if n == 0 {
				return 0, err
			}
			break
		}
		b[n] = c
		n++
	}
	return n, nil
}

// Errors of inflate.
var (
	errInflateTooLarge = errors.New("transports: message inflates beyond the limit")
	errInflateCorrupt  = errors.New("transports: message is not valid deflate data")
)

// inflate appends to dst[:0] the message that payload (a compressed
// message, 00 00 ff ff removed) inflates to, at most limit bytes:
// errInflateTooLarge when it would be more, errInflateCorrupt when it is
// not deflate data.
func inflate(dst, payload []byte, limit int) ([]byte, error) {
	f := inflaters.Get().(*inflater)
	defer inflaters.Put(f)
	f.src = inflateInput{p: payload}
	defer func() { f.src.p = nil }()
	if err := f.fr.(flate.Resetter).Reset(&f.src, nil); err != nil {
		return dst[:0], errInflateCorrupt
	}
	dst = dst[:0]
	if cap(dst) == 0 {
		dst = make([]byte, 0, min(4*len(payload)+64, limit+1))
	}
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		// Never read more than one byte past the limit.
		room := min(cap(dst), limit+1)
		n, err := f.fr.Read(dst[len(dst):room])
		dst = dst[:len(dst)+n]
		switch {
		case len(dst) > limit:
			return dst, errInflateTooLarge
		case err == io.EOF:
			return dst, nil
		case err != nil:
			return dst, errInflateCorrupt
		}
	}
}
