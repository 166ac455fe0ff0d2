//! The node's lease, and joining the cluster.
//!
//! The lease is the node's claim to be alive: when it lapses, a survivor reaps the node's
//! sessions and tells backends they are gone. So renewing it shares a task (and a Redis
//! connection) with nothing else, and each renewal has its own deadline; `/readyz` turns 503
//! when renewals stop succeeding.
//!
//! Joining closes the window in which a new node holds sessions that a publish elsewhere
//! would skip: fan-out reaches the nodes a node knows, and a node learns the others from
//! Redis every lease refresh. A node therefore writes its lease, reads the node set, and tells
//! every live peer it found (`Peer/Join`, which the peer checks against Redis) before it admits
//! a client. For any two nodes, the one that wrote its lease later read the set after the other
//! wrote, so either it told the other, or the other read it: every publish, wherever it is
//! sent, knows every node that may hold a target.

use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use switchboard_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::node::Node;

/// Renews the lease every `--lease-refresh` until `stop`. A lease found missing (Redis
/// restarted empty, or an outage outlived it) is written again at once, and the reconciler
/// registers everything this node holds.
pub(crate) async fn keep(node: Arc<Node>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(node.config.lease_refresh);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        renew(&node, &cluster).await;
    }
}

/// One renewal; true when the lease is held afterwards.
pub(crate) async fn renew(node: &Node, cluster: &Cluster) -> bool {
    let sent = Instant::now();
    // A renewal slower than a refresh period is no renewal: the next one starts on time.
    let r = tokio::time::timeout(
        node.config.lease_refresh,
        cluster
            .redis
            .renew_lease(&node.id, &cluster.advertise, node.config.lease_ttl),
    )
    .await;
    match r {
        Ok(Ok(existed)) => {
            cluster.lease.renewed(sent);
            if !cluster.topology_verified.load(Ordering::Relaxed) {
                // Redis was down at start: the check that it is the kind of Redis the URL says
                // happens now (a mismatch keeps the node unready and logs why).
                match cluster.redis.verify_topology().await {
                    Ok(false) => {}
                    Ok(true) => cluster.topology_verified.store(true, Ordering::Relaxed),
                    Err(e) => {
                        tracing::error!(error = %e, "not serving as a cluster node");
                        cluster.topology_verified.store(true, Ordering::Relaxed);
                    }
                }
            }
            cluster.redis.note_live(&node.id, &cluster.advertise);
            // Every renewal also refreshes what admin pages show about this node.
            crate::admin::info::publish(node, cluster).await;
            if !existed && cluster.is_joined() {
                tracing::warn!("lease was gone (Redis lost it, or an outage outlived it); registering this node's sessions again");
                cluster.mark_dirty();
            }
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "lease renewal failed");
            false
        }
        Err(_) => {
            tracing::warn!("lease renewal timed out");
            false
        }
    }
}

/// Makes this node known to every live peer, then lets it admit clients. Retries until each
/// peer has answered or lost its own lease; gives up on the stragglers after one lease TTL
/// (a peer that can reach Redis learns this node by its next refresh anyway).
pub(crate) async fn join(node: Arc<Node>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let deadline = Instant::now() + node.config.lease_ttl;
    let mut told: HashSet<String> = HashSet::new();
    loop {
        let waiting = match tell_peers(&node, &cluster, &mut told).await {
            Ok(waiting) if waiting.is_empty() => {
                tracing::info!(peers = told.len(), "joined the cluster");
                break;
            }
            Ok(waiting) => waiting,
            Err(why) => vec![why],
        };
        if Instant::now() >= deadline {
            // Redis away, or peers that cannot be reached: admitting clients locally is what
            // the registry outage policy is for, and reconciliation registers them later.
            tracing::warn!(
                waiting = ?waiting,
                "joining without word from every peer; they learn this node from Redis"
            );
            break;
        }
        tracing::debug!(waiting = ?waiting, "waiting for peers to learn this node");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(super::JOIN_RETRY) => {}
        }
    }
    cluster
        .joined
        .store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Writes the lease, reads the live nodes, and tells those not told yet; returns the peers
/// that did not confirm (or why nothing could be done).
async fn tell_peers(
    node: &Node,
    cluster: &Arc<Cluster>,
    told: &mut HashSet<String>,
) -> Result<Vec<String>, String> {
    if !renew(node, cluster).await {
        return Err("lease not written".into());
    }
    cluster
        .redis
        .refresh_nodes()
        .await
        .map_err(|e| format!("node set not read: {e}"))?;
    let pending: Vec<_> = cluster
        .redis
        .live_nodes()
        .into_iter()
        .filter(|n| *n.id != *node.id && !told.contains(&n.id))
        .collect();
    let answers = futures_util::future::join_all(pending.into_iter().map(|n| {
        let me = node.id.to_string();
        async move {
            let r = match cluster.peer(&n.addr) {
                Ok(mut peer) => tokio::time::timeout(
                    super::CONNECT_TIMEOUT * 2,
                    peer.join(pb::JoinRequest { node: me }),
                )
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.message().to_owned()))
                .map(drop),
                Err(e) => Err(e.message().to_owned()),
            };
            (n.id, r)
        }
    }))
    .await;
    let mut waiting = Vec::new();
    for (peer, r) in answers {
        match r {
            Ok(()) => {
                told.insert(peer);
            }
            Err(why) => waiting.push(format!("{peer} ({why})")),
        }
    }
    Ok(waiting)
}
