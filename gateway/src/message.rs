//! Client messages: reassembly of fragmented frames under the message size limit, and UTF-8
//! validation of text, failing fast on the first invalid byte.
//!
//! fastwebsockets caps one *frame*; a message of many frames is capped here, before the bytes are
//! appended, so a client cannot make the gateway buffer more than the limit.

use bytes::{Bytes, BytesMut};

use crate::frame::close_code;

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
}

impl AssemblyError {
    pub(crate) fn close_code(self) -> u16 {
        match self {
            AssemblyError::TooBig(_) => close_code::TOO_BIG,
            AssemblyError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
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

    /// Feeds one data frame; returns a message when `fin` completes one.
    pub(crate) fn push(
        &mut self,
        frame: DataFrame,
        fin: bool,
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
                buf: BytesMut::new(),
                utf8_valid: 0,
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            return Err(AssemblyError::UnexpectedContinuation);
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frames_pass_through() {
        let mut a = Assembler::new(10);
        let m = a.push(DataFrame::Text, true, b"hello").unwrap().unwrap();
        assert_eq!((m.kind, &m.payload[..]), (Kind::Text, &b"hello"[..]));
        let m = a.push(DataFrame::Binary, true, &[0xff]).unwrap().unwrap();
        assert_eq!(m.kind, Kind::Binary);
    }

    #[test]
    fn fragments_are_joined() {
        let mut a = Assembler::new(100);
        assert_eq!(a.push(DataFrame::Binary, false, b"ab").unwrap(), None);
        assert_eq!(a.push(DataFrame::Continuation, false, b"cd").unwrap(), None);
        let m = a
            .push(DataFrame::Continuation, true, b"e")
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"abcde");
        assert!(a.partial.is_none());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_buffering() {
        let mut a = Assembler::new(4);
        assert_eq!(
            a.push(DataFrame::Text, true, b"12345"),
            Err(AssemblyError::TooBig(4))
        );
        let mut a = Assembler::new(4);
        a.push(DataFrame::Binary, false, b"123").unwrap();
        let err = a.push(DataFrame::Continuation, true, b"45").unwrap_err();
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn utf8_split_across_frames_is_accepted() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        a.push(DataFrame::Text, false, &euro[..1]).unwrap();
        a.push(DataFrame::Continuation, false, &euro[1..2]).unwrap();
        let m = a
            .push(DataFrame::Continuation, true, &euro[2..])
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], euro);
    }

    #[test]
    fn invalid_utf8_fails_fast_and_at_the_end() {
        let mut a = Assembler::new(100);
        a.push(DataFrame::Text, false, b"ok").unwrap();
        let err = a.push(DataFrame::Continuation, false, &[0xff]).unwrap_err();
        assert_eq!(err.close_code(), 1007);
        let mut a = Assembler::new(100);
        a.push(DataFrame::Text, false, &"€".as_bytes()[..2])
            .unwrap();
        let err = a.push(DataFrame::Continuation, true, b"").unwrap_err();
        assert_eq!(err, AssemblyError::InvalidUtf8);
    }

    #[test]
    fn continuation_rules_are_enforced() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(DataFrame::Continuation, true, b"x"),
            Err(AssemblyError::UnexpectedContinuation)
        );
        a.push(DataFrame::Text, false, b"x").unwrap();
        assert_eq!(
            a.push(DataFrame::Binary, true, b"y")
                .unwrap_err()
                .close_code(),
            1002
        );
    }
}
