//! The node: the session pool, the registry and the operations backends call on them.
//!
//! `api` translates gRPC into these calls and `client` admits sessions into the pool; neither
//! touches the registry or a session's queues directly, so routing to other nodes (when the
//! registry is shared) lives here alone.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

mod reliable;

pub(crate) use reliable::Found;

use crate::{
    cluster::GatewayPeer,
    config::Switch,
    config::{is_name, Config},
    error::{Error, Result},
    events::{Event, EventBody, EventBus},
    frame::{self, close_code, Encoded, Opcode},
    gate::Gate,
    message::{Kind, Message},
    metrics::Metrics,
    metrics::{CodeLabel, GaugeGuard},
    pool::{Pool, Target},
    registry::{ListFilter, Liveness, Page, Registry, SessionRecord},
    reliable::Confirmed,
    session::{
        acks::Acks,
        inbox::{InboxGauges, Next, Pushed},
        Closer, Ender, Flush, SendError, Session, SessionContext, SessionEnd, SessionId,
    },
};

/// Longest group name, in bytes.
const MAX_GROUP_LEN: usize = 128;
/// Largest page `ListSessions` returns.
pub(crate) const MAX_PAGE: usize = 1000;
/// Sessions a publish offers its frame to between two yields to the runtime.
const FAN_OUT_YIELD: usize = 1_000;
/// Reliable sessions a publish keeps its message for concurrently.
const RELIABLE_FAN_OUT: usize = 64;

pub(crate) struct Node {
    pub config: Arc<Config>,
    pub id: Arc<str>,
    pub pool: Pool,
    /// The registry, and through it the cluster when there is one.
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub ctx: Arc<SessionContext>,
    /// Origin allow-list, connection limits, JWTs, connect hook.
    pub gate: Gate,
    pub inbox_gauges: InboxGauges,
    pub events: Arc<EventBus>,
    next_attach: std::sync::atomic::AtomicU64,
    /// Cancelled when the node starts draining: long waits (Read, streams) end early.
    pub shutdown: CancellationToken,
    draining: AtomicBool,
    /// Where this node's listeners are bound (known once they are), for the admin API.
    pub addrs: OnceLock<Addresses>,
}

/// The bound addresses of a node's listeners.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Addresses {
    pub client: SocketAddr,
    pub backend: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Whether a call may be passed on to the node holding its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A backend's call: sessions on other nodes are reached through their node.
    Cluster,
    /// A call forwarded by another node: answer from this node's pool only.
    Local,
}

/// Where a call about a session must go.
pub(crate) enum Route {
    /// The session is here (or nowhere): handle the call locally.
    Here,
    /// Another node holds it: send the same call there.
    There { peer: Box<GatewayPeer> },
}

/// How far a sent message got, for a delivery receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reached {
    Queued,
    Written,
    Acked,
}

/// Where a sent message is, so a receipt can follow it.
#[derive(Default)]
pub(crate) struct Sent {
    /// The connection it was queued on, and its position in that connection's bytes.
    pub written_at: Option<(Arc<Session>, u64)>,
    /// A reliable session's state and the message's `seq`.
    pub kept: Option<(Arc<crate::reliable::Reliable>, u64)>,
}

impl Sent {
    fn reached(&self) -> Reached {
        if self.kept.as_ref().is_some_and(|(r, seq)| r.acked() >= *seq) {
            return Reached::Acked;
        }
        if self
            .written_at
            .as_ref()
            .is_some_and(|(s, at)| s.bytes_written() >= *at)
        {
            return Reached::Written;
        }
        Reached::Queued
    }
}

/// What a publish achieved.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub queued: u64,
    pub refused: u64,
    /// Each session's outcome (queued or not), when asked for.
    pub outcomes: Vec<(SessionId, bool)>,
}

impl Delivery {
    fn record(&mut self, id: &SessionId, queued: bool, keep: bool) {
        if queued {
            self.queued += 1;
        } else {
            self.refused += 1;
        }
        if keep {
            self.outcomes.push((id.clone(), queued));
        }
    }
}

