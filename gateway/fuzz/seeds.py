#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into corpus/<target>/ (seed-* files).

Run from anywhere: python3 gateway/fuzz/seeds.py. The inputs the fuzzer found and that were
kept with `cargo fuzz cmin` sit beside these seeds under their hash names.
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(fin, opcode, payload, masked=True):
    """A client frame as a browser sends it (masked), or unmasked when asked."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return struct.pack(">H", code) + reason


def frames_input(max_bytes, chunk, wire):
    return struct.pack("<H", max_bytes) + bytes([chunk]) + wire


def assembler_input(max_bytes, frames):
    out = struct.pack("<H", max_bytes)
    for fin, opcode, payload in frames:
        out += bytes([(0x80 if fin else 0) | opcode, len(payload)]) + payload
    return out


def deflated(data, wbits=15):
    """A message compressed as RFC 7692 says: raw deflate, sync flush, tail removed."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_input(bits, level, max_bytes, data):
    return bytes([(bits - 8) | ((level - 1) << 3)]) + struct.pack("<H", max_bytes) + data


JSON = b'{"type":"quote","symbol":"ACME","bid":101.25,"ask":101.5}' * 8

UPGRADE = (
    b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
EURO = "€".encode()

SEEDS = {
    "frames": {
        "text": frames_input(1024, 0, frame(True, 1, b"hello")),
        "binary-126": frames_input(1024, 3, frame(True, 2, bytes(range(200)))),
        "fragmented-text": frames_input(
            1024,
            1,
            frame(False, 1, b"h" + EURO[:1])
            + frame(False, 0, EURO[1:])
            + frame(True, 0, b"llo"),
        ),
        "ping-pong-text": frames_input(
            64,
            2,
            frame(True, 9, b"ping")
            + frame(True, 10, b"")
            + frame(True, 1, b"after ping"),
        ),
        "close-bye": frames_input(1024, 0, frame(True, 1, b"x") + frame(True, 8, close(1000, b"bye"))),
        "close-empty": frames_input(1024, 0, frame(True, 8, b"")),
        "close-one-byte": frames_input(1024, 0, frame(True, 8, b"\x03")),
        "close-1005": frames_input(1024, 0, frame(True, 8, close(1005))),
        "close-bad-utf8": frames_input(1024, 0, frame(True, 8, close(4000, b"\xff"))),
        "unmasked": frames_input(1024, 0, frame(True, 1, b"no mask", masked=False)),
        "frame-too-big": frames_input(16, 0, frame(True, 2, bytes(17))),
        "message-too-big": frames_input(16, 5, frame(False, 2, bytes(10)) + frame(True, 0, bytes(10))),
        "length-127": frames_input(1024, 0, b"\x82\xff" + struct.pack(">Q", 1 << 62) + MASK),
        "bad-utf8": frames_input(1024, 0, frame(True, 1, b"\xc3\x28")),
        "unexpected-continuation": frames_input(1024, 0, frame(True, 0, b"x")),
        "fragmented-ping": frames_input(1024, 0, frame(False, 9, b"p")),
        "rsv-bits": frames_input(1024, 0, b"\xc1\x80" + MASK),
        # The top bit of the read-size byte: permessage-deflate negotiated.
        "deflate-text": frames_input(1024, 0x80, frame(True, 0x41, deflated(JSON))),
        "deflate-fragmented": frames_input(
            1024, 0x83, frame(False, 0x41, deflated(JSON)[:20]) + frame(True, 0, deflated(JSON)[20:])
        ),
        "deflate-bomb": frames_input(512, 0x80, frame(True, 0x42, deflated(bytes(50_000)))),
        "deflate-rsv1-ping": frames_input(1024, 0x80, frame(True, 0x49, b"")),
    },
    "assembler": {
        "text": assembler_input(100, [(True, 1, b"hello")]),
        "fragmented-text": assembler_input(
            100, [(False, 1, b"h" + EURO[:1]), (False, 0, EURO[1:2]), (True, 0, EURO[2:] + b"llo")]
        ),
        "binary-fragments": assembler_input(100, [(False, 2, b"ab"), (False, 0, b"cd"), (True, 0, b"e")]),
        "too-big": assembler_input(4, [(False, 2, b"123"), (True, 0, b"45")]),
        "bad-utf8-at-end": assembler_input(100, [(False, 1, EURO[:2]), (True, 0, b"")]),
        "interleaved": assembler_input(100, [(False, 1, b"x"), (True, 2, b"y")]),
        "skipped-control": assembler_input(100, [(False, 1, b"a"), (True, 3, b"ping"), (True, 0, b"b")]),
    },
    "upgrade": {
        "upgrade": UPGRADE + b"\r\n" + frame(True, 1, b"hello") + frame(True, 8, close(1000)),
        "upgrade-subprotocols": UPGRADE + b"Sec-WebSocket-Protocol: chat.v2, json , ,mqtt\r\n"
        b"Sec-WebSocket-Protocol: wamp\r\n\r\n",
        "upgrade-deflate": UPGRADE + b"Sec-WebSocket-Extensions: permessage-deflate; "
        b"client_max_window_bits, permessage-deflate; server_max_window_bits=10\r\n\r\n"
        + frame(True, 0x41, deflated(JSON)),
        "upgrade-bad-extension": UPGRADE + b"Sec-WebSocket-Extensions: permessage-deflate; "
        b'server_max_window_bits="1x"; foo, x-webkit-deflate-frame\r\n\r\n',
        "upgrade-bad-version": UPGRADE.replace(b"Version: 13", b"Version: 8") + b"\r\n",
        "upgrade-no-key": b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "not-upgrade": b"GET /ws/chat?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad-hub": b"GET /ws/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n",
        "probes-pipelined": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
        "chunked-body": b"POST /ws/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "http10-absolute": b"GET http://x/ws/chat HTTP/1.0\r\n\r\n",
        "not-found": b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    },
    "inflate": {
        "json": inflate_input(15, 6, 4096, deflated(JSON)),
        "json-window-9": inflate_input(9, 1, 4096, deflated(JSON, 9)),
        "bomb": inflate_input(15, 9, 1024, deflated(bytes(100_000))),
        "plain-text": inflate_input(12, 3, 100, b"hello hello hello hello"),
        "garbage": inflate_input(8, 9, 100, b"\xff\xfe\xfd\x00\x01"),
    },
    "close": {
        "empty": b"",
        "normal": close(1000),
        "bye": close(4000, b"bye"),
        "no-status": close(1005),
        "one-byte": b"\x03",
        "bad-utf8": close(1000, b"\xe2\x82"),
        "long-reason": close(3000, ("é" * 70).encode()),
        "big-payload": b"\x01" + bytes(300),
    },
    "names": {
        "hub": b"chat",
        "hub-all-chars": b"chat.v1-eu_2",
        "hub-64": b"x" * 64,
        "hub-65": b"x" * 65,
        "hub-slash": b"a/b",
        "session-id": b"AAAAAAAAAAAAAAAAAAAAAA",
        "session-id-dash": b"q-_Z09aAbBcCdDeEfFgGhH",
        "session-id-23": b"A" * 23,
        "unicode": "chät".encode(),
    },
    "auth": {
        # Authorization, query, JWT header, JWT claims, Origin, hub (NUL-separated).
        "signed": b"\x00\x00" + b'{"alg":"HS256","typ":"JWT"}' + b"\x00"
        + b'{"sub":"alice","exp":99999999999,"aud":"app","iss":"https://issuer.example","groups":["a"]}'
        + b"\x00https://app.example/\x00chat",
        "expired": b"\x00\x00" + b'{"alg":"HS256"}' + b"\x00" + b'{"sub":"a","exp":1,"aud":"app"}'
        + b"\x00HTTPS://CHAT.EXAMPLE:8443\x00chat",
        "bearer": b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln\x00\x00\x00\x00https://evil.example\x00room",
        "query": b"\x00a=1&token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.%41\x00",
        "alg-none": b"\x00\x00" + b'{"alg":"none"}' + b"\x00" + b'{"sub":"a","exp":99999999999}',
    },
    "config": {
        "listen": b"--listen\x00127.0.0.1:9000\x00--ping-interval\x0010s\x00--idle-timeout\x0030s",
        "token": b"--backend-listen\x000.0.0.0:7070\x00--backend-token\x00s3cret-token",
        "redis": b"--redis-url\x00redis://user:pw@h:6379/0\x00--redis-prefix\x00sb"
        b"\x00--lease-ttl\x0010s\x00--lease-refresh\x003s",
        "sizes": b"--max-message-bytes\x001024\x00--outbound-queue-bytes\x002048\x00--inbox-bytes\x001024"
        b"\x00--inbox-messages\x008\x00--outbound-queue-messages\x0016",
        "hook": b"--connect-hook\x00http://127.0.0.1:9000\x00--connect-hook-timeout\x00250ms",
        "node": b"--node-id\x00node-1\x00--registry-outage\x00refuse\x00--log-format\x00json"
        b"\x00--log\x00switchboard_gateway=debug",
        "flags": b"--welcome-frame\x00--shutdown-grace\x001m\x00--check-config\x00--insecure-backend",
        "equals": b"--close-timeout=2h\x00--max-read-timeout=0\x00--subscriber-timeout=5",
        # Bytes >= 0x80 pick a flag by index (see fuzz_targets/config.rs).
        "picked": b"\x85250ms\x00\xc93m\x00\x8a4096\x00\xd0redis://h",
    },
}

for target, seeds in SEEDS.items():
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, "seed-" + name), "wb") as f:
            f.write(data)
