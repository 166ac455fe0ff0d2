// Switchboard reliable-session client for browsers (and any runtime with a WebSocket).
//
// The reference client of `switchboard.reliable.v1` (docs/reliable.md), the JavaScript twin of
// the Rust one (backend-sdk/src/reliable.rs). Every gateway serves this file at GET /client.js:
//
//   import { connect } from "https://gateway.example/client.js";
//   const client = connect({ hub: "chat" });
//   client.onmessage = ({ seq, text, binary }) => console.log(seq, text ?? binary);
//   client.onstatechange = (state, detail) => console.log(state, detail);
//   client.send("hello");
//
// One ES module, no build step, no dependencies: it can be imported from the gateway, copied
// into an application, or loaded from a file (Node.js 22+, or 20 with --experimental-websocket).
//
// What it does, as the contract asks: one session kept across connections. It reconnects with
// capped, jittered exponential back-off, cycling over the gateway URLs; resumes with the session
// ID, resume token and the last gateway `seq` it delivered; hands each gateway message to the
// application exactly once and in order (a repeat is dropped, a gap drops the connection and
// resumes); acknowledges cumulatively (every `ackEvery` messages, or `ackDelayMs` after one
// arrived); keeps every message it sends until the gateway acknowledges it, and after a resume
// sends again, in order and before anything new, those the welcome says the gateway has not
// taken. A refused resume (close 4401) starts a new session: what was not acknowledged is
// renumbered from 1 and sent on it, and the application is told that gateway messages may have
// been lost. Closes from the gateway with 1000, 1002, 1003, 1007, 1008 or 1009 end the session;
// any other end of a connection (1006, 1012 drain, 1013, 4001 replaced, ...) is resumed.
//
// A connection this client gives up on (a gap, a bad envelope, no welcome in time) is never
// closed with a close frame, which would end the session: it is left to the gateway, which
// closes it with 4001 once the next connection resumes.

/** The WebSocket subprotocol of reliable sessions. */
export const PROTOCOL = "switchboard.reliable.v1";

/** Close code of a refused resume: the session is gone, a new one starts. */
export const RESUME_REFUSED = 4401;

/** Close codes from the gateway that end the session (anything else is resumed). */
const ENDING = new Set([1000, 1002, 1003, 1007, 1008, 1009]);

/** A connection that stayed open this long starts the back-off over. */
const STABLE_MS = 10000;

/** How long `close()` waits for the gateway's answer to its close frame. */
const CLOSE_ANSWER_MS = 5000;

const HUB_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Why a call on the client failed: `code` is `"closed"` (the client was closed, or its session
 * ended) or `"queue_full"` (`maxQueued` messages are waiting for the gateway's acknowledgement).
 */
export class ReliableError extends Error {
  /**
   * @param {"closed" | "queue_full"} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "ReliableError";
    /** @type {"closed" | "queue_full"} */
    this.code = code;
  }
}

/**
 * @typedef {object} Options
 * @property {string | string[]} [urls] Gateway base URLs (`ws://host:port`, `wss://…`;
 *   `http(s)://` is taken as `ws(s)://`), tried in turn. Default: the origin this module was
 *   loaded from, when that is a gateway (http or https).
 * @property {string} hub The hub, 1-64 of `[A-Za-z0-9._-]` (the path `/ws/{hub}`).
 * @property {Record<string, string> | (() => Record<string, string>)} [params] Extra query
 *   parameters for every connection (for example `{token}` for a JWT); a function is called
 *   before each attempt, so a token can be renewed.
 * @property {{initialMs?: number, maxMs?: number}} [backoff] Reconnect delays: the ceiling
 *   doubles from `initialMs` (default 250) to `maxMs` (default 10000) with each failed attempt,
 *   and the wait is drawn between half the ceiling and the ceiling. It starts over once a
 *   connection stayed open 10 s.
 * @property {number} [connectTimeoutMs] How long one attempt (handshake and welcome) may take
 *   (default 10000).
 * @property {number} [ackEvery] Acknowledge at the latest after this many messages (default
 *   64; more is taken as 64, the most the protocol allows).
 * @property {number} [ackDelayMs] Acknowledge within this long of a message arriving (default
 *   50; more is taken as 100, the most the protocol allows).
 * @property {number} [maxQueued] Messages sent and not yet acknowledged by the gateway
 *   (including those waiting for a connection) at most; `send` throws beyond (default 10000).
 * @property {typeof WebSocket} [WebSocket] The WebSocket class (default
 *   `globalThis.WebSocket`); tests pass their own.
 */

