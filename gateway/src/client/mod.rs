//! The client listener: plain HTTP (health, readiness, metrics) and WebSocket upgrades at
//! `/ws/{hub}` on one port.

mod connection;
pub(crate) mod demo;
pub(crate) mod http;
mod reader;
mod upgrade;

use std::{net::SocketAddr, sync::Arc};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
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
    while let Some((tcp, remote)) = acceptor.next(&stop).await {
        let _ = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(user_timeout));
        let node = Arc::clone(&node);
        let stop = stop.clone();
        let span = tracing::debug_span!("http", %remote);
        let tls = tls.clone();
        tasks.spawn(
            async move {
                let Some(tls) = tls else {
                    return serve_http(TokioIo::new(tcp), node, remote, stop).await;
                };
                // A client that stalls its TLS handshake is dropped like a slow HTTP one.
                match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(stream)) => serve_http(TokioIo::new(stream), node, remote, stop).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
            .instrument(span),
        );
    }
}

/// Serves HTTP/1.1 (and upgrades) on one connection until it ends or `stop` is cancelled.
async fn serve_http<I>(io: I, node: Arc<Node>, remote: SocketAddr, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let handshake_timeout = node.config.handshake_timeout;
    let service =
        hyper::service::service_fn(move |req| http::route(Arc::clone(&node), remote, req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
