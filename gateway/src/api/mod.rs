//! The backend listener: `switchboard.v1.Gateway` behind the bearer-token check, plus the
//! standard health and reflection services (open, so probes and tools work without a token).

mod auth;
pub(crate) mod convert;
mod peer;
mod service;
mod status;
mod streams;

pub(crate) use convert::{encode_event, to_pb_message};

use std::{sync::Arc, time::Duration};

use switchboard_proto::v1::{gateway_server::GatewayServer, peer_server::PeerServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Server, Request, Status};

pub(crate) use auth::Grant;

use crate::{node::Node, tls::ReloadableTls};

/// gRPC messages carry a client message plus a little framing; allow that much over the limit.
const ENVELOPE_SLACK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves the backend API on `listener` until `stop` is cancelled, then finishes in-flight
/// calls. With `tls`, every connection is a TLS handshake first (bounded in time).
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<Arc<ReloadableTls>>,
    stop: CancellationToken,
) -> Result<(), ApiError> {
    let limit = node.config.max_message_bytes.get() + ENVELOPE_SLACK;
    let tokens = auth::Tokens::from_config(&node.config);
    let gateway = GatewayServer::new(service::GatewayService::new(Arc::clone(&node)))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let gateway_tokens = tokens.clone();
    let gateway = InterceptedService::new(gateway, move |mut req: Request<()>| {
        let grant = gateway_tokens.check(&req)?;
        req.extensions_mut().insert(grant);
        Ok(req)
    });
    // Only other nodes call Peer, with the full token.
    let peer = InterceptedService::new(
        PeerServer::new(peer::PeerService::new(Arc::clone(&node)))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        move |req: Request<()>| match tokens.check(&req)? {
            Grant::All => Ok(req),
            Grant::Hubs(_) => Err(Status::permission_denied("a scoped token cannot call Peer")),
        },
    );

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<GatewayServer<service::GatewayService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // No `tcp_nodelay` here: tonic ignores it for `serve_with_incoming`; both incoming streams
    // set it themselves.
    let router = Server::builder()
        .max_concurrent_streams(Some(node.config.backend_max_streams))
        .initial_stream_window_size(node.config.backend_stream_window)
        .initial_connection_window_size(node.config.backend_connection_window)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(gateway)
        .add_service(peer);
    let shutdown = stop.clone().cancelled_owned();
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY, a message's last DATA frame waits for the ACK of the
                    // one before it, which the backend's kernel delays by up to 40 ms.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await?
        }
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, node.config.handshake_timeout, stop);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
    }
    Ok(())
}

/// Accepts TCP connections and completes their TLS handshakes concurrently (each bounded by
/// `timeout`), yielding the finished ones.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    timeout: Duration,
    stop: CancellationToken,
) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>>
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "backend accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // See `serve`: Nagle's algorithm would hold back the end of every message.
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "backend TLS handshake failed")
                    }
                    Err(_) => tracing::info!(%remote, "backend TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