/**
 * What `onstatechange` is told, for every state.
 * @typedef {object} StateDetail
 * @property {string | null} session The session ID (null before the first welcome, and while
 *   a new session replaces a lost one).
 * @property {boolean} resumed `open`: the session went on from an earlier connection.
 * @property {string} url The gateway URL connected to (or about to be tried).
 * @property {boolean} lost `open`: this is a new session replacing one that could not be
 *   resumed (its gateway messages after the last delivered may be lost; the application's
 *   unacknowledged messages are sent again on the new one). False otherwise.
 * @property {string | null} previousSession `open` with `lost`: the session that was lost.
 * @property {number} attempt `connecting`: attempts since the last connection that opened (0
 *   for the first try after it, or the very first).
 * @property {number} delayMs `connecting`: how long until this attempt starts (0: now).
 * @property {number | null} code `connecting`: the close code that ended the previous
 *   connection (null if none); `closed`: the code that ended the session.
 * @property {string} reason The reason that came with `code` ("" if none).
 */

/**
 * A gateway message, handed to `onmessage` exactly once, in `seq` order. Exactly one of `text`
 * and `binary` is set.
 * @typedef {object} ReceivedMessage
 * @property {number} seq Its sequence number in the session (1, 2, 3…, across resumes).
 * @property {string} [text] A text message.
 * @property {Uint8Array} [binary] A binary message.
 */

/**
 * Counters, for monitoring and tests.
 * @typedef {object} Stats
 * @property {number} delivered Gateway messages handed to `onmessage`.
 * @property {number} duplicates Gateway messages received again (after a resume) and dropped.
 * @property {number} reconnects Connection attempts after the first.
 * @property {number} resumes Connections that resumed the session.
 * @property {number} resets Sessions lost (resume refused with 4401) and replaced.
 */

/**
 * Starts a reliable session: the client connects in the background (after the current task, so
 * handlers set right after this call see every event).
 * @param {Options} options
 * @returns {ReliableClient}
 * @throws {TypeError} on a bad hub, URL or option.
 */
export function connect(options) {
  return new ReliableClient(options);
}

/**
 * One reliable session across connections. Made by {@link connect}.
 *
 * States: `"connecting"` (reported again for each attempt, with its delay), `"open"` (a welcome
 * arrived; what `send` queued goes out), `"closed"` (for good: `close()`, or a close from the
 * gateway that ends the session).
 */
export class ReliableClient {
  /**
   * Called with each gateway message ({@link ReceivedMessage}), exactly once and in order. An
   * exception it throws is reported (`reportError`) and does not stop the client.
   * @type {((message: ReceivedMessage) => void) | null}
   */
  onmessage = null;

  /**
   * Called on each state change and each new connection attempt.
   * @type {((state: "connecting" | "open" | "closed", detail: StateDetail) => void) | null}
   */
  onstatechange = null;

  #urls;
  #hub;
  #params;
  #initialMs;
  #maxMs;
  #connectTimeoutMs;
  #ackEvery;
  #ackDelayMs;
  #maxQueued;
  #Impl;

