//! The registry in Redis, shared by every node of a cluster.
//!
//! Key layout (`P` is `--redis-prefix`, default `switchboard`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:node:{node}` | string, TTL = lease | the node's backend gRPC URL; the node is live while it exists |
//! | `P:nodes` | set | IDs of nodes that registered (a dead one is removed by the reaper) |
//! | `P:session:{id}` | hash | the session record (hub, user, groups, metadata, node, times, ...) |
//! | `P:closed:{id}` | string, TTL 10 min | `code \t closer \t reason` of a recently closed session |
//! | `P:idx:node:{node}` | zset | sessions held by a node |
//! | `P:idx:hub:{hub}` | zset | sessions of a hub |
//! | `P:idx:group:{hub}:{group}` | zset | members of a group |
//! | `P:idx:user:{user}` | zset | sessions of a user |
//! | `P:subs:{hub}` | hash | `Subscribe` members of a hub: `{node}/{n}` → `node \t group \t kinds` |
//! | `P:node-subs:{node}` | set | hubs where a node has subscribers |
//! | `P:reap:{node}` | string, short TTL | lock: one survivor cleans up a dead node (extended while it works) |
//! | `P:nodeinfo:{node}` | string (JSON), TTL = lease | what the node says about itself for admin pages: state, sessions, started_at, version, addresses, counters, busiest hubs; written after every lease renewal, one `SET … PX` so value and TTL land together on Redis Cluster too |
//!
//! Indexes are sorted sets with score 0, so `ZRANGEBYLEX` pages through them by session ID:
//! a page token is the last ID returned, stable while sessions come and go.
//!
//! Every multi-key write is a batch of single-key commands: one pipeline (one round trip) on a
//! single Redis, concurrent single commands on Redis Cluster (whose pipelines must stay within
//! one slot); a batch longer than [`MAX_PIPELINE`] goes out in several, so no request of any
//! size holds Redis (or one connection) for long. No command scans the keyspace.
//!
//! A session record leaves Redis through [`TAKE_SCRIPT`] only when it names the node being
//! cleaned up: the script answers the record to exactly one caller, so two cleaners (a reaper
//! and the node itself after a restart, or two reapers after a lock expired) never announce one
//! session twice, and a record that moved on is never taken.
//!
//! The lease is renewed on a connection of its own, so a long reap or a large reconciliation
//! queued on the shared connection never delays it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::future::join_all;
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster_async::ClusterConnection,
    Cmd, FromRedisValue, Value,
};

mod journal;

pub(crate) use journal::{Appended, NewState};

use super::{ListFilter, Liveness, Page, RegistryError, SessionRecord, TOMBSTONE_TTL};
use crate::metrics::Metrics;
use crate::model::{Closer, SessionEnd, SessionId};

/// How long one Redis operation may take before the registry counts as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Most commands sent as one pipeline.
pub(crate) const MAX_PIPELINE: usize = 1_000;

/// Sessions of a node handled per step of reaping or reconciliation.
pub(crate) const PAGE: usize = 1_000;

/// How long a reaper's lock lasts unless the reaper extends it (it does after every page).
const REAP_LOCK: Duration = Duration::from_secs(30);

/// Most index reads one `ListSessions` page may take before it answers with what it has and a
/// token to go on from (so a page of filtered-out or dead entries cannot hold a call for long).
const LIST_READS: usize = 64;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// What one step of reaping a dead node did.
#[derive(Debug, Default)]
pub(crate) struct Reaped {
    /// Sessions gone with the node.
    pub lost: Vec<SessionRecord>,
    /// Reliable sessions suspended just now: they wait for their clients to resume elsewhere.
    pub suspended: Vec<SessionRecord>,
}

/// A node's lease as read back from Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeLease {
    pub id: String,
    pub addr: String,
}

/// A `Subscribe` member as recorded in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    pub uid: String,
    pub node: String,
    pub group: String,
    pub kinds: u8,
}

pub(crate) struct RedisRegistry {
    conn: Conn,
    /// The lease's own connection: nothing queued on `conn` can delay a renewal.
    lease_conn: Conn,
    prefix: String,
    healthy: AtomicBool,
    /// Live nodes (address, when learnt) as of the last refresh, so reads can skip records of
    /// dead nodes and fan-out reaches every live one.
    live: Mutex<HashMap<String, (String, Instant)>>,
    /// `host:port` of a single Redis (`redis://`); `None` for Redis Cluster.
    single: Option<String>,
    /// The URL names the wrong kind of Redis: never healthy.
    misconfigured: AtomicBool,
    metrics: Arc<Metrics>,
}

