package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cometgate/cometgate/brokers/natsbroker"
	"github.com/cometgate/cometgate/gateway"
	"github.com/cometgate/cometgate/transports"
)

// Real clients through the TCP bridge, unmodified releases from npm in
// headless chromium: noVNC against a VNC server from Debian, asking for
// websockify's "binary" subprotocol as websockify-era pages do, and
// @stomp/stompjs against RabbitMQ's STOMP plugin, which offers the STOMP
// subprotocols and sends bodies far over the pub/sub frame limit.

// Where the real servers listen: RabbitMQ's STOMP plugin (.ci/services.sh
// enables it); the VNC server is the test's own.
const stompAddr = "127.0.0.1:61613"

// The client releases the tests install: the newest of each line (noVNC
// 1.7.0 is the newest 1.x, and installs with Node 20's npm: it declares
// no engines), pinned so that a run tests what the last one did.
const (
	noVNCVersion   = "@novnc/novnc@1.7.0"
	stompjsVersion = "@stomp/stompjs@7.5.0"
)

// npmPackage installs spec from npm into a cache folder outside the
// repository (once per machine) and returns the package's folder (name
// is its name under node_modules).
func npmPackage(t *testing.T, cacheName, spec, name string) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		sjsNeeds(t, "this test needs npm to install %s: apt-get install npm", spec)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "cometgate-test", cacheName)
	pkg := filepath.Join(dir, "node_modules", filepath.FromSlash(name))
	if _, err := os.Stat(filepath.Join(pkg, "package.json")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "install", "--prefix", dir, "--no-audit", "--no-fund", "--no-package-lock", spec)
		if out, err := cmd.CombinedOutput(); err != nil {
			sjsNeeds(t, "npm install %s failed: %v\n%s", spec, err, out)
		}
	}
	return pkg
}

// startTransportsNode runs a node for browser tests in-process: an
// embedded NATS server, a gateway with gcfg, and the transports with the
// options opts returns for the node's base URL (http://127.0.0.1:port,
// on a free port), served by an http.Server. Cleanup shuts them down in
// the production order and waits for each.
func startTransportsNode(t *testing.T, gcfg gateway.Config, opts func(base string) transports.Options) (*gateway.Gateway, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	emb, err := natsbroker.StartEmbedded(ctx, natsbroker.EmbeddedOptions{})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	gcfg.Logger = slog.New(slog.DiscardHandler)
	gw, err := gateway.New(gcfg, emb.Broker())
	if err != nil {
		_ = emb.Close()
		t.Fatalf("gateway: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	o := opts(base)
	o.Gateway = gw
	o.Logger = slog.New(slog.DiscardHandler)
	srv := transports.New(o)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := gw.Shutdown(sctx); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
		if err := hs.Shutdown(sctx); err != nil {
			t.Errorf("http shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		srv.Wait()
		if err := emb.Close(); err != nil {
			t.Errorf("embedded NATS: %v", err)
		}
	})
	return gw, base
}

// clientsNode is a node whose bridge reaches the given targets (on
// loopback), serving web at "/" from its own origin: the test pages and
// the clients' files.
type clientsNode struct {
	base string // http://127.0.0.1:port
	ws   string // ws://127.0.0.1:port
}

func startClientsNode(t *testing.T, targets []transports.BridgeTarget, web http.Handler) *clientsNode {
	t.Helper()
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	for i := range targets {
		targets[i].AllowNetworks = loopback
	}
	if err := transports.ValidateBridge(targets, nil); err != nil {
		t.Fatal(err)
	}
	_, base := startTransportsNode(t, gateway.Config{NodeID: "clients"}, func(base string) transports.Options {
		return transports.Options{AllowedOrigins: []string{base}, Bridge: targets, Web: web}
	})
	return &clientsNode{base: base, ws: "ws" + strings.TrimPrefix(base, "http")}
}

// testPages serves html pages by path, and no favicon (so that the
// browser's request for one is no console error).
func testPages(pages map[string]string) *http.ServeMux {
	mux := http.NewServeMux()
	for path, html := range pages {
		mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, html)
		})
	}
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	return mux
}

// startVNCServer runs Debian's Xtigervnc (an X server and a VNC server in
// one process) on a free display, with a white root window and no
// authentication, listening on loopback only. It returns the VNC address;
// cleanup stops it and waits for it.
func startVNCServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("Xtigervnc")
	if err != nil {
		sjsNeeds(t, "the noVNC test needs Xtigervnc: apt-get install tigervnc-standalone-server (.ci/services.sh does)")
	}
	addr := freePort(t)
	_, port, _ := net.SplitHostPort(addr)
	// -displayfd: the server picks a free display and writes its number
	// there once it is ready.
	ready, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	var log strings.Builder // what it wrote, for failures
	cmd := exec.Command(bin, "-displayfd", "3", "-rfbport", port, "-localhost", "-SecurityTypes", "None",
		"-geometry", "320x200", "-depth", "24", "-wr", "-nolisten", "tcp")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = &syncWriter{b: &log}
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatalf("Xtigervnc: %v", err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	display, err := io.ReadAll(io.LimitReader(ready, 16)) // EOF once written: the server closes the fd
	if err != nil || strings.TrimSpace(string(display)) == "" {
		t.Fatalf("Xtigervnc did not start (display %q, %v):\n%s", display, err, log.String())
	}
	if _, err := strconv.Atoi(strings.TrimSpace(string(display))); err != nil {
		t.Fatalf("Xtigervnc wrote display %q", display)
	}
	// It listens for VNC before it reports the display ready; a dial
	// proves it.
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("VNC server at %s: %v\n%s", addr, err, log.String())
	}
	_ = c.Close()
	return addr
}

