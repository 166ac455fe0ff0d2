//! Admission of a WebSocket upgrade: draining check, connect hook, handshake, session ID;
//! for a reliable session's resume, the session it names instead of the hook.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::{body::Incoming, upgrade::Upgraded};
use switchboard_proto::v1::{AuthorizeRequest, Header};

use super::{
    connection,
    http::{refuse, Body},
};
use crate::{
    config::{OutagePolicy, Switch},
    deflate,
    frame::{self, Opcode},
    hook::{Allow, Verdict},
    jwt::{self, JwtError},
    limits::Refusal,
    node::{validate_group, Found, Node},
    reliable::{self, ResumeRequest},
    session::{Admission, Flush, Inbox, QueueLimits, Session, SessionId, Transport},
};

/// The response header that tells a client its session ID.
pub(crate) const SESSION_HEADER: &str = "x-switchboard-session";

pub(crate) async fn upgrade(
    node: Arc<Node>,
    remote: SocketAddr,
    hub: Arc<str>,
    req: Request<Incoming>,
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
    let wants_reliable = offered.iter().any(|p| p == reliable::PROTOCOL);
    // A plain client's query means nothing to the gateway: `session=` from a plain client is
    // not a resume, and it never names the session it gets.
    let query = req.uri().query().filter(|_| wants_reliable);
    let resume = match ResumeRequest::from_query(query) {
        Ok(r) => r,
        Err(why) => {
            return refuse(
                &node,
                "bad_resume",
                StatusCode::BAD_REQUEST,
                format!("{why}\n"),
            )
        }
    };
    if let Some(r) = &resume {
        // The token is the proof: the connect hook was asked when the session began.
        return match node.find_for_resume(r, &hub).await {
            Err(_) => refuse(
                &node,
                "registry_down",
                StatusCode::SERVICE_UNAVAILABLE,
                "session registry unavailable; resume again\n",
            ),
            Ok(Some(found)) => {
                let resumed = Resumed {
                    ack: r.ack,
                    token: r.token.clone(),
                };
                admit_reliable(node, remote, hub, req, permit, found, resumed).await
            }
            Ok(None) => refuse_resume(&node, req),
        };
    }
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
    if allow.subprotocol.is_empty() && wants_reliable {
        allow.subprotocol = reliable::PROTOCOL.to_owned();
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
    let reliable_session = allow.subprotocol == reliable::PROTOCOL;
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
    let groups: Vec<String> = allow.groups;
    let metadata: BTreeMap<String, String> = allow.metadata.into_iter().collect();
    let mut start = None;
    if reliable_session {
        match node
            .start_reliable(&id, &hub, &allow.user, &groups, &metadata)
            .await
        {
            Ok((rel, token)) => start = Some((rel, token)),
            Err(e) => {
                tracing::warn!(error = %e, "could not record a reliable session");
                return refuse(
                    &node,
                    "registry_down",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session registry unavailable\n",
                );
            }
        }
    }
    let profile = Profile {
        id,
        user: allow.user,
        groups,
        metadata,
        subprotocol: allow.subprotocol,
    };
    let reliable = start.map(|(rel, token)| ReliableStart {
        reliable: rel,
        token: token.0,
        resumed: None,
        previous: None,
    });
    open(node, remote, hub, req, permit, profile, reliable).await
}

/// Who a session is, as admission decided.
struct Profile {
    id: SessionId,
    user: String,
    groups: Vec<String>,
    metadata: BTreeMap<String, String>,
    subprotocol: String,
}

/// A resume's own facts.
struct Resumed {
    ack: u64,
    token: String,
}

/// Opens a connection for a session a resume found.
async fn admit_reliable(
    node: Arc<Node>,
    remote: SocketAddr,
    hub: Arc<str>,
    req: Request<Incoming>,
    permit: crate::limits::Permit,
    found: Found,
    resumed: Resumed,
) -> Response<Body> {
    let Some(id) = SessionId::parse(&found_id(&req)) else {
        return refuse_resume(&node, req);
    };
    let profile = Profile {
        id,
        user: found.user,
        groups: found.groups,
        metadata: found.metadata,
        subprotocol: reliable::PROTOCOL.to_owned(),
    };
    let start = ReliableStart {
        reliable: found.reliable,
        token: resumed.token,
        resumed: Some(resumed.ack),
        previous: found.previous,
    };
    open(node, remote, hub, req, permit, profile, Some(start)).await
}

/// The session ID a resume names (already checked by `find_for_resume`).
fn found_id(req: &Request<Incoming>) -> String {
    ResumeRequest::from_query(req.uri().query())
        .ok()
        .flatten()
        .map(|r| r.session)
        .unwrap_or_default()
}

/// A refused resume: the handshake completes and the connection is closed with 4401 at
/// once, the one refusal a browser's WebSocket can report (docs/reliable.md).
fn refuse_resume(node: &Node, mut req: Request<Incoming>) -> Response<Body> {
    node.metrics.resumes_refused.inc();
    let (resp, upgrade) = match handshake(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            return refuse(
                node,
                "bad_handshake",
                StatusCode::BAD_REQUEST,
                format!("bad WebSocket handshake: {e}\n"),
            )
        }
    };
    let mut resp = resp.map(|_| Full::default());
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(reliable::PROTOCOL),
    );
    node.ctx.tasks.spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(upgraded) = upgrade.upgraded().await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let close = frame::encode_close(reliable::RESUME_REFUSED, "resume refused");
        let write = async {
            io.write_all(&close).await?;
            io.shutdown().await
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
    });
    resp
}

