//! Entry points for the fuzz targets in `gateway/fuzz`, built only with `--cfg fuzzing` (which
//! `cargo fuzz` sets), so normal builds do not carry it.
//!
//! Everything that parses bytes a client or an operator controls is crate-private; this module
//! lets the fuzz crate reach it without changing any behaviour. Each function calls the
//! gateway's own code: the session reader is `client::reader::Reader` feeding
//! `client::protocol::ClientProtocol`, the same pair `client::connection` drives (only what is
//! done with each step differs: collected here, delivered there); the upgrade driver serves
//! hyper's HTTP/1 with the builder settings of `client::serve` and routes with
//! `client::http::decide`, then `client::upgrade::handshake` and the extension negotiation of
//! `deflate::negotiate`. Nothing here needs a `Node`, a socket or a registry.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use clap::{CommandFactory, Parser};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::{
    client::{
        http::{self as client_http, Route as Decided},
        protocol::{ClientProtocol, Step},
        reader::{self, Reader, Wire},
        upgrade,
    },
    config::{self, Config},
    deflate,
    frame::{self, Opcode},
    gate::Gate,
    jwt,
    message::{Assembler, DataFrame, Kind},
    session::SessionId,
};

/// One complete client message, as `Node::deliver` would receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub text: bool,
    pub payload: Bytes,
}

/// What one data frame pushed into the assembler gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assembled {
    /// The frame was buffered; the message is not complete yet.
    Pending,
    /// The frame completed a message.
    Message(Delivered),
    /// The frames cannot form a message: the session is closed with this code.
    Refused { close_code: u16, why: String },
}

/// Feeds data frames (`opcode` 0 continuation, 1 text, 2 binary; any other opcode is not a
/// data frame and is skipped, as the reader never gives one to the assembler) to one
/// connection's `message::Assembler` with a limit of `max` bytes. Stops after the first
/// refusal, as the session does.
pub fn assemble(frames: &[(u8, bool, Vec<u8>)], max: usize) -> Vec<Assembled> {
    let mut assembler = Assembler::new(max);
    let mut out = Vec::with_capacity(frames.len());
    for (opcode, fin, payload) in frames {
        let data = match opcode {
            0 => DataFrame::Continuation,
            1 => DataFrame::Text,
            2 => DataFrame::Binary,
            _ => continue,
        };
        match assembler.push(data, *fin, false, payload) {
            Ok(None) => out.push(Assembled::Pending),
            Ok(Some(m)) => out.push(Assembled::Message(delivered(m))),
            Err(e) => {
                out.push(Assembled::Refused {
                    close_code: e.close_code(),
                    why: e.to_string(),
                });
                break;
            }
        }
    }
    out
}

fn delivered(m: crate::message::Message) -> Delivered {
    Delivered {
        text: m.kind == Kind::Text,
        payload: m.payload,
    }
}

/// `frame::parse_close` on a close frame's payload: `Some((code, reason))` when accepted.
pub fn parse_close(payload: &[u8]) -> Option<(u16, String)> {
    frame::parse_close(payload).map(|c| (c.code, c.reason))
}

/// Whether `frame::close_code::is_sendable` accepts `code`.
pub fn close_code_is_sendable(code: u16) -> bool {
    frame::close_code::is_sendable(code)
}

