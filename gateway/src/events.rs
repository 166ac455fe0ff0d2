//! Hub events for `Subscribe`: connected, message, disconnected.
//!
//! Subscribers join a consumer group of a hub. Every group receives every event; within a group
//! each event goes to one member, and all events of one session go to the same member while
//! that member lives (sticky assignment, made on the session's first event, dropped on its
//! `disconnected`).
//!
//! Delivery waits while a member's bounded queue is full (backpressure reaches the client's
//! socket for `message` events), but only up to `slow_after`: a member that stops reading is cut
//! off, its stream ends with `RESOURCE_EXHAUSTED`, and the event goes to another member. The
//! bus lock is never held across an `.await`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{GroupLabel, Metrics},
    registry::SessionRecord,
    session::{Inbound, SessionEnd, SessionId},
};

/// How many events a member may have in flight before delivery waits.
const MEMBER_QUEUE: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Connected,
    Message,
    Disconnected,
}

/// Which kinds a subscriber wants.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kinds {
    pub connected: bool,
    pub message: bool,
    pub disconnected: bool,
}

impl Kinds {
    pub(crate) const ALL: Kinds = Kinds {
        connected: true,
        message: true,
        disconnected: true,
    };

    fn wants(&self, k: EventKind) -> bool {
        match k {
            EventKind::Connected => self.connected,
            EventKind::Message => self.message,
            EventKind::Disconnected => self.disconnected,
        }
    }
}

#[derive(Debug)]
pub(crate) enum EventBody {
    Connected(Box<SessionRecord>),
    Message(Inbound),
    Disconnected(SessionEnd),
}

#[derive(Debug)]
pub(crate) struct Event {
    pub session: SessionId,
    pub hub: Arc<str>,
    pub body: EventBody,
}

impl Event {
    fn kind(&self) -> EventKind {
        match self.body {
            EventBody::Connected(_) => EventKind::Connected,
            EventBody::Message(_) => EventKind::Message,
            EventBody::Disconnected(_) => EventKind::Disconnected,
        }
    }
}

/// A subscriber's end: events arrive on `events`; `cut_off` fires if it was too slow.
pub(crate) struct Subscription {
    pub events: mpsc::Receiver<Arc<Event>>,
    pub cut_off: CancellationToken,
    /// Leaves the group when dropped.
    _membership: Membership,
}

struct Membership {
    bus: Arc<EventBus>,
    hub: Arc<str>,
    group: Arc<str>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.bus.leave(&self.hub, &self.group, self.id);
    }
}

pub(crate) struct EventBus {
    hubs: Mutex<HashMap<Arc<str>, Hub>>,
    next_id: AtomicU64,
    slow_after: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Hub {
    groups: HashMap<Arc<str>, Group>,
}

#[derive(Default)]
struct Group {
    members: Vec<Member>,
    /// Session → member ID, so a session's events stay with one member.
    assigned: HashMap<SessionId, u64>,
    next: usize,
}

struct Member {
    id: u64,
    kinds: Kinds,
    tx: mpsc::Sender<Arc<Event>>,
    cut_off: CancellationToken,
}

/// Where one event goes in one group.
struct Delivery {
    group: Arc<str>,
    member: u64,
    tx: mpsc::Sender<Arc<Event>>,
    cut_off: CancellationToken,
}

impl EventBus {
    pub(crate) fn new(slow_after: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            hubs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            slow_after,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Hub>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins `group` of `hub`; an empty group name makes a group of one.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        hub: &str,
        group: &str,
        kinds: Kinds,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let group: Arc<str> = if group.is_empty() {
            format!("\0solo-{id}").into()
        } else {
            group.into()
        };
        let hub: Arc<str> = hub.into();
        let (tx, rx) = mpsc::channel(MEMBER_QUEUE);
        let cut_off = CancellationToken::new();
        self.lock()
            .entry(hub.clone())
            .or_default()
            .groups
            .entry(group.clone())
            .or_default()
            .members
            .push(Member {
                id,
                kinds,
                tx,
                cut_off: cut_off.clone(),
            });
        Subscription {
            events: rx,
            cut_off,
            _membership: Membership {
                bus: Arc::clone(self),
                hub,
                group,
                id,
            },
        }
    }

    fn leave(&self, hub: &str, group: &str, id: u64) {
        let mut hubs = self.lock();
        let Some(h) = hubs.get_mut(hub) else { return };
        if let Some(g) = h.groups.get_mut(group) {
            g.members.retain(|m| m.id != id);
            g.assigned.retain(|_, m| *m != id);
            if g.members.is_empty() {
                h.groups.remove(group);
            }
        }
        if h.groups.is_empty() {
            hubs.remove(hub);
        }
    }

    /// Whether any subscriber of `hub` takes `message` events.
    pub(crate) fn wants_messages(&self, hub: &str) -> bool {
        self.lock().get(hub).is_some_and(|h| {
            h.groups
                .values()
                .any(|g| g.members.iter().any(|m| m.kinds.message))
        })
    }

