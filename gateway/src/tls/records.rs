//! TLS 1.3 records of an upgraded WebSocket, sealed and opened here rather than by rustls.
//!
//! rustls keeps a receive buffer (4 KiB once anything was read) and its connection state for as
//! long as a connection lives, so an idle WebSocket over TLS costs several times a plain one.
//! Once a TLS 1.3 connection has been upgraded, its traffic keys are taken out of rustls (the
//! hand-over kernel TLS uses) and the records are protected here with ring's AEADs, as RFC 8446
//! §5.2–5.4 describe: an idle session keeps its two keys, the plain socket's idle read side
//! and no buffer.
//!
//! Limits, both documented: a key update from the client ends the connection (rustls hands
//! over keys, not the secrets new ones derive from; browsers do not send one), and a client
//! that sends frames before the 101 (RFC 6455 §4.1 forbids it) may have a record cut in two
//! inside rustls, which fails authentication here and closes the connection.

use std::{
    io::{self, IoSlice, Read},
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

const HEADER: usize = 5;
const TAG: usize = 16;
/// The largest plaintext of one record (§5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest protected record body a peer may send: plaintext, content type, padding and
/// tag (§5.2).
const MAX_BODY: usize = MAX_PLAINTEXT + 256;
/// What one write seals at most before the socket must take it.
const MAX_SEALED: usize = 4 * MAX_PLAINTEXT;
/// The first read of a burst.
const READ_CHUNK: usize = 4096;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// The alert a peer ends its side with (§6.1).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// One direction's key, IV and record count. The key is kept as its bytes and expanded for
/// each use (a microsecond or less): the expanded form is half a KiB, which an idle session
/// would otherwise hold in each direction.
struct Keys {
    alg: &'static aead::Algorithm,
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<Keys> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return None,
        };
        let mut bytes = [0u8; 32];
        bytes
            .get_mut(..alg.key_len())?
            .copy_from_slice(key.as_ref().get(..alg.key_len())?);
        // Checked once here, so that `expand` cannot fail later.
        UnboundKey::new(alg, &bytes[..alg.key_len()]).ok()?;
        Some(Keys {
            alg,
            key: bytes,
            iv: iv.as_ref().try_into().ok()?,
            seq,
        })
    }

    fn expand(&self) -> io::Result<LessSafeKey> {
        UnboundKey::new(self.alg, &self.key[..self.alg.key_len()])
            .map(LessSafeKey::new)
            .map_err(|_| invalid("a TLS key of the wrong length"))
    }

    /// The next record's nonce: the record count, left-padded, XORed into the IV (§5.3).
    fn nonce(&mut self) -> io::Result<Nonce> {
        // The count never wraps: a nonce used twice breaks the AEAD.
        if self.seq == u64::MAX {
            return Err(invalid("record count exhausted"));
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Appends one record of content type `kind` whose plaintext starts at `start` in `out`
    /// (written there by the caller, after a 5-byte placeholder for the header), with `key`
    /// (this direction's, expanded).
    fn seal_from(
        &mut self,
        key: &LessSafeKey,
        kind: u8,
        start: usize,
        out: &mut BytesMut,
    ) -> io::Result<()> {
        out.put_u8(kind);
        let len = out.len() - start + TAG;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, (len & 0xff) as u8];
        out[start - HEADER..start].copy_from_slice(&header);
        let nonce = self.nonce()?;
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
            .map_err(|_| invalid("sealing a record failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens `record` (header and body) in place: its content type and the length of its
    /// plaintext, which starts after the header.
    fn open(&mut self, record: &mut [u8]) -> io::Result<(u8, usize)> {
        let (header, body) = record.split_at_mut(HEADER);
        let aad: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
        let key = self.expand()?;
        let nonce = self.nonce()?;
        let plain = key
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| invalid("a TLS record failed authentication"))?;
        // Zero padding follows the content type (§5.4).
        let end = plain
            .iter()
            .rposition(|b| *b != 0)
            .ok_or_else(|| invalid("a TLS record without a content type"))?;
        Ok((plain[end], end))
    }
}

/// An upgraded TLS connection, taken apart.
pub(crate) enum Taken {
    /// TLS 1.3, out of rustls: the read and write sides, and the plaintext already read past
    /// the upgrade request.
    Records(Box<RecordReader>, Box<RecordWriter>, Bytes),
    /// Anything else stays with rustls (with the plaintext read past the request).
    Rustls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Bytes),
}

/// Takes an upgraded TLS connection apart; anything that is not one comes back untouched.
pub(crate) fn take_over(upgraded: Upgraded) -> Result<io::Result<Taken>, Upgraded> {
    type Tls = TokioIo<tokio_rustls::server::TlsStream<TcpStream>>;
    let parts = upgraded.downcast::<Tls>()?;
    let stream = parts.io.into_inner();
    let conn = stream.get_ref().1;
    // Extraction also needs every record rustls owes the peer sent (the 101 is flushed before
    // the upgrade completes).
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) || conn.wants_write() {
        return Ok(Ok(Taken::Rustls(Box::new(stream), parts.read_buf)));
    }
    let (tcp, mut conn) = stream.into_inner();
    // Plaintext rustls opened and the HTTP server did not read comes after what it did read.
    let mut early = BytesMut::from(&parts.read_buf[..]);
    let mut chunk = [0u8; 1024];
    while let Ok(n) = conn.reader().read(&mut chunk) {
        if n == 0 {
            break;
        }
        early.extend_from_slice(&chunk[..n]);
    }
    let secrets = match conn.dangerous_extract_secrets() {
        Ok(s) => s,
        Err(e) => return Ok(Err(io::Error::other(e))),
    };
    let (Some(rx), Some(tx)) = (
        Keys::new(secrets.rx.0, secrets.rx.1),
        Keys::new(secrets.tx.0, secrets.tx.1),
    ) else {
        return Ok(Err(invalid(
            "a cipher suite without record protection here",
        )));
    };
    let (read, write) = tcp.into_split();
    Ok(Ok(Taken::Records(
        Box::new(RecordReader {
            tcp: read,
            keys: rx,
            raw: BytesMut::new(),
            plain: Bytes::new(),
            ended: false,
        }),
        Box::new(RecordWriter {
            tcp: write,
            keys: tx,
            sealed: BytesMut::new(),
            notified: false,
        }),
        early.freeze(),
    )))
}

