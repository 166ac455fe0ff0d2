// Tests of the reliable-session client the gateway serves at /client.js
// (gateway/src/client/client.js), in Node:
//
//   cargo build -p switchboard-gateway
//   node --experimental-websocket --test tests/browser/client_test.mjs
//
// (Node 22+ needs no flag.) Two parts: the protocol logic against a scripted fake socket
// (de-duplication, gaps, acks, resends, refusals, close codes, back-off), and the client against
// a real gateway binary (target/debug/switchboard-gateway, or SWITCHBOARD_GATEWAY_BIN) on
// loopback port 0, with a small backend over gRPC and a TCP proxy that cuts connections.
// Everything is waited for as an event, under a deadline; nothing sleeps.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { connect, PROTOCOL, RESUME_REFUSED, ReliableError } from "../../gateway/src/client/client.js";
import { Backend, Proxy, startGateway, within } from "./backend.mjs";

/** Events of one client (and of its sockets, when a test wants them), with waits on them. */
class Watch {
  messages = [];
  states = [];
  sockets = [];
  /** Envelopes from the gateway and to it, through a spying WebSocket class. */
  frames = { in: [], out: [] };
  #waiters = [];

  /** Records `client`'s messages and states. */
  attach(client) {
    this.client = client;
    client.onmessage = (m) => {
      this.messages.push(m);
      this.poke();
    };
    client.onstatechange = (state, detail) => {
      this.states.push({ state, ...detail });
      this.poke();
    };
    return client;
  }

  /** Re-checks every wait. */
  poke() {
    this.#waiters = this.#waiters.filter((w) => !w());
  }

  /** Resolves with `check()`'s first truthy value, checked now and after every event. */
  until(what, check) {
    return within(what, new Promise((resolve) => {
      const w = () => {
        const v = check();
        if (v) resolve(v);
        return Boolean(v);
      };
      if (!w()) this.#waiters.push(w);
    }));
  }

  /** The last state reported. */
  get last() {
    return this.states.at(-1);
  }

  /** Resolves with the detail of the `n`th (1-based) `state` reported. */
  state(state, n = 1) {
    return this.until(`state ${state} #${n}`, () => this.states.filter((s) => s.state === state)[n - 1]);
  }

  /** A WebSocket class that records envelopes both ways, then behaves as `Base`. */
  spying(Base) {
    const watch = this;
    return class extends Base {
      constructor(url, protocols) {
        super(url, protocols);
        watch.sockets.push(this);
        // Registered before the client's handler, so it runs first: the waits are checked
        // again once the client has handled the frame too.
        this.addEventListener("message", (e) => {
          watch.frames.in.push(JSON.parse(e.data));
          queueMicrotask(() => watch.poke());
        });
      }

      send(data) {
        watch.frames.out.push(JSON.parse(data));
        super.send(data);
        watch.poke();
      }
    };
  }
}

// --- the protocol against a scripted socket -----------------------------------------------------

/**
 * A WebSocket stand-in the test plays the gateway with: `accept()` opens it, `receive(obj)`
 * delivers an envelope, `drop(code)` closes it. `sent` holds the envelopes the client sent.
 */
