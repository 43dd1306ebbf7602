package transports

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// FuzzWebSocketReader feeds arbitrary bytes, after a valid handshake, as
// the client's byte stream of a real WebSocket connection to a real node,
// then half-closes it. Whatever the bytes are, the server must not panic
// (a panic in its reader goroutine kills the test binary), and the session
// must end and the connection close: the client side reads until the
// server closes, and the session's Done must close, within a bounded time.
// With deflate the connection negotiated permessage-deflate, so frames
// with RSV1 are inflated (within the frame limit) rather than refused.
func FuzzWebSocketReader(f *testing.F) {
	ping := []byte(`{"op":"ping","id":1}`)
	seeds := [][]byte{
		{},
		textFrame(`{"op":"sub","id":1,"ch":"demo.f"}`).bytes(),
		append(textFrame(`{"op":"pub","id":2,"ch":"demo.f","text":"x"}`).bytes(), closeFrame(1000, "bye").bytes()...),
		bytes.Join([][]byte{
			wsFrame{op: opText, payload: ping[:4]}.bytes(),
			wsFrame{fin: true, op: opPing, payload: []byte("p")}.bytes(),
			wsFrame{fin: true, op: opCont, payload: ping[4:]}.bytes(),
		}, nil),
		wsFrame{fin: true, op: opText, unmasked: true, payload: ping}.bytes(),
		wsFrame{fin: true, rsv: 7, op: 0xf, payload: ping}.bytes(),
		wsFrame{fin: true, op: opText, payload: []byte("\xff\xfe")}.bytes(),
		wsFrame{fin: true, op: opClose, payload: []byte{0x13}}.bytes(),
		closeFrame(5000, "").bytes(),
		wsFrame{fin: true, op: opText, payload: make([]byte, 70000)}.bytes()[:14], // declared, never sent
		{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0},                                   // 64-bit length with the MSB set
		{0x81, 0xfe, 0x00},                                                        // cut inside the length
		bytes.Repeat(wsFrame{fin: true, op: opPing, payload: bytes.Repeat([]byte{'x'}, 125)}.bytes(), 64),
	}
	for _, s := range seeds {
		f.Add(s, false)
		f.Add(s, true)
	}
	zping := compress(f, ping)
	for _, s := range [][]byte{
		wsFrame{fin: true, rsv: 4, op: opText, payload: zping}.bytes(),
		bytes.Join([][]byte{
			wsFrame{rsv: 4, op: opText, payload: zping[:3]}.bytes(),
			wsFrame{fin: true, op: opPing}.bytes(),
			wsFrame{fin: true, op: opCont, payload: zping[3:]}.bytes(),
		}, nil),
		wsFrame{fin: true, rsv: 4, op: opText, payload: compress(f, make([]byte, 1<<20))}.bytes(), // inflates beyond the limit
		wsFrame{fin: true, rsv: 4, op: opBinary, payload: []byte{0xff, 0x00, 0x01}}.bytes(),       // not deflate
		wsFrame{fin: true, rsv: 4, op: opPing}.bytes(),
	} {
		f.Add(s, true)
	}
	// One node for every input: starting a broker per input would make the
	// fuzzer crawl. A small frame limit keeps big declared lengths cheap.
	n := startNode(f, func(c *gateway.Config) { c.MaxFrameBytes = 4096 }, nil)
	f.Fuzz(func(t *testing.T, stream []byte, deflate bool) {
		if len(stream) > 1<<16 {
			t.Skip("inputs are bounded to 64 KiB")
		}
		var hdr http.Header
		if deflate {
			hdr = http.Header{"Sec-Websocket-Extensions": {"permessage-deflate"}}
		}
		c := dialWSWith(t, n, hdr, nil)
		deadline := time.Now().Add(waitTimeout)
		_ = c.conn.SetDeadline(deadline)
		// Read everything the server sends, so that none of its writes
		// (pongs, answers) can block on us, until it closes.
		var wg sync.WaitGroup
		wg.Add(1)
		var readErr error
		go func() {
			defer wg.Done()
			_, readErr = io.Copy(io.Discard, c.br)
		}()
		_, _ = c.conn.Write(stream) // the server may close before it read it all
		_ = c.conn.(*net.TCPConn).CloseWrite()
		select {
		case <-c.sess.Done():
		case <-time.After(time.Until(deadline)):
			t.Fatalf("session did not end after input %q", stream)
		}
		wg.Wait()
		if ne, ok := readErr.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the server did not close the connection after input %q", stream)
		}
		_ = c.conn.Close()
	})
}

// subprotocolList is the list syntax of Sec-WebSocket-Protocol as a
// regular expression (RFC 9110 5.6.1: elements separated by commas with
// optional whitespace, empty elements allowed), the reference that
// parseSubprotocols must agree with.
var subprotocolList = regexp.MustCompile("^[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]*)[ \t]*(?:,[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]*)[ \t]*)*$")

// FuzzSubprotocols: the subprotocol offer parser accepts exactly the list
// syntax, returns its tokens in order, and says what is wrong otherwise;
// negotiation answers only a subprotocol that was offered.
func FuzzSubprotocols(f *testing.F) {
	for _, s := range []string{"", "binary", "v10.stomp, v11.stomp, v12.stomp", " , ,binary,", "a b", "a;b", "chät", "\t base64 \t", "a,,b", "\"q\""} {
		f.Add(s, "base64")
	}
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		got, err := parseSubprotocols([]string{v1, v2})
		var want []string
		ok := true
		for _, v := range []string{v1, v2} {
			if !subprotocolList.MatchString(v) {
				ok = false
				break
			}
			for elem := range strings.SplitSeq(v, ",") {
				if tok := strings.Trim(elem, " \t"); tok != "" {
					want = append(want, tok)
				}
			}
		}
		if !ok {
			if err == nil || !strings.HasPrefix(err.Error(), "malformed Sec-WebSocket-Protocol header: ") {
				t.Fatalf("%q %q: %q, %v; want a malformed-header error", v1, v2, got, err)
			}
			return
		}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("%q %q: %q, %v; want %q", v1, v2, got, err, want)
		}
		for _, p := range got {
			if !validSubprotocol(p) {
				t.Fatalf("%q is not valid", p)
			}
		}
		sp := &wsSubprotocols{tiers: [][]string{{"binary"}, {"v12.stomp", "x"}, {"base64"}}}
		chosen, refused := sp.negotiate(http.Header{"Sec-Websocket-Protocol": {v1, v2}})
		switch {
		case len(got) == 0 && (chosen != "" || refused != nil):
			t.Fatalf("no offer: %q %v", chosen, refused)
		case len(got) > 0 && (chosen == "") == (refused == nil):
			t.Fatalf("offer %q: %q and %v", got, chosen, refused)
		case chosen != "" && !slices.Contains(got, chosen):
			t.Fatalf("offer %q answered %q", got, chosen)
		}
	})
}
