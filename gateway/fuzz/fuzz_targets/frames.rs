//! Raw bytes a client sends after its 101, through the session reader: the gateway's
//! `client::reader::Reader` feeding `client::protocol::ClientProtocol` (strict frame decoding,
//! assembly, inflation, ping, pong and close handling), via
//! `switchboard_gateway::fuzzing::read_frames`.
//!
//! Input: 2 bytes of message limit (u16, little endian; 0 means 1), 1 byte whose low 4 bits are
//! the read size for the second pass and whose top bit says permessage-deflate was negotiated,
//! then the bytes on the wire.
//!
//! Checks: no panic; every message is within the limit; text is UTF-8; pongs echo at most 125
//! bytes; a client close carries a code the gateway accepts; the read buffer never holds more
//! than the frame it waits for plus the reader's slack; and the same outcome whether the bytes
//! come in one read or trickle in small reads that first answer "not ready".
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing::{self, End};

fuzz_target!(|data: &[u8]| {
    let [lo, hi, flags, wire @ ..] = data else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([*lo, *hi])).max(1);
    let deflate = flags & 0x80 != 0;
    let read = fuzzing::read_frames(wire, max, deflate);
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
    // The largest frame the decoder waits for: a compressed one may be a little over the limit.
    let largest_frame = 14 + max + max / 1024 + 64;
    assert!(
        read.peak_buffer <= wire.len().min(largest_frame) + fuzzing::READ_SLACK,
        "buffer of {} bytes for {} on the wire",
        read.peak_buffer,
        wire.len()
    );
    let chunk = usize::from(*flags % 16) + 1;
    let trickled = fuzzing::read_frames_chunked(wire, max, deflate, chunk);
    assert_eq!(trickled.outcome(), read.outcome(), "outcome depends on read boundaries");
});
