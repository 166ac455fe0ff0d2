//! One session's life: admit it, read its frames until it ends, then tear it down.
//!
//! Invariant: this task is the only reader of the socket and the only place a session ends.
//! `read_frame` is not cancel-safe, so it is raced only against the session's kill signal, after
//! which the socket is never read again.

use std::{sync::Arc, time::Instant};

use fastwebsockets::{OpCode, Role, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::ReadHalf;
use tracing::Instrument;

use crate::{
    frame::{self, close_code, Opcode},
    limits::Bucket,
    message::{Assembler, DataFrame},
    node::Node,
    session::{Closer, Session, SessionEnd},
};

type Reader = fastwebsockets::WebSocketRead<ReadHalf<TokioIo<Upgraded>>>;

pub(crate) async fn run(
    node: Arc<Node>,
    session: Arc<Session>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
) {
    let span = tracing::info_span!("session", id = %session.id, hub = %session.hub);
    async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                node.retire(&session, dropped(&session)).await;
                return;
            }
        };
        let (read, write) = tokio::io::split(ws.into_inner());
        session.install_writer(Box::pin(write));
        // Writes never go through fastwebsockets (frames are encoded once by `frame` and queued
        // as bytes), so its write half gets a sink and is dropped.
        let (mut reader, _) =
            fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        reader.set_auto_close(false);
        reader.set_auto_pong(false);
        // fastwebsockets refuses frames of *at least* this size.
        reader.set_max_message_size(node.config.max_message_bytes.get() + 1);
        tracing::info!(
            remote = %session.remote_addr,
            user = session.user.as_deref().unwrap_or(""),
            "session open"
        );

        let end = read_loop(&node, &session, &mut reader).await;
        drop(reader);
        let end = node.retire(&session, end).await;
        tracing::info!(
            code = end.code,
            reason = %end.reason,
            closed_by = end.closed_by.as_str(),
            "session closed"
        );
    }
    .instrument(span)
    .await
}

/// Reads until the session ends and says how it ended.
async fn read_loop(node: &Node, session: &Arc<Session>, reader: &mut Reader) -> SessionEnd {
    let cfg = &node.config;
    let mut assembler = Assembler::new(cfg.max_message_bytes.get());
    let mut message_rate = Bucket::new(f64::from(cfg.max_messages_per_second), 0.0);
    let mut byte_rate = Bucket::new(
        cfg.max_bytes_per_second as f64,
        cfg.max_message_bytes.get() as f64,
    );
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
        session.touch();
        let data = match frame.opcode {
            OpCode::Text => DataFrame::Text,
            OpCode::Binary => DataFrame::Binary,
            OpCode::Continuation => DataFrame::Continuation,
            OpCode::Ping => {
                session.send_control(frame::encode(Opcode::Pong, &frame.payload));
                continue;
            }
            OpCode::Pong => {
                if frame.payload.len() > frame::MAX_CONTROL_PAYLOAD {
                    return fail(
                        node,
                        session,
                        close_code::PROTOCOL_ERROR,
                        "control frame too long",
                    )
                    .await;
                }
                continue;
            }
            OpCode::Close => {
                if frame.payload.len() > frame::MAX_CONTROL_PAYLOAD {
                    return fail(
                        node,
                        session,
                        close_code::PROTOCOL_ERROR,
                        "control frame too long",
                    )
                    .await;
                }
                let Some(cc) = frame::parse_close(&frame.payload) else {
                    return fail(
                        node,
                        session,
                        close_code::PROTOCOL_ERROR,
                        "invalid close frame",
                    )
                    .await;
                };
                let end = session.client_closed(cc.code, cc.reason);
                session.flushed(node.config.close_timeout).await;
                return end;
            }
        };
        let message = match assembler.push(data, frame.fin, &frame.payload) {
            Ok(None) => continue,
            Ok(Some(m)) => m,
            Err(e) => {
                tracing::info!(error = %e, "closing session on bad client message");
                return fail(node, session, e.close_code(), &e.to_string()).await;
            }
        };
        if !session.is_open() {
            // We sent a close and wait for the client's; RFC 6455 lets data arrive meanwhile,
            // but there is nobody left to give it to.
            node.metrics
                .inbound_discarded
                .get_or_create(&crate::metrics::ReasonLabel { reason: "closing" })
                .inc();
            continue;
        }
        if message_rate.is_some() || byte_rate.is_some() {
            let now = Instant::now();
            let within = message_rate.as_mut().is_none_or(|b| b.take(1.0, now))
                && byte_rate
                    .as_mut()
                    .is_none_or(|b| b.take(message.len() as f64, now));
            if !within {
                node.metrics.rate_limited.inc();
                tracing::info!("closing session over its message rate");
                return fail(node, session, close_code::POLICY, "rate limit exceeded").await;
            }
        }
        session.received(message.len());
        tokio::select! {
            biased;
            _ = session.killed() => return dropped(session),
            _ = node.deliver(session, message) => {}
        }
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
