//! The client listener: plain HTTP (health, readiness, metrics) and WebSocket upgrades at
//! `/ws/{hub}` on one port.

mod connection;
mod http;
mod upgrade;

use std::{sync::Arc, time::Duration};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::node::Node;

/// Accepts client connections until `stop` is cancelled. Each connection is served by its own
/// task on `tasks`; an accept error backs off (up to 1 s) instead of ending the loop.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let handshake_timeout = node.config.handshake_timeout;
    let mut backoff = Duration::from_millis(10);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    // Usually EMFILE: out of file descriptors. Retrying at once would spin.
                    tracing::warn!(error = %e, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let node = Arc::clone(&node);
        let stop = stop.clone();
        let span = tracing::debug_span!("http", %remote);
        tasks.spawn(
            async move {
                let service = hyper::service::service_fn(move |req| {
                    http::route(Arc::clone(&node), remote, req)
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(handshake_timeout)
                    .serve_connection(TokioIo::new(tcp), service)
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
            .instrument(span),
        );
    }
}
