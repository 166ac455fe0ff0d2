//! Admission of a WebSocket upgrade: draining check, connect hook, handshake, session ID.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use switchboard_proto::v1::{AuthorizeRequest, Header};

use super::{
    connection,
    http::{refuse, Body},
};
use crate::{
    config::OutagePolicy,
    frame::{self, Opcode},
    hook::{Allow, Verdict},
    jwt::{self, JwtError},
    limits::Refusal,
    node::{validate_group, Node},
    session::{Admission, Flush, Inbox, QueueLimits, Session, SessionId},
};

/// The response header that tells a client its session ID.
pub(crate) const SESSION_HEADER: &str = "x-switchboard-session";

pub(crate) async fn upgrade(
    node: Arc<Node>,
    remote: SocketAddr,
    hub: Arc<str>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if node.is_draining() {
        return refuse(
            &node,
            "draining",
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down\n",
        );
    }
    if !node.has_joined() {
        return refuse(
            &node,
            "starting",
            StatusCode::SERVICE_UNAVAILABLE,
            "server is starting\n",
        );
    }
    if node.config.registry_outage == OutagePolicy::Refuse && !node.registry.is_healthy() {
        return refuse(
            &node,
            "registry_down",
            StatusCode::SERVICE_UNAVAILABLE,
            "session registry unavailable\n",
        );
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !node.gate.origin_allowed(&hub, origin) {
        return refuse(
            &node,
            "origin",
            StatusCode::FORBIDDEN,
            "origin not allowed\n",
        );
    }
    let permit = match node.gate.admit(remote.ip()) {
        Ok(p) => p,
        Err(Refusal::NodeFull) => {
            return refuse(
                &node,
                "node_full",
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections\n",
            )
        }
        Err(Refusal::IpFull) => {
            return refuse(
                &node,
                "ip_full",
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from your address\n",
            )
        }
    };
    let offered = subprotocols(req.headers());
    let identity = match &node.gate.jwt {
        None => None,
        Some(verifier) => {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let verified = match jwt::find_token(auth, req.uri().query(), &offered) {
                None => Err(JwtError::Missing),
                Some(token) => verifier.verify(&token),
            };
            match verified {
                Ok(identity) => Some(identity),
                Err(e) => return refuse(&node, "jwt", StatusCode::UNAUTHORIZED, format!("{e}\n")),
            }
        }
    };
    // A token carried as a subprotocol is never the session's subprotocol.
    let offered: Vec<String> = offered
        .into_iter()
        .filter(|p| !p.starts_with(jwt::PROTOCOL_PREFIX))
        .collect();
    let mut allow = match &node.gate.hook {
        None => Allow::default(),
        Some(hook) => match hook
            .authorize(hook_request(&req, &hub, remote, &offered))
            .await
        {
            Verdict::Allow(allow) => match check_allow(&allow, &offered) {
                Ok(()) => allow,
                Err(why) => return hook_failed(&node, &why),
            },
            Verdict::Deny { status, reason } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                return refuse(&node, "hook_denied", status, format!("{reason}\n"));
            }
            Verdict::Failed(why) => return hook_failed(&node, &why),
        },
    };
    if let Some(id) = identity {
        // The hook, when there is one, has the last word on the user; groups add up.
        if allow.user.is_empty() {
            allow.user = id.user;
        }
        for g in id.groups {
            if validate_group(&g).is_ok() && !allow.groups.contains(&g) {
                allow.groups.push(g);
            }
        }
    }
    if allow.subprotocol.is_empty() && offered.iter().any(|p| p == jwt::MARKER_PROTOCOL) {
        allow.subprotocol = jwt::MARKER_PROTOCOL.to_owned();
    }
    if allow.groups.len() > node.config.max_groups_per_session {
        return refuse(
            &node,
            "too_many_groups",
            StatusCode::FORBIDDEN,
            format!(
                "{} groups is more than the {} a session may join\n",
                allow.groups.len(),
                node.config.max_groups_per_session
            ),
        );
    }
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            return refuse(
                &node,
                "bad_handshake",
                StatusCode::BAD_REQUEST,
                format!("bad WebSocket handshake: {e}\n"),
            )
        }
    };
    let id = match SessionId::generate() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "no randomness for a session ID");
            return refuse(
                &node,
                "internal",
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n",
            );
        }
    };
    let mut resp = resp.map(|_| Full::default());
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    let subprotocol = (!allow.subprotocol.is_empty()).then(|| Arc::<str>::from(allow.subprotocol));
    if let Some(p) = &subprotocol {
        if let Ok(v) = HeaderValue::from_str(p) {
            resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let session = Session::new(
        Admission {
            id,
            hub,
            user: (!allow.user.is_empty()).then(|| Arc::from(allow.user)),
            groups: allow
                .groups
                .into_iter()
                .map(Arc::from)
                .collect::<BTreeSet<_>>(),
            metadata: allow.metadata.into_iter().collect(),
            remote_addr: remote,
            subprotocol,
        },
        QueueLimits {
            messages: node.config.outbound_queue_messages.get(),
            bytes: node.config.outbound_queue_bytes(),
        },
        Inbox::new(
            node.config.inbox_messages.get(),
            node.config.inbox_bytes(),
            node.inbox_gauges.clone(),
        ),
        Arc::clone(&node.ctx),
        Some(permit),
    );
    if node.config.welcome_frame || asks_for_welcome(req.uri().query()) {
        let welcome = serde_json::json!({"type": "welcome", "session": session.id.as_str()});
        let _ = session.send(
            frame::encode(Opcode::Text, welcome.to_string().as_bytes()),
            Flush::Now,
        );
    }
    // Admitted before the 101 goes out: once the client knows its ID, so can any backend.
    // The session's own task admits it, so that a client gone meanwhile (hyper then drops
    // this handler, and the upgrade fails) still has its session torn down: pool and registry
    // never keep a session that has no task.
    let (admitted, wait) = tokio::sync::oneshot::channel();
    let tasks = node.ctx.tasks.clone();
    tasks.spawn(connection::run(node, session, upgrade, admitted));
    let _ = wait.await;
    resp
}

/// `?welcome=1` (or `true`): this client wants the welcome frame even where `--welcome-frame`
/// is off (a browser cannot read the session header of the 101).
fn asks_for_welcome(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "welcome" | "welcome=1" | "welcome=true"))
    })
}

fn hook_failed(node: &Node, why: &str) -> Response<Body> {
    tracing::warn!(why, "connect hook failed; refusing the client");
    refuse(
        node,
        "hook_unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        "authorization service unavailable\n",
    )
}

/// A hook's allow must pick an offered subprotocol and name valid groups.
fn check_allow(allow: &Allow, offered: &[String]) -> Result<(), String> {
    if !allow.subprotocol.is_empty() && !offered.contains(&allow.subprotocol) {
        return Err(format!(
            "hook chose subprotocol {:?}, which the client did not offer",
            allow.subprotocol
        ));
    }
    for g in &allow.groups {
        validate_group(g).map_err(|e| format!("hook returned a bad group: {e}"))?;
    }
    Ok(())
}

fn subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn hook_request(
    req: &Request<Incoming>,
    hub: &str,
    remote: SocketAddr,
    offered: &[String],
) -> AuthorizeRequest {
    AuthorizeRequest {
        path: req.uri().path().to_owned(),
        hub: hub.to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_owned(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        remote_addr: remote.to_string(),
        subprotocols: offered.to_vec(),
    }
}
