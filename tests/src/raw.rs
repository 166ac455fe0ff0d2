//! A raw socket client: hand-made HTTP requests and WebSocket frames, for what a correct
//! library refuses to send (invalid UTF-8, oversized frames, bad opcodes).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::within;

/// Sends one HTTP/1.1 request (with `Connection: close` unless `headers` set `Connection`) and
/// returns (status, body) once the server closes.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    http_request_as(addr, "HTTP/1.1", method, path, headers).await
}

/// [`http_request`] with a body (sent with its `Content-Length`).
pub async fn http_request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let length = body.len().to_string();
    let mut all = headers.to_vec();
    all.push(("Content-Length", &length));
    send_request(addr, "HTTP/1.1", method, path, &all, body).await
}

/// [`http_request`] in another HTTP version (`HTTP/1.0`).
pub async fn http_request_as(
    addr: SocketAddr,
    version: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    send_request(addr, version, method, path, headers, &[]).await
}

async fn send_request(
    addr: SocketAddr,
    version: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = within("HTTP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut req = format!("{method} {path} {version}\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.expect("write request");
    let mut buf = Vec::new();
    within("HTTP response", s.read_to_end(&mut buf))
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A WebSocket connection driven frame by frame.
pub struct RawWs {
    pub stream: TcpStream,
    pub session: String,
    /// The 101 response's head, headers lower-cased as (name, value).
    pub headers: Vec<(String, String)>,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr, hub: &str) -> RawWs {
        let stream = within("raw connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        Self::upgrade(stream, addr, hub).await
    }

    /// Connects with a receive buffer of about `bytes`, so that a client that does not read
    /// fills the gateway's socket after a few KiB rather than a few MiB.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, hub: &str, bytes: u32) -> RawWs {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = within("raw connect", socket.connect(addr))
            .await
            .expect("connect");
        Self::upgrade(stream, addr, hub).await
    }

    async fn upgrade(stream: TcpStream, addr: SocketAddr, hub: &str) -> RawWs {
        Self::upgrade_with(stream, addr, hub, &[]).await
    }

    /// Connects with extra request headers (`Sec-WebSocket-Extensions`, …).
    pub async fn connect_with(addr: SocketAddr, hub: &str, headers: &[(&str, &str)]) -> RawWs {
        let stream = within("raw connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        Self::upgrade_with(stream, addr, hub, headers).await
    }

    /// The value of a header of the 101 response.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    async fn upgrade_with(
        mut stream: TcpStream,
        addr: SocketAddr,
        hub: &str,
        headers: &[(&str, &str)],
    ) -> RawWs {
        let mut req = format!(
            "GET /ws/{hub} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        // Read the response head byte by byte so no frame bytes are swallowed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = within("101 response", stream.read_u8())
                .await
                .expect("read");
            head.push(b);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        let session = headers
            .iter()
            .find(|(k, _)| k == "x-switchboard-session")
            .map(|(_, v)| v.clone())
            .expect("session header");
        RawWs {
            stream,
            session,
            headers,
        }
    }

    /// Sends one masked frame with any opcode, FIN bit and payload.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw((if fin { 0x80 } else { 0 }) | opcode, payload, true)
            .await;
    }

    /// Sends one frame whose first byte (FIN, RSV bits, opcode) is `b0`, masked or not.
    pub async fn send_raw(&mut self, b0: u8, payload: &[u8], masked: bool) {
        let mut f = vec![b0];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= u16::MAX as usize => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let mask = [0x12u8, 0x34, 0x56, 0x78];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        // The gateway may close mid-write when it refuses the frame; that is what tests look for.
        let _ = self.stream.write_all(&f).await;
    }

    /// Reads frames until a close frame; returns its code (1005 for an empty one), or `None`
    /// if the connection ended first.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.read_frame().await?;
            if opcode == 0x8 {
                return Some(if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                });
            }
        }
    }

    /// Reads one (unmasked, server) frame: (opcode, payload), or `None` at end of stream.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (b0, payload) = self.read_frame_head().await?;
        Some((b0 & 0x0f, payload))
    }

    /// Reads one server frame: (its first byte, with FIN and the RSV bits; payload).
    pub async fn read_frame_head(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        within("frame header", self.stream.read_exact(&mut h))
            .await
            .ok()?;
        let len = match h[1] & 0x7f {
            126 => within("len", self.stream.read_u16()).await.ok()? as usize,
            127 => within("len", self.stream.read_u64()).await.ok()? as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        within("payload", self.stream.read_exact(&mut payload))
            .await
            .ok()?;
        Some((h[0], payload))
    }
}