// syncWriter guards a strings.Builder written by exec's copying goroutine.
type syncWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// noVNCPage loads noVNC's RFB (an ES module, served from the npm package
// as it ships) and records what a connection does. Every WebSocket the
// page opens is kept, so the test can read the subprotocol the handshake
// agreed on.
const noVNCPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>noVNC through the bridge</title></head>
<body><div id="screen"></div>
<script>
window.VNC = {state: "new", sockets: []};
const NativeWebSocket = window.WebSocket;
// A constructor that returns the browser's own WebSocket, recorded.
window.WebSocket = function (url, protocols) {
  const ws = new NativeWebSocket(url, protocols);
  VNC.sockets.push(ws);
  return ws;
};
window.WebSocket.prototype = NativeWebSocket.prototype;
Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
</script>
<script type="module">
import RFB from "/novnc/core/rfb.js";
VNC.connect = (url) => {
  const rfb = new RFB(document.getElementById("screen"), url, {wsProtocols: ["binary"]});
  rfb.addEventListener("connect", () => { VNC.state = "connected"; });
  rfb.addEventListener("disconnect", (e) => { VNC.state = "disconnected (clean: " + e.detail.clean + ")"; });
  rfb.addEventListener("securityfailure", (e) => { VNC.state = "security failure " + e.detail.status + " " + e.detail.reason; });
  rfb.addEventListener("desktopname", (e) => { VNC.name = e.detail.name; });
  VNC.rfb = rfb;
};
// pixel is the RGBA of the canvas's middle: transparent until a
// framebuffer update drew it.
VNC.pixel = () => {
  const c = document.querySelector("#screen canvas");
  if (!c || c.width === 0) return [];
  return Array.from(c.getContext("2d").getImageData(c.width >> 1, c.height >> 1, 1, 1).data);
};
VNC.ready = true;
</script></body></html>`

// TestBridgeNoVNC: the real noVNC, with wsProtocols ['binary'] as
// websockify-era pages pass it, connects through /tcp/vnc to a real VNC
// server, gets "binary" answered, reaches the connected state and draws
// the server's framebuffer (its white root window).
func TestBridgeNoVNC(t *testing.T) {
	pkg := npmPackage(t, "novnc-1.7.0", noVNCVersion, "@novnc/novnc")
	vnc := startVNCServer(t)
	mux := testPages(map[string]string{"/vnc.html": noVNCPage})
	mux.Handle("/novnc/", http.StripPrefix("/novnc/", http.FileServer(http.Dir(pkg))))
	n := startClientsNode(t, []transports.BridgeTarget{{Name: "vnc", Address: vnc}}, mux)

	b := newTab(t)
	b.do(chromedp.Navigate(n.base + "/vnc.html"))
	b.waitFor("window.VNC && VNC.ready === true", "VNC")
	b.eval(fmt.Sprintf("VNC.connect(%q), true", n.ws+"/tcp/vnc"), nil)
	b.waitFor(`VNC.state === "connected"`, "{state: VNC.state, sockets: VNC.sockets.map((s) => [s.readyState, s.protocol])}")
	var proto string
	b.eval("VNC.sockets[0].protocol", &proto)
	if proto != "binary" {
		t.Fatalf("the handshake agreed on %q, want binary", proto)
	}
	b.waitFor(`VNC.pixel().join() === "255,255,255,255"`, "{state: VNC.state, pixel: VNC.pixel(), name: VNC.name}")
	if problems := b.problems(); len(problems) > 0 {
		t.Fatalf("page problems: %v", problems)
	}
}

// stompPage drives @stomp/stompjs (its UMD bundle, as npm ships it) with
// brokerURL, so that the library opens the WebSocket itself and offers
// the STOMP subprotocols. ST.start subscribes (waiting for the broker's
// receipt), then publishes n messages, with at most window bytes of them
// not back yet (stompjs parses what arrives byte by byte: a page with
// megabytes queued does not answer the test for long on a loaded
// machine), and checks each one that comes back: in order, and byte for
// byte.
const stompPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>STOMP through the bridge</title>
<script src="/stompjs/bundles/stomp.umd.min.js"></script>
</head><body><script>
// Message i: every 25th 256 KiB, the others up to 16 KiB, text that
// differs from message to message.
const unit = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".repeat(4200);
function body(i) {
  const size = i % 25 === 24 ? 256 * 1024 : 1 + (i * 7919) % (16 * 1024);
  const head = i + ":";
  return head + unit.substr(i % 62, size - head.length);
}
window.ST = {
  got: 0, bytes: 0, error: null, done: false, protocol: null,
  start(url, dest, n, window) {
    let sent = 0, sentBytes = 0;
    const publish = () => {
      for (; sent < n && (sent === ST.got || sentBytes - ST.bytes < window); sent++) {
        const b = body(sent);
        client.publish({destination: dest, body: b, headers: {seq: String(sent)}});
        sentBytes += b.length;
      }
    };
    const client = new StompJs.Client({
      brokerURL: url,
      connectHeaders: {login: "guest", passcode: "guest", host: "/"},
      reconnectDelay: 0,
      debug: () => {},
    });
    ST.client = client;
    client.onConnect = () => {
      ST.protocol = client.webSocket.protocol;
      client.watchForReceipt("subscribed", publish);
      client.subscribe(dest, (m) => {
        const i = ST.got;
        if (ST.error) return;
        if (m.headers.seq !== String(i)) ST.error = "message " + i + " arrived as " + m.headers.seq;
        else if (m.body !== body(i)) ST.error = "message " + i + ": " + m.body.length + " bytes differ from the " + body(i).length + " sent";
        ST.got++;
        ST.bytes += m.body.length;
        if (ST.got === n) { ST.done = true; client.deactivate(); return; }
        publish();
      }, {receipt: "subscribed"});
    };
    client.onStompError = (f) => { ST.error = "STOMP ERROR " + f.headers.message + ": " + f.body; };
    client.onWebSocketClose = (e) => { if (!ST.done && !ST.error) ST.error = "WebSocket closed " + e.code + " " + e.reason + " after " + ST.got; };
    client.activate();
    return true;
  },
};
</script></body></html>`

