//! One session's life: admit it, read its frames until it ends, then tear it down.
//!
//! Invariant: this task is the only reader of the socket and the only place a session ends.
//! `read_frame` is not cancel-safe, so it is raced only against the session's kill signal, after
//! which the socket is never read again.
//!
//! A plain (non-TLS) socket is read through [`reader`](super::reader): while the client sends
//! nothing the task holds only the bare socket, and a fastwebsockets `WebSocket` (with its 8 KiB
//! read buffer) exists only while frames are arriving. A TLS socket keeps one `WebSocketRead` for
//! its whole life.

use std::{
    future::Future,
    sync::{atomic::AtomicU64, Arc},
    time::Instant,
};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::{tcp::OwnedReadHalf, TcpStream};
use tracing::Instrument;

use super::reader::{Flowing, ReadSide};
use crate::{
    frame::{self, close_code, Opcode},
    limits::Bucket,
    message::{Assembler, DataFrame},
    node::Node,
    session::{Closer, Session, SessionEnd, Writer},
};

/// The session's reader task, from the end of the upgrade to the session's teardown.
///
/// This future is the task, which lives as long as the session, so it is kept small while the
/// socket is idle: what is large (a `WebSocket`, a TLS reader, teardown) is boxed and exists
/// only while it runs, and the upgrade's result is taken apart by [`connect`] (not an `async
/// fn`) so that none of it stays in this future's state.
pub(crate) fn run(
    node: Arc<Node>,
    session: Arc<Session>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    admitted: tokio::sync::oneshot::Sender<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("session", id = %session.id, hub = %session.hub);
    async move {
        Box::pin(node.admit(&session)).await;
        // The handler may be gone (the client left): the upgrade then fails below.
        let _ = admitted.send(());
        let Some(socket) = connect(&session, upgrade.await) else {
            Box::pin(node.retire(&session, dropped(&session))).await;
            return;
        };
        let end = match socket {
            Socket::Plain(read, early) => read_plain(&node, &session, read, early).await,
            Socket::Tls(upgraded) => Box::pin(read_tls(&node, &session, upgraded)).await,
        };
        let end = Box::pin(node.retire(&session, end)).await;
        tracing::info!(
            code = end.code,
            reason = %end.reason,
            closed_by = end.closed_by.as_str(),
            "session closed"
        );
    }
    .instrument(span)
}

/// The read side of an upgraded socket whose write side went to the session.
enum Socket {
    /// A plain TCP socket and the bytes hyper read past the HTTP request.
    Plain(OwnedReadHalf, Bytes),
    /// Anything else (TLS): not split yet.
    Tls(Upgraded),
}

/// Connects the upgraded socket's write side to the session; `None` if the upgrade failed.
fn connect(
    session: &Arc<Session>,
    upgraded: Result<WebSocket<TokioIo<Upgraded>>, WebSocketError>,
) -> Option<Socket> {
    let ws = match upgraded {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return None;
        }
    };
    // The `WebSocket` the upgrade built is dropped at once: writes never go through
    // fastwebsockets (frames are encoded once by `frame` and queued as bytes), and reads get
    // their own.
    let socket = match ws
        .into_inner()
        .into_inner()
        .downcast::<TokioIo<TcpStream>>()
    {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            session.install_writer(Writer::Tcp(write));
            Socket::Plain(read, parts.read_buf)
        }
        // TLS: the stream is not a `TcpStream`; `read_tls` splits it.
        Err(upgraded) => Socket::Tls(upgraded),
    };
    tracing::info!(
        remote = %session.remote_addr,
        user = session.user.as_deref().unwrap_or(""),
        "session open"
    );
    Some(socket)
}

/// What the reader keeps from frame to frame.
struct Inbound {
    assembler: Assembler,
    /// The assembler holds the first frames of a message.
    partial: bool,
    message_rate: Option<Bucket>,
    byte_rate: Option<Bucket>,
}

