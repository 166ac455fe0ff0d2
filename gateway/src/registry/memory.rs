//! The embedded registry: a single node's records in memory.
//!
//! One std mutex guards all of it. It is taken on connect, disconnect, group changes and
//! backend queries, never per message, and never across an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use super::{ListFilter, Liveness, Page, RegistryError, SessionRecord};
use crate::model::{SessionEnd, SessionId};

pub(crate) struct MemoryRegistry {
    inner: Mutex<Inner>,
    tombstone_capacity: usize,
    tombstone_ttl: Duration,
}

#[derive(Default)]
struct Inner {
    /// Ordered by ID so pages resume after the last ID returned.
    records: BTreeMap<SessionId, Kept>,
    /// The node ID every record names, kept once.
    node: Option<Arc<str>>,
    by_hub: HashMap<String, BTreeSet<SessionId>>,
    by_user: HashMap<String, BTreeSet<SessionId>>,
    by_group: HashMap<(String, String), BTreeSet<SessionId>>,
    /// How recently closed sessions ended, oldest first, bounded in count and age.
    tombstones: HashMap<SessionId, SessionEnd>,
    tombstone_order: VecDeque<(Instant, SessionId)>,
}

/// A record as kept here, for as long as its session lives: 168 bytes instead of a
/// `SessionRecord`'s 280, without what every record shares (the node ID, kept once) or what
/// only the session knows live (its counters: a registry record carries none, as the Redis
/// registry's do not). Kept inline in the map's nodes, not boxed: measured, one more small
/// allocation per session, made as the handshake's buffers are freed, doubled the idle RSS per
/// connection under glibc's malloc (7.4 KiB instead of 3.7) although the heap was smaller.
struct Kept {
    hub: Box<str>,
    user: Box<str>,
    groups: Vec<String>,
    metadata: BTreeMap<String, String>,
    node: Arc<str>,
    connected_at: SystemTime,
    last_active_at: SystemTime,
    remote_addr: Box<str>,
    subprotocol: Box<str>,
    reliable: bool,
    suspended: bool,
}

const _: () = assert!(std::mem::size_of::<Kept>() <= 168);

impl Kept {
    fn new(r: SessionRecord, node: Arc<str>) -> Self {
        Self {
            hub: r.hub.into(),
            user: r.user.into(),
            groups: r.groups,
            metadata: r.metadata,
            node,
            connected_at: r.connected_at,
            last_active_at: r.last_active_at,
            remote_addr: r.remote_addr.into(),
            subprotocol: r.subprotocol.into(),
            reliable: r.reliable,
            suspended: r.suspended,
        }
    }

    fn matches(&self, f: &ListFilter) -> bool {
        matches_fields(f, &self.hub, &self.user, &self.node, &self.groups)
    }

    fn record(&self, id: &SessionId) -> SessionRecord {
        SessionRecord {
            id: id.clone(),
            hub: self.hub.to_string(),
            user: self.user.to_string(),
            groups: self.groups.clone(),
            metadata: self.metadata.clone(),
            node: self.node.to_string(),
            connected_at: self.connected_at,
            last_active_at: self.last_active_at,
            remote_addr: self.remote_addr.to_string(),
            subprotocol: self.subprotocol.to_string(),
            reliable: self.reliable,
            suspended: self.suspended,
            counters: None,
        }
    }
}

impl Inner {
    /// `node` as an `Arc` shared by every record that names it.
    fn node(&mut self, node: &str) -> Arc<str> {
        match &self.node {
            Some(n) if **n == *node => Arc::clone(n),
            _ => {
                let n: Arc<str> = node.into();
                self.node = Some(Arc::clone(&n));
                n
            }
        }
    }
}

