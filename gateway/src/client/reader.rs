//! The read side of a plain (non-TLS) client socket, with no WebSocket while the client is idle.
//!
//! fastwebsockets gives every `WebSocket` an 8 KiB read buffer that lives as long as the
//! `WebSocket`, and most connections are idle most of the time. So the reader keeps only the bare
//! socket ([`ReadSide`]) while nothing arrives, and wraps it in a `WebSocket` ([`Flowing`]) once
//! the socket has bytes to read; when every byte handed to fastwebsockets has been returned as
//! frames, its buffer is provably empty and the `WebSocket` is dropped again.
//!
//! "Provably empty" is a byte count: [`ReadSide`] counts what it hands out, [`Flowing`] adds up
//! the wire size of each frame it returns. The wire size is recomputed from the frame with the
//! minimal length encoding, so a client's non-minimal encoding makes the sum fall *short* of what
//! was really consumed: the counts then never match again and the `WebSocket` is simply kept.
//! The sum can never exceed what was consumed, so unread bytes are never dropped.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use fastwebsockets::{Frame, Role, WebSocket, WebSocketError};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::tcp::OwnedReadHalf,
};

/// The socket's read half as fastwebsockets sees it: first the bytes hyper read past the HTTP
/// request (a client may send frames right behind its handshake), then the socket. Every byte it
/// hands out is added to `handed`.
///
/// It is also an `AsyncWrite` because fastwebsockets' `WebSocket` wants one; with auto-close and
/// auto-pong off, `WebSocket::read_frame` never writes (every frame to the client goes through
/// the session's outbound queue), so a write is refused rather than silently dropped.
pub(super) struct ReadSide<'c> {
    half: OwnedReadHalf,
    /// Left over from hyper's read buffer; `Bytes::new()` once used up, so hyper's buffer is
    /// not kept alive.
    prefix: Bytes,
    handed: &'c AtomicU64,
}

impl<'c> ReadSide<'c> {
    pub(super) fn new(half: OwnedReadHalf, prefix: Bytes, handed: &'c AtomicU64) -> Self {
        Self {
            half,
            // Even an empty slice of hyper's read buffer would keep all of it allocated.
            prefix: if prefix.is_empty() {
                Bytes::new()
            } else {
                prefix
            },
            handed,
        }
    }

    /// Waits until there is something to read: data, end of stream or an error (all of which
    /// the next read reports). Cancel-safe: it looks at the socket without consuming anything.
    pub(super) async fn readable(&mut self) {
        if !self.prefix.is_empty() {
            return;
        }
        // A peek rather than `readable()`: readiness can be left over from a read that filled
        // the buffer exactly, and a `WebSocket` built on it would then sit idle with its buffer.
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let _ = std::future::poll_fn(|cx| self.half.poll_peek(cx, &mut probe)).await;
    }
}

impl AsyncRead for ReadSide<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                this.prefix = Bytes::new();
            }
            this.handed.fetch_add(n as u64, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.half).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.handed
                .fetch_add((buf.filled().len() - before) as u64, Relaxed);
        }
        polled
    }
}

impl AsyncWrite for ReadSide<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the reader's WebSocket never writes",
        )))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A `WebSocket` over a [`ReadSide`] while frames are arriving, with the count of bytes its
/// frames took on the wire.
pub(super) struct Flowing<'c> {
    ws: WebSocket<ReadSide<'c>>,
    handed: &'c AtomicU64,
    consumed: u64,
}

impl<'c> Flowing<'c> {
    /// Builds the `WebSocket` (and its read buffer). Called only when nothing read from the
    /// socket is waiting anywhere (the previous `WebSocket` was drained), so the counts restart
    /// from zero.
    pub(super) fn new(side: ReadSide<'c>, max_message_bytes: usize) -> Self {
        let handed = side.handed;
        handed.store(0, Relaxed);
        let mut ws = WebSocket::after_handshake(side, Role::Server);
        // Control frames are answered by the connection (pongs, closes) through the outbound
        // queue; with these off, `read_frame` never writes to the `ReadSide`.
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        // fastwebsockets refuses frames of *at least* this size.
        ws.set_max_message_size(max_message_bytes + 1);
        Self {
            ws,
            handed,
            consumed: 0,
        }
    }

    /// Reads one frame (unmasked). Not cancel-safe, like fastwebsockets' `read_frame`.
    pub(super) async fn read_frame(&mut self) -> Result<Frame<'static>, WebSocketError> {
        let mut frame = self.ws.read_frame().await?;
        self.consumed += wire_len(&mut frame);
        Ok(frame)
    }

    /// Whether every byte read from the socket has been returned as a frame: then the
    /// `WebSocket`'s buffer holds nothing and it can go.
    pub(super) fn drained(&self) -> bool {
        self.consumed == self.handed.load(Relaxed)
    }

    /// Drops the `WebSocket` and its buffer, giving the socket back. Only meaningful once
    /// [`Flowing::drained`]; otherwise unread bytes would be lost.
    pub(super) fn into_idle(self) -> ReadSide<'c> {
        debug_assert!(self.drained());
        self.ws.into_inner()
    }
}

