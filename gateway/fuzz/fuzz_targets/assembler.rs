//! Sequences of data frames through the gateway's `message::Assembler`
//! (`switchboard_gateway::fuzzing::assemble`), compared with a plain model: buffer every
//! fragment, check the size before appending, and check UTF-8 of the whole buffer after every
//! fragment (an incomplete last character is fine until FIN).
//!
//! Input: 2 bytes of limit (u16, little endian), then frames as
//! `[flags, len, payload; len]` with `flags & 0x80` = FIN and `flags % 4` = opcode
//! (0 continuation, 1 text, 2 binary, 3 skipped as a non-data frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing::{self, Assembled, Delivered};

fuzz_target!(|data: &[u8]| {
    let [lo, hi, rest @ ..] = data else {
        return;
    };
    let mut rest = rest;
    let max = usize::from(u16::from_le_bytes([*lo, *hi]));
    let mut frames = Vec::new();
    while let [flags, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        frames.push((flags % 4, flags & 0x80 != 0, tail[..n].to_vec()));
        rest = &tail[n..];
    }
    let got = fuzzing::assemble(&frames, max);
    let want = model(&frames, max);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        match (g, w) {
            (Assembled::Refused { close_code, .. }, Model::Refused(code)) => {
                assert_eq!(close_code, code, "{got:?} vs {want:?}")
            }
            (Assembled::Pending, Model::Pending) => {}
            (Assembled::Message(m), Model::Message(w)) => assert_eq!(m, w),
            _ => panic!("{got:?} vs {want:?}"),
        }
    }
});

#[derive(Debug)]
enum Model {
    Pending,
    Message(Delivered),
    Refused(u16),
}

fn model(frames: &[(u8, bool, Vec<u8>)], max: usize) -> Vec<Model> {
    let mut out = Vec::new();
    let mut partial: Option<(bool, Vec<u8>)> = None;
    for (opcode, fin, payload) in frames {
        let step = match (opcode, partial.take()) {
            (3, p) => {
                partial = p;
                continue;
            }
            (0, None) => Err(1002),
            (0, Some((text, buf))) => Ok((text, buf)),
            (_, Some(_)) => Err(1002),
            (op, None) => Ok((*op == 1, Vec::new())),
        };
        let result = step.and_then(|(text, mut buf)| {
            if buf.len() + payload.len() > max {
                return Err(1009);
            }
            buf.extend_from_slice(payload);
            if text {
                match std::str::from_utf8(&buf) {
                    Ok(_) => {}
                    Err(e) if e.error_len().is_none() && !fin => {}
                    Err(_) => return Err(1007),
                }
            }
            Ok((text, buf))
        });
        match result {
            Err(code) => {
                out.push(Model::Refused(code));
                break;
            }
            Ok((text, buf)) if *fin => out.push(Model::Message(Delivered {
                text,
                payload: buf.into(),
            })),
            Ok(p) => {
                partial = Some(p);
                out.push(Model::Pending);
            }
        }
    }
    out
}
