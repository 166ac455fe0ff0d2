//! The embedded registry: a single node's records in memory.
//!
//! One std mutex guards all of it. It is taken on connect, disconnect, group changes and
//! backend queries, never per message, and never across an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
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
    records: BTreeMap<SessionId, SessionRecord>,
    by_hub: HashMap<String, BTreeSet<SessionId>>,
    by_user: HashMap<String, BTreeSet<SessionId>>,
    by_group: HashMap<(String, String), BTreeSet<SessionId>>,
    /// How recently closed sessions ended, oldest first, bounded in count and age.
    tombstones: HashMap<SessionId, SessionEnd>,
    tombstone_order: VecDeque<(Instant, SessionId)>,
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
        inner.records.insert(id, record);
    }

    pub(crate) fn unregister(&self, id: &SessionId, end: &SessionEnd) {
        let mut inner = self.lock();
        if let Some(record) = inner.records.remove(id) {
            index(&mut inner.by_hub, record.hub.clone(), id, false);
            if !record.user.is_empty() {
                index(&mut inner.by_user, record.user.clone(), id, false);
            }
            for g in record.groups {
                index(&mut inner.by_group, (record.hub.clone(), g), id, false);
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
        let hub = record.hub.clone();
        index(&mut inner.by_group, (hub, group.to_owned()), id, member);
        true
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<SessionRecord> {
        self.lock().records.get(id).cloned()
    }

    /// The hub of each session, in order, under one lock.
    pub(crate) fn hubs(&self, ids: &[SessionId]) -> Vec<Option<String>> {
        let inner = self.lock();
        ids.iter()
            .map(|id| inner.records.get(id).map(|r| r.hub.clone()))
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
            if !matches(filter, r) {
                continue;
            }
            if records.len() == page_size {
                more = true;
                break;
            }
            records.push(r.clone());
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
    f.hub.as_ref().is_none_or(|h| *h == r.hub)
        && f.user.as_ref().is_none_or(|u| *u == r.user)
        && f.node.as_ref().is_none_or(|n| *n == r.node)
        && f.group.as_ref().is_none_or(|g| r.groups.contains(g))
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
    use std::time::SystemTime;

    use super::*;
    use crate::model::Closer;

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