  /** @type {"connecting" | "open" | "closed"} */
  #state = "connecting";
  /** @type {{id: string, token: string} | null} */
  #session = null;
  /** Last gateway seq delivered to the application. */
  #received = 0;
  /** Seq of the next client message. */
  #nextSeq = 1;
  /** Client messages the gateway has not acknowledged, in seq order: {seq, text?, binary?}. */
  #unacked = [];
  /** Index of the first live entry of #unacked (entries before it are acknowledged). */
  #head = 0;
  /** The current socket, if any; a socket given up on is detached and forgotten. */
  #ws = null;
  /** Whether #ws has had its welcome (messages go out only then). */
  #welcomed = false;
  /** When #ws had its welcome (ms). */
  #openedAt = 0;
  /** Index in #urls of the current (or next) attempt. */
  #urlIndex = 0;
  /** Failed attempts since the last stable connection. */
  #attempt = 0;
  #started = false;
  /** A session that could not be resumed, until the next one opens. */
  #lostSession = null;
  /** Gateway messages delivered and not yet acknowledged on this connection. */
  #unackedIn = 0;
  #ackTimer = null;
  #retryTimer = null;
  #connectTimer = null;
  #closeTimer = null;
  /** `close()` in progress: {promise, resolve, sent: whether the close frame went out}. */
  #closing = null;
  #stats = { delivered: 0, duplicates: 0, reconnects: 0, resumes: 0, resets: 0 };

