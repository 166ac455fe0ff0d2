//! Close payloads and server frame encoding: `frame::parse_close` on arbitrary client close
//! payloads, and `frame::encode` / `frame::encode_close` checked by an independent decoder
//! (`switchboard_gateway::fuzzing::{parse_close, encode_roundtrip, close_roundtrip}`).
//!
//! Input: the close payload; its first byte also picks the opcode for the encode check, and
//! when it is at least 2 bytes long the first two are a close code and the rest (lossy UTF-8)
//! a reason for the close check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Some((code, reason)) = fuzzing::parse_close(data) {
        if data.is_empty() {
            assert_eq!(code, 1005);
        } else {
            assert!(fuzzing::close_code_is_sendable(code));
            assert_eq!(code.to_be_bytes(), data[..2]);
            assert_eq!(reason.as_bytes(), &data[2..]);
        }
    }
    fuzzing::encode_roundtrip(data.first().copied().unwrap_or(0), data);
    if let [hi, lo, reason @ ..] = data {
        let code = u16::from_be_bytes([*hi, *lo]);
        fuzzing::close_roundtrip(code, &String::from_utf8_lossy(reason));
    }
});
