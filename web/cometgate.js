/*
 * cometgate.js: the browser client of the cometgate Comet gateway.
 *
 * It speaks wire protocol version 1 (see package transports, doc.go) over a
 * WebSocket or, when that does not work, an EventSource (SSE) plus HTTP POSTs
 * for upstream frames. Plain ES2018, no dependencies, no build step. Loading
 * this file as a classic <script> defines window.CometGate; under CommonJS it
 * is also module.exports.
 *
 * QUICK START
 *
 *   <script src="cometgate.js"></script>
 *   const cg = new CometGate({ url: location.origin, transports: ["websocket", "sse"] });
 *   cg.on("state", (state, info) => console.log(state, info));
 *   const sub = cg.subscribe("demo.x", (msg) => console.log(msg.channel, msg.data));
 *   sub.on("subscribed", () => console.log("the server confirmed the subscription"));
 *   sub.on("gap", (info) => console.warn("messages were lost", info.reason));
 *   sub.on("error", (err) => console.error(err.code, err.message));
 *   await cg.publish("demo.x", { any: "json" });   // resolves once the broker confirmed it
 *   sub.unsubscribe();
 *   cg.close();
 *
 * new CometGate(options)
 *   Every option is optional.
 *   url                base URL of the gateway (default location.origin). The
 *                      client uses url + "/ws", url + "/sse" and
 *                      url + "/session/{sid}/send".
 *   transports         transports to try, in order (default
 *                      ["websocket", "sse"]; "auto" means the same).
 *   debug              log protocol events with console.debug (default false).
 *   autoConnect        connect right away (default true); otherwise call
 *                      connect().
 *   minReconnectDelay  500 ms  } reconnect delay: exponential backoff with full
 *   maxReconnectDelay  30000 ms} jitter, uniform in [min, min(max, min*2^(n+1))]
 *                      for the n-th retry in a row.
 *   connectTimeout     10000 ms: how long a transport may take to deliver the
 *                      server's hello before the next transport is tried.
 *   requestTimeout     30000 ms: a publish or ping that has no answer by then
 *                      rejects with code "timeout" (0 disables).
 *   ackInterval        1000 ms } acknowledge the highest packet seq received
 *   ackEvery           100     } after ackInterval or after ackEvery packets.
 *   WebSocket, EventSource, fetch
 *                      implementations to use instead of the globals (tests,
 *                      non-browser hosts).
 *
 * CometGate
 *   state              "disconnected" (not connected, maybe waiting to retry),
 *                      "connecting", "connected" or "closed" (final).
 *   transport          "websocket" | "sse" | null: the transport in use.
 *   sessionId          the server's session id, or null.
 *   on(event, fn)      add a listener; returns a function that removes it.
 *   off(event, fn)     remove a listener.
 *     "state" (state, info): info is {transport, sessionId} for "connected";
 *       {code, reason, delay} for "disconnected" (delay = ms until the next
 *       attempt); {code, reason} for "closed".
 *   subscribe(channel, onMessage?, {cursor}?) → Subscription
 *       channel may be a pattern ("demo.ticker.*", "demo.>"). cursor resumes
 *       a channel with history after that message. Subscribing to a channel
 *       that is already subscribed shares the server subscription (and its
 *       cursor; the second cursor is ignored).
 *   publish(channel, value) → Promise   value is sent as JSON ("data").
 *   publishText(channel, string) → Promise   sent as "text".
 *   publishBytes(channel, Uint8Array | ArrayBuffer | view) → Promise   "b64".
 *       A publish resolves with the server's ok packet once the broker has
 *       confirmed the message, and rejects with a CometGate.Error otherwise.
 *       A publish made while disconnected is sent when the connection is
 *       back (unless requestTimeout runs out first).
 *   ping() → Promise<number>   round trip in ms.
 *   connect()          connect now (also: retry now instead of waiting).
 *   close()            close for good: no more reconnects, state "closed".
 *
 * Subscription
 *   channel, active (false after unsubscribe or a final error), subscribed
 *   (confirmed by the server on the current connection), cursor (the cursor
 *   of the last message received, or the one given to subscribe).
 *   on(event, fn) / off(event, fn)
 *     "message" (msg)   the onMessage callback is a "message" listener.
 *     "subscribed" ()   the server confirmed; fires again after each reconnect.
 *     "gap" (info)      {channel, reason, oldest}: messages were lost.
 *     "error" (err)     the server refused the subscription. err.code is the
 *                       server's code; when err.retrying is true (codes 500,
 *                       503) the client retries after err.retryIn ms, else
 *                       the subscription is over (active becomes false).
 *   unsubscribe()
 *
 * Message (shared by every listener of a subscription: treat it as read-only)
 *   channel   the concrete channel ("demo.ticker.AAPL").
 *   pattern   the subscription it matched ("demo.ticker.*"; equal to channel
 *             for plain subscriptions).
 *   data      the payload: the JSON value as is ("data"), a string ("text") or
 *             a Uint8Array ("b64").
 *   kind      "json" | "text" | "bytes": which of the three it was.
 *   cursor    the message's cursor on channels with history, else undefined.
 *   seq       the packet's sequence number in the session.
 *
 * CometGate.Error (extends Error): code is the server's numeric code (HTTP
 *   style: 400, 403, 404, 409, 413, 422, 429, 500, 503) or one of the
 *   client's own strings: "disconnected" (the connection dropped after the
 *   request was sent: it may or may not have been applied), "timeout",
 *   "closed".
 *
 * BEHAVIOUR
 *   - Transports are tried in order. WebSocket falls back to SSE when it
 *     fails to open, closes before the server's hello, or sends no hello
 *     within connectTimeout. The transport that worked last is tried first on
 *     the next connection.
 *   - Requests carry ids 1, 2, 3, … (per client); ok/err answers are matched
 *     by id. Packets are de-duplicated by seq within a session.
 *   - Acks: the highest seq received is acknowledged at most about every
 *     ackInterval, or at once after ackEvery packets; over WebSocket as a
 *     frame, over SSE in the next POST /session/{sid}/send.
 *   - Over SSE the initial subscriptions (and their cursors) are the query of
 *     the /sse URL; later frames are POSTed as JSON arrays, one POST at a time
 *     (order is kept), each frame numbered with "n" so a retried POST is
 *     harmless. POSTs that fail with a network error, 408, 429 or 5xx are
 *     retried; 404 means the session is gone and the client reconnects.
 *     When the stream drops the browser's EventSource reconnects by itself
 *     (sending Last-Event-ID); frames wait meanwhile instead of going to a
 *     session that is probably gone. If the server then opens a new session
 *     the client reconciles its subscriptions (and sends the waiting
 *     requests there), and if that does not happen within connectTimeout the
 *     client takes over with its own backoff.
 *   - Every subscription remembers the cursor of its last message; after a
 *     reconnect each channel is subscribed again from that cursor, so
 *     channels with history resume without loss (or report a gap).
 *   - Reconnect on a close code 3000-3999, on any other drop, and when the
 *     connection is silent for two heartbeat intervals (the client pings
 *     after one silent interval: browsers hide transport-level heartbeats).
 *     A close code 4000-4999 is final: state "closed" with the reason.
 *   - Unknown packet types and unknown fields are ignored. Nothing from the
 *     server is ever evaluated.
 *
 * Pure helpers, exported for tests: CometGate._decodePacket(text),
 * _decodePayload(packet), _encodeFrame(frame), _base64ToBytes(string),
 * _bytesToBase64(bytes), _backoffDelay(attempt, min, max, random),
 * _buildSSEURL(base, [[channel, cursor]], maxLength), _webSocketURL(base),
 * _shouldReconnect({code, reconnect}).
 */