impl Inbound {
    fn new(node: &Node) -> Self {
        let cfg = &node.config;
        Self {
            assembler: Assembler::new(cfg.max_message_bytes.get()),
            partial: false,
            message_rate: Bucket::new(f64::from(cfg.max_messages_per_second), 0.0),
            byte_rate: Bucket::new(
                cfg.max_bytes_per_second as f64,
                cfg.max_message_bytes.get() as f64,
            ),
        }
    }
}

/// Reads a plain socket until the session ends and says how it ended. While the client is
/// quiet, only the socket is held; a `WebSocket` is built when bytes arrive and dropped once its
/// read buffer is provably empty and no message is half assembled.
async fn read_plain(
    node: &Node,
    session: &Arc<Session>,
    read: OwnedReadHalf,
    early: Bytes,
) -> SessionEnd {
    let mut inbound = Inbound::new(node);
    let handed = AtomicU64::new(0);
    let mut side = ReadSide::new(read, early, &handed);
    loop {
        tokio::select! {
            biased;
            _ = session.killed() => return dropped(session),
            _ = side.readable() => {}
        }
        let flowing = Flowing::new(side, node.config.max_message_bytes.get());
        // Boxed: the frame-reading state is large and exists only while frames flow.
        match Box::pin(read_flowing(node, session, &mut inbound, flowing)).await {
            Ok(idle) => side = idle,
            Err(end) => return end,
        }
    }
}

/// Reads frames until the session ends (`Err`) or the socket has nothing more buffered between
/// two messages (`Ok`: the socket, without its `WebSocket`).
async fn read_flowing<'c>(
    node: &Node,
    session: &Arc<Session>,
    inbound: &mut Inbound,
    mut ws: Flowing<'c>,
) -> Result<ReadSide<'c>, SessionEnd> {
    loop {
        let frame = tokio::select! {
            biased;
            _ = session.killed() => return Err(dropped(session)),
            f = ws.read_frame() => f,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Err(read_failed(node, session, e).await),
        };
        if let Some(end) = on_frame(node, session, inbound, frame).await {
            return Err(end);
        }
        if !inbound.partial && ws.drained() {
            return Ok(ws.into_idle());
        }
    }
}

/// Reads a TLS socket until the session ends and says how it ended.
async fn read_tls(node: &Node, session: &Arc<Session>, upgraded: Upgraded) -> SessionEnd {
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    session.install_writer(Writer::Stream(Box::pin(write)));
    // Writes never go through fastwebsockets, so its write half gets a sink and is dropped.
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    // fastwebsockets refuses frames of *at least* this size.
    reader.set_max_message_size(node.config.max_message_bytes.get() + 1);
    let mut inbound = Inbound::new(node);
    let mut no_obligations =
        |_: fastwebsockets::Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
    loop {
        let frame = tokio::select! {
            biased;
            _ = session.killed() => return dropped(session),
            f = reader.read_frame(&mut no_obligations) => f,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return read_failed(node, session, e).await,
        };
        if let Some(end) = on_frame(node, session, &mut inbound, frame).await {
            return end;
        }
    }
}

