package main

import (
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/cometgate/cometgate/gateway"
	"github.com/cometgate/cometgate/transports"
)

// The SockJS endpoints driven by the unmodified sockjs-client (installed
// from npm) in headless chromium, once per sockjs-client transport, from
// a page of the server's own origin and from a page of another origin.

// sjsClientVersion is the sockjs-client release the test installs: the
// one iframe.html loads by default (transports.DefaultSockJSClientURL),
// whose hash the test checks against
// transports.DefaultSockJSClientIntegrity.
const sjsClientVersion = "sockjs-client@1.6.1"

// sjsBrowserTransports are sockjs-client's transports that Chromium can
// use (xdr-streaming and xdr-polling are Internet Explorer's only).
var sjsBrowserTransports = []string{
	"websocket", "xhr-streaming", "eventsource", "iframe-eventsource", "htmlfile",
	"iframe-htmlfile", "xhr-polling", "iframe-xhr-polling", "jsonp-polling",
}

// sjsSameOriginOnly are the transports sockjs-client uses only from a page
// of the server's origin.
var sjsSameOriginOnly = map[string]bool{"htmlfile": true}

// sjsNeeds skips (or, under CI, fails) a test that lacks a tool.
func sjsNeeds(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// sjsClientJS installs sockjs-client from npm into a cache folder outside
// the repository (once per machine) and returns dist/sockjs.min.js.
func sjsClientJS(t *testing.T) []byte {
	t.Helper()
	pkg := npmPackage(t, strings.ReplaceAll(sjsClientVersion, "@", "-"), sjsClientVersion, "sockjs-client")
	js, err := os.ReadFile(filepath.Join(pkg, "dist", "sockjs.min.js"))
	if err != nil {
		t.Fatalf("sockjs-client: %v", err)
	}
	// The release iframe.html loads by default is this very file.
	if !strings.Contains(transports.DefaultSockJSClientURL, "/"+sjsClientVersion+"/dist/sockjs.min.js") {
		t.Fatalf("the test installs %s, iframe.html loads %s", sjsClientVersion, transports.DefaultSockJSClientURL)
	}
	sum := sha512.Sum384(js)
	if sri := "sha384-" + base64.StdEncoding.EncodeToString(sum[:]); sri != transports.DefaultSockJSClientIntegrity {
		t.Fatalf("%s's dist/sockjs.min.js is %s; DefaultSockJSClientIntegrity says %s", sjsClientVersion, sri, transports.DefaultSockJSClientIntegrity)
	}
	return js
}

// sjsBrowserPage is the test page: it loads sockjs-client and defines
// window.SJ, which drives SockJS connections and records what they see.
const sjsBrowserPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>sockjs</title>
<script src="/static/sockjs.min.js"></script>
</head><body><p>SockJS test page</p>
<script>
// Chromium runs the timers of a hidden cross-origin iframe (the iframe
// transports' helper) about once a second; on loopback sockjs-client's
// connect timeout, derived from the measured round trip, is shorter than
// that. A fixed timeout keeps the iframe transports from being given up.
const sjsOptions = (transport) => ({transports: [transport], timeout: 10000});
window.SJ = {
  // echo opens a connection with one transport, sends msgs and resolves
  // with the transport used and what came back, once all came back.
  echo(url, transport, msgs) {
    return new Promise((resolve, reject) => {
      const sock = new SockJS(url, null, sjsOptions(transport));
      SJ.socks.push(sock);
      const got = [];
      const timer = setTimeout(() => reject(new Error("timeout after " + got.length + " echoes")), 25000);
      sock.onopen = () => { for (const m of msgs) sock.send(m); };
      sock.onmessage = (e) => {
        got.push(e.data);
        if (got.length === msgs.length) {
          clearTimeout(timer);
          const used = sock.transport;
          sock.close();
          resolve({transport: used, got: got});
        }
      };
      sock.onclose = (e) => { clearTimeout(timer); reject(new Error("closed " + e.code + " " + e.reason + " after " + got.length + " echoes")); };
    });
  },
  socks: [],
  // closeAll closes every connection the page opened.
  closeAll() {
    for (const s of SJ.socks) s.close();
    SJ.socks = [];
    SJ.ps = {};
    return true;
  },
  ps: {},
  // subscribe opens a pubsub connection, subscribes to channel and
  // resolves with the transport used once the server said ok.
  subscribe(url, transport, channel) {
    return new Promise((resolve, reject) => {
      const sock = new SockJS(url, null, sjsOptions(transport));
      SJ.socks.push(sock);
      const st = {sock: sock, packets: [], msgs: [], oks: []};
      SJ.ps[transport] = st;
      const timer = setTimeout(() => reject(new Error("timeout: " + JSON.stringify(st.packets))), 25000);
      sock.onmessage = (e) => {
        const p = JSON.parse(e.data);
        st.packets.push(p);
        if (p.t === "hello") sock.send(JSON.stringify({op: "sub", id: 1, ch: channel}));
        if (p.t === "ok") st.oks.push(p.id);
        if (p.t === "msg") st.msgs.push(p.data);
        if (p.t === "ok" && p.id === 1) { clearTimeout(timer); resolve(sock.transport); }
      };
      sock.onclose = (e) => { clearTimeout(timer); st.closed = e.code; reject(new Error("closed " + e.code + " " + e.reason)); };
    });
  },
};
</script></body></html>`

// sjsBrowserNode is a node for the browser test: embedded NATS, the
// gateway, and the transports with two SockJS endpoints, serving the test
// page and sockjs-client from its own origin.
type sjsBrowserNode struct {
	gw   *gateway.Gateway
	base string // http://127.0.0.1:port
	port string
}

func sjsStartBrowserNode(t *testing.T, clientJS []byte) *sjsBrowserNode {
	t.Helper()
	web := http.NewServeMux()
	web.HandleFunc("/static/sockjs.min.js", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/javascript; charset=utf-8")
		_, _ = w.Write(clientJS)
	})
	web.HandleFunc("/sockjs-test.html", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(sjsBrowserPage))
	})
	eps := []transports.SockJSEndpoint{
		// A small response limit, so that the streaming transports
		// recycle their responses during the test.
		// The iframe page loads the client with its integrity, as the
		// default one from the CDN does.
		{Prefix: "/echo", Mode: transports.SockJSEcho, Websocket: true, ResponseLimit: 4096,
			ClientURL: "/static/sockjs.min.js", ClientIntegrity: transports.DefaultSockJSClientIntegrity},
		{Prefix: "/pubsub", Mode: transports.SockJSPubSub, Websocket: true,
			ClientURL: "/static/sockjs.min.js", ClientIntegrity: transports.DefaultSockJSClientIntegrity},
	}
	if err := transports.ValidateSockJS(eps); err != nil {
		t.Fatal(err)
	}
	var port string
	gw, base := startTransportsNode(t, gateway.Config{
		NodeID: "sjs",
		Rules:  gateway.Rules{{Pattern: "demo.>", Subscribe: gateway.Anyone, Publish: gateway.Anyone}},
	}, func(base string) transports.Options {
		_, port, _ = net.SplitHostPort(strings.TrimPrefix(base, "http://"))
		return transports.Options{
			// The server's own origin and another one (localhost), for
			// the cross-origin run.
			AllowedOrigins: []string{base, "http://localhost:" + port},
			SockJS:         eps,
			Web:            web,
		}
	})
	return &sjsBrowserNode{gw: gw, base: base, port: port}
}

// sjsPubSubMessage is the i-th message published to a SockJS page: small
// ones, and ones large enough to be compressed on the websocket (whose
// SockJS quoting, of the escapes and characters below, is compressed
// with them).
func sjsPubSubMessage(i int) string {
	if i%2 == 0 {
		return fmt.Sprintf(`{"i":%d,"s":"é </script> %%"}`, i)
	}
	return fmt.Sprintf(`{"i":%d,"s":"é </script> %%","rows":[%s]}`, i,
		strings.TrimSuffix(strings.Repeat(`{"name":"\"quoted\" \u2028 𝄞 € <&>","n":12345},`, 40), ","))
}

// sjsEchoMessages exercise what SockJS must carry intact: escapes, the
// characters browsers mangle, "%" (eventsource), "</script>" (htmlfile),
// non-BMP characters, and enough bytes to recycle streaming responses.
func sjsEchoMessages() []string {
	msgs := []string{
		"plain",
		`quotes " and \ backslash / slash`,
		"controls \n \r \t \u0000 \u001f",
		"mangled \u2028 \u2029 \u200c \u2060 \ufeff \ufff0 \u00ad \u0600",
		"html </script><script>alert(1)</script> & <b>",
		"percent %41 %25 % 100%",
		"unicode é € 𝄞 😀",
		"",
		strings.Repeat("long-", 700),
	}
	for i := range 20 {
		msgs = append(msgs, fmt.Sprintf("n%02d %s", i, strings.Repeat("x", 300)))
	}
	return msgs
}

func TestSockJSBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		sjsNeeds(t, "the SockJS browser test needs chromium at %s: apt-get install chromium", chromiumPath)
	}
	clientJS := sjsClientJS(t)
	n := sjsStartBrowserNode(t, clientJS)
	b := newTab(t)
	msgs := sjsEchoMessages()
	msgsJSON, _ := json.Marshal(msgs)

	for _, page := range []struct{ name, origin string }{
		{"same-origin", n.base},
		{"cross-origin", "http://localhost:" + n.port},
	} {
		t.Run(page.name, func(t *testing.T) {
			tb := b.in(t)
			tb.do(chromedp.Navigate(page.origin + "/sockjs-test.html"))
			var typ string
			tb.eval("typeof SockJS", &typ)
			if typ != "function" {
				t.Fatalf("SockJS is %q in the page", typ)
			}
			for _, tr := range sjsBrowserTransports {
				if page.origin != n.base && sjsSameOriginOnly[tr] {
					continue
				}
				t.Run(tr, func(t *testing.T) {
					tt := tb.in(t)
					// Whatever happens, the page's connections end with the
					// subtest: a browser holds at most six per host.
					t.Cleanup(func() { tt.eval("SJ.closeAll()", nil) })
					var echo struct {
						Transport string   `json:"transport"`
						Got       []string `json:"got"`
					}
					tt.eval(fmt.Sprintf("SJ.echo(%q, %q, %s)", n.base+"/echo", tr, msgsJSON), &echo)
					if echo.Transport != tr {
						t.Fatalf("echo went over %q, want %q", echo.Transport, tr)
					}
					if len(echo.Got) != len(msgs) {
						t.Fatalf("%d echoes, want %d", len(echo.Got), len(msgs))
					}
					for i := range msgs {
						if echo.Got[i] != msgs[i] {
							t.Fatalf("echo %d: got %.60q, want %.60q", i, echo.Got[i], msgs[i])
						}
					}

					// pubsub: subscribe, receive what the server publishes,
					// publish from the page and receive that too.
					channel := "demo.sockjs." + strings.ReplaceAll(tr, "-", "_") + "." + strings.ReplaceAll(page.name, "-", "_")
					var used string
					tt.eval(fmt.Sprintf("SJ.subscribe(%q, %q, %q)", n.base+"/pubsub", tr, channel), &used)
					if used != tr {
						t.Fatalf("pubsub went over %q, want %q", used, tr)
					}
					if tr == "websocket" {
						// Chromium offers permessage-deflate; the node
						// accepts (sockjs-client keeps the browser's
						// WebSocket as _transport.ws).
						var ext string
						tt.eval(fmt.Sprintf("SJ.ps[%q].sock._transport.ws.extensions", tr), &ext)
						if ext != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
							t.Fatalf("the SockJS websocket negotiated extensions %q", ext)
						}
					}
					for i := range 5 {
						if err := n.gw.Publish(context.Background(), channel, []byte(sjsPubSubMessage(i)), ""); err != nil {
							t.Fatalf("publish: %v", err)
						}
					}
					st := fmt.Sprintf("SJ.ps[%q]", tr)
					tt.eval(st+`.sock.send(JSON.stringify({op: "pub", id: 2, ch: `+fmt.Sprintf("%q", channel)+`, data: {from: "page"}})), true`, nil)
					tt.waitFor(st+".msgs.length >= 6 && "+st+".oks.includes(2)", st+".packets")
					var got []json.RawMessage
					tt.eval(st+".msgs", &got)
					same := func(raw json.RawMessage, want string) bool {
						var a, b any
						return json.Unmarshal(raw, &a) == nil && json.Unmarshal([]byte(want), &b) == nil && reflect.DeepEqual(a, b)
					}
					for i := range 5 {
						if want := sjsPubSubMessage(i); !same(got[i], want) {
							t.Fatalf("message %d: %s, want %s", i, got[i], want)
						}
					}
					if !same(got[5], `{"from":"page"}`) {
						t.Fatalf("the page's own publish came back as %s", got[5])
					}
				})
			}
		})
	}
	if p := b.problems(n.base+"/favicon.ico", "http://localhost:"+n.port+"/favicon.ico"); len(p) > 0 {
		t.Errorf("console errors: %v", p)
	}
}
