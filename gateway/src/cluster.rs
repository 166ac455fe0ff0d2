//! Several nodes as one system: the node lease, the reaping of dead nodes, and gRPC clients
//! to the other nodes for calls about sessions they hold.
//!
//! Cross-node calls go directly from node to node over the backend API (the address is in each
//! node's lease), marked with `x-switchboard-hop` so the receiving node answers from its own
//! pool and never forwards again. Direct gRPC was chosen over Redis pub/sub: the caller gets the
//! owner's real answer (`NOT_FOUND`, `RESOURCE_EXHAUSTED`, a `Read` result), Redis stays off the
//! message path, and an unreachable node is a clear `UNAVAILABLE` instead of a silent loss.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use switchboard_proto::v1::{gateway_client::GatewayClient, peer_client::PeerClient};
use tokio_util::sync::CancellationToken;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Request, Status,
};

use crate::{
    config::Config,
    events::{Event, EventBody},
    node::Node,
    registry::{node_lost, RedisRegistry},
};

/// Metadata that marks a call forwarded by another node.
pub(crate) const HOP_HEADER: &str = "x-switchboard-hop";

/// How long a forwarded call may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds the backend token and the hop marker to node-to-node calls.
#[derive(Clone)]
pub(crate) struct Hop(Option<MetadataValue<Ascii>>);

impl Interceptor for Hop {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        req.metadata_mut()
            .insert(HOP_HEADER, MetadataValue::from_static("1"));
        Ok(req)
    }
}

pub(crate) type GatewayPeer = GatewayClient<InterceptedService<Channel, Hop>>;
pub(crate) type EventPeer = PeerClient<InterceptedService<Channel, Hop>>;

pub(crate) struct Cluster {
    /// The URL other nodes use to reach this node's backend API.
    pub advertise: String,
    hop: Hop,
    /// How to reach peers whose backend listener speaks TLS.
    tls: Option<ClientTlsConfig>,
    max_message: usize,
    /// HTTP/2 windows (stream, connection): relayed Attach and Deliver streams bring small
    /// messages that wait here when the backend reads slowly, as on the backend listener.
    windows: (u32, u32),
    /// One lazily connected channel per peer address.
    channels: Mutex<HashMap<String, Channel>>,
}

impl Cluster {
    pub(crate) fn new(advertise: String, config: &Config, tls: Option<ClientTlsConfig>) -> Self {
        let token = config.backend_token.as_deref();
        let hop = Hop(token.and_then(|t| format!("Bearer {t}").parse().ok()));
        Self {
            advertise,
            hop,
            tls,
            max_message: config.max_message_bytes.get(),
            windows: (
                config.backend_stream_window,
                config.backend_connection_window,
            ),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| Status::unavailable(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(self.windows.0)
            .initial_connection_window_size(self.windows.1);
        if let (Some(tls), true) = (&self.tls, addr.starts_with("https://")) {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Status::unavailable(format!("peer TLS for {addr:?}: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The backend API of the node at `addr`, for forwarded calls.
    pub(crate) fn gateway(&self, addr: &str) -> Result<GatewayPeer, Status> {
        let limit = self.max_message + 64 * 1024;
        Ok(
            GatewayClient::with_interceptor(self.channel(addr)?, self.hop.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
    }

    /// The peer API of the node at `addr`, for event delivery.
    pub(crate) fn peer(&self, addr: &str) -> Result<EventPeer, Status> {
        let limit = self.max_message + 64 * 1024;
        Ok(
            PeerClient::with_interceptor(self.channel(addr)?, self.hop.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
    }
}

/// How this node calls peers over backend TLS: trust `--peer-ca` (or the backend client CA),
/// and present its own backend certificate when peers require client certificates.
pub(crate) fn peer_tls(c: &crate::Config) -> Result<Option<ClientTlsConfig>, std::io::Error> {
    let (Some(cert), Some(key)) = (&c.backend_tls_cert, &c.backend_tls_key) else {
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = c.peer_ca.as_ref().or(c.backend_client_ca.as_ref()) {
        tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    }
    if c.backend_client_ca.is_some() {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Some(tls))
}

/// Whether a call came from another node.
pub(crate) fn is_hop<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(HOP_HEADER)
}

/// Before serving: forget whatever a previous run of this node ID left behind.
pub(crate) async fn clean_own_leftovers(node: &Node, redis: &RedisRegistry) {
    match redis.reap(&node.id).await {
        Ok(stale) if !stale.is_empty() => {
            tracing::info!(
                sessions = stale.len(),
                "removed sessions a previous run of this node left behind"
            );
            announce_lost(node, stale).await;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not clean up this node's leftovers"),
    }
}

/// Keeps the lease, re-registers after Redis lost our data, reaps dead nodes, and writes
/// `last_active_at` in batches; every `lease_refresh` until `stop`.
pub(crate) async fn maintain(node: Arc<Node>, stop: CancellationToken) {
    let Some(redis) = node.registry.shared() else {
        return;
    };
    let Some(cluster) = node.cluster.as_ref() else {
        return;
    };
    let mut interval = tokio::time::interval(node.config.lease_refresh);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        match redis
            .renew_lease(&node.id, &cluster.advertise, node.config.lease_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Our lease was gone: Redis restarted empty, or an outage outlived the lease
                // (and a survivor may have reaped us). Register everything we hold again.
                redis.note_live(&node.id, &cluster.advertise);
                resync(&node, redis).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease renewal failed");
                continue;
            }
        }
        let dead = match redis.refresh_nodes().await {
            Ok((_, dead)) => dead,
            Err(_) => continue,
        };
        for d in dead.into_iter().filter(|d| **d != *node.id) {
            match redis.lock_reap(&d, &node.id).await {
                Ok(true) => match redis.reap(&d).await {
                    Ok(lost) => {
                        tracing::warn!(node = %d, sessions = lost.len(), "node lost; its sessions are gone");
                        announce_lost(&node, lost).await;
                    }
                    Err(e) => tracing::warn!(node = %d, error = %e, "reaping a dead node failed"),
                },
                Ok(false) => {}
                Err(_) => break,
            }
        }
        let active = node.pool.recently_active(&node.ctx.clock);
        if let Err(e) = redis.touch_all(&active).await {
            tracing::debug!(error = %e, "last_active_at update failed");
        }
    }
}

/// Registers every local session and subscriber again.
async fn resync(node: &Node, redis: &RedisRegistry) {
    let records: Vec<_> = node.pool.all().iter().map(|s| s.record()).collect();
    match redis.register_all(&records).await {
        Ok(()) => tracing::info!(
            sessions = records.len(),
            "registered this node's sessions again"
        ),
        Err(e) => tracing::warn!(error = %e, "re-registration failed; will retry"),
    }
    node.events.register_members_again().await;
}

/// Tells subscribers that sessions of a lost node are gone.
async fn announce_lost(node: &Node, lost: Vec<crate::registry::SessionRecord>) {
    node.metrics.sessions_lost.inc_by(lost.len() as u64);
    for r in lost {
        node.events
            .publish(Event {
                session: r.id,
                hub: r.hub.into(),
                body: EventBody::Disconnected(node_lost()),
            })
            .await;
    }
}