/// What a reliable connection starts with.
pub(crate) struct ReliableStart {
    pub reliable: Arc<crate::reliable::Reliable>,
    pub token: String,
    /// For a resume: the last gateway `seq` the client received.
    pub resumed: Option<u64>,
    /// For a resume on this node: the connection it replaces.
    pub previous: Option<Arc<Session>>,
}

/// Answers the handshake and starts the session's task.
async fn open(
    node: Arc<Node>,
    remote: SocketAddr,
    hub: Arc<str>,
    mut req: Request<Incoming>,
    permit: crate::limits::Permit,
    profile: Profile,
    reliable: Option<ReliableStart>,
) -> Response<Body> {
    // An offer the gateway cannot honour is declined, never a reason to refuse the client.
    let deflate = match node.config.compression_for(&hub) {
        Switch::On => deflate::negotiate(
            req.headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        Switch::Off => None,
    };
    let (resp, upgrade) = match handshake(&mut req) {
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
    let transport = upgrade.transport();
    let mut resp = resp.map(|_| Full::default());
    if let Ok(v) = HeaderValue::from_str(profile.id.as_str()) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    if let Some((_, answer)) = &deflate {
        if let Ok(v) = HeaderValue::from_str(answer) {
            resp.headers_mut()
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
    }
    let subprotocol =
        (!profile.subprotocol.is_empty()).then(|| Arc::<str>::from(profile.subprotocol));
    if let Some(p) = &subprotocol {
        if let Ok(v) = HeaderValue::from_str(p) {
            resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let session = Session::new(
        Admission {
            id: profile.id,
            hub,
            user: (!profile.user.is_empty()).then(|| Arc::from(profile.user)),
            groups: profile
                .groups
                .into_iter()
                .map(Arc::from)
                .collect::<BTreeSet<_>>(),
            metadata: profile.metadata,
            remote_addr: remote,
            subprotocol,
            deflate: deflate.map(|(agreed, _)| agreed),
            transport,
            reliable: reliable.as_ref().map(|r| Arc::clone(&r.reliable)),
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
    if reliable.is_none() && (node.config.welcome_frame || asks_for_welcome(req.uri().query())) {
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
    tasks.spawn(connection::run(node, session, upgrade, admitted, reliable));
    let _ = wait.await;
    resp
}

/// A handshake answered, and the stream it will give once the response is out.
pub(crate) enum Pending {
    /// HTTP/1.1: a 101 answers the Upgrade; the connection becomes the WebSocket.
    Http1(fastwebsockets::upgrade::UpgradeFut),
    /// HTTP/2: a 200 answers the extended CONNECT; one stream becomes the WebSocket.
    Http2(hyper::upgrade::OnUpgrade),
}

impl Pending {
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Pending::Http1(_) => Transport::Http1,
            Pending::Http2(_) => Transport::Http2,
        }
    }

    /// The WebSocket's byte stream, once the response has gone out.
    pub(crate) async fn upgraded(self) -> Result<Upgraded, String> {
        match self {
            // fastwebsockets wraps the stream in a `WebSocket` the gateway never uses: reads
            // and writes go through `client::reader` and the session's outbound queue.
            Pending::Http1(fut) => fut
                .await
                .map(|ws| ws.into_inner().into_inner())
                .map_err(|e| e.to_string()),
            Pending::Http2(fut) => fut.await.map_err(|e| e.to_string()),
        }
    }
}

/// Checks the handshake of an upgrade request and builds its response: fastwebsockets' for
/// HTTP/1.1 (`Sec-WebSocket-Key` → `Sec-WebSocket-Accept`); for HTTP/2 (RFC 8441 §5) a 200,
/// with no key exchange, once `Sec-WebSocket-Version` is 13.
pub(crate) fn handshake<B>(
    req: &mut Request<B>,
) -> Result<(Response<Empty<Bytes>>, Pending), String> {
    if req.version() != http::Version::HTTP_2 {
        return fastwebsockets::upgrade::upgrade(&mut *req)
            .map(|(resp, fut)| (resp, Pending::Http1(fut)))
            .map_err(|e| e.to_string());
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.map(HeaderValue::as_bytes) != Some(b"13") {
        return Err("Sec-WebSocket-Version must be 13".into());
    }
    Ok((
        Response::new(Empty::new()),
        Pending::Http2(hyper::upgrade::on(req)),
    ))
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

pub(crate) fn subprotocols(headers: &HeaderMap) -> Vec<String> {
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