impl MemoryRegistry {
    pub(crate) fn new(tombstone_capacity: usize, tombstone_ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            tombstone_capacity,
            tombstone_ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(&self, record: SessionRecord) {
        let mut inner = self.lock();
        let id = record.id.clone();
        index(&mut inner.by_hub, record.hub.clone(), &id, true);
        if !record.user.is_empty() {
            index(&mut inner.by_user, record.user.clone(), &id, true);
        }
        for g in &record.groups {
            index(
                &mut inner.by_group,
                (record.hub.clone(), g.clone()),
                &id,
                true,
            );
        }
        let node = inner.node(&record.node);
        inner.records.insert(id, Kept::new(record, node));
    }

    pub(crate) fn unregister(&self, id: &SessionId, end: &SessionEnd) {
        let mut inner = self.lock();
        if let Some(record) = inner.records.remove(id) {
            index(&mut inner.by_hub, record.hub.to_string(), id, false);
            if !record.user.is_empty() {
                index(&mut inner.by_user, record.user.to_string(), id, false);
            }
            for g in record.groups {
                index(&mut inner.by_group, (record.hub.to_string(), g), id, false);
            }
        }
        let now = Instant::now();
        self.expire_tombstones(&mut inner, now);
        if inner.tombstones.insert(id.clone(), end.clone()).is_none() {
            inner.tombstone_order.push_back((now, id.clone()));
        }
    }

    fn expire_tombstones(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, id)) = inner.tombstone_order.front() {
            let full = inner.tombstone_order.len() >= self.tombstone_capacity;
            if !full && now.duration_since(*at) < self.tombstone_ttl {
                break;
            }
            let id = id.clone();
            inner.tombstones.remove(&id);
            inner.tombstone_order.pop_front();
        }
    }

    pub(crate) fn set_group(&self, id: &SessionId, group: &str, member: bool) -> bool {
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(id) else {
            return false;
        };
        let had = record.groups.iter().any(|g| g == group);
        if had == member {
            return true;
        }
        if member {
            record.groups.push(group.to_owned());
        } else {
            record.groups.retain(|g| g != group);
        }
        let hub = record.hub.to_string();
        index(&mut inner.by_group, (hub, group.to_owned()), id, member);
        true
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<SessionRecord> {
        self.lock().records.get(id).map(|k| k.record(id))
    }

    /// The hub of each session, in order, under one lock.
    pub(crate) fn hubs(&self, ids: &[SessionId]) -> Vec<Option<String>> {
        let inner = self.lock();
        ids.iter()
            .map(|id| inner.records.get(id).map(|r| r.hub.to_string()))
            .collect()
    }

    pub(crate) fn liveness(&self, id: &SessionId) -> Liveness {
        let inner = self.lock();
        if let Some(r) = inner.records.get(id) {
            if r.suspended {
                Liveness::Suspended
            } else {
                Liveness::Open
            }
        } else if let Some(end) = inner.tombstones.get(id) {
            Liveness::Closed(end.clone())
        } else {
            Liveness::Unknown
        }
    }

    pub(crate) fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        cursor: Option<&str>,
    ) -> Result<Page, RegistryError> {
        let after = match cursor {
            Some(c) => Some(SessionId::parse(c).ok_or(RegistryError::BadPageToken)?),
            None => None,
        };
        let inner = self.lock();
        // Start from the narrowest index the filter names; check the rest per record.
        let candidates: Box<dyn Iterator<Item = &SessionId>> =
            match (&filter.hub, &filter.group, &filter.user) {
                (Some(hub), Some(group), _) => {
                    ids_after(inner.by_group.get(&(hub.clone(), group.clone())), &after)
                }
                (_, _, Some(user)) => ids_after(inner.by_user.get(user), &after),
                (Some(hub), None, None) => ids_after(inner.by_hub.get(hub), &after),
                (None, _, None) => match &after {
                    Some(a) => Box::new(
                        inner
                            .records
                            .range((
                                std::ops::Bound::Excluded(a.clone()),
                                std::ops::Bound::Unbounded,
                            ))
                            .map(|(k, _)| k),
                    ),
                    None => Box::new(inner.records.keys()),
                },
            };
        let mut records = Vec::with_capacity(page_size.min(1024));
        let mut more = false;
        for id in candidates {
            let Some(r) = inner.records.get(id) else {
                continue;
            };
            if !r.matches(filter) {
                continue;
            }
            if records.len() == page_size {
                more = true;
                break;
            }
            records.push(r.record(id));
        }
        let next = if more {
            records.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(Page { records, next })
    }
}

fn ids_after<'a>(
    set: Option<&'a BTreeSet<SessionId>>,
    after: &Option<SessionId>,
) -> Box<dyn Iterator<Item = &'a SessionId> + 'a> {
    match (set, after) {
        (None, _) => Box::new(std::iter::empty()),
        (Some(s), None) => Box::new(s.iter()),
        (Some(s), Some(a)) => Box::new(s.range((
            std::ops::Bound::Excluded(a.clone()),
            std::ops::Bound::Unbounded,
        ))),
    }
}

pub(crate) fn matches(f: &ListFilter, r: &SessionRecord) -> bool {
    matches_fields(f, &r.hub, &r.user, &r.node, &r.groups)
}

