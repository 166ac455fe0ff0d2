//! Discovery of gateway nodes and session owners in Redis (feature `redis`).
//!
//! The gateway's layout, read-only here:
//! - `{prefix}:nodes`: a SET of node IDs;
//! - `{prefix}:node:{id}`: a STRING lease holding the node's backend URL, with a short TTL
//!   (an ID in the set whose lease has expired is a dead node and is skipped);
//! - `{prefix}:session:{id}`: a HASH whose field `node` is the owning node's ID.
//!
//! One tracked task re-reads the node list every few seconds; session owners are looked up on
//! demand and cached. **Invariant:** Redis trouble never fails a call: the call goes to any
//! node instead, and every gateway node forwards to the owner itself.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster_async::ClusterConnection,
};
use tokio::{sync::OnceCell, task::JoinHandle};

use super::nodes::Nodes;
use crate::{
    error::{Error, Result},
    types::SessionId,
};

/// Default key prefix, the gateway's default.
pub(crate) const DEFAULT_PREFIX: &str = "switchboard";
/// Sessions whose owner is remembered; the oldest entry goes first when full.
const ROUTE_CACHE_CAPACITY: usize = 65_536;
/// Bound on one Redis round trip; a slower Redis is treated as absent for that call.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Builder settings for discovery.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub url: Option<String>,
    pub prefix: String,
    pub interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: None,
            prefix: DEFAULT_PREFIX.into(),
            interval: Duration::from_secs(3),
        }
    }
}

/// A connection to a single Redis or to a Redis Cluster; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis side of a client: node list refreshes and session-owner lookups.
pub(crate) struct Discovery {
    url: String,
    /// Made on first success (a Redis Cluster must be reachable to connect).
    conn: OnceCell<Conn>,
    prefix: String,
    routes: RouteCache,
}

/// Connects discovery (when configured), reads the node list once, and starts the refresher.
/// `redis+cluster://h1:p1,h2:p2` selects Redis Cluster, as for the gateway.
pub(crate) async fn start(
    settings: Settings,
    nodes: &Arc<Nodes>,
) -> Result<Option<(Arc<Discovery>, JoinHandle<()>)>> {
    let Some(url) = settings.url else {
        return Ok(None);
    };
    let ok = [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "unix://",
        "redis+unix://",
    ]
    .iter()
    .any(|p| url.starts_with(p));
    if !ok {
        return Err(Error::Config(
            "the Redis URL must start with redis://, rediss://, redis+cluster:// or unix://".into(),
        ));
    }
    if !url.starts_with("redis+cluster://") {
        redis::Client::open(url.as_str()).map_err(|e| Error::Config(format!("Redis URL: {e}")))?;
    }
    let d = Arc::new(Discovery {
        url,
        conn: OnceCell::new(),
        prefix: settings.prefix,
        routes: RouteCache::new(ROUTE_CACHE_CAPACITY),
    });
    d.refresh(nodes).await;
    if nodes.is_empty() {
        tracing::warn!("no gateway node found in Redis yet; calls fail until one appears");
    }
    let task = {
        let d = Arc::clone(&d);
        let nodes = Arc::clone(nodes);
        let every = settings.interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                d.refresh(&nodes).await;
            }
        })
    };
    Ok(Some((d, task)))
}

