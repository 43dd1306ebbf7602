// CommonJS: module.exports is the CometGate class.
import CometGate = require("../cometgate.js");

const cg = new CometGate({ url: "http://127.0.0.1:8080", autoConnect: false });
cg.connect();
export = cg;
