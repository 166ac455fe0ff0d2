//! What a session makes of the bytes its client sends after the handshake, as a pure state
//! machine: frames are decoded, control frames checked, data frames assembled (and inflated)
//! into messages. The reader task feeds it from the socket; the fuzz targets feed it directly.

use bytes::{Bytes, BytesMut};

use crate::{
    frame::{
        self, close_code,
        decode::{ClientOpcode, Decoded, Decoder},
        ClientClose,
    },
    message::{self, Assembler, DataFrame, Message},
};

/// What the session does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A complete client message.
    Message(Message),
    /// A data frame that did not complete its message.
    Fragment,
    /// A ping: answer with a pong carrying this payload.
    Ping(Bytes),
    Pong,
    /// The client's close frame (valid); the session echoes it and ends.
    Close(ClientClose),
    /// The connection must be failed with this close code (RFC 6455 §7.1.7).
    Fail {
        code: u16,
        why: String,
    },
}

/// One connection's inbound protocol state.
pub(crate) struct ClientProtocol {
    decoder: Decoder,
    assembler: Assembler,
    failed: bool,
}

impl ClientProtocol {
    /// `deflate`: permessage-deflate was negotiated, so compressed messages are accepted.
    pub(crate) fn new(max_message_bytes: usize, deflate: bool) -> Self {
        let max_frame = if deflate {
            message::compressed_limit(max_message_bytes)
        } else {
            max_message_bytes
        };
        Self {
            decoder: Decoder::new(max_frame, deflate),
            assembler: Assembler::new(max_message_bytes),
            failed: false,
        }
    }

    /// Takes the next step from the front of `buf`; `Err(n)` when nothing can happen until the
    /// buffer holds `n` bytes. After a [`Step::Fail`] the state machine only fails again.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Step, usize> {
        if self.failed {
            return Ok(Step::Fail {
                code: close_code::PROTOCOL_ERROR,
                why: "connection already failed".into(),
            });
        }
        let step = self.decode(buf)?;
        if matches!(step, Step::Fail { .. }) {
            self.failed = true;
        }
        Ok(step)
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, usize> {
        let frame = match self.decoder.decode(buf) {
            Ok(Decoded::Frame(f)) => f,
            Ok(Decoded::Need(n)) => return Err(n),
            Err(e) => return Ok(fail(e.close_code(), e.to_string())),
        };
        let data = match frame.opcode {
            ClientOpcode::Text => DataFrame::Text,
            ClientOpcode::Binary => DataFrame::Binary,
            ClientOpcode::Continuation => DataFrame::Continuation,
            ClientOpcode::Ping => return Ok(Step::Ping(frame.payload.freeze())),
            ClientOpcode::Pong => return Ok(Step::Pong),
            ClientOpcode::Close => {
                return Ok(match frame::parse_close(&frame.payload) {
                    Some(close) => Step::Close(close),
                    None => fail(close_code::PROTOCOL_ERROR, "invalid close frame".into()),
                })
            }
        };
        match self
            .assembler
            .push(data, frame.fin, frame.compressed, &frame.payload)
        {
            Ok(None) => Ok(Step::Fragment),
            Ok(Some(m)) => Ok(Step::Message(m)),
            Err(e) => Ok(fail(e.close_code(), e.to_string())),
        }
    }
}

fn fail(code: u16, why: String) -> Step {
    Step::Fail { code, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{deflate, frame::decode::client_frame, message::Kind};

    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn steps(p: &mut ClientProtocol, bytes: &[u8]) -> (Vec<Step>, usize) {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match p.next(&mut buf) {
                Ok(s) => {
                    let stop = matches!(s, Step::Fail { .. } | Step::Close(_));
                    out.push(s);
                    if stop {
                        return (out, 0);
                    }
                }
                Err(n) => return (out, n),
            }
        }
    }

    #[test]
    fn control_frames_between_fragments() {
        let mut p = ClientProtocol::new(100, false);
        let mut bytes = client_frame(0x01, b"hel", KEY);
        bytes.extend(client_frame(0x89, b"p", KEY));
        bytes.extend(client_frame(0x8A, b"", KEY));
        bytes.extend(client_frame(0x80, b"lo", KEY));
        bytes.extend(client_frame(0x88, &[0x03, 0xe8, b'b'], KEY));
        let (s, _) = steps(&mut p, &bytes);
        assert_eq!(
            s,
            vec![
                Step::Fragment,
                Step::Ping(Bytes::from_static(b"p")),
                Step::Pong,
                Step::Message(Message {
                    kind: Kind::Text,
                    payload: Bytes::from_static(b"hello")
                }),
                Step::Close(ClientClose {
                    code: 1000,
                    reason: "b".into()
                }),
            ]
        );
    }

    #[test]
    fn a_compressed_message_needs_the_extension() {
        let c = deflate::compress(
            deflate::Deflate {
                server_window_bits: 15,
            },
            6,
            &b"abc".repeat(100),
        )
        .unwrap();
        let frame = client_frame(0xC2, &c, KEY);
        let (s, _) = steps(&mut ClientProtocol::new(1000, true), &frame);
        assert!(matches!(&s[..], [Step::Message(m)] if m.payload.len() == 300));
        let (s, _) = steps(&mut ClientProtocol::new(1000, false), &frame);
        assert!(matches!(&s[..], [Step::Fail { code: 1002, .. }]));
    }

    #[test]
    fn after_a_failure_nothing_more_is_read() {
        let mut p = ClientProtocol::new(100, false);
        let mut bytes = client_frame(0x81, b"x", None);
        bytes.extend(client_frame(0x81, b"y", KEY));
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(
            p.next(&mut buf),
            Ok(Step::Fail { code: 1002, .. })
        ));
        assert!(matches!(p.next(&mut buf), Ok(Step::Fail { .. })));
    }

    #[test]
    fn a_short_buffer_names_what_it_needs() {
        let mut p = ClientProtocol::new(100, false);
        let frame = client_frame(0x82, &[7; 50], KEY);
        let (s, need) = steps(&mut p, &frame[..20]);
        assert!(s.is_empty());
        assert_eq!(need, frame.len());
    }
}