/// Encodes `payload` with `frame::encode` and checks, with an independent decoder, that the
/// header says FIN, the opcode, no mask, and the payload's exact length in the shortest form,
/// followed by the payload itself. `opcode` picks Text/Binary/Close/Ping/Pong by `opcode % 5`.
/// Panics on any mismatch.
pub fn encode_roundtrip(opcode: u8, payload: &[u8]) {
    let op = [
        Opcode::Text,
        Opcode::Binary,
        Opcode::Close,
        Opcode::Ping,
        Opcode::Pong,
    ][usize::from(opcode % 5)];
    let encoded = frame::encode(op, payload);
    let (fin, code, masked, len, header) = decode_header(&encoded).expect("header too short");
    assert!(fin, "server frames are complete");
    assert_eq!(code, op as u8, "opcode");
    assert!(!masked, "server frames are not masked");
    assert_eq!(len, payload.len() as u64, "payload length");
    assert!(header <= frame::MAX_HEADER, "header longer than MAX_HEADER");
    let shortest = match payload.len() {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    assert_eq!(header, shortest, "length not in its shortest form");
    assert_eq!(&encoded[header..], payload, "payload bytes");
}

/// Encodes a close frame with `frame::encode_close` and checks that it stays a valid control
/// frame: payload at most 125 bytes, the code first, and the reason a prefix of `reason` cut
/// on a character boundary. When the code is sendable, `frame::parse_close` must read back
/// the same code and the cut reason. Panics on any mismatch.
pub fn close_roundtrip(code: u16, reason: &str) {
    let encoded = frame::encode_close(code, reason);
    let (fin, op, masked, len, header) = decode_header(&encoded).expect("header too short");
    assert!(fin && !masked && op == Opcode::Close as u8);
    assert!(
        len as usize <= frame::MAX_CONTROL_PAYLOAD,
        "close payload too long"
    );
    let payload = &encoded[header..];
    assert_eq!(payload.len() as u64, len);
    assert_eq!(&payload[..2], &code.to_be_bytes());
    let cut = std::str::from_utf8(&payload[2..]).expect("reason cut inside a character");
    assert!(reason.starts_with(cut), "reason is not a prefix");
    assert!(
        cut.len() == reason.len() || cut.len() + 4 > frame::MAX_CONTROL_PAYLOAD - 2,
        "reason cut shorter than needed"
    );
    if frame::close_code::is_sendable(code) {
        let back = frame::parse_close(payload).expect("own close frame refused");
        assert_eq!((back.code, back.reason.as_str()), (code, cut));
    }
}

/// (fin, opcode, masked, payload length, header length) of a frame, read as RFC 6455 §5.2
/// says; `None` when the bytes end inside the header.
fn decode_header(b: &[u8]) -> Option<(bool, u8, bool, u64, usize)> {
    let (b0, b1) = (*b.first()?, *b.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut header) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if masked {
        header += 4;
    }
    Some((b0 & 0x80 != 0, b0 & 0x0f, masked, len, header))
}

/// `SessionId::parse`: the ID back when accepted.
pub fn session_id(s: &str) -> Option<String> {
    SessionId::parse(s).map(|id| id.as_str().to_owned())
}

/// `config::is_name`: the rule for hub names, node IDs and the Redis prefix.
pub fn hub(s: &str) -> bool {
    config::is_name(s)
}

/// Parses `args` (without the program name) as flags, then validates, then formats the
/// configuration with its redacting `Debug`. `Ok` holds that printout; `Err` the message the
/// binary would print. Environment fallbacks are read from the process environment.
pub fn config_args(args: &[String]) -> Result<String, String> {
    let config = parse_config(args)?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(format!("{config:?}"))
}

/// Every long flag of `Config` (`--listen`, …), as clap knows them.
pub fn config_flags() -> Vec<String> {
    Config::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// `Config::try_parse_from` with the program name put first.
pub fn parse_config(args: &[String]) -> Result<Config, String> {
    let argv = std::iter::once("switchboard-gateway").chain(args.iter().map(String::as_str));
    Config::try_parse_from(argv).map_err(|e| e.to_string())
}

/// The client checks of an upgrade that parse what the client sends (`gate::Gate`: the Origin
/// allow-list and the JWT verifier), built from flags as the gateway builds them.
pub struct Auth {
    gate: Gate,
}

impl Auth {
    /// A gate from flags such as `--jwt-secret S`, `--jwt-audience A`, `--allowed-origin O`.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let config = parse_config(args)?;
        let gate = Gate::from_config(&config).map_err(|e| e.to_string())?;
        Ok(Self { gate })
    }

    /// `Gate::origin_allowed`.
    pub fn origin_allowed(&self, hub: &str, origin: Option<&str>) -> bool {
        self.gate.origin_allowed(hub, origin)
    }

    /// `JwtVerifier::verify`: the session's user and groups, or the refusal the client reads.
    /// `None` when no JWT verifier is configured.
    pub fn verify(&self, token: &str) -> Option<Result<(String, Vec<String>), String>> {
        let verifier = self.gate.jwt.as_ref()?;
        Some(
            verifier
                .verify(token)
                .map(|id| (id.user, id.groups))
                .map_err(|e| e.to_string()),
        )
    }
}

/// `jwt::find_token`: the token an upgrade request carries, if any.
pub fn find_token(
    authorization: Option<&str>,
    query: Option<&str>,
    subprotocols: &[String],
) -> Option<String> {
    jwt::find_token(authorization, query, subprotocols).map(|t| t.into_owned())
}

/// A JWT whose header and claims are the given bytes (base64url-encoded as they are, valid JSON
/// or not), signed HS256 with `secret`: what lets a fuzzer reach the code behind the signature
/// check. `None` for an empty secret.
pub fn sign_hs256(secret: &[u8], header: &[u8], claims: &[u8]) -> Option<String> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret).ok()?;
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .ok()?;
    Some(format!("{message}.{signature}"))
}

