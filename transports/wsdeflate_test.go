package transports

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/gateway"
)

func TestNegotiateDeflate(t *testing.T) {
	const both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
	cases := []struct {
		name   string
		offers []string
		want   string
		max    int // wsDeflate.maxInput when accepted
	}{
		{"none", nil, "", 0},
		{"other extension", []string{"x-webkit-deflate-frame"}, "", 0},
		{"plain", []string{"permessage-deflate"}, both, 1 << 15},
		{"chromium", []string{"permessage-deflate; client_max_window_bits"}, both, 1 << 15},
		{"firefox", []string{"permessage-deflate"}, both, 1 << 15},
		{"case and space", []string{"Permessage-Deflate ;CLIENT_MAX_WINDOW_BITS ; Server_No_Context_Takeover"}, both, 1 << 15},
		{"all params", []string{"permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15; client_max_window_bits=9"}, both + "; server_max_window_bits=15", 1 << 15},
		{"small server window honoured by size", []string{"permessage-deflate; server_max_window_bits=10"}, both + "; server_max_window_bits=10", 1 << 10},
		{"quoted value", []string{`permessage-deflate; server_max_window_bits="12"`}, both + "; server_max_window_bits=12", 1 << 12},
		{"first valid offer wins", []string{"permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=9, permessage-deflate"}, both + "; server_max_window_bits=9", 1 << 9},
		{"offers across headers", []string{"foo; bar=1", "permessage-deflate; x=1", "permessage-deflate; client_max_window_bits=8"}, both, 1 << 15},
		{"duplicate param", []string{"permessage-deflate; client_max_window_bits; client_max_window_bits"}, "", 0},
		{"duplicate param then valid", []string{"permessage-deflate; server_no_context_takeover; server_no_context_takeover, permessage-deflate"}, both, 1 << 15},
		{"unknown param", []string{"permessage-deflate; mystery"}, "", 0},
		{"server bits without value", []string{"permessage-deflate; server_max_window_bits"}, "", 0},
		{"bits leading zero", []string{"permessage-deflate; client_max_window_bits=09"}, "", 0},
		{"bits out of range", []string{"permessage-deflate; client_max_window_bits=16"}, "", 0},
		{"no_context with value", []string{"permessage-deflate; server_no_context_takeover=1"}, "", 0},
		{"quoted non-token", []string{`permessage-deflate; server_max_window_bits="1 2"`}, "", 0},
		{"broken element skipped", []string{`permessage-deflate; =3, permessage-deflate`}, both, 1 << 15},
		{"unterminated quote", []string{`permessage-deflate; client_max_window_bits="10`}, "", 0},
		{"quoted comma then valid", []string{`permessage-deflate; a="x,y", permessage-deflate`}, both, 1 << 15},
		{"garbage", []string{"@@@, ;;;, ,"}, "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, z := negotiateDeflate(c.offers, Compression{})
			if got != c.want {
				t.Fatalf("answer %q, want %q", got, c.want)
			}
			if (z != nil) != (c.want != "") {
				t.Fatalf("deflate %v with answer %q", z, got)
			}
			if z != nil && (z.maxInput != c.max || z.threshold != DefaultCompressionThreshold) {
				t.Fatalf("deflate %+v, want maxInput %d", *z, c.max)
			}
		})
	}
	if got, z := negotiateDeflate([]string{"permessage-deflate"}, Compression{Off: true}); got != "" || z != nil {
		t.Fatalf("compression off answered %q", got)
	}
	if _, z := negotiateDeflate([]string{"permessage-deflate"}, Compression{Threshold: 1}); z == nil || z.threshold != 1 {
		t.Fatalf("threshold 1: %+v", z)
	}
}

