//! WebSocket frames: server frames encoded once, client frames decoded ([`decode`]).
//!
//! Server frames are unmasked, so one encoded frame is byte-for-byte the same for every socket:
//! a publish encodes once and every session's queue holds a clone of the same [`Bytes`].

pub(crate) mod decode;

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::deflate::{self, Deflate};

/// Frame opcodes the gateway sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Longest header of an unmasked frame: 2 bytes plus an 8-byte extended length.
pub(crate) const MAX_HEADER: usize = 10;

/// Longest payload of a control frame (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// Encodes one complete (FIN) frame.
pub(crate) fn encode(opcode: Opcode, payload: &[u8]) -> Bytes {
    encode_first_byte(0x80 | opcode as u8, payload)
}

/// RSV1: the frame carries a compressed message (permessage-deflate).
const RSV1: u8 = 0x40;

fn encode_first_byte(b0: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut buf = BytesMut::with_capacity(MAX_HEADER + len);
    buf.put_u8(b0);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(len16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// A backend's data message encoded for every form a session may need, each at most once: the
/// plain frame, and the compressed frame for each window size sessions agreed to (usually one).
/// A broadcast builds one and hands each session [`Encoded::frame_for`], so compression costs
/// once per broadcast, not once per session.
pub(crate) struct Encoded {
    opcode: Opcode,
    payload: Bytes,
    plain: Bytes,
    /// The zlib level, or `None` when this message is not compressed for anybody.
    level: Option<u8>,
    /// Per window size: the compressed frame, or `None` when compressing did not pay.
    deflated: [OnceLock<Option<Bytes>>; deflate::WINDOWS],
}

impl Encoded {
    /// `level`: compress for sessions that agreed to it, with this zlib level (`None`:
    /// compression is off, or the message is too short to be worth it).
    pub(crate) fn new(opcode: Opcode, payload: Bytes, level: Option<u8>) -> Self {
        Self {
            plain: encode(opcode, &payload),
            opcode,
            payload,
            level,
            deflated: Default::default(),
        }
    }

    /// The frame for a session with these compression terms.
    pub(crate) fn frame_for(&self, deflate: Option<Deflate>) -> Bytes {
        let (Some(level), Some(d)) = (self.level, deflate) else {
            return self.plain.clone();
        };
        let Some(slot) = d.window_slot() else {
            return self.plain.clone();
        };
        let deflated = self.deflated[slot].get_or_init(|| {
            deflate::compress(d, level, &self.payload)
                .map(|c| encode_first_byte(0x80 | RSV1 | self.opcode as u8, &c))
        });
        deflated.as_ref().unwrap_or(&self.plain).clone()
    }
}

/// Encodes a close frame. The reason is cut (on a character boundary) so the payload stays
/// within the 125 bytes a control frame may carry.
pub(crate) fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(Opcode::Close, &payload)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Close codes the gateway uses (RFC 6455 §7.4.1, plus 1012/1013 from the IANA registry).
pub(crate) mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const NO_STATUS: u16 = 1005;
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const UNSUPPORTED: u16 = 1003;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Codes an endpoint may put on the wire: 1000–1003, 1007–1014 and 3000–4999.
    pub fn is_sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// What a client's close frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientClose {
    pub code: u16,
    pub reason: String,
}

/// Parses the payload of a client's close frame; `None` when it breaks RFC 6455 §5.5.1/§7.4
/// (one byte, a code that may not be sent, a reason that is not UTF-8), which earns a 1002.
pub(crate) fn parse_close(payload: &[u8]) -> Option<ClientClose> {
    match payload {
        [] => Some(ClientClose {
            code: close_code::NO_STATUS,
            reason: String::new(),
        }),
        [_] => None,
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_sendable(code) {
                return None;
            }
            let reason = std::str::from_utf8(reason).ok()?;
            Some(ClientClose {
                code,
                reason: reason.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_pick_the_right_header_form() {
        assert_eq!(&encode(Opcode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = encode(Opcode::Binary, &[0u8; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 0x01, 0x2c]);
        assert_eq!(mid.len(), 4 + 300);
        let big = encode(Opcode::Binary, &vec![0u8; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn a_message_is_compressed_once_per_window_and_shared() {
        let payload = Bytes::from(br#"{"event":"tick","price":101.25}"#.repeat(30));
        let encoded = Encoded::new(Opcode::Text, payload.clone(), Some(6));
        let w15 = Some(Deflate {
            server_window_bits: 15,
        });
        let w10 = Some(Deflate {
            server_window_bits: 10,
        });
        let first = encoded.frame_for(w15);
        assert_eq!(first[0], 0x80 | RSV1 | Opcode::Text as u8);
        assert!(first.len() < payload.len() / 3);
        // Every later session with the same window gets the very same bytes, not a copy.
        for _ in 0..1000 {
            assert_eq!(encoded.frame_for(w15).as_ptr(), first.as_ptr());
        }
        let other = encoded.frame_for(w10);
        assert_ne!(other.as_ptr(), first.as_ptr());
        assert_eq!(encoded.frame_for(w10).as_ptr(), other.as_ptr());
        // Plain sessions, 8-bit windows and uncompressed messages share the plain frame.
        let plain = encoded.frame_for(None);
        assert_eq!(plain, encode(Opcode::Text, &payload));
        let w8 = Some(Deflate {
            server_window_bits: 8,
        });
        assert_eq!(encoded.frame_for(w8).as_ptr(), plain.as_ptr());
        let off = Encoded::new(Opcode::Text, payload, None);
        assert_eq!(off.frame_for(w15)[0], 0x81);
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let frame = encode_close(1000, &"é".repeat(100));
        let payload_len = frame[1] as usize;
        assert!(payload_len <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }

    #[test]
    fn close_payloads_are_validated() {
        assert_eq!(parse_close(&[]).unwrap().code, close_code::NO_STATUS);
        assert!(parse_close(&[3]).is_none());
        assert!(parse_close(&999u16.to_be_bytes()).is_none());
        assert!(parse_close(&1005u16.to_be_bytes()).is_none());
        let mut bad_utf8 = 1000u16.to_be_bytes().to_vec();
        bad_utf8.push(0xff);
        assert!(parse_close(&bad_utf8).is_none());
        let ok = parse_close(&[0x0f, 0xa0, b'b', b'y', b'e']).unwrap();
        assert_eq!((ok.code, ok.reason.as_str()), (4000, "bye"));
    }
}
