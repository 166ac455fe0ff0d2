//! The read side of a client socket: a buffer that exists only while bytes are waiting in it.
//!
//! Most connections are idle most of the time. When everything read has been decoded, the
//! buffer is dropped, and on a plain socket the next read buffer is allocated only once the
//! kernel has bytes for it (a peek, which consumes nothing). So does a TLS 1.3 WebSocket, whose
//! records `tls::records` opens on the plain socket. A TLS stream still in rustls or an HTTP/2
//! stream cannot be peeked, so it waits in a read with a small buffer ([`Wire::FIRST_READ`]):
//! its bytes come out of a buffer the stream holds anyway, so small reads cost a copy, not a
//! syscall.

use std::{future::Future, io};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, ReadBuf, ReadHalf},
    net::tcp::OwnedReadHalf,
};

use crate::tls::records::RecordReader;

/// The most the first read of a burst reserves (a plain socket's [`Wire::FIRST_READ`]).
pub(crate) const READ_CHUNK: usize = 4096;
/// A large frame's buffer grows by at most this much per read, so a client that announces a
/// large frame and then trickles it pays for the memory with the bytes it sends.
pub(crate) const MAX_GROWTH: usize = 64 << 10;

/// A socket's read half as the reader sees it.
pub(crate) trait Wire: AsyncRead + Unpin + Send {
    /// What the first read of a burst reserves.
    const FIRST_READ: usize;

    /// Waits until a read would not block (data, end of stream or an error, all of which the
    /// next read reports). Cancel-safe and consumes nothing.
    fn readable(&mut self) -> impl Future<Output = ()> + Send;
}

impl Wire for OwnedReadHalf {
    const FIRST_READ: usize = READ_CHUNK;

    async fn readable(&mut self) {
        // A peek rather than `readable()`: readiness can be left over from a read that filled
        // the buffer exactly, and a buffer allocated on it would then sit idle.
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let _ = std::future::poll_fn(|cx| self.poll_peek(cx, &mut probe)).await;
    }
}

impl Wire for RecordReader {
    const FIRST_READ: usize = READ_CHUNK;

    async fn readable(&mut self) {
        if !self.has_buffered() {
            self.socket().readable().await;
        }
    }
}

impl<T: AsyncRead + Send> Wire for ReadHalf<T> {
    /// Held while the session is idle, so small.
    const FIRST_READ: usize = 512;

    async fn readable(&mut self) {}
}

/// A socket's read half and the bytes read from it that are not decoded yet.
pub(crate) struct Reader<W> {
    wire: W,
    buf: BytesMut,
}

impl<W: Wire> Reader<W> {
    /// `early`: what the HTTP server read past the upgrade request (a client may send frames
    /// right behind its handshake); copied, so the server's read buffer is not kept alive.
    pub(crate) fn new(wire: W, early: Bytes) -> Self {
        Self {
            wire,
            buf: BytesMut::from(&early[..]),
        }
    }

    /// The bytes waiting to be decoded.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Reads more, aiming for `need` bytes in the buffer; `Ok(false)` at the end of the stream.
    /// Cancel-safe: nothing read is lost if the future is dropped.
    pub(crate) async fn fill(&mut self, need: usize) -> io::Result<bool> {
        if self.buf.is_empty() {
            // Frames decoded earlier may still hold parts of the old allocation; this handle
            // lets go of it, and an idle session keeps no buffer.
            self.buf = BytesMut::new();
            self.wire.readable().await;
        }
        let want = need
            .saturating_sub(self.buf.len())
            .clamp(W::FIRST_READ, MAX_GROWTH);
        self.buf.reserve(want);
        Ok(self.wire.read_buf(&mut self.buf).await? > 0)
    }

    /// Bytes the buffer holds room for (allocated), for tests of the idle state.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::{
        client::protocol::{ClientProtocol, Step},
        frame::decode::client_frame,
    };

    const KEY: Option<[u8; 4]> = Some([9, 8, 7, 6]);

    async fn pair() -> (OwnedReadHalf, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server.into_split().0, client)
    }

    /// Reads until the protocol gives a step, as the session's reader does.
    async fn step(r: &mut Reader<OwnedReadHalf>, p: &mut ClientProtocol) -> Option<Step> {
        loop {
            match p.next(r.buf()) {
                Ok(s) => return Some(s),
                Err(need) => {
                    let more = tokio::time::timeout(Duration::from_secs(5), r.fill(need))
                        .await
                        .expect("bytes in time")
                        .unwrap();
                    if !more {
                        return None;
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn the_buffer_goes_when_everything_is_decoded() {
        let (read, mut client) = pair().await;
        let mut r = Reader::new(read, Bytes::new());
        let mut p = ClientProtocol::new(1 << 20, false);
        for len in [0usize, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            client
                .write_all(&client_frame(0x82, &payload, KEY))
                .await
                .unwrap();
            let Some(Step::Message(m)) = step(&mut r, &mut p).await else {
                panic!("len {len}");
            };
            assert_eq!(&m.payload[..], &payload[..], "len {len}");
            assert!(r.buf().is_empty());
        }
        // The next wait for bytes lets the buffer go before anything arrives.
        let idle = tokio::time::timeout(Duration::from_millis(100), r.fill(2)).await;
        assert!(idle.is_err(), "nothing to read yet");
        assert_eq!(r.capacity(), 0, "an idle reader holds no buffer");
    }

    #[tokio::test]
    async fn early_bytes_come_first_and_frames_may_straddle() {
        let (read, mut client) = pair().await;
        let mut first = client_frame(0x81, b"early", KEY);
        let second = client_frame(0x81, b"split", KEY);
        first.extend_from_slice(&second[..4]);
        let mut r = Reader::new(read, Bytes::from(first));
        let mut p = ClientProtocol::new(1024, false);
        assert!(
            matches!(step(&mut r, &mut p).await, Some(Step::Message(m)) if &m.payload[..] == b"early")
        );
        client.write_all(&second[4..]).await.unwrap();
        assert!(
            matches!(step(&mut r, &mut p).await, Some(Step::Message(m)) if &m.payload[..] == b"split")
        );
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_seen() {
        let (read, client) = pair().await;
        let mut r = Reader::new(read, Bytes::new());
        let mut p = ClientProtocol::new(1024, false);
        drop(client);
        assert_eq!(step(&mut r, &mut p).await, None);
    }

    #[tokio::test]
    async fn a_trickled_large_frame_grows_the_buffer_with_what_arrives() {
        let (read, mut client) = pair().await;
        let mut r = Reader::new(read, Bytes::new());
        let mut p = ClientProtocol::new(8 << 20, false);
        let frame = client_frame(0x82, &vec![1u8; 4 << 20], KEY);
        // Only the header and a little payload.
        client.write_all(&frame[..1000]).await.unwrap();
        let need = loop {
            match p.next(r.buf()) {
                Err(need) if r.buf().len() >= 1000 => break need,
                Err(need) => assert!(r.fill(need).await.unwrap()),
                Ok(s) => panic!("{s:?}"),
            }
        };
        assert_eq!(need, frame.len());
        assert!(
            r.capacity() <= 2 * MAX_GROWTH,
            "{} bytes reserved",
            r.capacity()
        );
    }
}
