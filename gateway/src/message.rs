//! Client messages: reassembly of fragmented frames under the message size limit, inflation of
//! compressed ones (permessage-deflate), and UTF-8 validation of text, failing fast on the first
//! invalid byte of an uncompressed message.
//!
//! The frame decoder caps one *frame*; a message of many frames is capped here, before the bytes
//! are appended, so a client cannot make the gateway buffer more than the limit. A compressed
//! message is buffered compressed (capped at [`compressed_limit`]) and inflated once complete,
//! under the limit for the inflated size.

use bytes::{Bytes, BytesMut};

use crate::{
    deflate::{self, InflateError},
    frame::close_code,
};

/// The most compressed bytes a message of at most `max` bytes may take: deflate can grow
/// incompressible data by 5 bytes per 16 KiB stored block, plus a little framing.
pub(crate) fn compressed_limit(max: usize) -> usize {
    max.saturating_add(max / 1024).saturating_add(64)
}

/// A message's kind, which decides the frame type it is written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
}

/// A complete message. Text payloads are valid UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub payload: Bytes,
}

impl Message {
    pub(crate) fn len(&self) -> usize {
        self.payload.len()
    }
}

/// Data frames as the reader sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataFrame {
    Text,
    Binary,
    Continuation,
}

/// Why a client's frames cannot form a message; each maps to the close code the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AssemblyError {
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new message started before the previous one finished")]
    ExpectedContinuation,
    #[error("invalid compressed data")]
    BadCompression,
}

impl From<InflateError> for AssemblyError {
    fn from(e: InflateError) -> Self {
        match e {
            InflateError::TooBig(max) => AssemblyError::TooBig(max),
            InflateError::Corrupt => AssemblyError::BadCompression,
        }
    }
}

impl AssemblyError {
    pub(crate) fn close_code(self) -> u16 {
        match self {
            AssemblyError::TooBig(_) => close_code::TOO_BIG,
            AssemblyError::InvalidUtf8 | AssemblyError::BadCompression => {
                close_code::INVALID_PAYLOAD
            }
            AssemblyError::UnexpectedContinuation | AssemblyError::ExpectedContinuation => {
                close_code::PROTOCOL_ERROR
            }
        }
    }
}

/// Reassembles one connection's data frames into messages.
pub(crate) struct Assembler {
    max: usize,
    partial: Option<Partial>,
}

struct Partial {
    kind: Kind,
    /// Holds compressed bytes, inflated once the message is complete.
    compressed: bool,
    buf: BytesMut,
    /// Prefix of `buf` known to be valid UTF-8 (text only), so each byte is checked once.
    utf8_valid: usize,
}

