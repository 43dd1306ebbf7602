package web

import (
	"os/exec"
	"testing"
)

// tcpSocketPacingJS drives CometGate.TCPSocket in node against stand-ins
// for a WebSocket and for sockjs-client that behave as those do where
// TCPSocket's writes are concerned (sockjs-client 1.x's BufferedSender:
// every message queued while a send is in flight, and for 25 ms after it,
// goes into the next body as a JSON array of quoted strings; its
// websocket transport sends each message as its own "[...]" frame). It
// checks that each body (each WebSocket message) stays within the
// server's limit and that the bytes arrive whole and in order. The real
// clients run in the browser tests (cmd/cometgate).
const tcpSocketPacingJS = `
const CometGate = require("./cometgate.js");
const assert = (c, m) => { if (!c) throw new Error(m); };

// The stream the page sends: every byte value, in writes of assorted
// sizes, total bytes.
function writes(total) {
  const out = [];
  let v = 0, left = total, k = 0;
  while (left > 0) {
    const n = Math.min(left, [1, 7000, 65537, 300000, 250, 50000][k++ % 6]);
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = (v++ * 7) & 0xff;
    out.push(b);
    left -= n;
  }
  return out;
}

function concat(parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

function fromByteString(s) {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    assert(s.charCodeAt(i) < 256, "not a byte string");
    b[i] = s.charCodeAt(i);
  }
  return b;
}

class FakeSockJS {
  constructor(url, _, opts) {
    this.name = opts.transport;
    this.bodies = [];
    this.got = [];
    this._sender = { sendBuffer: [], sendStop: null };
    this._transport = this.name === "websocket" || opts.blind ? {} : this._sender;
    setTimeout(() => { this.transport = this.name; this.onopen(); }, 1);
  }
  send(data) {
    const q = JSON.stringify(String(data));
    if (this.name === "websocket") return this._body("[" + q + "]");
    const t = this._sender;
    t.sendBuffer.push(q);
    if (!t.sendStop) this._schedule();
  }
  _schedule() {
    const t = this._sender;
    if (t.sendBuffer.length === 0) return;
    this._body("[" + t.sendBuffer.join(",") + "]");
    t.sendBuffer = [];
    // The request takes 0 to 30 ms, then the sender waits 25 ms.
    const timer = setTimeout(() => {
      t.sendStop = () => clearTimeout(wait);
      const wait = setTimeout(() => { t.sendStop = null; this._schedule(); }, 25);
    }, Math.random() * 30);
    t.sendStop = () => clearTimeout(timer);
  }
  _body(payload) {
    const size = this.name === "jsonp-polling" ? new URLSearchParams({ d: payload }).toString().length : Buffer.byteLength(payload);
    this.bodies.push(size);
    for (const m of JSON.parse(payload)) this.got.push(fromByteString(m));
  }
  close() {}
}

class FakeWebSocket {
  constructor() { this.got = []; FakeWebSocket.last = this; setTimeout(() => this.onopen(), 1); }
  send(b) { this.got.push(new Uint8Array(b)); }
  close() {}
}

function run(name, opts, total, limit) {
  return new Promise((resolve, reject) => {
    const parts = writes(total);
    const want = concat(parts);
    const sock = new CometGate.TCPSocket("t", Object.assign({ url: "http://gw.example" }, opts));
    for (const p of parts) sock.send(p); // before the open: queued
    const fake = () => sock._sock.got ? sock._sock : null;
    const check = setInterval(() => {
      const f = fake();
      if (!f) return;
      const got = concat(f.got);
      if (got.length < want.length) return;
      clearInterval(check);
      try {
        assert(got.length === want.length, name + ": " + got.length + " bytes, want " + want.length);
        for (let i = 0; i < got.length; i++) assert(got[i] === want[i], name + ": first difference at " + i);
        const sizes = f.bodies || f.got.map((g) => g.length);
        const most = Math.max(...sizes);
        assert(most <= limit, name + ": a body (message) of " + most + " bytes, over " + limit);
        console.log(name + ": " + total + " bytes in " + sizes.length + " bodies, the largest " + most);
        resolve();
      } catch (e) { reject(e); }
    }, 5);
  });
}

(async () => {
  await run("websocket", { WebSocket: FakeWebSocket }, 1 << 20, 65536);
  for (const t of ["xhr-streaming", "xhr-polling", "websocket"]) {
    await run("sockjs " + t, { WebSocket: false, sockjs: "/s", SockJS: FakeSockJS, sockjsOptions: { transport: t } }, 1 << 20, 65536);
  }
  await run("sockjs jsonp-polling", { WebSocket: false, sockjs: "/s", SockJS: FakeSockJS, sockjsOptions: { transport: "jsonp-polling" } }, 256 << 10, 65536);
  await run("sockjs xhr-streaming, sockjsMaxBody 524288", { WebSocket: false, sockjs: "/s", SockJS: FakeSockJS, sockjsMaxBody: 524288, sockjsOptions: { transport: "xhr-streaming" } }, 2 << 20, 524288);
  // A transport whose sender TCPSocket cannot see (iframe-*): paced by time.
  await run("sockjs iframe-xhr-polling", { WebSocket: false, sockjs: "/s", SockJS: FakeSockJS, sockjsOptions: { transport: "xhr-polling", blind: true } }, 64 << 10, 65536);
  console.log("ok");
})().catch((e) => { console.error(e.stack || e); process.exit(1); });
`

// TestTCPSocketPacing: TCPSocket splits writes into WebSocket messages the
// bridge takes and paces a burst over SockJS so that no send body exceeds
// the endpoint's limit, losing and reordering nothing.
func TestTCPSocketPacing(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	out, err := exec.Command(node, "-e", tcpSocketPacingJS).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("node: %v", err)
	}
}