/// The read side: opens records as they arrive; holds no buffer between bursts.
pub(crate) struct RecordReader {
    tcp: OwnedReadHalf,
    keys: Keys,
    /// Bytes read and not a whole record yet.
    raw: BytesMut,
    /// Plaintext opened and not read yet.
    plain: Bytes,
    /// The peer sent close_notify: the stream has ended.
    ended: bool,
}

impl RecordReader {
    /// Whether bytes wait here, so the next read does not need the socket.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.plain.is_empty() || !self.raw.is_empty() || self.ended
    }

    pub(crate) fn socket(&mut self) -> &mut OwnedReadHalf {
        &mut self.tcp
    }

    /// Opens the next whole record in `raw`; `Ok(Err(need))` when there is none yet, `need`
    /// being how many bytes `raw` must hold for the next step.
    fn open_next(&mut self) -> io::Result<Result<(), usize>> {
        if self.raw.len() < HEADER {
            return Ok(Err(HEADER));
        }
        if self.raw[..3] != [APPLICATION_DATA, 3, 3] {
            return Err(invalid("not a TLS 1.3 record"));
        }
        let len = usize::from(u16::from_be_bytes([self.raw[3], self.raw[4]]));
        if !(TAG + 1..=MAX_BODY).contains(&len) {
            return Err(invalid("a TLS record of a length out of bounds"));
        }
        if self.raw.len() < HEADER + len {
            return Ok(Err(HEADER + len));
        }
        let mut record = self.raw.split_to(HEADER + len);
        if self.raw.is_empty() {
            self.raw = BytesMut::new();
        }
        let (kind, plain) = self.keys.open(&mut record)?;
        match kind {
            APPLICATION_DATA => {
                record.advance(HEADER);
                record.truncate(plain);
                self.plain = record.freeze();
                Ok(Ok(()))
            }
            ALERT if record[HEADER..HEADER + plain] == CLOSE_NOTIFY => {
                self.ended = true;
                Ok(Ok(()))
            }
            ALERT => Err(invalid("the client sent a TLS alert")),
            HANDSHAKE => Err(invalid(
                "a TLS handshake message after the upgrade (a key update) is not supported",
            )),
            _ => Err(invalid("a TLS record of an unexpected content type")),
        }
    }
}

