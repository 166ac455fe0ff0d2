//! Client frame decoding (RFC 6455 §5.2), strictly: a pure function of the bytes received so far.
//!
//! The reader appends what the socket gives to a buffer and takes complete frames off its
//! front; nothing here does I/O, so the fuzz targets run exactly this code.

use bytes::{Buf, BytesMut};

use super::{close_code, MAX_CONTROL_PAYLOAD};

/// A client frame's opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientOpcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl ClientOpcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One complete client frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientFrame {
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (permessage-deflate).
    pub compressed: bool,
    pub opcode: ClientOpcode,
    pub payload: BytesMut,
}

/// Why a client's bytes are not a valid frame; each fails the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("compressed bit on a control or continuation frame")]
    MisplacedCompression,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("client frame not masked")]
    Unmasked,
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame too long")]
    ControlTooLong,
    #[error("frame length not in its shortest form")]
    NonMinimalLength,
    #[error("frame larger than {0} bytes")]
    TooBig(usize),
}

impl FrameError {
    pub(crate) fn close_code(self) -> u16 {
        match self {
            FrameError::TooBig(_) => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// What [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Frame(ClientFrame),
    /// Not a whole frame yet: the buffer must hold at least this many bytes (in total) before
    /// decoding again can succeed.
    Need(usize),
}

/// Decodes client frames under the session's limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decoder {
    /// The largest data frame payload accepted.
    max_payload: usize,
    /// RSV1 may be set: permessage-deflate was negotiated.
    deflate: bool,
}

impl Decoder {
    pub(crate) fn new(max_payload: usize, deflate: bool) -> Self {
        Self {
            max_payload,
            deflate,
        }
    }

    /// Takes one frame off the front of `buf` if it is all there. Header errors are found as
    /// soon as the header's bytes are in, before any payload is waited for; on an error the
    /// buffer is left as it was (the connection ends anyway).
    pub(crate) fn decode(&self, buf: &mut BytesMut) -> Result<Decoded, FrameError> {
        let Some(&[b0, b1]) = buf.get(..2) else {
            return Ok(Decoded::Need(2));
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !self.deflate) {
            return Err(FrameError::ReservedBits);
        }
        let opcode =
            ClientOpcode::from_bits(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
        if rsv1 && (opcode.is_control() || opcode == ClientOpcode::Continuation) {
            return Err(FrameError::MisplacedCompression);
        }
        if b1 & 0x80 == 0 {
            // RFC 6455 §5.1: the server MUST close the connection on an unmasked frame.
            return Err(FrameError::Unmasked);
        }
        if opcode.is_control() && !fin {
            return Err(FrameError::FragmentedControl);
        }
        let (len, len_bytes) = match b1 & 0x7f {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(Decoded::Need(4));
                };
                let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if len < 126 {
                    return Err(FrameError::NonMinimalLength);
                }
                (len, 2)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(Decoded::Need(10));
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len <= u64::from(u16::MAX) {
                    return Err(FrameError::NonMinimalLength);
                }
                (len, 8)
            }
            n => (u64::from(n), 0),
        };
        let limit = if opcode.is_control() {
            MAX_CONTROL_PAYLOAD
        } else {
            self.max_payload
        };
        // Also refuses a length with the most significant bit set (RFC 6455 §5.2).
        let len = match usize::try_from(len) {
            Ok(len) if len <= limit => len,
            _ if opcode.is_control() => return Err(FrameError::ControlTooLong),
            _ => return Err(FrameError::TooBig(self.max_payload)),
        };
        let header = 2 + len_bytes + 4;
        let total = header + len;
        if buf.len() < total {
            return Ok(Decoded::Need(total));
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header - 4..header]);
        buf.advance(header);
        let mut payload = buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Decoded::Frame(ClientFrame {
            fin,
            compressed: rsv1,
            opcode,
            payload,
        }))
    }
}