/// How a session's reader ended, as `client::connection::read_loop` decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The bytes ran out (EOF) or the stream failed: the session is dropped (1006).
    Dropped,
    /// The client sent a valid close frame; the gateway echoes it and ends with its code.
    ClientClosed { code: u16, reason: String },
    /// The gateway fails the connection with this close code (RFC 6455 §7.1.7).
    Failed { code: u16, why: String },
}

/// What a session's reader did with the bytes a client sent after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRead {
    /// Messages handed to `Node::deliver`, in order.
    pub messages: Vec<Delivered>,
    /// Pong frames the gateway queued in answer to pings (encoded by `frame::encode`).
    pub pongs: Vec<Bytes>,
    pub end: End,
    /// The most bytes the reader's buffer held room for at any point.
    pub peak_buffer: usize,
}

impl SessionRead {
    /// What the session did, whatever the buffer sizes on the way.
    pub fn outcome(&self) -> (&[Delivered], &[Bytes], &End) {
        (&self.messages, &self.pongs, &self.end)
    }
}

/// The reader's first allocation and how much it grows a buffer per read
/// (`client::reader`): with a frame of `need` bytes pending, the buffer stays within
/// `need + 2 * (READ_CHUNK + MAX_GROWTH)`.
pub const READ_SLACK: usize = 2 * (reader::READ_CHUNK + reader::MAX_GROWTH);

/// Reads `wire` as a session's reader task does (`client::reader::Reader` into
/// `client::protocol::ClientProtocol`, message limit `max`, compressed messages accepted when
/// `deflate`), until the stream ends or the session would end.
async fn read_session<W: Wire>(wire: W, max: usize, deflate: bool) -> SessionRead {
    let mut reader = Reader::new(wire, Bytes::new());
    let mut protocol = ClientProtocol::new(max, deflate);
    let mut out = SessionRead {
        messages: Vec::new(),
        pongs: Vec::new(),
        end: End::Dropped,
        peak_buffer: 0,
    };
    loop {
        let need = loop {
            match protocol.next(reader.buf()) {
                Ok(Step::Message(m)) => out.messages.push(delivered(m)),
                Ok(Step::Fragment | Step::Pong) => {}
                Ok(Step::Ping(p)) => out.pongs.push(frame::encode(Opcode::Pong, &p)),
                Ok(Step::Close(c)) => {
                    out.end = End::ClientClosed {
                        code: c.code,
                        reason: c.reason,
                    };
                    return out;
                }
                Ok(Step::Fail { code, why }) => {
                    out.end = End::Failed { code, why };
                    return out;
                }
                Err(need) => break need,
            }
        };
        match reader.fill(need).await {
            Ok(true) => out.peak_buffer = out.peak_buffer.max(reader.buf().capacity()),
            Ok(false) | Err(_) => return out,
        }
    }
}

