//! One session's life: admit it, read its frames until it ends, then tear it down.
//!
//! Invariant: this task is the only reader of the socket and the only place a session ends.
//! `read_frame` is not cancel-safe, so it is raced only against the session's kill signal, after
//! which the socket is never read again.
//!
//! Bytes are read by [`reader`](super::reader), which holds no buffer while the client is quiet,
//! and turned into messages and control frames by [`protocol`](super::protocol), a pure state
//! machine (the fuzz targets run the same one). Writes never pass through here: every frame to
//! the client goes through the session's outbound queue.

use std::{sync::Arc, time::Instant};

use bytes::BytesMut;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    protocol::{ClientProtocol, Step},
    reader::{Reader, Wire},
    upgrade::{Pending, ReliableStart},
};
use crate::{
    frame::{self, close_code, Opcode},
    limits::Bucket,
    node::Node,
    session::{Closer, Session, SessionEnd, Writer},
    tls::records::{self, RecordReader, Taken},
};

/// The session's reader task, from the end of the upgrade to the session's teardown.
///
/// This future is the task, which lives as long as the session, so it is kept small while the
/// socket is idle: what is large (delivery, a TLS reader, teardown) is boxed and exists only
/// while it runs, the upgrade's result is taken apart by [`connect`] (not an `async fn`) so
/// that none of it stays in this future's state, and the session's span exists only while
/// there is work (see [`span`]).
pub(crate) async fn run(
    node: Arc<Node>,
    session: Arc<Session>,
    upgrade: Pending,
    admitted: tokio::sync::oneshot::Sender<()>,
    reliable: Option<ReliableStart>,
) {
    match reliable {
        None => {
            Box::pin(node.admit(&session))
                .instrument(span(&session))
                .await
        }
        Some(start) => {
            Box::pin(admit_reliable(&node, &session, start))
                .instrument(span(&session))
                .await
        }
    }
    // The handler may be gone (the client left): the upgrade then fails below.
    let _ = admitted.send(());
    let upgraded = upgrade.upgraded().await;
    let socket = span(&session).in_scope(|| connect(&node, &session, upgraded));
    let opened = socket.is_some();
    let end = match socket {
        None => dropped(&session),
        Some(Socket::Plain(reader)) => Box::pin(read_loop(&node, &session, reader)).await,
        Some(Socket::Records(reader)) => Box::pin(read_loop(&node, &session, *reader)).await,
        Some(Socket::Rustls(reader)) => Box::pin(read_loop(&node, &session, reader)).await,
        Some(Socket::Stream(upgraded)) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            session.install_writer(Writer::Stream(Box::pin(write)));
            let reader = Reader::new(read, bytes::Bytes::new());
            Box::pin(read_loop(&node, &session, reader)).await
        }
    };
    Box::pin(finish(&node, &session, end, opened))
        .instrument(span(&session))
        .await;
}

/// The session's span, made for each stretch of work (admission, a burst of frames, the end)
/// rather than held for the session's life: an idle session then keeps none (a span held
/// through idleness cost 0.45 KiB per idle connection with the fmt subscriber).
fn span(session: &Session) -> tracing::Span {
    tracing::info_span!("session", id = %session.id, hub = %session.hub)
}

/// Ends the session everywhere; says how it closed if its socket ever opened.
async fn finish(node: &Arc<Node>, session: &Arc<Session>, end: SessionEnd, opened: bool) {
    let end = match session.reliable.clone() {
        None => node.retire(session, end).await,
        Some(rel) => node.reliable_connection_ended(session, &rel, end).await,
    };
    if opened {
        tracing::info!(
            code = end.code,
            reason = %end.reason,
            closed_by = end.closed_by.as_str(),
            "session closed"
        );
    }
}

