//! Raw bytes a client sends after its 101, through the session reader: fastwebsockets'
//! `WebSocketRead` (server role, the gateway's settings) and the gateway's `Assembler`, ping,
//! pong and close handling (`switchboard_gateway::fuzzing::read_frames`).
//!
//! Input: 2 bytes of message limit (u16, little endian; 0 means 1), 1 byte of read size for
//! the second pass, then the bytes on the wire.
//!
//! Checks: no panic; every message is within the limit; text is UTF-8; pongs echo at most 125
//! bytes; a client close carries a code the gateway accepts; and the same outcome whether the
//! bytes come in one read or trickle in small reads that first answer "not ready".
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing::{self, End};

fuzz_target!(|data: &[u8]| {
    let [lo, hi, chunk, wire @ ..] = data else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([*lo, *hi])).max(1);
    let read = fuzzing::read_frames(wire, max);
    for m in &read.messages {
        assert!(m.payload.len() <= max, "message over the limit");
        if m.text {
            assert!(std::str::from_utf8(&m.payload).is_ok(), "text not UTF-8");
        }
    }
    for pong in &read.pongs {
        assert!(pong.len() <= 2 + 125, "pong too long: {}", pong.len());
    }
    if let End::ClientClosed { code, reason } = &read.end {
        assert!(*code == 1005 || fuzzing::close_code_is_sendable(*code));
        assert!(reason.len() <= 123);
    }
    let trickled = fuzzing::read_frames_chunked(wire, max, usize::from(*chunk % 16) + 1);
    assert_eq!(trickled, read, "outcome depends on read boundaries");
});
