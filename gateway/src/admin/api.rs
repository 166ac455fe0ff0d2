//! The admin JSON API under `/admin/api/` (the caller is already authorized):
//!
//! - `GET node`: this node, its counters and the registry's state.
//! - `GET nodes`: every node of the cluster (`ready`, `draining`, `joining`, `lost`).
//! - `GET hubs`: open sessions per hub, summed over the nodes.
//! - `GET sessions?id=` | `?user=[&hub=]` | `?hub=[&group=]`, with `page_token`, `page_size`.
//! - `POST sessions/{id}/close`, body `{"code":…,"reason":…}` (both optional).
//! - `POST drain`: this node stops admitting clients and closes its sessions with 1001; the
//!   process keeps running (and stays in the cluster, shown as draining) until SIGTERM/SIGINT.
//!
//! Every answer is JSON; every refusal is `{"error": "…"}` with a 4xx or 5xx status, mapped
//! from the gateway's errors in [`ApiError::from`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_proto::v1 as pb;

use super::info::{self, NodeInfo};
use crate::{
    client::http::Body,
    config::is_name,
    error::Error,
    frame::close_code,
    node::{validate_group, Node, Route, Scope},
    registry::{ListFilter, RegistryError, SessionRecord},
    session::SessionId,
};

/// Largest page of `sessions` (and the default).
const MAX_PAGE: usize = 100;
/// Largest request body (a close's code and reason).
const MAX_BODY: usize = 4 * 1024;
/// How long a client may take to send that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest user name or page token taken from a query.
const MAX_PARAM: usize = 512;
/// Most hubs `hubs` answers (the busiest).
const MAX_HUBS: usize = 200;

/// A refused call: its status and the reason shown to the operator.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// The method to use instead (a 405's `Allow`).
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The one mapping from the gateway's errors to HTTP statuses.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument(_) | Error::Registry(RegistryError::BadPageToken) => {
                StatusCode::BAD_REQUEST
            }
            Error::NotFound(_) | Error::Gone { .. } => StatusCode::NOT_FOUND,
            Error::Registry(_) | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Remote(s) => match s.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_GATEWAY,
            },
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult = Result<Value, ApiError>;

pub(super) async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    match dispatch(node, req).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(status = e.status.as_u16(), error = %e.message, "admin call failed");
            } else {
                tracing::debug!(status = e.status.as_u16(), error = %e.message, "admin call refused");
            }
            let mut r = json(e.status, &json!({ "error": e.message }));
            if let Some(allow) = e.allow {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            r
        }
    }
}

async fn dispatch(node: &Arc<Node>, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path();
    let rest = path.strip_prefix("/admin/api/").unwrap_or_default();
    match rest {
        "node" => {
            only(&req, Method::GET)?;
            Ok(node_json(node))
        }
        "nodes" => {
            only(&req, Method::GET)?;
            Ok(nodes(node).await)
        }
        "hubs" => {
            only(&req, Method::GET)?;
            Ok(hubs(node).await)
        }
        "sessions" => {
            only(&req, Method::GET)?;
            sessions(node, req.uri().query().unwrap_or_default()).await
        }
        "drain" => {
            only(&req, Method::POST)?;
            Ok(drain(node).await)
        }
        _ => match rest
            .strip_prefix("sessions/")
            .and_then(|t| t.strip_suffix("/close"))
        {
            Some(id) => {
                only(&req, Method::POST)?;
                let id = id.to_owned();
                close(node, &id, req).await
            }
            None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such admin API")),
        },
    }
}

/// Refuses a request of another method than the endpoint's.
fn only<B>(req: &Request<B>, method: Method) -> Result<(), ApiError> {
    if *req.method() == method {
        return Ok(());
    }
    let allow = if method == Method::POST {
        "POST"
    } else {
        "GET"
    };
    Err(ApiError {
        allow: Some(allow),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("this endpoint takes {allow}"),
        )
    })
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A node as the API shows it, from its published info.
fn node_value(id: &str, info: &NodeInfo, this: bool) -> Value {
    json!({
        "id": id,
        "address": info.addr,
        "client": info.client,
        "admin": info.admin,
        "state": info.state,
        "sessions": info.sessions,
        "started_at": info.started_at,
        "uptime_seconds": info::uptime(info.started_at).as_secs(),
        "version": info.version,
        "stats": info.stats,
        "this": this,
    })
}