impl RedisRegistry {
    /// Connects (lazily for a single Redis, so a node can start while Redis is down).
    /// `redis+cluster://h1:p1,h2:p2` selects Redis Cluster.
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RegistryError> {
        let mut single = None;
        let (conn, lease_conn) = if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            let seeds: Vec<String> = nodes
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| format!("redis://{s}"))
                .collect();
            let client = redis::cluster::ClusterClient::builder(seeds)
                .connection_timeout(OP_TIMEOUT)
                .response_timeout(OP_TIMEOUT)
                .retries(2)
                .build()
                .map_err(unavailable)?;
            let connect = || async {
                client.get_async_connection().await.map_err(|e| {
                    if e.to_string().contains("cluster support disabled") {
                        RegistryError::Misconfigured(format!(
                            "the Redis at {nodes} is a single server, not a Redis Cluster; \
                             use redis://{}",
                            nodes.split(',').next().unwrap_or_default()
                        ))
                    } else {
                        unavailable(e)
                    }
                })
            };
            (
                Conn::Cluster(connect().await?),
                Conn::Cluster(connect().await?),
            )
        } else {
            let client = redis::Client::open(url).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(OP_TIMEOUT))
                .set_response_timeout(Some(OP_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let manager = |c: redis::Client| {
                ConnectionManager::new_lazy_with_config(c, config.clone()).map_err(unavailable)
            };
            single = Some(client.get_connection_info().addr().to_string());
            (
                Conn::Single(manager(client.clone())?),
                Conn::Single(manager(client)?),
            )
        };
        let registry = Self {
            conn,
            lease_conn,
            prefix: prefix.to_owned(),
            healthy: AtomicBool::new(true),
            live: Mutex::new(HashMap::new()),
            single,
            misconfigured: AtomicBool::new(false),
            metrics,
        };
        // A Redis that is down at start is checked again once it answers (`verify_topology`).
        match registry.verify_topology().await {
            Err(e @ RegistryError::Misconfigured(_)) => Err(e),
            _ => Ok(registry),
        }
    }

    /// Refuses a Redis Cluster node behind a `redis://` URL: it would answer MOVED to every
    /// command for a key on another shard, so the node would serve while most registry writes
    /// fail. Ok(false) when Redis could not be asked (yet).
    pub(crate) async fn verify_topology(&self) -> Result<bool, RegistryError> {
        let Some(addr) = &self.single else {
            return Ok(true);
        };
        let info: String = match self.query(redis::cmd("INFO").arg("cluster").clone()).await {
            Ok(info) => info,
            Err(_) => return Ok(false),
        };
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            self.misconfigured.store(true, Ordering::Relaxed);
            return Err(RegistryError::Misconfigured(format!(
                "the Redis at {addr} is a node of a Redis Cluster; use \
                 redis+cluster://{addr} (more nodes may follow, comma-separated)"
            )));
        }
        Ok(true)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.misconfigured.load(Ordering::Relaxed)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Records the outcome of an operation for readiness, and logs the change of state.
    fn observe<T>(&self, r: Result<T, RegistryError>) -> Result<T, RegistryError> {
        let ok = r.is_ok();
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was && !ok {
            if let Err(e) = &r {
                tracing::error!(error = %e, "redis unreachable: registry degraded");
            }
        } else if !was && ok {
            tracing::info!("redis reachable again");
        }
        r
    }

    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, RegistryError> {
        self.query_on(&self.conn, cmd).await
    }

    async fn query_on<T: FromRedisValue>(&self, conn: &Conn, cmd: Cmd) -> Result<T, RegistryError> {
        let command = command_name(&cmd);
        let started = Instant::now();
        let fut = async {
            match conn {
                Conn::Single(c) => cmd.query_async::<T>(&mut c.clone()).await,
                Conn::Cluster(c) => cmd.query_async::<T>(&mut c.clone()).await,
            }
        };
        let r = match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(RegistryError::Unavailable(
                "redis did not answer in time".into(),
            )),
        };
        self.metrics.redis(command, started, r.is_ok());
        self.observe(r)
    }

    /// Runs commands in order, in round trips of at most [`MAX_PIPELINE`] commands.
    async fn batch(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, RegistryError> {
        self.batch_on(&self.conn, cmds).await
    }

    async fn batch_on(&self, conn: &Conn, cmds: Vec<Cmd>) -> Result<Vec<Value>, RegistryError> {
        let mut out = Vec::with_capacity(cmds.len());
        let mut cmds = cmds.into_iter().peekable();
        while cmds.peek().is_some() {
            let chunk: Vec<Cmd> = cmds.by_ref().take(MAX_PIPELINE).collect();
            out.extend(self.round_trip(conn, chunk).await?);
        }
        Ok(out)
    }

    /// One pipeline (or concurrent commands on Cluster).
    async fn round_trip(&self, conn: &Conn, cmds: Vec<Cmd>) -> Result<Vec<Value>, RegistryError> {
        let command = match cmds.as_slice() {
            [one] => command_name(one),
            _ => "PIPELINE",
        };
        let started = Instant::now();
        let fut = async {
            match conn {
                Conn::Single(c) => {
                    let mut p = redis::pipe();
                    for cmd in cmds {
                        p.add_command(cmd);
                    }
                    p.query_async::<Vec<Value>>(&mut c.clone()).await
                }
                Conn::Cluster(c) => {
                    let replies = join_all(cmds.into_iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<Value>(&mut c).await }
                    }))
                    .await;
                    replies.into_iter().collect()
                }
            }
        };
        let r = match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(RegistryError::Unavailable(
                "redis did not answer in time".into(),
            )),
        };
        self.metrics.redis(command, started, r.is_ok());
        self.observe(r)
    }

    fn index_cmds(&self, r: &SessionRecord, add: bool) -> Vec<Cmd> {
        let id = r.id.as_str();
        let mut keys = vec![
            self.key(&["idx", "node", &r.node]),
            self.key(&["idx", "hub", &r.hub]),
        ];
        if !r.user.is_empty() {
            keys.push(self.key(&["idx", "user", &r.user]));
        }
        for g in &r.groups {
            keys.push(self.key(&["idx", "group", &r.hub, g]));
        }
        keys.into_iter()
            .map(|k| {
                if add {
                    redis::cmd("ZADD").arg(k).arg(0).arg(id).clone()
                } else {
                    redis::cmd("ZREM").arg(k).arg(id).clone()
                }
            })
            .collect()
    }

    /// `COMMAND P:session:{id} fields…` for each ID, in order.
    fn per_session(&self, command: &str, ids: &[SessionId], fields: &[&str]) -> Vec<Cmd> {
        ids.iter()
            .map(|id| {
                let mut c = redis::cmd(command);
                c.arg(self.key(&["session", id.as_str()]));
                for f in fields {
                    c.arg(*f);
                }
                c
            })
            .collect()
    }

    fn record_cmd(&self, r: &SessionRecord) -> Cmd {
        let mut c = redis::cmd("HSET");
        c.arg(self.key(&["session", r.id.as_str()]))
            .arg("hub")
            .arg(&r.hub)
            .arg("user")
            .arg(&r.user)
            .arg("groups")
            .arg(serde_json::to_string(&r.groups).unwrap_or_else(|_| "[]".into()))
            .arg("metadata")
            .arg(serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".into()))
            .arg("node")
            .arg(&r.node)
            .arg("connected_at")
            .arg(millis(r.connected_at))
            .arg("last_active_at")
            .arg(millis(r.last_active_at))
            .arg("remote_addr")
            .arg(&r.remote_addr)
            .arg("subprotocol")
            .arg(&r.subprotocol)
            .arg("reliable")
            .arg(if r.reliable { "1" } else { "0" })
            .arg("suspended")
            .arg(if r.suspended { "1" } else { "0" });
        c
    }

    /// Writes the index entries, then the record: one round trip. In this order a pipeline
    /// cut short leaves an index entry without a record, which reconciliation finds by walking
    /// the node index, rather than a record without an index entry, which it would not find.
    pub(crate) async fn register(&self, r: &SessionRecord) -> Result<(), RegistryError> {
        let mut cmds = self.index_cmds(r, true);
        cmds.push(self.record_cmd(r));
        self.batch(cmds).await.map(drop)
    }

    /// Registers many sessions (after Redis came back, or what reconciliation found missing).
    pub(crate) async fn register_all(
        &self,
        records: &[SessionRecord],
    ) -> Result<(), RegistryError> {
        let mut cmds = Vec::new();
        for r in records {
            cmds.extend(self.index_cmds(r, true));
            cmds.push(self.record_cmd(r));
        }
        self.batch(cmds).await.map(drop)
    }

    /// Removes the record and its index entries and leaves a tombstone: one round trip.
    pub(crate) async fn unregister(
        &self,
        r: &SessionRecord,
        end: &SessionEnd,
    ) -> Result<(), RegistryError> {
        let id = r.id.as_str();
        let mut cmds = vec![
            redis::cmd("DEL").arg(self.key(&["session", id])).clone(),
            redis::cmd("SET")
                .arg(self.key(&["closed", id]))
                .arg(encode_end(end))
                .arg("EX")
                .arg(TOMBSTONE_TTL.as_secs())
                .clone(),
        ];
        cmds.extend(self.index_cmds(r, false));
        self.batch(cmds).await.map(drop)
    }

    pub(crate) async fn set_group(
        &self,
        r: &SessionRecord,
        group: &str,
        member: bool,
    ) -> Result<(), RegistryError> {
        let key = self.key(&["idx", "group", &r.hub, group]);
        let index = if member {
            redis::cmd("ZADD")
                .arg(key)
                .arg(0)
                .arg(r.id.as_str())
                .clone()
        } else {
            redis::cmd("ZREM").arg(key).arg(r.id.as_str()).clone()
        };
        let groups = redis::cmd("HSET")
            .arg(self.key(&["session", r.id.as_str()]))
            .arg("groups")
            .arg(serde_json::to_string(&r.groups).unwrap_or_else(|_| "[]".into()))
            .clone();
        self.batch(vec![groups, index]).await.map(drop)
    }

    /// Writes `last_active_at` of many sessions at once.
    pub(crate) async fn touch_all(
        &self,
        seen: &[(SessionId, SystemTime)],
    ) -> Result<(), RegistryError> {
        // HSET only where the record still exists: a closed session must not reappear.
        let cmds = seen
            .iter()
            .map(|(id, at)| {
                redis::cmd("EVAL")
                    .arg(TOUCH_SCRIPT)
                    .arg(1)
                    .arg(self.key(&["session", id.as_str()]))
                    .arg(millis(*at))
                    .clone()
            })
            .collect();
        self.batch(cmds).await.map(drop)
    }

    pub(crate) async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
        let map: HashMap<String, String> = self
            .query(
                redis::cmd("HGETALL")
                    .arg(self.key(&["session", id.as_str()]))
                    .clone(),
            )
            .await?;
        let Some(r) = parse_record(id, map) else {
            return Ok(None);
        };
        self.learn([r.node.as_str()]).await?;
        Ok(self.is_live(&r.node).then_some(r))
    }

    /// The node holding a live session.
    pub(crate) async fn owner(&self, id: &SessionId) -> Result<Option<String>, RegistryError> {
        let node: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.key(&["session", id.as_str()]))
                    .arg("node")
                    .clone(),
            )
            .await?;
        if let Some(n) = &node {
            self.learn([n.as_str()]).await?;
        }
        Ok(node.filter(|n| self.is_live(n)))
    }

    /// The live node holding each session, in order (one round trip).
    pub(crate) async fn owners(
        &self,
        ids: &[SessionId],
    ) -> Result<Vec<Option<String>>, RegistryError> {
        let replies = self.batch(self.per_session("HGET", ids, &["node"])).await?;
        let nodes: Vec<Option<String>> = replies
            .into_iter()
            .map(|v| redis::from_redis_value::<Option<String>>(v).ok().flatten())
            .collect();
        self.learn(nodes.iter().flatten().map(String::as_str))
            .await?;
        Ok(nodes
            .into_iter()
            .map(|n| n.filter(|n| self.is_live(n)))
            .collect())
    }

    pub(crate) async fn check(&self, ids: &[SessionId]) -> Result<Vec<Liveness>, RegistryError> {
        let mut cmds = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            cmds.push(
                redis::cmd("HMGET")
                    .arg(self.key(&["session", id.as_str()]))
                    .arg("node")
                    .arg("suspended")
                    .clone(),
            );
            cmds.push(
                redis::cmd("GET")
                    .arg(self.key(&["closed", id.as_str()]))
                    .clone(),
            );
        }
        let replies = self.batch(cmds).await?;
        let nodes: Vec<String> = replies
            .iter()
            .step_by(2)
            .filter_map(|v| {
                redis::from_redis_value_ref::<(Option<String>, Option<String>)>(v)
                    .ok()
                    .and_then(|(node, _)| node)
            })
            .collect();
        self.learn(nodes.iter().map(String::as_str)).await?;
        let mut out = Vec::with_capacity(ids.len());
        for pair in replies.chunks(2) {
            let (node, suspended): (Option<String>, Option<String>) = pair
                .first()
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or((None, None));
            if node.is_some() && suspended.as_deref() == Some("1") {
                // Its holder may be gone: the session's state waits in Redis for a resume.
                out.push(Liveness::Suspended);
                continue;
            }
            let closed: Option<String> = pair
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .flatten();
            out.push(match (node, closed) {
                (Some(n), _) if self.is_live(&n) => Liveness::Open,
                (_, Some(c)) => Liveness::Closed(decode_end(&c)),
                // A record whose node's lease is gone: the node died and is being reaped.
                (Some(_), None) => Liveness::Closed(node_lost()),
                (None, None) => Liveness::Unknown,
            });
        }
        Ok(out)
    }

    pub(crate) async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        cursor: Option<&str>,
    ) -> Result<Page, RegistryError> {
        // Which index to walk. Without a filter, walk each live node's index in turn; the
        // token then says which node and where in it.
        let mut nodes_walked: Vec<String> = Vec::new();
        let (keys, mut key_at, mut after) =
            match (&filter.hub, &filter.group, &filter.user, &filter.node) {
                (Some(hub), Some(group), _, _) => (
                    vec![self.key(&["idx", "group", hub, group])],
                    0,
                    cursor.map(str::to_owned),
                ),
                (_, _, Some(user), _) => (
                    vec![self.key(&["idx", "user", user])],
                    0,
                    cursor.map(str::to_owned),
                ),
                (Some(hub), None, None, _) => (
                    vec![self.key(&["idx", "hub", hub])],
                    0,
                    cursor.map(str::to_owned),
                ),
                (None, _, None, Some(node)) => (
                    vec![self.key(&["idx", "node", node])],
                    0,
                    cursor.map(str::to_owned),
                ),
                (None, _, None, None) => {
                    let mut nodes: Vec<String> =
                        self.live_nodes().into_iter().map(|n| n.id).collect();
                    nodes.sort();
                    let (start, after) = match cursor.map(|c| c.split_once('/')) {
                        Some(Some((node, id))) => {
                            let start = nodes
                                .iter()
                                .position(|n| n.as_str() >= node)
                                .unwrap_or(nodes.len());
                            // The position within a node's index means nothing in another
                            // node's (the token's node may have died since).
                            let same = nodes.get(start).is_some_and(|n| n == node);
                            (start, (same && !id.is_empty()).then(|| id.to_owned()))
                        }
                        Some(None) => return Err(RegistryError::BadPageToken),
                        None => (0, None),
                    };
                    nodes_walked = nodes.clone();
                    let keys = nodes
                        .iter()
                        .map(|n| self.key(&["idx", "node", n]))
                        .collect();
                    (keys, start, after)
                }
            };
        if let Some(a) = &after {
            if SessionId::parse(a).is_none() {
                return Err(RegistryError::BadPageToken);
            }
        }
        // Where a next page starts: the last ID looked at, and for a walk over every node's
        // index, which node (an empty ID there means "from its start").
        let token = |key_at: usize, after: Option<&str>| -> String {
            match nodes_walked.get(key_at) {
                Some(node) => format!("{node}/{}", after.unwrap_or_default()),
                None => after.unwrap_or_default().to_owned(),
            }
        };
        let mut records: Vec<SessionRecord> = Vec::new();
        for _ in 0..LIST_READS {
            let Some(key) = keys.get(key_at) else {
                return Ok(Page {
                    records,
                    next: None,
                });
            };
            let want = page_size + 1 - records.len().min(page_size);
            let min = match &after {
                Some(a) => format!("({a}"),
                None => "-".to_owned(),
            };
            let ids: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(key)
                        .arg(min)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want)
                        .clone(),
                )
                .await?;
            let exhausted = ids.len() < want;
            let fetched = self.fetch(&ids).await?;
            for (id, record) in ids.iter().zip(fetched) {
                if let Some(r) = record.filter(|r| super::memory::matches(filter, r)) {
                    if records.len() == page_size {
                        // One more exists: the page ends at the previous record.
                        return Ok(Page {
                            records,
                            next: Some(token(key_at, after.as_deref())),
                        });
                    }
                    records.push(r);
                }
                after = Some(id.clone());
            }
            if exhausted {
                key_at += 1;
                after = None;
            }
        }
        // Out of reads for this call: a short (even empty) page, and where to go on from.
        let next = keys
            .get(key_at)
            .is_some()
            .then(|| token(key_at, after.as_deref()));
        Ok(Page { records, next })
    }

    /// Records of live nodes for these IDs, in order (`None` for missing or dead).
    async fn fetch(&self, ids: &[String]) -> Result<Vec<Option<SessionRecord>>, RegistryError> {
        let cmds = ids
            .iter()
            .map(|id| {
                redis::cmd("HGETALL")
                    .arg(self.key(&["session", id]))
                    .clone()
            })
            .collect();
        let replies = self.batch(cmds).await?;
        let records: Vec<Option<SessionRecord>> = ids
            .iter()
            .zip(replies)
            .map(|(id, v)| {
                let map: HashMap<String, String> = redis::from_redis_value(v).ok()?;
                parse_record(&SessionId::parse(id)?, map)
            })
            .collect();
        self.learn(records.iter().flatten().map(|r| r.node.as_str()))
            .await?;
        Ok(records
            .into_iter()
            .map(|r| r.filter(|r| self.is_live(&r.node)))
            .collect())
    }

    // ---- node leases ----------------------------------------------------------------------

    /// Writes this node's lease (on the lease's own connection); returns whether it already
    /// existed (false after a restart of Redis, a long outage, or at first start: the caller
    /// then registers its sessions).
    pub(crate) async fn renew_lease(
        &self,
        node: &str,
        addr: &str,
        ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let replies = self
            .batch_on(
                &self.lease_conn,
                vec![
                    redis::cmd("SET")
                        .arg(self.key(&["node", node]))
                        .arg(addr)
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .arg("GET")
                        .clone(),
                    redis::cmd("SADD")
                        .arg(self.key(&["nodes"]))
                        .arg(node)
                        .clone(),
                ],
            )
            .await?;
        Ok(!matches!(replies.first(), Some(Value::Nil) | None))
    }

    /// Drops this node's lease and its `Subscribe` members (clean shutdown). The node leaves
    /// the node set only when it holds no session any more: records left behind (an
    /// unregister that failed, a grace that ran out) stay findable, so a survivor reaps them.
    pub(crate) async fn release_lease(&self, node: &str) -> Result<(), RegistryError> {
        self.drop_members_of(node).await?;
        let replies = self
            .batch(vec![
                redis::cmd("DEL").arg(self.key(&["node", node])).clone(),
                redis::cmd("DEL")
                    .arg(self.key(&["node-subs", node]))
                    .clone(),
                redis::cmd("DEL").arg(self.key(&["nodeinfo", node])).clone(),
                redis::cmd("ZCARD")
                    .arg(self.key(&["idx", "node", node]))
                    .clone(),
            ])
            .await?;
        let left = replies
            .get(3)
            .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
            .unwrap_or(1);
        if left == 0 {
            self.query::<Value>(
                redis::cmd("SREM")
                    .arg(self.key(&["nodes"]))
                    .arg(node)
                    .clone(),
            )
            .await?;
        } else {
            tracing::warn!(
                sessions = left,
                "sessions still registered at shutdown; a surviving node will reap them"
            );
        }
        Ok(())
    }

    /// Reads every registered node's lease; refreshes the live-node cache. Returns the live
    /// nodes and the registered nodes whose lease is gone (dead).
    pub(crate) async fn refresh_nodes(
        &self,
    ) -> Result<(Vec<NodeLease>, Vec<String>), RegistryError> {
        let started = Instant::now();
        let ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.key(&["nodes"])).clone())
            .await?;
        let cmds = ids
            .iter()
            .map(|n| redis::cmd("GET").arg(self.key(&["node", n])).clone())
            .collect();
        let replies = self.batch(cmds).await?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (id, v) in ids.into_iter().zip(replies) {
            match redis::from_redis_value::<Option<String>>(v).ok().flatten() {
                Some(addr) => live.push(NodeLease { id, addr }),
                None => dead.push(id),
            }
        }
        let mut cache = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // A node learnt while this read was on its way (a joining node announcing itself)
        // may be missing from it: keep it until the next refresh.
        cache.retain(|_, (_, learnt)| *learnt >= started);
        let now = Instant::now();
        for n in &live {
            cache.insert(n.id.clone(), (n.addr.clone(), now));
        }
        Ok((live, dead))
    }

    /// Marks a node live in the cache at once (this node, right after its lease is written).
    pub(crate) fn note_live(&self, node: &str, addr: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_owned(), (addr.to_owned(), Instant::now()));
    }

    /// Reads one node's lease and, if it exists, counts the node live from now on (a node
    /// that announced itself: its word is checked against Redis, not taken).
    pub(crate) async fn learn_node(&self, node: &str) -> Result<bool, RegistryError> {
        let addr: Option<String> = self
            .query(redis::cmd("GET").arg(self.key(&["node", node])).clone())
            .await?;
        if let Some(addr) = &addr {
            self.note_live(node, addr);
        }
        Ok(addr.is_some())
    }

    /// Looks up the leases of nodes this node has not seen yet (one that started after the last
    /// refresh), so their sessions are not mistaken for a dead node's.
    async fn learn<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), RegistryError> {
        let mut unknown: Vec<&str> = nodes.into_iter().filter(|n| !self.is_live(n)).collect();
        unknown.sort_unstable();
        unknown.dedup();
        if unknown.is_empty() {
            return Ok(());
        }
        let cmds = unknown
            .iter()
            .map(|n| redis::cmd("GET").arg(self.key(&["node", n])).clone())
            .collect();
        let replies = self.batch(cmds).await?;
        for (n, v) in unknown.into_iter().zip(replies) {
            if let Some(addr) = redis::from_redis_value::<Option<String>>(v).ok().flatten() {
                self.note_live(n, &addr);
            }
        }
        Ok(())
    }

    pub(crate) fn is_live(&self, node: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node)
    }

    pub(crate) fn live_nodes(&self) -> Vec<NodeLease> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, (addr, _))| NodeLease {
                id: id.clone(),
                addr: addr.clone(),
            })
            .collect()
    }

    pub(crate) fn node_addr(&self, node: &str) -> Option<String> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(|(addr, _)| addr.clone())
    }

    /// Sessions indexed under these nodes (one round trip), for the registry-size gauge.
    pub(crate) async fn indexed_sessions(&self, nodes: &[NodeLease]) -> Result<u64, RegistryError> {
        let cmds = nodes
            .iter()
            .map(|n| {
                redis::cmd("ZCARD")
                    .arg(self.key(&["idx", "node", &n.id]))
                    .clone()
            })
            .collect();
        Ok(self
            .batch(cmds)
            .await?
            .iter()
            .filter_map(|v| redis::from_redis_value_ref::<u64>(v).ok())
            .sum())
    }

    // ---- reaping and reconciliation -------------------------------------------------------

    /// Takes the right to clean up a dead node; false when another survivor has it.
    pub(crate) async fn lock_reap(&self, dead: &str, me: &str) -> Result<bool, RegistryError> {
        let r: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.key(&["reap", dead]))
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(REAP_LOCK.as_millis() as u64)
                    .clone(),
            )
            .await?;
        Ok(r.is_some())
    }

    /// Extends the reap lock while this node still holds it; false if it was lost.
    pub(crate) async fn extend_reap(&self, dead: &str, me: &str) -> Result<bool, RegistryError> {
        let r: i64 = self
            .query(
                redis::cmd("EVAL")
                    .arg(EXTEND_SCRIPT)
                    .arg(1)
                    .arg(self.key(&["reap", dead]))
                    .arg(me)
                    .arg(REAP_LOCK.as_millis() as u64)
                    .clone(),
            )
            .await?;
        Ok(r == 1)
    }

    /// Whether a node's lease exists (a node reaped as dead may have come back).
    pub(crate) async fn has_lease(&self, node: &str) -> Result<bool, RegistryError> {
        let n: i64 = self
            .query(redis::cmd("EXISTS").arg(self.key(&["node", node])).clone())
            .await?;
        Ok(n == 1)
    }

    /// One page of the session IDs a node's index holds, after `after`, in ID order.
    pub(crate) async fn node_page(
        &self,
        node: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, RegistryError> {
        let min = match after {
            Some(a) => format!("({a}"),
            None => "-".to_owned(),
        };
        self.query(
            redis::cmd("ZRANGEBYLEX")
                .arg(self.key(&["idx", "node", node]))
                .arg(min)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .clone(),
        )
        .await
    }

    /// Which of these sessions have a record naming `node` (one round trip per pipeline).
    pub(crate) async fn held_by(
        &self,
        node: &str,
        ids: &[SessionId],
    ) -> Result<Vec<bool>, RegistryError> {
        Ok(self
            .batch(self.per_session("HGET", ids, &["node"]))
            .await?
            .iter()
            .map(|v| {
                redis::from_redis_value_ref::<Option<String>>(v)
                    .ok()
                    .flatten()
                    .is_some_and(|n| n == node)
            })
            .collect())
    }

    /// Removes one page of a dead node's sessions: records, index entries, a tombstone for
    /// each. Reliable sessions are kept instead, suspended for `resume_window` (their clients
    /// may resume elsewhere). Returns what this call did (each session is handled by one
    /// caller only), or `None` once the node's index is empty.
    pub(crate) async fn reap_page(
        &self,
        dead: &str,
        resume_window: Duration,
    ) -> Result<Option<Reaped>, RegistryError> {
        let ids = self.node_page(dead, None, PAGE).await?;
        if ids.is_empty() {
            return Ok(None);
        }
        let window = resume_window.as_millis().max(1) as u64;
        self.take(dead, &ids, &node_lost(), true, window)
            .await
            .map(Some)
    }

    /// Removes records of `node` for sessions it no longer holds (what a failed unregister
    /// left); a tombstone is written only where none is (the real end may be there already).
    pub(crate) async fn remove_stale(
        &self,
        node: &str,
        ids: &[String],
    ) -> Result<usize, RegistryError> {
        let end = SessionEnd {
            code: crate::frame::close_code::ABNORMAL,
            reason: "session ended".into(),
            closed_by: Closer::Gateway,
        };
        self.take(node, ids, &end, false, 0)
            .await
            .map(|r| r.lost.len())
    }

    /// Takes the records of `ids` that name `node` (atomically per record), and clears every
    /// index entry of the ones taken and the node-index entry of all.
    async fn take(
        &self,
        node: &str,
        ids: &[String],
        end: &SessionEnd,
        overwrite_tombstone: bool,
        keep_reliable_ms: u64,
    ) -> Result<Reaped, RegistryError> {
        let cmds = ids
            .iter()
            .map(|id| {
                redis::cmd("EVAL")
                    .arg(TAKE_SCRIPT)
                    .arg(1)
                    .arg(self.key(&["session", id]))
                    .arg(node)
                    .arg(keep_reliable_ms)
                    .clone()
            })
            .collect();
        let replies = self.batch(cmds).await?;
        let node_index = self.key(&["idx", "node", node]);
        let mut out = Reaped::default();
        let mut cmds = Vec::new();
        for (id, v) in ids.iter().zip(replies) {
            cmds.push(redis::cmd("ZREM").arg(&node_index).arg(id).clone());
            let Ok(mut map) = redis::from_redis_value::<HashMap<String, String>>(v) else {
                continue;
            };
            if let Some(kept) = map.remove("_kept") {
                if let Some(r) = SessionId::parse(id).and_then(|sid| parse_record(&sid, map)) {
                    if kept == "new" {
                        out.suspended.push(r);
                    }
                }
                continue;
            }
            let Some(r) = SessionId::parse(id).and_then(|sid| parse_record(&sid, map)) else {
                continue;
            };
            let mut tombstone = redis::cmd("SET");
            tombstone
                .arg(self.key(&["closed", id]))
                .arg(encode_end(end))
                .arg("EX")
                .arg(TOMBSTONE_TTL.as_secs());
            if !overwrite_tombstone {
                tombstone.arg("NX");
            }
            cmds.push(tombstone);
            cmds.extend(self.index_cmds(&r, false));
            out.lost.push(r);
        }
        self.batch(cmds).await?;
        Ok(out)
    }

    /// Forgets a dead node once its sessions are gone: its members and its place in the node
    /// set. Leaves it registered if it came back (its lease exists) or holds sessions again.
    pub(crate) async fn finish_reap(&self, dead: &str) -> Result<(), RegistryError> {
        if self.has_lease(dead).await? || !self.node_page(dead, None, 1).await?.is_empty() {
            return Ok(());
        }
        self.drop_members_of(dead).await?;
        self.batch(vec![
            redis::cmd("SREM")
                .arg(self.key(&["nodes"]))
                .arg(dead)
                .clone(),
            redis::cmd("DEL")
                .arg(self.key(&["node-subs", dead]))
                .clone(),
        ])
        .await
        .map(drop)
    }

    // ---- subscribe members ----------------------------------------------------------------

    pub(crate) async fn add_member(
        &self,
        hub: &str,
        m: &MemberRecord,
    ) -> Result<(), RegistryError> {
        self.batch(vec![
            redis::cmd("HSET")
                .arg(self.key(&["subs", hub]))
                .arg(&m.uid)
                .arg(format!("{}\t{}\t{}", m.node, m.group, m.kinds))
                .clone(),
            redis::cmd("SADD")
                .arg(self.key(&["node-subs", &m.node]))
                .arg(hub)
                .clone(),
        ])
        .await
        .map(drop)
    }

    pub(crate) async fn remove_member(&self, hub: &str, uid: &str) -> Result<(), RegistryError> {
        self.query::<Value>(
            redis::cmd("HDEL")
                .arg(self.key(&["subs", hub]))
                .arg(uid)
                .clone(),
        )
        .await
        .map(drop)
    }

    /// Members of a hub on live nodes.
    pub(crate) async fn members(&self, hub: &str) -> Result<Vec<MemberRecord>, RegistryError> {
        let map: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.key(&["subs", hub])).clone())
            .await?;
        let members: Vec<MemberRecord> = map
            .into_iter()
            .filter_map(|(uid, v)| {
                let mut parts = v.splitn(3, '\t');
                let node = parts.next()?.to_owned();
                let group = parts.next()?.to_owned();
                let kinds = parts.next()?.parse().ok()?;
                Some(MemberRecord {
                    uid,
                    node,
                    group,
                    kinds,
                })
            })
            .collect();
        self.learn(members.iter().map(|m| m.node.as_str())).await?;
        Ok(members
            .into_iter()
            .filter(|m| self.is_live(&m.node))
            .collect())
    }

    async fn drop_members_of(&self, node: &str) -> Result<(), RegistryError> {
        let hubs: Vec<String> = self
            .query(
                redis::cmd("SMEMBERS")
                    .arg(self.key(&["node-subs", node]))
                    .clone(),
            )
            .await?;
        for hub in hubs {
            let map: HashMap<String, String> = self
                .query(redis::cmd("HGETALL").arg(self.key(&["subs", &hub])).clone())
                .await?;
            let mine: Vec<String> = map
                .into_iter()
                .filter(|(_, v)| v.split('\t').next() == Some(node))
                .map(|(k, _)| k)
                .collect();
            if !mine.is_empty() {
                let mut c = redis::cmd("HDEL");
                c.arg(self.key(&["subs", &hub]));
                for uid in mine {
                    c.arg(uid);
                }
                self.query::<Value>(c).await?;
            }
        }
        Ok(())
    }
}

