//! `switchboard.v1.Gateway`: each RPC checks its arguments, calls the node, and maps the result.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures_util::Stream;
use switchboard_proto::v1::{self as pb, gateway_server::Gateway};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{auth::Grant, convert, streams};
use crate::{
    cluster::is_hop,
    error::{Error, Result},
    node::{Node, Reached, Route, Scope},
    pool::Target,
    registry::{ListFilter, Liveness},
    session::{inbox::Next, SessionId},
};

pub(crate) struct GatewayService {
    node: Arc<Node>,
}

impl GatewayService {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The common start of a call naming a session: parse the ID, check the caller may touch
    /// its hub, and find the node that must answer.
    async fn locate(&self, scope: Scope, grant: &Grant, id: &str) -> Result<Located> {
        let id = convert::session_id(id)?;
        self.permit(grant, &id).await?;
        Ok(match self.node.route(scope, &id).await? {
            Route::Here => Located::Here(id),
            Route::There { peer } => Located::There { peer },
        })
    }

    /// Refuses a call on a session of a hub the caller's token may not touch.
    async fn permit(&self, grant: &Grant, id: &SessionId) -> Result<()> {
        if grant.is_all() {
            return Ok(());
        }
        match self.node.session_hub(id).await? {
            Some(hub) => grant.check_hub(&hub),
            None => Ok(()),
        }
    }

    /// Whether the caller may touch each session of a list, in order: the hubs of every
    /// session not held here come from one registry round trip.
    async fn permits(&self, grant: &Grant, ids: &[SessionId]) -> Result<Vec<Result<()>>> {
        if grant.is_all() {
            return Ok(ids.iter().map(|_| Ok(())).collect());
        }
        Ok(self
            .node
            .session_hubs(ids)
            .await?
            .into_iter()
            .map(|hub| match hub {
                Some(hub) => grant.check_hub(&hub),
                None => Ok(()),
            })
            .collect())
    }

    /// Records the call's outcome, logs refusals, and maps the error to its status.
    fn finish<T>(
        &self,
        method: &'static str,
        started: std::time::Instant,
        r: Result<T>,
    ) -> Result<Response<T>, Status> {
        match r {
            Ok(v) => {
                self.node.metrics.grpc(method, tonic::Code::Ok, started);
                Ok(Response::new(v))
            }
            Err(e) => {
                let status = Status::from(e);
                self.node.metrics.grpc(method, status.code(), started);
                tracing::debug!(method, code = ?status.code(), message = status.message(), "call refused");
                Err(status)
            }
        }
    }
}

fn span(method: &'static str, session: &str) -> tracing::Span {
    tracing::debug_span!("grpc", method, session)
}

/// Where a call naming a session is answered.
enum Located {
    Here(SessionId),
    There {
        peer: Box<crate::cluster::GatewayPeer>,
    },
}

/// A single Send's outcome inside a batch.
fn send_result(r: Result<()>) -> pb::SendResult {
    match r {
        Ok(()) => pb::SendResult {
            code: 0,
            message: String::new(),
        },
        Err(e) => {
            let s = Status::from(e);
            pb::SendResult {
                code: s.code() as u32,
                message: s.message().to_owned(),
            }
        }
    }
}

/// Calls forwarded by another node are answered from this node's pool only.
fn scope<T>(req: &Request<T>) -> Scope {
    if is_hop(req) {
        Scope::Local
    } else {
        Scope::Cluster
    }
}

/// The owning node's answer, as this node's.
fn forwarded<T>(r: Result<Response<T>, Status>) -> Result<T> {
    r.map(Response::into_inner).map_err(Error::Remote)
}

