// The ES module: import { CometGate } from "…/cometgate.mjs" (or its
// default export), as a bundler or a <script type="module"> page does.
import { CometGate } from "../cometgate.mjs";
import CometGateDefault from "../cometgate.mjs";

const cg: CometGate = new CometGateDefault({ transports: ["htmlfile", "jsonp"] });
const sub = cg.subscribe("demo.elections.>", (msg: CometGate.Message) => console.log(msg.channel, msg.data));
sub.on("gap", (info: CometGate.GapInfo) => console.warn(info.reason));
const err = new CometGate.Error(503, "broker unavailable");
console.log(err.code, cg.state);
export const client: CometGate = cg;
