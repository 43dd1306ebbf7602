/*
 * cometgate.js: the browser client of the cometgate Comet gateway.
 *
 * It speaks wire protocol version 1 (see transports/PROTOCOL.md) over a
 * WebSocket or, when that does not work, an EventSource (SSE), XHR streaming
 * or long-polling, the last three with HTTP POSTs for upstream frames, and as
 * last resorts htmlfile (a hidden iframe that streams) and JSONP. Plain
 * ES2018, no dependencies, no build step. Loading
 * this file as a classic <script> defines window.CometGate; under CommonJS it
 * is also module.exports; cometgate.mjs is its ES module entry
 * (import { CometGate } from "/cometgate.mjs"), which evaluates this very
 * file, so this file must stay valid as a module too (no top-level "this",
 * no sloppy-mode code). Types: cometgate.d.ts and cometgate.d.mts. The API
 * reference is client.html.
 *
 * QUICK START
 *
 *   <script src="cometgate.js"></script>
 *   const cg = new CometGate({ url: location.origin });   // every transport, best first
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
 *                      client uses url + "/ws", "/sse", "/xhr_stream",
 *                      "/poll", "/htmlfile", "/jsonp", "/jsonp_send/{sid}"
 *                      and "/session/{sid}/send".
 *   transports         transports to try, in order (default
 *                      ["websocket", "sse", "xhr_stream", "poll",
 *                      "htmlfile", "jsonp"]; "auto" means the same; one
 *                      name, or a list of one, forces that transport).
 *                      htmlfile is used only when url is the page's own
 *                      origin (its iframe calls the page).
 *   debug              log protocol events with console.debug (default false).
 *   autoConnect        connect right away (default true); otherwise call
 *                      connect().
 *   minReconnectDelay  500 ms  } reconnect delay: exponential backoff with full
 *   maxReconnectDelay  30000 ms} jitter, uniform in [min, min(max, min*2^(n+1))]
 *                      for the n-th retry in a row.
 *   connectTimeout     10000 ms: how long a transport may take to deliver the
 *                      server's hello before the next transport is tried.
 *   bufferingTimeout   4000 ms: how long sse and xhr_stream may stay silent
 *                      once their response started before the client takes
 *                      the path for a buffering proxy and tries the next
 *                      transport; xhr_stream hands its session on (see
 *                      BEHAVIOUR). 0 leaves it to connectTimeout.
 *   requestTimeout     30000 ms: a publish or ping that has no answer by then
 *                      rejects with code "timeout" (0 disables).
 *   ackInterval        1000 ms } acknowledge the highest packet seq received
 *   ackEvery           100     } after ackInterval or after ackEvery packets.
 *   resumeWindow       5000 ms: how long xhr_stream and poll retry their
 *                      session after a network error before they give it up
 *                      and open a new one; the server's
 *                      session.disconnect_delay (5 s by default).
 *   token              the JWT the session acts with (see the gateway's
 *                      auth section): a string, or a function returning a
 *                      string or a Promise of one, called before every
 *                      connection attempt (the first one and each
 *                      reconnect; the transports tried in one attempt share
 *                      its token). null, undefined or "" means no token (an
 *                      anonymous session). The client adds token=<the token>
 *                      to every URL it requests from the gateway: /ws, /sse,
 *                      /xhr_stream, /poll, their /{sid} follow-ups and
 *                      POST /session/{sid}/send, whose requests the gateway
 *                      checks against the session's subject. The token
 *                      travels in URLs (WebSocket and EventSource cannot
 *                      set headers): use HTTPS and short-lived tokens.
 *                        token: () => fetch("/my-app/cometgate-token",
 *                          { credentials: "same-origin" }).then((r) => r.text())
 *                      In-band refresh: when token is a function and its
 *                      token is a JWT with "exp", the client calls it again
 *                      before that expiry (with a third of the remaining
 *                      lifetime left, at most a minute before) and sends the
 *                      new token over the session (refreshToken), which then
 *                      outlives the first token without reconnecting.
 *   WebSocket, EventSource, fetch
 *                      implementations to use instead of the globals (tests,
 *                      non-browser hosts).
 *
 * CometGate
 *   state              "disconnected" (not connected, maybe waiting to retry),
 *                      "connecting", "connected" or "closed" (final).
 *   transport          "websocket" | "sse" | "xhr_stream" | "poll" |
 *                      "htmlfile" | "jsonp" | null: the transport in use.
 *   sessionId          the server's session id, or null.
 *   on(event, fn)      add a listener; returns a function that removes it.
 *   off(event, fn)     remove a listener.
 *     "state" (state, info): info is {transport, sessionId} for "connected";
 *       {transport} for "connecting" (null while a token function's
 *       promise is pending);
 *       {code, reason, delay} for "disconnected" (delay = ms until the next
 *       attempt); {code, reason} for "closed".
 *   refreshToken(token) → Promise: sends a fresh token for the session's
 *     principal in-band ({"op":"refresh"}); resolves when the gateway took
 *     it (the session then has its grants and expiry; subscriptions they
 *     no longer allow end with an "error" event, code 403), rejects with
 *     the gateway's refusal. Later requests and reconnects use the token.
 *   subscribe(channel, onMessage?, {cursor, latest, last}?) → Subscription
 *       channel may be a pattern ("demo.ticker.*", "demo.>"). cursor resumes
 *       a channel with history after that message. latest: true starts
 *       with the last stored message of each matching channel, last: N
 *       (1 to 1000) with the last N messages, then live (on channels with
 *       history; elsewhere a gap says the state is not available); a
 *       cursor, once a message brought one, wins over both. Subscribing to
 *       a channel that is already subscribed shares the server
 *       subscription (and its cursor; the second one's options are
 *       ignored).
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
 *   - Transports are tried in order. Each falls back to the next when it
 *     fails to open (a refused handshake or request, a network error),
 *     closes before the server's hello, or brings no hello within
 *     connectTimeout (sse and xhr_stream: within bufferingTimeout once
 *     their response started). The transport that worked last is tried first on the
 *     next connection.
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
 *   - xhr_stream and poll are request-per-poll: the session outlives the
 *     requests that carry it. xhr_stream reads one long response
 *     (/xhr_stream, one packet per line) and opens the next one at
 *     /xhr_stream/{sid}?ack=N as soon as the server ends it (after its
 *     stream limit); poll asks /poll/{sid}?ack=N again as soon as a batch
 *     arrives. ack=N acknowledges the highest seq received with nothing
 *     missing before it, so the server sends again whatever a lost response
 *     carried, and the client drops the packets it already holds. The open
 *     URL subscribes the channels without a cursor; the others, and every
 *     later frame, go numbered with "n" in the POST body of the next
 *     request, or by POST /session/{sid}/send while a request is held: one
 *     upstream request at a time, retried with the same n. xhr_stream also
 *     sends an ack frame every ackEvery packets so a long stream frees the
 *     server's queue. On a network error, a timeout (no poll answer or
 *     stream data for two heartbeat intervals and 10 s) or a 5xx, the same
 *     request is retried with backoff (100 ms to 1 s) for resumeWindow:
 *     state "connecting", the session and its packets kept. A 404 (code
 *     4004: the session expired or ended) opens a new session that
 *     subscribes again from the cursors. A transport-level close 3003 ends
 *     only that request ("replaced by a newer request"): the client attaches
 *     again once, and a second 3003 in a row, with no packet between, means
 *     someone else polls the session, so the client leaves it to them and
 *     opens its own.
 *   - Buffering proxies: some proxies hold a streamed response until it
 *     ends, so a stream opens but brings nothing. When sse or xhr_stream
 *     got its response headers but no hello within bufferingTimeout, the
 *     client moves to the next transport at once. The response that opens
 *     an XHR stream names its session (header X-Cometgate-Session), so a
 *     request-per-poll transport next in line (poll, by default) attaches
 *     to that session (GET /poll/{sid}) and gets every packet it holds,
 *     hello included: nothing sent to it meanwhile is lost. (An SSE
 *     session ends with its stream; the next transport opens its own.)
 *   - htmlfile and jsonp are request-per-poll too, with a callback instead
 *     of a readable response: each request names a function of its own in
 *     window.__cometgate_cb (cb=__cometgate_cb.cN) that the response calls,
 *     per packet from a hidden iframe's streamed document (htmlfile) or
 *     with a batch from a script (jsonp). The gateway refuses them in-band
 *     (a close packet with the code a status would carry), which the
 *     client treats as the other transports treat the status. Upstream,
 *     htmlfile POSTs to /session/{sid}/send and jsonp loads
 *     /jsonp_send/{sid}?d=FRAMES scripts (batches cut at about 6,000
 *     URL characters). A browser neither ends nor reports an iframe
 *     document whose connection broke mid-stream, so htmlfile notices a
 *     broken stream by its silence (two heartbeat intervals and 10 s).
 *   - Every subscription remembers the cursor of its last message; after a
 *     reconnect each channel is subscribed again from that cursor, so
 *     channels with history resume without loss (or report a gap).
 *   - Reconnect on a close code 3000-3999, on any other drop, and when the
 *     connection is silent for two heartbeat intervals (the client pings
 *     after one silent interval: browsers hide transport-level heartbeats).
 *     A close code 4000-4999 is final: state "closed" with the reason,
 *     except 4401 with a token function (below).
 *   - Tokens: every connection attempt, including each reconnect, first
 *     calls options.token when it is a function, so the reconnect after the
 *     gateway closed a session with 3004 "token expired" gets a fresh token
 *     (nothing else is needed: 3xxx codes reconnect). A refused token (4401
 *     "invalid token" or "authentication required") reaches the client as
 *     an HTTP 401 with code 4401 on xhr_stream and poll, and as a close
 *     packet with 4401 on websocket and sse (the client asks the gateway to
 *     refuse those in-band, refusal=close, since a browser hides the
 *     status of a refused upgrade or event stream). With a token function
 *     it goes through the reconnect backoff like a dropped connection ("disconnected" with code 4401 and the
 *     gateway's reason, then the function is asked again), so a token that
 *     keeps being refused never makes the client retry in a hot loop; with
 *     a fixed token (or none) a 4401 is final. A token function that throws
 *     or rejects also waits for the backoff and is called again. A 403
 *     (code 4003: a request presented another subject's token) is final.
 *   - A refused open that says when to come back (the rate limits on new
 *     sessions, 429; a draining node, 503: the "delay" of the JSON body or
 *     of the callback's close packet, which the gateway sends as
 *     Retry-After too) goes to the backoff and waits at least that long,
 *     instead of trying the next transport, which would be refused the
 *     same.
 *   - Unknown packet types and unknown fields are ignored. Nothing from the
 *     server is ever evaluated.
 *
 * CometGate.TCPSocket: a byte stream to a TCP server through the gateway's
 *   TCP bridge (the server must list the target under bridge.targets).
 *     const sock = new CometGate.TCPSocket("redis", { url: location.origin });
 *     sock.on("open", () => sock.send("PING\r\n"));
 *     sock.on("data", (bytes) => console.log(new TextDecoder().decode(bytes)));
 *     sock.on("close", (info) => console.log(info.code, info.reason));
 *   new CometGate.TCPSocket(target, options)
 *     url          base URL of the gateway (default location.origin); the
 *                  socket opens a WebSocket to url + "/tcp/" + target.
 *     sockjs       optional: the prefix of a SockJS endpoint in tcp mode for
 *                  the same target (e.g. "/sockjs-redis"), used when the
 *                  WebSocket cannot be opened and window.SockJS (the
 *                  sockjs-client library) is loaded. Its messages are byte
 *                  strings (one character per byte).
 *     sockjsOptions  options for the SockJS constructor (e.g. transports).
 *     sockjsMaxBody  the largest send body the SockJS endpoint takes, in
 *                  bytes: 8 x the server's session.max_frame_bytes, and
 *                  at least 65536, the default. A larger value lets a
 *                  burst go in fewer requests.
 *     WebSocket, SockJS  implementations to use instead of the globals;
 *                  WebSocket: false goes straight to SockJS.
 *   readyState         "connecting" | "open" | "closed".
 *   transport          "websocket" | "sockjs" | null.
 *   send(data)         Uint8Array, ArrayBuffer, a view, or a string (sent
 *                      as UTF-8), of any size: a stream has no message
 *                      boundaries, so the socket splits writes (64 KiB per
 *                      WebSocket message, what every bridge target takes)
 *                      and paces a burst over SockJS so that no send body
 *                      exceeds sockjsMaxBody. Data sent while connecting
 *                      waits for the open. Returns false once closed.
 *   close()            closes the stream (the gateway closes the TCP side).
 *   events: "open" (), "data" (Uint8Array), "close" ({code, reason}):
 *     code 1000 "target closed the connection" when the server side closed;
 *     3520 "connection reset by target" when it reset the connection,
 *     3502 "target unreachable", 3503 "target busy", 4403 "target address
 *     not allowed", 4404 "unknown TCP target" (SockJS; a refused WebSocket
 *     shows as 1006), 1009 a message over the target's max_message_bytes,
 *     3000 when the node shuts down. There is no reconnect: a TCP stream
 *     does not resume, the page decides what to do.
 *
 * Pure helpers, exported for tests: CometGate._decodePacket(text),
 * _decodePayload(packet), _encodeFrame(frame), _base64ToBytes(string),
 * _bytesToBase64(bytes), _backoffDelay(attempt, min, max, random),
 * _buildSSEURL(url, [[channel, cursor]], maxLength),
 * _buildOpenURL(url, [[channel, cursor]], maxLength), _webSocketURL(base),
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
    token: null,
    WebSocket: null,
    EventSource: null,
    fetch: null,
  };

  const TRANSPORT_NAMES = ["websocket", "sse", "xhr_stream", "poll", "htmlfile", "jsonp"];
  // The /sse URL carries the initial subscriptions; channels that would make
  // it longer than this are subscribed by POST after the hello instead.
  const MAX_SSE_URL_LENGTH = 4000;
  // The /xhr_stream and /poll open URLs name at most this many channels: the
  // server refuses more than its subscription limit (128 by default) there.
  const MAX_OPEN_URL_CHANNELS = 64;
  // In-session retries of xhr_stream and poll: backoff bounds in ms.
  const RESUME_MIN_DELAY = 100;
  const RESUME_MAX_DELAY = 1000;
  // A held poll or a silent stream is given up after two heartbeat
  // intervals plus this margin (ms): the server answers a poll, or writes a
  // heartbeat line, within two intervals.
  const REQUEST_MARGIN_MS = 10000;
  // In-session attempts without new data before a session is given up.
  const MAX_RESUME_ATTEMPTS = 10;
  // A stream line (one packet) longer than this means a broken stream.
  const MAX_STREAM_LINE = 16 << 20;
  // The callback transports (htmlfile, jsonp) name a function of the page
  // that the gateway's responses call: one per request, in this global
  // object, so that a late response of a request given up calls nothing.
  const CALLBACKS = "__cometgate_cb";
  // The response header that names the session an XHR stream opened.
  const SESSION_HEADER = "X-Cometgate-Session";
  // A callback of a request given up stays (as a no-op) this long, for a
  // response already on its way.
  const CALLBACK_GRACE_MS = 60000;
  // /jsonp_send carries frames in its URL: a batch is cut before its
  // encoded frames pass this many characters (one frame may pass it).
  const MAX_JSONP_SEND = 6000;
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

  // endpointURL is base + path, with the query parts given (encoded
  // "name=value" strings; empty ones are skipped).
  function endpointURL(base, path, query) {
    return appendQuery(base.replace(/\/+$/, "") + path, query);
  }

  function appendQuery(url, parts) {
    const q = (parts || []).filter((part) => part !== "");
    if (q.length === 0) return url;
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + q.join("&");
  }

  // tokenParam is the query part that carries a token ("" without one):
  // WebSocket and EventSource cannot set an Authorization header, so every
  // transport presents the token the same way.
  // tokenExpiry is a JWT's "exp" in ms since the epoch, 0 when it has none
  // (or is not a JWT): only for scheduling a refresh, nothing is verified.
  function tokenExpiry(token) {
    try {
      const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const exp = JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).exp;
      return typeof exp === "number" && exp > 0 ? exp * 1000 : 0;
    } catch (e) {
      return 0;
    }
  }

  function tokenParam(token) {
    return token ? "token=" + encodeURIComponent(token) : "";
  }

  function wsScheme(url) {
    return url.replace(/^http(s?):/i, "ws$1:");
  }

  function webSocketURL(base, path) {
    return wsScheme(endpointURL(base, path || "/ws"));
  }

  // RESUME_CURSOR is the cursor of a subscription resumed after a break
  // without a cursor of its own (the gateway's ResumeCursor).
  const RESUME_CURSOR = "~";

  function cursorKey(cursor) {
    return cursor === null || cursor === undefined ? "" : String(cursor);
  }

  // buildSSEURL adds to url (the /sse URL, which may have a query already,
  // such as the token) one ch= (and cursor.CH=) per subscription. subs is a
  // list of [channel, cursor]. Subscriptions that would make the URL longer
  // than maxLength are left out. It returns {url, included}: included maps
  // each channel in the URL to its cursor ("" for none).
  function buildSSEURL(url, subs, maxLength) {
    const included = new Map();
    let sep = url.indexOf("?") >= 0 ? "&" : "?";
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

  // buildOpenURL adds to url (the URL that opens an xhr_stream or poll
  // session, maybe with a query already) one ch= per subscription. That URL
  // cannot carry cursors, so subscriptions with a cursor are left out (they
  // are subscribed by a frame after the hello), and so are those past
  // maxLength or MAX_OPEN_URL_CHANNELS. It returns {url, included} like
  // buildSSEURL; every included channel maps to "".
  function buildOpenURL(url, subs, maxLength) {
    const included = new Map();
    let sep = url.indexOf("?") >= 0 ? "&" : "?";
    for (const pair of subs) {
      if (included.size >= MAX_OPEN_URL_CHANNELS) break;
      if (cursorKey(pair[1]) !== "") continue;
      const part = "ch=" + encodeURIComponent(pair[0]);
      if (maxLength && url.length + 1 + part.length > maxLength) continue;
      url += sep + part;
      sep = "&";
      included.set(pair[0], "");
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

  // MAX_LAST is the most messages a subscription may ask for with last.
  const MAX_LAST = 1000;

  // checkStart validates subscribe's latest and last options.
  function checkStart(options) {
    const latest = options ? options.latest : undefined;
    const last = options ? options.last : undefined;
    if (latest !== undefined && latest !== null && typeof latest !== "boolean") throw new TypeError("CometGate: latest must be true or false");
    if (last !== undefined && last !== null && (typeof last !== "number" || !Number.isInteger(last) || last < 1 || last > MAX_LAST)) {
      throw new TypeError("CometGate: last must be an integer from 1 to " + MAX_LAST);
    }
    if (latest && last) throw new TypeError("CometGate: latest and last exclude each other");
    return { latest: latest === true, last: last || 0 };
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
  //   ackFrames ("all": acks go as ack frames; "count": only every ackEvery
  //   packets, the next request's URL carries the rest; "none": the next
  //   request's URL carries every ack), ownsLiveness and ownsRecovery (the
  //   transport times its requests out itself, and decides itself how long
  //   an interruption may last),
  //   start(), send(frames), setSession(sid), resetSession(),
  //   takeUndelivered() → Set of request ids never handed to the server,
  //   close().
  // It reports to the client with _onRaw(conn, text), _onDecoded(conn,
  // packet), _onTransportClose(conn, {code, reason}),
  // _onTransportInterrupted(conn), _onTransportResumed(conn) and
  // _onFramesRejected(conn, frames, status).

  class Connection {
    constructor(client, name) {
      this.client = client;
      this.name = name;
      this.initial = null;
      this.closed = false;
      this.ackFrames = "all";
      this.ownsLiveness = false;
      this.ownsRecovery = false;
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
      // refusal=close: a refused session is answered after the upgrade,
      // with a close packet and frame this page can read, rather than by
      // an HTTP status the browser hides (it would report 1006).
      this.url = wsScheme(client._url("/ws", ["refusal=close"]));
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
      // refusal=close, as for the WebSocket: a refused session is a
      // stream of one close packet this page can read.
      const built = buildSSEURL(client._url("/sse", ["refusal=close"]), subs, MAX_SSE_URL_LENGTH);
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
        if (this.closed) return;
        if (!this.helloSeen) {
          // The response started; the hello comes with it, unless a
          // buffering proxy holds the stream. The SSE session cannot be
          // handed on (it ends with its stream): the next transport opens
          // its own.
          this.bufferTimer = this.client._watchBuffering(this, null);
          return;
        }
        if (!this.interrupted) return;
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
      const url = this.client._url("/session/" + encodeURIComponent(this.sid) + "/send");
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
      clearTimeout(this.bufferTimer);
      this.retryTimer = this.bufferTimer = null;
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

  // Request-per-poll transports: "xhr_stream" reads one long response as it
  // grows (one packet per line; the server ends it after its stream limit
  // and the client opens the next one), "poll" gets one JSON array of
  // packets per request. The session outlives the requests that carry it
  // (PROTOCOL.md, "Transports and URLs"): every request after the first names
  // the session and acknowledges what arrived (ack=N), and the server
  // writes every packet not yet acknowledged, with the seq it had, before
  // what is new. So a response lost on the way costs nothing: the next
  // request gets the same packets again, and those this client already
  // holds are dropped. One downstream request is in flight at a time.
  // Upstream frames, numbered with "n", ride in the POST body of the next
  // downstream request or, while one is held, go by
  // POST /session/{sid}/send: one upstream request at a time, retried with
  // the same n (the server skips a frame whose n it has applied).
  class HTTPPollTransport extends Connection {
    constructor(client, name, path, subs) {
      super(client, name);
      this.path = path;
      this.streaming = false;
      const built = buildOpenURL(client._url(path), subs, MAX_SSE_URL_LENGTH);
      this.url = built.url;
      this.initial = built.included;
      this.ownsLiveness = true;
      this.ownsRecovery = true;
      // A downstream request may carry upstream frames in its body (poll,
      // xhr_stream); the callback transports (htmlfile, jsonp) are GETs
      // that name a callback and send frames on their own.
      this.carriesFrames = true;
      this.callback = false;
      // A session this transport attaches to instead of opening one: set
      // when the previous transport opened it and then delivered nothing
      // (a buffering proxy), so the session and its packets carry over.
      this.resumeSid = null;
      // Downstream.
      this.active = null; // the request in flight: {ctrl, timer, batch, progress, lines}
      this.retryTimer = null; // the next attempt after a failure
      this.failures = 0; // failed attempts since the last new data
      this.failingSince = 0; // first failure since the server last attached a request
      this.interrupted = false; // the client was told (state "connecting")
      this.replaced = 0; // 3003 closes in a row with no new packet between
      // Upstream.
      this.queue = []; // frames not yet numbered
      this.batch = null; // numbered frames on their way: {frames, sending, maybeApplied}
      this.gone = []; // frames the server answered 404 for: never applied
      this.n = 0; // upstream frame counter of the session
      this.upTimer = null;
      this.upFailures = 0;
      this.pumpScheduled = false;
    }

    static supported(client) {
      return typeof client._fetch === "function";
    }

    start() {
      this._request();
    }

    send(frames) {
      if (this.closed) return;
      for (const f of frames) {
        if (f.op === "ack") {
          if (this.ackFrames === "none") continue; // the next request's ack=N says it
          this.queue = this.queue.filter((q) => q.op !== "ack"); // only the newest matters
        }
        this.queue.push(f);
      }
      // Frames sent in the same tick go out together.
      if (!this.pumpScheduled) {
        this.pumpScheduled = true;
        Promise.resolve().then(() => {
          this.pumpScheduled = false;
          this._pump();
        });
      }
    }

    // adopt makes this transport attach to a session that the previous
    // one opened but could not deliver (see _watchBuffering): its first
    // request names the session, which sends every packet it holds, the
    // hello and the answers to the open URL's subscriptions included.
    adopt(carry) {
      this.openInitial = this.initial;
      this.resumeSid = carry.sid;
      this.initial = carry.initial;
    }

    takeUndelivered() {
      const ids = new Set();
      const add = (f) => {
        if (typeof f.id === "number") ids.add(f.id);
      };
      this.queue.forEach(add);
      this.gone.forEach(add);
      // A batch that no attempt may have reached the server with.
      if (this.batch && !this.batch.sending && !this.batch.maybeApplied) this.batch.frames.forEach(add);
      return ids;
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      clearTimeout(this.retryTimer);
      clearTimeout(this.upTimer);
      this.retryTimer = this.upTimer = null;
      const req = this.active;
      this.active = null;
      if (req) abortRequest(req);
    }

    // ---- downstream ----

    _request() {
      if (this.closed || this.active || this.retryTimer) return;
      // cleanup (set by _open) releases what the request holds besides
      // the fetch: an iframe or a script element, and its callback.
      const req = { ctrl: null, timer: null, batch: null, progress: false, lines: 0, cleanup: null, called: false, bufferTimer: null };
      let url = this.url;
      let body;
      const sid = this.sid || this.resumeSid;
      if (sid) {
        url = this.client._url(this.path + "/" + encodeURIComponent(sid), ["ack=" + this.lastSeq]);
        // The URL acknowledges everything received so far.
        this.ackedSeq = this.lastSeq;
        this.unacked = 0;
        if (this.carriesFrames) {
          req.batch = this._takeBatch();
          if (req.batch) body = JSON.stringify(req.batch.frames);
        }
      }
      this.active = req;
      // Before the hello the client's connectTimeout covers the request.
      if (this.helloSeen) this._armTimer(req);
      this._open(req, url, body);
    }

    // _open sends a downstream request: a fetch (poll, xhr_stream); the
    // callback transports load an iframe or a script instead.
    _open(req, url, body) {
      if (typeof root.AbortController === "function") req.ctrl = new root.AbortController();
      const init = { method: body === undefined ? "GET" : "POST", credentials: "same-origin", cache: "no-store" };
      if (body !== undefined) {
        // text/plain keeps a cross-origin POST a simple request (no preflight).
        init.headers = { "Content-Type": "text/plain;charset=UTF-8" };
        init.body = body;
      }
      if (req.ctrl) init.signal = req.ctrl.signal;
      this.client._debug(this.name, init.method, url, body || "");
      let p;
      try {
        p = this.client._fetch(url, init);
      } catch (e) {
        p = Promise.reject(e);
      }
      Promise.resolve(p).then(
        (res) => this._onResponse(req, res),
        (err) => this._failed(req, "network error: " + errText(err))
      );
    }

    // _armTimer (re)starts the request's timeout: a poll must be answered,
    // and a stream must show data, within two heartbeat intervals.
    _armTimer(req) {
      clearTimeout(req.timer);
      const ms = 2 * this.hb * 1000 + REQUEST_MARGIN_MS;
      req.timer = setTimeout(() => {
        req.timer = null;
        this._failed(req, "nothing from the server for " + ms + " ms");
      }, ms);
    }

    _finish(req) {
      clearTimeout(req.timer);
      req.timer = null;
      clearTimeout(req.bufferTimer);
      releaseRequest(req);
      if (this.active === req) this.active = null;
    }

    // _attached: the server attached the request to the session (a 2xx,
    // or the first call of a callback) and applied the frames it
    // carried. It returns false when the connection ended meanwhile.
    _attached(req) {
      this.failingSince = 0;
      if (req.batch) this._batchDone(req.batch);
      req.batch = null;
      if (this.interrupted) {
        this.interrupted = false;
        this.client._onTransportResumed(this);
      }
      return !this.closed;
    }

    _onResponse(req, res) {
      if (req !== this.active || this.closed) {
        discardBody(res);
        return;
      }
      const status = res.status;
      if (status < 200 || status >= 300) {
        readErrorBody(res).then((info) => this._refused(req, status, info));
        return;
      }
      // The server had the session and attached this request; it applied
      // the frames the request carried before answering.
      if (!this._attached(req)) return;
      if (this.streaming && !this.helloSeen) {
        // The stream started. A proxy that buffers it lets these headers
        // through and holds the hello: the session id in them lets the
        // next transport attach to this session instead of losing it.
        const sid = res.headers && typeof res.headers.get === "function" ? res.headers.get(SESSION_HEADER) : null;
        req.bufferTimer = this.client._watchBuffering(this, sid ? { sid: sid, initial: this.initial } : null);
      }
      if (this.streaming) this._readStream(req, res);
      else this._readPoll(req, res);
    }

    _readPoll(req, res) {
      Promise.resolve()
        .then(() => res.text())
        .then(
          (text) => {
            if (req !== this.active || this.closed) return;
            let packets = null;
            try {
              packets = JSON.parse(text);
            } catch (e) {
              // A response cut short: what it carried comes again.
            }
            if (!Array.isArray(packets)) {
              this._failed(req, "malformed poll response");
              return;
            }
            this._finish(req);
            // A batch, even an empty one (the heartbeat), is news from the session.
            this._progress(req);
            if (this._deliver(req, packets)) this._request();
          },
          (err) => this._failed(req, "network error: " + errText(err))
        );
    }

    async _readStream(req, res) {
      const body = res.body;
      if (!body || typeof body.getReader !== "function" || typeof root.TextDecoder !== "function") {
        this._finish(req);
        abortRequest(req);
        this.client._onTransportClose(this, { code: 1006, reason: "this browser cannot read a response while it streams" });
        return;
      }
      const reader = body.getReader();
      const decoder = new root.TextDecoder("utf-8");
      let buf = "";
      for (;;) {
        let r;
        try {
          r = await reader.read();
        } catch (e) {
          this._failed(req, "the stream broke: " + errText(e));
          return;
        }
        if (req !== this.active || this.closed) {
          cancelReader(reader);
          return;
        }
        if (r.done) break;
        buf += decoder.decode(r.value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!this._onLine(req, line)) {
            cancelReader(reader);
            return;
          }
        }
        if (buf.length > MAX_STREAM_LINE) {
          cancelReader(reader);
          this._failed(req, "a stream line longer than " + MAX_STREAM_LINE + " characters");
          return;
        }
        // Data restarts the silence timeout (after the hello, which gives
        // the heartbeat interval; before it, connectTimeout applies).
        if (this.helloSeen) this._armTimer(req);
      }
      // A partial last line is dropped: its packet was not acknowledged
      // and comes again.
      this._streamEnded(req);
    }

    // _streamEnded: the server ended the stream: its stream limit was
    // reached (recycling), or the request was cut short.
    _streamEnded(req) {
      const progressed = req.progress;
      this._finish(req);
      if (!this.helloSeen) {
        this.client._onTransportClose(this, { code: 1006, reason: "the stream ended before the hello" });
        return;
      }
      if (!progressed) {
        this._retryLater("the stream ended without new data");
        return;
      }
      this.client._debug(this.name, "stream ended; attaching the next one");
      this._request();
    }

    // _onLine takes one line of a stream; false means stop reading.
    _onLine(req, line) {
      req.lines++;
      const text = line.trim();
      if (text === "") {
        // The first line is the prelude (2 KiB of spaces); later, a heartbeat.
        if (req.lines > 1) this._progress(req);
        return true;
      }
      let p;
      try {
        p = JSON.parse(text);
      } catch (e) {
        this.client._debug("ignoring a malformed line:", text);
        return true;
      }
      return this._deliver(req, [p]);
    }

    // _progress: new data from the session; failures so far are forgiven.
    _progress(req) {
      req.progress = true;
      this.failures = 0;
    }

    // _deliver hands packets to the client in seq order, without the ones
    // it holds already. It returns false when the caller must stop: the
    // connection ended, or this request did (what follows is arranged).
    _deliver(req, packets) {
      for (const p of packets) {
        if (this.closed) return false;
        if (p === null || typeof p !== "object" || typeof p.seq !== "number") {
          if (p && p.t === "close") {
            this._onRequestClosed(req, p);
            return false;
          }
          this.client._onDecoded(this, p);
          continue;
        }
        if (p.seq <= this.lastSeq) {
          this.client._debug(this.name, "dropping packet", p.seq, "(already received)");
          continue;
        }
        if (p.seq !== this.lastSeq + 1) {
          // Something is missing before it: acknowledge what arrived and
          // ask again, so the server sends the rest in order.
          this._finish(req);
          abortRequest(req);
          this._retryLater("packet seq jumped from " + this.lastSeq + " to " + p.seq);
          return false;
        }
        this._progress(req);
        this.replaced = 0;
        if (typeof p.t !== "string") {
          this.lastSeq = p.seq; // consumed, so that it is acknowledged
          continue;
        }
        this.client._onDecoded(this, p);
      }
      return !this.closed;
    }

    // _onRequestClosed handles a transport-level close packet (no seq): it
    // ends this request, not the session.
    _onRequestClosed(req, p) {
      const code = typeof p.code === "number" ? p.code : 1006;
      const reason = typeof p.reason === "string" ? p.reason : "";
      this._finish(req);
      abortRequest(req);
      if (code !== 3003 && this.callback) {
        // The callback transports cannot read a status: the gateway
        // refuses them in-band, with the close code the status goes with.
        this._refusal(req, refusalStatus(code), { code: code, error: reason, delay: p.delay });
        return;
      }
      if (code === 3003) {
        // "replaced by a newer request". This client makes one request at a
        // time, so the newer one was not its own (a request repeated by
        // something on the way, or another page polling the session).
        // Attach again once; replaced again with nothing new between, leave
        // the session to the other poller and open a new one.
        if (++this.replaced < 2) {
          this.client._debug(this.name, "request replaced (3003); attaching again");
          this._request();
          return;
        }
        this.client._onTransportClose(this, { code: 3003, reason: "another request keeps taking over the session: " + reason });
        return;
      }
      this.client._onTransportClose(this, { code: code, reason: reason, reconnect: p.reconnect });
    }

    _refused(req, status, info) {
      if (req !== this.active || this.closed) return;
      this._refusal(req, status, info);
    }

    // _refusal handles a refused request: status is its HTTP status,
    // info the gateway's {error, code, delay}.
    _refusal(req, status, info) {
      const code = typeof info.code === "number" ? info.code : 0;
      const reason = (typeof info.error === "string" && info.error) || "HTTP " + status;
      const batch = req.batch;
      this._finish(req);
      if (!this.helloSeen && this.resumeSid && status === 404) {
        // The session handed on is gone already: open one.
        this.client._debug(this.name, "the session handed on is gone; opening one");
        this.resumeSid = null;
        this.initial = this.openInitial;
        this._request();
        return;
      }
      if (!this.helloSeen) {
        // The open request: the next transport, or the end when the
        // server gave a final code (4000-4999).
        this.client._onTransportClose(this, {
          code: code || 1006,
          reason: this.name + " refused: " + reason + " (HTTP " + status + ")",
          minDelay: retryDelay(info),
        });
        return;
      }
      if (status === 404) {
        // The session is gone (4004: it expired or ended); frames this
        // request carried were not applied. A new session resubscribes.
        if (batch) this._batchGone(batch);
        this.client._onTransportClose(this, { code: 3002, reason: "session not found: " + reason });
        return;
      }
      if (batch && (status === 400 || status === 413)) {
        // The frames were refused, not the session: send them no more.
        this._batchRejected(batch, status);
        if (!this.closed) this._request();
        return;
      }
      if (status === 408 || status === 429 || (status >= 500 && code !== 3000)) {
        if (batch) {
          batch.sending = false;
          if (status >= 500) batch.maybeApplied = true;
        }
        this._retryLater(reason + " (HTTP " + status + ")");
        return;
      }
      this.client._onTransportClose(this, { code: code || 1006, reason: reason + " (HTTP " + status + ")" });
    }

    _failed(req, why) {
      if (req !== this.active || this.closed) return;
      this._finish(req);
      abortRequest(req);
      if (req.batch) {
        // Whether the server got the frames is unknown: the next attempt
        // carries them again with the same n.
        req.batch.sending = false;
        req.batch.maybeApplied = true;
      }
      if (!this.helloSeen) {
        this.client._onTransportClose(this, { code: 1006, reason: this.name + ": " + why });
        return;
      }
      this._retryLater(why);
    }

    // _retryLater attaches again after a backoff delay, as long as the
    // server still keeps the session (resumeWindow after the first failure
    // since it last attached a request) and attempts without new data stay
    // few; then the session is given up and the client opens a new one.
    _retryLater(why) {
      const t = now();
      if (!this.failingSince) this.failingSince = t;
      this.failures++;
      if (t - this.failingSince >= this.client.options.resumeWindow || this.failures > MAX_RESUME_ATTEMPTS) {
        this.client._onTransportClose(this, { code: 1006, reason: why });
        return;
      }
      if (!this.interrupted) {
        this.interrupted = true;
        this.client._onTransportInterrupted(this);
        if (this.closed) return; // a state listener closed the client
      }
      const delay = backoffDelay(this.failures - 1, RESUME_MIN_DELAY, RESUME_MAX_DELAY);
      this.client._debug(this.name, why + "; attaching again in", delay, "ms");
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this._request();
      }, delay);
    }

    // ---- upstream ----

    // _numberQueue numbers the waiting frames as the next batch: all of
    // them, or as many as fit in maxBatchChars once URL-encoded (at least
    // one).
    _numberQueue() {
      let take = this.queue.length;
      if (this.maxBatchChars) {
        let size = 2;
        take = 0;
        for (const f of this.queue) {
          size += encodeURIComponent(JSON.stringify(f)).length + 16; // the comma and "n"
          if (take > 0 && size > this.maxBatchChars) break;
          take++;
        }
      }
      const frames = this.queue.slice(0, take).map((f) => Object.assign({}, f, { n: ++this.n }));
      this.queue = this.queue.slice(take);
      return { frames: frames, sending: false, maybeApplied: false };
    }

    // _takeBatch gives a downstream request about to go the frames waiting
    // to be sent, unless a POST is sending some.
    _takeBatch() {
      if (this.batch) {
        if (this.batch.sending) return null;
        clearTimeout(this.upTimer);
        this.upTimer = null;
      } else {
        if (this.queue.length === 0) return null;
        this.batch = this._numberQueue();
      }
      this.batch.sending = true;
      return this.batch;
    }

    // _pump sends waiting frames by POST /session/{sid}/send while a
    // downstream request is held; without one in flight, the next one
    // carries them (except on the callback transports, which always send
    // their own).
    _pump() {
      if (this.closed || !this.sid || this.upTimer || (!this.active && this.carriesFrames)) return;
      if (this.batch ? this.batch.sending : this.queue.length === 0) return;
      if (!this.batch) this.batch = this._numberQueue();
      this._post(this.batch);
    }

    _post(batch) {
      batch.sending = true;
      const url = this.client._url("/session/" + encodeURIComponent(this.sid) + "/send");
      let p;
      try {
        p = this.client._fetch(url, {
          method: "POST",
          headers: { "Content-Type": "text/plain;charset=UTF-8" },
          body: JSON.stringify(batch.frames),
          credentials: "same-origin",
          cache: "no-store",
        });
      } catch (e) {
        p = Promise.reject(e);
      }
      Promise.resolve(p).then(
        (res) => {
          discardBody(res);
          this._upAnswered(batch, res.status);
        },
        () => this._upFailed(batch)
      );
    }

    // _upAnswered takes the answer to an upstream request, as an HTTP
    // status.
    _upAnswered(batch, status) {
      if (this.closed || this.batch !== batch) return;
      if (status >= 200 && status < 300) {
        this._batchDone(batch);
        return;
      }
      batch.sending = false;
      if (status === 404) {
        this._batchGone(batch);
        this.client._onTransportClose(this, { code: 3002, reason: "session not found (HTTP 404)" });
      } else if (status === 408 || status === 429 || status >= 500) {
        if (status >= 500) batch.maybeApplied = true;
        this._upRetry();
      } else {
        this._batchRejected(batch, status);
      }
    }

    // _upFailed: an upstream request failed on the way; whether the
    // server applied it is unknown, so it goes again with the same n.
    _upFailed(batch) {
      if (this.closed || this.batch !== batch) return;
      batch.sending = false;
      batch.maybeApplied = true;
      this._upRetry();
    }

    _upRetry() {
      const delay = backoffDelay(this.upFailures++, 250, 5000);
      this.client._debug("POST failed, retrying in", delay, "ms");
      this.upTimer = setTimeout(() => {
        this.upTimer = null;
        this._pump();
      }, delay);
    }

    _batchDone(batch) {
      if (this.batch === batch) {
        this.batch = null;
        this.upFailures = 0;
      }
      this._pump();
    }

    _batchGone(batch) {
      if (this.batch === batch) this.batch = null;
      if (!batch.maybeApplied) this.gone = this.gone.concat(batch.frames);
    }

    _batchRejected(batch, status) {
      if (this.batch === batch) this.batch = null;
      this.client._onFramesRejected(this, batch.frames, status);
      this._pump();
    }
  }

  class XHRStreamTransport extends HTTPPollTransport {
    constructor(client, subs) {
      super(client, "xhr_stream", "/xhr_stream", subs);
      this.streaming = true;
      // A stream may last long: an ack frame every ackEvery packets lets
      // the server free what arrived; the next stream's URL acks the rest.
      this.ackFrames = "count";
    }

    static supported(client) {
      return typeof client._fetch === "function" && typeof root.TextDecoder === "function";
    }
  }

  class PollingTransport extends HTTPPollTransport {
    constructor(client, subs) {
      super(client, "poll", "/poll", subs);
      // Every batch is answered at once by the next poll and its ack=N.
      this.ackFrames = "none";
    }
  }

  // HTMLFileTransport (iframe streaming, the "forever frame") and
  // JSONPTransport (JSONP polling): the last resorts, for networks and
  // browsers where fetch cannot stream or reach the gateway. They are
  // HTTPPollTransport with another way of making a downstream request: a
  // hidden iframe whose document calls parent.CALLBACK(packet) once per
  // packet (p(null) is the heartbeat) and ends after the stream limit, or
  // a script whose response calls CALLBACK([packets]). Each request
  // names a callback of its own (registerCallback), so whatever a request
  // that was given up still runs calls nothing. A status cannot be read:
  // the gateway refuses in-band with a transport-level close packet
  // (_onRequestClosed). Upstream, htmlfile POSTs to /session/{sid}/send
  // (its page is on the gateway's origin anyway); jsonp loads
  // /jsonp_send/{sid}?cb=…&d=FRAMES scripts, one at a time.
  class HTMLFileTransport extends HTTPPollTransport {
    constructor(client, subs) {
      super(client, "htmlfile", "/htmlfile", subs);
      this.streaming = true;
      this.callback = true;
      this.carriesFrames = false;
      this.ackFrames = "count";
    }

    // The iframe's document calls its parent: only on the same origin.
    static supported(client) {
      return hasDocument() && typeof client._fetch === "function" && sameOrigin(client._base);
    }

    _open(req, url) {
      const doc = root.document;
      const cb = registerCallback((x) => this._onFrameCall(req, x));
      const frame = doc.createElement("iframe");
      frame.setAttribute("aria-hidden", "true");
      frame.tabIndex = -1;
      frame.title = "cometgate";
      frame.style.display = "none";
      frame.src = appendQuery(url, ["cb=" + cb.name]);
      // The document finished: the stream ended (or never started: an
      // error page calls nothing).
      frame.onload = () => {
        if (req === this.active && !this.closed) this._streamEnded(req);
      };
      req.cleanup = () => {
        frame.onload = null;
        if (frame.parentNode) frame.parentNode.removeChild(frame);
        cb.retire();
      };
      this.client._debug(this.name, "GET", frame.src);
      (doc.body || doc.documentElement).appendChild(frame);
    }

    _onFrameCall(req, x) {
      if (req !== this.active || this.closed) return;
      if (isRefusal(x)) {
        this._onRequestClosed(req, x);
        return;
      }
      if (!req.called) {
        req.called = true;
        if (!this._attached(req)) return;
      }
      if (x === null || x === undefined) {
        if (this.helloSeen) this._progress(req); // the heartbeat
      } else if (!this._deliver(req, [x])) {
        return;
      }
      if (this.helloSeen && req === this.active) this._armTimer(req);
    }
  }

  class JSONPTransport extends HTTPPollTransport {
    constructor(client, subs) {
      super(client, "jsonp", "/jsonp", subs);
      this.callback = true;
      this.carriesFrames = false;
      this.ackFrames = "none";
      this.maxBatchChars = MAX_JSONP_SEND;
    }

    static supported() {
      return hasDocument();
    }

    _open(req, url) {
      const cb = registerCallback((packets) => this._onScriptCall(req, packets));
      const remove = loadScript(appendQuery(url, ["cb=" + cb.name]), (ok) => {
        cb.retire();
        if (req !== this.active || this.closed) return;
        this._failed(req, ok ? "the JSONP response called nothing" : "JSONP request failed");
      });
      req.cleanup = () => {
        remove();
        cb.retire();
      };
    }

    _onScriptCall(req, packets) {
      if (req !== this.active || this.closed) return;
      req.called = true;
      if (!Array.isArray(packets)) {
        this._failed(req, "malformed JSONP response");
        return;
      }
      if (packets.length === 1 && isRefusal(packets[0])) {
        this._onRequestClosed(req, packets[0]);
        return;
      }
      if (!this._attached(req)) return;
      this._finish(req);
      // A batch, even an empty one (the heartbeat), is news from the session.
      this._progress(req);
      if (this._deliver(req, packets)) this._request();
    }

    // _post sends a batch by /jsonp_send, whose answer calls back with
    // {ok} or {ok: false, code, error}.
    _post(batch) {
      batch.sending = true;
      let answered = false;
      const cb = registerCallback((a) => {
        answered = true;
        this._upAnswered(batch, a && a.ok === true ? 204 : refusalStatus(a && a.code));
      });
      const url = this.client._url("/jsonp_send/" + encodeURIComponent(this.sid), [
        "cb=" + cb.name,
        "d=" + encodeURIComponent(JSON.stringify(batch.frames)),
      ]);
      loadScript(url, () => {
        cb.retire();
        if (!answered) this._upFailed(batch);
      });
    }
  }

  function hasDocument() {
    const doc = root.document;
    return !!(doc && typeof doc.createElement === "function" && (doc.body || doc.documentElement));
  }

  function sameOrigin(base) {
    const loc = root.location;
    if (!loc || !loc.origin || typeof root.URL !== "function") return false;
    try {
      return new root.URL(base).origin === loc.origin;
    } catch (e) {
      return false;
    }
  }

  let callbackSeq = 0;

  // registerCallback adds fn to the page's callback registry
  // (window[CALLBACKS]) and returns the name the gateway calls (cb=) and
  // retire(), which takes it out again. A retired callback stays a no-op
  // for CALLBACK_GRACE_MS: a response on its way then calls nothing
  // rather than failing with a ReferenceError.
  function registerCallback(fn) {
    let reg = root[CALLBACKS];
    if (!reg || typeof reg !== "object") {
      reg = {};
      root[CALLBACKS] = reg;
    }
    const key = "c" + ++callbackSeq;
    reg[key] = fn;
    return {
      name: CALLBACKS + "." + key,
      retire() {
        if (reg[key] !== fn) return;
        reg[key] = noop;
        setTimeout(() => {
          if (reg[key] === noop) delete reg[key];
        }, CALLBACK_GRACE_MS);
      },
    };
  }

  // loadScript loads url as a script; after it ran (or failed), done(ok)
  // is called once. It returns a function that removes the element.
  function loadScript(url, done) {
    const doc = root.document;
    const s = doc.createElement("script");
    s.async = true;
    s.src = url;
    let over = false;
    const finish = (ok) => {
      if (over) return;
      over = true;
      s.onload = s.onerror = null;
      if (s.parentNode) s.parentNode.removeChild(s);
      done(ok);
    };
    s.onload = () => finish(true);
    s.onerror = () => finish(false);
    (doc.head || doc.documentElement).appendChild(s);
    return () => {
      over = true;
      s.onload = s.onerror = null;
      if (s.parentNode) s.parentNode.removeChild(s);
    };
  }

  // isRefusal tells an in-band refusal of a callback transport: a
  // transport-level close packet (no seq) other than 3003, which only
  // ends the request.
  function isRefusal(p) {
    return !!p && typeof p === "object" && p.t === "close" && typeof p.seq !== "number" && p.code !== 3003;
  }

  // refusalStatus is the HTTP status a refusal's close code goes with
  // (the gateway answers the others with it).
  function refusalStatus(code) {
    switch (code) {
      case 4000:
        return 400;
      case 4001:
        return 413;
      case 4003:
        return 403;
      case 4004:
        return 404;
      case 4029:
        return 429;
      case 4401:
        return 401;
      case 3000:
        return 503;
      default:
        return typeof code === "number" && code >= 4000 ? 400 : 503;
    }
  }

  function releaseRequest(req) {
    if (!req.cleanup) return;
    const c = req.cleanup;
    req.cleanup = null;
    c();
  }

  function abortRequest(req) {
    clearTimeout(req.timer);
    req.timer = null;
    releaseRequest(req);
    if (!req.ctrl) return;
    try {
      req.ctrl.abort();
    } catch (e) {
      // already over
    }
  }

  function cancelReader(reader) {
    try {
      Promise.resolve(reader.cancel()).catch(noop);
    } catch (e) {
      // already released
    }
  }

  // discardBody releases a response body nobody reads.
  function discardBody(res) {
    try {
      if (res && res.body && typeof res.body.cancel === "function") Promise.resolve(res.body.cancel()).catch(noop);
    } catch (e) {
      // already used
    }
  }

  // retryDelay is the server's advice in a refusal's body or close
  // packet: come back after this many ms (0: none). The gateway draws it
  // with a jitter per answer and sends it as Retry-After too.
  function retryDelay(info) {
    return info && typeof info.delay === "number" && info.delay > 0 ? info.delay : 0;
  }

  // readErrorBody reads a refusal: the gateway answers {"error":…,"code":…}.
  function readErrorBody(res) {
    return Promise.resolve()
      .then(() => res.text())
      .then(
        (text) => {
          try {
            const v = JSON.parse(text);
            return v && typeof v === "object" ? v : {};
          } catch (e) {
            return {};
          }
        },
        () => ({})
      );
  }

  function errText(err) {
    return err && err.message ? err.message : String(err);
  }

  const TRANSPORTS = {
    websocket: WebSocketTransport,
    sse: SSETransport,
    xhr_stream: XHRStreamTransport,
    poll: PollingTransport,
    htmlfile: HTMLFileTransport,
    jsonp: JSONPTransport,
  };

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
      this._token = ""; // the token of the current connection attempt
      this._tokenWait = null; // set while options.token's promise is pending
      this._refreshTimer = null; // in-band token refresh (_scheduleTokenRefresh)

      this._onOnline = () => {
        if (this.state === "disconnected" && this._reconnectTimer) this.connect();
      };
      if (typeof root.addEventListener === "function") root.addEventListener("online", this._onOnline);

      if (o.autoConnect) {
        // Let the caller attach listeners first.
        Promise.resolve().then(() => {
          if (this.state === "disconnected" && !this._conn && !this._reconnectTimer && !this._tokenWait) this.connect();
        });
      }
    }

    // ---- public API ----

    connect() {
      if (this.state === "closed") throw new CometGateError("closed", "CometGate: the client is closed");
      if (this._conn || this._tokenWait) return this;
      if (this._reconnectTimer) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
      }
      this._startAttempt();
      return this;
    }

    close() {
      if (this.state === "closed") return;
      clearTimeout(this._refreshTimer);
      this._finish({ code: 1000, reason: "closed by the client" });
    }

    subscribe(channel, onMessage, options) {
      if (onMessage && typeof onMessage === "object" && options === undefined) {
        options = onMessage;
        onMessage = null;
      }
      checkChannel(channel);
      const start = checkStart(options);
      if (this.state === "closed") throw new CometGateError("closed", "CometGate: the client is closed");
      let entry = this._subs.get(channel);
      const isNew = !entry;
      if (isNew) {
        const cursor = options && options.cursor !== undefined && options.cursor !== null && options.cursor !== "" ? options.cursor : null;
        entry = { channel: channel, cursor: cursor, subs: new Set(), status: "pending", reqId: 0, retries: 0, retryTimer: null, dropUntilConfirmed: false };
        // Current state on subscribe: sent with every sub frame of this
        // subscription, reconnects included. The server starts from the
        // cursor once there is one (a message arrived), and otherwise from
        // the current state, which also covers a break without a cursor.
        if (start.latest) entry.latest = true;
        if (start.last) entry.last = start.last;
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

    // publish, publishText and publishBytes take an optional options
    // object: {id: "order-42"} gives the message an id (printable ASCII,
    // at most 64 bytes), so that publishing it again after a failure
    // (the promise rejected: it may or may not have gone out) delivers it
    // once.
    publish(channel, value, options) {
      return this._publish(channel, "data", value, options);
    }

    publishText(channel, text, options) {
      if (typeof text !== "string") return Promise.reject(new TypeError("CometGate: publishText needs a string"));
      return this._publish(channel, "text", text, options);
    }

    publishBytes(channel, bytes, options) {
      let b64;
      try {
        b64 = bytesToBase64(bytes);
      } catch (e) {
        return Promise.reject(e);
      }
      return this._publish(channel, "b64", b64, options);
    }

    ping() {
      const t0 = now();
      return this._request("ping", { op: "ping" }).then(() => now() - t0);
    }

    // ---- in-band token refresh ----

    refreshToken(token) {
      if (typeof token !== "string" || token === "") return Promise.reject(new TypeError("CometGate: refreshToken needs a token"));
      return this._request("refresh", { op: "refresh", token: token }).then((p) => {
        this._token = token;
        if (this._conn && this._conn.helloSeen) this._scheduleTokenRefresh(this._conn);
        return p;
      });
    }

    // _scheduleTokenRefresh arms the refresh of the current token on conn
    // (see options.token): only with a token function and a JWT "exp".
    _scheduleTokenRefresh(conn) {
      clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
      const exp = typeof this.options.token === "function" ? tokenExpiry(this._token) : 0;
      if (!exp) return;
      const left = exp - Date.now();
      this._refreshTimer = setTimeout(() => {
        this._refreshTimer = null;
        if (this._conn !== conn || this.state !== "connected") return;
        Promise.resolve()
          .then(() => this.options.token())
          .then((t) => (this._conn === conn ? this.refreshToken(t) : null))
          .catch((e) => this._debug("token refresh failed (the session ends when the token expires):", e));
      }, Math.max(0, left - Math.min(60000, left / 3)));
    }

    // ---- requests ----

    _publish(channel, field, value, options) {
      const id = options && options.id;
      try {
        checkChannel(channel);
        if (field === "data" && (value === undefined || typeof JSON.stringify(value) !== "string")) {
          throw new TypeError("CometGate: publish needs a JSON-serializable value");
        }
        if (id !== undefined && (typeof id !== "string" || !/^[\x21-\x7e]{1,64}$/.test(id))) {
          throw new TypeError("CometGate: a message id is 1 to 64 printable ASCII characters");
        }
      } catch (e) {
        return Promise.reject(e);
      }
      const frame = { op: "pub", ch: channel };
      frame[field] = value;
      if (id !== undefined) frame.mid = id;
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
      if (entry.latest) frame.latest = true;
      if (entry.last) frame.last = entry.last;
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

    // _url builds every URL this client requests from the gateway: base +
    // path, the query parts given, and the token of the current connection
    // attempt.
    _url(path, query) {
      return endpointURL(this._base, path, (query || []).concat(tokenParam(this._token)));
    }

    // _startAttempt begins a connection attempt: it gets the token
    // (options.token is called anew each time, so that an application can
    // hand out a fresh one after "token expired" or a refusal), then tries
    // the transports with it.
    _startAttempt() {
      const source = this.options.token;
      if (typeof source !== "function") {
        this._useToken(source);
        return;
      }
      let value;
      try {
        value = source();
      } catch (e) {
        this._tokenFailed(e);
        return;
      }
      if (!value || typeof value.then !== "function") {
        this._useToken(value);
        return;
      }
      const wait = {};
      this._tokenWait = wait;
      this._setState("connecting", { transport: null });
      Promise.resolve(value).then(
        (v) => {
          if (this._tokenWait !== wait) return; // closed meanwhile
          this._tokenWait = null;
          this._useToken(v);
        },
        (e) => {
          if (this._tokenWait !== wait) return;
          this._tokenWait = null;
          this._tokenFailed(e);
        }
      );
    }

    // _useToken tries the transports with token: a string, or null,
    // undefined or "" for none (an anonymous session).
    _useToken(token) {
      if (this.state === "closed") return;
      if (token !== null && token !== undefined && typeof token !== "string") {
        this._tokenFailed(new TypeError("options.token gave a " + typeof token + ", not a string"));
        return;
      }
      this._token = token || "";
      this._tryTransport(this._transportOrder(), 0);
    }

    _tokenFailed(err) {
      if (this.state === "closed") return;
      this._debug("no token:", err);
      // Through the backoff: a token service that fails is asked again later.
      this._scheduleReconnect({ code: 1006, reason: "options.token failed: " + errText(err) });
    }

    // _mayReconnect decides from a close code (see shouldReconnect). A
    // refused token (4401) is final unless options.token is a function: the
    // next attempt asks it again, after the backoff delay, so a token that
    // keeps being refused does not make the client hammer the gateway.
    _mayReconnect(info) {
      if (info && info.code === 4401) return typeof this.options.token === "function";
      return shouldReconnect(info);
    }

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

    // _tryTransport tries order[index] and the transports after it;
    // carry is a session the previous one opened and could not deliver
    // (_watchBuffering), for the first request-per-poll transport tried.
    _tryTransport(order, index, carry) {
      for (let i = index; i < order.length; i++) {
        const name = order[i];
        const Impl = TRANSPORTS[name];
        if (!Impl.supported(this)) {
          this._debug(name, "is not available here");
          continue;
        }
        let conn;
        try {
          // The subscriptions an open URL may carry (SSE, xhr_stream, poll).
          const subs = [];
          // Subscriptions that ask for the current state go by frame.
          for (const e of this._subs.values()) if (e.status === "pending" && !e.latest && !e.last) subs.push([e.channel, e.cursor]);
          conn = new Impl(this, subs);
          if (carry && typeof conn.adopt === "function") {
            this._debug(name, "attaches to session", carry.sid);
            conn.adopt(carry);
            carry = null;
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
      if (!conn.helloSeen && info.code !== 4401 && !(info.minDelay > 0) && shouldReconnect(info)) {
        // Never got going: try the next transport. (A refused token would
        // be refused by every transport, and a refusal that says when to
        // come back (a rate limit, a draining node) would be repeated by
        // every transport: those go to the backoff instead, which waits
        // at least the server's delay.)
        this._teardown(conn);
        this._tryTransport(conn.order, conn.index + 1, info.carry);
        return;
      }
      this._connectionLost(conn, info);
    }

    // _watchBuffering starts the buffering-proxy timer of a streaming
    // transport whose response started: no hello within bufferingTimeout
    // means something on the way holds the stream, so the next transport
    // is tried at once instead of after connectTimeout. carry ({sid,
    // initial}, or null) is the session the stream opened, which a
    // request-per-poll transport next in line attaches to, so that what
    // it was sent meanwhile is not lost. It returns the timer.
    _watchBuffering(conn, carry) {
      const ms = this.options.bufferingTimeout;
      if (!(ms > 0)) return null;
      return setTimeout(() => {
        if (conn !== this._conn || conn.helloSeen) return;
        this._onTransportClose(conn, {
          code: 1006,
          reason: conn.name + " connected but delivered nothing within " + ms + " ms (a buffering proxy?)",
          carry: carry,
        });
      }, ms);
    }

    _onTransportInterrupted(conn) {
      if (conn !== this._conn) return;
      this._debug(conn.name, "interrupted; the browser reconnects");
      clearInterval(conn.livenessTimer);
      conn.livenessTimer = null;
      if (!conn.ownsRecovery) {
        conn.interruptTimer = setTimeout(() => {
          this._connectionLost(conn, { code: 1006, reason: "EventSource did not reconnect" });
        }, this.options.connectTimeout);
      }
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
      if (!this._mayReconnect(info)) {
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
        // A subscription that had no cursor (a channel without history,
        // or nothing received yet) says so when it subscribes again:
        // the server answers with a gap, so a loss is never silent. One
        // that asked for the current state (latest, last) asks for it
        // again instead: from history it gets what is current now, and
        // on a channel without history the server answers with a gap.
        if (entry.status !== "pending" && cursorKey(entry.cursor) === "" && !(entry.latest || entry.last)) entry.cursor = RESUME_CURSOR;
        entry.status = "pending";
        entry.reqId = 0;
        entry.dropUntilConfirmed = false;
      }
    }

    _scheduleReconnect(info) {
      const delay = Math.max(backoffDelay(this._attempt++, this.options.minReconnectDelay, this.options.maxReconnectDelay),
        Math.min(info.minDelay || 0, this.options.maxReconnectDelay));
      this._debug("reconnecting in", delay, "ms");
      this._setState("disconnected", { code: info.code, reason: info.reason, delay: delay });
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (this.state !== "closed" && !this._conn && !this._tokenWait) this._startAttempt();
      }, delay);
    }

    _finish(info) {
      if (this._conn) {
        const conn = this._conn;
        this._teardown(conn);
      }
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._tokenWait = null;
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

    // _onDecoded takes a packet that a transport parsed itself (a poll
    // batch is one JSON array).
    _onDecoded(conn, p) {
      if (conn !== this._conn) return;
      if (p === null || typeof p !== "object" || Array.isArray(p) || typeof p.t !== "string") {
        this._debug("ignoring a malformed packet:", p);
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
      this._scheduleTokenRefresh(conn);
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
        if (entry && entry.status === "active" && p.t === "err") {
          // The server ended the subscription (a refreshed token no
          // longer grants it).
          this._subAnswered(entry, p);
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
        // The server's advice: wait at least this long (jittered per
        // session, so a draining node's clients do not return together).
        minDelay: retryDelay(p),
      };
      this._debug("server closed the session:", info.code, info.reason);
      // Close the transport now: an EventSource would otherwise reconnect.
      this._connectionLost(conn, info);
    }

    // ---- acks and liveness ----

    _scheduleAck(conn) {
      conn.unacked++;
      if (conn.ackFrames === "none") return;
      if (conn.unacked >= this.options.ackEvery) {
        this._sendAck(conn);
        return;
      }
      if (conn.ackFrames === "all" && !conn.ackTimer) {
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
      conn.livenessTimer = null;
      if (conn.ownsLiveness) return;
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

  // TCPSocket: a byte stream through the TCP bridge (see the header).
  //
  // Writes are split and paced so that the server takes each of them:
  //   - a WebSocket message carries TCP_WS_CHUNK bytes at most, the least
  //     bridge.targets[].max_message_bytes a server may set, so any send()
  //     fits whatever the target's limit;
  //   - a SockJS send body (sockjs-client puts every message queued while
  //     a send is in flight into the next body, as a JSON array of JSON
  //     strings) stays within sockjsMaxBody, counting what each byte
  //     costs there once quoted: TCPSocket hands sockjs-client no more
  //     than fits beside what it holds already, and waits for its sender
  //     otherwise.
  const TCP_WS_CHUNK = 65536;
  // The least send body a SockJS endpoint takes: 8 x session.max_frame_bytes,
  // and never less than this.
  const TCP_SOCKJS_MAX_BODY = 65536;
  // How often a write that waits for sockjs-client's sender looks again.
  const TCP_SOCKJS_RETRY_MS = 10;
  // Transports whose sender TCPSocket cannot see (the iframe-* ones send
  // from inside an iframe): one message of at most sockjsMaxBody / 8 per
  // TCP_SOCKJS_BLIND_MS, so that even a sender a few round trips behind
  // stays within the limit. Slower; the XHR, JSONP and websocket
  // transports are exact.
  const TCP_SOCKJS_BLIND_MS = 25;

  class TCPSocket extends Emitter {
    constructor(target, options) {
      super();
      if (typeof target !== "string" || target === "") throw new TypeError("TCPSocket needs a target name");
      const o = Object.assign({}, options);
      this.target = target;
      this.readyState = "connecting";
      this.transport = null;
      this._opts = o;
      this._maxBody = o.sockjsMaxBody > 0 ? Math.max(1024, Math.floor(o.sockjsMaxBody)) : TCP_SOCKJS_MAX_BODY;
      // Bytes not handed to the connection yet, oldest first; _outOff is
      // how much of the first is handed already.
      this._out = [];
      this._outOff = 0;
      this._timer = null; // a SockJS write waiting for room
      this._lastBlind = 0;
      this._sock = null;
      // WebSocket: false skips the WebSocket (straight to SockJS).
      this._WebSocket = o.WebSocket !== undefined ? o.WebSocket : root && root.WebSocket;
      this._SockJS = o.SockJS || (root && root.SockJS);
      if (this._WebSocket) {
        this._openWebSocket();
      } else {
        this._fallback({ code: 1006, reason: "no WebSocket" });
      }
    }

    _openWebSocket() {
      const ws = new this._WebSocket(webSocketURL(resolveBase(this._opts.url), "/tcp/" + encodeURIComponent(this.target)));
      ws.binaryType = "arraybuffer";
      this._sock = ws;
      this.transport = "websocket";
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this._opened();
      };
      ws.onmessage = (ev) => {
        const d = ev.data;
        this._emit("data", typeof d === "string" ? new TextEncoder().encode(d) : new Uint8Array(d));
      };
      ws.onclose = (ev) => {
        if (!opened && this.readyState === "connecting") {
          this._fallback({ code: ev.code, reason: ev.reason });
          return;
        }
        this._closed({ code: ev.code, reason: ev.reason });
      };
    }

    _fallback(info) {
      if (!this._opts.sockjs || !this._SockJS) {
        this._closed(info);
        return;
      }
      const sj = new this._SockJS(endpointURL(resolveBase(this._opts.url), this._opts.sockjs), null, this._opts.sockjsOptions);
      this._sock = sj;
      this.transport = "sockjs";
      sj.onopen = () => this._opened();
      sj.onmessage = (ev) => this._emit("data", byteStringToBytes(String(ev.data)));
      sj.onclose = (ev) => this._closed({ code: ev.code, reason: ev.reason });
    }

    _opened() {
      if (this.readyState !== "connecting") return;
      this.readyState = "open";
      this._emit("open");
      this._flush();
    }

    _closed(info) {
      if (this.readyState === "closed") return;
      this.readyState = "closed";
      this._out = [];
      this._outOff = 0;
      clearTimeout(this._timer);
      this._timer = null;
      this._emit("close", info);
    }

    send(data) {
      if (this.readyState === "closed") return false;
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : toUint8Array(data);
      if (!bytes) throw new TypeError("TCPSocket.send takes a string, an ArrayBuffer or a view");
      if (bytes.length === 0) return true;
      // A copy: the caller may reuse its buffer once send returns.
      this._out.push(bytes.slice());
      if (this.readyState === "open") this._flush();
      return true;
    }

    // _flush hands what is pending to the connection: all of it to a
    // WebSocket, in messages of TCP_WS_CHUNK bytes at most; to SockJS as
    // much as the send body has room for (see _sockjsRoom), the rest once
    // there is room again.
    _flush() {
      if (this.readyState !== "open" || this._timer !== null) return;
      const ws = this.transport === "websocket";
      while (this._out.length > 0) {
        const head = this._out[0];
        let n;
        if (ws) {
          n = Math.min(head.length - this._outOff, TCP_WS_CHUNK);
        } else {
          const room = this._sockjsRoom();
          n = room.bytes > 0 ? sockjsFit(head, this._outOff, room.bytes, room.factor) : 0;
          if (n === 0) {
            this._timer = setTimeout(() => {
              this._timer = null;
              this._flush();
            }, room.wait);
            return;
          }
        }
        const chunk = head.subarray(this._outOff, this._outOff + n);
        this._outOff += n;
        if (this._outOff === head.length) {
          this._out.shift();
          this._outOff = 0;
        }
        this._sock.send(ws ? chunk : bytesToByteString(chunk));
      }
    }

    // _sockjsRoom says how many bytes of send body the next message may
    // take (bytes: its quoted byte string, times factor), or when to look
    // again (wait, in ms) when there is none. sockjs-client's XHR and
    // JSONP senders (a BufferedSender: sendBuffer holds the quoted
    // messages of the next body) are read exactly; its websocket
    // transport sends each message as its own "[...]" frame.
    _sockjsRoom() {
      const max = this._maxBody - 8; // "[", "]", a comma, and the form's "d=" for JSONP
      const name = this._sock.transport;
      if (name === "websocket") return { bytes: max, factor: 1 };
      // A form field's value is percent-encoded: 3 bytes for each byte of
      // the quoted string at most.
      const factor = name === "jsonp-polling" ? 3 : 1;
      const t = this._sock._transport;
      if (t && Array.isArray(t.sendBuffer)) {
        let used = 0;
        for (const m of t.sendBuffer) used += (utf8Length(m) + 1) * factor;
        return { bytes: max - used, factor: factor, wait: TCP_SOCKJS_RETRY_MS };
      }
      const now = Date.now();
      if (now - this._lastBlind < TCP_SOCKJS_BLIND_MS) return { bytes: 0, wait: TCP_SOCKJS_BLIND_MS };
      this._lastBlind = now;
      return { bytes: Math.floor(this._maxBody / 8), factor: factor };
    }

    close() {
      if (this._sock) this._sock.close();
      this._closed({ code: 1000, reason: "closed by the page" });
    }
  }

  // sockjsFit is how many bytes of b from off on fit in room bytes of a
  // SockJS send body once sent as a byte string that sockjs-client quotes
  // (JSON.stringify, then \uXXXX for what it also escapes): 1 byte for
  // printable ASCII, 2 for \b \t \n \f \r \" \\ and for U+0080-U+00FF
  // (two in UTF-8), 6 for other controls (\u00XX); the quotes take 2. Each
  // counts factor times.
  function sockjsFit(b, off, room, factor) {
    let used = 2 * factor;
    let i = off;
    for (; i < b.length; i++) {
      const c = b[i];
      let cost = 1;
      if (c >= 0x80 || c === 0x22 || c === 0x5c || c === 8 || c === 9 || c === 10 || c === 12 || c === 13) cost = 2;
      else if (c < 0x20) cost = 6;
      used += cost * factor;
      if (used > room) break;
    }
    return i - off;
  }

  // utf8Length is the length of s in UTF-8.
  function utf8Length(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      n += c < 0x80 ? 1 : c < 0x800 ? 2 : 3;
    }
    return n;
  }

  // Byte strings: one character (U+0000 to U+00FF) per byte, the framing of
  // a SockJS endpoint in tcp mode.
  function bytesToByteString(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 8192) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    }
    return s;
  }

  function byteStringToBytes(s) {
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
    return out;
  }

  function noop() {}

  CometGate.Error = CometGateError;
  CometGate.Subscription = Subscription;
  CometGate.TCPSocket = TCPSocket;
  CometGate.PROTOCOL_VERSION = PROTOCOL_VERSION;
  CometGate._decodePacket = decodePacket;
  CometGate._decodePayload = decodePayload;
  CometGate._encodeFrame = encodeFrame;
  CometGate._base64ToBytes = base64ToBytes;
  CometGate._bytesToBase64 = bytesToBase64;
  CometGate._backoffDelay = backoffDelay;
  CometGate._buildSSEURL = buildSSEURL;
  CometGate._buildOpenURL = buildOpenURL;
  CometGate._webSocketURL = webSocketURL;
  CometGate._shouldReconnect = shouldReconnect;
  CometGate._bytesToByteString = bytesToByteString;
  CometGate._byteStringToBytes = byteStringToBytes;
  CometGate._sockjsFit = sockjsFit;

  return CometGate;
});