  /** @param {Options} options */
  constructor(options) {
    const o = options ?? {};
    if (typeof o.hub !== "string" || !HUB_NAME.test(o.hub)) {
      throw new TypeError("hub: 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    this.#hub = o.hub;
    this.#urls = gatewayUrls(o.urls);
    if (o.params !== undefined && typeof o.params !== "function" && typeof o.params !== "object") {
      throw new TypeError("params: an object or a function returning one");
    }
    this.#params = o.params;
    const backoff = o.backoff ?? {};
    this.#initialMs = positive(backoff.initialMs ?? 250, "backoff.initialMs");
    this.#maxMs = Math.max(this.#initialMs, positive(backoff.maxMs ?? 10000, "backoff.maxMs"));
    this.#connectTimeoutMs = positive(o.connectTimeoutMs ?? 10000, "connectTimeoutMs");
    this.#ackEvery = Math.max(1, Math.min(64, Math.floor(positive(o.ackEvery ?? 64, "ackEvery"))));
    this.#ackDelayMs = Math.min(100, positive(o.ackDelayMs ?? 50, "ackDelayMs"));
    this.#maxQueued = Math.floor(positive(o.maxQueued ?? 10000, "maxQueued"));
    this.#Impl = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#Impl !== "function") {
      throw new TypeError("no WebSocket: pass one as the WebSocket option");
    }
    queueMicrotask(() => {
      if (this.#state !== "closed") this.#schedule(0, null, "");
    });
  }

  /** The state: `"connecting"`, `"open"` or `"closed"`. */
  get state() {
    return this.#state;
  }

  /** The session ID once a welcome arrived (it changes only when a session is lost), or null. */
  get session() {
    return this.#session ? this.#session.id : null;
  }

  /** Messages sent and not yet acknowledged by the gateway (kept to be sent again). */
  get unacked() {
    return this.#unacked.length - this.#head;
  }

  /** A copy of the counters ({@link Stats}). */
  get stats() {
    return { ...this.#stats };
  }

  /**
   * Sends a message: a string as text, bytes (a `Uint8Array`, any other `ArrayBufferView`, or an
   * `ArrayBuffer`, copied) as binary. It is numbered and kept until the gateway acknowledges it
   * (once a backend has it), goes out at once when the client is open and otherwise when it is
   * next, and is sent again after a resume if the gateway had not taken it. A message must fit
   * the gateway's message size limit as an envelope (binary grows by a third in base64): a
   * larger one ends the session (1009).
   * @param {string | ArrayBuffer | ArrayBufferView} data
   * @throws {ReliableError} `"queue_full"` when `maxQueued` messages are unacknowledged (nothing
   *   is queued; try again once `unacked` has gone down), `"closed"` once `close()` was called
   *   or the session ended.
   * @throws {TypeError} for any other type of data.
   */
  send(data) {
    if (this.#state === "closed" || this.#closing) {
      throw new ReliableError("closed", "the reliable client is closed");
    }
    let entry;
    if (typeof data === "string") {
      entry = { seq: 0, text: wellFormed(data) };
    } else if (data instanceof ArrayBuffer) {
      entry = { seq: 0, binary: toBase64(new Uint8Array(data)) };
    } else if (ArrayBuffer.isView(data)) {
      entry = { seq: 0, binary: toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)) };
    } else {
      throw new TypeError("send takes a string, an ArrayBuffer or an ArrayBufferView");
    }
    if (this.unacked >= this.#maxQueued) {
      throw new ReliableError("queue_full", `${this.#maxQueued} messages are waiting for the gateway`);
    }
    entry.seq = this.#nextSeq++;
    this.#unacked.push(entry);
    if (this.#welcomed) this.#write(envelope(entry));
  }

  /**
   * Ends the session for good: once the gateway has acknowledged everything sent (waiting at
   * most `timeoutMs`), sends a close frame (1000) and waits for the gateway's answer. Without an
   * open connection it ends at once, abandoning what was not acknowledged; a connection lost
   * while it waits ends it too. Sends throw from the call on.
   * @param {{timeoutMs?: number}} [options] `timeoutMs`: default 5000.
   * @returns {Promise<void>} Settles once the state is `"closed"`.
   */
  close({ timeoutMs = 5000 } = {}) {
    if (this.#state === "closed") return Promise.resolve();
    if (this.#closing) return this.#closing.promise;
    let resolve;
    const promise = new Promise((r) => { resolve = r; });
    this.#closing = { promise, resolve, sent: false };
    if (!this.#welcomed) {
      const ws = this.#ws;
      this.#forget();
      // Not welcomed: a close frame ends whatever the connection is; a handshake in progress is
      // aborted without one.
      if (ws) {
        try { ws.close(1000); } catch { /* already closing */ }
      }
      this.#finish(1000, "closed by the application");
    } else if (this.unacked === 0) {
      this.#closeNow();
    } else {
      this.#closeTimer = setTimeout(() => this.#closeNow(), timeoutMs);
    }
    return promise;
  }

  /**
   * If the client is waiting out a back-off, tries at once (for example on the browser's
   * `online` event). Does nothing otherwise.
   */
  retryNow() {
    if (this.#retryTimer === null) return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#open();
  }

  // --- connections -------------------------------------------------------------------------

  /** Announces the next attempt and starts it after `delayMs`. */
  #schedule(delayMs, code, reason) {
    this.#state = "connecting";
    this.#emit("connecting", {
      url: this.#urls[this.#urlIndex],
      attempt: this.#attempt,
      delayMs,
      code,
      reason,
    });
    if (this.#state === "closed") return;
    if (delayMs === 0) {
      this.#open();
    } else {
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = null;
        this.#open();
      }, delayMs);
    }
  }

  #open() {
    if (this.#started) this.#stats.reconnects += 1;
    this.#started = true;
    const base = this.#urls[this.#urlIndex];
    const query = new URLSearchParams();
    let params;
    try {
      params = typeof this.#params === "function" ? this.#params() : this.#params;
    } catch (e) {
      report(e);
    }
    for (const [k, v] of Object.entries(params ?? {})) query.set(k, String(v));
    if (this.#session) {
      query.set("session", this.#session.id);
      query.set("resume_token", this.#session.token);
      query.set("ack", String(this.#received));
    }
    const q = query.toString();
    const target = `${base}/ws/${this.#hub}${q ? `?${q}` : ""}`;
    let ws;
    try {
      ws = new this.#Impl(target, PROTOCOL);
    } catch (e) {
      report(e);
      this.#failed(null, "");
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.#welcomed = false;
    this.#connectTimer = setTimeout(() => {
      this.#connectTimer = null;
      if (this.#ws === ws) this.#drop(null, "no welcome in time");
    }, this.#connectTimeoutMs);
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      // A connect hook may pick another subprotocol: that is a plain session, not ours.
      if (ws.protocol !== PROTOCOL) {
        this.#forget();
        try { ws.close(1000); } catch { /* already closing */ }
        this.#failed(null, `the gateway chose subprotocol "${ws.protocol}"`);
      }
    };
    ws.onmessage = (e) => {
      if (this.#ws === ws) this.#frame(e.data);
    };
    ws.onerror = () => {};
    ws.onclose = (e) => {
      if (this.#ws === ws) this.#closed(e.code, e.reason ?? "");
    };
  }

  /** One frame from the gateway. */
  #frame(data) {
    // Reliable sessions carry text envelopes only; anything else is skipped.
    if (typeof data !== "string") return;
    let env;
    try {
      env = JSON.parse(data);
    } catch {
      this.#drop(null, "invalid envelope");
      return;
    }
    if (env === null || typeof env !== "object") {
      this.#drop(null, "invalid envelope");
    } else if (!this.#welcomed) {
      if (env.type === "welcome") this.#welcome(env);
      else this.#drop(null, "the first frame was not a welcome");
    } else if (env.type === "message") {
      this.#deliver(env);
    } else if (env.type === "ack") {
      if (isSeq(env.seq)) this.#trim(env.seq);
    }
    // Other types (and a second welcome) are for later versions: ignored.
  }

  #welcome(env) {
    const { session, resume_token: token, ack } = env;
    if (typeof session !== "string" || session === "" || typeof token !== "string"
        || !(ack === 0 || isSeq(ack))) {
      this.#drop(null, "invalid welcome");
      return;
    }
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const resumed = env.resumed === true;
    if (this.#session && this.#session.id !== session) {
      // A new session where a resume was asked for: as good as refused.
      this.#reset();
    }
    if (resumed) this.#stats.resumes += 1;
    this.#session = { id: session, token };
    this.#openedAt = Date.now();
    this.#unackedIn = 0;
    // What the gateway has not taken goes again, in order, before anything new: before the
    // application hears of the connection (and may send).
    this.#trim(ack);
    for (let i = this.#head; i < this.#unacked.length; i += 1) {
      if (!this.#write(envelope(this.#unacked[i]))) return;
    }
    this.#welcomed = true;
    this.#state = "open";
    const lost = this.#lostSession;
    this.#lostSession = null;
    this.#emit("open", {
      url: this.#urls[this.#urlIndex],
      resumed,
      lost: lost !== null,
      previousSession: lost,
    });
  }

  #deliver(env) {
    const { seq } = env;
    if (!isSeq(seq)) {
      this.#drop(null, "invalid message seq");
      return;
    }
    if (seq <= this.#received) {
      this.#stats.duplicates += 1;
      return;
    }
    if (seq !== this.#received + 1) {
      // A gap breaks the contract: resume from what arrived.
      this.#drop(null, "sequence gap");
      return;
    }
    let message;
    if (typeof env.text === "string") {
      message = { seq, text: env.text };
    } else if (typeof env.binary === "string") {
      try {
        message = { seq, binary: fromBase64(env.binary) };
      } catch {
        this.#drop(null, "binary is not base64");
        return;
      }
    } else {
      this.#drop(null, "a message without text or binary");
      return;
    }
    this.#received = seq;
    this.#stats.delivered += 1;
    const ws = this.#ws;
    if (this.onmessage) {
      try {
        this.onmessage(message);
      } catch (e) {
        report(e);
      }
    }
    if (this.#ws !== ws || !this.#welcomed) return;
    this.#unackedIn += 1;
    if (this.#unackedIn >= this.#ackEvery) {
      this.#ack();
    } else if (this.#ackTimer === null) {
      this.#ackTimer = setTimeout(() => {
        this.#ackTimer = null;
        this.#ack();
      }, this.#ackDelayMs);
    }
  }

  /** Acknowledges every gateway message delivered so far. */
  #ack() {
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    if (this.#unackedIn === 0 || !this.#welcomed) return;
    this.#unackedIn = 0;
    this.#write(JSON.stringify({ type: "ack", seq: this.#received }));
  }

  /** The gateway has every client message up to `seq`. */
  #trim(seq) {
    while (this.#head < this.#unacked.length && this.#unacked[this.#head].seq <= seq) {
      this.#unacked[this.#head] = undefined;
      this.#head += 1;
    }
    if (this.#head > 1024 && this.#head * 2 > this.#unacked.length) {
      this.#unacked = this.#unacked.slice(this.#head);
      this.#head = 0;
    }
    if (this.#closing && !this.#closing.sent && this.#welcomed && this.unacked === 0) {
      this.#closeNow();
    }
  }

  /** Writes a frame; false if the socket refused it (the connection is then dropped). */
  #write(frame) {
    try {
      this.#ws.send(frame);
      return true;
    } catch {
      // Kept in #unacked: it goes again after the resume.
      this.#drop(null, "the socket refused a frame");
      return false;
    }
  }

  /** The current socket closed. */
  #closed(code, reason) {
    const welcomed = this.#welcomed;
    this.#forget();
    if (this.#closing) {
      this.#finish(code, reason);
    } else if (code === RESUME_REFUSED && this.#session) {
      this.#reset();
      this.#schedule(0, code, reason);
    } else if (!welcomed) {
      this.#failed(code, reason);
    } else if (ENDING.has(code)) {
      this.#finish(code, reason);
    } else {
      this.#lost(code, reason);
    }
  }