impl AsyncRead for RecordReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() {
                    // An empty view still holds the record's allocation.
                    this.plain = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let need = match this.open_next()? {
                Ok(()) => continue,
                Err(need) => need,
            };
            this.raw
                .reserve((need - this.raw.len()).max(READ_CHUNK.min(HEADER + MAX_BODY)));
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.tcp),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                if this.raw.is_empty() {
                    // The connection ended between records without close_notify: an end
                    // like a plain socket's.
                    this.ended = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// The write side: seals what it is given into records and writes them; holds no buffer once
/// they are out.
pub(crate) struct RecordWriter {
    tcp: OwnedWriteHalf,
    keys: Keys,
    /// Records sealed and not written yet.
    sealed: BytesMut,
    /// close_notify is sealed (or out).
    notified: bool,
}

impl RecordWriter {
    /// Writes what is sealed; ready once all of it is out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.sealed.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.sealed))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed.advance(n);
        }
        self.sealed = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Seals up to [`MAX_SEALED`] bytes of `bufs` as records of application data; how many.
    fn seal(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(MAX_SEALED);
        let records = total.div_ceil(MAX_PLAINTEXT);
        self.sealed.reserve(total + records * (HEADER + 1 + TAG));
        if total == 0 {
            return Ok(0);
        }
        let key = self.keys.expand()?;
        let mut slices = bufs.iter().map(|b| &b[..]).filter(|b| !b.is_empty());
        let mut current: &[u8] = &[];
        let mut taken = 0;
        while taken < total {
            self.sealed.put_bytes(0, HEADER);
            let start = self.sealed.len();
            let mut room = MAX_PLAINTEXT.min(total - taken);
            while room > 0 {
                if current.is_empty() {
                    match slices.next() {
                        Some(s) => current = s,
                        None => break,
                    }
                }
                let n = room.min(current.len());
                self.sealed.extend_from_slice(&current[..n]);
                current = &current[n..];
                room -= n;
                taken += n;
            }
            self.keys
                .seal_from(&key, APPLICATION_DATA, start, &mut self.sealed)?;
        }
        Ok(taken)
    }
}

