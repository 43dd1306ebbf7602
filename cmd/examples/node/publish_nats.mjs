// Publish one JSON message to a cometgate channel with the NATS client for
// Node.js (npm: nats):
//
//   node publish_nats.mjs demo.prices '{"symbol":"ACME","price":12.5}'
//
// A channel is a NATS subject (prefixed with broker.subject_prefix when the
// gateway sets one). The Content-Type header tells the gateway the payload
// is JSON; Nats-Msg-Id makes a retry safe. NATS_URL picks the server.
import { connect, headers } from "nats";

const [channel, data] = process.argv.slice(2);
if (!channel || !data) {
  console.error("usage: node publish_nats.mjs CHANNEL JSON");
  process.exit(2);
}
const nc = await connect({ servers: process.env.NATS_URL || "nats://127.0.0.1:4222" });
const h = headers();
h.set("Content-Type", "application/json");
h.set("Nats-Msg-Id", process.env.MSG_ID || `example-${Date.now()}`);
nc.publish(channel, new TextEncoder().encode(data), { headers: h });
await nc.flush(); // the server has it
await nc.close();
console.log("published");