impl Node {
    pub(crate) fn new(
        config: Arc<Config>,
        id: Arc<str>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        ctx: Arc<SessionContext>,
        gate: Gate,
    ) -> Self {
        let inbox_gauges = InboxGauges {
            messages: metrics.inbox_messages.clone(),
            paused: metrics.paused_sockets.clone(),
        };
        let events = EventBus::new(
            Arc::clone(&id),
            config.subscriber_timeout,
            Arc::clone(&metrics),
            ctx.tasks.clone(),
            registry.cluster().cloned(),
        );
        Self {
            events,
            next_attach: std::sync::atomic::AtomicU64::new(1),
            config,
            id,
            pool: Pool::default(),
            registry,
            metrics,
            ctx,
            gate,
            inbox_gauges,
            shutdown: CancellationToken::new(),
            draining: AtomicBool::new(false),
            addrs: OnceLock::new(),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether every live peer has learnt this node (always, alone): until then a session here
    /// could be missed by a publish sent to another node, so clients wait.
    pub(crate) fn has_joined(&self) -> bool {
        self.registry.cluster().is_none_or(|c| c.is_joined())
    }

    /// Stops admitting sessions and closes every open one with 1001.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.shutdown.cancel();
        for s in self.pool.all() {
            if s.reliable.is_some() {
                // The session is suspended, not ended: its client resumes on another node.
                s.close(
                    close_code::SERVICE_RESTART,
                    "service restart: resume elsewhere",
                    Closer::Gateway,
                    false,
                );
            } else {
                s.close(
                    close_code::GOING_AWAY,
                    "server shutting down",
                    Closer::Gateway,
                    false,
                );
            }
        }
    }

    /// Finds where a call about session `id` must be handled.
    pub(crate) async fn route(&self, scope: Scope, id: &SessionId) -> Result<Route> {
        if scope == Scope::Local
            || self.pool.get(id).is_some()
            || self.pool.get_closed(id).is_some()
        {
            return Ok(Route::Here);
        }
        let Some(cluster) = self.registry.cluster() else {
            return Ok(Route::Here);
        };
        match self.registry.owner(id).await? {
            Some(owner) if *owner != *self.id => {
                if cluster.redis.node_addr(&owner).is_none() && self.is_orphan(id, &owner).await {
                    // A reliable session its dead node left suspended: any node keeps
                    // messages for it until its client resumes.
                    return Ok(Route::Here);
                }
                let addr = cluster.redis.node_addr(&owner).ok_or_else(|| {
                    Error::Registry(crate::registry::RegistryError::Unavailable(format!(
                        "node {owner} holding session {id} has no known address"
                    )))
                })?;
                Ok(Route::There {
                    peer: Box::new(cluster.gateway(&addr).map_err(Error::Remote)?),
                })
            }
            _ => Ok(Route::Here),
        }
    }

    /// The hub of a session anywhere in the cluster, if it is known.
    pub(crate) async fn session_hub(&self, id: &SessionId) -> Result<Option<String>> {
        if let Some(s) = self.pool.get(id).or_else(|| self.pool.get_closed(id)) {
            return Ok(Some(s.hub.to_string()));
        }
        Ok(self.registry.get(id).await?.map(|r| r.hub))
    }

    /// The hub of each session anywhere in the cluster, in order, when known: this node's
    /// sessions from the pool, all others from the registry in one round trip.
    pub(crate) async fn session_hubs(&self, ids: &[SessionId]) -> Result<Vec<Option<String>>> {
        let mut hubs = Vec::with_capacity(ids.len());
        let mut ask = Vec::new();
        let mut ask_at = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.pool.get(id).or_else(|| self.pool.get_closed(id)) {
                Some(s) => hubs.push(Some(s.hub.to_string())),
                None => {
                    hubs.push(None);
                    ask.push(id.clone());
                    ask_at.push(i);
                }
            }
        }
        if !ask.is_empty() {
            let found = self.registry.hubs(&ask).await?;
            for (i, hub) in ask_at.into_iter().zip(found) {
                hubs[i] = hub;
            }
        }
        Ok(hubs)
    }

    /// The other live nodes, for fan-out calls (empty on a single node).
    pub(crate) fn peers(&self) -> Vec<(String, GatewayPeer)> {
        let Some(cluster) = self.registry.cluster() else {
            return Vec::new();
        };
        cluster
            .redis
            .live_nodes()
            .into_iter()
            .filter(|n| *n.id != *self.id)
            .filter_map(|n| Some((n.id, cluster.gateway(&n.addr).ok()?)))
            .collect()
    }

