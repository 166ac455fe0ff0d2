// A WebSocket client over Node's TLS (OpenSSL), written out by hand: checks the gateway's own
// TLS 1.3 record layer against another TLS implementation. Driven by tests/tests/tls.rs.
//
//   node openssl_client.mjs PORT CA_PEM SIZES
//
// Prints `session ID` and `protocol TLSv1.3` once upgraded, sends one binary message per size
// in SIZES (comma-separated; byte i of message k is (i * 31 + k) % 251), then for each message
// the gateway sends prints `got LEN ok` (or `got LEN bad`) with the same pattern, salt 100 + k;
// on `close` from stdin it closes with 1000 and prints `closed CODE`.
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";
import tls from "node:tls";

const [port, caPath, sizesArg] = process.argv.slice(2);
const sizes = sizesArg.split(",").map(Number);
const pattern = (len, salt) => {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + salt) % 251;
  return b;
};

function frame(opcode, payload) {
  const mask = crypto.randomBytes(4);
  let head;
  if (payload.length < 126) {
    head = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
  } else if (payload.length < 65536) {
    head = Buffer.alloc(4);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(payload.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= mask[i % 4];
  return Buffer.concat([head, mask, body]);
}

const sock = tls.connect({
  host: "127.0.0.1",
  port: Number(port),
  servername: "localhost",
  ca: fs.readFileSync(caPath),
  ALPNProtocols: ["http/1.1"],
  minVersion: "TLSv1.3",
});
sock.on("error", (e) => {
  console.log(`error ${e.message}`);
  process.exit(1);
});

let buf = Buffer.alloc(0);
let upgraded = false;
let received = 0;
sock.on("secureConnect", () => {
  const key = crypto.randomBytes(16).toString("base64");
  sock.write(
    "GET /ws/h HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
});
sock.on("data", (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  if (!upgraded) {
    const end = buf.indexOf("\r\n\r\n");
    if (end < 0) return;
    const head = buf.subarray(0, end).toString();
    buf = buf.subarray(end + 4);
    if (!head.startsWith("HTTP/1.1 101")) {
      console.log(`refused ${head.split("\r\n")[0]}`);
      process.exit(1);
    }
    const session = /x-switchboard-session: *(\S+)/i.exec(head)?.[1];
    upgraded = true;
    console.log(`session ${session}`);
    console.log(`protocol ${sock.getProtocol()}`);
    sizes.forEach((len, k) => sock.write(frame(0x2, pattern(len, k))));
  }
  for (;;) {
    if (buf.length < 2) return;
    const opcode = buf[0] & 0x0f;
    let len = buf[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      if (buf.length < 4) return;
      len = buf.readUInt16BE(2);
      at = 4;
    } else if (len === 127) {
      if (buf.length < 10) return;
      len = Number(buf.readBigUInt64BE(2));
      at = 10;
    }
    if (buf.length < at + len) return;
    const payload = buf.subarray(at, at + len);
    buf = buf.subarray(at + len);
    if (opcode === 0x2) {
      const ok = payload.equals(pattern(len, 100 + received));
      received += 1;
      console.log(`got ${len} ${ok ? "ok" : "bad"}`);
    } else if (opcode === 0x8) {
      console.log(`closed ${payload.length >= 2 ? payload.readUInt16BE(0) : 1005}`);
      sock.end();
      process.exit(0);
    }
  }
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "close") {
    const code = Buffer.alloc(2);
    code.writeUInt16BE(1000);
    sock.write(frame(0x8, code));
  }
});
