// A page that loads the client with <script src="/cometgate.js"> and uses
// the global CometGate. Every call of the public API, typed; checked by
// tsc --strict in `go test -run TestTypeScript ./web` (it is never run).

const cg = new CometGate({
  url: "https://gateway.example",
  transports: ["websocket", "sse", "xhr_stream", "poll", "htmlfile", "jsonp"],
  debug: false,
  autoConnect: true,
  minReconnectDelay: 500,
  maxReconnectDelay: 30000,
  connectTimeout: 10000,
  bufferingTimeout: 4000,
  requestTimeout: 30000,
  ackInterval: 1000,
  ackEvery: 100,
  resumeWindow: 5000,
  token: () => fetch("/my-app/token").then((r) => r.text()),
});
new CometGate({ transports: "jsonp", token: "a.jwt.token" });
new CometGate({ transports: ["auto"], token: null });
new CometGate();

const removeStateListener: () => void = cg.on("state", (state, info) => {
  switch (state) {
    case "connected":
      console.log("connected over", info.transport, "session", info.sessionId.length);
      break;
    case "connecting":
      console.log("connecting with", info.transport ?? "(waiting for a token)");
      break;
    case "disconnected":
      console.log(info.code, info.reason, "retry in", info.delay.toFixed(0), "ms");
      break;
    case "closed":
      console.log("closed for good:", info.code, info.reason);
      break;
  }
});
removeStateListener();

const state: CometGate.State = cg.state;
const transport: CometGate.TransportName | null = cg.transport;
const sid: string | null = cg.sessionId;
console.log(state, transport, sid, cg.options.connectTimeout.toFixed(), CometGate.PROTOCOL_VERSION + 1);

const sub: CometGate.Subscription = cg.subscribe("demo.ticker.*", (msg) => {
  if (msg.kind === "bytes" && msg.data instanceof Uint8Array) console.log(msg.data.byteLength);
  console.log(msg.channel, msg.pattern, msg.seq + 1, msg.cursor ?? "no history");
});
cg.subscribe("demo.auction.lot1", { cursor: "41" });
cg.subscribe("demo.x", null, { cursor: null });
cg.subscribe("demo.y");
sub.on("subscribed", () => console.log("confirmed", sub.channel, sub.subscribed, sub.active, sub.cursor));
sub.on("gap", (g) => console.warn(g.channel, g.reason, g.oldest));
sub.on("error", (err) => {
  console.error(err.code + 0, err.channel, err.retrying, err.retryIn, err.message, err instanceof CometGate.Error);
});
const onMsg = (m: CometGate.Message) => console.log(m.data);
sub.on("message", onMsg);
sub.off("message", onMsg);
sub.unsubscribe();
console.log(sub.client === cg);

async function publishAll(): Promise<void> {
  const ok: CometGate.OkPacket = await cg.publish("demo.x", { bid: 120, bidder: "Ada", tags: ["a", null, true] });
  console.log(ok.t, ok.id, ok.seq);
  await cg.publish("demo.x", 42, { id: "bid-17" });
  await cg.publishText("demo.x", "hello");
  await cg.publishBytes("demo.x", new Uint8Array([0, 255]));
  await cg.publishBytes("demo.x", new ArrayBuffer(8));
  await cg.publishBytes("demo.x", new DataView(new ArrayBuffer(2)));
  const ms: number = await cg.ping();
  console.log(ms.toFixed(1));
  try {
    await cg.publish("secret.x", 1);
  } catch (e) {
    if (e instanceof CometGate.Error) {
      const code: CometGate.ErrorCode = e.code;
      if (code === "timeout" || code === "disconnected" || code === "closed" || code === 403) console.log(e.message);
    }
  }
}
void publishAll();
cg.connect().close();

const sock = new CometGate.TCPSocket("redis", { url: "https://gateway.example", sockjs: "/sockjs-redis", sockjsMaxBody: 65536, WebSocket: false });
sock.on("open", () => sock.send("PING\r\n"));
sock.on("data", (bytes) => console.log(new TextDecoder().decode(bytes)));
sock.on("close", (info) => console.log(info.code, info.reason, sock.readyState, sock.transport, sock.target));
const sent: boolean = sock.send(new Uint8Array([1, 2, 3]));
console.log(sent);
sock.close();

// Current state on subscribe.
cg.subscribe("demo.elections.>", (m) => console.log(m.data), { latest: true });
cg.subscribe("demo.auction.lot1", { last: 20 });
cg.subscribe("demo.auction.lot2", { cursor: "41", latest: true });