    /// Splits session IDs by the node holding them (one registry round trip); IDs held here,
    /// or by no live node, stay here.
    pub(crate) async fn partition(
        &self,
        ids: &[SessionId],
    ) -> Result<(Vec<SessionId>, Vec<(String, GatewayPeer, Vec<SessionId>)>)> {
        let Some(cluster) = self.registry.cluster() else {
            return Ok((ids.to_vec(), Vec::new()));
        };
        let redis = &cluster.redis;
        let (local, elsewhere): (Vec<SessionId>, Vec<SessionId>) = ids
            .iter()
            .cloned()
            .partition(|id| self.pool.get(id).is_some());
        let owners = redis.owners(&elsewhere).await?;
        let mut here = local;
        let mut there: Vec<(String, GatewayPeer, Vec<SessionId>)> = Vec::new();
        for (id, owner) in elsewhere.into_iter().zip(owners) {
            let Some(owner) = owner.filter(|o| **o != *self.id) else {
                here.push(id);
                continue;
            };
            if let Some((_, _, list)) = there.iter_mut().find(|(n, _, _)| *n == owner) {
                list.push(id);
                continue;
            }
            let addr = redis.node_addr(&owner).unwrap_or_default();
            let peer = cluster.gateway(&addr).map_err(Error::Remote)?;
            there.push((owner, peer, vec![id]));
        }
        Ok((here, there))
    }

    /// Makes a new session reachable: pool, registry, metrics.
    pub(crate) async fn admit(&self, s: &Arc<Session>) {
        self.pool.insert(Arc::clone(s));
        self.metrics.connects.inc();
        self.metrics
            .connects_by_transport
            .get_or_create(&crate::metrics::TransportLabel {
                transport: s.transport.as_str(),
                compression: if s.deflate.is_some() {
                    "deflate"
                } else {
                    "none"
                },
            })
            .inc();
        self.metrics.sessions_open.inc();
        let record = s.record();
        if let Err(e) = self.registry.register(record.clone()).await {
            tracing::warn!(session = %s.id, error = %e, "could not register session");
        }
        self.events
            .publish(Event {
                session: s.id.clone(),
                hub: s.hub.clone(),
                body: EventBody::Connected(Box::new(record)),
            })
            .await;
    }

    /// Ends a session everywhere: after this it is gone from the pool and the registry, and
    /// readers see `end` once they have drained its inbox.
    pub(crate) async fn retire(&self, s: &Arc<Session>, end: SessionEnd) -> SessionEnd {
        let end = s.finish(end);
        self.pool.remove(s);
        s.inbox.close(end.clone());
        self.metrics.sessions_open.dec();
        self.metrics
            .disconnects
            .get_or_create(&CodeLabel {
                code: end.code,
                closed_by: end.closed_by.as_str(),
            })
            .inc();
        if let Err(e) = self.registry.unregister(&s.record(), &end).await {
            tracing::warn!(session = %s.id, error = %e, "could not unregister session");
        }
        self.events
            .publish(Event {
                session: s.id.clone(),
                hub: s.hub.clone(),
                body: EventBody::Disconnected(end.clone()),
            })
            .await;
        end
    }

    /// Hands a client message on: to the attached backend (through the inbox, which it
    /// drains), else to the hub's subscribers, else into the inbox for `Read`. A message never
    /// overtakes an earlier one: while the inbox holds messages, new ones queue behind them.
    /// Waits (and so pauses the socket) while nobody takes it. False when the inbox was
    /// sealed (a resume moved the session to another connection): the message was not taken,
    /// and the client sends it again there.
    pub(crate) async fn deliver(
        &self,
        s: &Arc<Session>,
        message: Message,
        client_seq: u64,
    ) -> bool {
        if s.inbox.is_sealed() {
            return false;
        }
        let mut inbound = s.inbox.stamp(message);
        if client_seq != 0 {
            inbound.client_seq = client_seq;
        }
        if !s.is_attached() && s.inbox.is_empty() {
            let event = Event {
                session: s.id.clone(),
                hub: s.hub.clone(),
                body: EventBody::Message(inbound.clone()),
            };
            if self.events.publish_cached(event, &s.routes).await > 0 {
                self.taken(s, client_seq);
                return true;
            }
        }
        s.inbox.push(inbound).await != Pushed::Refused
    }

