//! The node's live sessions, keyed by ID, with the indexes fan-out needs (hub, group, user).
//!
//! Maps are sharded (`DashMap`), so connects, disconnects and lookups on different sessions do
//! not contend. Fan-out copies the matching `Arc<Session>`s out of an index and releases the
//! shard before queuing anything, so a publish never holds a lock while it works.
//!
//! Sessions that ended with unread inbox messages stay reachable for `Read` for a bounded time
//! (`closed`), apart from the open sessions: they are never returned by lookups for open ones.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use dashmap::DashMap;

use crate::session::{Clock, Session, SessionId};

type Index<K> = DashMap<K, HashMap<SessionId, Arc<Session>>>;

/// What a publish is addressed to, within this node.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Hub(String),
    Group { hub: String, group: String },
    User { hub: Option<String>, user: String },
    Sessions(Vec<SessionId>),
}

#[derive(Default)]
pub(crate) struct Pool {
    sessions: DashMap<SessionId, Arc<Session>>,
    by_hub: Index<Arc<str>>,
    by_group: Index<(Arc<str>, Arc<str>)>,
    by_user: Index<Arc<str>>,
    closed: DashMap<SessionId, (Arc<Session>, Instant)>,
}

impl Pool {
    pub(crate) fn insert(&self, s: Arc<Session>) {
        add(&self.by_hub, s.hub.clone(), &s);
        if let Some(user) = &s.user {
            add(&self.by_user, user.clone(), &s);
        }
        for g in s.groups() {
            add(&self.by_group, (s.hub.clone(), g), &s);
        }
        self.sessions.insert(s.id.clone(), s);
    }

    /// Removes an ended session. If its inbox still holds messages it stays readable under
    /// `closed` until drained or swept.
    pub(crate) fn remove(&self, s: &Arc<Session>) {
        self.sessions.remove(&s.id);
        remove(&self.by_hub, &s.hub, &s.id);
        if let Some(user) = &s.user {
            remove(&self.by_user, user, &s.id);
        }
        for g in s.groups() {
            remove(&self.by_group, &(s.hub.clone(), g), &s.id);
        }
        if !s.inbox.is_empty() {
            self.closed
                .insert(s.id.clone(), (Arc::clone(s), Instant::now()));
        }
    }

    /// An open session.
    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.sessions.get(id).map(|e| Arc::clone(e.value()))
    }

    /// A session that ended with unread messages.
    pub(crate) fn get_closed(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.closed.get(id).map(|e| Arc::clone(&e.value().0))
    }

    /// Forgets ended sessions whose inbox was drained, or that waited longer than `retention`.
    /// Returns the sessions dropped with messages still unread.
    pub(crate) fn sweep_closed(&self, retention: Duration, now: Instant) -> Vec<Arc<Session>> {
        let mut expired = Vec::new();
        self.closed.retain(|_, (s, since)| {
            if s.inbox.is_empty() {
                return false;
            }
            if now.saturating_duration_since(*since) >= retention {
                expired.push(Arc::clone(s));
                return false;
            }
            true
        });
        expired
    }

    pub(crate) fn join(&self, s: &Arc<Session>, group: Arc<str>) {
        if s.add_group(group.clone()) {
            add(&self.by_group, (s.hub.clone(), group), s);
        }
    }

    pub(crate) fn leave(&self, s: &Arc<Session>, group: &str) {
        if s.remove_group(group) {
            remove(&self.by_group, &(s.hub.clone(), Arc::from(group)), &s.id);
        }
    }

    /// The open sessions a target names, on this node.
    pub(crate) fn targets(&self, target: &Target) -> Vec<Arc<Session>> {
        match target {
            Target::Hub(hub) => collect(&self.by_hub, hub.as_str()),
            Target::Group { hub, group } => collect(
                &self.by_group,
                &(Arc::from(hub.as_str()), Arc::from(group.as_str())),
            ),
            Target::User { hub, user } => {
                let mut all = collect(&self.by_user, user.as_str());
                if let Some(hub) = hub {
                    all.retain(|s| &*s.hub == hub);
                }
                all
            }
            Target::Sessions(ids) => {
                let mut seen = std::collections::HashSet::with_capacity(ids.len());
                ids.iter()
                    .filter(|id| seen.insert(*id))
                    .filter_map(|id| self.get(id))
                    .collect()
            }
        }
    }

    /// Every open session (for the sweeper and shutdown).
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// Sessions whose client was heard from since the last call, with when (for the registry's
    /// batched `last_active_at`).
    pub(crate) fn recently_active(&self, clock: &Clock) -> Vec<(SessionId, SystemTime)> {
        self.sessions
            .iter()
            .filter_map(|e| {
                let ms = e.value().take_activity()?;
                Some((e.key().clone(), clock.wall(ms)))
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Open sessions per hub (for the admin API): one pass over the hub index, O(hubs).
    pub(crate) fn hub_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.by_hub
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

fn add<K: Hash + Eq>(index: &Index<K>, key: K, s: &Arc<Session>) {
    index
        .entry(key)
        .or_default()
        .insert(s.id.clone(), Arc::clone(s));
}

fn remove<K: Hash + Eq + Clone>(index: &Index<K>, key: &K, id: &SessionId) {
    if let dashmap::Entry::Occupied(mut e) = index.entry(key.clone()) {
        e.get_mut().remove(id);
        if e.get().is_empty() {
            e.remove();
        }
    }
}

fn collect<K, Q>(index: &Index<K>, key: &Q) -> Vec<Arc<Session>>
where
    K: Hash + Eq + std::borrow::Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    index
        .get(key)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default()
}