fn node_json(node: &Node) -> Value {
    let mut v = node_value(&node.id, &info::of(node), true);
    let registry = match node.registry.cluster() {
        None => json!({ "kind": "memory", "healthy": true }),
        Some(c) => json!({
            "kind": if c.redis.is_redis_cluster() { "redis-cluster" } else { "redis" },
            "healthy": c.redis.is_healthy(),
            "lease_healthy": c.lease_healthy(),
        }),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("registry".into(), registry);
    }
    v
}

/// Every node of the node set. While Redis cannot be read, this node alone, with the error.
async fn nodes(node: &Node) -> Value {
    let me = node_value(&node.id, &info::of(node), true);
    let Some(cluster) = node.registry.cluster() else {
        return json!({ "nodes": [me] });
    };
    let rows = match cluster.redis.node_infos().await {
        Ok(rows) => rows,
        Err(e) => return json!({ "nodes": [me], "error": e.to_string() }),
    };
    let mut out = Vec::with_capacity(rows.len() + 1);
    let mut seen_me = false;
    for row in rows {
        if row.id == *node.id {
            // This node's own figures are live, not as of its last renewal.
            seen_me = true;
            out.push(me.clone());
            continue;
        }
        let info = row
            .info
            .as_deref()
            .and_then(|s| serde_json::from_str::<NodeInfo>(s).ok());
        let v = match (&row.lease, info) {
            (Some(_), Some(info)) => node_value(&row.id, &info, false),
            // A node in the node set without a lease: dead, or its sessions are being reaped.
            (None, _) => json!({
                "id": row.id,
                "state": "lost",
                "sessions": row.registered,
                "this": false,
            }),
            // Live, but it published nothing readable (an older version, a failed write).
            (Some(addr), None) => json!({
                "id": row.id,
                "address": addr,
                "state": "unknown",
                "sessions": row.registered,
                "this": false,
            }),
        };
        out.push(v);
    }
    if !seen_me {
        // Not yet (or no longer) in the node set: still worth showing.
        out.push(me);
    }
    json!({ "nodes": out })
}

/// Sessions per hub: this node's pool, plus every other live node's busiest hubs.
async fn hubs(node: &Node) -> Value {
    let mut totals: HashMap<String, (u64, u64)> = HashMap::new();
    let mine = info::hubs(node);
    for (hub, n) in &mine {
        totals.insert(hub.to_string(), (*n as u64, 1));
    }
    let mut partial = false;
    let mut scope = "node";
    let mut error = None;
    if let Some(cluster) = node.registry.cluster() {
        scope = "cluster";
        // While Redis cannot be read, this node's hubs alone, with the error.
        let rows = cluster.redis.node_infos().await.unwrap_or_else(|e| {
            scope = "node";
            error = Some(e.to_string());
            Vec::new()
        });
        for row in rows {
            if row.id == *node.id || row.lease.is_none() {
                continue;
            }
            let Some(info) = row
                .info
                .as_deref()
                .and_then(|s| serde_json::from_str::<NodeInfo>(s).ok())
            else {
                partial = true;
                continue;
            };
            partial |= info.more_hubs;
            for (hub, n) in info.hubs {
                let t = totals.entry(hub).or_default();
                t.0 += n;
                t.1 += 1;
            }
        }
    }
    let mut list: Vec<(String, (u64, u64))> = totals.into_iter().collect();
    list.sort_unstable_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    partial |= list.len() > MAX_HUBS;
    list.truncate(MAX_HUBS);
    json!({
        "scope": scope,
        // Other nodes publish their busiest hubs only: quieter hubs may be missing or short.
        "partial": partial,
        "error": error,
        "hubs": list
            .into_iter()
            .map(|(hub, (sessions, nodes))| json!({ "hub": hub, "sessions": sessions, "nodes": nodes }))
            .collect::<Vec<_>>(),
    })
}

