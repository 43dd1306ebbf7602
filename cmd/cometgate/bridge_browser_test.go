package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
)

// bridgePageJS drives cometgate.js's TCPSocket in the page: TB.roundTrip
// opens a socket, sends bytes (base64) in TB.pieces calls of send() and
// resolves, once as many bytes came back, with the transport used and the
// bytes (base64).
const bridgePageJS = `
window.TB = {
  socks: [],
  // payload is set by the test before roundTrip (base64), and in how
  // many send() calls it goes.
  payload: "",
  pieces: 1,
  roundTrip(target, opts, want) {
    return new Promise((resolve, reject) => {
      const payload = Uint8Array.from(atob(TB.payload), (c) => c.charCodeAt(0));
      const sock = new CometGate.TCPSocket(target, opts);
      TB.socks.push(sock);
      const parts = [];
      let n = 0;
      const timer = setTimeout(() => reject(new Error("timeout after " + n + " bytes")), 25000);
      // Sent before the open on purpose: TCPSocket queues it.
      const step = Math.ceil(payload.length / TB.pieces);
      for (let i = 0; i < payload.length; i += step) sock.send(payload.subarray(i, i + step));
      sock.on("data", (b) => {
        parts.push(b);
        n += b.length;
        if (n < want) return;
        clearTimeout(timer);
        let s = "";
        for (const p of parts) for (let i = 0; i < p.length; i += 8192) s += String.fromCharCode.apply(null, p.subarray(i, i + 8192));
        resolve({transport: sock.transport, data: btoa(s)});
        sock.close();
      });
      sock.on("close", (info) => { clearTimeout(timer); reject(new Error("closed " + info.code + " " + info.reason + " after " + n + " bytes")); });
    });
  },
  closeInfo(target, opts) {
    return new Promise((resolve) => {
      const sock = new CometGate.TCPSocket(target, opts);
      sock.on("close", (info) => resolve(info));
    });
  },
  closeAll() { for (const s of TB.socks) s.close(); TB.socks = []; return true; },
};
true`

func TestBridgeBrowser(t *testing.T) {
	needRedis(t)
	sockjsClient := sjsClientJS(t)
	n := startBridgeNode(t, echoServer(t))
	b := newTab(t)
	b.do(chromedp.Navigate(n.url("/")))
	var typ string
	b.eval(string(sockjsClient)+"\n;typeof SockJS", &typ)
	if typ != "function" {
		t.Fatalf("SockJS is %q in the page", typ)
	}
	b.eval(bridgePageJS, nil)

	// Every byte value, many times over: more than one bridge read chunk
	// and more than a SockJS streaming response limit.
	var all []byte
	for range 64 {
		for v := range 256 {
			all = append(all, byte(v))
		}
	}
	roundTrip := func(t *testing.T, target, opts string, payload []byte, want []byte, pieces ...int) string {
		tb := b.in(t)
		t.Cleanup(func() { tb.eval("TB.closeAll()", nil) })
		var res struct {
			Transport string `json:"transport"`
			Data      string `json:"data"`
		}
		k := 1
		if len(pieces) > 0 {
			k = pieces[0]
		}
		tb.eval(fmt.Sprintf("TB.payload = %q, TB.pieces = %d, true", base64.StdEncoding.EncodeToString(payload), k), nil)
		tb.eval(fmt.Sprintf("TB.roundTrip(%q, %s, %d)", target, opts, len(want)), &res)
		got, err := base64.StdEncoding.DecodeString(res.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("over %s: %d bytes came back, not the %d expected (first difference at %d)", res.Transport, len(got), len(want), firstDiff(got, want))
		}
		return res.Transport
	}

	t.Run("websocket", func(t *testing.T) {
		if tr := roundTrip(t, "echo", "{}", all, all); tr != "websocket" {
			t.Fatalf("went over %q", tr)
		}
	})
	// What one send() may carry: far over session.max_frame_bytes (64
	// KiB) and over a target's message limit (1 MiB), which TCPSocket
	// splits into messages the bridge takes.
	var big []byte
	for len(big) < 1<<20+300<<10 {
		big = append(big, all...)
	}
	t.Run("websocket one send of 1.3 MiB", func(t *testing.T) {
		if tr := roundTrip(t, "echo", "{}", big, big); tr != "websocket" {
			t.Fatalf("went over %q", tr)
		}
	})
	// A burst over SockJS: 600 KiB in one send() and in 40, where
	// sockjs-client would put everything queued into one send body (1.2
	// MB once quoted), over the endpoint's 512 KiB (HTTP 413), if
	// TCPSocket did not pace.
	burst := big[:600<<10]
	for _, tr := range []string{"xhr-streaming", "xhr-polling"} {
		for _, k := range []int{1, 40} {
			t.Run(fmt.Sprintf("sockjs-%s burst of %d", tr, k), func(t *testing.T) {
				opts := fmt.Sprintf(`{WebSocket: false, sockjs: "/sockjs-echo-tcp", sockjsOptions: {transports: [%q], timeout: 10000}}`, tr)
				if used := roundTrip(t, "echo", opts, burst, burst, k); used != "sockjs" {
					t.Fatalf("went over %q", used)
				}
			})
		}
	}
	t.Run("redis", func(t *testing.T) {
		roundTrip(t, "redis", "{}", []byte("PING\r\n"), []byte("+PONG\r\n"))
	})
	// Without a WebSocket, the SockJS endpoint in tcp mode, over each of
	// sockjs-client's main transports.
	for _, tr := range []string{"websocket", "xhr-streaming", "eventsource", "htmlfile", "xhr-polling", "jsonp-polling"} {
		t.Run("sockjs-"+tr, func(t *testing.T) {
			opts := fmt.Sprintf(`{WebSocket: false, sockjs: "/sockjs-echo-tcp", sockjsOptions: {transports: [%q], timeout: 10000}}`, tr)
			if used := roundTrip(t, "echo", opts, all, all); used != "sockjs" {
				t.Fatalf("went over %q", used)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		var info struct {
			Code int `json:"code"`
		}
		b.in(t).eval(`TB.closeInfo("nope", {})`, &info)
		if info.Code != 1006 {
			t.Fatalf("an unknown target closed with %d, want 1006 (the upgrade is refused)", info.Code)
		}
	})
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