// FuzzNegotiateDeflate: no offer panics the parser; an accepted offer is
// answered with a header that parses back as one valid permessage-deflate
// element naming no context takeover both ways.
func FuzzNegotiateDeflate(f *testing.F) {
	for _, s := range []string{
		"permessage-deflate", "permessage-deflate; client_max_window_bits",
		"permessage-deflate; server_max_window_bits=10, permessage-deflate",
		`permessage-deflate; server_max_window_bits="8"`, `a; b="c\"d", permessage-deflate; x`,
		"permessage-deflate;;", ",,,", `"`, "permessage-deflate; client_max_window_bits=15; client_no_context_takeover",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, offer string) {
		answer, z := negotiateDeflate([]string{offer}, Compression{})
		if z == nil {
			if answer != "" {
				t.Fatalf("answer %q without deflate", answer)
			}
			return
		}
		back := parseExtensions([]string{answer})
		if len(back) != 1 || back[0].name != "permessage-deflate" {
			t.Fatalf("answer %q does not parse back: %+v", answer, back)
		}
		d, ok := readDeflateOffer(back[0].params)
		if !ok || !d.serverNoContext || !d.clientNoContext || d.clientBits != 0 {
			t.Fatalf("answer %q reads as %+v (%v)", answer, d, ok)
		}
		if d.serverBits != 0 && z.maxInput != 1<<d.serverBits || d.serverBits == 0 && z.maxInput != 1<<15 {
			t.Fatalf("answer %q with maxInput %d", answer, z.maxInput)
		}
	})
}

// inflateRef inflates a message as any RFC 7692 receiver does, with
// compress/flate alone: payload, then 00 00 ff ff.
func inflateRef(t testing.TB, payload []byte) []byte {
	t.Helper()
	r := flate.NewReader(io.MultiReader(bytes.NewReader(payload), bytes.NewReader([]byte{0, 0, 0xff, 0xff})))
	out, err := io.ReadAll(r)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("inflating %x: %v", payload, err)
	}
	return out
}

func testBody(t testing.TB, data string) *gateway.Body {
	t.Helper()
	return gateway.EncodeMessage(brokers.Message{Channel: "demo.x", Data: []byte(data), Seq: 42}, "demo.x", time.Now())
}

