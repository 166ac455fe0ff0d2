//! Reconciliation: this node's entries in Redis against the sessions it really holds.
//!
//! Admission and teardown write the registry once each; a write that fails (Redis paused, a
//! timeout whose command still lands later, Redis restarted empty) would otherwise be
//! permanent. So every `--reconcile-interval`, and as soon as Redis answers after a failed
//! write, the node walks its node index in pages and repairs both directions:
//!
//! - an indexed session the pool does not hold: its record is taken out (only if it still
//!   names this node) with its index entries;
//! - a pooled session whose record is missing or names another node, or that the index does
//!   not list: it is registered again, and if it ended meanwhile, taken out again.
//!
//! Each pass also writes this node's `Subscribe` members again.
//!
//! The pool is the truth; the index converges to it. Admission puts a session in the pool
//! before registering it, and teardown takes it out of the pool before unregistering, so a
//! pass never removes a session that is open, and a session registered by a pass that ended
//! meanwhile is caught by the re-check (or by the next pass).

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::{
    node::Node,
    registry::{RegistryError, PAGE},
    session::SessionId,
};

/// What one pass repaired.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Repairs {
    pub registered: usize,
    pub removed: usize,
}

pub(crate) async fn run(node: Arc<Node>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(node.config.reconcile_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the node has just registered everything it holds.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
            _ = cluster.dirty.notified() => {}
        }
        // Until a pass completes, keep trying at the lease's pace (Redis may still be away).
        loop {
            match pass(&node, &cluster).await {
                Ok(r) => {
                    if r != Repairs::default() {
                        tracing::info!(
                            registered = r.registered,
                            removed = r.removed,
                            "registry repaired to match this node's sessions"
                        );
                        node.metrics
                            .registry_repairs
                            .inc_by((r.registered + r.removed) as u64);
                    }
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "reconciliation pass failed; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry_delay(&node)) => {}
            }
        }
    }
}

fn retry_delay(node: &Node) -> Duration {
    node.config.lease_refresh.min(Duration::from_secs(1))
}

/// One full comparison of the node index with the pool.
pub(crate) async fn pass(node: &Node, cluster: &Cluster) -> Result<Repairs, RegistryError> {
    let redis = &cluster.redis;
    let mut repairs = Repairs::default();
    let mut listed: HashSet<SessionId> = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let ids = redis.node_page(&node.id, after.as_deref(), PAGE).await?;
        let Some(last) = ids.last() else { break };
        after = Some(last.clone());
        let full = ids.len() == PAGE;
        let mut held = Vec::new();
        let mut stale = Vec::new();
        for raw in ids {
            match SessionId::parse(&raw) {
                Some(id) if node.pool.get(&id).is_some() => held.push(id),
                _ => stale.push(raw),
            }
        }
        repairs.removed += redis.remove_stale(&node.id, &stale).await?;
        repairs.registered += register_unrecorded(node, cluster, &held).await?;
        listed.extend(held);
        if !full {
            break;
        }
    }
    // Sessions admitted while the walk went on are unlisted too, but their record is there.
    let unlisted: Vec<SessionId> = node
        .pool
        .all()
        .into_iter()
        .map(|s| s.id.clone())
        .filter(|id| !listed.contains(id))
        .collect();
    for chunk in unlisted.chunks(PAGE) {
        repairs.registered += register_unrecorded(node, cluster, chunk).await?;
    }
    // Subscribe members are few; writing them again is cheaper than comparing.
    node.events.register_members_again().await;
    Ok(repairs)
}

/// Registers those of `ids` whose record is missing or names another node.
async fn register_unrecorded(
    node: &Node,
    cluster: &Cluster,
    ids: &[SessionId],
) -> Result<usize, RegistryError> {
    let recorded = cluster.redis.held_by(&node.id, ids).await?;
    let mut missing = Vec::new();
    for (id, ok) in ids.iter().zip(recorded) {
        if ok {
            continue;
        }
        // A reliable session whose record names another node may have been resumed there:
        // it is not this node's to register again.
        if let Some(s) = node.pool.get(id).filter(|s| s.reliable.is_some()) {
            if node.moved_away(&s).await? {
                continue;
            }
        }
        missing.push(id.clone());
    }
    register(node, cluster, &missing).await
}

/// Registers sessions of the pool again; any that ended meanwhile are taken out again.
async fn register(
    node: &Node,
    cluster: &Cluster,
    ids: &[SessionId],
) -> Result<usize, RegistryError> {
    let records: Vec<_> = ids
        .iter()
        .filter_map(|id| node.pool.get(id))
        .map(|s| s.record())
        .collect();
    if records.is_empty() {
        return Ok(0);
    }
    cluster.redis.register_all(&records).await?;
    let ended: Vec<String> = records
        .iter()
        .filter(|r| node.pool.get(&r.id).is_none())
        .map(|r| r.id.to_string())
        .collect();
    cluster.redis.remove_stale(&node.id, &ended).await?;
    Ok(records.len() - ended.len())
}