function fakeSockets(watch) {
  return class FakeSocket {
    constructor(url, protocol) {
      this.url = new URL(url);
      this.offered = protocol;
      this.protocol = "";
      this.readyState = 0;
      this.sent = [];
      this.closedWith = undefined;
      watch.sockets.push(this);
      watch.poke();
    }

    send(data) {
      if (this.readyState === 0) throw new Error("InvalidStateError: still connecting");
      this.sent.push(JSON.parse(data));
      watch.poke();
    }

    /** Like a gateway answering the close frame, at once (after the caller's task). */
    close(code) {
      this.closedWith = code ?? null;
      this.readyState = 2;
      watch.poke();
      queueMicrotask(() => this.drop(code ?? 1005));
    }

    accept() {
      this.readyState = 1;
      this.protocol = PROTOCOL;
      this.onopen?.({});
    }

    welcome(session, { resumed = false, ack = 0 } = {}) {
      this.receive({ type: "welcome", session, resume_token: `token-of-${session}`, resumed, ack, resume_window_ms: 120000 });
    }

    receive(env) {
      this.onmessage?.({ data: typeof env === "string" ? env : JSON.stringify(env) });
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  };
}

/** A client over fake sockets, with tiny back-offs. */
function scripted(options = {}) {
  const watch = new Watch();
  const client = connect({
    urls: ["ws://gateway.test"],
    hub: "lobby",
    backoff: { initialMs: 2, maxMs: 8 },
    WebSocket: fakeSockets(watch),
    ...options,
  });
  watch.attach(client);
  const socket = (n) => watch.until(`socket #${n}`, () => watch.sockets[n - 1]);
  return { client, watch, socket };
}

const text = (seq, t) => ({ type: "message", seq, text: t });
const sentMessages = (s) => s.sent.filter((e) => e.type === "message").map((e) => [e.seq, e.text ?? e.binary]);

describe("the protocol, against a scripted gateway", () => {
  test("each gateway message is delivered once and in order; a gap drops the connection and resumes", async () => {
    const { client, watch, socket } = scripted();
    const s1 = await socket(1);
    assert.equal(s1.url.pathname, "/ws/lobby");
    assert.equal(s1.url.search, "");
    assert.equal(s1.offered, PROTOCOL);
    s1.accept();
    s1.welcome("S1");
    const open = await watch.state("open");
    assert.equal(open.session, "S1");
    assert.equal(open.resumed, false);
    assert.equal(open.lost, false);
    assert.equal(open.url, "ws://gateway.test");
    assert.equal(client.session, "S1");

    s1.receive(text(1, "one"));
    s1.receive({ type: "message", seq: 2, binary: Buffer.from([0, 1, 255]).toString("base64") });
    s1.receive(text(2, "two again"));
    s1.receive(text(1, "one again"));
    assert.deepEqual(watch.messages.map((m) => m.seq), [1, 2]);
    assert.equal(watch.messages[0].text, "one");
    assert.deepEqual(Array.from(watch.messages[1].binary), [0, 1, 255]);
    assert.equal(client.stats.duplicates, 2);

    // 4 after 2: the connection is given up on (no close frame: that would end the session).
    s1.receive(text(4, "four"));
    const s2 = await socket(2);
    assert.equal(s1.closedWith, undefined, "a close frame would end the session");
    assert.equal(s2.url.searchParams.get("session"), "S1");
    assert.equal(s2.url.searchParams.get("resume_token"), "token-of-S1");
    assert.equal(s2.url.searchParams.get("ack"), "2");
    s1.receive(text(3, "late, on the old connection"));
    assert.equal(watch.messages.length, 2, "an abandoned connection is not listened to");

    s2.accept();
    s2.welcome("S1", { resumed: true });
    s2.receive(text(3, "three"));
    s2.receive(text(4, "four"));
    assert.deepEqual(watch.messages.map((m) => m.text ?? "bin"), ["one", "bin", "three", "four"]);
    const resumed = await watch.state("open", 2);
    assert.equal(resumed.resumed, true);
    assert.equal(resumed.session, "S1");
    assert.deepEqual(client.stats, { delivered: 4, duplicates: 2, reconnects: 1, resumes: 1, resets: 0 });
    await client.close({ timeoutMs: 1 });
  });

  test("acks are cumulative: at once every ackEvery messages, else within ackDelayMs", async () => {
    const { client, watch, socket } = scripted({ ackEvery: 3, ackDelayMs: 5 });
    const s = await socket(1);
    s.accept();
    s.welcome("S");
    s.receive(text(1, "a"));
    s.receive(text(2, "b"));
    assert.deepEqual(s.sent, []);
    s.receive(text(3, "c"));
    assert.deepEqual(s.sent, [{ type: "ack", seq: 3 }], "the third message is acknowledged at once");
    s.receive(text(4, "d"));
    assert.equal(s.sent.length, 1);
    // The timer's ack follows on its own.
    await watch.until("the delayed ack", () => s.sent.length === 2);
    assert.deepEqual(s.sent[1], { type: "ack", seq: 4 });
    await client.close({ timeoutMs: 1 });
  });

  test("unacknowledged messages go again after a resume, in order, before new ones", async () => {
    const { client, watch, socket } = scripted();
    // Sent before any connection: kept, numbered, sent once welcomed.
    client.send("a");
    client.send("b");
    client.send(new Uint8Array([7, 8, 9]));
    assert.equal(client.unacked, 3);
    const s1 = await socket(1);
    s1.accept();
    s1.welcome("S");
    assert.deepEqual(sentMessages(s1), [[1, "a"], [2, "b"], [3, Buffer.from([7, 8, 9]).toString("base64")]]);
    s1.receive({ type: "ack", seq: 1 });
    assert.equal(client.unacked, 2);
    s1.drop(1006);
    client.send("d");
    const s2 = await socket(2);
    s2.accept();
    // Sent from the application's own handler: must follow the resent ones.
    client.onstatechange = (state) => {
      if (state === "open") client.send("e");
    };
    s2.welcome("S", { resumed: true, ack: 2 });
    assert.deepEqual(sentMessages(s2), [[3, Buffer.from([7, 8, 9]).toString("base64")], [4, "d"], [5, "e"]]);
    s2.receive({ type: "ack", seq: 5 });
    assert.equal(client.unacked, 0);
    assert.equal(client.state, "open");
    await client.close({ timeoutMs: 1 });
  });

  test("a refused resume (4401) starts a new session: unacknowledged messages renumbered from 1, lost reported", async () => {
    const { client, watch, socket } = scripted();
    const s1 = await socket(1);
    s1.accept();
    s1.welcome("OLD");
    s1.receive(text(1, "x"));
    client.send("first");
    client.send("second");
    client.send("third");
    s1.receive({ type: "ack", seq: 1 });
    s1.drop(1012, "resume elsewhere");
    const s2 = await socket(2);
    assert.equal(s2.url.searchParams.get("session"), "OLD");
    s2.accept();
    s2.drop(RESUME_REFUSED, "resume refused");
    const s3 = await socket(3);
    assert.equal(s3.url.search, "", "a new session asks for no resume");
    s3.accept();
    s3.welcome("NEW");
    assert.deepEqual(sentMessages(s3), [[1, "second"], [2, "third"]]);
    const open = await watch.state("open", 2);
    assert.equal(open.session, "NEW");
    assert.equal(open.lost, true);
    assert.equal(open.previousSession, "OLD");
    assert.equal(open.resumed, false);
    // The new session numbers gateway messages from 1 again.
    s3.receive(text(1, "hello again"));
    assert.deepEqual(watch.messages.map((m) => [m.seq, m.text]), [[1, "x"], [1, "hello again"]]);
    assert.equal(client.stats.resets, 1);
    client.send("fourth");
    assert.deepEqual(sentMessages(s3).at(-1), [3, "fourth"]);
    await client.close({ timeoutMs: 1 });
  });

  for (const code of [1000, 1002, 1003, 1007, 1008, 1009]) {
    test(`a close with ${code} from the gateway ends the session`, async () => {
      const { client, watch, socket } = scripted();
      const s = await socket(1);
      s.accept();
      s.welcome("S");
      s.drop(code, "bye");
      assert.equal(client.state, "closed");
      assert.deepEqual([watch.last.state, watch.last.code, watch.last.reason], ["closed", code, "bye"]);
      assert.throws(() => client.send("more"), (e) => e instanceof ReliableError && e.code === "closed");
      assert.equal(watch.sockets.length, 1, "no reconnect");
    });
  }

  for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 4000, 4001]) {
    test(`a close with ${code} from the gateway is resumed`, async () => {
      const { client, watch, socket } = scripted();
      const s = await socket(1);
      s.accept();
      s.welcome("S");
      s.drop(code);
      const connecting = await watch.state("connecting", 2);
      assert.equal(connecting.code, code);
      assert.ok(connecting.delayMs > 0);
      const s2 = await socket(2);
      assert.equal(s2.url.searchParams.get("session"), "S");
      await client.close();
    });
  }

  test("back-off: capped, jittered, exponential, cycling over the URLs", async () => {
    const urls = ["ws://a.test", "ws://b.test:81/", "http://c.test"];
    const { client, watch, socket } = scripted({ urls, backoff: { initialMs: 2, maxMs: 8 } });
    for (let n = 1; n <= 5; n += 1) {
      const s = await socket(n);
      s.drop(1006);
    }
    await socket(6);
    assert.deepEqual(
      watch.sockets.map((s) => s.url.host),
      ["a.test", "b.test:81", "c.test", "a.test", "b.test:81", "c.test"],
    );
    const waits = watch.states.filter((s) => s.state === "connecting").map((s) => s.delayMs);
    assert.equal(waits[0], 0);
    const ceilings = [2, 4, 8, 8, 8];
    waits.slice(1).forEach((ms, i) => {
      assert.ok(ms >= ceilings[i] / 2 && ms <= ceilings[i], `attempt ${i + 1} waited ${ms} ms`);
    });
    assert.equal(client.stats.reconnects, 5);
    await client.close();
    assert.equal(client.state, "closed");
  });

  test("send is bounded by maxQueued and refuses what it cannot send", async () => {
    const { client, socket } = scripted({ maxQueued: 2 });
    client.send("a");
    client.send("b");
    assert.throws(() => client.send("c"), (e) => e instanceof ReliableError && e.code === "queue_full");
    assert.throws(() => client.send({}), TypeError);
    const s = await socket(1);
    s.accept();
    s.welcome("S");
    s.receive({ type: "ack", seq: 2 });
    client.send("c");
    assert.deepEqual(sentMessages(s), [[1, "a"], [2, "b"], [3, "c"]]);
    // A lone surrogate would be refused by the gateway's JSON parser: it goes as U+FFFD.
    s.receive({ type: "ack", seq: 3 });
    client.send("\ud800!");
    assert.deepEqual(sentMessages(s).at(-1), [4, "\ufffd!"]);
    await client.close({ timeoutMs: 1 });
  });

  test("close() waits for the gateway's ack, then sends a close frame", async () => {
    const { client, watch, socket } = scripted();
    const s = await socket(1);
    s.accept();
    s.welcome("S");
    client.send("last words");
    let closed = false;
    const closing = client.close().then(() => { closed = true; });
    assert.equal(client.state, "open");
    assert.equal(s.closedWith, undefined);
    assert.throws(() => client.send("more"), (e) => e instanceof ReliableError && e.code === "closed");
    s.receive({ type: "ack", seq: 1 });
    assert.equal(s.closedWith, 1000);
    assert.equal(closed, false, "closed once the gateway answers the close frame");
    await closing;
    assert.equal(watch.last.state, "closed");
    assert.equal(watch.last.code, 1000);
  });

  test("bad options are refused up front", () => {
    const WebSocket = fakeSockets(new Watch());
    assert.throws(() => connect({ urls: ["ws://x"], hub: "no/slash", WebSocket }), TypeError);
    assert.throws(() => connect({ urls: ["ftp://x"], hub: "h", WebSocket }), TypeError);
    assert.throws(() => connect({ urls: [], hub: "h", WebSocket }), TypeError);
    assert.throws(() => connect({ urls: ["ws://x"], hub: "h", backoff: { initialMs: -1 }, WebSocket }), TypeError);
    // Loaded from a file, there is no gateway to default to.
    assert.throws(() => connect({ hub: "h", WebSocket }), TypeError);
  });
});