/// One node of the node set as the admin API sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeInfoRow {
    pub id: String,
    /// The lease's value (backend URL); `None`: the lease is gone, the node is lost.
    pub lease: Option<String>,
    /// The node's published info (JSON), if it has one.
    pub info: Option<String>,
    /// Sessions its node index still holds in Redis.
    pub registered: u64,
}

/// Most nodes the admin API reads (a node set is a handful; this bounds a corrupt one).
const ADMIN_NODES: usize = 1_000;

// ---- admin: node infos --------------------------------------------------------------------
impl RedisRegistry {
    /// Writes this node's info with the lease's TTL (one command: value and TTL at once), on
    /// the lease's connection, as the lease task's companion.
    pub(crate) async fn write_node_info(
        &self,
        node: &str,
        info: &str,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let cmd = redis::cmd("SET")
            .arg(self.key(&["nodeinfo", node]))
            .arg(info)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .clone();
        self.query_on::<Value>(&self.lease_conn, cmd)
            .await
            .map(drop)
    }

    /// Every node of the node set with its lease, info and registered sessions: the set, then
    /// one pipeline for all nodes.
    pub(crate) async fn node_infos(&self) -> Result<Vec<NodeInfoRow>, RegistryError> {
        let mut ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.key(&["nodes"])).clone())
            .await?;
        ids.sort_unstable();
        ids.truncate(ADMIN_NODES);
        let cmds = ids
            .iter()
            .flat_map(|n| {
                [
                    redis::cmd("GET").arg(self.key(&["node", n])).clone(),
                    redis::cmd("GET").arg(self.key(&["nodeinfo", n])).clone(),
                    redis::cmd("ZCARD")
                        .arg(self.key(&["idx", "node", n]))
                        .clone(),
                ]
            })
            .collect();
        let replies = self.batch(cmds).await?;
        let text = |v: Option<&Value>| {
            v.and_then(|v| redis::from_redis_value_ref::<Option<String>>(v).ok())
                .flatten()
        };
        Ok(ids
            .into_iter()
            .zip(replies.chunks(3))
            .map(|(id, r)| NodeInfoRow {
                id,
                lease: text(r.first()),
                info: text(r.get(1)),
                registered: r
                    .get(2)
                    .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                    .unwrap_or(0),
            })
            .collect())
    }

    /// Whether this is Redis Cluster (`redis+cluster://`) rather than a single Redis.
    pub(crate) fn is_redis_cluster(&self) -> bool {
        self.single.is_none()
    }
}