/// A reliable connection's start: the welcome (and a resume's replay) queued first, then
/// the session admitted, or put in the place of the connection it resumes.
async fn admit_reliable(node: &Node, session: &Arc<Session>, start: ReliableStart) {
    if let Err(e) = node
        .open_reliable(session, &start.token, start.resumed)
        .await
    {
        tracing::warn!(error = %e, "could not replay kept messages; the client will resume again");
        session.close(
            close_code::TRY_AGAIN_LATER,
            "registry unavailable: resume again",
            Closer::Gateway,
            false,
        );
    }
    match start.resumed {
        None => node.admit(session).await,
        Some(_) => node.admit_resumed(session, start.previous.as_ref()).await,
    }
}

/// The read side of an upgraded socket whose write side went to the session.
enum Socket {
    /// A plain TCP socket, starting with the bytes hyper read past the HTTP request.
    Plain(Reader<tokio::net::tcp::OwnedReadHalf>),
    /// A TLS 1.3 connection out of rustls: records opened here, on the plain socket. Boxed:
    /// its keys would make every session's reader task larger.
    Records(Box<Reader<RecordReader>>),
    /// TLS 1.2, in rustls.
    Rustls(Reader<tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>>),
    /// Anything else (an HTTP/2 stream): not split yet.
    Stream(Upgraded),
}

/// Connects the upgraded socket's write side to the session; `None` if the upgrade failed.
fn connect(
    node: &Node,
    session: &Arc<Session>,
    upgraded: Result<Upgraded, String>,
) -> Option<Socket> {
    let upgraded = match upgraded {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return None;
        }
    };
    let socket = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            session.install_writer(Writer::Tcp(write));
            Socket::Plain(Reader::new(read, parts.read_buf))
        }
        // TLS or HTTP/2: the stream is not a `TcpStream`; `run` splits an HTTP/2 one.
        Err(upgraded) => match records::take_over(upgraded) {
            Ok(Ok(Taken::Records(read, write, early))) => {
                tls_session(node, "gateway");
                session.install_writer(Writer::Stream(Box::into_pin(write)));
                Socket::Records(Box::new(Reader::new(*read, early)))
            }
            Ok(Ok(Taken::Rustls(stream, early))) => {
                tls_session(node, "rustls");
                let (read, write) = tokio::io::split(*stream);
                session.install_writer(Writer::Stream(Box::pin(write)));
                Socket::Rustls(Reader::new(read, early))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not take the TLS connection over from rustls");
                return None;
            }
            Err(upgraded) => Socket::Stream(upgraded),
        },
    };
    tracing::info!(
        remote = %session.remote_addr,
        transport = session.transport.as_str(),
        deflate = session.deflate.is_some(),
        user = session.user.as_deref().unwrap_or(""),
        "session open"
    );
    Some(socket)
}

/// Per-session rate limits on what the client sends.
struct Rates {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Rates {
    fn new(node: &Node) -> Self {
        let cfg = &node.config;
        Self {
            messages: Bucket::new(f64::from(cfg.max_messages_per_second), 0.0),
            bytes: Bucket::new(
                cfg.max_bytes_per_second as f64,
                cfg.max_message_bytes.get() as f64,
            ),
        }
    }

