//! The gateway nodes a client can call: one lazily connected gRPC channel per node.
//!
//! Two sources: the *seed* addresses given to the builder, and the *live* nodes discovery
//! finds (node ID → URL). Live nodes win when there are any; seeds are the fallback.
//! **Invariant:** the lock is a std `RwLock`, held only to copy a `Node` out (a clone of an
//! `Arc` and a `Channel`), never across an `.await`.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// How often an idle HTTP/2 connection is pinged, so a dead gateway is noticed on a long
/// `Subscribe` or `Attach` stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows. An `Attach` or `Subscribe` stream read slowly leaves small
/// messages buffered, and the HTTP/2 stack closes the whole connection (every call on it)
/// once such frames cost more than half the connection window; a modest stream window under a
/// large connection window keeps that out of reach.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// One gateway node: its backend URL and the channel to it.
#[derive(Clone)]
pub(crate) struct Node {
    pub url: Arc<str>,
    pub channel: Channel,
}

#[derive(Default)]
struct State {
    /// Addresses given to the builder, in order.
    seeds: Vec<Node>,
    /// Nodes found by discovery, by node ID.
    live: BTreeMap<String, Node>,
}

/// The set of nodes, behind a handle with narrow methods.
pub(crate) struct Nodes {
    connect_timeout: Duration,
    state: RwLock<State>,
    /// Round-robin position for calls that may go to any node.
    next: AtomicUsize,
}

/// Adds `http://` to a bare `host:port`.
pub(crate) fn normalize(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

impl Nodes {
    pub(crate) fn new(seeds: &[String], connect_timeout: Duration) -> Result<Nodes> {
        let nodes = Nodes {
            connect_timeout,
            state: RwLock::new(State::default()),
            next: AtomicUsize::new(0),
        };
        let mut list = Vec::with_capacity(seeds.len());
        for url in seeds {
            let url = normalize(url);
            if list.iter().any(|n: &Node| *n.url == *url) {
                continue;
            }
            list.push(nodes.open(&url)?);
        }
        nodes.write().seeds = list;
        Ok(nodes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write is one assignment).
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A channel that connects on first use (and reconnects after failures by itself).
    fn open(&self, url: &str) -> Result<Node> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::Config(format!("gateway address {url:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        Ok(Node {
            url: url.into(),
            channel: endpoint.connect_lazy(),
        })
    }

    /// Any node, round robin, preferring one whose URL is not `avoid` (the one that just failed).
    pub(crate) fn any(&self, avoid: Option<&str>) -> Option<Node> {
        let state = self.read();
        let pool: Vec<&Node> = if state.live.is_empty() {
            state.seeds.iter().collect()
        } else {
            state.live.values().collect()
        };
        if pool.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..pool.len())
            .map(|i| pool[(start + i) % pool.len()])
            .find(|n| Some(&*n.url) != avoid)
            .or(pool.first().copied())
            .cloned()
    }

    /// The live node with this ID, if discovery knows it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn by_id(&self, node_id: &str) -> Option<Node> {
        self.read().live.get(node_id).cloned()
    }

    /// Replaces the live set with what discovery found; channels to unchanged URLs are kept.
    /// Returns the IDs that joined and left, for logging.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_live(&self, found: Vec<(String, String)>) -> (Vec<String>, Vec<String>) {
        // Open new channels outside the lock.
        let (known, seeds): (BTreeMap<String, Node>, Vec<Node>) = {
            let s = self.read();
            (s.live.clone(), s.seeds.clone())
        };
        let mut live = BTreeMap::new();
        for (id, url) in found {
            let url = normalize(&url);
            let reuse = known
                .values()
                .chain(seeds.iter())
                .find(|n| *n.url == *url)
                .cloned();
            let node = match reuse {
                Some(n) => n,
                None => match self.open(&url) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(node = %id, error = %e, "ignoring a gateway node with a bad address");
                        continue;
                    }
                },
            };
            live.insert(id, node);
        }
        let joined = live
            .keys()
            .filter(|id| !known.contains_key(*id))
            .cloned()
            .collect();
        let left = known
            .keys()
            .filter(|id| !live.contains_key(*id))
            .cloned()
            .collect();
        self.write().live = live;
        (joined, left)
    }

    /// Whether any node at all is known.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        let s = self.read();
        s.seeds.is_empty() && s.live.is_empty()
    }
}