/// XORs the payload with the masking key, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the key lines up from its first byte again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Encodes a client frame as a client would (masked), for tests here and elsewhere.
#[cfg(test)]
pub(crate) fn client_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n <= usize::from(u16::MAX) => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            v.extend_from_slice(&key);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

    fn decode_all(d: Decoder, bytes: &[u8]) -> Result<Decoded, FrameError> {
        d.decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn frames_of_every_length_form_decode_and_unmask() {
        let d = Decoder::new(1 << 20, false);
        for len in [0usize, 1, 7, 8, 9, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut buf = BytesMut::from(&client_frame(0x82, &payload, KEY)[..]);
            buf.extend_from_slice(b"next");
            let Ok(Decoded::Frame(f)) = d.decode(&mut buf) else {
                panic!("len {len}")
            };
            assert!(f.fin && !f.compressed);
            assert_eq!(f.opcode, ClientOpcode::Binary);
            assert_eq!(&f.payload[..], &payload[..], "len {len}");
            assert_eq!(&buf[..], b"next", "the rest stays for the next frame");
        }
    }

    #[test]
    fn a_partial_frame_says_how_much_it_needs() {
        let d = Decoder::new(1 << 20, false);
        let frame = client_frame(0x81, &[b'x'; 300], KEY);
        assert_eq!(decode_all(d, &frame[..1]), Ok(Decoded::Need(2)));
        assert_eq!(decode_all(d, &frame[..3]), Ok(Decoded::Need(4)));
        assert_eq!(decode_all(d, &frame[..10]), Ok(Decoded::Need(frame.len())));
        let big = client_frame(0x82, &vec![0; 70_000], KEY);
        assert_eq!(decode_all(d, &big[..5]), Ok(Decoded::Need(10)));
    }

    #[test]
    fn unmasked_client_frames_are_refused() {
        let d = Decoder::new(1024, false);
        let err = decode_all(d, &client_frame(0x81, b"plain", None)).unwrap_err();
        assert_eq!((err, err.close_code()), (FrameError::Unmasked, 1002));
    }

    #[test]
    fn reserved_bits_and_opcodes_are_checked() {
        let plain = Decoder::new(1024, false);
        let deflate = Decoder::new(1024, true);
        for b0 in [0xA1, 0x91] {
            assert_eq!(
                decode_all(deflate, &client_frame(b0, b"x", KEY)),
                Err(FrameError::ReservedBits)
            );
        }
        assert_eq!(
            decode_all(plain, &client_frame(0xC1, b"x", KEY)),
            Err(FrameError::ReservedBits)
        );
        let Ok(Decoded::Frame(f)) = decode_all(deflate, &client_frame(0xC1, b"x", KEY)) else {
            panic!("RSV1 on a text frame with deflate");
        };
        assert!(f.compressed);
        for b0 in [0xC9, 0xC8, 0xC0] {
            assert_eq!(
                decode_all(deflate, &client_frame(b0, b"", KEY)),
                Err(FrameError::MisplacedCompression)
            );
        }
        for op in [3u8, 7, 0xB, 0xF] {
            assert_eq!(
                decode_all(plain, &client_frame(0x80 | op, b"", KEY)),
                Err(FrameError::UnknownOpcode(op))
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        let d = Decoder::new(1024, false);
        assert_eq!(
            decode_all(d, &client_frame(0x09, b"", KEY)),
            Err(FrameError::FragmentedControl)
        );
        assert_eq!(
            decode_all(d, &client_frame(0x89, &[0; 126], KEY)),
            Err(FrameError::ControlTooLong)
        );
        assert!(matches!(
            decode_all(d, &client_frame(0x8A, &[0; 125], KEY)),
            Ok(Decoded::Frame(_))
        ));
    }

    #[test]
    fn lengths_are_checked_before_the_payload_arrives() {
        let d = Decoder::new(1000, false);
        let frame = client_frame(0x82, &[0; 1001], KEY);
        assert_eq!(decode_all(d, &frame[..8]), Err(FrameError::TooBig(1000)));
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode_all(d, &huge), Err(FrameError::TooBig(1000)));
        let mut non_minimal = vec![0x82, 0x80 | 126, 0, 5];
        non_minimal.extend_from_slice(&[0; 9]);
        assert_eq!(
            decode_all(d, &non_minimal),
            Err(FrameError::NonMinimalLength)
        );
        let mut non_minimal = vec![0x82, 0x80 | 127];
        non_minimal.extend_from_slice(&300u64.to_be_bytes());
        assert_eq!(
            decode_all(d, &non_minimal),
            Err(FrameError::NonMinimalLength)
        );
    }
}