fn matches_fields(f: &ListFilter, hub: &str, user: &str, node: &str, groups: &[String]) -> bool {
    f.hub.as_ref().is_none_or(|h| h == hub)
        && f.user.as_ref().is_none_or(|u| u == user)
        && f.node.as_ref().is_none_or(|n| n == node)
        && f.group.as_ref().is_none_or(|g| groups.contains(g))
}

fn index<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<SessionId>>,
    key: K,
    id: &SessionId,
    insert: bool,
) {
    if insert {
        map.entry(key).or_default().insert(id.clone());
    } else if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
        e.get_mut().remove(id);
        if e.get().is_empty() {
            e.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Closer, SessionCounters};

    fn record(hub: &str, user: &str, groups: &[&str]) -> SessionRecord {
        SessionRecord {
            id: SessionId::generate().unwrap(),
            hub: hub.into(),
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            metadata: Default::default(),
            node: "n1".into(),
            connected_at: SystemTime::now(),
            last_active_at: SystemTime::now(),
            remote_addr: "127.0.0.1:1".into(),
            subprotocol: String::new(),
            reliable: false,
            suspended: false,
            counters: None,
        }
    }

    fn end() -> SessionEnd {
        SessionEnd {
            code: 1000,
            reason: String::new(),
            closed_by: Closer::Client,
        }
    }

    #[test]
    fn a_record_reads_back_whole_but_for_the_counters_only_the_session_has() {
        let reg = MemoryRegistry::new(10, Duration::from_secs(60));
        let mut r = record("h", "u", &["a", "b"]);
        r.metadata.insert("k".into(), "v".into());
        r.subprotocol = "chat".into();
        r.reliable = true;
        r.suspended = true;
        let registered = SessionRecord {
            counters: Some(SessionCounters {
                messages_in: 3,
                ..Default::default()
            }),
            ..r.clone()
        };
        reg.register(registered);
        assert_eq!(reg.get(&r.id), Some(r.clone()));
        reg.register(record("h", "", &[]));
        let page = reg.list(&ListFilter::default(), 10, None).unwrap();
        assert_eq!(page.records.len(), 2);
        assert!(page
            .records
            .iter()
            .all(|p| p.node == "n1" && p.counters.is_none()));
    }

    #[test]
    fn listing_pages_through_every_match_once() {
        let reg = MemoryRegistry::new(100, Duration::from_secs(60));
        for i in 0..25 {
            reg.register(record(if i % 2 == 0 { "a" } else { "b" }, "", &[]));
        }
        let filter = ListFilter {
            hub: Some("a".into()),
            ..Default::default()
        };
        let mut seen = BTreeSet::new();
        let mut cursor = None;
        loop {
            let page = reg.list(&filter, 5, cursor.as_deref()).unwrap();
            assert!(page.records.len() <= 5);
            for r in page.records {
                assert_eq!(r.hub, "a");
                assert!(seen.insert(r.id));
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 13);
    }

    #[test]
    fn groups_and_users_are_indexed_and_unindexed() {
        let reg = MemoryRegistry::new(100, Duration::from_secs(60));
        let r = record("h", "alice", &["g1"]);
        let id = r.id.clone();
        reg.register(r);
        assert!(reg.set_group(&id, "g2", true));
        let by = |group: &str| {
            let f = ListFilter {
                hub: Some("h".into()),
                group: Some(group.into()),
                ..Default::default()
            };
            reg.list(&f, 10, None).unwrap().records.len()
        };
        assert_eq!((by("g1"), by("g2")), (1, 1));
        reg.set_group(&id, "g1", false);
        assert_eq!(by("g1"), 0);
        reg.unregister(&id, &end());
        assert_eq!(by("g2"), 0);
        let f = ListFilter {
            user: Some("alice".into()),
            ..Default::default()
        };
        assert!(reg.list(&f, 10, None).unwrap().records.is_empty());
        assert!(matches!(reg.liveness(&id), Liveness::Closed(_)));
    }

    #[test]
    fn tombstones_are_bounded() {
        let reg = MemoryRegistry::new(3, Duration::from_secs(60));
        let ids: Vec<_> = (0..5).map(|_| SessionId::generate().unwrap()).collect();
        for id in &ids {
            reg.unregister(id, &end());
        }
        assert_eq!(reg.liveness(&ids[0]), Liveness::Unknown);
        assert!(matches!(reg.liveness(&ids[4]), Liveness::Closed(_)));
        assert!(reg.lock().tombstones.len() <= 3);
    }

    #[test]
    fn a_bad_cursor_is_an_error() {
        let reg = MemoryRegistry::new(3, Duration::from_secs(60));
        assert!(reg.list(&ListFilter::default(), 10, Some("nope")).is_err());
    }
}
