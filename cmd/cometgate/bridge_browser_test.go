package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
)

// bridgePageJS drives cometgate.js's TCPSocket in the page: TB.roundTrip
// opens a socket, sends bytes (base64) and resolves, once as many bytes
// came back, with the transport used and the bytes (base64).
const bridgePageJS = `
window.TB = {
  socks: [],
  // payload is set by the test before roundTrip (base64).
  payload: "",
  roundTrip(target, opts, want) {
    return new Promise((resolve, reject) => {
      const payload = Uint8Array.from(atob(TB.payload), (c) => c.charCodeAt(0));
      const sock = new CometGate.TCPSocket(target, opts);
      TB.socks.push(sock);
      const parts = [];
      let n = 0;
      const timer = setTimeout(() => reject(new Error("timeout after " + n + " bytes")), 25000);
      // Sent before the open on purpose: TCPSocket queues it.
      sock.send(payload);
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
	roundTrip := func(t *testing.T, target, opts string, payload []byte, want []byte) string {
		tb := b.in(t)
		t.Cleanup(func() { tb.eval("TB.closeAll()", nil) })
		var res struct {
			Transport string `json:"transport"`
			Data      string `json:"data"`
		}
		tb.eval(fmt.Sprintf("TB.payload = %q, true", base64.StdEncoding.EncodeToString(payload)), nil)
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