    /// Opens the shared connection: claims the session's attach slot for a new stream.
    pub(crate) async fn attach(
        &self,
        id: &SessionId,
        take_over: bool,
        manual_ack: bool,
    ) -> Result<Attachment> {
        let s = match self.pool.get(id).or_else(|| self.pool.get_closed(id)) {
            Some(s) => s,
            None => return Err(self.missing(id).await),
        };
        let attach_id = self.next_attach.fetch_add(1, Ordering::Relaxed);
        let ender = Arc::new(Ender::default());
        let acks = Arc::new(Acks::new(manual_ack));
        s.attach(attach_id, Arc::clone(&ender), Arc::clone(&acks), take_over)
            .map_err(|()| Error::AlreadyAttached(id.clone()))?;
        Ok(Attachment {
            session: s,
            id: attach_id,
            ender,
            acks,
        })
    }

    /// Queues a backend's write on an attached stream, waiting while the queue is full.
    pub(crate) async fn send_waiting(
        &self,
        s: &Arc<Session>,
        message: &Message,
        message_id: &str,
    ) -> Result<Sent> {
        if let Some(rel) = &s.reliable {
            return self.send_reliable(s, rel, message, message_id).await;
        }
        let frame = self.encode(message)?.frame_for(s.deflate);
        loop {
            match s.send_tracked(frame.clone(), Flush::Batched) {
                Ok(at) => {
                    return Ok(Sent {
                        written_at: Some((Arc::clone(s), at)),
                        kept: None,
                    })
                }
                Err(SendError::Gone) => return Err(Self::gone(s)),
                Err(SendError::QueueFull) => {
                    self.on_queue_full(s);
                    s.room(frame.len()).await;
                }
            }
        }
    }

    /// Encodes a backend's message, once, after checking its size; the compressed form is made
    /// (once) when the first session that agreed to compression asks for it.
    pub(crate) fn encode(&self, message: &Message) -> Result<Encoded> {
        let max = self.config.max_message_bytes.get();
        if message.len() > max {
            return Err(Error::InvalidArgument(format!(
                "message of {} bytes is over the {max}-byte limit",
                message.len()
            )));
        }
        let op = match message.kind {
            Kind::Text => Opcode::Text,
            Kind::Binary => Opcode::Binary,
        };
        let cfg = &self.config;
        let compress = cfg.compression == Switch::On && message.len() >= cfg.compression_min_bytes;
        Ok(Encoded::new(
            op,
            message.payload.clone(),
            compress.then_some(cfg.compression_level),
        ))
    }

    /// An open session on this node, or the right error for an ID that is not one.
    async fn open_session(&self, id: &SessionId) -> Result<Arc<Session>> {
        if let Some(s) = self.pool.get(id) {
            return Ok(s);
        }
        Err(self.missing(id).await)
    }

    async fn missing(&self, id: &SessionId) -> Error {
        match self.registry.check(std::slice::from_ref(id)).await {
            Ok(l) => match l.into_iter().next() {
                Some(Liveness::Closed(end)) => Error::Gone {
                    id: id.clone(),
                    end,
                },
                _ => Error::NotFound(id.to_string()),
            },
            Err(e) => e.into(),
        }
    }

    fn gone(s: &Session) -> Error {
        Error::Gone {
            id: s.id.clone(),
            end: s.closing().unwrap_or_else(|| crate::session::SessionEnd {
                code: close_code::ABNORMAL,
                reason: String::new(),
                closed_by: Closer::Client,
            }),
        }
    }