impl AsyncWrite for RecordWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was sealed before goes out first: at most one write's worth waits here.
        ready!(this.poll_drain(cx))?;
        let n = this.seal(bufs)?;
        // Taken either way; a socket without room now gets the rest on the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.notified {
            this.notified = true;
            this.sealed.put_bytes(0, HEADER);
            let start = this.sealed.len();
            this.sealed.extend_from_slice(&CLOSE_NOTIFY);
            let key = this.keys.expand()?;
            this.keys.seal_from(&key, ALERT, start, &mut this.sealed)?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::cipher::{AeadKey, Iv};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    fn secrets(kind: u8) -> ConnectionTrafficSecrets {
        let key = AeadKey::from([7u8; 32]);
        let iv = Iv::new([9u8; 12]);
        match kind {
            0 => ConnectionTrafficSecrets::Aes128Gcm { key, iv },
            1 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        }
    }

    /// A writer and, over a real TCP connection, the reader with the same keys.
    async fn pair(kind: u8) -> (RecordWriter, RecordReader) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let writer = RecordWriter {
            tcp: client.into_split().1,
            keys: Keys::new(5, secrets(kind)).unwrap(),
            sealed: BytesMut::new(),
            notified: false,
        };
        let reader = RecordReader {
            tcp: server.into_split().0,
            keys: Keys::new(5, secrets(kind)).unwrap(),
            raw: BytesMut::new(),
            plain: Bytes::new(),
            ended: false,
        };
        (writer, reader)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn records_of_every_size_arrive_intact_and_neither_side_keeps_a_buffer() {
        // Around one record's plaintext, and past what one write seals.
        let sizes = [
            0,
            1,
            100,
            MAX_PLAINTEXT - 1,
            MAX_PLAINTEXT,
            MAX_PLAINTEXT + 1,
            MAX_SEALED + 3,
            3 * MAX_SEALED + 17,
        ];
        for kind in 0..3 {
            let (mut w, mut r) = pair(kind).await;
            for len in sizes {
                let sent = payload(len);
                // Vectored, in pieces that do not line up with records.
                let (a, b) = sent.split_at(len / 3);
                let reading = async {
                    let mut got = vec![0u8; len];
                    r.read_exact(&mut got).await.unwrap();
                    got
                };
                let writing = async {
                    let mut parts = [IoSlice::new(a), IoSlice::new(b)];
                    let mut rest = &mut parts[..];
                    while !rest.is_empty() {
                        let n = w.write_vectored(rest).await.unwrap();
                        IoSlice::advance_slices(&mut rest, n);
                    }
                    w.flush().await.unwrap();
                };
                let (got, ()) = tokio::join!(reading, writing);
                assert!(got == sent, "kind {kind}, {len} bytes");
                assert_eq!(w.sealed.capacity(), 0, "the writer keeps no buffer");
                assert!(!r.has_buffered(), "nothing left over");
                assert_eq!(r.raw.capacity(), 0, "the reader keeps no buffer");
            }
            // close_notify ends the stream in order.
            w.shutdown().await.unwrap();
            let mut rest = Vec::new();
            assert_eq!(r.read_to_end(&mut rest).await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn a_tampered_record_fails_and_so_does_a_key_update() {
        let (mut w, mut r) = pair(0).await;
        w.write_all(b"hello").await.unwrap();
        w.flush().await.unwrap();
        let mut got = [0u8; 5];
        r.read_exact(&mut got).await.unwrap();
        // One flipped bit in the next record.
        w.seal(&[IoSlice::new(b"again")]).unwrap();
        let last = w.sealed.len() - 1;
        w.sealed[last] ^= 1;
        w.flush().await.unwrap();
        let e = r.read(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        let (mut w, mut r) = pair(2).await;
        // A KeyUpdate (handshake type 24) after the upgrade.
        w.sealed.put_bytes(0, HEADER);
        let start = w.sealed.len();
        w.sealed.extend_from_slice(&[24, 0, 0, 1, 0]);
        let key = w.keys.expand().unwrap();
        w.keys
            .seal_from(&key, HANDSHAKE, start, &mut w.sealed)
            .unwrap();
        w.flush().await.unwrap();
        let e = r.read(&mut got).await.unwrap_err();
        assert!(e.to_string().contains("key update"), "{e}");
    }

    #[tokio::test]
    async fn a_record_announced_too_long_or_cut_short_is_refused() {
        let (mut w, mut r) = pair(1).await;
        let len = (MAX_BODY + 1) as u16;
        let mut header = vec![APPLICATION_DATA, 3, 3];
        header.extend_from_slice(&len.to_be_bytes());
        w.tcp.write_all(&header).await.unwrap();
        let mut got = [0u8; 1];
        let e = r.read(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        let (mut w, mut r) = pair(1).await;
        w.seal(&[IoSlice::new(b"cut")]).unwrap();
        let half = w.sealed.len() / 2;
        w.tcp.write_all(&w.sealed[..half]).await.unwrap();
        w.tcp.shutdown().await.unwrap();
        let e = r.read(&mut got).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
