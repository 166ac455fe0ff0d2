//! permessage-deflate: the gateway's bounded inflater on arbitrary bytes, and its compressor
//! round-tripping through it (`switchboard_gateway::fuzzing::{inflate, compress}`).
//!
//! Input: 1 byte of window bits (`% 8 + 8`, so 8–15) and level (`/ 8 % 9 + 1`), 2 bytes of
//! limit (u16, little endian), then the bytes.
//!
//! Checks: no panic; inflating arbitrary bytes never yields more than the limit; whatever the
//! compressor makes of the bytes is shorter than them and inflates back to exactly them (under a
//! limit of their length), and a window of 8 bits is never compressed for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing;

fuzz_target!(|data: &[u8]| {
    let [params, lo, hi, bytes @ ..] = data else {
        return;
    };
    let bits = params % 8 + 8;
    let level = params / 8 % 9 + 1;
    let max = usize::from(u16::from_le_bytes([*lo, *hi]));
    if let Ok(out) = fuzzing::inflate(bytes, max) {
        assert!(out.len() <= max, "{} bytes inflated past {max}", out.len());
    }
    match fuzzing::compress(bits, level, bytes) {
        Some(c) => {
            assert!(bits >= 9, "compressed for a 256-byte window");
            assert!(c.len() < bytes.len(), "compressed output not smaller");
            let back = fuzzing::inflate(&c, bytes.len()).expect("own output inflates");
            assert_eq!(&back[..], bytes, "round trip");
        }
        None => {}
    }
});