    /// `message_id` (may be empty) keeps a retried send to a reliable session from being
    /// kept twice. The answer says where the message went, for [`Node::receipt`].
    pub(crate) async fn send(
        &self,
        id: &SessionId,
        message: &Message,
        message_id: &str,
    ) -> Result<Sent> {
        let encoded = self.encode(message)?;
        let s = match self.pool.get(id) {
            Some(s) => s,
            None => {
                self.send_orphan(id, message, message_id).await?;
                return Ok(Sent::default());
            }
        };
        if let Some(rel) = &s.reliable {
            return match self.send_reliable(&s, rel, message, message_id).await {
                Err(Error::Moved(_)) => {
                    self.hand_on(id, message, message_id).await?;
                    Ok(Sent::default())
                }
                r => r,
            };
        }
        match s.send_tracked(encoded.frame_for(s.deflate), Flush::Now) {
            Ok(at) => Ok(Sent {
                written_at: Some((s, at)),
                kept: None,
            }),
            Err(SendError::Gone) => Err(Self::gone(&s)),
            Err(SendError::QueueFull) => {
                self.on_queue_full(&s);
                Err(Error::QueueFull(s.id.clone()))
            }
        }
    }

    /// Waits until a sent message reaches `want` or `timeout` passes; answers how far it got.
    pub(crate) async fn receipt(&self, sent: &Sent, want: Reached, timeout: Duration) -> Reached {
        if want > Reached::Queued {
            let deadline = tokio::time::Instant::now() + timeout.min(self.config.max_read_timeout);
            tokio::select! {
                () = self.ctx.receipts.wait(deadline, || sent.reached() >= want) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
        sent.reached()
    }

    /// With no grace configured, a full queue closes the session at once.
    fn on_queue_full(&self, s: &Arc<Session>) {
        if self.config.slow_consumer_grace.is_zero() {
            self.close_slow_consumer(s);
        }
    }

    pub(crate) fn close_slow_consumer(&self, s: &Arc<Session>) {
        if s.close(
            close_code::TRY_AGAIN_LATER,
            "slow consumer",
            Closer::Gateway,
            true,
        ) {
            self.metrics.slow_consumer_closes.inc();
            tracing::warn!(session = %s.id, hub = %s.hub, "closing slow consumer (1013)");
        }
    }

    /// `message_id` identifies this publish on every node it reaches, so a reliable session
    /// moving between two of them keeps it once. With `outcomes`, the answer lists each
    /// session's.
    pub(crate) async fn publish(
        &self,
        target: &Target,
        exclude: &[SessionId],
        message: &Message,
        message_id: &str,
        outcomes: bool,
    ) -> Result<Delivery> {
        validate_target(target)?;
        let encoded = self.encode(message)?;
        // A set, so a long exclusion list does not cost its length for every target.
        let exclude: HashSet<&SessionId> = exclude.iter().collect();
        let mut out = Delivery::default();
        let started = std::time::Instant::now();
        let mut reliable = Vec::new();
        fan_out(self.pool.targets(target), |s| {
            if exclude.contains(&s.id) {
                return;
            }
            if s.reliable.is_some() {
                reliable.push(s);
                return;
            }
            match s.send(encoded.frame_for(s.deflate), Flush::Now) {
                Ok(()) => out.record(&s.id, true, outcomes),
                Err(SendError::QueueFull) => {
                    out.record(&s.id, false, outcomes);
                    self.on_queue_full(&s);
                }
                Err(SendError::Gone) => {}
            }
        })
        .await;
        // Reliable sessions number and keep each message (in Redis when there is one), so
        // they cost a round trip each: a bounded number at a time.
        let kept = futures_util::stream::iter(reliable)
            .map(|s| async move {
                let r = match &s.reliable {
                    None => Ok(()),
                    Some(rel) => match self.send_reliable(&s, rel, message, message_id).await {
                        Err(Error::Moved(_)) => self.hand_on(&s.id, message, message_id).await,
                        r => r.map(drop),
                    },
                };
                (s.id.clone(), r.is_ok())
            })
            .buffer_unordered(RELIABLE_FAN_OUT)
            .collect::<Vec<_>>()
            .await;
        for (id, queued) in kept {
            out.record(&id, queued, outcomes);
        }
        self.metrics
            .publish_fanout
            .observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    pub(crate) async fn close(&self, id: &SessionId, code: u16, reason: &str) -> Result<()> {
        let code = if code == 0 { close_code::NORMAL } else { code };
        if !close_code::is_sendable(code) {
            return Err(Error::InvalidArgument(format!(
                "close code {code} may not be sent (use 1000, 1001-1003, 1007-1014 or 3000-4999)"
            )));
        }
        if reason.len() > frame::MAX_CONTROL_PAYLOAD - 2 {
            return Err(Error::InvalidArgument(format!(
                "close reason is {} bytes; at most 123 fit in a close frame",
                reason.len()
            )));
        }
        let s = self.open_session(id).await?;
        if s.is_suspended() {
            let end = SessionEnd {
                code,
                reason: reason.to_owned(),
                closed_by: Closer::Backend,
            };
            self.end_suspended(&s, end).await;
            return Ok(());
        }
        if s.close(code, reason, Closer::Backend, false) {
            Ok(())
        } else {
            Err(Self::gone(&s))
        }
    }

    pub(crate) async fn get(&self, id: &SessionId) -> Result<SessionRecord> {
        if let Some(s) = self.pool.get(id) {
            return Ok(s.record());
        }
        match self.registry.get(id).await? {
            Some(r) => Ok(r),
            None => Err(self.missing(id).await),
        }
    }

    pub(crate) async fn check(&self, ids: &[SessionId]) -> Result<Vec<Liveness>> {
        Ok(self.registry.check(ids).await?)
    }

    pub(crate) async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        cursor: Option<&str>,
    ) -> Result<Page> {
        if filter.group.is_some() && filter.hub.is_none() {
            return Err(Error::InvalidArgument(
                "a group filter needs a hub: groups belong to a hub".into(),
            ));
        }
        let size = match page_size {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        let mut page = self.registry.list(filter, size, cursor).await?;
        // Local sessions carry live counters; records of other nodes do not.
        for r in &mut page.records {
            if let Some(s) = self.pool.get(&r.id) {
                *r = s.record();
            }
        }
        Ok(page)
    }

    pub(crate) async fn set_group(&self, id: &SessionId, group: &str, member: bool) -> Result<()> {
        validate_group(group)?;
        let s = self.open_session(id).await?;
        let max = self.config.max_groups_per_session;
        if member && !s.groups().contains(group) && s.groups().len() >= max {
            return Err(Error::TooManyGroups(id.clone(), max));
        }
        if member {
            self.pool.join(&s, Arc::from(group));
        } else {
            self.pool.leave(&s, group);
        }
        self.registry.set_group(&s.record(), group, member).await?;
        self.reliable_groups_changed(&s).await?;
        Ok(())
    }

    /// The next client message, "timed out", or "closed". `ack`: the last `client_seq` the
    /// backend received (see `ReadRequest.ack`).
    pub(crate) async fn read(
        &self,
        id: &SessionId,
        timeout: Duration,
        ack: Option<u64>,
    ) -> Result<Next> {
        let s = match self.pool.get(id).or_else(|| self.pool.get_closed(id)) {
            Some(s) => s,
            None => {
                return match self.missing(id).await {
                    Error::Gone { end, .. } => Ok(Next::Closed(end)),
                    e => Err(e),
                }
            }
        };
        if s.is_attached() {
            return Err(Error::ReadWhileAttached(id.clone()));
        }
        // Only a confirmed answer puts a reliable client's message in the backend's hands (a
        // node killed before that loses nothing); one the backend did not get goes again.
        if let Some(rel) = &s.reliable {
            match rel.confirm_read(ack) {
                Confirmed::Nothing => {}
                Confirmed::Taken(seq) => self.taken(&s, seq),
                Confirmed::Lost(m) => return Ok(Next::Message(m)),
            }
        } else if let Some(m) = ack.and_then(|ack| s.inbox.unconfirmed(ack)) {
            return Ok(Next::Message(m));
        }
        let deadline = tokio::time::Instant::now() + timeout.min(self.config.max_read_timeout);
        let mut s = s;
        let mut follow = s.reliable.is_some();
        let _waiting = GaugeGuard::inc(&self.metrics.reads_waiting);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let moved = async {
                match &s.reliable {
                    Some(rel) if follow => rel.replaced(&s).await,
                    _ => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                biased;
                next = s.inbox.next(left) => next,
                // A resume on this node moved the session, and the messages waiting for a
                // backend, to a new connection: the wait goes on there.
                _ = moved => match s.reliable.as_ref().and_then(|rel| rel.current()) {
                    Some(now) => {
                        s = now;
                        continue;
                    }
                    // The connection that took over is gone as well: the wait runs out here.
                    None => {
                        follow = false;
                        continue;
                    }
                },
                _ = self.shutdown.cancelled() => return Err(Error::ShuttingDown),
            };
            if let Next::Message(m) = &next {
                match &s.reliable {
                    // The backend says it has this one: an answer given by the node that held
                    // the session before (killed, or its hand-over did not reach here), which
                    // the client sent again because it was never acknowledged. Recorded as
                    // taken (the client gets its ack), never answered twice. Safe because
                    // answers reach a backend in `client_seq` order: the backend has every
                    // message up to its ack.
                    Some(_) if ack.is_some_and(|ack| m.client_seq <= ack) => {
                        self.metrics.reliable_duplicates.inc();
                        self.taken(&s, m.client_seq);
                        continue;
                    }
                    // Released to another node meanwhile: the client sends it there.
                    Some(rel) if !rel.read(m) => return Err(Error::Moved(id.clone())),
                    Some(_) => {}
                    None if ack.is_some() => s.inbox.answered(m),
                    None => {}
                }
            }
            return Ok(next);
        }
    }
}

/// A backend's claim on a session's messages; releases the slot when dropped, handing back
/// whatever the backend did not acknowledge.
pub(crate) struct Attachment {
    pub session: Arc<Session>,
    id: u64,
    pub ender: Arc<Ender>,
    pub acks: Arc<Acks>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let unacked = self.acks.take_all().into_iter();
        if let Err(left) = self.session.inbox.requeue(unacked) {
            // The session moved to another connection on this node: they go there, ahead of
            // what moved with it (they were taken from the inbox before it). Moved to another
            // node, they are dropped: nothing took them, and the client sends them there.
            if let Some(now) = self.session.reliable.as_ref().and_then(|r| r.current()) {
                let _ = now.inbox.requeue(left.into_iter());
            }
        }
        self.session.detach(self.id);
        self.ender.end(Error::StreamFailed);
    }
}

/// Calls `each` for every item, yielding to the runtime after every [`FAN_OUT_YIELD`]: each
/// call may be a `send(2)` and none of them awaits, so without the yields a publish to 100k
/// sessions would hold its runtime worker, and every task queued behind it, for the whole run.
async fn fan_out<T>(items: impl IntoIterator<Item = T>, mut each: impl FnMut(T)) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 && i % FAN_OUT_YIELD == 0 {
            tokio::task::yield_now().await;
        }
        each(item);
    }
}