thread_local! {
    /// One current-thread runtime per thread, reused by every input (building one per input
    /// would dominate the fuzzer's time).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// [`read_session`] over bytes in memory: what a session makes of `bytes` sent after its 101.
pub fn read_frames(bytes: &[u8], max: usize, deflate: bool) -> SessionRead {
    read_frames_chunked(bytes, max, deflate, usize::MAX)
}

/// [`read_frames`], but the bytes arrive as a slow socket gives them: at most `chunk` bytes
/// per read (at least 1), each read first answering "not ready" once. The outcome must not
/// depend on how the bytes were cut.
pub fn read_frames_chunked(bytes: &[u8], max: usize, deflate: bool, chunk: usize) -> SessionRead {
    let trickle = Trickle {
        bytes,
        chunk: chunk.max(1),
        ready: false,
    };
    block_on(read_session(trickle, max, deflate))
}

struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
    ready: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !std::mem::replace(&mut self.ready, false) {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        let (head, tail) = self.bytes.split_at(n);
        buf.put_slice(head);
        self.bytes = tail;
        Poll::Ready(Ok(()))
    }
}

impl Wire for Trickle<'_> {
    const FIRST_READ: usize = reader::READ_CHUNK;

    async fn readable(&mut self) {}
}

/// The answer of the client port to one request, decided as `client::http::route` and
/// `client::upgrade::upgrade` decide it before anything that needs a node (draining, the
/// registry, the connect hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`, `/readyz`, `/metrics`, `/demo` with GET.
    Probe,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 400: the hub is not 1–64 of `[A-Za-z0-9._-]`.
    BadHub,
    /// 400: `/ws/{hub}` over HTTP/1.0.
    OldHttp,
    /// 426: `/ws/{hub}` without `Connection: upgrade` and `Upgrade: websocket`.
    NotUpgrade,
    /// 400: fastwebsockets refused the handshake.
    BadHandshake(String),
    /// 101 for this hub.
    Upgrade { hub: String },
}

impl Route {
    pub fn status(&self) -> StatusCode {
        match self {
            Route::Probe => StatusCode::OK,
            Route::NotFound => StatusCode::NOT_FOUND,
            Route::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Route::BadHub | Route::OldHttp | Route::BadHandshake(_) => StatusCode::BAD_REQUEST,
            Route::NotUpgrade => StatusCode::UPGRADE_REQUIRED,
            Route::Upgrade { .. } => StatusCode::SWITCHING_PROTOCOLS,
        }
    }
}

/// The 101 response and the future of the upgraded stream.
type Handshake = (Response<Empty<Bytes>>, upgrade::Pending);

/// Decides `req`'s route with `client::http::decide` (probes served on the client port, the
/// default); for an upgrade, also runs `client::upgrade::handshake` on it (fastwebsockets' for
/// HTTP/1.1), which gives the 101 response and the future of the upgraded stream.
fn route<B>(req: &mut Request<B>) -> (Route, Option<Handshake>) {
    let hub = match client_http::decide(req, true) {
        Decided::Upgrade(hub) => hub.to_owned(),
        Decided::Ops(_) | Decided::Demo => return (Route::Probe, None),
        Decided::NotFound => return (Route::NotFound, None),
        Decided::MethodNotAllowed => return (Route::MethodNotAllowed, None),
        Decided::BadHub => return (Route::BadHub, None),
        Decided::OldHttp => return (Route::OldHttp, None),
        Decided::NotUpgrade => return (Route::NotUpgrade, None),
    };
    match upgrade::handshake(req) {
        Ok(pair) => (Route::Upgrade { hub }, Some(pair)),
        Err(e) => (Route::BadHandshake(e), None),
    }
}

/// What an upgrade request's headers ask for beyond the handshake, parsed as
/// `client::upgrade` parses them: the subprotocols offered, and the permessage-deflate terms
/// agreed with the response header (`deflate::negotiate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub subprotocols: Vec<String>,
    /// (the client's window limit for what the gateway sends, the response header).
    pub deflate: Option<(u8, String)>,
}