  /** Gives up on the current socket without a close frame (which would end the session). */
  #drop(code, reason) {
    const ws = this.#ws;
    const welcomed = this.#welcomed;
    this.#forget();
    // A handshake still in progress is aborted (no close frame exists yet); an open connection
    // is left to the gateway, which replaces it with the next one (4001).
    if (ws && ws.readyState === 0) {
      try { ws.close(); } catch { /* already closing */ }
    }
    if (this.#closing) this.#finish(1006, reason);
    else if (welcomed) this.#lost(code, reason);
    else this.#failed(code, reason);
  }

  /** A welcomed connection ended without ending the session: resume. */
  #lost(code, reason) {
    if (Date.now() - this.#openedAt >= STABLE_MS) this.#attempt = 0;
    this.#failed(code, reason);
  }

  /** An attempt failed or a connection was lost: the next URL, after a back-off. */
  #failed(code, reason) {
    this.#attempt += 1;
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    const ceiling = Math.min(this.#maxMs, this.#initialMs * 2 ** Math.min(this.#attempt - 1, 30));
    const delay = Math.max(1, Math.round(ceiling / 2 + Math.random() * (ceiling / 2)));
    this.#schedule(delay, code, reason);
  }

  /** The session cannot be resumed: the next connection starts a new one. */
  #reset() {
    if (!this.#session) return;
    this.#lostSession = this.#session.id;
    this.#session = null;
    this.#stats.resets += 1;
    this.#received = 0;
    // The new session numbers from 1; what the gateway never acknowledged goes again, in order.
    this.#unacked = this.#unacked.slice(this.#head);
    this.#head = 0;
    this.#nextSeq = 1;
    for (const entry of this.#unacked) entry.seq = this.#nextSeq++;
  }

  /** Sends the last ack and the close frame, and waits for the gateway's answer. */
  #closeNow() {
    clearTimeout(this.#closeTimer);
    this.#closeTimer = null;
    const ws = this.#ws;
    if (!ws || this.#closing.sent) return;
    this.#closing.sent = true;
    this.#ack();
    try { ws.close(1000); } catch { /* already closing */ }
    this.#closeTimer = setTimeout(() => {
      this.#closeTimer = null;
      if (this.#ws === ws) {
        this.#forget();
        this.#finish(1000, "");
      }
    }, CLOSE_ANSWER_MS);
  }