// --- against a real gateway ----------------------------------------------------------------------

describe("against a gateway", () => {
  let gateway;
  let backend;
  const cleanups = [];

  before(async () => {
    assert.equal(typeof globalThis.WebSocket, "function", "run with node --experimental-websocket (Node 20)");
    gateway = await startGateway();
    backend = new Backend(gateway.backend);
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c();
    backend?.disconnect();
    await gateway?.stop();
  });

  /** A client through its own cuttable proxy. */
  async function reliable(hub, options = {}) {
    const proxy = new Proxy(gateway.client);
    const url = await proxy.start();
    const watch = new Watch();
    const client = watch.attach(connect({
      urls: [url],
      hub,
      backoff: { initialMs: 10, maxMs: 100 },
      WebSocket: watch.spying(globalThis.WebSocket),
      ...options,
    }));
    cleanups.push(async () => {
      await client.close({ timeoutMs: 1 });
      await proxy.stop();
    });
    const open = await watch.state("open");
    return { client, watch, proxy, open };
  }

  /** Reads `n` client messages, in order. */
  async function readN(id, n) {
    const got = [];
    while (got.length < n) {
      const r = await backend.read(id, 10000);
      assert.ok(r.message, `read ${got.length + 1} of ${n}: ${JSON.stringify(r)}`);
      got.push(r.message);
    }
    return got;
  }

  test("the gateway serves this very file at /client.js, importable from any origin", async () => {
    const r = await fetch(`http://${gateway.client}/client.js`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("content-type"), "text/javascript; charset=utf-8");
    assert.equal(r.headers.get("access-control-allow-origin"), "*");
    const source = readFileSync(new URL("../../gateway/src/client/client.js", import.meta.url), "utf8");
    assert.ok(await r.text() === source, "the gateway binary is older than client.js: cargo build -p switchboard-gateway");
  });

  test("welcome, then messages both ways in order, acknowledged both ways", async () => {
    const { client, watch, open } = await reliable("js");
    assert.equal(open.resumed, false);
    assert.equal(open.lost, false);
    assert.match(open.session, /^[A-Za-z0-9_-]{20,}$/);
    const welcome = watch.frames.in[0];
    assert.equal(welcome.type, "welcome");
    assert.equal(welcome.session, open.session);
    assert.equal(welcome.ack, 0);
    assert.equal(watch.sockets[0].protocol, PROTOCOL);
    const info = await backend.session(open.session);
    assert.deepEqual([info.hub, info.reliable, info.suspended], ["js", true, false]);

    // Gateway -> client: in order, text and binary; the last Send waits for the client's ack.
    const N = 41;
    for (let i = 1; i < N; i += 1) {
      await backend.send(open.session, i % 4 === 0 ? new Uint8Array([i, 0, 255]) : `m${i}`);
    }
    assert.equal(await backend.send(open.session, `m${N}`, { acked: 10000 }), 2, "RECEIPT_ACKED");
    assert.deepEqual(watch.messages.map((m) => m.seq), Array.from({ length: N }, (_, i) => i + 1));
    for (const m of watch.messages) {
      if (m.seq % 4 === 0) assert.deepEqual(Array.from(m.binary), [m.seq, 0, 255]);
      else assert.equal(m.text, `m${m.seq}`);
    }
    assert.ok(watch.frames.out.some((f) => f.type === "ack" && f.seq === N));

    // Client -> gateway: the backend reads them in order; the gateway acknowledges them once
    // the backend surely has them (its next Read).
    for (let i = 1; i <= 10; i += 1) client.send(i === 5 ? new Uint8Array([5, 5]) : `c${i}`);
    const got = await readN(open.session, 10);
    assert.deepEqual(got.map((m) => m.clientSeq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(got.map((m) => m.text ?? Array.from(m.binary).join(",")), ["c1", "c2", "c3", "c4", "5,5", "c6", "c7", "c8", "c9", "c10"]);
    const [next] = await Promise.all([
      backend.read(open.session, 300),
      watch.until("the gateway's ack of 10", () => client.unacked === 0),
    ]);
    assert.ok(next.timedOut);
    assert.ok(watch.frames.in.some((f) => f.type === "ack" && f.seq === 10));
    assert.deepEqual(client.stats, { delivered: N, duplicates: 0, reconnects: 0, resumes: 0, resets: 0 });
  });

  test("a cut connection is resumed: same session, what was missed, what was queued, once each", async () => {
    const { client, watch, proxy, open } = await reliable("js");
    const id = open.session;
    for (let i = 1; i <= 3; i += 1) await backend.send(id, `before ${i}`);
    await watch.until("3 messages", () => watch.messages.length === 3);
    client.send("c1");
    client.send("c2");

    assert.equal(proxy.cut(), 1);
    const lost = await watch.state("connecting", 2);
    assert.equal(lost.code, 1006);
    for (let i = 1; i <= 5; i += 1) await backend.send(id, `missed ${i}`);
    client.send("c3");
    client.send("c4");
    assert.equal(client.unacked, 4);
    proxy.release();

    const resumed = await watch.state("open", 2);
    assert.equal(resumed.resumed, true);
    assert.equal(resumed.session, id);
    assert.equal(client.session, id);
    await watch.until("8 messages", () => watch.messages.length === 8);
    assert.deepEqual(watch.messages.map((m) => [m.seq, m.text]), [
      [1, "before 1"], [2, "before 2"], [3, "before 3"],
      [4, "missed 1"], [5, "missed 2"], [6, "missed 3"], [7, "missed 4"], [8, "missed 5"],
    ]);
    const got = await readN(id, 4);
    assert.deepEqual(got.map((m) => [m.clientSeq, m.text]), [[1, "c1"], [2, "c2"], [3, "c3"], [4, "c4"]]);
    const [next] = await Promise.all([
      backend.read(id, 300),
      watch.until("the gateway's ack of 4", () => client.unacked === 0),
    ]);
    assert.ok(next.timedOut, "nothing was read twice");
    const stats = client.stats;
    assert.equal(stats.resumes, 1);
    assert.equal(stats.resets, 0);
    assert.equal(stats.delivered, 8);
    assert.ok(stats.reconnects >= 1);
    assert.ok(proxy.accepted >= 2);
  });

  test("a session the gateway ended is not resumed: a new one starts, and the application is told", async () => {
    const { client, watch, open } = await reliable("js");
    const old = open.session;
    client.send("unread");
    await backend.close(old, 4000, "see you soon");
    const fresh = await watch.state("open", 2);
    assert.notEqual(fresh.session, old);
    assert.equal(fresh.lost, true);
    assert.equal(fresh.previousSession, old);
    assert.equal(fresh.resumed, false);
    assert.equal(client.stats.resets, 1);
    assert.ok(watch.states.some((s) => s.state === "connecting" && s.code === RESUME_REFUSED));
    // What the old session never acknowledged is the new session's first message.
    const [m] = await readN(fresh.session, 1);
    assert.deepEqual([m.clientSeq, m.text], [1, "unread"]);
    await backend.send(fresh.session, "welcome back");
    await watch.until("the new session's message", () => watch.messages.at(-1)?.text === "welcome back");
    assert.equal(watch.messages.at(-1).seq, 1);
  });

  test("close() waits until the gateway has what was sent, then ends the session", async () => {
    const { client, watch, open } = await reliable("js");
    client.send("last words");
    const closing = client.close();
    assert.equal(client.state, "open");
    const [m] = await readN(open.session, 1);
    assert.equal(m.text, "last words");
    // The next Read makes the gateway acknowledge; the client then closes, which ends the Read.
    const [end] = await Promise.all([backend.read(open.session, 10000), closing]);
    assert.deepEqual([watch.last.state, watch.last.code], ["closed", 1000]);
    assert.equal(end.closed?.code, 1000, JSON.stringify(end));
  });
});
