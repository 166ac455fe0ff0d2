//! Switchboard's gateway: terminates client WebSockets, keeps them in a pool keyed by session
//! ID, and lets backends use them over gRPC without owning a socket.
//!
//! Module map:
//! - [`config`]: flags and environment, validated into one `Config`.
//! - `admin`: the admin listener: the operator's page, its JSON API (token-protected), probes
//!   and metrics.
//! - `client`: the client listener: HTTP routes, upgrade admission, one reader task per session.
//! - `cluster`: the shared registry's node: lease (own task), joining, reaping of dead nodes,
//!   reconciliation of its own entries, clients to the other nodes for forwarded calls.
//! - `gate`, `jwt`, `limits`: what a client must pass before its upgrade (origin allow-list,
//!   connection limits, JWTs), and per-session message/byte rates.
//! - `tls`: rustls for both listeners, reloadable on SIGHUP; `tls::records`, the TLS 1.3
//!   records of an upgraded WebSocket once its keys are out of rustls.
//! - `hook`: the connect hook client (`ConnectHook/Authorize`).
//! - `model`: the shared vocabulary: session IDs, how a session ended, registry records.
//! - `session`: one session: ID, counters, lifecycle, outbound queue, inbox.
//! - `frame`: server frame encoding (encode once, share the bytes), strict client frame
//!   decoding, close payloads.
//! - `deflate`: permessage-deflate: negotiation, compress-once, bounded inflation.
//! - `message`: reassembly, inflation and validation of client messages.
//! - `pool`: the node's live sessions and their hub/group/user indexes.
//! - `registry`: where sessions are recorded for lookups and listings (in memory by default).
//! - `events`: hub events for `Subscribe`, shared within consumer groups.
//! - `node`: the operations backends call, over the pool and the registry.
//! - `api`: the gRPC backend listener, token check, error-to-status mapping.
//! - `sweeper`: keepalive pings, idle and slow-consumer closes, expiry of unread inboxes.
//! - `metrics`, [`telemetry`]: Prometheus metrics and log setup.

mod accept;
mod admin;
mod api;
mod client;
mod cluster;
pub mod config;
mod deflate;
mod error;
mod events;
mod frame;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod hook;
mod jwt;
mod limits;
mod message;
mod metrics;
mod model;
mod node;
mod pool;
mod registry;
mod reliable;
mod session;
mod sweeper;
pub mod telemetry;
mod tls;

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;

use crate::{
    cluster::Cluster,
    metrics::Metrics,
    node::Node,
    registry::{RedisRegistry, Registry},
    session::{Clock, SessionContext},
    tls::{ReloadableTls, TlsFiles},
};

/// How many closed sessions the embedded registry remembers as "closed" (not "unknown").
const TOMBSTONES: usize = 100_000;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("backend API: {0}")]
    Api(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("{0}")]
    Security(String),
    #[error("backend API task failed: {0}")]
    ApiTask(String),
}

/// A gateway whose listeners are bound (so their addresses are known) but not yet serving.
pub struct Gateway {
    node: Arc<Node>,
    client: TcpListener,
    backend: TcpListener,
    admin: Option<TcpListener>,
    client_tls: Option<Arc<ReloadableTls>>,
    backend_tls: Option<Arc<ReloadableTls>>,
}