    /// Takes one message of `len` bytes; `false` when it is over either rate.
    fn take(&mut self, len: usize) -> bool {
        if self.messages.is_none() && self.bytes.is_none() {
            return true;
        }
        let now = Instant::now();
        self.messages.as_mut().is_none_or(|b| b.take(1.0, now))
            && self.bytes.as_mut().is_none_or(|b| b.take(len as f64, now))
    }
}

/// Reads the socket until the session ends and says how it ended. Decoding and delivery run
/// only while bytes are buffered; while the client is quiet the task waits in
/// [`Reader::fill`], holding no buffer.
async fn read_loop<W: Wire>(
    node: &Node,
    session: &Arc<Session>,
    mut reader: Reader<W>,
) -> SessionEnd {
    let mut protocol = ClientProtocol::new(
        node.config.max_message_bytes.get(),
        session.deflate.is_some(),
    );
    let mut rates = Rates::new(node);
    let mut need = 0;
    loop {
        if !reader.buf().is_empty() {
            // Boxed: delivery's state is large and exists only while there is something to
            // deliver, not while the session is idle.
            let taken = Box::pin(take_steps(
                node,
                session,
                &mut protocol,
                &mut rates,
                reader.buf(),
            ));
            match taken.instrument(span(session)).await {
                Ok(n) => need = n,
                Err(end) => return end,
            }
        }
        // Both arms are cancel-safe: a kill loses no bytes that matter.
        let more = tokio::select! {
            biased;
            _ = session.killed() => return dropped(session),
            more = reader.fill(need) => more,
        };
        match more {
            Ok(true) => {}
            Ok(false) | Err(_) => return dropped(session),
        }
    }
}

/// Acts on every complete frame in `buf`; `Ok` with the buffer size the next step needs, `Err`
/// once the session has ended.
async fn take_steps(
    node: &Node,
    session: &Arc<Session>,
    protocol: &mut ClientProtocol,
    rates: &mut Rates,
    buf: &mut BytesMut,
) -> Result<usize, SessionEnd> {
    loop {
        let step = match protocol.next(buf) {
            Ok(step) => step,
            Err(need) => return Ok(need),
        };
        session.touch();
        let message = match step {
            Step::Message(m) => m,
            Step::Fragment | Step::Pong => continue,
            Step::Ping(payload) => {
                session.send_control(frame::encode(Opcode::Pong, &payload));
                continue;
            }
            Step::Close(close) => {
                let end = session.client_closed(close.code, close.reason);
                session.flushed(node.config.close_timeout).await;
                return Err(end);
            }
            Step::Fail { code, why } => {
                tracing::info!(code, why, "closing session on bad client data");
                return Err(fail(node, session, code, &why).await);
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
        if !rates.take(message.len()) {
            node.metrics.rate_limited.inc();
            tracing::info!("closing session over its message rate");
            return Err(fail(node, session, close_code::POLICY, "rate limit exceeded").await);
        }
        session.received(message.len());
        let (message, client_seq) = match &session.reliable {
            None => (message, 0),
            Some(rel) => match Box::pin(node.client_envelope(session, rel, message)).await {
                Ok(Some(pair)) => pair,
                Ok(None) => continue,
                Err((code, why)) => {
                    tracing::info!(code, why, "closing reliable session on a bad envelope");
                    return Err(fail(node, session, code, &why).await);
                }
            },
        };
        if let Some(rel) = &session.reliable {
            // A connection a resume replaced delivers nothing more: the client sends it again
            // on the connection that replaced it.
            if !rel.current().is_some_and(|c| Arc::ptr_eq(&c, session)) {
                return Err(dropped(session));
            }
        }
        // A delivery waiting for room in the inbox stops when a resume on this node takes the
        // session over: that resume moves the inbox's messages to the new connection, and the
        // client sends this one there (it was never acknowledged). Finishing here instead
        // would put it into an inbox nobody reads and mark it received.
        let replaced = async {
            match &session.reliable {
                Some(rel) => rel.replaced(session).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = session.killed() => return Err(dropped(session)),
            _ = replaced => return Err(dropped(session)),
            delivered = node.deliver(session, message, client_seq) => {
                // The inbox was sealed by a resume that raced this delivery.
                if !delivered {
                    return Err(dropped(session));
                }
            }
        }
        if let Some(rel) = &session.reliable {
            rel.received(client_seq);
        }
    }
}

fn tls_session(node: &Node, records: &'static str) {
    node.metrics
        .tls_sessions
        .get_or_create(&crate::metrics::RecordsLabel { records })
        .inc();
}

/// The connection ended without a completed close handshake.
fn dropped(session: &Session) -> SessionEnd {
    session.closing().unwrap_or(SessionEnd {
        code: close_code::ABNORMAL,
        reason: "connection dropped".into(),
        closed_by: Closer::Client,
    })
}

/// Fails the connection (RFC 6455 §7.1.7): send a close frame, and do not wait for an answer.
async fn fail(node: &Node, session: &Arc<Session>, code: u16, reason: &str) -> SessionEnd {
    session.close(code, reason, Closer::Gateway, true);
    session.flushed(node.config.close_timeout).await;
    dropped(session)
}
