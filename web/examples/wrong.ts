// Wrong usages: each line marked "wrong" must be refused by tsc, and
// nothing else in this file may be (TestTypeScript checks both). They
// show that the declarations catch real mistakes.

const cg = new CometGate({ transports: ["websockets"] }); // wrong: no such transport
new CometGate({ connectTimeout: "10s" }); // wrong: a number of ms
new CometGate({ reconnect: true }); // wrong: no such option
cg.subscribe(42); // wrong: a channel is a string
cg.subscribe("demo.x", (msg) => msg.data.toFixed()); // wrong: data may be a string, bytes or JSON
cg.publish("demo.x", () => 1); // wrong: not a JSON value
cg.publishText("demo.x", { a: 1 }); // wrong: text is a string
cg.publish("demo.x", 1, { id: 17 }); // wrong: an id is a string
cg.on("message", () => {}); // wrong: the client has no "message" event
cg.on("state", (state, info) => info.sessionId); // wrong: only "connected" has a sessionId
cg.state = "connected"; // wrong: read-only
cg.subscribe("demo.x").on("gap", (g) => g.cursor); // wrong: a gap has no cursor
new CometGate.Subscription(); // wrong: subscriptions come from subscribe()
const ok: Promise<void> = cg.ping(); // wrong: ping resolves with a number
cg.subscribe("demo.x", { last: "5" }); // wrong: last is a number
cg.subscribe("demo.x", { latest: true, last: 5 }); // wrong: latest and last exclude each other
console.log(ok);
