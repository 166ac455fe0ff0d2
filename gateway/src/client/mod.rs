//! The client listener: plain HTTP (health, readiness, metrics) and WebSockets at `/ws/{hub}` on
//! one port, over HTTP/1.1 (Upgrade) or HTTP/2 (extended CONNECT, RFC 8441: many sessions on
//! one connection). HTTP/2 is chosen by ALPN (`h2`) on TLS, and by its connection preface
//! ("prior knowledge") on cleartext.

mod connection;
pub(crate) mod demo;
pub(crate) mod http;
pub(crate) mod protocol;
pub(crate) mod reader;
pub(crate) mod upgrade;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{accept::Acceptor, node::Node, tls::ReloadableTls};

/// Accepts client connections until `stop` is cancelled. Each connection is served by its own
/// task on `tasks`; an accept error backs off (up to 1 s) instead of ending the loop.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<Arc<ReloadableTls>>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let handshake_timeout = node.config.handshake_timeout;
    // The kernel's backstop for what the write deadline cannot reach: bytes already in the
    // socket's buffer with nothing queued behind them, and sockets closed in order (TLS) with
    // bytes the peer never takes. Twice the deadline, so that ours fires first, resets the
    // connection and counts it.
    let user_timeout = node.config.write_timeout.saturating_mul(2);
    let mut acceptor = Acceptor::new(listener, "client");
    let slots = Arc::new(Semaphore::new(node.config.max_handshakes.get()));
    loop {
        // Taken before the accept: over the bound, connections wait in the kernel's listen
        // queue, where they cost a socket and nothing of ours.
        let Some(place) = Handshake::wait(&slots, &node, &stop).await else {
            break;
        };
        let Some((tcp, remote)) = acceptor.next(&stop).await else {
            break;
        };
        let slot = Handshake::new(place, &node);
        let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(user_timeout));
        let node = Arc::clone(&node);
        let stop = stop.clone();
        let span = tracing::debug_span!("http", %remote);
        let tls = tls.clone();
        tasks.spawn(
            async move {
                let Some(tls) = tls else {
                    let http2 =
                        match tokio::time::timeout(handshake_timeout, sends_h2_preface(&tcp)).await
                        {
                            Ok(h2) => h2,
                            Err(_) => {
                                return tracing::debug!("no request within the handshake timeout")
                            }
                        };
                    let conn = serve_http(TokioIo::new(tcp), http2, node, remote, stop);
                    return slot.hold(http2, handshake_timeout, conn).await;
                };
                // A client that stalls its TLS handshake is dropped like a slow HTTP one.
                match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let conn = serve_http(TokioIo::new(stream), http2, node, remote, stop);
                        slot.hold(http2, handshake_timeout, conn).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
            .instrument(span),
        );
    }
}

/// A client connection's place among those in their handshake (`--max-handshakes`): from
/// the accept until it is a WebSocket (or, on HTTP/2, until the connection is known as one:
/// its sessions are handshakes on a connection already counted).
struct Handshake {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Handshake {
    /// Waits for a free place, or `None` once `stop` is cancelled.
    async fn wait(
        slots: &Arc<Semaphore>,
        node: &Node,
        stop: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(slots).try_acquire_owned() {
            return Some(p);
        }
        node.metrics.handshake_waits.inc();
        tracing::debug!(
            "--max-handshakes connections in their handshake; accepting when one is done"
        );
        tokio::select! {
            p = Arc::clone(slots).acquire_owned() => p.ok(),
            _ = stop.cancelled() => None,
        }
    }

    /// The place `permit` reserved, now taken by an accepted connection.
    fn new(permit: OwnedSemaphorePermit, node: &Node) -> Self {
        node.metrics.handshakes.inc();
        Self {
            _permit: permit,
            gauge: node.metrics.handshakes.clone(),
        }
    }

    /// Serves `conn`, keeping the place until the HTTP/1.1 connection ends — an upgrade ends
    /// it once the 101 is out — or for `limit` at most (a keep-alive connection that never
    /// upgrades is not a handshake for long).
    async fn hold(self, http2: bool, limit: Duration, conn: impl Future<Output = ()>) {
        if http2 {
            drop(self);
            return conn.await;
        }
        tokio::pin!(conn);
        tokio::select! {
            () = &mut conn => return,
            () = tokio::time::sleep(limit) => {}
        }
        drop(self);
        conn.await
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext client starts with the HTTP/2 preface. Peeks, so nothing is consumed
/// and HTTP/1.1 connections keep the bare `TcpStream` (the idle read side and direct writes
/// need it). "PRI" is enough to tell (no HTTP/1.1 method the gateway serves starts so; the
/// HTTP/2 server checks the rest of the preface); shorter beginnings ("P", "PR") are looked at
/// again a little later.
async fn sends_h2_preface(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 3];
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == buf.len() {
            return true;
        }
        // Peeking again at once would return the same bytes: the socket stays readable.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Serves HTTP/1.1 (and upgrades) or HTTP/2 (and extended CONNECTs) on one connection until it
/// ends or `stop` is cancelled.
async fn serve_http<I>(
    io: I,
    http2: bool,
    node: Arc<Node>,
    remote: SocketAddr,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let handshake_timeout = node.config.handshake_timeout;
    let service =
        hyper::service::service_fn(move |req| http::route(Arc::clone(&node), remote, req));
    if http2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // SETTINGS_ENABLE_CONNECT_PROTOCOL: browsers may open WebSockets on this connection.
            .enable_connect_protocol()
            .serve_connection(io, service);
        tokio::pin!(conn);
        until_done(conn, &stop, |c| c.graceful_shutdown()).await;
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(handshake_timeout)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        until_done(conn, &stop, |c| c.graceful_shutdown()).await;
    }
}

/// Drives a connection to its end; once `stop` is cancelled, shuts it down gracefully (requests
/// in flight finish, no new ones are taken) and waits for that.
async fn until_done<C, E>(
    mut conn: Pin<&mut C>,
    stop: &CancellationToken,
    graceful: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = stop.cancelled() => {
            graceful(conn.as_mut());
            let _ = conn.await;
        }
    }
}
