//! WebSockets over HTTP/2 (RFC 8441) from the test side: one HTTP/2 connection (cleartext, prior
//! knowledge) carrying many WebSocket streams, each opened with an extended CONNECT, with
//! hand-made client frames on them.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use h2::{client::SendRequest, RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;

use crate::within;

/// One HTTP/2 connection to the client port.
pub struct H2Connection {
    send: SendRequest<Bytes>,
}

impl H2Connection {
    /// Connects with the given stream window (what the gateway may send on one stream before
    /// this side reads).
    pub async fn connect(addr: SocketAddr, stream_window: u32) -> H2Connection {
        let tcp = within("h2 connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let (send, conn) = within(
            "h2 handshake",
            h2::client::Builder::new()
                .initial_window_size(stream_window)
                .initial_connection_window_size(16 << 20)
                .handshake::<_, Bytes>(tcp),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let send = within("h2 ready", send.ready()).await.expect("ready");
        H2Connection { send }
    }

    /// Whether the server sent SETTINGS_ENABLE_CONNECT_PROTOCOL.
    pub fn extended_connect(&self) -> bool {
        self.send.is_extended_connect_protocol_enabled()
    }

    /// Sends an extended CONNECT for `path` (`:protocol` = `protocol`, when given) with these
    /// extra headers; returns the response status, its headers and, for a 200, the stream.
    pub async fn connect_ws(
        &mut self,
        path: &str,
        protocol: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Option<H2Ws>) {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("http://gateway{path}"));
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-version"))
        {
            req = req.header("sec-websocket-version", "13");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).expect("request");
        if let Some(p) = protocol {
            req.extensions_mut().insert(h2::ext::Protocol::from(p));
        }
        let mut send = within("h2 stream slot", self.send.clone().ready())
            .await
            .expect("ready");
        let (resp, stream) = send.send_request(req, false).expect("send CONNECT");
        let resp = within("CONNECT response", resp).await.expect("response");
        let (parts, recv) = resp.into_parts();
        let ws = (parts.status == StatusCode::OK).then(|| H2Ws {
            send: stream,
            recv,
            buf: BytesMut::new(),
            session: parts
                .headers
                .get("x-switchboard-session")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        });
        (parts.status, parts.headers, ws)
    }
}

/// One WebSocket on an HTTP/2 stream.
pub struct H2Ws {
    send: SendStream<Bytes>,
    recv: RecvStream,
    buf: BytesMut,
    pub session: String,
}

impl H2Ws {
    /// Sends one masked frame.
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [7u8, 1, 8, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.send.send_data(f.into(), false).expect("send data");
    }

    /// Reads one server frame: (opcode, payload), or `None` when the stream ended. Gives the
    /// bytes' flow-control capacity back, so the gateway may send more.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            let data = within("h2 data", self.recv.data()).await?.ok()?;
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(&data);
        }
    }

    fn take_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(be) as usize, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            return None;
        }
        let opcode = b[0] & 0x0f;
        self.buf.advance(head);
        let payload = self.buf.split_to(len).to_vec();
        Some((opcode, payload))
    }

    /// Reads until a close frame and returns its code (1005 for an empty one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (op, payload) = self.read_frame().await?;
            if op == 0x8 {
                return Some(if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                });
            }
        }
    }
}