/// Returns a session's record and deletes it, only if the record names the node `ARGV[1]`.
/// With a resume window (`ARGV[2]` ms, not 0), a reliable session's record is kept instead,
/// marked suspended with that TTL (its client may resume on another node), and answered with
/// `_kept` = `new` (suspended just now) or `old` (it was already).
const TAKE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return false end
if ARGV[2] ~= '0' and redis.call('HGET', KEYS[1], 'reliable') == '1' then
  local was = redis.call('HGET', KEYS[1], 'suspended') == '1'
  redis.call('HSET', KEYS[1], 'suspended', '1')
  if not was or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  local r = redis.call('HGETALL', KEYS[1])
  table.insert(r, '_kept')
  table.insert(r, was and 'old' or 'new')
  return r
end
local r = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return r";

/// Extends a lock held by `ARGV[1]` to `ARGV[2]` ms.
const EXTEND_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

/// Sets `last_active_at` only on a record that still exists.
const TOUCH_SCRIPT: &str =
    "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last_active_at', ARGV[1]) end return 0";

/// The command's name as a metric label: one of the commands the registry sends.
fn command_name(cmd: &Cmd) -> &'static str {
    const KNOWN: &[&str] = &[
        "DEL",
        "EVAL",
        "EXISTS",
        "GET",
        "HDEL",
        "HGET",
        "HGETALL",
        "HMGET",
        "HSET",
        "INFO",
        "SADD",
        "SET",
        "SMEMBERS",
        "SREM",
        "ZADD",
        "ZCARD",
        "ZRANGE",
        "ZRANGEBYLEX",
        "ZREM",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => KNOWN
            .iter()
            .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
            .copied()
            .unwrap_or("OTHER"),
        _ => "OTHER",
    }
}