(function (root, factory) {
  "use strict";
  var CometGate = factory(root);
  if (typeof module === "object" && module && module.exports) module.exports = CometGate;
  if (root) root.CometGate = CometGate;
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this, function (root) {
  "use strict";

  const PROTOCOL_VERSION = 1;

  const DEFAULTS = {
    url: "",
    transports: ["websocket", "sse"],
    debug: false,
    autoConnect: true,
    minReconnectDelay: 500,
    maxReconnectDelay: 30000,
    connectTimeout: 10000,
    requestTimeout: 30000,
    ackInterval: 1000,
    ackEvery: 100,
    WebSocket: null,
    EventSource: null,
    fetch: null,
  };

  const TRANSPORT_NAMES = ["websocket", "sse"];
  // The /sse URL carries the initial subscriptions; channels that would make
  // it longer than this are subscribed by POST after the hello instead.
  const MAX_SSE_URL_LENGTH = 4000;
  // A connection that stayed up this long resets the backoff.
  const STABLE_CONNECTION_MS = 10000;
  // Subscription errors worth retrying: the broker or the server had trouble.
  const RETRYABLE_SUB_CODES = [500, 503];

  const WS_OPEN = 1;
  const ES_CLOSED = 2;

  function now() {
    return root.performance && typeof root.performance.now === "function" ? root.performance.now() : Date.now();
  }

  function hasOwn(obj, key) {
    return Object.prototype.hasOwnProperty.call(obj, key);
  }

  // Report an exception thrown by application code without breaking the
  // client: rethrow it on a fresh stack so it still shows in the console.
  function reportError(err) {
    setTimeout(function () {
      throw err;
    }, 0);
  }

  // ---------------------------------------------------------------------------
  // Pure helpers (no state, no I/O): framing, payloads, URLs, backoff.

  // decodePacket parses one server packet. It returns the packet object, or
  // null for anything that is not a JSON object with a string "t".
  function decodePacket(text) {
    if (typeof text !== "string") return null;
    let p;
    try {
      p = JSON.parse(text);
    } catch (e) {
      return null;
    }
    if (p === null || typeof p !== "object" || Array.isArray(p) || typeof p.t !== "string") return null;
    return p;
  }

  // decodePayload returns {kind, data} for the payload of a msg packet:
  // "data" as is, "text" as a string, "b64" as a Uint8Array; null when the
  // packet has no payload this client understands.
  function decodePayload(p) {
    if (hasOwn(p, "data")) return { kind: "json", data: p.data };
    if (hasOwn(p, "text")) return typeof p.text === "string" ? { kind: "text", data: p.text } : null;
    if (hasOwn(p, "b64")) {
      const bytes = typeof p.b64 === "string" ? base64ToBytes(p.b64) : null;
      return bytes ? { kind: "bytes", data: bytes } : null;
    }
    return null;
  }

  // encodeFrame turns a client frame into the text sent on the wire.
  function encodeFrame(frame) {
    return JSON.stringify(frame);
  }

  function base64ToBytes(s) {
    let bin;
    try {
      bin = root.atob(s);
    } catch (e) {
      return null;
    }
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function bytesToBase64(bytes) {
    const u8 = toUint8Array(bytes);
    if (!u8) throw new TypeError("expected a Uint8Array, an ArrayBuffer or an ArrayBuffer view");
    let bin = "";
    const CHUNK = 0x8000;
    for (let i = 0; i < u8.length; i += CHUNK) {
      bin += String.fromCharCode.apply(null, u8.subarray(i, i + CHUNK));
    }
    return root.btoa(bin);
  }

  function toUint8Array(b) {
    if (b instanceof Uint8Array) return b;
    if (b instanceof ArrayBuffer) return new Uint8Array(b);
    if (ArrayBuffer.isView(b)) return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    return null;
  }

  function decodeUTF8(buf) {
    const u8 = toUint8Array(buf);
    if (!u8 || typeof root.TextDecoder !== "function") return null;
    return new root.TextDecoder("utf-8").decode(u8);
  }

  // backoffDelay is the delay in ms before retry number attempt (0-based):
  // exponential backoff with full jitter, uniform in
  // [min, min(max, min * 2^(attempt+1))].
  function backoffDelay(attempt, min, max, random) {
    const r = typeof random === "function" ? random() : Math.random();
    const cap = Math.min(max, min * Math.pow(2, Math.min(Math.max(0, attempt), 30) + 1));
    return Math.round(min + r * Math.max(0, cap - min));
  }

  // shouldReconnect decides from a close code: 4000-4999 never, 3000-3999
  // always, anything else (network drops, 1000, 1006) unless the server said
  // reconnect: false.
  function shouldReconnect(info) {
    const code = info && typeof info.code === "number" ? info.code : 0;
    if (code >= 4000 && code <= 4999) return false;
    if (code >= 3000 && code <= 3999) return true;
    return !(info && info.reconnect === false);
  }

  function endpointURL(base, path) {
    return base.replace(/\/+$/, "") + path;
  }

  function webSocketURL(base) {
    return endpointURL(base, "/ws").replace(/^http(s?):/i, "ws$1:");
  }

  function cursorKey(cursor) {
    return cursor === null || cursor === undefined ? "" : String(cursor);
  }

  // buildSSEURL builds the /sse URL with one ch= (and cursor.CH=) per
  // subscription. subs is a list of [channel, cursor]. Subscriptions that
  // would make the URL longer than maxLength are left out. It returns
  // {url, included}: included maps each channel in the URL to its cursor
  // ("" for none).
  function buildSSEURL(base, subs, maxLength) {
    let url = endpointURL(base, "/sse");
    const included = new Map();
    let sep = "?";
    for (const pair of subs) {
      const ch = pair[0];
      const cur = cursorKey(pair[1]);
      let part = "ch=" + encodeURIComponent(ch);
      if (cur !== "") part += "&cursor." + encodeURIComponent(ch) + "=" + encodeURIComponent(cur);
      if (maxLength && url.length + 1 + part.length > maxLength) continue;
      url += sep + part;
      sep = "&";
      included.set(ch, cur);
    }
    return { url: url, included: included };
  }

  function resolveBase(url) {
    const loc = root.location;
    if (!url) {
      if (loc && loc.origin && loc.origin !== "null") return loc.origin;
      throw new TypeError("CometGate: options.url is required outside a web page");
    }
    if (typeof root.URL !== "function") return String(url).replace(/\/+$/, "");
    const u = loc && loc.href ? new root.URL(url, loc.href) : new root.URL(url);
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new TypeError("CometGate: options.url must be an http(s) URL, got " + url);
    }
    return (u.origin + u.pathname).replace(/\/+$/, "");
  }

  function normalizeTransports(t) {
    let list = t === undefined || t === null || t === "auto" ? DEFAULTS.transports : t;
    if (typeof list === "string") list = [list];
    if (!Array.isArray(list)) throw new TypeError("CometGate: options.transports must be an array");
    const out = [];
    for (const name of list) {
      if (name === "auto") {
        for (const n of DEFAULTS.transports) if (out.indexOf(n) < 0) out.push(n);
        continue;
      }
      if (TRANSPORT_NAMES.indexOf(name) < 0) throw new TypeError("CometGate: unknown transport " + JSON.stringify(name));
      if (out.indexOf(name) < 0) out.push(name);
    }
    if (out.length === 0) throw new TypeError("CometGate: options.transports is empty");
    return out;
  }

  function checkChannel(channel) {
    if (typeof channel !== "string" || channel === "") throw new TypeError("CometGate: channel must be a non-empty string");
  }

  // ---------------------------------------------------------------------------
  // Events and errors.

  class Emitter {
    constructor() {
      this._listeners = new Map();
    }

    on(event, fn) {
      if (typeof fn !== "function") throw new TypeError("listener must be a function");
      let set = this._listeners.get(event);
      if (!set) {
        set = new Set();
        this._listeners.set(event, set);
      }
      set.add(fn);
      return () => this.off(event, fn);
    }

    off(event, fn) {
      const set = this._listeners.get(event);
      if (set) set.delete(fn);
    }

    // _emit calls the listeners; a listener that throws does not stop the
    // others or the client. It returns whether there was any listener.
    _emit(event) {
      const set = this._listeners.get(event);
      if (!set || set.size === 0) return false;
      const args = Array.prototype.slice.call(arguments, 1);
      for (const fn of Array.from(set)) {
        try {
          fn.apply(this, args);
        } catch (e) {
          reportError(e);
        }
      }
      return true;
    }
  }

  class CometGateError extends Error {
    constructor(code, message) {
      super(message);
      this.name = "CometGateError";
      this.code = code;
    }
  }

  function errorFromPacket(p) {
    const code = typeof p.code === "number" ? p.code : 500;
    const text = typeof p.error === "string" && p.error ? p.error : "request failed (" + code + ")";
    return new CometGateError(code, text);
  }

  // ---------------------------------------------------------------------------
  // Subscription: the application's handle. Several handles may share one
  // server subscription (an "entry" of the client).

  class Subscription extends Emitter {
    constructor(client, channel, entry) {
      super();
      this.client = client;
      this.channel = channel;
      this._entry = entry;
      this._active = true;
    }

    get active() {
      return this._active;
    }

    get subscribed() {
      return this._active && this._entry.status === "active";
    }

    get cursor() {
      return this._entry.cursor;
    }

    unsubscribe() {
      this.client._unsubscribe(this);
    }

    _deliver(msg) {
      if (this._active) this._emit("message", msg);
    }
  }

  // ---------------------------------------------------------------------------
  // Transports. A transport carries one connection attempt; the client keeps
  // the session bookkeeping (sid, seq, acks, timers) on the same object.
  // Interface used by the client:
  //   name, initial (Map channel → cursor subscribed by the URL, or null),
  //   start(), send(frames), setSession(sid), resetSession(),
  //   takeUndelivered() → Set of request ids never handed to the server,
  //   close().
  // It reports to the client with _onRaw(conn, text),
  // _onTransportClose(conn, {code, reason}), _onTransportInterrupted(conn),
  // _onTransportResumed(conn) and _onFramesRejected(conn, frames, status).

  class Connection {
    constructor(client, name) {
      this.client = client;
      this.name = name;
      this.initial = null;
      this.closed = false;
      // Session bookkeeping, owned by the client.
      this.sid = null;
      this.helloSeen = false;
      this.hb = 25;
      this.lastSeq = 0;
      this.ackedSeq = 0;
      this.unacked = 0;
      this.lastRecv = 0;
      this.pingSentAt = 0;
      this.connectedAt = 0;
      this.helloTimer = null;
      this.ackTimer = null;
      this.livenessTimer = null;
      this.interruptTimer = null;
      this.order = null;
      this.index = 0;
    }

    setSession() {}

    resetSession() {}

    takeUndelivered() {
      return new Set();
    }
  }

  class WebSocketTransport extends Connection {
    constructor(client) {
      super(client, "websocket");
      this.url = webSocketURL(client._base);
      this.ws = null;
      this.undelivered = new Set();
    }

    static supported(client) {
      return typeof client._impl("WebSocket") === "function";
    }

    start() {
      const WS = this.client._impl("WebSocket");
      const ws = new WS(this.url);
      this.ws = ws;
      ws.binaryType = "arraybuffer";
      ws.onmessage = (e) => {
        if (this.closed) return;
        const text = typeof e.data === "string" ? e.data : decodeUTF8(e.data);
        if (text !== null) this.client._onRaw(this, text);
      };
      ws.onclose = (e) => {
        if (this.closed) return;
        this.closed = true;
        this.client._onTransportClose(this, { code: e.code || 1006, reason: e.reason || "connection closed" });
      };
      ws.onerror = () => {}; // a close event always follows
    }

    send(frames) {
      for (const f of frames) {
        if (this.closed || !this.ws || this.ws.readyState !== WS_OPEN) {
          if (typeof f.id === "number") this.undelivered.add(f.id);
          continue;
        }
        this.ws.send(encodeFrame(f));
      }
    }

    takeUndelivered() {
      return this.undelivered;
    }

    close() {
      if (this.closed && !this.ws) return;
      this.closed = true;
      const ws = this.ws;
      this.ws = null;
      if (!ws) return;
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, "client closed");
      } catch (e) {
        // already closed
      }
    }
  }

  class SSETransport extends Connection {
    constructor(client, subs) {
      super(client, "sse");
      const built = buildSSEURL(client._base, subs, MAX_SSE_URL_LENGTH);
      this.url = built.url;
      this.initial = built.included;
      this.es = null;
      this.interrupted = false;
      // Set while the browser reconnects the stream and until its first
      // packet: the session named by sid is probably gone (the server ends
      // an SSE session with its stream), so frames wait here instead of
      // being POSTed to it, and the hello says where they go.
      this.holding = false;
      this.queue = []; // frames not yet POSTed
      this.inflight = null; // the batch being POSTed
      this.goneBatch = null; // a batch the server answered 404: never applied
      this.n = 0; // upstream frame counter of the session
      this.epoch = 0; // bumped by resetSession: late POST answers are ignored
      this.flushScheduled = false;
      this.retryTimer = null;
      this.postFailures = 0;
    }

    static supported(client) {
      return typeof client._impl("EventSource") === "function" && typeof client._fetch === "function";
    }

    start() {
      const ES = this.client._impl("EventSource");
      const es = new ES(this.url);
      this.es = es;
      es.onmessage = (e) => {
        if (this.closed) return;
        if (!this.holding) {
          this.client._onRaw(this, e.data);
          return;
        }
        // The first packet after a reconnect: a hello of a new session
        // resets the session (and the queue) before anything is sent; the
        // same session gets what was held.
        this.holding = false;
        this.client._onRaw(this, e.data);
        this._flush();
      };
      es.onopen = () => {
        if (this.closed || !this.interrupted) return;
        this.interrupted = false;
        this.client._onTransportResumed(this);
      };
      es.onerror = () => {
        if (this.closed) return;
        if (es.readyState === ES_CLOSED || !this.helloSeen) {
          // The browser gave up (HTTP error, wrong content type) or the
          // stream broke before the session started: this attempt failed.
          this.client._onTransportClose(this, { code: 1006, reason: "EventSource failed" });
          return;
        }
        // The browser reconnects by itself, sending Last-Event-ID.
        if (!this.interrupted) {
          this.interrupted = true;
          this.holding = true;
          this.client._onTransportInterrupted(this);
        }
      };
    }

    send(frames) {
      if (this.closed) return;
      for (const f of frames) {
        // Only the newest ack matters.
        if (f.op === "ack") this.queue = this.queue.filter((q) => q.op !== "ack");
        this.queue.push(f);
      }
      // Frames sent in the same tick go out in one POST.
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        Promise.resolve().then(() => {
          this.flushScheduled = false;
          this._flush();
        });
      }
    }

    setSession(sid) {
      this.sid = sid;
      this._flush();
    }

    resetSession() {
      this.epoch++;
      this.queue = [];
      this.inflight = null;
      this.goneBatch = null;
      this.holding = false;
      this.n = 0;
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.postFailures = 0;
    }

    takeUndelivered() {
      const ids = new Set();
      const add = (f) => {
        if (typeof f.id === "number") ids.add(f.id);
      };
      this.queue.forEach(add);
      if (this.goneBatch) this.goneBatch.forEach(add);
      return ids;
    }

    _flush() {
      if (this.closed || this.holding || this.inflight || this.retryTimer || !this.sid || this.queue.length === 0) return;
      const batch = this.queue.map((f) => Object.assign({}, f, { n: ++this.n }));
      this.queue = [];
      this.inflight = batch;
      this._post(batch, this.epoch);
    }

    _post(batch, epoch) {
      const url = endpointURL(this.client._base, "/session/" + encodeURIComponent(this.sid) + "/send");
      let req;
      try {
        req = this.client._fetch(url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(batch),
          credentials: "same-origin",
          cache: "no-store",
        });
      } catch (e) {
        req = Promise.reject(e);
      }
      Promise.resolve(req).then(
        (res) => {
          if (this.closed || epoch !== this.epoch) return;
          const status = res.status;
          if (status >= 200 && status < 300) {
            this.inflight = null;
            this.postFailures = 0;
            this._flush();
          } else if (status === 404) {
            this.inflight = null;
            this.goneBatch = this.goneBatch ? this.goneBatch.concat(batch) : batch;
            // While the browser reconnects the stream, the old session being
            // gone is expected: the new session's hello takes the batch over
            // (it was never applied), and the interruption timer covers a
            // stream that does not come back.
            if (this.holding) return;
            this.client._onTransportClose(this, { code: 1006, reason: "session not found (HTTP 404)" });
          } else if (status === 408 || status === 429 || status >= 500) {
            this._retry(batch, epoch);
          } else {
            // The server refused these frames; sending them again would not help.
            this.inflight = null;
            this.client._onFramesRejected(this, batch, status);
            this._flush();
          }
        },
        () => {
          if (!this.closed && epoch === this.epoch) this._retry(batch, epoch);
        }
      );
    }

    _retry(batch, epoch) {
      const delay = backoffDelay(this.postFailures++, 250, 5000);
      this.client._debug("POST failed, retrying in", delay, "ms");
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (!this.closed && epoch === this.epoch) this._post(batch, epoch);
      }, delay);
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      const es = this.es;
      this.es = null;
      if (!es) return;
      es.onmessage = es.onerror = es.onopen = null;
      try {
        es.close();
      } catch (e) {
        // already closed
      }
    }
  }

  // ---------------------------------------------------------------------------
  // The client.

  class CometGate extends Emitter {
    constructor(options) {
      super();
      const o = Object.assign({}, DEFAULTS, options || {});
      this.options = o;
      this._base = resolveBase(o.url);
      this._transports = normalizeTransports(o.transports);
      const f = o.fetch || root.fetch;
      this._fetch = typeof f === "function" ? (o.fetch ? f : f.bind(root)) : null;

      this.state = "disconnected";
      this.transport = null;
      this.sessionId = null;

      this._subs = new Map(); // channel → entry (one server subscription)
      this._pending = new Map(); // request id → request awaiting ok/err
      this._outbox = []; // requests waiting for a connection
      this._nextId = 1;
      this._conn = null;
      this._attempt = 0; // reconnects in a row without a stable connection
      this._reconnectTimer = null;
      this._preferred = null; // the transport that worked last

      this._onOnline = () => {
        if (this.state === "disconnected" && this._reconnectTimer) this.connect();
      };
      if (typeof root.addEventListener === "function") root.addEventListener("online", this._onOnline);

      if (o.autoConnect) {
        // Let the caller attach listeners first.
        Promise.resolve().then(() => {
          if (this.state === "disconnected" && !this._conn && !this._reconnectTimer) this.connect();
        });
      }
    }

    // ---- public API ----

    connect() {
      if (this.state === "closed") throw new CometGateError("closed", "CometGate: the client is closed");
      if (this._conn) return this;
      if (this._reconnectTimer) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
      }
      this._tryTransport(this._transportOrder(), 0);
      return this;
    }

    close() {
      if (this.state === "closed") return;
      this._finish({ code: 1000, reason: "closed by the client" });
    }

    subscribe(channel, onMessage, options) {
      if (onMessage && typeof onMessage === "object" && options === undefined) {
        options = onMessage;
        onMessage = null;
      }
      checkChannel(channel);
      if (this.state === "closed") throw new CometGateError("closed", "CometGate: the client is closed");
      let entry = this._subs.get(channel);
      const isNew = !entry;
      if (isNew) {
        const cursor = options && options.cursor !== undefined && options.cursor !== null && options.cursor !== "" ? options.cursor : null;
        entry = { channel: channel, cursor: cursor, subs: new Set(), status: "pending", reqId: 0, retries: 0, retryTimer: null, dropUntilConfirmed: false };
        this._subs.set(channel, entry);
      }
      const sub = new Subscription(this, channel, entry);
      if (typeof onMessage === "function") sub.on("message", onMessage);
      entry.subs.add(sub);
      if (isNew) {
        if (this._canSend()) this._sendSub(this._conn, entry);
      } else if (entry.status === "active") {
        Promise.resolve().then(() => {
          if (sub.subscribed) sub._emit("subscribed");
        });
      }
      return sub;
    }

    publish(channel, value) {
      return this._publish(channel, "data", value);
    }

    publishText(channel, text) {
      if (typeof text !== "string") return Promise.reject(new TypeError("CometGate: publishText needs a string"));
      return this._publish(channel, "text", text);
    }

    publishBytes(channel, bytes) {
      let b64;
      try {
        b64 = bytesToBase64(bytes);
      } catch (e) {
        return Promise.reject(e);
      }
      return this._publish(channel, "b64", b64);
    }

    ping() {
      const t0 = now();
      return this._request("ping", { op: "ping" }).then(() => now() - t0);
    }

    // ---- requests ----

    _publish(channel, field, value) {
      try {
        checkChannel(channel);
        if (field === "data" && (value === undefined || typeof JSON.stringify(value) !== "string")) {
          throw new TypeError("CometGate: publish needs a JSON-serializable value");
        }
      } catch (e) {
        return Promise.reject(e);
      }
      const frame = { op: "pub", ch: channel };
      frame[field] = value;
      return this._request("pub", frame);
    }

    _request(kind, frame) {
      if (this.state === "closed") return Promise.reject(new CometGateError("closed", "CometGate: the client is closed"));
      return new Promise((resolve, reject) => {
        const req = this._newRequest(kind, frame, null);
        req.resolve = resolve;
        req.reject = reject;
        if (this.options.requestTimeout > 0) {
          req.timer = setTimeout(() => this._timeoutRequest(req), this.options.requestTimeout);
        }
        if (this._canSend()) this._transmit(this._conn, [req]);
        else this._outbox.push(req);
      });
    }

    _newRequest(kind, frame, entry) {
      const id = this._nextId++;
      frame.id = id;
      const req = { id: id, kind: kind, frame: frame, entry: entry, conn: null, timer: null, resolve: noop, reject: noop };
      this._pending.set(id, req);
      return req;
    }

    _transmit(conn, reqs) {
      if (reqs.length === 0) return;
      for (const r of reqs) r.conn = conn;
      this._debug("send", reqs.map((r) => r.frame));
      conn.send(reqs.map((r) => r.frame));
    }

    _timeoutRequest(req) {
      if (this._pending.get(req.id) !== req) return;
      this._pending.delete(req.id);
      const i = this._outbox.indexOf(req);
      if (i >= 0) this._outbox.splice(i, 1);
      req.reject(new CometGateError("timeout", "no answer from the server within " + this.options.requestTimeout + " ms"));
    }

    _canSend() {
      return !!(this._conn && this._conn.helloSeen && this.state !== "closed");
    }

    _sendSub(conn, entry) {
      const frame = { op: "sub", ch: entry.channel };
      if (entry.cursor !== null && entry.cursor !== undefined && entry.cursor !== "") frame.cursor = entry.cursor;
      const req = this._newRequest("sub", frame, entry);
      entry.status = "sent";
      entry.reqId = req.id;
      this._transmit(conn, [req]);
    }

    _sendUnsub(conn, channel) {
      this._transmit(conn, [this._newRequest("unsub", { op: "unsub", ch: channel }, null)]);
    }

    _unsubscribe(sub) {
      if (!sub._active) return;
      sub._active = false;
      const entry = sub._entry;
      entry.subs.delete(sub);
      if (entry.subs.size > 0 || this._subs.get(entry.channel) !== entry) return;
      this._subs.delete(entry.channel);
      clearTimeout(entry.retryTimer);
      entry.retryTimer = null;
      // A pending entry was never sent (an SSE URL that still has it is
      // fixed at the hello); a retrying one is not subscribed on the server.
      if (this._canSend() && entry.status !== "pending" && entry.status !== "retrying") {
        this._sendUnsub(this._conn, entry.channel);
      }
    }

    // ---- connections ----

    _impl(name) {
      return this.options[name] || root[name];
    }

    _transportOrder() {
      const list = this._transports.slice();
      const i = this._preferred ? list.indexOf(this._preferred) : -1;
      if (i > 0) {
        list.splice(i, 1);
        list.unshift(this._preferred);
      }
      return list;
    }

    _tryTransport(order, index) {
      for (let i = index; i < order.length; i++) {
        const name = order[i];
        const Impl = name === "websocket" ? WebSocketTransport : SSETransport;
        if (!Impl.supported(this)) {
          this._debug(name, "is not available here");
          continue;
        }
        let conn;
        try {
          if (name === "sse") {
            const subs = [];
            for (const e of this._subs.values()) if (e.status === "pending") subs.push([e.channel, e.cursor]);
            conn = new SSETransport(this, subs);
          } else {
            conn = new WebSocketTransport(this);
          }
          conn.order = order;
          conn.index = i;
          this._conn = conn;
          this._setState("connecting", { transport: name });
          if (this._conn !== conn) return; // a state listener closed the client
          this._debug("connecting with", name, conn.url);
          conn.helloTimer = setTimeout(() => {
            this._onTransportClose(conn, { code: 1006, reason: "no hello within " + this.options.connectTimeout + " ms" });
          }, this.options.connectTimeout);
          conn.start();
          return;
        } catch (e) {
          this._debug(name, "failed to start:", e);
          if (conn) this._teardown(conn);
        }
      }
      this._scheduleReconnect({ code: 1006, reason: "no transport could connect" });
    }

    _teardown(conn) {
      if (this._conn === conn) this._conn = null;
      clearTimeout(conn.helloTimer);
      clearTimeout(conn.ackTimer);
      clearTimeout(conn.interruptTimer);
      clearInterval(conn.livenessTimer);
      conn.helloTimer = conn.ackTimer = conn.interruptTimer = conn.livenessTimer = null;
      conn.close();
      this.transport = null;
      this.sessionId = null;
      return conn.takeUndelivered();
    }

    _onTransportClose(conn, info) {
      if (conn !== this._conn) return;
      this._debug(conn.name, "closed:", info.code, info.reason);
      if (!conn.helloSeen && shouldReconnect(info)) {
        // Never got going: try the next transport.
        this._teardown(conn);
        this._tryTransport(conn.order, conn.index + 1);
        return;
      }
      this._connectionLost(conn, info);
    }

    _onTransportInterrupted(conn) {
      if (conn !== this._conn) return;
      this._debug(conn.name, "interrupted; the browser reconnects");
      clearInterval(conn.livenessTimer);
      conn.livenessTimer = null;
      conn.interruptTimer = setTimeout(() => {
        this._connectionLost(conn, { code: 1006, reason: "EventSource did not reconnect" });
      }, this.options.connectTimeout);
      this._setState("connecting", { transport: conn.name });
    }

    _onTransportResumed(conn) {
      if (conn !== this._conn) return;
      this._debug(conn.name, "resumed");
      clearTimeout(conn.interruptTimer);
      conn.interruptTimer = null;
      this._startLiveness(conn);
      this._setState("connected", { transport: conn.name, sessionId: conn.sid });
    }

    _onFramesRejected(conn, frames, status) {
      if (conn !== this._conn) return;
      for (const f of frames) {
        if (typeof f.id !== "number") continue;
        this._onReply(conn, { t: "err", id: f.id, code: status, error: "the server refused the request (HTTP " + status + ")" });
      }
    }

    _connectionLost(conn, info) {
      if (conn !== this._conn) return;
      const stable = conn.helloSeen && now() - conn.connectedAt >= STABLE_CONNECTION_MS;
      const undelivered = this._teardown(conn);
      this._sessionEnded(conn, undelivered);
      if (!shouldReconnect(info)) {
        this._finish(info);
        return;
      }
      if (stable) this._attempt = 0;
      this._scheduleReconnect(info);
    }

    // _sessionEnded settles what belonged to a session that is gone: requests
    // the server never saw are kept for the next session, requests it may
    // have applied are rejected, subscriptions will be sent again.
    _sessionEnded(conn, undelivered) {
      let requeued = false;
      for (const req of Array.from(this._pending.values())) {
        if (req.conn !== conn) continue;
        req.conn = null;
        if ((req.kind === "pub" || req.kind === "ping") && undelivered.has(req.id)) {
          this._outbox.push(req);
          requeued = true;
          continue;
        }
        this._pending.delete(req.id);
        clearTimeout(req.timer);
        req.reject(new CometGateError("disconnected", "the connection was lost before the server answered (the request may or may not have been applied)"));
      }
      if (requeued) this._outbox.sort((a, b) => a.id - b.id);
      for (const entry of this._subs.values()) {
        clearTimeout(entry.retryTimer);
        entry.retryTimer = null;
        entry.status = "pending";
        entry.reqId = 0;
        entry.dropUntilConfirmed = false;
      }
    }

    _scheduleReconnect(info) {
      const delay = backoffDelay(this._attempt++, this.options.minReconnectDelay, this.options.maxReconnectDelay);
      this._debug("reconnecting in", delay, "ms");
      this._setState("disconnected", { code: info.code, reason: info.reason, delay: delay });
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (this.state !== "closed" && !this._conn) this._tryTransport(this._transportOrder(), 0);
      }, delay);
    }

    _finish(info) {
      if (this._conn) {
        const conn = this._conn;
        this._teardown(conn);
      }
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      if (typeof root.removeEventListener === "function") root.removeEventListener("online", this._onOnline);
      const err = new CometGateError("closed", "the client is closed: " + (info.reason || info.code));
      for (const req of this._pending.values()) {
        clearTimeout(req.timer);
        req.reject(err);
      }
      this._pending.clear();
      this._outbox = [];
      for (const entry of this._subs.values()) {
        clearTimeout(entry.retryTimer);
        entry.retryTimer = null;
      }
      this._setState("closed", { code: info.code, reason: info.reason });
    }

    _setState(state, info) {
      if (this.state === state) return;
      this.state = state;
      this._debug("state", state, info || "");
      this._emit("state", state, info || {});
    }

    // ---- packets ----

    _onRaw(conn, text) {
      if (conn !== this._conn) return;
      const p = decodePacket(text);
      if (!p) {
        this._debug("ignoring a malformed packet:", text);
        return;
      }
      this._onPacket(conn, p);
    }

    _onPacket(conn, p) {
      conn.lastRecv = now();
      let newSession = false;
      if (p.t === "hello") {
        if (typeof p.sid !== "string" || p.sid === "") {
          this._debug("ignoring a hello without sid");
          return;
        }
        if (p.sid !== conn.sid) {
          newSession = true;
          if (conn.sid !== null) {
            // The EventSource reconnected by itself, into a new session.
            this._debug("new session after an automatic reconnect");
            this._sessionEnded(conn, conn.takeUndelivered());
            conn.resetSession();
          }
          conn.lastSeq = conn.ackedSeq = conn.unacked = 0;
        }
      }
      if (typeof p.seq === "number") {
        if (p.seq <= conn.lastSeq) {
          this._debug("dropping duplicate packet", p.seq);
          return;
        }
        if (conn.lastSeq && p.seq !== conn.lastSeq + 1) this._debug("packet seq jumped from", conn.lastSeq, "to", p.seq);
        conn.lastSeq = p.seq;
        this._scheduleAck(conn);
      }
      if (this.options.debug) this._debug("recv", p);
      switch (p.t) {
        case "hello":
          this._onHello(conn, p, newSession);
          break;
        case "ok":
        case "err":
          this._onReply(conn, p);
          break;
        case "msg":
          this._onMsg(p);
          break;
        case "gap":
          this._onGap(p);
          break;
        case "close":
          this._onClosePacket(conn, p);
          break;
        default:
          // A newer server: ignore what this client does not know.
          break;
      }
    }

    _onHello(conn, p, newSession) {
      if (!newSession) {
        // A resumed stream may say hello again.
        if (this.state !== "connected") this._onTransportResumed(conn);
        return;
      }
      clearTimeout(conn.helloTimer);
      conn.helloTimer = null;
      clearTimeout(conn.interruptTimer);
      conn.interruptTimer = null;
      conn.helloSeen = true;
      conn.sid = p.sid;
      conn.hb = typeof p.hb === "number" && p.hb > 0 ? p.hb : 25;
      conn.connectedAt = now();
      conn.setSession(p.sid);
      if (typeof p.v === "number" && p.v !== PROTOCOL_VERSION) this._debug("the server speaks protocol version", p.v);
      this.transport = conn.name;
      this.sessionId = p.sid;
      this._preferred = conn.name;
      this._syncSubscriptions(conn);
      const out = this._outbox;
      this._outbox = [];
      this._transmit(conn, out);
      this._startLiveness(conn);
      this._setState("connected", { transport: conn.name, sessionId: p.sid });
    }

    // _syncSubscriptions brings a new session in line with the client's
    // subscriptions: the /sse URL may already have subscribed some of them
    // (conn.initial), everything else is subscribed now.
    _syncSubscriptions(conn) {
      const initial = conn.initial || new Map();
      for (const ch of initial.keys()) {
        if (!this._subs.has(ch)) this._sendUnsub(conn, ch);
      }
      for (const entry of this._subs.values()) {
        if (entry.status !== "pending") continue;
        if (initial.has(entry.channel)) {
          // The server answers with ok/err carrying "ch". When the URL named
          // an older cursor (the EventSource reconnected by itself), that
          // subscription is replaced once the server has it (_onReply), and
          // what it replays meanwhile is ignored.
          entry.status = "initial";
          entry.dropUntilConfirmed = initial.get(entry.channel) !== cursorKey(entry.cursor);
          continue;
        }
        this._sendSub(conn, entry);
      }
    }

    _onReply(conn, p) {
      if (typeof p.id === "number") {
        const req = this._pending.get(p.id);
        if (!req) {
          this._debug("answer to an unknown request", p.id);
          return;
        }
        this._pending.delete(p.id);
        clearTimeout(req.timer);
        switch (req.kind) {
          case "sub":
            if (this._subs.get(req.entry.channel) === req.entry && req.entry.reqId === req.id) this._subAnswered(req.entry, p);
            break;
          case "unsub":
            if (p.t === "err" && p.code !== 404) this._debug("unsubscribe failed:", p.code, p.error);
            break;
          default:
            if (p.t === "ok") req.resolve(p);
            else req.reject(errorFromPacket(p));
        }
        return;
      }
      if (typeof p.ch === "string") {
        // The answer to a subscription in the /sse URL.
        const entry = this._subs.get(p.ch);
        if (!entry && p.t === "ok") {
          // Unsubscribed before the server had it: an unsub sent meanwhile
          // may have come too early.
          this._sendUnsub(conn, p.ch);
          return;
        }
        if (!entry || entry.status !== "initial") return;
        if (entry.dropUntilConfirmed) {
          if (p.t === "ok") this._sendUnsub(conn, entry.channel);
          this._sendSub(conn, entry);
          return;
        }
        this._subAnswered(entry, p);
      }
    }

    _subAnswered(entry, p) {
      if (p.t === "ok" || p.code === 409) {
        entry.status = "active";
        entry.retries = 0;
        entry.dropUntilConfirmed = false;
        for (const s of Array.from(entry.subs)) s._emit("subscribed");
        return;
      }
      const err = errorFromPacket(p);
      err.channel = entry.channel;
      entry.dropUntilConfirmed = false;
      if (RETRYABLE_SUB_CODES.indexOf(err.code) >= 0) {
        const delay = backoffDelay(entry.retries++, this.options.minReconnectDelay, this.options.maxReconnectDelay);
        entry.status = "retrying";
        err.retrying = true;
        err.retryIn = delay;
        entry.retryTimer = setTimeout(() => {
          entry.retryTimer = null;
          if (this._subs.get(entry.channel) !== entry || entry.status !== "retrying") return;
          entry.status = "pending";
          if (this._canSend()) this._sendSub(this._conn, entry);
        }, delay);
      } else {
        err.retrying = false;
        entry.status = "failed";
        this._subs.delete(entry.channel);
        for (const s of entry.subs) s._active = false;
      }
      for (const s of Array.from(entry.subs)) {
        if (!s._emit("error", err) && root.console) root.console.warn("cometgate: subscription " + JSON.stringify(entry.channel) + " failed:", err.code, err.message);
      }
    }

    _onMsg(p) {
      if (typeof p.ch !== "string") return;
      const key = typeof p.sub === "string" && p.sub !== "" ? p.sub : p.ch;
      const entry = this._subs.get(key);
      if (!entry) {
        this._debug("message for no subscription:", key);
        return;
      }
      if (entry.dropUntilConfirmed) return;
      const hasCursor = p.cur !== undefined && p.cur !== null && p.cur !== "";
      if (hasCursor) entry.cursor = p.cur;
      const payload = decodePayload(p);
      if (!payload) {
        this._debug("message without a payload this client understands", p);
        return;
      }
      const msg = {
        channel: p.ch,
        pattern: key,
        data: payload.data,
        kind: payload.kind,
        cursor: hasCursor ? p.cur : undefined,
        seq: p.seq,
      };
      for (const s of Array.from(entry.subs)) s._deliver(msg);
    }

    _onGap(p) {
      const entry = typeof p.ch === "string" ? this._subs.get(p.ch) : null;
      if (!entry || entry.dropUntilConfirmed) return;
      const info = { channel: p.ch, reason: typeof p.reason === "string" ? p.reason : "", oldest: p.oldest };
      for (const s of Array.from(entry.subs)) s._emit("gap", info);
    }

    _onClosePacket(conn, p) {
      const info = {
        code: typeof p.code === "number" ? p.code : 1000,
        reason: typeof p.reason === "string" ? p.reason : "",
        reconnect: p.reconnect,
      };
      this._debug("server closed the session:", info.code, info.reason);
      // Close the transport now: an EventSource would otherwise reconnect.
      this._connectionLost(conn, info);
    }

    // ---- acks and liveness ----

    _scheduleAck(conn) {
      conn.unacked++;
      if (conn.unacked >= this.options.ackEvery) {
        this._sendAck(conn);
        return;
      }
      if (!conn.ackTimer) {
        conn.ackTimer = setTimeout(() => {
          conn.ackTimer = null;
          this._sendAck(conn);
        }, this.options.ackInterval);
      }
    }

    _sendAck(conn) {
      if (conn !== this._conn || !conn.helloSeen || conn.lastSeq <= conn.ackedSeq) return;
      clearTimeout(conn.ackTimer);
      conn.ackTimer = null;
      conn.ackedSeq = conn.lastSeq;
      conn.unacked = 0;
      conn.send([{ op: "ack", seq: conn.lastSeq }]);
    }

    // Browsers do not show transport heartbeats (WebSocket pings, SSE
    // comments) to scripts, so after one silent heartbeat interval the client
    // pings, and gives the connection up when nothing at all arrives for
    // another interval (at least 10 s).
    _startLiveness(conn) {
      clearInterval(conn.livenessTimer);
      conn.lastRecv = now();
      conn.pingSentAt = 0;
      const hbMs = conn.hb * 1000;
      conn.livenessTimer = setInterval(() => this._checkLiveness(conn), Math.max(1000, hbMs / 2));
    }

    _checkLiveness(conn) {
      if (conn !== this._conn) return;
      const t = now();
      const hbMs = conn.hb * 1000;
      if (conn.pingSentAt) {
        if (conn.lastRecv >= conn.pingSentAt) {
          conn.pingSentAt = 0;
        } else {
          if (t - conn.pingSentAt > Math.max(hbMs, 10000)) this._connectionLost(conn, { code: 1006, reason: "heartbeat timeout" });
          return;
        }
      }
      if (t - conn.lastRecv >= hbMs) {
        conn.pingSentAt = t;
        this._transmit(conn, [this._newRequest("ping", { op: "ping" }, null)]);
      }
    }

    _debug() {
      if (this.options.debug && root.console) {
        root.console.debug.apply(root.console, ["[cometgate]"].concat(Array.prototype.slice.call(arguments)));
      }
    }
  }

  function noop() {}

  CometGate.Error = CometGateError;
  CometGate.Subscription = Subscription;
  CometGate.PROTOCOL_VERSION = PROTOCOL_VERSION;
  CometGate._decodePacket = decodePacket;
  CometGate._decodePayload = decodePayload;
  CometGate._encodeFrame = encodeFrame;
  CometGate._base64ToBytes = base64ToBytes;
  CometGate._bytesToBase64 = bytesToBase64;
  CometGate._backoffDelay = backoffDelay;
  CometGate._buildSSEURL = buildSSEURL;
  CometGate._webSocketURL = webSocketURL;
  CometGate._shouldReconnect = shouldReconnect;

  return CometGate;
});