/// Handles one frame from the client; `Some` once the session has ended.
async fn on_frame(
    node: &Node,
    session: &Arc<Session>,
    inbound: &mut Inbound,
    frame: Frame<'_>,
) -> Option<SessionEnd> {
    session.touch();
    let data = match frame.opcode {
        OpCode::Text => DataFrame::Text,
        OpCode::Binary => DataFrame::Binary,
        OpCode::Continuation => DataFrame::Continuation,
        OpCode::Ping => {
            session.send_control(frame::encode(Opcode::Pong, &frame.payload));
            return None;
        }
        OpCode::Pong => {
            if frame.payload.len() > frame::MAX_CONTROL_PAYLOAD {
                return Some(
                    fail(
                        node,
                        session,
                        close_code::PROTOCOL_ERROR,
                        "control frame too long",
                    )
                    .await,
                );
            }
            return None;
        }
        OpCode::Close => {
            if frame.payload.len() > frame::MAX_CONTROL_PAYLOAD {
                return Some(
                    fail(
                        node,
                        session,
                        close_code::PROTOCOL_ERROR,
                        "control frame too long",
                    )
                    .await,
                );
            }
            let Some(cc) = frame::parse_close(&frame.payload) else {
                return Some(
                    fail(
                        node,
                        session,
                        close_code::PROTOCOL_ERROR,
                        "invalid close frame",
                    )
                    .await,
                );
            };
            let end = session.client_closed(cc.code, cc.reason);
            session.flushed(node.config.close_timeout).await;
            return Some(end);
        }
    };
    let message = match inbound.assembler.push(data, frame.fin, &frame.payload) {
        Ok(None) => {
            inbound.partial = true;
            return None;
        }
        Ok(Some(m)) => {
            inbound.partial = false;
            m
        }
        Err(e) => {
            tracing::info!(error = %e, "closing session on bad client message");
            return Some(fail(node, session, e.close_code(), &e.to_string()).await);
        }
    };
    drop(frame);
    if !session.is_open() {
        // We sent a close and wait for the client's; RFC 6455 lets data arrive meanwhile,
        // but there is nobody left to give it to.
        node.metrics
            .inbound_discarded
            .get_or_create(&crate::metrics::ReasonLabel { reason: "closing" })
            .inc();
        return None;
    }
    if inbound.message_rate.is_some() || inbound.byte_rate.is_some() {
        let now = Instant::now();
        let within = inbound
            .message_rate
            .as_mut()
            .is_none_or(|b| b.take(1.0, now))
            && inbound
                .byte_rate
                .as_mut()
                .is_none_or(|b| b.take(message.len() as f64, now));
        if !within {
            node.metrics.rate_limited.inc();
            tracing::info!("closing session over its message rate");
            return Some(fail(node, session, close_code::POLICY, "rate limit exceeded").await);
        }
    }
    session.received(message.len());
    tokio::select! {
        biased;
        _ = session.killed() => Some(dropped(session)),
        _ = node.deliver(session, message) => None,
    }
}

/// The connection ended without a completed close handshake.
fn dropped(session: &Session) -> SessionEnd {
    session.closing().unwrap_or(SessionEnd {
        code: close_code::ABNORMAL,
        reason: "connection dropped".into(),
        closed_by: Closer::Client,
    })
}

async fn read_failed(node: &Node, session: &Arc<Session>, e: WebSocketError) -> SessionEnd {
    let (code, why) = match e {
        WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => return dropped(session),
        WebSocketError::FrameTooLarge => (close_code::TOO_BIG, "message too big".to_owned()),
        WebSocketError::InvalidUTF8 => (close_code::INVALID_PAYLOAD, "invalid UTF-8".to_owned()),
        WebSocketError::ReservedBitsNotZero
        | WebSocketError::ControlFrameFragmented
        | WebSocketError::PingFrameTooLarge
        | WebSocketError::InvalidValue
        | WebSocketError::InvalidFragment
        | WebSocketError::InvalidContinuationFrame
        | WebSocketError::InvalidCloseFrame
        | WebSocketError::InvalidCloseCode => (close_code::PROTOCOL_ERROR, e.to_string()),
        other => (close_code::INTERNAL, other.to_string()),
    };
    tracing::info!(code, why, "closing session on bad client frame");
    fail(node, session, code, &why).await
}

/// Fails the connection (RFC 6455 §7.1.7): send a close frame, and do not wait for an answer.
async fn fail(node: &Node, session: &Arc<Session>, code: u16, reason: &str) -> SessionEnd {
    session.close(code, reason, Closer::Gateway, true);
    session.flushed(node.config.close_timeout).await;
    dropped(session)
}
