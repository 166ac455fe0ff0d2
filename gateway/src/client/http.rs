//! Routes of the client port: `/ws/{hub}` upgrades, `/healthz`, `/readyz`, `/metrics` (unless
//! `--ops-on-client-port false`; the admin port serves them too), `/demo`.
//! Every refusal is a plain-text body saying why, with the status a client library expects.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::upgrade;
use crate::{config::is_name, node::Node};

pub(crate) type Body = Full<Bytes>;

pub(crate) async fn route(
    node: Arc<Node>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let resp = if let Some(hub) = path.strip_prefix("/ws/") {
        if req.method() != Method::GET {
            method_not_allowed("GET")
        } else if !is_name(hub) {
            refuse(
                &node,
                "bad_hub",
                StatusCode::BAD_REQUEST,
                "invalid hub: 1-64 characters of [A-Za-z0-9._-]\n",
            )
        } else if req.version() < http::Version::HTTP_11 {
            // RFC 6455 §4.1: the opening handshake is HTTP/1.1 or later; an HTTP/1.0 peer
            // cannot keep a connection switched to another protocol.
            refuse(
                &node,
                "old_http",
                StatusCode::BAD_REQUEST,
                "WebSocket upgrades need HTTP/1.1\n",
            )
        } else if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            let mut r = refuse(
                &node,
                "not_upgrade",
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint takes WebSocket upgrades only\n",
            );
            r.headers_mut().insert(
                header::UPGRADE,
                header::HeaderValue::from_static("websocket"),
            );
            r
        } else {
            let hub: Arc<str> = Arc::from(hub);
            upgrade::upgrade(node, remote, hub, req).await
        }
    } else {
        match path {
            // Moved to the admin port (`--ops-on-client-port false`): as if they never were.
            "/healthz" | "/readyz" | "/metrics" if !node.config.ops_on_client_port => {
                text(StatusCode::NOT_FOUND, "not found\n")
            }
            "/healthz" | "/readyz" | "/metrics" | "/demo" if req.method() != Method::GET => {
                method_not_allowed("GET")
            }
            "/demo" => super::demo::page(),
            _ => ops(&node, path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
        }
    };
    Ok(resp)
}

/// `/healthz`, `/readyz` and `/metrics` (GET), served on the client port and the admin port;
/// `None` for any other path.
pub(crate) fn ops(node: &Node, path: &str) -> Option<Response<Body>> {
    Some(match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(node),
        "/metrics" => {
            if node.registry.cluster().is_none() {
                // Alone, the registry holds exactly the pool (a cluster's gauges come from
                // Redis, read by the reaper's loop).
                node.metrics.registry_sessions.set(node.pool.len() as i64);
                node.metrics.cluster_nodes.set(1);
            }
            let mut r = text(StatusCode::OK, node.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => return None,
    })
}

fn readiness(node: &Node) -> Response<Body> {
    let cluster = node.registry.cluster();
    if node.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !node.has_joined() {
        text(StatusCode::SERVICE_UNAVAILABLE, "joining the cluster\n")
    } else if cluster.is_some_and(|c| !c.lease_healthy()) {
        text(StatusCode::SERVICE_UNAVAILABLE, "node lease not renewed\n")
    } else if !node.registry.is_healthy() {
        text(StatusCode::SERVICE_UNAVAILABLE, "registry degraded\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A refused upgrade: counted by reason, logged, answered with `status` and `why`.
pub(crate) fn refuse(
    node: &Node,
    reason: &'static str,
    status: StatusCode,
    why: impl Into<Bytes>,
) -> Response<Body> {
    node.metrics
        .upgrades_refused
        .get_or_create(&crate::metrics::ReasonLabel { reason })
        .inc();
    tracing::info!(reason, status = status.as_u16(), "upgrade refused");
    text(status, why)
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}
