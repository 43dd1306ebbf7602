// Declarations of cometgate.mjs: the module exports the class that
// cometgate.d.ts declares, by name and as the default.
import CometGate from "./cometgate.js";

export { CometGate };
export default CometGate;
