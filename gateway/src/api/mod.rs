//! The backend listener: `switchboard.v1.Gateway` behind the bearer-token check, plus the
//! standard health and reflection services (open, so probes and tools work without a token).

mod convert;
mod peer;
mod service;
mod status;
mod streams;

pub(crate) use convert::encode_event;

use std::sync::Arc;

use subtle::ConstantTimeEq;
use switchboard_proto::v1::{gateway_server::GatewayServer, peer_server::PeerServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::interceptor::InterceptedService, transport::Server, Request, Status};

use crate::node::Node;

/// gRPC messages carry a client message plus a little framing; allow that much over the limit.
const ENVELOPE_SLACK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves the backend API on `listener` until `shutdown` resolves, then finishes in-flight calls.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ApiError> {
    let limit = node.config.max_message_bytes.get() + ENVELOPE_SLACK;
    let token = node.config.backend_token.clone();
    let gateway = GatewayServer::new(service::GatewayService::new(Arc::clone(&node)))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let check = move |req: Request<()>| {
        authorize(token.as_deref(), &req)?;
        Ok(req)
    };
    let gateway = InterceptedService::new(gateway, check.clone());
    let peer = InterceptedService::new(
        PeerServer::new(peer::PeerService::new(Arc::clone(&node)))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        check,
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

    Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(gateway)
        .add_service(peer)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Checks the bearer token in constant time, before the request body is decoded.
fn authorize(expected: Option<&str>, req: &Request<()>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if bool::from(t.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => {
            tracing::warn!("backend call with a wrong token");
            Err(Status::unauthenticated("invalid backend token"))
        }
        None => {
            tracing::warn!("backend call without a token");
            Err(Status::unauthenticated(
                "missing backend token: send 'authorization: Bearer <token>'",
            ))
        }
    }
}
