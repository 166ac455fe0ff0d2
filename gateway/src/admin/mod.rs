//! The admin listener (`--admin-listen`, default `127.0.0.1:9090`, plain HTTP/1.1): a live page
//! for operators, the JSON API it polls, and the probes and metrics of the client port.
//!
//! | path | access |
//! | --- | --- |
//! | `GET /admin` | open: the page holds no data, it fetches it with the token typed into it |
//! | `/admin/api/*` | `Authorization: Bearer <--admin-token>` (compared in constant time) |
//! | `GET /healthz`, `/readyz`, `/metrics` | open, for probes and scrapers |
//!
//! Without `--admin-token` (allowed on loopback only, `config` refuses it elsewhere) the API is
//! open to whoever can reach the port. A browser on the same machine is such a caller, so a
//! web page it visits must not be able to drive the API: requests carrying an `Origin` other
//! than the admin port's own are refused, and so are requests whose `Host` is a name rather
//! than an address (a DNS-rebinding page reaches 127.0.0.1 under its own name).
//!
//! - [`api`]: the JSON endpoints.
//! - [`page`]: the embedded page (`admin.html`), served with a per-response CSP nonce.
//! - [`info`]: what a node publishes about itself in Redis for the other nodes' admin pages.

mod api;
pub(crate) mod info;
mod page;

use std::{convert::Infallible, sync::Arc};

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    accept::Acceptor,
    client::http::{method_not_allowed, ops, text, Body},
    node::Node,
};

/// Accepts admin connections until `stop` is cancelled, one task per connection on `tasks`.
/// It keeps serving while the node drains, so the page shows the drain to its end.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut acceptor = Acceptor::new(listener, "admin");
    while let Some((tcp, remote)) = acceptor.next(&stop).await {
        let node = Arc::clone(&node);
        let stop = stop.clone();
        tasks.spawn(async move {
            let timeout = node.config.handshake_timeout;
            let service = hyper::service::service_fn(move |req| {
                let node = Arc::clone(&node);
                let span = tracing::info_span!(
                    "admin",
                    %remote,
                    method = %req.method(),
                    path = req.uri().path(),
                );
                async move { route(&node, req).await }.instrument(span)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(node: &Arc<Node>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if path.starts_with("/admin/api/") {
        if let Err(refusal) = authorize(node.config.admin_token.as_deref(), req.headers()) {
            tracing::warn!(why = refusal.log, "admin API call refused");
            let mut r = text(refusal.status, refusal.body);
            if refusal.status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"switchboard-admin\""),
                );
            }
            return Ok(r);
        }
        return Ok(api::handle(node, req).await);
    }
    let resp = match path {
        "/admin" | "/admin/" | "/healthz" | "/readyz" | "/metrics"
            if req.method() != Method::GET =>
        {
            method_not_allowed("GET")
        }
        "/admin" | "/admin/" => page::page(),
        _ => ops(node, path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
    };
    Ok(resp)
}

/// Why an API call is refused: the status, the body the caller reads, the log line's words.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: &'static str,
    log: &'static str,
}

/// Checks an API call's headers against `--admin-token` (and, without one, that the call
/// cannot come from another site's page; see the module docs).
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), Refusal> {
    // Two Host headers: which one names the target is ambiguous, so neither counts.
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().ok(),
        _ => None,
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = match (origin.to_str().ok(), host) {
            (Some(o), Some(h)) => o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .is_some_and(|authority| authority.eq_ignore_ascii_case(h)),
            _ => false,
        };
        if !same {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                body: "cross-origin calls to the admin API are refused\n",
                log: "cross-origin request",
            });
        }
    }
    let Some(token) = token else {
        if host.is_some_and(is_address) {
            return Ok(());
        }
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            body: "without --admin-token the admin API answers only requests addressed to an IP \
                   address or localhost\n",
            log: "no admin token and a Host that is a name",
        });
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            body: "missing admin token: send 'Authorization: Bearer <token>'\n",
            log: "no token",
        });
    };
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            body: "invalid admin token\n",
            log: "wrong token",
        })
    }
}

/// Whether a `Host` header names an IP address (with or without a port) or `localhost`.
fn is_address(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = match host.rsplit_once(':') {
        // `[::1]:9090`, `127.0.0.1:9090`, `localhost:9090`.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => name,
        _ => host,
    };
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, header::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_is_required_and_compared() {
        let host = ("host", "127.0.0.1:9090");
        let t = Some("s3cret");
        assert_eq!(
            authorize(t, &headers(&[host])).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        let wrong = headers(&[host, ("authorization", "Bearer nope")]);
        assert_eq!(
            authorize(t, &wrong).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        let basic = headers(&[host, ("authorization", "Basic s3cret")]);
        assert!(authorize(t, &basic).is_err());
        let right = headers(&[
            ("host", "gw.example:9090"),
            ("authorization", "Bearer s3cret"),
        ]);
        authorize(t, &right).unwrap();
    }

    #[test]
    fn other_sites_cannot_drive_the_api() {
        let cross = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "https://evil.example"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert_eq!(
            authorize(Some("s3cret"), &cross).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let same = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
        ]);
        authorize(None, &same).unwrap();
        // Without a token, a page under another name rebound to loopback is refused.
        let rebound = headers(&[("host", "evil.example:9090")]);
        assert!(authorize(None, &rebound).is_err());
        for ok in ["localhost:9090", "[::1]:9090", "127.0.0.1", "::1"] {
            assert!(is_address(ok), "{ok}");
        }
        assert!(!is_address("example.com:9090"));
    }
}