/// [`Asked`] of a request's headers.
pub fn asked(headers: &http::HeaderMap) -> Asked {
    Asked {
        subprotocols: upgrade::subprotocols(headers),
        deflate: deflate::negotiate(
            headers
                .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
        .map(|(d, answer)| (d.server_window_bits, answer)),
    }
}

/// `deflate::inflate`: a compressed message's bytes inflated under `max`, or why not.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, String> {
    deflate::inflate(compressed, max).map_err(|e| e.to_string())
}

/// `deflate::compress` for a client window of `window_bits` at zlib `level` (1–9).
pub fn compress(window_bits: u8, level: u8, payload: &[u8]) -> Option<Vec<u8>> {
    deflate::compress(
        deflate::Deflate {
            server_window_bits: window_bits,
        },
        level,
        payload,
    )
}

/// What the client port made of a connection's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// The route of every request hyper handed to the service, in order.
    pub routes: Vec<Route>,
    /// What the server wrote back (responses, hyper's own 400/431 answers).
    pub response: Vec<u8>,
    /// What the request headers of the upgrade asked for ([`asked`]).
    pub asked: Option<Asked>,
    /// For an upgraded connection, what its session's reader made of the bytes after the
    /// request (frames), with a message limit of `max`, compressed messages accepted when the
    /// request negotiated permessage-deflate.
    pub session: Option<SessionRead>,
}