/// The size of a frame on the wire with the shortest length encoding: 2 bytes, plus 2 or 8 for
/// an extended length (payload ≥ 126, ≥ 65,536), plus 4 for a masking key when the frame had one.
fn wire_len(frame: &mut Frame<'_>) -> u64 {
    // `fmt_head` writes the header fastwebsockets would send for this frame (masked when it
    // carried a key, which unmasking keeps) and returns its length.
    let mut head = [0u8; 16];
    let head = frame.fmt_head(&mut head);
    (head + frame.payload.len()) as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fastwebsockets::OpCode;
    use tokio::{
        io::AsyncWriteExt,
        net::{tcp::OwnedWriteHalf, TcpListener, TcpStream},
    };

    use super::*;

    /// A connected pair: the server's halves and the client.
    async fn pair() -> (OwnedReadHalf, OwnedWriteHalf, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (sr, sw) = server.into_split();
        (sr, sw, client)
    }

    /// A client frame, masked or not; `ext` (126 or 127) forces that extended length field.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8], ext: Option<u8>, mask: bool) -> Vec<u8> {
        let mut v = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask { 0x80 } else { 0 };
        match ext {
            None if payload.len() < 126 => v.push(m | payload.len() as u8),
            None if payload.len() < 65536 => {
                v.push(m | 126);
                v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            None => {
                v.push(m | 127);
                v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
            Some(126) => {
                v.push(m | 126);
                v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            Some(_) => {
                v.push(m | 127);
                v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if mask {
            v.extend_from_slice(&key);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            v.extend_from_slice(payload);
        }
        v
    }

    async fn read(f: &mut Flowing<'_>) -> Frame<'static> {
        tokio::time::timeout(Duration::from_secs(5), f.read_frame())
            .await
            .expect("a frame")
            .expect("a valid frame")
    }

    #[tokio::test]
    async fn drained_exactly_when_every_byte_became_a_frame() {
        let (sr, _sw, mut client) = pair().await;
        let handed = AtomicU64::new(0);
        let mut side = ReadSide::new(sr, Bytes::new(), &handed);
        for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            client
                .write_all(&client_frame(0x2, true, &payload, None, true))
                .await
                .unwrap();
            side.readable().await;
            let mut f = Flowing::new(side, 1 << 20);
            let frame = read(&mut f).await;
            assert_eq!(frame.opcode, OpCode::Binary);
            assert_eq!(&frame.payload[..], &payload[..], "len {len}");
            assert!(f.drained(), "len {len}");
            side = f.into_idle();
        }
    }

    #[tokio::test]
    async fn not_drained_while_bytes_wait_in_the_buffer() {
        let (sr, _sw, mut client) = pair().await;
        let handed = AtomicU64::new(0);
        let mut side = ReadSide::new(sr, Bytes::new(), &handed);
        let mut both = client_frame(0x1, true, b"one", None, true);
        both.extend(client_frame(0x1, true, b"two", None, true));
        client.write_all(&both).await.unwrap();
        // Let both frames reach the socket so one read takes them together.
        tokio::time::sleep(Duration::from_millis(50)).await;
        side.readable().await;
        let mut f = Flowing::new(side, 1024);
        assert_eq!(&read(&mut f).await.payload[..], b"one");
        assert!(!f.drained());
        assert_eq!(&read(&mut f).await.payload[..], b"two");
        assert!(f.drained());
    }

    #[tokio::test]
    async fn a_non_minimal_length_is_never_taken_for_drained() {
        let (sr, _sw, mut client) = pair().await;
        let handed = AtomicU64::new(0);
        let side = ReadSide::new(sr, Bytes::new(), &handed);
        let mut both = client_frame(0x1, true, b"short", Some(127), true);
        both.extend(client_frame(0x1, true, b"next", None, true));
        client.write_all(&both).await.unwrap();
        let mut f = Flowing::new(side, 1024);
        assert_eq!(&read(&mut f).await.payload[..], b"short");
        assert!(!f.drained());
        assert_eq!(&read(&mut f).await.payload[..], b"next");
        assert!(!f.drained(), "the count falls short, never over");
    }

    #[tokio::test]
    async fn unmasked_frames_count_without_a_key() {
        let (sr, _sw, mut client) = pair().await;
        let handed = AtomicU64::new(0);
        let side = ReadSide::new(sr, Bytes::new(), &handed);
        client
            .write_all(&client_frame(0x1, true, b"plain", None, false))
            .await
            .unwrap();
        let mut f = Flowing::new(side, 1024);
        assert_eq!(&read(&mut f).await.payload[..], b"plain");
        assert!(f.drained());
    }

    #[tokio::test]
    async fn the_prefix_comes_first_and_counts() {
        let (sr, _sw, mut client) = pair().await;
        let handed = AtomicU64::new(0);
        let mut first = client_frame(0x1, true, b"early", None, true);
        // The prefix ends in the middle of the second frame; the rest comes from the socket.
        let second = client_frame(0x1, false, b"split", None, true);
        first.extend_from_slice(&second[..4]);
        let mut side = ReadSide::new(sr, Bytes::from(first), &handed);
        // Nothing on the socket yet, but the prefix is there to read.
        tokio::time::timeout(Duration::from_secs(5), side.readable())
            .await
            .unwrap();
        let mut f = Flowing::new(side, 1024);
        assert_eq!(&read(&mut f).await.payload[..], b"early");
        assert!(!f.drained());
        client.write_all(&second[4..]).await.unwrap();
        let frame = read(&mut f).await;
        assert!(!frame.fin);
        assert_eq!(&frame.payload[..], b"split");
        assert!(f.drained());
    }

    #[tokio::test]
    async fn readable_waits_for_data_and_sees_the_end() {
        let (sr, _sw, client) = pair().await;
        let handed = AtomicU64::new(0);
        let mut side = ReadSide::new(sr, Bytes::new(), &handed);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), side.readable())
                .await
                .is_err(),
            "nothing to read yet"
        );
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), side.readable())
            .await
            .unwrap();
        let mut f = Flowing::new(side, 1024);
        assert!(matches!(
            f.read_frame().await,
            Err(WebSocketError::UnexpectedEOF)
        ));
    }
}