impl Assembler {
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        Self {
            max: max_message_bytes,
            partial: None,
        }
    }

    /// Whether the first frames of a message are buffered.
    #[cfg(test)]
    fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Feeds one data frame; returns a message when `fin` completes one. `compressed` is the
    /// first frame's RSV1 (the decoder refuses it on continuations).
    pub(crate) fn push(
        &mut self,
        frame: DataFrame,
        fin: bool,
        compressed: bool,
        payload: &[u8],
    ) -> Result<Option<Message>, AssemblyError> {
        let kind = match (frame, self.partial.is_some()) {
            (DataFrame::Continuation, false) => return Err(AssemblyError::UnexpectedContinuation),
            (DataFrame::Text | DataFrame::Binary, true) => {
                return Err(AssemblyError::ExpectedContinuation)
            }
            (DataFrame::Continuation, true) => None,
            (DataFrame::Text, false) => Some(Kind::Text),
            (DataFrame::Binary, false) => Some(Kind::Binary),
        };
        if let Some(kind) = kind {
            if compressed {
                return self.start_compressed(kind, fin, payload);
            }
            if payload.len() > self.max {
                return Err(AssemblyError::TooBig(self.max));
            }
            if fin {
                if kind == Kind::Text && std::str::from_utf8(payload).is_err() {
                    return Err(AssemblyError::InvalidUtf8);
                }
                return Ok(Some(Message {
                    kind,
                    payload: Bytes::copy_from_slice(payload),
                }));
            }
            self.partial = Some(Partial {
                kind,
                compressed: false,
                buf: BytesMut::new(),
                utf8_valid: 0,
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            return Err(AssemblyError::UnexpectedContinuation);
        };
        if partial.compressed {
            return self.continue_compressed(fin, payload);
        }
        if partial.buf.len() + payload.len() > self.max {
            return Err(AssemblyError::TooBig(self.max));
        }
        partial.buf.extend_from_slice(payload);
        if partial.kind == Kind::Text {
            match std::str::from_utf8(&partial.buf[partial.utf8_valid..]) {
                Ok(_) => partial.utf8_valid = partial.buf.len(),
                // An error with no length is a character cut by the frame boundary: fine
                // until the last frame.
                Err(e) if e.error_len().is_none() && !fin => partial.utf8_valid += e.valid_up_to(),
                Err(_) => return Err(AssemblyError::InvalidUtf8),
            }
        }
        if !fin {
            return Ok(None);
        }
        let done = self.partial.take();
        Ok(done.map(|p| Message {
            kind: p.kind,
            payload: p.buf.freeze(),
        }))
    }

    fn start_compressed(
        &mut self,
        kind: Kind,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Message>, AssemblyError> {
        if payload.len() > compressed_limit(self.max) {
            return Err(AssemblyError::TooBig(self.max));
        }
        if fin {
            return self.inflated(kind, payload).map(Some);
        }
        self.partial = Some(Partial {
            kind,
            compressed: true,
            buf: BytesMut::from(payload),
            utf8_valid: 0,
        });
        Ok(None)
    }

    fn continue_compressed(
        &mut self,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Message>, AssemblyError> {
        let Some(partial) = self.partial.as_mut() else {
            return Err(AssemblyError::UnexpectedContinuation);
        };
        if partial.buf.len() + payload.len() > compressed_limit(self.max) {
            return Err(AssemblyError::TooBig(self.max));
        }
        partial.buf.extend_from_slice(payload);
        if !fin {
            return Ok(None);
        }
        let Some(p) = self.partial.take() else {
            return Err(AssemblyError::UnexpectedContinuation);
        };
        self.inflated(p.kind, &p.buf).map(Some)
    }

    fn inflated(&self, kind: Kind, compressed: &[u8]) -> Result<Message, AssemblyError> {
        let payload = deflate::inflate(compressed, self.max)?;
        if kind == Kind::Text && std::str::from_utf8(&payload).is_err() {
            return Err(AssemblyError::InvalidUtf8);
        }
        Ok(Message { kind, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frames_pass_through() {
        let mut a = Assembler::new(10);
        let m = a
            .push(DataFrame::Text, true, false, b"hello")
            .unwrap()
            .unwrap();
        assert_eq!((m.kind, &m.payload[..]), (Kind::Text, &b"hello"[..]));
        let m = a
            .push(DataFrame::Binary, true, false, &[0xff])
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, Kind::Binary);
    }

    #[test]
    fn fragments_are_joined() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(DataFrame::Binary, false, false, b"ab").unwrap(),
            None
        );
        assert_eq!(
            a.push(DataFrame::Continuation, false, false, b"cd")
                .unwrap(),
            None
        );
        let m = a
            .push(DataFrame::Continuation, true, false, b"e")
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"abcde");
        assert!(a.partial.is_none());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_buffering() {
        let mut a = Assembler::new(4);
        assert_eq!(
            a.push(DataFrame::Text, true, false, b"12345"),
            Err(AssemblyError::TooBig(4))
        );
        let mut a = Assembler::new(4);
        a.push(DataFrame::Binary, false, false, b"123").unwrap();
        let err = a
            .push(DataFrame::Continuation, true, false, b"45")
            .unwrap_err();
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn utf8_split_across_frames_is_accepted() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        a.push(DataFrame::Text, false, false, &euro[..1]).unwrap();
        a.push(DataFrame::Continuation, false, false, &euro[1..2])
            .unwrap();
        let m = a
            .push(DataFrame::Continuation, true, false, &euro[2..])
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], euro);
    }

    #[test]
    fn invalid_utf8_fails_fast_and_at_the_end() {
        let mut a = Assembler::new(100);
        a.push(DataFrame::Text, false, false, b"ok").unwrap();
        let err = a
            .push(DataFrame::Continuation, false, false, &[0xff])
            .unwrap_err();
        assert_eq!(err.close_code(), 1007);
        let mut a = Assembler::new(100);
        a.push(DataFrame::Text, false, false, &"€".as_bytes()[..2])
            .unwrap();
        let err = a
            .push(DataFrame::Continuation, true, false, b"")
            .unwrap_err();
        assert_eq!(err, AssemblyError::InvalidUtf8);
    }

    #[test]
    fn continuation_rules_are_enforced() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(DataFrame::Continuation, true, false, b"x"),
            Err(AssemblyError::UnexpectedContinuation)
        );
        a.push(DataFrame::Text, false, false, b"x").unwrap();
        assert_eq!(
            a.push(DataFrame::Binary, true, false, b"y")
                .unwrap_err()
                .close_code(),
            1002
        );
    }

    fn deflated(payload: &[u8]) -> Vec<u8> {
        let d = deflate::Deflate {
            server_window_bits: 15,
        };
        deflate::compress(d, 6, payload).unwrap()
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_in_fragments() {
        let text = "héllo wörld ".repeat(50);
        let c = deflated(text.as_bytes());
        let mut a = Assembler::new(1000);
        let m = a.push(DataFrame::Text, true, true, &c).unwrap().unwrap();
        assert_eq!(&m.payload[..], text.as_bytes());
        let (first, rest) = c.split_at(c.len() / 2);
        assert_eq!(a.push(DataFrame::Text, false, true, first).unwrap(), None);
        assert!(a.in_message());
        let m = a
            .push(DataFrame::Continuation, true, false, rest)
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], text.as_bytes());
        assert!(!a.in_message());
        // An uncompressed message may follow a compressed one.
        let m = a
            .push(DataFrame::Binary, true, false, b"raw")
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"raw");
    }

    #[test]
    fn compressed_messages_are_held_to_the_inflated_limit() {
        let c = deflated(&[b'a'; 5000]);
        let mut a = Assembler::new(4999);
        assert_eq!(
            a.push(DataFrame::Binary, true, true, &c),
            Err(AssemblyError::TooBig(4999))
        );
        let mut a = Assembler::new(100);
        let bad = a
            .push(DataFrame::Binary, true, true, &[0xff; 8])
            .unwrap_err();
        assert_eq!(
            (bad, bad.close_code()),
            (AssemblyError::BadCompression, 1007)
        );
        let not_utf8 = deflated(&[0xff; 300]);
        let mut a = Assembler::new(1000);
        assert_eq!(
            a.push(DataFrame::Text, true, true, &not_utf8),
            Err(AssemblyError::InvalidUtf8)
        );
    }
}