/// The header read timeout of the driver: the gateway's default `--handshake-timeout`. The
/// client side sends all its bytes and then EOF, so it never fires in practice.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `bytes` as one client connection to the client port: hyper's HTTP/1 server with the
/// settings of `client::serve` (timer, header read timeout, upgrades), a service that takes
/// [`route`]'s decisions, and, after a 101, the session reader ([`read_session`]) on the
/// upgraded stream — hyper hands over the bytes it read past the request, as it does on a
/// socket. The client side writes `bytes`, shuts its write half, and reads until the server
/// closes. One setting differs from the gateway: half-close is allowed. Without it hyper drops
/// a request whose bytes are followed by EOF unanswered (on a socket the client keeps its
/// write half open while it waits), and the answers could not be checked.
pub fn serve_http(bytes: &[u8], max: usize) -> HttpExchange {
    block_on(async {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let routes = Arc::new(Mutex::new(Vec::new()));
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let service = {
            let routes = Arc::clone(&routes);
            let upgrades = Arc::clone(&upgrades);
            hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let asked = asked(req.headers());
                let (route, pair) = route(&mut req);
                let status = route.status();
                routes.lock().unwrap_or_else(|e| e.into_inner()).push(route);
                let resp = match pair {
                    Some((resp, fut)) => {
                        upgrades
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((fut, asked));
                        resp
                    }
                    None => {
                        let mut r = Response::new(Empty::<Bytes>::new());
                        *r.status_mut() = status;
                        r
                    }
                };
                async move { Ok::<_, Infallible>(resp) }
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT)
            .half_close(true)
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades();
        let serve = async {
            let _ = conn.await;
            let fut = upgrades.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match fut {
                Some((fut, asked)) => match fut.upgraded().await {
                    Ok(upgraded) => {
                        let (read, _write) = tokio::io::split(TokioIo::new(upgraded));
                        let deflate = asked.deflate.is_some();
                        (Some(asked), Some(read_session(read, max, deflate).await))
                    }
                    Err(_) => (Some(asked), None),
                },
                None => (None, None),
            }
        };
        let talk = async {
            let mut response = Vec::new();
            let (mut rd, mut wr) = tokio::io::split(client);
            let send = async {
                let _ = wr.write_all(bytes).await;
                let _ = wr.shutdown().await;
            };
            let receive = async {
                let _ = rd.read_to_end(&mut response).await;
            };
            tokio::join!(send, receive);
            response
        };
        let ((asked, session), response) = tokio::join!(serve, talk);
        let routes = std::mem::take(&mut *routes.lock().unwrap_or_else(|e| e.into_inner()));
        HttpExchange {
            routes,
            response,
            asked,
            session,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn fragmented_text_then_close_is_read_like_a_session() {
        let mut bytes = client_frame(false, 1, "hé".as_bytes());
        bytes.extend(client_frame(true, 9, b"ping"));
        bytes.extend(client_frame(true, 0, b"llo"));
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8, b'o', b'k']));
        bytes.extend(client_frame(true, 2, b"never read"));
        let read = read_frames(&bytes, 1024, false);
        assert_eq!(
            read.messages,
            vec![Delivered {
                text: true,
                payload: Bytes::from("héllo")
            }]
        );
        assert_eq!(read.pongs, vec![frame::encode(Opcode::Pong, b"ping")]);
        assert_eq!(
            read.end,
            End::ClientClosed {
                code: 1000,
                reason: "ok".into()
            }
        );
    }

    #[test]
    fn the_outcome_does_not_depend_on_how_the_bytes_arrive() {
        let mut bytes = client_frame(false, 1, "h€".as_bytes());
        bytes.extend(client_frame(true, 0, b"llo"));
        bytes.extend(client_frame(true, 8, &[]));
        let whole = read_frames(&bytes, 1024, false);
        assert_eq!(whole.messages.len(), 1);
        for chunk in [1, 2, 3, 7, 100] {
            let trickled = read_frames_chunked(&bytes, 1024, false, chunk);
            assert_eq!(trickled.outcome(), whole.outcome());
        }
    }

    #[test]
    fn a_message_over_the_limit_fails_with_1009() {
        let mut bytes = client_frame(false, 2, &[0; 8]);
        bytes.extend(client_frame(true, 0, &[0; 8]));
        assert!(matches!(
            read_frames(&bytes, 10, false).end,
            End::Failed { code: 1009, .. }
        ));
        // One frame over the limit is refused by the decoder before its payload is read.
        let read = read_frames(&client_frame(true, 2, &[0; 11])[..8], 10, false);
        assert!(matches!(read.end, End::Failed { code: 1009, .. }));
        assert_eq!(
            read_frames(&client_frame(true, 2, &[0; 10]), 10, false)
                .messages
                .len(),
            1
        );
    }

    #[test]
    fn compressed_frames_need_the_extension_and_inflate() {
        let json = br#"{"k":"value","n":[1,2,3]}"#.repeat(20);
        let c = compress(15, 6, &json).expect("compressible");
        let mut f = client_frame(true, 1, &c);
        f[0] |= 0x40;
        let read = read_frames(&f, 1024, true);
        assert_eq!(read.messages[0].payload, Bytes::from(json.clone()));
        assert!(matches!(
            read_frames(&f, 1024, false).end,
            End::Failed { code: 1002, .. }
        ));
        assert_eq!(inflate(&c, 1024).unwrap(), Bytes::from(json));
    }

    #[test]
    fn upgrade_headers_are_parsed_as_the_gateway_parses_them() {
        let mut h = http::HeaderMap::new();
        h.append("sec-websocket-protocol", "a, b".parse().unwrap());
        h.append(
            "sec-websocket-extensions",
            "permessage-deflate; server_max_window_bits=9"
                .parse()
                .unwrap(),
        );
        let asked = asked(&h);
        assert_eq!(asked.subprotocols, ["a", "b"]);
        assert_eq!(asked.deflate.map(|d| d.0), Some(9));
    }

    #[test]
    fn encoders_round_trip() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            encode_roundtrip(1, &vec![b'a'; len]);
        }
        close_roundtrip(1000, "");
        close_roundtrip(4999, &"é".repeat(100));
        close_roundtrip(0, "x");
    }

    #[test]
    fn assembler_facade_stops_at_the_first_refusal() {
        let out = assemble(
            &[
                (1, false, b"a".to_vec()),
                (2, true, b"b".to_vec()),
                (0, true, b"c".to_vec()),
            ],
            10,
        );
        assert_eq!(out.len(), 2);
        assert!(matches!(
            out[1],
            Assembled::Refused {
                close_code: 1002,
                ..
            }
        ));
    }

    #[test]
    fn an_upgrade_request_is_routed_and_its_frames_read() {
        let mut bytes = b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        bytes.extend(client_frame(true, 1, b"hi"));
        let ex = serve_http(&bytes, 1024);
        assert_eq!(ex.routes, vec![Route::Upgrade { hub: "chat".into() }]);
        assert!(
            ex.response.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            ex.response
        );
        let session = ex.session.expect("upgraded");
        assert_eq!(session.messages.len(), 1);
        assert_eq!(session.end, End::Dropped);
    }

    #[test]
    fn plain_requests_get_their_status() {
        let ex = serve_http(
            b"GET /ws/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\nPOST /healthz HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 0\r\n\r\nGET /ws/chat HTTP/1.1\r\nHost: x\r\n\r\n",
            1024,
        );
        assert_eq!(
            ex.routes,
            vec![Route::BadHub, Route::MethodNotAllowed, Route::NotUpgrade]
        );
        let answers = String::from_utf8_lossy(&ex.response);
        let statuses: Vec<&str> = answers
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &answers[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["400", "405", "426"], "{answers}");
        assert!(ex.session.is_none());
    }

    #[test]
    fn config_flags_parse_and_validate_without_panicking() {
        assert!(config_args(&[]).is_ok());
        assert!(config_args(&["--lease-ttl".into(), "0s".into()]).is_err());
        assert!(config_args(&["--nonsense".into()]).is_err());
        let flags = config_flags();
        assert!(
            flags.contains(&"--max-message-bytes".to_owned()),
            "{flags:?}"
        );
    }

    #[test]
    fn auth_checks_origins_and_signed_tokens() {
        let auth = Auth::from_args(&flags(&[
            "--jwt-secret",
            "s3cret",
            "--allowed-origin",
            "https://app.example",
        ]))
        .unwrap();
        assert!(auth.origin_allowed("chat", Some("HTTPS://app.example/")));
        assert!(!auth.origin_allowed("chat", Some("https://evil.example")));
        assert!(auth.origin_allowed("chat", None));
        let token = sign_hs256(
            b"s3cret",
            br#"{"alg":"HS256","typ":"JWT"}"#,
            br#"{"sub":"alice","exp":99999999999,"groups":["g1"]}"#,
        )
        .unwrap();
        assert_eq!(
            auth.verify(&token),
            Some(Ok(("alice".into(), vec!["g1".into()])))
        );
        let query = format!("a=1&token={token}");
        assert_eq!(find_token(None, Some(&query), &[]), Some(token));
        assert!(matches!(auth.verify("x.y.z"), Some(Err(_))));
    }

    fn flags(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    // Crashes the `config` fuzz target found (bugs in config.rs, not fixed here): each flag
    // list must be refused with an error, not panic.

    #[test]
    fn regression_duration_in_hours_overflows() {
        // u64::MAX / 3600 + 1 hours, and u64::MAX / 60 + 1 minutes: a panic in debug builds,
        // a silently wrapped (wrong) duration in release builds.
        assert!(config_args(&flags(&["--close-timeout=5124095576030432h"])).is_err());
        assert!(config_args(&flags(&["--ping-interval", "307445734561825861m"])).is_err());
    }

    #[test]
    fn regression_lease_refresh_times_two_overflows() {
        // Duration * 2 panics in release builds too: the binary dies instead of exiting 64.
        assert!(config_args(&flags(&["--lease-refresh", "9223372036854775808"])).is_err());
    }

    #[test]
    fn regression_max_message_bytes_plus_header_overflows() {
        // A given queue bound is compared with the limit plus a frame header.
        let args = [
            "--max-message-bytes",
            "18446744073709551602",
            "--outbound-queue-bytes",
            "4194304",
            "--inbox-bytes",
            "18446744073709551615",
        ];
        assert!(config_args(&flags(&args)).is_err());
        // Bounds derived from such a limit saturate rather than overflow.
        let config =
            parse_config(&flags(&["--max-message-bytes", "18446744073709551602"])).expect("parses");
        assert_eq!(config.outbound_queue_bytes(), usize::MAX);
        assert_eq!(config.inbox_bytes(), usize::MAX);
    }
}
