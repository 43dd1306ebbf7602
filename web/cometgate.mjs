// cometgate.mjs: the browser client of cometgate as an ES module.
//
//   import { CometGate } from "/cometgate.mjs";   // or: import CometGate from …
//
// It holds no code of its own: it evaluates cometgate.js, the one source of
// the client (a classic script that also runs as a module: its wrapper
// finds globalThis, and it uses no top-level "this"), and exports what that
// defined. One hand-written file, served and published exactly as it is:
// no build step derives a second copy that could drift from the first, and
// the npm package, the gateway's /cometgate.mjs and a <script> tag all run
// the same bytes. The cost is that importing the module also defines
// globalThis.CometGate, the very object exported here.
import "./cometgate.js";

const CometGate = globalThis.CometGate;

export { CometGate };
export default CometGate;