impl Discovery {
    async fn conn(&self) -> redis::RedisResult<Conn> {
        self.conn
            .get_or_try_init(|| async {
                if let Some(hosts) = self.url.strip_prefix("redis+cluster://") {
                    let seeds: Vec<String> = hosts
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| format!("redis://{s}"))
                        .collect();
                    let client = redis::cluster::ClusterClient::builder(seeds)
                        .connection_timeout(REDIS_TIMEOUT)
                        .response_timeout(REDIS_TIMEOUT)
                        .retries(1)
                        .build()?;
                    Ok(Conn::Cluster(client.get_async_connection().await?))
                } else {
                    let client = redis::Client::open(self.url.as_str())?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(REDIS_TIMEOUT))
                        .set_response_timeout(Some(REDIS_TIMEOUT))
                        .set_number_of_retries(1);
                    Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                        client, config,
                    )?))
                }
            })
            .await
            .cloned()
    }

    /// Runs one Redis command within [`REDIS_TIMEOUT`]; `None` (logged) on any failure.
    async fn query<T: redis::FromRedisValue>(&self, what: &str, cmd: &redis::Cmd) -> Option<T> {
        let run = async {
            match self.conn().await? {
                Conn::Single(mut c) => cmd.query_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(REDIS_TIMEOUT, run).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis {what} failed");
                None
            }
            Err(_) => {
                tracing::warn!("redis {what} timed out");
                None
            }
        }
    }

    /// Reads the live nodes and hands them to `nodes`. On a Redis failure the previous set
    /// stays: stale addresses are better than none, and failing calls move on by themselves.
    async fn refresh(&self, nodes: &Nodes) {
        let ids: Vec<String> = match self
            .query("node list", redis::cmd("SMEMBERS").arg(self.nodes_key()))
            .await
        {
            Some(ids) => ids,
            None => return,
        };
        // One GET per lease, concurrently: on Redis Cluster the leases live in different
        // slots, where an MGET would be refused.
        let leases = futures_util::future::join_all(ids.iter().map(|id| async move {
            let url: Option<Option<String>> = self
                .query("node lease", redis::cmd("GET").arg(self.node_key(id)))
                .await;
            url
        }))
        .await;
        if leases.iter().any(Option::is_none) {
            // Part of the list is unknown; keep the previous set rather than drop live nodes.
            return;
        }
        let found: Vec<(String, String)> = ids
            .into_iter()
            .zip(leases.into_iter().flatten())
            // No lease: the node is gone (or about to be removed from the set).
            .filter_map(|(id, url)| url.filter(|u| !u.is_empty()).map(|u| (id, u)))
            .collect();
        let (joined, left) = nodes.set_live(found);
        for id in &joined {
            tracing::info!(node = %id, "gateway node joined");
        }
        for id in &left {
            tracing::info!(node = %id, "gateway node left");
            self.routes.forget_node(id);
        }
    }

    /// The ID of the node holding `session`, from the cache or Redis.
    pub(crate) async fn owner(&self, session: &SessionId) -> Option<String> {
        if let Some(node) = self.routes.get(session) {
            return Some(node);
        }
        let key = format!("{}:session:{}", self.prefix, session);
        let node: Option<String> = self
            .query("session lookup", redis::cmd("HGET").arg(key).arg("node"))
            .await
            .flatten();
        let node = node.filter(|n| !n.is_empty())?;
        self.routes.insert(session.clone(), node.clone());
        Some(node)
    }

    /// Remembers where a session lives (seen in a listing or an event).
    pub(crate) fn learn(&self, session: &SessionId, node: &str) {
        if !node.is_empty() {
            self.routes.insert(session.clone(), node.to_owned());
        }
    }

    /// Forgets a session's owner (it is closed or unknown now).
    pub(crate) fn forget(&self, session: &SessionId) {
        self.routes.remove(session);
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{}", self.prefix, id)
    }
}

/// A bounded map of session → owning node ID. **Invariant:** the std mutex is held only for
/// map operations, never across an `.await`.
struct RouteCache {
    capacity: usize,
    inner: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    by_session: HashMap<SessionId, String>,
    /// Insertion order, for eviction; may hold IDs already removed (skipped on eviction).
    order: VecDeque<SessionId>,
}

impl RouteCache {
    fn new(capacity: usize) -> Self {
        RouteCache {
            capacity,
            inner: Mutex::new(Routes::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, session: &SessionId) -> Option<String> {
        self.lock().by_session.get(session).cloned()
    }

    fn insert(&self, session: SessionId, node: String) {
        let mut r = self.lock();
        if r.by_session.insert(session.clone(), node).is_none() {
            r.order.push_back(session);
        }
        while r.by_session.len() > self.capacity || r.order.len() > 2 * self.capacity {
            match r.order.pop_front() {
                Some(old) => {
                    r.by_session.remove(&old);
                }
                None => break,
            }
        }
    }

    fn remove(&self, session: &SessionId) {
        self.lock().by_session.remove(session);
    }

    fn forget_node(&self, node: &str) {
        self.lock().by_session.retain(|_, n| n != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_cache_is_bounded_and_forgets_by_session_and_node() {
        let cache = RouteCache::new(3);
        for i in 0..10 {
            cache.insert(SessionId::from(format!("s{i}")), "n1".into());
        }
        assert!(cache.lock().by_session.len() <= 3);
        assert_eq!(cache.get(&"s9".into()).as_deref(), Some("n1"));
        assert_eq!(cache.get(&"s0".into()), None);
        cache.remove(&"s9".into());
        assert_eq!(cache.get(&"s9".into()), None);
        cache.insert("x".into(), "n2".into());
        cache.forget_node("n2");
        assert_eq!(cache.get(&"x".into()), None);
    }
}