// TestBridgeSTOMP: the real @stomp/stompjs with brokerURL (it offers
// v12.stomp, v11.stomp and v10.stomp, which the target lists) through
// /tcp/stomp to RabbitMQ's STOMP plugin: 1,000 messages of up to 256 KiB
// published and received in order, intact. Every 25th message is a
// single WebSocket message four times session.max_frame_bytes.
func TestBridgeSTOMP(t *testing.T) {
	if c, err := net.DialTimeout("tcp", stompAddr, 2*time.Second); err != nil {
		sjsNeeds(t, "RabbitMQ's STOMP plugin at %s: %v (.ci/services.sh enables it)", stompAddr, err)
	} else {
		_ = c.Close()
	}
	pkg := npmPackage(t, "stompjs-7.5.0", stompjsVersion, "@stomp/stompjs")
	mux := testPages(map[string]string{"/stomp.html": stompPage})
	mux.Handle("/stompjs/", http.StripPrefix("/stompjs/", http.FileServer(http.Dir(pkg))))
	n := startClientsNode(t, []transports.BridgeTarget{{Name: "stomp", Address: stompAddr,
		Subprotocols: []string{"v10.stomp", "v11.stomp", "v12.stomp"}}}, mux)

	b := newTab(t)
	b.do(chromedp.Navigate(n.base + "/stomp.html"))
	const count = 1000
	// A topic: RabbitMQ binds an exclusive queue for the subscription and
	// drops it with the connection.
	dest := fmt.Sprintf("/topic/cometgate-test.%d", time.Now().UnixNano())
	b.eval(fmt.Sprintf("ST.start(%q, %q, %d, %d)", n.ws+"/tcp/stomp", dest, count, 1<<20), nil)

	// Wait as long as messages keep coming: a busy machine is slow, not
	// stuck.
	var st struct {
		Got      int    `json:"got"`
		Bytes    int    `json:"bytes"`
		Error    string `json:"error"`
		Done     bool   `json:"done"`
		Protocol string `json:"protocol"`
	}
	for last := -1; !st.Done && st.Error == ""; {
		if st.Got == last {
			b.waitFor(fmt.Sprintf("ST.got > %d || ST.done || ST.error !== null", last), "{got: ST.got, error: ST.error}")
		}
		last = st.Got
		b.eval("({got: ST.got, bytes: ST.bytes, error: ST.error || \"\", done: ST.done, protocol: ST.protocol || \"\"})", &st)
	}
	if st.Error != "" {
		t.Fatalf("after %d messages: %s", st.Got, st.Error)
	}
	if st.Got != count || st.Protocol != "v12.stomp" {
		t.Fatalf("%d messages over %q, want %d over v12.stomp", st.Got, st.Protocol, count)
	}
	t.Logf("%d messages, %d bytes of bodies, in order, over %s", st.Got, st.Bytes, st.Protocol)
	if problems := b.problems(); len(problems) > 0 {
		t.Fatalf("page problems: %v", problems)
	}
}