fn record(r: &SessionRecord) -> Value {
    json!({
        "id": r.id.as_str(),
        "hub": r.hub,
        "user": r.user,
        "groups": r.groups,
        "node": r.node,
        "connected_at": info::millis(r.connected_at),
        "last_active_at": info::millis(r.last_active_at),
        "remote_addr": r.remote_addr,
    })
}

fn session_id(s: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(s).ok_or_else(|| ApiError::bad(format!("{s:?} is not a session ID")))
}

/// `sessions`: one session by ID, or a page of a listing by user, hub or group.
async fn sessions(node: &Node, query: &str) -> ApiResult {
    let mut q: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !matches!(
            &*k,
            "id" | "user" | "hub" | "group" | "page_token" | "page_size"
        ) {
            return Err(ApiError::bad(format!("unknown parameter {k:?}")));
        }
        if v.len() > MAX_PARAM {
            return Err(ApiError::bad(format!(
                "{k} is longer than {MAX_PARAM} bytes"
            )));
        }
        if q.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(ApiError::bad(format!("{k} is given twice")));
        }
    }
    let take = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(id) = take("id") {
        let id = session_id(id.trim())?;
        let r = node.get(&id).await?;
        return Ok(json!({ "sessions": [record(&r)], "next_page_token": null }));
    }
    let filter = ListFilter {
        hub: take("hub"),
        group: take("group"),
        user: take("user"),
        node: None,
    };
    if filter.hub.is_none() && filter.user.is_none() {
        return Err(ApiError::bad(
            "give id, user, hub, or group with hub (a group belongs to a hub)",
        ));
    }
    if let Some(hub) = &filter.hub {
        if !is_name(hub) {
            return Err(ApiError::bad(
                "invalid hub: 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
    }
    if let Some(group) = &filter.group {
        validate_group(group)?;
    }
    let size = match take("page_size") {
        None => MAX_PAGE,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::bad("page_size must be a positive number"))?
            .min(MAX_PAGE),
    };
    let token = take("page_token");
    let page = node.list(&filter, size, token.as_deref()).await?;
    Ok(json!({
        "sessions": page.records.iter().map(record).collect::<Vec<_>>(),
        "next_page_token": page.next,
    }))
}

/// What a close may say; both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    code: Option<u16>,
    reason: Option<String>,
}

/// Closes a session wherever it is: here, or through its node's backend API (as a backend's
/// `Close` is forwarded).
async fn close(node: &Node, id: &str, req: Request<Incoming>) -> ApiResult {
    let id = session_id(id)?;
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body must be JSON of at most {MAX_BODY} bytes"),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            ))
        }
    };
    let asked: CloseBody = if body.iter().all(u8::is_ascii_whitespace) {
        CloseBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad(format!(
                "the body must be {{\"code\": 1000-4999, \"reason\": \"...\"}}: {e}"
            ))
        })?
    };
    let code = asked.code.unwrap_or(close_code::NORMAL);
    let reason = asked
        .reason
        .unwrap_or_else(|| "closed by an operator".to_owned());
    match node.route(Scope::Cluster, &id).await? {
        Route::Here => node.close(&id, code, &reason).await?,
        Route::There { mut peer } => {
            peer.close(pb::CloseRequest {
                session_id: id.to_string(),
                code: u32::from(code),
                reason: reason.clone(),
            })
            .await
            .map_err(Error::Remote)?;
        }
    }
    tracing::info!(session = %id, code, reason, "session closed by an operator");
    Ok(json!({ "closed": id.as_str(), "code": code, "reason": reason }))
}

/// Drains this node and leaves the process running (see the module docs).
async fn drain(node: &Node) -> Value {
    let sessions = node.pool.len();
    if node.is_draining() {
        return json!({ "state": "draining", "already": true, "sessions": sessions });
    }
    tracing::warn!(
        sessions,
        "draining on an operator's request; the process keeps running until SIGTERM"
    );
    node.drain();
    if let Some(cluster) = node.registry.cluster() {
        // Other nodes' pages learn it now rather than at the next lease renewal.
        info::publish(node, cluster).await;
    }
    json!({ "state": "draining", "already": false, "sessions": sessions })
}