impl Gateway {
    /// Validates the configuration and binds both listeners.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let node_id: Arc<str> = match &config.node_id {
            Some(id) => id.as_str().into(),
            None => random_node_id()?.into(),
        };
        let client = bind(config.listen, config.listen_backlog)?;
        let backend = bind(config.backend_listen, config.listen_backlog)?;
        let backend_addr = backend.local_addr().unwrap_or(config.backend_listen);
        let gate = gate::Gate::from_config(&config).map_err(|e| Error::Security(e.to_string()))?;
        let load = |cert: &Option<std::path::PathBuf>,
                    key: &Option<std::path::PathBuf>,
                    ca: Option<&std::path::PathBuf>,
                    alpn: &[&[u8]]| {
            match (cert, key) {
                (Some(cert), Some(key)) => ReloadableTls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: ca.cloned(),
                    alpn: alpn.iter().map(|p| p.to_vec()).collect(),
                })
                .map(Some)
                .map_err(|e| Error::Security(e.to_string())),
                _ => Ok(None),
            }
        };
        let client_tls = load(
            &config.tls_cert,
            &config.tls_key,
            None,
            &[b"h2", b"http/1.1"],
        )?;
        let backend_tls = load(
            &config.backend_tls_cert,
            &config.backend_tls_key,
            config.backend_client_ca.as_ref(),
            &[b"h2"],
        )?;
        let metrics = Arc::new(Metrics::new());
        let ctx = Arc::new(SessionContext {
            metrics: Arc::clone(&metrics),
            tasks: TaskTracker::new(),
            clock: Clock::new(),
            close_timeout: config.close_timeout,
            write_timeout: config.write_timeout,
            node: Arc::clone(&node_id),
            receipts: Default::default(),
        });
        let registry = match &config.redis_url {
            None => Registry::memory(TOMBSTONES),
            Some(url) => {
                let redis = RedisRegistry::connect(url, &config.redis_prefix, Arc::clone(&metrics))
                    .await
                    .map_err(|e| Error::Registry(e.to_string()))?;
                let scheme = if backend_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let advertise = config
                    .advertise_backend
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{backend_addr}"));
                let peer_tls =
                    cluster::peer_tls(&config).map_err(|e| Error::Security(e.to_string()))?;
                Registry::Cluster(Arc::new(Cluster::new(redis, advertise, &config, peer_tls)))
            }
        };
        let node = Arc::new(Node::new(
            Arc::new(config),
            node_id,
            Arc::new(registry),
            metrics,
            ctx,
            gate,
        ));
        if let Some(cluster) = node.registry.cluster() {
            cluster::reaper::clean_own_leftovers(&node, cluster).await;
        }
        // Bound last: a node that cannot start for another reason says that reason.
        let admin = match node.config.admin_listen.0 {
            Some(addr) => Some(bind(addr, node.config.listen_backlog)?),
            None => None,
        };
        let _ = node.addrs.set(node::Addresses {
            client: client.local_addr().unwrap_or(node.config.listen),
            backend: backend_addr,
            admin: admin
                .as_ref()
                .zip(node.config.admin_listen.0)
                .map(|(l, configured)| l.local_addr().unwrap_or(configured)),
        });
        Ok(Self {
            node,
            client,
            backend,
            admin,
            client_tls,
            backend_tls,
        })
    }

    /// The client listener's address (useful with port 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client.local_addr().unwrap_or(self.node.config.listen)
    }

    /// The backend gRPC listener's address.
    pub fn backend_addr(&self) -> SocketAddr {
        self.backend
            .local_addr()
            .unwrap_or(self.node.config.backend_listen)
    }

    /// The admin listener's address, unless `--admin-listen off`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.node.addrs.get().and_then(|a| a.admin)
    }

    /// This node's ID in the registry.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// Serves until `shutdown` resolves (a drain asked for on the admin API does not end it),
    /// then drains: refuses new upgrades (`/readyz` turns 503),
    /// closes every session with 1001, lets in-flight calls finish, and returns within the
    /// configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Gateway {
            node,
            client,
            backend,
            admin,
            client_tls,
            backend_tls,
        } = self;
        let grace = node.config.shutdown_grace;
        let stop_http = CancellationToken::new();
        let stop_api = CancellationToken::new();
        let http_tasks = TaskTracker::new();
        let background = TaskTracker::new();

        background.spawn(client::serve(
            client,
            Arc::clone(&node),
            client_tls.clone(),
            http_tasks.clone(),
            stop_http.clone(),
        ));
        if let Some(admin) = admin {
            background.spawn(admin::serve(
                admin,
                Arc::clone(&node),
                http_tasks.clone(),
                stop_http.clone(),
            ));
        }
        background.spawn(reload_tls_on_sighup(
            [client_tls, backend_tls.clone()],
            stop_http.clone(),
        ));
        background.spawn(sweeper::run(Arc::clone(&node), stop_http.clone()));
        let api = tokio::spawn(api::serve(
            backend,
            Arc::clone(&node),
            backend_tls,
            stop_api.clone(),
        ));
        if let Some(cluster) = node.registry.cluster() {
            // Joining needs this node's backend API up: peers joining at the same time call it.
            let stop = stop_http.clone();
            background.spawn(cluster::lease::join(
                Arc::clone(&node),
                Arc::clone(cluster),
                stop.clone(),
            ));
            background.spawn(cluster::lease::keep(
                Arc::clone(&node),
                Arc::clone(cluster),
                stop.clone(),
            ));
            background.spawn(cluster::reaper::run(
                Arc::clone(&node),
                Arc::clone(cluster),
                stop.clone(),
            ));
            background.spawn(cluster::reconcile::run(
                Arc::clone(&node),
                Arc::clone(cluster),
                stop,
            ));
        }
        tracing::info!(node = %node.id, "gateway running");

        tokio::pin!(api);
        tokio::select! {
            _ = shutdown => {}
            r = &mut api => {
                // The API server only returns early on a fatal error.
                stop_http.cancel();
                return match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Error::Api(e.to_string())),
                    Err(e) => Err(Error::ApiTask(e.to_string())),
                };
            }
        }

        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(sessions = node.pool.len(), ?grace, "draining");
        node.drain();
        node.ctx.tasks.close();
        if tokio::time::timeout_at(deadline, node.ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = node.pool.len(),
                "sessions still open at the end of the grace period"
            );
        }
        node.hand_over(deadline).await;
        stop_http.cancel();
        stop_api.cancel();
        match tokio::time::timeout_at(deadline, &mut api).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "backend API ended with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("backend calls still running at the end of the grace period"),
        }
        background.close();
        http_tasks.close();
        let _ = tokio::time::timeout_at(deadline, background.wait()).await;
        if let Some(cluster) = node.registry.cluster() {
            // Leaving cleanly: no survivor needs to reap this node.
            if let Err(e) = cluster.redis.release_lease(&node.id).await {
                tracing::warn!(error = %e, "could not release the node lease");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// SIGHUP reloads the certificates: new handshakes use them, open connections keep theirs.
async fn reload_tls_on_sighup(tls: [Option<Arc<ReloadableTls>>; 2], stop: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificates will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => {}
        }
        for t in tls.iter().flatten() {
            match t.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the old certificate")
                }
            }
        }
    }
}

/// A listener with `backlog` (tokio's `bind` fixes it at 1024, too short for connect bursts of
/// thousands per second).
fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, Error> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As std and tokio do: a restarted gateway can bind while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    listen().map_err(|source| Error::Bind { addr, source })
}

fn random_node_id() -> Result<String, Error> {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format!(
        "node-{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}
