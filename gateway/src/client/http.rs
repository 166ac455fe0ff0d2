//! Routes of the client port: `/ws/{hub}` upgrades, `/healthz`, `/readyz`, `/metrics` (unless
//! `--ops-on-client-port false`; the admin port serves them too), `/demo` and `/client.js`.
//! Every refusal is a plain-text body saying why, with the status a client library expects.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::upgrade;
use crate::{config::is_name, node::Node};

pub(crate) type Body = Full<Bytes>;

/// Where a request goes, decided from its method, path, version and upgrade headers alone: the
/// server acts on it, and the fuzz targets check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// A WebSocket upgrade for this hub (the handshake itself is checked next).
    Upgrade(&'a str),
    /// `/healthz`, `/readyz` or `/metrics`.
    Ops(&'a str),
    /// `/demo` or `/client.js`: an embedded file (`demo.rs`), the page or the reliable client
    /// it imports. One variant for both, the path telling them apart, so the fuzz facade's
    /// answer for it (a 200) holds for both.
    Demo,
    NotFound,
    /// 405; these paths take GET only.
    MethodNotAllowed,
    /// 400: the hub is not 1–64 of `[A-Za-z0-9._-]`.
    BadHub,
    /// 400: `/ws/{hub}` over HTTP/1.0.
    OldHttp,
    /// 426: `/ws/{hub}` without `Connection: upgrade` and `Upgrade: websocket` (or, over
    /// HTTP/2, without an extended CONNECT for `websocket`).
    NotUpgrade,
}

/// Decides `req`'s route. `ops_on_client_port`: whether the probes and metrics are served here.
pub(crate) fn decide<B>(req: &Request<B>, ops_on_client_port: bool) -> Route<'_> {
    let path = req.uri().path();
    if let Some(hub) = path.strip_prefix("/ws/") {
        if req.version() == http::Version::HTTP_2 {
            return decide_h2(req, hub);
        }
        return if req.method() != Method::GET {
            Route::MethodNotAllowed
        } else if !is_name(hub) {
            Route::BadHub
        } else if req.version() < http::Version::HTTP_11 {
            // RFC 6455 §4.1: the opening handshake is HTTP/1.1 or later; an HTTP/1.0 peer
            // cannot keep a connection switched to another protocol.
            Route::OldHttp
        } else if !fastwebsockets::upgrade::is_upgrade_request(req) {
            Route::NotUpgrade
        } else {
            Route::Upgrade(hub)
        };
    }
    match path {
        // Moved to the admin port (`--ops-on-client-port false`): as if they never were.
        "/healthz" | "/readyz" | "/metrics" if !ops_on_client_port => Route::NotFound,
        "/healthz" | "/readyz" | "/metrics" | "/demo" | "/client.js"
            if req.method() != Method::GET =>
        {
            Route::MethodNotAllowed
        }
        "/demo" | "/client.js" => Route::Demo,
        "/healthz" | "/readyz" | "/metrics" => Route::Ops(path),
        _ => Route::NotFound,
    }
}

/// `/ws/{hub}` over HTTP/2: only an extended CONNECT with `:protocol websocket` (RFC 8441 §4)
/// opens a session.
fn decide_h2<'a, B>(req: &Request<B>, hub: &'a str) -> Route<'a> {
    let websocket = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if req.method() != Method::CONNECT && req.method() != Method::GET {
        Route::MethodNotAllowed
    } else if !is_name(hub) {
        Route::BadHub
    } else if req.method() == Method::CONNECT && websocket {
        Route::Upgrade(hub)
    } else {
        Route::NotUpgrade
    }
}

pub(crate) async fn route(
    node: Arc<Node>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match decide(&req, node.config.ops_on_client_port) {
        Route::Upgrade(hub) => {
            let hub: Arc<str> = Arc::from(hub);
            upgrade::upgrade(node, remote, hub, req).await
        }
        Route::MethodNotAllowed => method_not_allowed("GET"),
        Route::BadHub => refuse(
            &node,
            "bad_hub",
            StatusCode::BAD_REQUEST,
            "invalid hub: 1-64 characters of [A-Za-z0-9._-]\n",
        ),
        Route::OldHttp => refuse(
            &node,
            "old_http",
            StatusCode::BAD_REQUEST,
            "WebSocket upgrades need HTTP/1.1\n",
        ),
        Route::NotUpgrade => {
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
        }
        Route::Demo if req.uri().path() == "/client.js" => super::demo::client_js(),
        Route::Demo => super::demo::page(),
        Route::Ops(path) => {
            ops(&node, path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"))
        }
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn the_client_script_is_served_for_get_only_like_the_demo_page() {
        for path in ["/demo", "/client.js"] {
            assert_eq!(decide(&request(Method::GET, path), true), Route::Demo);
            assert_eq!(decide(&request(Method::GET, path), false), Route::Demo);
            assert_eq!(
                decide(&request(Method::POST, path), true),
                Route::MethodNotAllowed
            );
        }
        for path in [
            "/client.js/",
            "/client.mjs",
            "/demo/client.js",
            "/Client.js",
        ] {
            assert_eq!(decide(&request(Method::GET, path), true), Route::NotFound);
        }
    }
}
