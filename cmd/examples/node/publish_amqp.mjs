// Publish one JSON message to a cometgate channel through RabbitMQ with
// amqplib (npm: amqplib):
//
//   node publish_amqp.mjs demo.prices '{"symbol":"ACME","price":12.5}'
//
// A channel is a routing key on the gateway's topic exchange
// (broker.amqp.exchange, "cometgate" by default). The content type tells
// the gateway the payload is JSON; the message id makes a retry safe; the
// confirm channel says the broker has it. AMQP_URL and EXCHANGE override
// the defaults.
import amqp from "amqplib";

const [channel, data] = process.argv.slice(2);
if (!channel || !data) {
  console.error("usage: node publish_amqp.mjs CHANNEL JSON");
  process.exit(2);
}
const conn = await amqp.connect(process.env.AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/");
try {
  const ch = await conn.createConfirmChannel();
  ch.publish(process.env.EXCHANGE || "cometgate", channel, Buffer.from(data), {
    contentType: "application/json",
    messageId: process.env.MSG_ID || `example-${Date.now()}`,
    persistent: true,
  });
  await ch.waitForConfirms();
  console.log("published");
} finally {
  await conn.close();
}
