// A gateway process and a minimal backend for the Node tests of /client.js
// (tests/browser/client_test.mjs): the gateway binary on loopback port 0, the few unary gRPC
// calls of switchboard.v1.Gateway the tests need (over node:http2, protobuf by hand: no
// dependency), and a TCP proxy in front of the client port that can cut connections.

import { spawn } from "node:child_process";
import { connect as h2connect } from "node:http2";
import { createServer, connect as tcpConnect } from "node:net";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The gateway binary: SWITCHBOARD_GATEWAY_BIN, or the debug build of this workspace. */
export const GATEWAY_BIN = process.env.SWITCHBOARD_GATEWAY_BIN
  || join(process.env.CARGO_TARGET_DIR || join(ROOT, "target"), "debug", "switchboard-gateway");

/** Patience for anything the tests wait for; a failure, not a pause. */
export const WAIT_MS = 15000;

/**
 * Starts a gateway on loopback port 0 and resolves once it says where it listens.
 * @returns {Promise<{client: string, backend: string, stop: () => Promise<void>}>}
 */
export async function startGateway(args = []) {
  const child = spawn(GATEWAY_BIN, [
    "--listen", "127.0.0.1:0",
    "--backend-listen", "127.0.0.1:0",
    "--admin-listen", "127.0.0.1:0",
    ...args,
  ], {
    stdio: ["ignore", "pipe", "inherit"],
    // Warnings and errors only, unless SWITCHBOARD_LOG says otherwise.
    env: { SWITCHBOARD_LOG: "warn", ...process.env },
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const line = await within("the gateway's listening line", new Promise((resolve, reject) => {
    child.once("error", reject);
    exited.then((code) => reject(new Error(`the gateway exited (${code}) before listening`)));
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (l) => {
      if (l.startsWith("switchboard-gateway listening ")) resolve(l);
    });
  }));
  const field = (name) => {
    const m = line.match(new RegExp(`\\b${name}=(\\S+)`));
    if (!m) throw new Error(`no ${name}= in ${JSON.stringify(line)}`);
    return m[1];
  };
  return {
    client: field("client"),
    backend: field("backend"),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Rejects with `what` if `promise` takes longer than WAIT_MS. */
export function within(what, promise, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// --- protobuf, the little of it needed --------------------------------------------------------

function varint(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Buffer.from(out);
}

const key = (field, wire) => varint((field << 3) | wire);
const uint = (field, n) => (n ? Buffer.concat([key(field, 0), varint(n)]) : Buffer.alloc(0));
function bytes(field, data) {
  const b = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data);
  return Buffer.concat([key(field, 2), varint(b.length), b]);
}
const duration = (ms) => Buffer.concat([uint(1, Math.floor(ms / 1000)), uint(2, (ms % 1000) * 1e6)]);
const message = (m) => (typeof m === "string" ? bytes(1, m) : bytes(2, m));

/** Fields of one encoded message: field number -> list of values (a number or a Buffer). */
function fields(buf) {
  const out = new Map();
  let i = 0;
  const readVarint = () => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const k = Number(readVarint());
    const [field, wire] = [k >> 3, k & 7];
    let value;
    if (wire === 0) value = Number(readVarint());
    else if (wire === 2) {
      const len = Number(readVarint());
      value = buf.subarray(i, i + len);
      i += len;
    } else if (wire === 1) { value = buf.subarray(i, i + 8); i += 8; }
    else if (wire === 5) { value = buf.subarray(i, i + 4); i += 4; }
    else throw new Error(`unexpected wire type ${wire}`);
    if (!out.has(field)) out.set(field, []);
    out.get(field).push(value);
  }
  return out;
}
const one = (f, n) => (f.get(n) ?? [])[0];

// --- the backend -------------------------------------------------------------------------------

/** The backend API of one gateway, unary calls only. */
export class Backend {
  #session;

  /** @param {string} addr host:port of the backend listener */
  constructor(addr) {
    this.#session = h2connect(`http://${addr}`);
    this.#session.on("error", () => {});
  }

  /** Closes the HTTP/2 connection. */
  disconnect() {
    this.#session.close();
  }

  /** One unary call; resolves with the response's encoded message. */
  #call(method, body) {
    return new Promise((resolve, reject) => {
      const req = this.#session.request({
        ":method": "POST",
        ":path": `/switchboard.v1.Gateway/${method}`,
        "content-type": "application/grpc",
        te: "trailers",
      });
      const chunks = [];
      let headers = {};
      req.on("response", (h) => { headers = h; });
      req.on("data", (c) => chunks.push(c));
      req.on("trailers", (t) => { headers = { ...headers, ...t }; });
      req.on("error", reject);
      req.on("end", () => {
        const status = Number(headers["grpc-status"] ?? -1);
        if (status !== 0) {
          const why = decodeURIComponent(headers["grpc-message"] ?? "");
          reject(Object.assign(new Error(`${method}: grpc-status ${status} ${why}`), { grpcStatus: status }));
          return;
        }
        const all = Buffer.concat(chunks);
        resolve(all.length >= 5 ? all.subarray(5, 5 + all.readUInt32BE(1)) : Buffer.alloc(0));
      });
      const frame = Buffer.alloc(5);
      frame.writeUInt32BE(body.length, 1);
      req.end(Buffer.concat([frame, body]));
    });
  }

  /**
   * Send: a string as text, a Uint8Array as binary. With `acked`, answers only once the client
   * acknowledged it (RECEIPT_ACKED, within `acked` ms); resolves with the receipt reached
   * (0 queued, 1 written, 2 acked).
   */
  async send(session, data, { acked = 0 } = {}) {
    const body = Buffer.concat([
      bytes(1, session),
      bytes(2, message(data)),
      acked ? Buffer.concat([uint(4, 2), bytes(5, duration(acked))]) : Buffer.alloc(0),
    ]);
    return one(fields(await this.#call("Send", body)), 1) ?? 0;
  }

  /**
   * Read: `{message: {seq, clientSeq, text | binary}}`, `{timedOut: true}` or
   * `{closed: {code, reason, closedBy}}`.
   */
  async read(session, timeoutMs) {
    const f = fields(await this.#call("Read", Buffer.concat([bytes(1, session), bytes(2, duration(timeoutMs))])));
    if (f.has(1)) {
      const m = fields(one(f, 1));
      const payload = fields(one(m, 2) ?? Buffer.alloc(0));
      return {
        message: {
          seq: one(m, 1) ?? 0,
          clientSeq: one(m, 3) ?? 0,
          ...(payload.has(2) ? { binary: new Uint8Array(one(payload, 2)) } : { text: (one(payload, 1) ?? Buffer.alloc(0)).toString("utf8") }),
        },
      };
    }
    if (f.has(3)) {
      const c = fields(one(f, 3));
      return { closed: { code: one(c, 1) ?? 0, reason: (one(c, 2) ?? Buffer.alloc(0)).toString("utf8"), closedBy: one(c, 3) ?? 0 } };
    }
    return { timedOut: true };
  }

  /** Close the session with a close code and reason. */
  async close(session, code, reason = "") {
    await this.#call("Close", Buffer.concat([bytes(1, session), uint(2, code), bytes(3, reason)]));
  }

  /** GetSession: `{id, hub, reliable, suspended}`. */
  async session(session) {
    const info = fields(one(fields(await this.#call("GetSession", bytes(1, session))), 1));
    const str = (n) => (one(info, n) ?? Buffer.alloc(0)).toString("utf8");
    return { id: str(1), hub: str(2), reliable: one(info, 12) === 1, suspended: one(info, 13) === 1 };
  }
}

// --- a TCP proxy that can cut ------------------------------------------------------------------

/**
 * A loopback TCP proxy to `target` (host:port). `cut()` drops every connection through it
 * without a WebSocket close (the client side is reset, the gateway side sees the stream end),
 * and holds new connections until `release()`, so what happens meanwhile is missed.
 */
export class Proxy {
  #server;
  #target;
  #pairs = new Set();
  #held = [];
  #holding = false;
  /** Connections accepted so far. */
  accepted = 0;

  constructor(target) {
    this.#target = target;
    this.#server = createServer((client) => {
      this.accepted += 1;
      client.on("error", () => {});
      if (this.#holding) this.#held.push(client);
      else this.#pipe(client);
    });
  }

  /** Listens on 127.0.0.1:0; resolves with `ws://127.0.0.1:PORT`. */
  async start() {
    await new Promise((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    return `ws://127.0.0.1:${this.#server.address().port}`;
  }

  #pipe(client) {
    const [host, port] = [this.#target.slice(0, this.#target.lastIndexOf(":")), Number(this.#target.slice(this.#target.lastIndexOf(":") + 1))];
    const upstream = tcpConnect(port, host);
    upstream.on("error", () => client.destroy());
    const pair = { client, upstream };
    this.#pairs.add(pair);
    const forget = () => this.#pairs.delete(pair);
    client.on("close", () => { upstream.destroy(); forget(); });
    upstream.on("close", () => { client.destroy(); forget(); });
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Drops every connection; new ones wait until `release()`. Resolves with how many. */
  cut() {
    this.#holding = true;
    const n = this.#pairs.size;
    for (const { client, upstream } of this.#pairs) {
      upstream.destroy();
      client.resetAndDestroy();
    }
    this.#pairs.clear();
    return n;
  }

  /** Lets connections through again, held ones first. */
  release() {
    this.#holding = false;
    for (const c of this.#held.splice(0)) {
      if (!c.destroyed) this.#pipe(c);
    }
  }

  async stop() {
    for (const { client, upstream } of this.#pairs) {
      client.destroy();
      upstream.destroy();
    }
    for (const c of this.#held.splice(0)) c.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}
