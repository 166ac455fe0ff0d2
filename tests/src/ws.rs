//! A well-behaved WebSocket client (tokio-tungstenite): an independent implementation, so the
//! gateway is checked against someone else's reading of RFC 6455.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{self, client::IntoClientRequest, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::within;

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub id: String,
    pub ws: Stream,
    pub subprotocol: Option<String>,
}

/// What a client saw next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Close(u16, String),
    /// The connection ended without a close frame.
    Eof,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(url, &[]).await
    }

    /// Connects with extra request headers; panics if the upgrade is refused.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Client {
        match Self::try_connect(url, headers).await {
            Ok(c) => c,
            Err(e) => panic!("upgrade to {url} failed: {e}"),
        }
    }

    /// Connects over TLS (wss://), trusting only `ca_pem`.
    pub async fn connect_tls(url: &str, ca_pem: &str) -> Result<Client, tungstenite::Error> {
        Self::connect_tls_versions(url, ca_pem, rustls::DEFAULT_VERSIONS).await
    }

    /// Connects over TLS offering only `versions`.
    pub async fn connect_tls_versions(
        url: &str,
        ca_pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Client, tungstenite::Error> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA cert");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(config));
        let req = url.into_client_request()?;
        let (ws, resp) = within(
            "wss connect",
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)),
        )
        .await?;
        Ok(Self::from_parts(ws, &resp))
    }

    fn from_parts(ws: Stream, resp: &tungstenite::handshake::client::Response) -> Client {
        let id = resp
            .headers()
            .get("x-switchboard-session")
            .and_then(|v| v.to_str().ok())
            // A refused resume completes its handshake without a session.
            .unwrap_or_default()
            .to_owned();
        let subprotocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Client {
            id,
            ws,
            subprotocol,
        }
    }

    pub async fn try_connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, resp) = within("WebSocket connect", tokio_tungstenite::connect_async(req)).await?;
        Ok(Self::from_parts(ws, &resp))
    }

    /// The next data frame or close, skipping pings and pongs.
    pub async fn next(&mut self) -> Seen {
        loop {
            match within("a frame from the gateway", self.ws.next()).await {
                None => return Seen::Eof,
                Some(Err(_)) => return Seen::Eof,
                Some(Ok(Message::Text(t))) => return Seen::Text(t.to_string()),
                Some(Ok(Message::Binary(b))) => return Seen::Binary(b.to_vec()),
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Seen::Close(code.into(), reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return Seen::Close(1005, String::new()),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, which must be text.
    pub async fn text(&mut self) -> String {
        match self.next().await {
            Seen::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until a close frame (skipping data) and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Seen::Close(code, reason) => return (code, reason),
                Seen::Eof => panic!("connection ended without a close frame"),
                _ => continue,
            }
        }
    }

    pub async fn send_text(&mut self, s: &str) {
        within("send", self.ws.send(Message::text(s)))
            .await
            .expect("send text");
    }

    pub async fn send_binary(&mut self, b: &[u8]) {
        within("send", self.ws.send(Message::binary(b.to_vec())))
            .await
            .expect("send binary");
    }

    /// Starts a normal close and waits for the gateway's answer.
    pub async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = within("close", self.ws.close(Some(frame))).await;
        while let Some(Ok(_)) = within("close answer", self.ws.next()).await {}
    }
}
