//! What a node says about itself: its state, sessions, counters and busiest hubs. The admin API
//! answers it for this node, and in a cluster every lease renewal also writes it to Redis
//! (`P:nodeinfo:{node}`, with the lease's TTL) so any node's admin page can show every node.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{cluster::Cluster, node::Node};

/// Most hubs one node publishes (its busiest): the info stays small however many hubs there are.
pub(crate) const TOP_HUBS: usize = 50;

/// Counters the page turns into rates (totals since the node started).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Stats {
    pub connects: u64,
    pub disconnects: u64,
    pub messages_in: u64,
    /// Frames written to clients (messages, plus pings and closes).
    pub messages_out: u64,
    pub slow_consumer_closes: u64,
}

/// One node's published facts. Fields a newer version adds are optional here, so nodes of
/// different versions read each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    /// `ready`, `draining` or `joining`.
    pub state: String,
    pub sessions: u64,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub version: String,
    /// The backend (gRPC) URL other nodes use.
    pub addr: String,
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default)]
    pub stats: Stats,
    /// The node's busiest hubs and their open sessions, at most [`TOP_HUBS`].
    #[serde(default)]
    pub hubs: Vec<(String, u64)>,
    /// Whether the node has more hubs than `hubs` lists.
    #[serde(default)]
    pub more_hubs: bool,
}

pub(crate) fn state(node: &Node) -> &'static str {
    if node.is_draining() {
        "draining"
    } else if !node.has_joined() {
        "joining"
    } else {
        "ready"
    }
}

pub(crate) fn stats(node: &Node) -> Stats {
    let m = &node.metrics;
    let connects = m.connects.get();
    // Every admitted session is counted open until it is retired: the difference is exact,
    // and costs no counter of its own on the disconnect path.
    let open = u64::try_from(m.sessions_open.get()).unwrap_or(0);
    Stats {
        connects,
        disconnects: connects.saturating_sub(open),
        messages_in: m.messages_in.get(),
        messages_out: m.messages_out.get(),
        slow_consumer_closes: m.slow_consumer_closes.get(),
    }
}

/// Open sessions per hub on this node, busiest first, all of them.
pub(crate) fn hubs(node: &Node) -> Vec<(Arc<str>, usize)> {
    let mut hubs = node.pool.hub_counts();
    hubs.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    hubs
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This node's info as of now.
pub(crate) fn of(node: &Node) -> NodeInfo {
    let addrs = node.addrs.get();
    let addr = match node.registry.cluster() {
        Some(c) => c.advertise.clone(),
        None => addrs
            .map(|a| format!("http://{}", a.backend))
            .unwrap_or_default(),
    };
    let mut hubs = hubs(node);
    let more_hubs = hubs.len() > TOP_HUBS;
    hubs.truncate(TOP_HUBS);
    NodeInfo {
        state: state(node).to_owned(),
        sessions: node.pool.len() as u64,
        started_at: millis(node.ctx.clock.started_at()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        addr,
        client: addrs.map(|a| a.client.to_string()),
        admin: addrs.and_then(|a| a.admin).map(|a| a.to_string()),
        stats: stats(node),
        hubs: hubs
            .into_iter()
            .map(|(h, n)| (h.to_string(), n as u64))
            .collect(),
        more_hubs,
    }
}

/// Writes this node's info to Redis; called by the lease task after each renewal (and at once
/// after a drain). Bounded by half a refresh period, so it never delays the next renewal much;
/// a failure only leaves the previous info to expire with the lease.
pub(crate) async fn publish(node: &Node, cluster: &Cluster) {
    let info = match serde_json::to_string(&of(node)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not encode this node's info");
            return;
        }
    };
    let write = cluster
        .redis
        .write_node_info(&node.id, &info, node.config.lease_ttl);
    match tokio::time::timeout(node.config.lease_refresh / 2, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "node info not written"),
        Err(_) => tracing::debug!("node info write timed out"),
    }
}

/// Uptime from a start time in epoch milliseconds (0 when the clock says it is in the future).
pub(crate) fn uptime(started_at: u64) -> Duration {
    Duration::from_millis(millis(SystemTime::now()).saturating_sub(started_at))
}