fn unavailable(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_millis(ms: &str) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.parse().unwrap_or(0))
}

pub(crate) fn node_lost() -> SessionEnd {
    SessionEnd {
        code: crate::frame::close_code::ABNORMAL,
        reason: "node lost".into(),
        closed_by: Closer::NodeLost,
    }
}

fn encode_end(end: &SessionEnd) -> String {
    format!("{}\t{}\t{}", end.code, end.closed_by.as_str(), end.reason)
}

fn decode_end(s: &str) -> SessionEnd {
    let mut parts = s.splitn(3, '\t');
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1006);
    let closed_by = match parts.next() {
        Some("client") => Closer::Client,
        Some("gateway") => Closer::Gateway,
        Some("backend") => Closer::Backend,
        _ => Closer::NodeLost,
    };
    SessionEnd {
        code,
        reason: parts.next().unwrap_or_default().to_owned(),
        closed_by,
    }
}

fn parse_record(id: &SessionId, mut m: HashMap<String, String>) -> Option<SessionRecord> {
    let node = m.remove("node")?;
    let mut take = |k: &str| m.remove(k).unwrap_or_default();
    Some(SessionRecord {
        id: id.clone(),
        hub: take("hub"),
        user: take("user"),
        groups: serde_json::from_str(&take("groups")).unwrap_or_default(),
        metadata: serde_json::from_str::<BTreeMap<String, String>>(&take("metadata"))
            .unwrap_or_default(),
        connected_at: from_millis(&take("connected_at")),
        last_active_at: from_millis(&take("last_active_at")),
        remote_addr: take("remote_addr"),
        subprotocol: take("subprotocol"),
        reliable: take("reliable") == "1",
        suspended: take("suspended") == "1",
        node,
        counters: None,
    })
}

impl RedisRegistry {
    /// The hub of each session held by a live node, in order (`None` for a missing record or
    /// a dead node's): one round trip for the whole list, for checking a scoped token.
    pub(crate) async fn hubs(
        &self,
        ids: &[SessionId],
    ) -> Result<Vec<Option<String>>, RegistryError> {
        let replies = self
            .batch(self.per_session("HMGET", ids, &["hub", "node"]))
            .await?;
        let pairs: Vec<(Option<String>, Option<String>)> = replies
            .into_iter()
            .map(|v| {
                redis::from_redis_value::<(Option<String>, Option<String>)>(v)
                    .unwrap_or((None, None))
            })
            .collect();
        self.learn(pairs.iter().filter_map(|(_, node)| node.as_deref()))
            .await?;
        Ok(pairs
            .into_iter()
            .map(|(hub, node)| match node {
                Some(node) if self.is_live(&node) => hub,
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_round_trip_through_their_encoding() {
        let end = SessionEnd {
            code: 4000,
            reason: "bye\tnow".into(),
            closed_by: Closer::Backend,
        };
        assert_eq!(decode_end(&encode_end(&end)), end);
    }
}