    /// Delivers one event to one member of every interested group; returns how many groups got
    /// it. Waits for room, cutting off members that stay full for longer than `slow_after`.
    pub(crate) async fn publish(&self, event: Event) -> usize {
        let event = Arc::new(event);
        let mut delivered = 0;
        let mut pending = self.route(&event, &[]);
        // A cut-off member's event is routed again within its group, to a remaining member.
        let mut retries: Vec<Arc<str>> = Vec::new();
        while let Some(d) = pending.pop() {
            let sent = tokio::time::timeout(self.slow_after, d.tx.send(Arc::clone(&event))).await;
            match sent {
                Ok(Ok(())) => {
                    delivered += 1;
                    self.metrics
                        .subscriber_events
                        .get_or_create(&GroupLabel {
                            hub: event.hub.to_string(),
                            group: visible_group(&d.group),
                        })
                        .inc();
                }
                Ok(Err(_)) | Err(_) => {
                    if sent.is_err() {
                        tracing::warn!(hub = %event.hub, group = %visible_group(&d.group), "subscriber too slow; cutting it off");
                        d.cut_off.cancel();
                        self.metrics.subscribers_cut_off.inc();
                    }
                    self.leave(&event.hub, &d.group, d.member);
                    if !retries.contains(&d.group) {
                        retries.push(d.group.clone());
                        pending.extend(self.route(&event, std::slice::from_ref(&d.group)));
                    }
                }
            }
        }
        if let EventBody::Disconnected(_) = event.body {
            self.forget(&event.hub, &event.session);
        }
        delivered
    }

    /// Picks the member of each interested group (all groups, or only `only`).
    fn route(&self, event: &Event, only: &[Arc<str>]) -> Vec<Delivery> {
        let kind = event.kind();
        let mut hubs = self.lock();
        let Some(hub) = hubs.get_mut(&*event.hub) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, g) in hub.groups.iter_mut() {
            if !only.is_empty() && !only.contains(name) {
                continue;
            }
            let sticky = g
                .assigned
                .get(&event.session)
                .and_then(|id| g.members.iter().find(|m| m.id == *id))
                .filter(|m| m.kinds.wants(kind))
                .map(|m| m.id);
            let member = match sticky {
                Some(id) => id,
                None => {
                    let wanting: Vec<u64> = g
                        .members
                        .iter()
                        .filter(|m| m.kinds.wants(kind))
                        .map(|m| m.id)
                        .collect();
                    if wanting.is_empty() {
                        continue;
                    }
                    let id = wanting[g.next % wanting.len()];
                    g.next = g.next.wrapping_add(1);
                    g.assigned.insert(event.session.clone(), id);
                    id
                }
            };
            if let Some(m) = g.members.iter().find(|m| m.id == member) {
                out.push(Delivery {
                    group: name.clone(),
                    member,
                    tx: m.tx.clone(),
                    cut_off: m.cut_off.clone(),
                });
            }
        }
        out
    }

    fn forget(&self, hub: &str, session: &SessionId) {
        if let Some(h) = self.lock().get_mut(hub) {
            for g in h.groups.values_mut() {
                g.assigned.remove(session);
            }
        }
    }
}

/// Group names as operators gave them; groups of one are labelled together.
fn visible_group(g: &str) -> String {
    if g.starts_with('\0') {
        "(none)".into()
    } else {
        g.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::session::Closer;

    fn bus() -> Arc<EventBus> {
        EventBus::new(Duration::from_millis(200), Arc::new(Metrics::new()))
    }

    fn disconnected(id: &SessionId) -> Event {
        Event {
            session: id.clone(),
            hub: "h".into(),
            body: EventBody::Disconnected(SessionEnd {
                code: 1000,
                reason: String::new(),
                closed_by: Closer::Client,
            }),
        }
    }

    #[tokio::test]
    async fn a_group_shares_events_and_keeps_a_session_with_one_member() {
        let bus = bus();
        let mut a = bus.subscribe("h", "g", Kinds::ALL);
        let mut b = bus.subscribe("h", "g", Kinds::ALL);
        let mut other = bus.subscribe("h", "other", Kinds::ALL);
        let ids: Vec<_> = (0..20).map(|_| SessionId::generate().unwrap()).collect();
        for round in 0..2 {
            for id in &ids {
                let e = if round == 0 {
                    Event {
                        session: id.clone(),
                        hub: "h".into(),
                        body: EventBody::Connected(Box::new(crate::registry::tests_record(id))),
                    }
                } else {
                    disconnected(id)
                };
                assert_eq!(bus.publish(e).await, 2);
            }
        }
        let mut owner: HashMap<SessionId, &str> = HashMap::new();
        for (name, sub) in [("a", &mut a), ("b", &mut b)] {
            while let Ok(e) = sub.events.try_recv() {
                let prev = owner.insert(e.session.clone(), name);
                assert!(
                    prev.is_none() || prev == Some(name),
                    "a session moved between members"
                );
            }
        }
        assert_eq!(owner.len(), 20);
        assert!(owner.values().any(|n| *n == "a") && owner.values().any(|n| *n == "b"));
        let mut n = 0;
        while other.events.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 40, "another group gets every event");
    }

    #[tokio::test]
    async fn a_member_that_stops_reading_is_cut_off_and_its_events_rerouted() {
        let bus = bus();
        let stuck = bus.subscribe("h", "g", Kinds::ALL);
        let mut live = bus.subscribe("h", "g", Kinds::ALL);
        let mut delivered = 0;
        for _ in 0..(MEMBER_QUEUE * 2 + 10) {
            delivered += bus
                .publish(disconnected(&SessionId::generate().unwrap()))
                .await;
        }
        assert_eq!(
            delivered,
            MEMBER_QUEUE * 2 + 10,
            "every event reached the group"
        );
        assert!(stuck.cut_off.is_cancelled());
        let mut n = 0;
        while live.events.try_recv().is_ok() {
            n += 1;
        }
        assert!(n > MEMBER_QUEUE);
    }

    #[tokio::test]
    async fn leaving_removes_the_member() {
        let bus = bus();
        let sub = bus.subscribe("h", "", Kinds::ALL);
        assert!(bus.wants_messages("h"));
        drop(sub);
        assert!(!bus.wants_messages("h"));
        assert_eq!(
            bus.publish(disconnected(&SessionId::generate().unwrap()))
                .await,
            0
        );
    }
}
