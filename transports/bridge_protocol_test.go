package transports

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// What real clients of the bridge need beyond bytes: subprotocols
// (websockify's binary and base64, a target's own such as STOMP's), a
// message limit of the bridge's own, and a reset told apart from an
// unreachable target.

// offer is a Sec-WebSocket-Protocol request header.
func offer(values ...string) http.Header {
	return http.Header{"Sec-Websocket-Protocol": values}
}

// TestWebSocketSubprotocolRefused: the native /ws speaks no subprotocol;
// an offer is refused before the upgrade with a JSON 400 that says what
// was offered, rather than upgraded without an answer (which a browser
// fails with nothing but 1006). No offer, or an empty one, is fine.
func TestWebSocketSubprotocolRefused(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	for _, tc := range []struct {
		name string
		hdr  http.Header
		want string
	}{
		{"unknown", offer("mqtt, wamp.2.json"), `unsupported subprotocol: offered mqtt, wamp.2.json; this endpoint speaks none`},
		{"two headers", offer("mqtt", "chat"), `unsupported subprotocol: offered mqtt, chat; this endpoint speaks none`},
		{"malformed", offer("v1 stomp"), `malformed Sec-WebSocket-Protocol header: "v1 stomp" is not a token (at byte 2)`},
		{"non-ASCII", offer("chät"), `malformed Sec-WebSocket-Protocol header: "chät" is not a token (at byte 2)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, resp := wsUpgrade(t, n, "/ws", tc.hdr, nil)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%d %s %s, want a JSON 400", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			if want := `{"error":` + jsonString(tc.want) + `,"code":4000}` + "\n"; string(body) != want {
				t.Fatalf("body %s, want %s", body, want)
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		for _, hdr := range []http.Header{nil, offer(""), offer(" , ")} {
			_, _, resp := wsUpgrade(t, n, "/ws", hdr, nil)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("offer %q: %d", hdr, resp.StatusCode)
			}
			if p, ok := resp.Header["Sec-Websocket-Protocol"]; ok {
				t.Fatalf("offer %q answered %q", hdr, p)
			}
		}
	})
	waitNoSessions(t, n)
	waitReaders(t, n)
}

// jsonString quotes s as writeJSON does.
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestBridgeSubprotocols: binary is answered when offered, whatever the
// order; else the first offered subprotocol the target lists; else
// base64. An offer of none of them is refused before the target is
// dialed.
func TestBridgeSubprotocols(t *testing.T) {
	noLeaks(t)
	echo := startTarget(t, echoServe)
	n := startBridgeNode(t, []BridgeTarget{{Name: "stomp", Address: echo.addr(), AllowNetworks: bridgeLoopback,
		Subprotocols: []string{"v10.stomp", "v11.stomp", "v12.stomp"}}}, nil, nil)
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{nil, ""},
		{[]string{"binary"}, "binary"},
		{[]string{"base64, binary"}, "binary"},
		{[]string{"v12.stomp, binary"}, "binary"},
		{[]string{"v12.stomp,v11.stomp,v10.stomp"}, "v12.stomp"},
		{[]string{"v10.stomp, v11.stomp, v12.stomp"}, "v10.stomp"},
		{[]string{"base64", "v11.stomp"}, "v11.stomp"},
		{[]string{"mqtt, base64"}, "base64"},
		{[]string{"base64"}, "base64"},
	} {
		t.Run(strings.Join(tc.offer, "|"), func(t *testing.T) {
			conn, br, resp := wsUpgrade(t, n, "/tcp/stomp", offer(tc.offer...), nil)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			if got := resp.Header.Values("Sec-Websocket-Protocol"); strings.Join(got, "|") != tc.want {
				t.Fatalf("answered %q, want %q", got, tc.want)
			}
			c := &bridgeClient{t: t, conn: conn, br: br}
			if tc.want == "base64" {
				c.send(textFrame(base64.StdEncoding.EncodeToString([]byte("ping\n"))))
				if got := c.readBase64(5); string(got) != "ping\n" {
					t.Fatalf("echo %q", got)
				}
			} else {
				c.send(binFrame([]byte("ping\n")))
				if got, _ := c.read(5); string(got) != "ping\n" {
					t.Fatalf("echo %q", got)
				}
			}
			c.send(closeFrame(1000, ""))
			if op, _ := c.next(); op != ws.OpClose {
				t.Fatalf("frame %v, want the close answer", op)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		probe := startTarget(t, nil)
		n := startBridgeNode(t, []BridgeTarget{{Name: "t", Address: probe.addr(), AllowNetworks: bridgeLoopback,
			Subprotocols: []string{"v12.stomp"}}}, nil, nil)
		status, e, _ := bridgeRefusal(t, n, "t", offer("mqtt, xmpp"))
		want := "unsupported subprotocol: offered mqtt, xmpp; this endpoint speaks binary, v12.stomp, base64"
		if status != http.StatusBadRequest || e.Code != 4000 || e.Error != want {
			t.Fatalf("%d %+v, want 400 4000 %q", status, e, want)
		}
		probe.untouched(t)
	})
	waitNoSessions(t, n)
	waitReaders(t, n)
}

// readBase64 reads text messages of base64 until n bytes arrived.
func (c *bridgeClient) readBase64(n int) []byte {
	c.t.Helper()
	var got []byte
	for len(got) < n {
		op, p := c.next()
		if op != ws.OpText {
			c.t.Fatalf("after %d of %d bytes: frame %v %q, want text", len(got), n, op, p)
		}
		b, err := base64.StdEncoding.DecodeString(string(p))
		if err != nil {
			c.t.Fatalf("message %q: %v", p, err)
		}
		got = append(got, b...)
	}
	return got
}

// TestBridgeBase64: websockify's text mode carries every byte value both
// ways, in messages bigger than a read chunk; a message that is not
// base64 closes with 1007 and says where.
func TestBridgeBase64(t *testing.T) {
	noLeaks(t)
	echo := startTarget(t, echoServe)
	n := startBridgeNode(t, []BridgeTarget{{Name: "echo", Address: echo.addr(), AllowNetworks: bridgeLoopback}}, nil, nil)
	dial := func() *bridgeClient {
		conn, br, resp := wsUpgrade(t, n, "/tcp/echo", offer("base64"), nil)
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Protocol") != "base64" {
			t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Protocol"))
		}
		return &bridgeClient{t: t, conn: conn, br: br}
	}
	c := dial()
	payload := appendSeq(allBytes(), 0, 100<<10)
	c.send(textFrame(base64.StdEncoding.EncodeToString(payload[:1000])),
		wsFrame{fin: true, op: opBinary, payload: []byte(base64.StdEncoding.EncodeToString(payload[1000:]))})
	if got := c.readBase64(len(payload)); !bytes.Equal(got, payload) {
		t.Fatalf("%d bytes came back, first difference at %d", len(got), firstDifference(got, payload))
	}

	c.send(textFrame("aGVsbG8=!"))
	if reason := c.closeReason(gateway.CodeInvalidPayload); reason != "message is not base64 (the subprotocol is base64): illegal base64 data at input byte 8" {
		t.Fatalf("reason %q", reason)
	}
	waitNoSessions(t, n)
	waitReaders(t, n)
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// closeReason skips data messages up to a close frame with code, answers
// it, and returns its reason.
func (c *bridgeClient) closeReason(code int) string {
	c.t.Helper()
	for {
		op, p := c.next()
		if op != ws.OpClose {
			continue
		}
		if len(p) < 2 || int(binary.BigEndian.Uint16(p)) != code {
			c.t.Fatalf("close %q, want code %d", p, code)
		}
		_, _ = c.conn.Write(closeFrame(uint16(code), "").bytes())
		return string(p[2:])
	}
}

// TestBridgeMessageLimit: the bridge's limit is its own, not the pub/sub
// frame limit: by default a message far over session.max_frame_bytes goes
// through; a target's MaxMessageBytes is taken exactly, and one byte more
// closes with 1009.
func TestBridgeMessageLimit(t *testing.T) {
	noLeaks(t)
	echo := startTarget(t, echoServe)
	n := startBridgeNode(t, []BridgeTarget{
		{Name: "default", Address: echo.addr(), AllowNetworks: bridgeLoopback},
		{Name: "small", Address: echo.addr(), AllowNetworks: bridgeLoopback, MaxMessageBytes: MinBridgeMaxMessage},
	}, func(c *gateway.Config) { c.MaxFrameBytes = 256 }, nil)

	c := dialBridge(t, n, "default")
	big := appendSeq(nil, 0, DefaultBridgeMaxMessage)
	c.send(binFrame(big))
	if got, _ := c.read(len(big)); !bytes.Equal(got, big) {
		t.Fatalf("a %d-byte message: %v", len(big), checkSeq(got, 0))
	}
	c.send(binFrame(append(big, 0)))
	c.closeReason(gateway.CodeMessageTooBig)

	c = dialBridge(t, n, "small")
	msg := appendSeq(nil, 0, MinBridgeMaxMessage)
	c.send(binFrame(msg[:1000]), binFrame(msg))
	if got, _ := c.read(1000 + len(msg)); !bytes.Equal(got[1000:], msg) {
		t.Fatalf("a message at the limit: %v", checkSeq(got[1000:], 0))
	}
	c.send(binFrame(append(msg, 0)))
	if reason := c.closeReason(gateway.CodeMessageTooBig); reason != "message too large: the limit is 65536 bytes" {
		t.Fatalf("reason %q", reason)
	}
	waitNoSessions(t, n)
	waitReaders(t, n)
}

// TestBridgeResetByTarget: a target that resets the connection after data
// flowed ends the session with 3520 "connection reset by target", after
// what it sent, over the native bridge and over SockJS; a target nobody
// listens at stays 3502 "target unreachable" (TestBridgeRefusals).
func TestBridgeResetByTarget(t *testing.T) {
	noLeaks(t)
	// The target sends hello, waits for the test to say the browser has
	// it, then resets (SO_LINGER 0: close sends RST).
	received := make(chan struct{}, 2)
	rst := startTarget(t, func(c net.Conn) {
		_, _ = c.Write([]byte("hello"))
		<-received
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	})
	targets := []BridgeTarget{{Name: "rst", Address: rst.addr(), AllowNetworks: bridgeLoopback}}

	t.Run("websocket", func(t *testing.T) {
		n := startBridgeNode(t, targets, nil, nil)
		c := dialBridge(t, n, "rst")
		if got, _ := c.read(5); string(got) != "hello" {
			t.Fatalf("%q", got)
		}
		received <- struct{}{}
		c.expectClose(gateway.DisconnectTargetReset.Code, gateway.DisconnectTargetReset.Reason)
		waitNoSessions(t, n)
		waitReaders(t, n)
	})
	t.Run("sockjs", func(t *testing.T) {
		eps := []SockJSEndpoint{{Prefix: "/tcprst", Mode: SockJSTCP, Target: "rst"}}
		n := sjsStartNode(t, eps, func(_ *gateway.Config, o *Options) { o.Bridge = targets })
		x := sjsOpenXHRStream(t, n, n.url("/tcprst/000/"+sjsSID()))
		if got := x.bytes(5); string(got) != "hello" {
			t.Fatalf("%q", got)
		}
		received <- struct{}{}
		if f := x.frame(); f != `c[3520,"connection reset by target"]`+"\n" {
			t.Fatalf("frame %q", f)
		}
	})
}
