//! The session registry: where every node's sessions are recorded, so any backend (and any
//! node) can find, list and check them.
//!
//! The registry holds *records* (what a session is and where it lives); the live sessions and
//! their sockets stay in the node's [`Pool`](crate::pool::Pool). Backends' `GetSession`,
//! `CheckSessions` and `ListSessions` answer from here; the session and API code call only the
//! methods of [`Registry`], so a new store plugs in as one more variant.

mod memory;
mod redis;

use std::{sync::Arc, time::Duration};

pub(crate) use memory::MemoryRegistry;
pub(crate) use redis::{node_lost, Appended, MemberRecord, NewState, Reaped, RedisRegistry, PAGE};

pub(crate) use crate::model::{Liveness, SessionRecord};
use crate::{
    cluster::Cluster,
    model::{SessionEnd, SessionId},
};

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
    #[error("registry misconfigured: {0}")]
    Misconfigured(String),
}

/// How long a closed session is remembered as "closed" rather than "unknown".
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// The registry this node uses, and with it the node's topology: a lone node, or one node of
/// a cluster (shared Redis, a lease, links to the others). Nothing else says which: code that
/// needs the cluster asks [`Registry::cluster`].
// One per process, behind an `Arc`: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Registry {
    /// One node, no external store: the default.
    Memory(MemoryRegistry),
    /// Many nodes sharing Redis (or Redis Cluster).
    Cluster(Arc<Cluster>),
}

impl Registry {
    pub(crate) fn memory(tombstone_capacity: usize) -> Self {
        Registry::Memory(MemoryRegistry::new(tombstone_capacity, TOMBSTONE_TTL))
    }

    /// Records a newly admitted session.
    pub(crate) async fn register(&self, record: SessionRecord) -> Result<(), RegistryError> {
        let r = match self {
            Registry::Memory(m) => {
                m.register(record);
                Ok(())
            }
            Registry::Cluster(c) => c.redis.register(&record).await,
        };
        r.inspect_err(|_| self.lost_write())
    }

    /// Forgets a session and remembers how it ended.
    pub(crate) async fn unregister(
        &self,
        record: &SessionRecord,
        end: &SessionEnd,
    ) -> Result<(), RegistryError> {
        let r = match self {
            Registry::Memory(m) => {
                m.unregister(&record.id, end);
                Ok(())
            }
            Registry::Cluster(c) => c.redis.unregister(record, end).await,
        };
        r.inspect_err(|_| self.lost_write())
    }

    /// Records a change of group membership; `record` already shows the new groups.
    pub(crate) async fn set_group(
        &self,
        record: &SessionRecord,
        group: &str,
        member: bool,
    ) -> Result<(), RegistryError> {
        let r = match self {
            Registry::Memory(m) => {
                m.set_group(&record.id, group, member);
                Ok(())
            }
            Registry::Cluster(c) => c.redis.set_group(record, group, member).await,
        };
        r.inspect_err(|_| self.lost_write())
    }

    pub(crate) async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(m.get(id)),
            Registry::Cluster(c) => c.redis.get(id).await,
        }
    }

    /// The node holding a session, when another node may hold it.
    pub(crate) async fn owner(&self, id: &SessionId) -> Result<Option<String>, RegistryError> {
        match self {
            Registry::Memory(_) => Ok(None),
            Registry::Cluster(c) => c.redis.owner(id).await,
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
            Registry::Cluster(c) => c.redis.hubs(ids).await,
        }
    }

    /// Liveness of each ID, in order.
    pub(crate) async fn check(&self, ids: &[SessionId]) -> Result<Vec<Liveness>, RegistryError> {
        match self {
            Registry::Memory(m) => Ok(ids.iter().map(|id| m.liveness(id)).collect()),
            Registry::Cluster(c) => c.redis.check(ids).await,
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
            Registry::Cluster(c) => c.redis.list(filter, page_size, cursor).await,
        }
    }

    /// Whether the registry is reachable (for `/readyz`).
    pub(crate) fn is_healthy(&self) -> bool {
        match self {
            Registry::Memory(_) => true,
            Registry::Cluster(c) => c.redis.is_healthy(),
        }
    }

    /// The cluster this node belongs to, if any.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Registry::Memory(_) => None,
            Registry::Cluster(c) => Some(c),
        }
    }

    /// A registry write was lost: let the cluster repair it as soon as it can.
    fn lost_write(&self) {
        if let Registry::Cluster(c) = self {
            c.mark_dirty();
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
        metadata: std::collections::BTreeMap::new(),
        node: "n".into(),
        connected_at: std::time::SystemTime::now(),
        last_active_at: std::time::SystemTime::now(),
        remote_addr: "127.0.0.1:1".into(),
        subprotocol: String::new(),
        reliable: false,
        suspended: false,
        counters: None,
    }
}
