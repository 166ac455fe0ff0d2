//! Watching the other nodes: the live-node view (and the cluster-size gauges), reaping of dead
//! nodes, and the batched `last_active_at` writes; every `--lease-refresh`, on a task apart
//! from the lease.
//!
//! Reaping is safe to repeat and to run concurrently: a survivor takes the node's reap lock
//! (extended after every page, so a node of any size is finished by one reaper), and each
//! record is taken by exactly one caller ([`RedisRegistry::reap_page`]), so each lost session
//! gets one `disconnected` event. The node leaves the node set only once its index is empty.
//!
//! [`RedisRegistry::reap_page`]: crate::registry::RedisRegistry::reap_page

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::{
    events::{Event, EventBody},
    node::Node,
    registry::{node_lost, Reaped},
};

/// Most `disconnected` events of lost sessions in flight at once.
const ANNOUNCE_CONCURRENCY: usize = 64;

pub(crate) async fn run(node: Arc<Node>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(node.config.lease_refresh);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let dead = match cluster.redis.refresh_nodes().await {
            Ok((live, dead)) => {
                node.metrics.cluster_nodes.set(live.len() as i64);
                if let Ok(n) = cluster.redis.indexed_sessions(&live).await {
                    node.metrics.registry_sessions.set(n as i64);
                }
                dead
            }
            Err(_) => continue,
        };
        for d in dead.into_iter().filter(|d| **d != *node.id) {
            match cluster.redis.lock_reap(&d, &node.id).await {
                Ok(true) => reap(&node, &cluster, &d, &stop).await,
                Ok(false) => {}
                Err(_) => break,
            }
        }
        let active = node.pool.recently_active(&node.ctx.clock);
        if let Err(e) = cluster.redis.touch_all(&active).await {
            tracing::debug!(error = %e, "last_active_at update failed");
        }
    }
}

/// Removes every session of a dead node, page by page, announcing each page's sessions as it
/// goes; stops if the lock is lost or the node comes back.
async fn reap(node: &Arc<Node>, cluster: &Cluster, dead: &str, stop: &CancellationToken) {
    let mut lost = 0usize;
    let mut suspended = 0usize;
    loop {
        if stop.is_cancelled() {
            return;
        }
        match cluster.redis.has_lease(dead).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(node = %dead, "node came back; not reaping it");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %dead, error = %e, "reaping paused: registry unavailable");
                return;
            }
        }
        let page = match cluster
            .redis
            .reap_page(dead, node.config.resume_window)
            .await
        {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(node = %dead, error = %e, "reaping a dead node failed; a later pass goes on");
                return;
            }
        };
        lost += page.lost.len();
        suspended += page.suspended.len();
        announce_lost(node, page).await;
        match cluster.redis.extend_reap(dead, &node.id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(node = %dead, "lost the reap lock; another node goes on");
                return;
            }
            Err(_) => return,
        }
    }
    if let Err(e) = cluster.redis.finish_reap(dead).await {
        tracing::warn!(node = %dead, error = %e, "could not forget a reaped node; a later pass will");
    }
    tracing::warn!(
        node = %dead,
        sessions = lost,
        suspended,
        "node lost; its sessions are gone (reliable ones wait for a resume elsewhere)"
    );
}

/// Tells subscribers that sessions of a lost node are gone (or, reliable ones, suspended
/// until their clients resume elsewhere), a bounded number at a time.
pub(crate) async fn announce_lost(node: &Arc<Node>, page: Reaped) {
    node.metrics.sessions_lost.inc_by(page.lost.len() as u64);
    let lost = page.lost.into_iter().map(|r| (r, false));
    let suspended = page.suspended.into_iter().map(|r| (r, true));
    futures_util::stream::iter(lost.chain(suspended))
        .for_each_concurrent(ANNOUNCE_CONCURRENCY, |(r, suspended)| async move {
            let body = if suspended {
                // The session's own state must outlive the window too, not the record alone.
                node.suspend_orphan(&r).await;
                EventBody::Suspended(node_lost())
            } else {
                EventBody::Disconnected(node_lost())
            };
            node.events
                .publish(Event {
                    session: r.id,
                    hub: r.hub.into(),
                    body,
                })
                .await;
        })
        .await;
}

/// Before serving: take back whatever a previous run of this node ID left in Redis (its
/// sessions are gone with that process), announcing each once.
pub(crate) async fn clean_own_leftovers(node: &Arc<Node>, cluster: &Cluster) {
    let mut stale = 0;
    loop {
        match cluster
            .redis
            .reap_page(&node.id, node.config.resume_window)
            .await
        {
            Ok(Some(page)) => {
                stale += page.lost.len() + page.suspended.len();
                announce_lost(node, page).await;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "could not clean up this node's leftovers");
                return;
            }
        }
    }
    if stale > 0 {
        tracing::info!(
            sessions = stale,
            "removed sessions a previous run of this node left behind"
        );
    }
}
