//! The session registry: where every node's sessions are recorded, so any backend (and any
//! node) can find, list and check them.
//!
//! The registry holds *records* (what a session is and where it lives); the live sessions and
//! their sockets stay in the node's [`Pool`](crate::pool::Pool). Backends' `GetSession`,
//! `CheckSessions` and `ListSessions` answer from here; the session and API code call only the
//! methods of [`Registry`], so a new store plugs in as one more variant.

mod memory;
mod redis;

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

pub(crate) use memory::MemoryRegistry;
pub(crate) use redis::{node_lost, MemberRecord, RedisRegistry};

use crate::session::{SessionEnd, SessionId};

/// What the registry knows of one open session.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SessionRecord {
    pub id: SessionId,
    pub hub: String,
    pub user: String,
    pub groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub node: String,
    pub connected_at: SystemTime,
    pub last_active_at: SystemTime,
    pub remote_addr: String,
    pub subprotocol: String,
    /// Live counters; present only when the record comes from the node holding the session.
    pub counters: Option<SessionCounters>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionCounters {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub outbound_queue_depth: u64,
    pub inbox_depth: u64,
}

/// The registry's answer to "is this session still open?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Open,
    /// Closed recently enough that the registry still remembers how.
    Closed(SessionEnd),
    /// Never seen, or closed too long ago to remember.
    Unknown,
}

/// Filters of `ListSessions`; `None` does not filter.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListFilter {
    pub hub: Option<String>,
    pub group: Option<String>,
    pub user: Option<String>,
    pub node: Option<String>,
}

/// One page of a listing. `next` is an opaque cursor, `None` on the last page.
#[derive(Debug)]
pub(crate) struct Page {
    pub records: Vec<SessionRecord>,
    pub next: Option<String>,
}

/// The registry could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("invalid page token")]
    BadPageToken,
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// How long a closed session is remembered as "closed" rather than "unknown".
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// The registry this node uses.
pub(crate) enum Registry {
    /// One node, no external store: the default.
    Memory(MemoryRegistry),
    /// Many nodes sharing Redis (or Redis Cluster).
    Redis(RedisRegistry),
}

impl Registry {
    pub(crate) fn memory(tombstone_capacity: usize) -> Self {
        Registry::Memory(MemoryRegistry::new(tombstone_capacity, TOMBSTONE_TTL))
    }

    /// Records a newly admitted session.
    pub(crate) async fn register(&self, record: SessionRecord) -> Result<(), RegistryError> {
        match self {
            Registry::Memory(m) => {
                m.register(record);
                Ok(())
            }
            Registry::Redis(r) => r.register(&record).await,
        }
    }

    /// Forgets a session and remembers how it ended.
    pub(crate) async fn unregister(
        &self,
        record: &SessionRecord,
        end: &SessionEnd,
    ) -> Result<(), RegistryError> {
        match self {
            Registry::Memory(m) => {
                m.unregister(&record.id, end);
                Ok(())
            }
            Registry::Redis(r) => r.unregister(record, end).await,
        }
    }

    /// Records a change of group membership; `record` already shows the new groups.
    pub(crate) async fn set_group(
        &self,
        record: &SessionRecord,
        group: &str,
        member: bool,
    ) -> Result<(), RegistryError> {
        match self {
            Registry::Memory(m) => {
                m.set_group(&record.id, group, member);
                Ok(())
            }
            Registry::Redis(r) => r.set_group(record, group, member).await,
        }
    }

    pub(crate) async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.get(id)),
            Registry::Redis(r) => r.get(id).await,
        }
    }

    /// The node holding a session, when another node may hold it.
    pub(crate) async fn owner(&self, id: &SessionId) -> Result<Option<String>, RegistryError> {
        match self {
            Registry::Memory(_) => Ok(None),
            Registry::Redis(r) => r.owner(id).await,
        }
    }

    /// The hub of each session, in order (`None` when the registry has no live record): one
    /// round trip for the whole list.
    pub(crate) async fn hubs(
        &self,
        ids: &[SessionId],
    ) -> Result<Vec<Option<String>>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.hubs(ids)),
            Registry::Redis(r) => r.hubs(ids).await,
        }
    }

    /// Liveness of each ID, in order.
    pub(crate) async fn check(&self, ids: &[SessionId]) -> Result<Vec<Liveness>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(ids.iter().map(|id| m.liveness(id)).collect()),
            Registry::Redis(r) => r.check(ids).await,
        }
    }

    pub(crate) async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        cursor: Option<&str>,
    ) -> Result<Page, RegistryError> {
        match self {
            Registry::Memory(m) => m.list(filter, page_size, cursor),
            Registry::Redis(r) => r.list(filter, page_size, cursor).await,
        }
    }

    /// Whether the registry is reachable (for `/readyz`).
    pub(crate) fn is_healthy(&self) -> bool {
        match self {
            Registry::Memory(_) => true,
            Registry::Redis(r) => r.is_healthy(),
        }
    }

    /// The shared registry, when there is one.
    pub(crate) fn shared(&self) -> Option<&RedisRegistry> {
        match self {
            Registry::Memory(_) => None,
            Registry::Redis(r) => Some(r),
        }
    }
}

/// A record for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn tests_record(id: &SessionId) -> SessionRecord {
    SessionRecord {
        id: id.clone(),
        hub: "h".into(),
        user: String::new(),
        groups: Vec::new(),
        metadata: BTreeMap::new(),
        node: "n".into(),
        connected_at: SystemTime::now(),
        last_active_at: SystemTime::now(),
        remote_addr: "127.0.0.1:1".into(),
        subprotocol: String::new(),
        counters: None,
    }
}