/// Checks the names a publish target carries.
fn validate_target(target: &Target) -> Result<()> {
    let hub_ok = |h: &str| {
        if is_name(h) {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "invalid hub {h:?}: 1-64 characters of [A-Za-z0-9._-]"
            )))
        }
    };
    match target {
        Target::Hub(h) => hub_ok(h),
        Target::Group { hub, group } => {
            hub_ok(hub)?;
            validate_group(group)
        }
        Target::User { hub, user } => {
            if let Some(h) = hub {
                hub_ok(h)?;
            }
            if user.is_empty() {
                return Err(Error::InvalidArgument("user must not be empty".into()));
            }
            Ok(())
        }
        Target::Sessions(_) => Ok(()),
    }
}

pub(crate) fn validate_group(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN || group.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "invalid group {group:?}: 1-{MAX_GROUP_LEN} bytes, no control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        sync::atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// On a single-threaded runtime another task runs only when the fan-out yields: it must get
    /// its turn while a fan-out longer than one stretch is still going.
    #[tokio::test(flavor = "current_thread")]
    async fn a_long_fan_out_lets_other_tasks_run() {
        let ran = Arc::new(AtomicBool::new(false));
        let other = tokio::spawn({
            let ran = Arc::clone(&ran);
            async move { ran.store(true, Ordering::Relaxed) }
        });
        let items = 3 * FAN_OUT_YIELD;
        let seen_at = Cell::new(None);
        let done = Cell::new(0);
        fan_out(0..items, |i| {
            if seen_at.get().is_none() && ran.load(Ordering::Relaxed) {
                seen_at.set(Some(i));
            }
            done.set(done.get() + 1);
        })
        .await;
        assert_eq!(done.get(), items, "every item is visited once");
        assert_eq!(
            seen_at.get(),
            Some(FAN_OUT_YIELD),
            "the other task ran at the first yield, not after the whole fan-out"
        );
        other.await.unwrap();
    }
}
