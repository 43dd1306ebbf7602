// TypeScript declarations for cometgate.js, the browser client of the
// cometgate Comet gateway. Hand-written beside the source they describe;
// `go test -run TestTypeScript ./web` checks them with tsc --strict against
// the examples in web/examples, and checks that the wrong usages in
// web/examples/wrong.ts are refused.
//
// Three ways in, one declaration:
//   <script src="/cometgate.js">        the global CometGate (a script .ts file sees it)
//   require("cometgate")                module.exports is the CometGate class
//   import { CometGate } from "…/cometgate.mjs"   (types: cometgate.d.mts)
//
// The reference, with every option, event and code: /client.html on a
// gateway, or web/client.html.

export = CometGate;
export as namespace CometGate;

/** Events: on() returns a function that removes the listener. */
declare class Emitter<Events> {
  on<K extends keyof Events & string>(event: K, fn: Events[K]): () => void;
  off<K extends keyof Events & string>(event: K, fn: Events[K]): void;
}

/** A client of one gateway: one session at a time, over the first transport that works. */
declare class CometGate extends Emitter<CometGate.ClientEvents> {
  constructor(options?: CometGate.Options);

  /** The options as given, with the defaults filled in. */
  readonly options: Readonly<Required<Omit<CometGate.Options, "token" | "WebSocket" | "EventSource" | "fetch">>> &
    Pick<CometGate.Options, "token" | "WebSocket" | "EventSource" | "fetch">;
  /** "disconnected" (maybe waiting to retry), "connecting", "connected", or "closed" (final). */
  readonly state: CometGate.State;
  /** The transport in use, or null when not connected. */
  readonly transport: CometGate.TransportName | null;
  /** The server's session id, or null when not connected. */
  readonly sessionId: string | null;

  /**
   * Subscribes to a channel or a pattern ("demo.ticker.*", "demo.>").
   * Subscribing to a channel that is already subscribed shares the server
   * subscription (and its cursor).
   */
  subscribe(channel: string, onMessage?: ((msg: CometGate.Message) => void) | null, options?: CometGate.SubscribeOptions): CometGate.Subscription;
  subscribe(channel: string, options: CometGate.SubscribeOptions): CometGate.Subscription;

  /** Publishes a JSON value ("data"); resolves once the broker confirmed it. */
  publish(channel: string, value: CometGate.JSONValue, options?: CometGate.PublishOptions): Promise<CometGate.OkPacket>;
  /** Publishes a string as text ("text"). */
  publishText(channel: string, text: string, options?: CometGate.PublishOptions): Promise<CometGate.OkPacket>;
  /** Publishes bytes ("b64"). */
  publishBytes(channel: string, bytes: Uint8Array | ArrayBuffer | ArrayBufferView, options?: CometGate.PublishOptions): Promise<CometGate.OkPacket>;
  /** Round trip to the server in milliseconds. */
  ping(): Promise<number>;
  /** Connects now (also: retries now instead of waiting for the backoff). Throws a CometGate.Error once closed. */
  connect(): this;
  /** Closes for good: no more reconnects, state "closed", pending requests reject with code "closed". */
  close(): void;

  /** The wire protocol version this client speaks. */
  static readonly PROTOCOL_VERSION: number;
  // CometGate.Error, CometGate.Subscription and CometGate.TCPSocket are
  // the classes of the namespace below.
}

declare namespace CometGate {
  /** The transports, in the default order: the last two are tried only when the others failed. */
  type TransportName = "websocket" | "sse" | "xhr_stream" | "poll" | "htmlfile" | "jsonp";
  type State = "disconnected" | "connecting" | "connected" | "closed";

