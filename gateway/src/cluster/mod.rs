//! Several nodes as one system: the shared registry, the node lease, joining, reaping of dead
//! nodes, reconciliation of this node's entries, and gRPC clients to the other nodes.
//!
//! - [`lease`]: the lease on its own task (nothing slow shares its loop), and joining: a node
//!   admits clients only once every live peer has learnt it.
//! - [`reaper`]: the live-node view, dead nodes reaped page by page under an extended lock,
//!   their sessions announced with bounded concurrency; `last_active_at` batches.
//! - [`reconcile`]: this node's node index against its pool, both ways, in pages.
//!
//! Cross-node calls go directly from node to node over the backend API (the address is in each
//! node's lease), marked with `x-switchboard-hop` so the receiving node answers from its own
//! pool and never forwards again. Direct gRPC was chosen over Redis pub/sub: the caller gets the
//! owner's real answer (`NOT_FOUND`, `RESOURCE_EXHAUSTED`, a `Read` result), Redis stays off the
//! message path, and an unreachable node is a clear `UNAVAILABLE` instead of a silent loss.

pub(crate) mod lease;
pub(crate) mod reaper;
pub(crate) mod reconcile;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use switchboard_proto::v1::{gateway_client::GatewayClient, peer_client::PeerClient};
use tokio::sync::Notify;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Request, Status,
};

use crate::{config::Config, registry::RedisRegistry};

/// Metadata that marks a call forwarded by another node.
pub(crate) const HOP_HEADER: &str = "x-switchboard-hop";

/// How long a forwarded call may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a joining node asks the peers that have not answered yet.
const JOIN_RETRY: Duration = Duration::from_millis(200);

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

/// A node of a cluster: the shared registry, the lease's health, and links to the others.
pub(crate) struct Cluster {
    /// The registry every node of the cluster shares.
    pub redis: RedisRegistry,
    /// The URL other nodes use to reach this node's backend API.
    pub advertise: String,
    /// Since when the lease is known to be held (see [`Cluster::lease_healthy`]).
    lease: LeaseHealth,
    /// Every live peer has learnt this node: clients may be admitted.
    joined: AtomicBool,
    /// A registry write failed or Redis lost our data: reconcile as soon as Redis answers.
    pub(crate) dirty: Notify,
    /// Redis was found to be the kind the URL names (checked at start, or once it answers).
    topology_verified: AtomicBool,
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
    pub(crate) fn new(
        redis: RedisRegistry,
        advertise: String,
        config: &Config,
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        let token = config.backend_token.as_deref();
        let hop = Hop(token.and_then(|t| format!("Bearer {t}").parse().ok()));
        Self {
            redis,
            advertise,
            lease: LeaseHealth::new(config.lease_ttl),
            joined: AtomicBool::new(false),
            dirty: Notify::new(),
            topology_verified: AtomicBool::new(false),
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

    pub(crate) fn is_joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// Whether the lease was renewed recently enough that it cannot have expired.
    pub(crate) fn lease_healthy(&self) -> bool {
        self.lease.healthy()
    }

    /// Asks for a reconciliation pass as soon as Redis answers (a write was lost).
    pub(crate) fn mark_dirty(&self) {
        self.dirty.notify_one();
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

/// When the lease was last written, against its TTL.
struct LeaseHealth {
    start: Instant,
    /// Milliseconds after `start` of the last successful renewal; 0: never.
    renewed_ms: AtomicU64,
    ttl: Duration,
}

impl LeaseHealth {
    fn new(ttl: Duration) -> Self {
        Self {
            start: Instant::now(),
            renewed_ms: AtomicU64::new(0),
            ttl,
        }
    }

    /// Records a renewal that began at `sent` (the lease runs from when it was written, which
    /// is no earlier than that).
    fn renewed(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.start).as_millis() as u64;
        self.renewed_ms.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        let ms = self.renewed_ms.load(Ordering::Relaxed);
        ms != 0 && self.start.elapsed().as_millis() as u64 <= ms + self.ttl.as_millis() as u64
    }
}