// jsonPayload is n bytes or so of JSON that looks like a dashboard's.
func jsonPayload(n int) string {
	var b strings.Builder
	b.WriteString(`{"rows":[`)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"region":"district-%d","votes":%d,"turnout":%d.%d,"leader":"candidate-%d"}`, i, 1000+i*37, 40+i%50, i%10, i%4)
	}
	b.WriteString(`]}`)
	return b.String()
}

// The exact bytes of a compressed packet: RSV1 and the text opcode, a
// stored block with the session's prefix, the shared body; inflated by
// compress/flate it is the packet's JSON, for any seq.
func TestDeflatedPacketInflates(t *testing.T) {
	body := testBody(t, jsonPayload(2000))
	var shared []byte
	for _, seq := range []uint64{1, 9, 10, 123456789, 1<<64 - 1} {
		p := gateway.NewPacket(seq, body)
		b, ok := appendDeflatedPacket(nil, p)
		if !ok {
			t.Fatal("a 2 KB JSON body was not worth compressing")
		}
		h, err := ws.ReadHeader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if !h.Fin || !h.Rsv1() || h.Rsv2() || h.Rsv3() || h.OpCode != ws.OpText || h.Masked {
			t.Fatalf("header %+v", h)
		}
		payload := b[len(b)-int(h.Length):]
		if got, want := inflateRef(t, payload), p.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Fatalf("seq %d inflates to %q, want %q", seq, got, want)
		}
		if len(payload) >= p.JSONLen() {
			t.Fatalf("compressed %d bytes, JSON is %d", len(payload), p.JSONLen())
		}
		// The body's part is the same bytes for every seq.
		prefix := len(p.AppendPrefix(nil))
		if tail := payload[5+prefix:]; shared == nil {
			shared = tail
		} else if !bytes.Equal(tail, shared) {
			t.Fatalf("seq %d: the compressed body differs from another session's", seq)
		}
	}
	// A body that compression does not shrink goes uncompressed.
	incompressible := make([]byte, 600)
	for i := range incompressible {
		incompressible[i] = byte(i*7919>>3) ^ byte(i*31)
	}
	b64 := gateway.EncodeMessage(brokers.Message{Channel: "demo.x", Data: incompressible, Header: map[string]string{"Content-Type": gateway.ContentTypeBinary}}, "demo.x", time.Now())
	if got := b64.Derived(derivedDeflateJSON, deflateBody); got != nil && len(got)+5 >= b64.Size() {
		t.Fatalf("a body that does not shrink was kept compressed: %d of %d bytes", len(got), b64.Size())
	}
}

// Literal and compressed parts strung in any order (the SockJS framing
// does) inflate to their concatenation; literals over 64 KiB take several
// stored blocks.
func TestDeflateAsm(t *testing.T) {
	z1 := deflateBody([]byte(jsonPayload(900)))
	z2 := deflateBody([]byte(jsonPayload(3000)))
	big := bytes.Repeat([]byte("0123456789"), 14000)
	type part struct {
		lit  []byte
		z    []byte
		want string
	}
	lit := func(s string) part { return part{lit: []byte(s), want: s} }
	cases := [][]part{
		{lit(`{"seq":1,`), {z: z1, want: jsonPayload(900)}},
		{lit(`a["`), {z: z1, want: jsonPayload(900)}, lit(`","`), {z: z2, want: jsonPayload(3000)}, lit(`"]`)},
		{{z: z1, want: jsonPayload(900)}, {z: z2, want: jsonPayload(3000)}},
		{lit("x"), {lit: big, want: string(big)}, {z: z2, want: jsonPayload(3000)}, {lit: big, want: string(big)}},
		{lit("only literal")},
	}
	for i, parts := range cases {
		var a deflateAsm
		var b []byte
		var want string
		for _, p := range parts {
			if p.z != nil {
				b = a.body(b, p.z)
			} else {
				b = a.literal(b, p.lit)
			}
			want += p.want
		}
		b = a.end(b)
		if got := inflateRef(t, b); string(got) != want {
			t.Fatalf("case %d: inflates to %d bytes, want %d", i, len(got), len(want))
		}
		if got, err := inflate(nil, b, len(want)); err != nil || string(got) != want {
			t.Fatalf("case %d: inflate: %v", i, err)
		}
	}
	if got := storedLen(len(big)); got != len(new(deflateAsm).literal(nil, big)) {
		t.Fatalf("storedLen %d", got)
	}
}

// compress makes a client's compressed message: raw deflate, sync-flushed,
// 00 00 ff ff removed.
func compress(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	_, _ = w.Write(data)
	_ = w.Flush()
	return bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
}

func TestInflateBounded(t *testing.T) {
	data := []byte(jsonPayload(5000))
	if got, err := inflate(nil, compress(t, data), len(data)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("at the limit: %v", err)
	}
	if _, err := inflate(nil, compress(t, data), len(data)-1); !errors.Is(err, errInflateTooLarge) {
		t.Fatalf("one byte over the limit: %v", err)
	}
	// A bomb: 64 MiB of zeros compress to about 64 KiB; inflating stops
	// just past the limit.
	bomb := compress(t, make([]byte, 64<<20))
	got, err := inflate(nil, bomb, 1<<16)
	if !errors.Is(err, errInflateTooLarge) || cap(got) > 1<<17+64 {
		t.Fatalf("bomb: %v, buffer of %d", err, cap(got))
	}
	for _, bad := range [][]byte{{0xff, 0xff, 0xff}, {0x07}, {0x00, 0x05, 0x00, 0x00, 0x00}} {
		if _, err := inflate(nil, bad, 1000); !errors.Is(err, errInflateCorrupt) {
			t.Fatalf("%x: %v", bad, err)
		}
	}
	// A message that ends with a final block is complete too.
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestSpeed)
	_, _ = w.Write(data)
	_ = w.Close()
	if got, err := inflate(nil, buf.Bytes(), len(data)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("final block: %v", err)
	}
}

// FuzzInflate: any payload inflates to at most the limit or fails
// cleanly; what a client compresses comes back as it was.
func FuzzInflate(f *testing.F) {
	f.Add([]byte(`{"op":"sub","id":1,"ch":"demo.x"}`), 100, false)
	f.Add([]byte(jsonPayload(500)), 64, false)
	f.Add([]byte{0xff, 0x00, 0x00}, 10, true)
	f.Add(compress(f, make([]byte, 10000)), 1000, true)
	f.Fuzz(func(t *testing.T, data []byte, limit int, raw bool) {
		if limit < 0 || limit > 1<<20 {
			return
		}
		payload := data
		if !raw {
			payload = compress(t, data)
		}
		got, err := inflate(nil, payload, limit)
		if err == nil && len(got) > limit || errors.Is(err, errInflateTooLarge) && len(got) > limit+1 {
			t.Fatalf("inflated %d bytes with limit %d (%v)", len(got), limit, err)
		}
		if !raw && len(data) <= limit && (err != nil || !bytes.Equal(got, data)) {
			t.Fatalf("round trip of %d bytes: %v", len(data), err)
		}
	})
}

// readZ reads the next server frame that is not a ping (answering them)
// on a connection that negotiated deflate, and returns it inflated and as
// it came.
func (c *wsClient) readZ() (ws.Header, []byte, []byte) {
	c.t.Helper()
	for {
		h, p := readServerFrame(c.t, c.conn, c.br, true)
		if h.OpCode == ws.OpPing {
			c.send(wsFrame{fin: true, op: opPong, payload: p})
			continue
		}
		if h.Rsv1() {
			return h, inflateRef(c.t, p), p
		}
		return h, p, p
	}
}

// A session that negotiated permessage-deflate on /ws: the answer names no
// context takeover both ways; bodies under the threshold go plain, larger
// ones compressed, and two sessions get the same compressed body after
// their own prefixes; the client's compressed frames are read, within the
// frame limit.
func TestWSDeflate(t *testing.T) {
	n := startNode(t, nil, nil)
	hdr := http.Header{"Sec-Websocket-Extensions": {"permessage-deflate; client_max_window_bits"}}
	if got := wsExtensionsAnswer(t, n, hdr); got != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
		t.Fatalf("Sec-WebSocket-Extensions %q", got)
	}
	a, b := dialWSWith(t, n, hdr, nil), dialWSWith(t, n, hdr, nil)
	// A compressed sub frame, one with a ping between its two fragments.
	a.send(wsFrame{fin: true, rsv: 4, op: opText, payload: compress(t, []byte(`{"op":"sub","id":1,"ch":"demo.z"}`))})
	frag := compress(t, []byte(`{"op":"sub","id":1,"ch":"demo.z"}`))
	b.send(wsFrame{rsv: 4, op: opText, payload: frag[:3]}, wsFrame{fin: true, op: opPing}, wsFrame{fin: true, op: opCont, payload: frag[3:]})
	var tails [2][]byte
	for i, c := range []*wsClient{a, b} {
		for {
			h, p, _ := c.readZ()
			if h.OpCode == ws.OpPong {
				continue
			}
			if pkt := c.decode(p); pkt.T != gateway.TypeOK || pkt.ID != 1 {
				t.Fatalf("client %d: %s", i, p)
			}
			break
		}
	}
	small, large := `{"i":1}`, jsonPayload(4000)
	for _, data := range []string{small, large, small} {
		if err := n.gw.Publish(t.Context(), "demo.z", []byte(data), ""); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []*wsClient{a, b} {
		for k, want := range []string{small, large, small} {
			h, p, wire := c.readZ()
			pkt := c.decode(p)
			if pkt.T != gateway.TypeMsg || string(pkt.Data) != want {
				t.Fatalf("client %d message %d: %.80s", i, k, p)
			}
			if h.Rsv1() != (want == large) {
				t.Fatalf("client %d message %d of %d bytes: RSV1 %v", i, k, len(want), h.Rsv1())
			}
			if h.Rsv1() {
				tails[i] = wire[5+len(fmt.Sprintf(`{"seq":%d,`, pkt.seq())):]
			}
		}
	}
	if !bytes.Equal(tails[0], tails[1]) || len(tails[0]) > len(large)/3 {
		t.Fatalf("the sessions' compressed bodies differ or are large: %d and %d bytes", len(tails[0]), len(tails[1]))
	}

	// A message that inflates beyond session.max_frame_bytes (64 KiB)
	// closes with 1009, though its compressed form is small.
	a.send(wsFrame{fin: true, rsv: 4, op: opText, payload: compress(t, []byte(`{"op":"ping","id":2,"pad":"`+strings.Repeat("x", 70<<10)+`"}`))})
	a.expectClose(gateway.CodeMessageTooBig)
	// Data that is not deflate: 1007.
	b.send(wsFrame{fin: true, rsv: 4, op: opText, payload: []byte{0xff, 0xff, 0xff, 0xff}})
	b.expectClose(gateway.CodeInvalidPayload)
}

// RSV bits a connection did not negotiate are protocol errors (1002): RSV1
// without deflate, RSV1 on a continuation or a control frame, RSV2 and
// RSV3 with it.
func TestWSDeflateViolations(t *testing.T) {
	n := startNode(t, nil, nil)
	hdr := http.Header{"Sec-Websocket-Extensions": {"permessage-deflate"}}
	sub := compress(t, []byte(`{"op":"ping","id":1}`))
	cases := []struct {
		name   string
		hdr    http.Header
		frames []wsFrame
	}{
		{"RSV1 without deflate", nil, []wsFrame{{fin: true, rsv: 4, op: opText, payload: sub}}},
		{"RSV1 on a continuation", hdr, []wsFrame{{rsv: 4, op: opText, payload: sub[:2]}, {fin: true, rsv: 4, op: opCont, payload: sub[2:]}}},
		{"RSV1 on a ping", hdr, []wsFrame{{fin: true, rsv: 4, op: opPing}}},
		{"RSV2", hdr, []wsFrame{{fin: true, rsv: 2, op: opText, payload: []byte(`{"op":"ping","id":1}`)}}},
		{"RSV3 with RSV1", hdr, []wsFrame{{fin: true, rsv: 5, op: opText, payload: sub}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := dialWSWith(t, n, c.hdr, nil)
			cl.send(c.frames...)
			cl.expectClose(gateway.CodeProtocolError)
		})
	}
	// Compression off: no answer, and RSV1 is a violation.
	off := startNode(t, nil, func(o *Options) { o.Compression.Off = true })
	if got := wsExtensionsAnswer(t, off, hdr); got != "" {
		t.Fatalf("compression off answered %q", got)
	}
}

// wsExtensionsAnswer opens a session on /ws with the request headers hdr
// and returns the Sec-WebSocket-Extensions of the answer, once the hello
// came (the handler is done with the connection by then).
func wsExtensionsAnswer(t *testing.T, n *testNode, hdr http.Header) string {
	t.Helper()
	conn, br, resp := wsUpgrade(t, n, "/ws", hdr, nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	c := &wsClient{t: t, n: n, conn: conn, br: br}
	if hello := c.next(); hello.T != gateway.TypeHello {
		t.Fatalf("first packet %+v", hello)
	}
	return resp.Header.Get("Sec-WebSocket-Extensions")
}

// The SockJS framing: a batch of packets is one a[...] message whose
// large bodies are compressed once per body and whose prefixes, small
// packets and punctuation are stored blocks; inflated, it is exactly the
// uncompressed frame.
func TestSockJSDeflateFrames(t *testing.T) {
	_, z := negotiateDeflate([]string{"permessage-deflate"}, Compression{})
	bodies := []*gateway.Body{testBody(t, jsonPayload(1000)), testBody(t, `{"i":1}`), testBody(t, jsonPayload(3000)), testBody(t, `"\u2028 <&> \"quoted\""`+strings.Repeat(" ", 300)), testBody(t, jsonPayload(700))}
	for _, from := range []int{0, 1, 2, 3} {
		var pkts []gateway.Packet
		for i, body := range bodies[from:] {
			pkts = append(pkts, gateway.NewPacket(uint64(i+7), body))
		}
		plainCodec := &sjsCodec{mode: sjsSessionMode{pubsub: true}, opened: true}
		plain := plainCodec.appendPackets(nil, pkts, nil)
		zc := &sjsCodec{mode: sjsSessionMode{pubsub: true}, opened: true}
		b := zc.appendPackets(nil, pkts, z)
		ph, err := ws.ReadHeader(bytes.NewReader(plain))
		if err != nil {
			t.Fatal(err)
		}
		h, err := ws.ReadHeader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if !h.Rsv1() || h.OpCode != ws.OpText || int(h.Length) != len(b)-frameHeaderLen(int(h.Length)) {
			t.Fatalf("from %d: header %+v of a %d-byte message", from, h, len(b))
		}
		want := plain[len(plain)-int(ph.Length):]
		if got := inflateRef(t, b[len(b)-int(h.Length):]); !bytes.Equal(got, want) {
			t.Fatalf("from %d: inflates to %.200s\nwant %.200s", from, got, want)
		}
		if h.Length*2 > ph.Length {
			t.Fatalf("from %d: %d bytes compressed, %d plain", from, h.Length, ph.Length)
		}
	}
	// Only small bodies: no compression.
	zc := &sjsCodec{mode: sjsSessionMode{pubsub: true}, opened: true}
	b := zc.appendPackets(nil, []gateway.Packet{gateway.NewPacket(1, bodies[1])}, z)
	if h, _ := ws.ReadHeader(bytes.NewReader(b)); h.Rsv1() {
		t.Fatalf("a small packet was compressed")
	}
}

// A SockJS websocket session negotiates permessage-deflate like /ws, and
// two sessions get the same compressed body.
func TestSockJSWebSocketDeflate(t *testing.T) {
	n := startNode(t, nil, func(o *Options) { o.SockJS = []SockJSEndpoint{{Prefix: "/pubsub", Websocket: true}} })
	hdr := http.Header{"Sec-Websocket-Extensions": {"permessage-deflate; client_max_window_bits"}}
	large := jsonPayload(4000)
	var clients []*wsClient
	for i := range 2 {
		conn, br, resp := wsUpgrade(t, n, fmt.Sprintf("/pubsub/000/s%d/websocket", i), hdr, nil)
		if got := resp.Header.Get("Sec-WebSocket-Extensions"); resp.StatusCode != http.StatusSwitchingProtocols || got != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
			t.Fatalf("upgrade: %d, Sec-WebSocket-Extensions %q", resp.StatusCode, got)
		}
		c := &wsClient{t: t, n: n, conn: conn, br: br}
		if _, p, _ := c.readZ(); string(p) != "o" {
			t.Fatalf("first frame %q", p)
		}
		c.send(wsFrame{fin: true, rsv: 4, op: opText, payload: compress(t, []byte(`["{\"op\":\"sub\",\"id\":1,\"ch\":\"demo.sz\"}"]`))})
		for {
			_, p, _ := c.readZ()
			if strings.Contains(string(p), `\"t\":\"ok\",\"id\":1`) {
				break
			}
			if !strings.Contains(string(p), `\"t\":\"hello\"`) {
				t.Fatalf("client %d: %s", i, p)
			}
		}
		clients = append(clients, c)
	}
	if err := n.gw.Publish(t.Context(), "demo.sz", []byte(large), ""); err != nil {
		t.Fatal(err)
	}
	var wires [2][]byte
	for i, c := range clients {
		h, p, wire := c.readZ()
		var msgs []string
		if !h.Rsv1() || p[0] != 'a' || json.Unmarshal(p[1:], &msgs) != nil || len(msgs) != 1 {
			t.Fatalf("client %d: RSV1 %v, %.100s", i, h.Rsv1(), p)
		}
		var pkt packet
		if err := json.Unmarshal([]byte(msgs[0]), &pkt); err != nil || pkt.T != gateway.TypeMsg || string(pkt.Data) != large {
			t.Fatalf("client %d: %.100s (%v)", i, msgs[0], err)
		}
		wires[i] = wire
	}
	// Both say a["{\"seq\":3, in a stored block, then the same bytes.
	if !bytes.Equal(wires[0], wires[1]) {
		t.Fatalf("the sessions' compressed messages differ")
	}
}