  type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };

  /** A token, or a function that gives one (called before every connection attempt). */
  type TokenSource = string | null | undefined | (() => string | null | undefined | PromiseLike<string | null | undefined>);

  interface Options {
    /** Base URL of the gateway (default location.origin). */
    url?: string;
    /**
     * Transports to try, in order (default: websocket, sse, xhr_stream,
     * poll, htmlfile, jsonp). "auto" stands for that list; a single name
     * forces one transport.
     */
    transports?: TransportName | "auto" | ReadonlyArray<TransportName | "auto">;
    /** Log protocol events with console.debug (default false). */
    debug?: boolean;
    /** Connect at once (default true); otherwise call connect(). */
    autoConnect?: boolean;
    /** Reconnect backoff bounds in ms (defaults 500 and 30000). */
    minReconnectDelay?: number;
    maxReconnectDelay?: number;
    /** How long a transport may take to bring the server's hello, in ms (default 10000). */
    connectTimeout?: number;
    /**
     * How long a streaming transport (sse, xhr_stream) that connected may
     * stay silent before the client takes it for a buffering proxy and
     * moves on, keeping the session where it can (default 4000 ms; 0
     * disables).
     */
    bufferingTimeout?: number;
    /** A publish or ping with no answer by then rejects with code "timeout" (default 30000 ms; 0 disables). */
    requestTimeout?: number;
    /** Acknowledge after this many ms (default 1000) or packets (default 100). */
    ackInterval?: number;
    ackEvery?: number;
    /** How long the request-per-poll transports retry their session after a failure (default 5000 ms). */
    resumeWindow?: number;
    /** The JWT the session acts with. */
    token?: TokenSource;
    /** Implementations to use instead of the globals. */
    WebSocket?: { new (url: string): WebSocket } | null;
    EventSource?: { new (url: string): EventSource } | null;
    fetch?: ((input: string, init?: RequestInit) => Promise<Response>) | null;
  }

  /**
   * Where a subscription starts. On channels with history, latest starts
   * with the last stored message of each matching channel and last with
   * the last N messages (1 to 1000), then live; a cursor wins over both.
   */
  type SubscribeOptions =
    | { cursor?: string | null; latest?: boolean; last?: undefined }
    | { cursor?: string | null; latest?: false; last?: number };

  interface PublishOptions {
    /** The message's id (1 to 64 printable ASCII characters): publishing again with it delivers once. */
    id?: string;
  }

  /** A delivered message. Shared by every listener of a subscription: read-only. */
  interface Message {
    /** The concrete channel. */
    readonly channel: string;
    /** The subscription it matched (equal to channel for plain subscriptions). */
    readonly pattern: string;
    readonly kind: "json" | "text" | "bytes";
    /** The payload: a JSON value, a string, or bytes, as kind says. */
    readonly data: JSONValue | Uint8Array;
    /** The message's cursor on channels with history. */
    readonly cursor: string | undefined;
    /** The packet's sequence number in the session. */
    readonly seq: number;
  }

  /** The server's answer to a publish. */
  interface OkPacket {
    readonly t: "ok";
    readonly id: number;
    readonly seq: number;
    readonly [field: string]: unknown;
  }

  interface GapInfo {
    readonly channel: string;
    readonly reason: string;
    /** The oldest cursor still available, when there is one. */
    readonly oldest?: string;
  }

  /** A close code and its reason: see the close codes in the reference. */
  interface CloseInfo {
    readonly code: number;
    readonly reason: string;
  }

  /** The "state" event's arguments, by state. */
  type StateEvent =
    | [state: "connecting", info: { readonly transport: TransportName | null }]
    | [state: "connected", info: { readonly transport: TransportName; readonly sessionId: string }]
    | [state: "disconnected", info: CloseInfo & { readonly delay: number }]
    | [state: "closed", info: CloseInfo];

  interface ClientEvents {
    state: (...args: StateEvent) => void;
  }

  interface SubscriptionEvents {
    message: (msg: Message) => void;
    /** The server confirmed the subscription (again after each reconnect). */
    subscribed: () => void;
    /** Messages were lost. */
    gap: (info: GapInfo) => void;
    /** The server refused the subscription. */
    error: (err: SubscriptionError) => void;
  }

  interface TCPSocketEvents {
    open: () => void;
    data: (bytes: Uint8Array) => void;
    close: (info: CloseInfo) => void;
  }

  /**
   * The server's numeric code (HTTP style: 400, 403, 404, 409, 413, 422,
   * 429, 500, 503) or the client's own: "disconnected" (the connection
   * dropped after the request was sent: it may or may not have been
   * applied), "timeout", "closed".
   */
  type ErrorCode = number | "disconnected" | "timeout" | "closed";

  /** A failed request: CometGate.Error. */
  class CometGateError extends globalThis.Error {
    constructor(code: ErrorCode, message: string);
    readonly name: "CometGateError";
    readonly code: ErrorCode;
  }
  const Error: typeof CometGateError;
  type Error = CometGateError;

  /** The error a subscription's "error" listeners get. */
  interface SubscriptionError extends CometGateError {
    readonly code: number;
    readonly channel: string;
    /** True for codes 500 and 503: the client subscribes again after retryIn ms. */
    readonly retrying: boolean;
    readonly retryIn?: number;
  }

  /** The application's handle on a subscription. */
  class Subscription extends Emitter<SubscriptionEvents> {
    private constructor();
    readonly client: CometGate;
    readonly channel: string;
    /** False after unsubscribe() or a final error. */
    readonly active: boolean;
    /** Confirmed by the server on the current connection. */
    readonly subscribed: boolean;
    /** The cursor of the last message received, or the one given to subscribe. */
    readonly cursor: string | null;
    unsubscribe(): void;
  }

  interface TCPSocketOptions {
    /** Base URL of the gateway (default location.origin). */
    url?: string;
    /** Prefix of a SockJS endpoint in tcp mode for the same target, used when the WebSocket cannot be opened. */
    sockjs?: string;
    /** Options for the SockJS constructor. */
    sockjsOptions?: object;
    /** The largest send body the SockJS endpoint takes, in bytes (default 65536). */
    sockjsMaxBody?: number;
    /** A WebSocket implementation; false goes straight to SockJS. */
    WebSocket?: { new (url: string): WebSocket } | false;
    SockJS?: { new (url: string, reserved?: null, options?: object): unknown };
  }

  /** A byte stream to a TCP server through the gateway's TCP bridge. */
  class TCPSocket extends Emitter<TCPSocketEvents> {
    constructor(target: string, options?: TCPSocketOptions);
    readonly target: string;
    readonly readyState: "connecting" | "open" | "closed";
    readonly transport: "websocket" | "sockjs" | null;
    /** Queues bytes (a string is sent as UTF-8); false once closed. */
    send(data: string | Uint8Array | ArrayBuffer | ArrayBufferView): boolean;
    close(): void;
  }
}
