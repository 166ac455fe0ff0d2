//! A lean WebSocket client's wire format: the upgrade request, the 101 check, an incremental
//! parser of server frames that keeps only a message's first bytes, and masked control frames.
//!
//! A client socket holds one [`Parser`] (about 100 bytes) and reads into a buffer shared by
//! every socket of the thread, so an idle socket costs no read buffer. With permessage-deflate
//! negotiated, a compressed message is buffered (compressed) until its last frame and inflated
//! with a per-thread zlib state, so again nothing stays allocated between messages.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress};

use base64::Engine;
use sha1::{Digest as _, Sha1};

use crate::payload::{Digest, PREFIX};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Key` for socket `index` (no secrecy is needed for a load generator).
pub fn key_for(index: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&index.to_le_bytes());
    raw[8..].copy_from_slice(&0x5eed_5eed_5eed_5eedu64.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The permessage-deflate offer a browser makes.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The HTTP/1.1 upgrade request; `deflate` offers permessage-deflate as browsers do.
pub fn upgrade_request(host: &str, path: &str, key: &str, deflate: bool) -> String {
    let ext = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
}

/// What a 101 response said.
#[derive(Debug)]
pub struct Upgraded {
    /// `x-switchboard-session`, when the server is Switchboard.
    pub session: Option<String>,
    /// Bytes after the response head: the first frames.
    pub head_len: usize,
    /// The server agreed to permessage-deflate.
    pub deflate: bool,
}

/// Checks a complete response head (`buf` holds at least up to `\r\n\r\n`). `Ok(None)` while
/// the head is incomplete.
pub fn parse_upgrade_response(buf: &[u8], key: &str) -> anyhow::Result<Option<Upgraded>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        anyhow::ensure!(buf.len() < 16 * 1024, "response head too long");
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("101"),
        "upgrade refused: {status}"
    );
    let mut session = None;
    let mut accept = None;
    let mut deflate = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("x-switchboard-session") {
                session = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("sec-websocket-extensions") {
                deflate |= v.trim_start().starts_with("permessage-deflate");
            }
        }
    }
    anyhow::ensure!(
        accept.as_deref() == Some(accept_for(key).as_str()),
        "bad Sec-WebSocket-Accept"
    );
    Ok(Some(Upgraded {
        session,
        head_len: end + 4,
        deflate,
    }))
}

/// A masked client frame with a payload of at most 125 bytes.
pub fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let n = payload.len().min(125);
    let mut f = Vec::with_capacity(6 + n);
    f.push(0x80 | opcode);
    f.push(0x80 | n as u8);
    f.extend_from_slice(&mask);
    f.extend(
        payload[..n]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    f
}

/// A close frame with a status code.
pub fn close_frame(code: u16, mask: [u8; 4]) -> Vec<u8> {
    masked_frame(0x8, &code.to_be_bytes(), mask)
}

/// What the parser found in the bytes it was fed.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message: opcode of its first frame (1 text, 2 binary), its first bytes
    /// (up to [`PREFIX`]), its total length and the digest of all its bytes.
    Message {
        opcode: u8,
        prefix: &'a [u8],
        len: u64,
        digest: Digest,
    },
    /// A ping to answer with a pong carrying this payload.
    Ping(&'a [u8]),
    /// The server's close frame (1005 when it carried no code).
    Close(u16),
}

/// Incremental parser of server (unmasked) frames. It keeps a message's first [`PREFIX`]
/// bytes and a control frame's payload, and skips everything else.
pub struct Parser {
    hdr: [u8; 14],
    hdr_have: u8,
    /// Payload bytes of the current frame still to come; meaningful when `in_payload`.
    remaining: u64,
    in_payload: bool,
    opcode: u8,
    fin: bool,
    /// Opcode of the message being assembled (0: none).
    msg_opcode: u8,
    msg_len: u64,
    prefix: [u8; PREFIX],
    digest: Digest,
    prefix_have: u8,
    ctrl: [u8; 125],
    ctrl_have: u8,
    /// permessage-deflate was negotiated: RSV1 may start a message.
    deflate: bool,
    /// The compressed bytes of the message being assembled, when it is compressed.
    compressed: Option<Vec<u8>>,
}

/// The most compressed bytes one message may have (a bound on the buffer, not a test limit).
const MAX_COMPRESSED: usize = 64 << 20;

thread_local! {
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates a permessage-deflate message; `None` when it is not valid deflate data.
pub fn inflate(compressed: &[u8]) -> Option<Vec<u8>> {
    INFLATER.with(|cell| {
        let mut d = cell.borrow_mut();
        d.reset(false);
        let mut input = Vec::with_capacity(compressed.len() + 4);
        input.extend_from_slice(compressed);
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        loop {
            let taken = d.total_in() as usize;
            let before = out.len();
            d.decompress_vec(&input[taken..], &mut out, FlushDecompress::Sync)
                .ok()?;
            if d.total_in() as usize == input.len() && out.len() < out.capacity() {
                return Some(out);
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            } else if out.len() == before && d.total_in() as usize == taken {
                return None;
            }
        }
    })
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            hdr: [0; 14],
            hdr_have: 0,
            remaining: 0,
            in_payload: false,
            opcode: 0,
            fin: false,
            msg_opcode: 0,
            msg_len: 0,
            prefix: [0; PREFIX],
            digest: Digest::default(),
            prefix_have: 0,
            ctrl: [0; 125],
            ctrl_have: 0,
            deflate: false,
            compressed: None,
        }
    }

    /// Accept compressed messages (the server agreed to permessage-deflate).
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    /// Header length once the first two bytes are known.
    fn header_len(&self) -> usize {
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Feeds bytes; calls `on` for each event. Errors on a protocol violation.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on: impl FnMut(Event<'_>),
    ) -> Result<(), &'static str> {
        while !data.is_empty() || (self.in_payload && self.remaining == 0) {
            if !self.in_payload {
                // Collect the header.
                let need = if self.hdr_have < 2 {
                    2
                } else {
                    self.header_len()
                };
                let take = (need - self.hdr_have as usize).min(data.len());
                self.hdr[self.hdr_have as usize..self.hdr_have as usize + take]
                    .copy_from_slice(&data[..take]);
                self.hdr_have += take as u8;
                data = &data[take..];
                if (self.hdr_have as usize) < need {
                    continue;
                }
                if self.hdr_have == 2 && self.header_len() > 2 {
                    continue;
                }
                self.start_frame()?;
                continue;
            }
            // Payload bytes of the current frame.
            let take = (self.remaining.min(data.len() as u64)) as usize;
            let chunk = &data[..take];
            data = &data[take..];
            self.remaining -= take as u64;
            if self.opcode >= 8 {
                let at = self.ctrl_have as usize;
                self.ctrl[at..at + take].copy_from_slice(chunk);
                self.ctrl_have += take as u8;
            } else if let Some(buf) = self.compressed.as_mut() {
                if buf.len() + take > MAX_COMPRESSED {
                    return Err("compressed message too large");
                }
                buf.extend_from_slice(chunk);
            } else {
                let at = self.prefix_have as usize;
                let keep = (PREFIX - at).min(take);
                self.prefix[at..at + keep].copy_from_slice(&chunk[..keep]);
                self.prefix_have += keep as u8;
                self.digest.update(chunk);
            }
            if self.remaining == 0 {
                self.end_frame(&mut on)?;
            }
        }
        Ok(())
    }

    fn start_frame(&mut self) -> Result<(), &'static str> {
        let b0 = self.hdr[0];
        let b1 = self.hdr[1];
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !self.deflate) {
            return Err("reserved bits set");
        }
        if rsv1 && !matches!(b0 & 0x0f, 1 | 2) {
            return Err("RSV1 on a control or continuation frame");
        }
        if b1 & 0x80 != 0 {
            return Err("server frame is masked");
        }
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0f;
        let len = match b1 & 0x7f {
            126 => u16::from_be_bytes([self.hdr[2], self.hdr[3]]) as u64,
            127 => u64::from_be_bytes(self.hdr[2..10].try_into().expect("8 bytes")),
            n => n as u64,
        };
        match self.opcode {
            0 if self.msg_opcode == 0 => return Err("continuation without a message"),
            1 | 2 if self.msg_opcode != 0 => return Err("new message inside a fragmented one"),
            1 | 2 => {
                self.msg_opcode = self.opcode;
                self.msg_len = 0;
                self.prefix_have = 0;
                self.digest = Digest::default();
                self.compressed = rsv1.then(Vec::new);
            }
            0 => {}
            8..=10 => {
                if len > 125 || !self.fin {
                    return Err("bad control frame");
                }
                self.ctrl_have = 0;
            }
            _ => return Err("unknown opcode"),
        }
        if self.opcode < 8 {
            self.msg_len += len;
        }
        self.remaining = len;
        self.in_payload = true;
        self.hdr_have = 0;
        Ok(())
    }

    fn end_frame(&mut self, on: &mut impl FnMut(Event<'_>)) -> Result<(), &'static str> {
        self.in_payload = false;
        match self.opcode {
            8 => {
                let p = &self.ctrl[..self.ctrl_have as usize];
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                on(Event::Close(code));
            }
            9 => on(Event::Ping(&self.ctrl[..self.ctrl_have as usize])),
            10 => {}
            _ if self.fin => {
                let opcode = self.msg_opcode;
                self.msg_opcode = 0;
                if let Some(compressed) = self.compressed.take() {
                    let message = inflate(&compressed).ok_or("invalid compressed message")?;
                    let keep = message.len().min(PREFIX);
                    on(Event::Message {
                        opcode,
                        prefix: &message[..keep],
                        len: message.len() as u64,
                        digest: Digest::of(&message),
                    });
                    return Ok(());
                }
                on(Event::Message {
                    opcode,
                    prefix: &self.prefix[..self.prefix_have as usize],
                    len: self.msg_len,
                    digest: self.digest,
                });
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 65535 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Msg(u8, Vec<u8>, u64, Digest),
        Ping(Vec<u8>),
        Close(u16),
    }

    fn run(bytes: &[u8], chunk: usize) -> Vec<Owned> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            p.feed(c, |e| {
                out.push(match e {
                    Event::Message {
                        opcode,
                        prefix,
                        len,
                        digest,
                    } => Owned::Msg(opcode, prefix.to_vec(), len, digest),
                    Event::Ping(p) => Owned::Ping(p.to_vec()),
                    Event::Close(c) => Owned::Close(c),
                })
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn parses_in_any_chunking() {
        let big = vec![7u8; 70_000];
        let mid = vec![9u8; 300];
        let mut bytes = frame(true, 1, b"hello");
        bytes.extend(frame(true, 2, &big));
        bytes.extend(frame(true, 9, b"pp"));
        bytes.extend(frame(false, 1, &mid[..10]));
        bytes.extend(frame(true, 10, b""));
        bytes.extend(frame(false, 0, &mid[10..100]));
        bytes.extend(frame(true, 0, &mid[100..]));
        bytes.extend(frame(true, 2, b""));
        bytes.extend(frame(true, 8, &1000u16.to_be_bytes()));
        let want = vec![
            Owned::Msg(1, b"hello".to_vec(), 5, Digest::of(b"hello")),
            Owned::Msg(2, vec![7u8; PREFIX], 70_000, Digest::of(&big)),
            Owned::Ping(b"pp".to_vec()),
            Owned::Msg(1, vec![9u8; PREFIX], 300, Digest::of(&mid)),
            Owned::Msg(2, vec![], 0, Digest::of(b"")),
            Owned::Close(1000),
        ];
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(run(&bytes, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn compressed_messages_are_inflated_in_any_chunking() {
        let text = br#"{"seq":1,"data":"abcabcabcabcabcabcabcabcabcabcabcabcabcabc"}"#.repeat(20);
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut z = Vec::with_capacity(text.len() + 64);
        c.compress_vec(&text, &mut z, flate2::FlushCompress::Sync)
            .unwrap();
        z.truncate(z.len() - 4);
        let mut bytes = frame(false, 0x41, &z[..10]);
        bytes.extend(frame(true, 0, &z[10..]));
        bytes.extend(frame(true, 1, b"plain"));
        for chunk in [1, 3, 64, 1 << 20] {
            let mut p = Parser::new();
            p.set_deflate(true);
            let mut out = Vec::new();
            for c in bytes.chunks(chunk) {
                p.feed(c, |e| {
                    if let Event::Message {
                        prefix,
                        len,
                        digest,
                        ..
                    } = e
                    {
                        out.push((prefix.to_vec(), len, digest));
                    }
                })
                .unwrap();
            }
            assert_eq!(
                out,
                vec![
                    (
                        text[..PREFIX].to_vec(),
                        text.len() as u64,
                        Digest::of(&text)
                    ),
                    (b"plain".to_vec(), 5, Digest::of(b"plain"))
                ],
                "chunk {chunk}"
            );
        }
        let mut p = Parser::new();
        assert!(
            p.feed(&frame(true, 0x41, &z), |_| {}).is_err(),
            "RSV1 without the extension"
        );
    }

    #[test]
    fn accept_matches_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