  /** Detaches the current socket: its later events are ignored. */
  #forget() {
    const ws = this.#ws;
    if (ws) {
      // No-op handlers rather than none: a browser may collect a listener-less open socket,
      // and closing it then sends a close frame.
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = () => {};
    }
    this.#ws = null;
    this.#welcomed = false;
    this.#unackedIn = 0;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
  }

  /** The client is closed for good. */
  #finish(code, reason) {
    if (this.#state === "closed") return;
    this.#forget();
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    clearTimeout(this.#closeTimer);
    this.#closeTimer = null;
    this.#state = "closed";
    this.#emit("closed", { url: this.#urls[this.#urlIndex], code, reason });
    const closing = this.#closing;
    if (closing) closing.resolve();
    else this.#closing = { promise: Promise.resolve(), resolve() {}, sent: true };
  }

  #emit(state, detail) {
    if (!this.onstatechange) return;
    const full = {
      session: this.session,
      resumed: false,
      url: "",
      lost: false,
      previousSession: null,
      attempt: 0,
      delayMs: 0,
      code: null,
      reason: "",
      ...detail,
    };
    try {
      this.onstatechange(state, full);
    } catch (e) {
      report(e);
    }
  }
}

// --- helpers -----------------------------------------------------------------------------------

function gatewayUrls(urls) {
  let list = typeof urls === "string" ? [urls] : urls;
  if (list === undefined) {
    const here = new URL(import.meta.url);
    if (here.protocol !== "http:" && here.protocol !== "https:") {
      throw new TypeError("urls: no gateway to default to (this module was not loaded from one)");
    }
    list = [here.origin];
  }
  if (!Array.isArray(list) || list.length === 0) {
    throw new TypeError("urls: one gateway URL or more");
  }
  return list.map((raw) => {
    let u;
    try {
      u = new URL(String(raw));
    } catch {
      throw new TypeError(`urls: not a URL: ${raw}`);
    }
    const scheme = { "ws:": "ws:", "wss:": "wss:", "http:": "ws:", "https:": "wss:" }[u.protocol];
    if (!scheme || u.search || u.hash) {
      throw new TypeError(`urls: a ws://, wss://, http:// or https:// base URL: ${raw}`);
    }
    return `${scheme}//${u.host}${u.pathname.replace(/\/+$/, "")}`;
  });
}

function positive(n, name) {
  if (typeof n !== "number" || !(n > 0) || !Number.isFinite(n)) {
    throw new TypeError(`${name}: a positive number`);
  }
  return n;
}

function isSeq(n) {
  return Number.isSafeInteger(n) && n >= 1;
}

function envelope(entry) {
  return entry.text !== undefined
    ? JSON.stringify({ type: "message", seq: entry.seq, text: entry.text })
    : JSON.stringify({ type: "message", seq: entry.seq, binary: entry.binary });
}

/** Lone surrogates become U+FFFD, as a WebSocket's own send would make them (the gateway's
 * JSON parser refuses them, which would end the session with 1007). */
function wellFormed(s) {
  if (typeof s.toWellFormed === "function") return s.toWellFormed();
  let out = "";
  for (let i = 0; i < s.length; i += 1) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        out += s[i] + s[i + 1];
        i += 1;
        continue;
      }
    }
    out += c >= 0xd800 && c <= 0xdfff ? "\uFFFD" : s[i];
  }
  return out;
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i += 1) out[i] = s.charCodeAt(i);
  return out;
}

/** An application handler threw: report it without stopping the client. */
function report(e) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(e);
  else setTimeout(() => { throw e; });
}