impl GatewayService {
    /// A publish from a backend: fan out here and, in a cluster, on every other node that may
    /// hold a target (all nodes for hub, group and user targets; the owners for a list).
    async fn publish_everywhere(
        &self,
        req: pb::PublishRequest,
        target: Target,
        exclude: &[crate::session::SessionId],
        msg: &crate::message::Message,
    ) -> Result<pb::PublishResponse> {
        let (local_target, forwards) = match &target {
            Target::Sessions(ids) => {
                let (here, there) = self.node.partition(ids).await?;
                let forwards = there
                    .into_iter()
                    .map(|(node, peer, ids)| {
                        let mut r = req.clone();
                        r.target = Some(pb::Target {
                            kind: Some(pb::target::Kind::Sessions(pb::SessionList {
                                session_ids: ids.iter().map(|i| i.to_string()).collect(),
                            })),
                        });
                        (node, peer, r)
                    })
                    .collect::<Vec<_>>();
                (Target::Sessions(here), forwards)
            }
            _ => {
                let forwards = self
                    .node
                    .peers()
                    .into_iter()
                    .map(|(node, peer)| (node, peer, req.clone()))
                    .collect();
                (target, forwards)
            }
        };
        let remote = futures_util::future::join_all(
            forwards
                .into_iter()
                .map(|(node, mut peer, r)| async move { (node, peer.publish(r).await) }),
        );
        let (local, remote) = tokio::join!(
            self.node
                .publish(&local_target, exclude, msg, &req.message_id, req.outcomes),
            remote
        );
        let mut out = convert::delivery(local?);
        for (node, r) in remote {
            match r {
                Ok(r) => {
                    let r = r.into_inner();
                    out.queued += r.queued;
                    out.refused += r.refused;
                    out.outcomes.extend(r.outcomes);
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "publish did not reach a node");
                    out.unreachable_nodes.push(node);
                }
            }
        }
        Ok(out)
    }
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let mut req = req.into_inner();
        let span = span("Send", &req.session_id);
        // The request is taken apart, not copied: this is the hot unary path.
        let r = async move {
            let id = match self.locate(scope, &grant, &req.session_id).await? {
                Located::Here(id) => id,
                Located::There { mut peer, .. } => return forwarded(peer.send(req).await),
            };
            let msg = convert::message(req.message.take())?;
            let want = convert::receipt(req.receipt());
            let wait = match want {
                Reached::Queued => Duration::ZERO,
                _ => convert::timeout(req.receipt_timeout)?,
            };
            let sent = self.node.send(&id, &msg, &req.message_id).await?;
            let reached = self.node.receipt(&sent, want, wait).await;
            Ok(pb::SendResponse {
                reached: convert::reached(reached) as i32,
            })
        }
        .instrument(span)
        .await;
        self.finish("Send", started, r)
    }

    async fn send_batch(
        &self,
        req: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let mut items = req.into_inner().items;
        let r = async {
            convert::bounded("items", items.len())?;
            let mut results: Vec<Option<pb::SendResult>> = vec![None; items.len()];
            let mut parsed: Vec<(usize, SessionId)> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match convert::session_id(&item.session_id) {
                    Ok(id) => parsed.push((i, id)),
                    Err(e) => results[i] = Some(send_result(Err(e))),
                }
            }
            let ids: Vec<SessionId> = parsed.iter().map(|(_, id)| id.clone()).collect();
            let permits = match self.permits(&grant, &ids).await {
                Ok(p) => p,
                // Without the registry, only the hubs of sessions held here are known.
                Err(e) => {
                    let status = Status::from(e);
                    let mut p = Vec::with_capacity(ids.len());
                    for id in &ids {
                        p.push(match self.node.pool.get(id) {
                            Some(s) => grant.check_hub(&s.hub),
                            None => Err(Error::Remote(status.clone())),
                        });
                    }
                    p
                }
            };
            let mut valid: Vec<(usize, SessionId)> = Vec::with_capacity(parsed.len());
            for ((i, id), permit) in parsed.into_iter().zip(permits) {
                match permit {
                    Ok(()) => valid.push((i, id)),
                    Err(e) => results[i] = Some(send_result(Err(e))),
                }
            }
            // The owners of every item not held here come from one registry round trip; the
            // items of each other node then go there as one batch.
            let mut elsewhere: Vec<(String, crate::cluster::GatewayPeer, Vec<usize>)> = Vec::new();
            let mut owner_of: HashMap<SessionId, usize> = HashMap::new();
            let mut unroutable = None;
            if scope == Scope::Cluster {
                let ids: Vec<SessionId> = valid.iter().map(|(_, id)| id.clone()).collect();
                match self.node.partition(&ids).await {
                    Ok((_, there)) => {
                        for (k, (node, peer, ids)) in there.into_iter().enumerate() {
                            owner_of.extend(ids.into_iter().map(|id| (id, k)));
                            elsewhere.push((node, peer, Vec::new()));
                        }
                    }
                    // Sessions held here are still reachable without the registry.
                    Err(e) => unroutable = Some(Status::from(e)),
                }
            }
            for (i, id) in valid {
                if let Some(&k) = owner_of.get(&id) {
                    elsewhere[k].2.push(i);
                    continue;
                }
                let r = match &unroutable {
                    Some(status) if self.node.pool.get(&id).is_none() => {
                        Err(Error::Remote(status.clone()))
                    }
                    // Each item is sent here or forwarded, once: taken, not copied.
                    _ => match convert::message(items[i].message.take()) {
                        Ok(m) => self.node.send(&id, &m, "").await,
                        Err(e) => Err(e),
                    },
                };
                results[i] = Some(send_result(r.map(drop)));
            }
            let forwarded = futures_util::future::join_all(elsewhere.into_iter().map(
                |(node, mut peer, idx)| {
                    let batch = pb::SendBatchRequest {
                        items: idx.iter().map(|&i| std::mem::take(&mut items[i])).collect(),
                    };
                    async move { (node, idx, peer.send_batch(batch).await) }
                },
            ))
            .await;
            for (node, idx, r) in forwarded {
                match r {
                    Ok(r) => {
                        for (&i, res) in idx.iter().zip(r.into_inner().results) {
                            results[i] = Some(res);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node, error = %e, "batch did not reach a node");
                        for &i in &idx {
                            results[i] = Some(send_result(Err(Error::Remote(e.clone()))));
                        }
                    }
                }
            }
            Ok(pb::SendBatchResponse {
                results: results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| send_result(Err(Error::ShuttingDown))))
                    .collect(),
            })
        }
        .instrument(span("SendBatch", ""))
        .await;
        self.finish("SendBatch", started, r)
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let target = convert::target(req.target.clone())?;
            let exclude = convert::session_ids("exclude", &req.exclude)?;
            match &target {
                Target::Hub(hub) | Target::Group { hub, .. } => grant.check_hub(hub)?,
                Target::User { hub: Some(hub), .. } => grant.check_hub(hub)?,
                Target::User { hub: None, .. } if !grant.is_all() => {
                    return Err(Error::HubNotAllowed("(every hub)".into()))
                }
                Target::User { .. } => {}
                Target::Sessions(ids) => {
                    for permit in self.permits(&grant, ids).await? {
                        permit?;
                    }
                }
            }
            let msg = convert::message(req.message.clone())?;
            if scope == Scope::Local {
                let d = self
                    .node
                    .publish(&target, &exclude, &msg, &req.message_id, req.outcomes)
                    .await?;
                return Ok(convert::delivery(d));
            }
            let mut req = req;
            if req.message_id.is_empty() {
                // One ID for every node this publish reaches (see `Node::publish`).
                req.message_id = crate::session::SessionId::generate()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
            }
            self.publish_everywhere(req, target, &exclude, &msg).await
        }
        .instrument(span("Publish", ""))
        .await;
        self.finish("Publish", started, r)
    }

    async fn close(
        &self,
        req: Request<pb::CloseRequest>,
    ) -> Result<Response<pb::CloseResponse>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let id = match self.locate(scope, &grant, &req.session_id).await? {
                Located::Here(id) => id,
                Located::There { mut peer, .. } => return forwarded(peer.close(req.clone()).await),
            };
            let code = u16::try_from(req.code).unwrap_or(u16::MAX);
            self.node.close(&id, code, &req.reason).await?;
            Ok(pb::CloseResponse {})
        }
        .instrument(span("Close", &req.session_id))
        .await;
        self.finish("Close", started, r)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let started = std::time::Instant::now();
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            self.permit(&grant, &id).await?;
            let record = self.node.get(&id).await?;
            Ok(pb::GetSessionResponse {
                session: Some(convert::session_info(record)),
            })
        }
        .instrument(span("GetSession", &req.session_id))
        .await;
        self.finish("GetSession", started, r)
    }

    async fn check_sessions(
        &self,
        req: Request<pb::CheckSessionsRequest>,
    ) -> Result<Response<pb::CheckSessionsResponse>, Status> {
        let started = std::time::Instant::now();
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            convert::bounded("session_ids", req.session_ids.len())?;
            // A malformed ID is answered on its own; the well-formed ones are checked together.
            let parsed: Vec<Option<SessionId>> = req
                .session_ids
                .iter()
                .map(|s| SessionId::parse(s))
                .collect();
            let ids: Vec<SessionId> = parsed.iter().flatten().cloned().collect();
            let mut states = self.node.check(&ids).await?;
            // A scoped token learns nothing about sessions of other hubs.
            for (state, permit) in states.iter_mut().zip(self.permits(&grant, &ids).await?) {
                if permit.is_err() {
                    *state = Liveness::Unknown;
                }
            }
            let mut states = states.into_iter();
            Ok(pb::CheckSessionsResponse {
                sessions: req
                    .session_ids
                    .into_iter()
                    .zip(parsed)
                    .map(|(session_id, id)| {
                        let state = match id {
                            Some(_) => convert::state(&states.next().unwrap_or(Liveness::Unknown)),
                            None => pb::SessionState::Invalid,
                        };
                        pb::SessionStatus {
                            session_id,
                            state: state as i32,
                        }
                    })
                    .collect(),
            })
        }
        .instrument(span("CheckSessions", ""))
        .await;
        self.finish("CheckSessions", started, r)
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let started = std::time::Instant::now();
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let some = |s: String| (!s.is_empty()).then_some(s);
            let filter = ListFilter {
                hub: some(req.hub),
                group: some(req.group),
                user: some(req.user),
                node: some(req.node),
            };
            if !grant.is_all() {
                grant.check_hub(filter.hub.as_deref().unwrap_or("(every hub)"))?;
            }
            let cursor = some(req.page_token);
            let page = self
                .node
                .list(&filter, req.page_size as usize, cursor.as_deref())
                .await?;
            Ok(pb::ListSessionsResponse {
                sessions: page
                    .records
                    .into_iter()
                    .map(convert::session_info)
                    .collect(),
                next_page_token: page.next.unwrap_or_default(),
            })
        }
        .instrument(span("ListSessions", ""))
        .await;
        self.finish("ListSessions", started, r)
    }

    async fn join_group(
        &self,
        req: Request<pb::JoinGroupRequest>,
    ) -> Result<Response<pb::JoinGroupResponse>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let id = match self.locate(scope, &grant, &req.session_id).await? {
                Located::Here(id) => id,
                Located::There { mut peer, .. } => {
                    return forwarded(peer.join_group(req.clone()).await)
                }
            };
            self.node.set_group(&id, &req.group, true).await?;
            Ok(pb::JoinGroupResponse {})
        }
        .instrument(span("JoinGroup", &req.session_id))
        .await;
        self.finish("JoinGroup", started, r)
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let id = match self.locate(scope, &grant, &req.session_id).await? {
                Located::Here(id) => id,
                Located::There { mut peer, .. } => {
                    return forwarded(peer.leave_group(req.clone()).await)
                }
            };
            self.node.set_group(&id, &req.group, false).await?;
            Ok(pb::LeaveGroupResponse {})
        }
        .instrument(span("LeaveGroup", &req.session_id))
        .await;
        self.finish("LeaveGroup", started, r)
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let started = std::time::Instant::now();
        use pb::read_response::Result as R;
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let req = req.into_inner();
        let r = async {
            let id = match self.locate(scope, &grant, &req.session_id).await? {
                Located::Here(id) => id,
                Located::There { mut peer, .. } => return forwarded(peer.read(req.clone()).await),
            };
            let timeout = convert::timeout(req.timeout)?;
            let result = match self.node.read(&id, timeout, req.ack).await? {
                Next::Message(m) => R::Message(convert::inbound(&m)),
                Next::TimedOut => R::TimedOut(pb::TimedOut {}),
                Next::Closed(end) => R::Closed(convert::closed(&end)),
            };
            Ok(pb::ReadResponse {
                result: Some(result),
            })
        }
        .instrument(span("Read", &req.session_id))
        .await;
        self.finish("Read", started, r)
    }

    type AttachStream = BoxStream<pb::AttachResponse>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let started = std::time::Instant::now();
        let scope = scope(&req);
        let grant = Grant::of(&req);
        let r = streams::attach(Arc::clone(&self.node), scope, grant, req.into_inner())
            .instrument(span("Attach", ""))
            .await;
        self.node.metrics.grpc(
            "Attach",
            r.as_ref().err().map_or(tonic::Code::Ok, Status::code),
            started,
        );
        r.map(Response::new)
    }

    type SubscribeStream = BoxStream<pb::Event>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = std::time::Instant::now();
        let grant = Grant::of(&req);
        let req = req.into_inner();
        if let Err(e) = grant.check_hub(&req.hub) {
            return self.finish("Subscribe", started, Err(e));
        }
        let r = streams::subscribe(&self.node, req).await;
        self.finish("Subscribe", started, r)
    }
}
