//! Hub events for `Subscribe`: connected, message, disconnected; suspended and resumed for
//! reliable sessions.
//!
//! Subscribers join a consumer group of a hub. Every group receives every event; within a group
//! each event goes to one member, and all events of one session go to the same member while
//! that member lives (sticky assignment, made on the session's first event, dropped on its
//! `disconnected`).
//!
//! In a cluster, members live on any node and are listed in the registry. The node that
//! publishes an event (the node holding the session) picks the member of each group from the
//! cluster-wide list and hands the event to that member's node (`Peer/Deliver`), so the
//! one-member-per-group promise holds across nodes without any node seeing every event.
//!
//! Delivery waits while a member's bounded queue is full (backpressure reaches the client's
//! socket for `message` events), but only up to `slow_after`: a member that stops reading is cut
//! off, its stream ends with `RESOURCE_EXHAUSTED`, and the event goes to another member. Events
//! are encoded once and shared by every group. No lock is held across an `.await`.
//!
//! A session's `message` events take no lock shared with other sessions: where its last one
//! went is kept in the session's [`RouteCache`], valid until the bus's epoch moves (a member
//! joined, left or was cut off, an assignment was dropped) or, in a cluster, until the view of
//! other nodes' members it was made with is due for a refresh.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use switchboard_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    cluster::Cluster,
    metrics::Metrics,
    registry::{MemberRecord, SessionRecord},
    session::{Inbound, SessionEnd, SessionId},
};

/// How many events a member may have in flight before delivery waits.
const MEMBER_QUEUE: usize = 256;
/// How long a node trusts its copy of a hub's cluster-wide member list.
const VIEW_TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Connected = 1,
    Message = 2,
    Disconnected = 4,
    Suspended = 8,
    Resumed = 16,
}

/// Which kinds a subscriber wants, as a bit set of [`EventKind`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kinds(pub u8);

impl Kinds {
    pub(crate) const ALL: Kinds = Kinds(1 | 2 | 4 | 8 | 16);

    fn wants(self, k: EventKind) -> bool {
        self.0 & k as u8 != 0
    }
}

#[derive(Debug)]
pub(crate) enum EventBody {
    Connected(Box<SessionRecord>),
    Message(Inbound),
    Disconnected(SessionEnd),
    /// A reliable session's connection ended; the session waits for a resume.
    Suspended(SessionEnd),
    /// A reliable session's client is back.
    Resumed(Box<SessionRecord>),
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
            EventBody::Suspended(_) => EventKind::Suspended,
            EventBody::Resumed(_) => EventKind::Resumed,
        }
    }
}

/// An event as members receive it: encoded once, shared.
pub(crate) type Encoded = Arc<pb::Event>;

/// A subscriber's end: events arrive on `events`; `cut_off` fires if it was too slow.
pub(crate) struct Subscription {
    pub events: mpsc::Receiver<Encoded>,
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
    node: Arc<str>,
    hubs: Mutex<HashMap<Arc<str>, Hub>>,
    /// Moves on every change to `hubs` that can send an event elsewhere; a [`Route`] made
    /// before it moved is not used again.
    epoch: AtomicU64,
    next_id: AtomicU64,
    slow_after: Duration,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// The cluster, when this node is part of one: members elsewhere, delivery to them.
    cluster: Option<Arc<Cluster>>,
    /// Cluster-wide members per hub, refreshed at most every `VIEW_TTL`.
    views: Mutex<HashMap<Arc<str>, View>>,
}

/// A hub's members on other nodes, as read from the registry at a moment.
type View = (Instant, Arc<Vec<MemberRecord>>);

/// Where one session's events of one kind go, as routed at `epoch`.
pub(crate) struct Route {
    kind: EventKind,
    epoch: u64,
    /// When the view of other nodes' members it was made with is due for a refresh.
    stale_at: Option<Instant>,
    deliveries: Vec<Delivery>,
}

/// A session's last `message` route, so that the next message is not routed again (under
/// the bus's lock) while nothing changed. Only the session's own reader publishes through
/// it, so its lock is never contended.
#[derive(Default)]
pub(crate) struct RouteCache(Mutex<Option<Arc<Route>>>);

impl RouteCache {
    fn get(&self, kind: EventKind, epoch: u64) -> Option<Arc<Route>> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let route = slot.as_ref()?;
        let fresh = route.kind == kind
            && route.epoch == epoch
            && route.stale_at.is_none_or(|at| Instant::now() < at);
        fresh.then(|| Arc::clone(route))
    }

    fn set(&self, route: Option<Arc<Route>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = route;
    }
}

#[derive(Default)]
struct Hub {
    groups: HashMap<Arc<str>, Group>,
}

#[derive(Default)]
struct Group {
    /// Members on this node.
    members: Vec<Member>,
    /// Session → member UID, so a session's events stay with one member.
    assigned: HashMap<SessionId, String>,
    next: usize,
    /// Events delivered to the group (`switchboard_subscriber_events_total`), resolved once.
    delivered: Option<Counter>,
}

struct Member {
    id: u64,
    /// `node/id`, made once: routing compares it for every event.
    uid: String,
    kinds: Kinds,
    tx: mpsc::Sender<Encoded>,
    cut_off: CancellationToken,
}

/// Where one event goes in one group.
enum Target {
    Local {
        id: u64,
        tx: mpsc::Sender<Encoded>,
        cut_off: CancellationToken,
    },
    Remote {
        uid: String,
        node: String,
    },
}

/// One event on its way: what [`EventBus::attempt`] needs to deliver it or reroute it.
struct Publishing<'a> {
    event: &'a Event,
    kind: EventKind,
    encoded: Encoded,
    /// Other nodes' members, once fetched.
    remote: Option<Arc<Vec<MemberRecord>>>,
    /// Members that failed this event, not to be picked again for it.
    failed: Vec<String>,
    /// Deliveries rerouted after a failure.
    again: Vec<Delivery>,
    delivered: usize,
}

struct Delivery {
    group: Arc<str>,
    uid: String,
    target: Target,
    delivered: Counter,
}

impl EventBus {
    pub(crate) fn new(
        node: Arc<str>,
        slow_after: Duration,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            hubs: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            slow_after,
            metrics,
            tasks,
            cluster,
            views: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Hub>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks every cached route stale; called with the lock held, after the change.
    fn moved(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn uid(&self, id: u64) -> String {
        format!("{}/{id}", self.node)
    }

    /// Joins `group` of `hub`; an empty group name makes a group of one.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        hub: &str,
        group: &str,
        kinds: Kinds,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let group: Arc<str> = if group.is_empty() {
            format!("\0solo-{}", self.uid(id)).into()
        } else {
            group.into()
        };
        let hub: Arc<str> = hub.into();
        let (tx, rx) = mpsc::channel(MEMBER_QUEUE);
        let cut_off = CancellationToken::new();
        {
            let mut hubs = self.lock();
            hubs.entry(hub.clone())
                .or_default()
                .groups
                .entry(group.clone())
                .or_default()
                .members
                .push(Member {
                    id,
                    uid: self.uid(id),
                    kinds,
                    tx,
                    cut_off: cut_off.clone(),
                });
            self.moved();
        }
        if let Some(cluster) = &self.cluster {
            let record = MemberRecord {
                uid: self.uid(id),
                node: self.node.to_string(),
                group: group.to_string(),
                kinds: kinds.0,
            };
            if let Err(e) = cluster.redis.add_member(&hub, &record).await {
                // Other nodes will not route to this member until Redis returns and the
                // node registers its members again; local events still reach it.
                tracing::warn!(error = %e, "could not register subscriber in the registry");
            }
        }
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

    fn leave(self: &Arc<Self>, hub: &str, group: &str, id: u64) {
        {
            let mut hubs = self.lock();
            let Some(h) = hubs.get_mut(hub) else { return };
            if let Some(g) = h.groups.get_mut(group) {
                g.members.retain(|m| m.id != id);
                let uid = self.uid(id);
                g.assigned.retain(|_, m| *m != uid);
                if g.members.is_empty() && g.assigned.is_empty() {
                    h.groups.remove(group);
                }
            }
            if h.groups.is_empty() {
                hubs.remove(hub);
            }
            self.moved();
        }
        if let Some(cluster) = &self.cluster {
            let cluster = Arc::clone(cluster);
            let uid = self.uid(id);
            let hub = hub.to_owned();
            self.tasks.spawn(async move {
                let _ = cluster.redis.remove_member(&hub, &uid).await;
            });
        }
    }

    /// Registers every local member again (after Redis lost its data).
    pub(crate) async fn register_members_again(&self) {
        let Some(redis) = self.cluster.as_ref().map(|c| &c.redis) else {
            return;
        };
        let records: Vec<(Arc<str>, MemberRecord)> = self
            .lock()
            .iter()
            .flat_map(|(hub, h)| {
                h.groups.iter().flat_map(move |(group, g)| {
                    g.members.iter().map(move |m| {
                        (
                            hub.clone(),
                            MemberRecord {
                                uid: m.uid.clone(),
                                node: self.node.to_string(),
                                group: group.to_string(),
                                kinds: m.kinds.0,
                            },
                        )
                    })
                })
            })
            .collect();
        for (hub, r) in records {
            let _ = redis.add_member(&hub, &r).await;
        }
    }

    /// Cluster-wide members of `hub` on other nodes, and when that view is due for a refresh
    /// (never, outside a cluster).
    async fn remote_members(&self, hub: &Arc<str>) -> (Arc<Vec<MemberRecord>>, Option<Instant>) {
        let Some(redis) = self.cluster.as_ref().map(|c| &c.redis) else {
            return (Arc::default(), None);
        };
        let cached = self
            .views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hub)
            .cloned();
        if let Some((at, view)) = &cached {
            if at.elapsed() < VIEW_TTL {
                return (Arc::clone(view), Some(*at + VIEW_TTL));
            }
        }
        let view = match redis.members(hub).await {
            Ok(all) => Arc::new(
                all.into_iter()
                    .filter(|m| *m.node != *self.node)
                    .collect::<Vec<_>>(),
            ),
            // Redis is away: keep routing with what we knew.
            Err(_) => cached.map(|(_, v)| v).unwrap_or_default(),
        };
        let at = Instant::now();
        self.views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hub.clone(), (at, Arc::clone(&view)));
        (view, Some(at + VIEW_TTL))
    }

    fn forget_view(&self, hub: &str) {
        self.views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hub);
    }

    /// Delivers one event to one member of every interested group; returns how many groups got
    /// it. Waits for room, cutting off members that stay full for longer than `slow_after`.
    pub(crate) async fn publish(&self, event: Event) -> usize {
        self.publish_via(event, None).await
    }

    /// [`publish`](Self::publish) for one session's events of one kind (its client messages):
    /// routed through its cache, so that while nothing changed no lock is shared with other
    /// sessions.
    pub(crate) async fn publish_cached(&self, event: Event, cache: &RouteCache) -> usize {
        self.publish_via(event, Some(cache)).await
    }

    async fn publish_via(&self, event: Event, cache: Option<&RouteCache>) -> usize {
        let kind = event.kind();
        // Read before routing: a change made meanwhile leaves the route stale, never wrong.
        let epoch = self.epoch.load(Ordering::Acquire);
        let cached = cache.and_then(|c| c.get(kind, epoch));
        let (route, remote) = match cached {
            Some(route) => (route, None),
            None => {
                let (remote, stale_at) = self.remote_members(&event.hub).await;
                let deliveries = self.route(&event.hub, &event.session, kind, &remote, None, &[]);
                let route = Arc::new(Route {
                    kind,
                    epoch,
                    stale_at,
                    deliveries,
                });
                if let Some(c) = cache {
                    c.set(Some(Arc::clone(&route)));
                }
                (route, Some(remote))
            }
        };
        let delivered = self.deliver_route(&event, kind, remote, &route).await;
        if kind == EventKind::Disconnected {
            self.forget(&event.hub, &event.session);
        }
        delivered
    }

    /// Delivers along `route`, rerouting past members that fail; how many groups got it. A
    /// failure drops the member's assignments, which moves the epoch: the route is not used
    /// again.
    async fn deliver_route(
        &self,
        event: &Event,
        kind: EventKind,
        remote: Option<Arc<Vec<MemberRecord>>>,
        route: &Route,
    ) -> usize {
        if route.deliveries.is_empty() {
            // Nobody takes it (a client message then waits in the inbox): not even encoded.
            return 0;
        }
        let mut p = Publishing {
            encoded: Arc::new(crate::api::encode_event(event)),
            event,
            kind,
            remote,
            failed: Vec::new(),
            again: Vec::new(),
            delivered: 0,
        };
        for d in &route.deliveries {
            self.attempt(&mut p, d).await;
        }
        while let Some(d) = p.again.pop() {
            self.attempt(&mut p, &d).await;
        }
        p.delivered
    }

    /// Delivers to one member; when it is gone or too slow, queues the group's next member.
    async fn attempt(&self, p: &mut Publishing<'_>, d: &Delivery) {
        let hub = &p.event.hub;
        if self.deliver(hub, d, &p.encoded).await {
            p.delivered += 1;
            d.delivered.inc();
            return;
        }
        p.failed.push(d.uid.clone());
        self.unassign(hub, &d.group, &d.uid);
        // A cached route came without the view it was made with: fetch it for the reroute.
        let remote = match &p.remote {
            Some(r) => Arc::clone(r),
            None => {
                let r = self.remote_members(hub).await.0;
                p.remote = Some(Arc::clone(&r));
                r
            }
        };
        let next = self.route(
            hub,
            &p.event.session,
            p.kind,
            &remote,
            Some(&d.group),
            &p.failed,
        );
        p.again.extend(next);
    }

    async fn deliver(&self, hub: &Arc<str>, d: &Delivery, event: &Encoded) -> bool {
        match &d.target {
            Target::Local { id, tx, cut_off } => {
                match tokio::time::timeout(self.slow_after, tx.send(Arc::clone(event))).await {
                    Ok(Ok(())) => true,
                    Ok(Err(_)) => false,
                    Err(_) => {
                        tracing::warn!(hub = %hub, group = %visible_group(&d.group), "subscriber too slow; cutting it off");
                        cut_off.cancel();
                        self.metrics.subscribers_cut_off.inc();
                        self.drop_member(hub, &d.group, *id);
                        false
                    }
                }
            }
            Target::Remote { uid, node } => {
                let accepted = self.deliver_remote(node, uid, event).await;
                if !accepted {
                    self.forget_view(hub);
                }
                accepted
            }
        }
    }

    async fn deliver_remote(&self, node: &str, uid: &str, event: &Encoded) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let Some(addr) = cluster.redis.node_addr(node) else {
            return false;
        };
        let Ok(mut peer) = cluster.peer(&addr) else {
            return false;
        };
        let call = peer.deliver(pb::DeliverRequest {
            member: uid.to_owned(),
            event: Some((**event).clone()),
        });
        // The remote side waits at most `slow_after` for its member; allow for the trip.
        match tokio::time::timeout(self.slow_after + Duration::from_secs(2), call).await {
            Ok(Ok(r)) => r.into_inner().accepted,
            Ok(Err(e)) => {
                tracing::debug!(node, error = %e, "event delivery to another node failed");
                false
            }
            Err(_) => false,
        }
    }

    /// Hands an event from another node to a local member; false when it is gone or too slow.
    pub(crate) async fn deliver_local(&self, uid: &str, event: pb::Event) -> bool {
        let Some(id) = uid
            .strip_prefix(&*self.node)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return false;
        };
        let found = self.lock().iter().find_map(|(hub, h)| {
            h.groups.iter().find_map(|(group, g)| {
                g.members
                    .iter()
                    .find(|m| m.id == id)
                    .map(|m| (hub.clone(), group.clone(), m.tx.clone(), m.cut_off.clone()))
            })
        });
        let Some((hub, group, tx, cut_off)) = found else {
            return false;
        };
        let d = Delivery {
            group,
            uid: uid.to_owned(),
            target: Target::Local { id, tx, cut_off },
            // Counted by the node that routed it.
            delivered: Counter::default(),
        };
        self.deliver(&hub, &d, &Arc::new(event)).await
    }

    fn drop_member(&self, hub: &str, group: &str, id: u64) {
        let mut hubs = self.lock();
        if let Some(g) = hubs.get_mut(hub).and_then(|h| h.groups.get_mut(group)) {
            g.members.retain(|m| m.id != id);
        }
        self.moved();
    }

    fn unassign(&self, hub: &str, group: &str, uid: &str) {
        let mut hubs = self.lock();
        if let Some(g) = hubs.get_mut(hub).and_then(|h| h.groups.get_mut(group)) {
            g.assigned.retain(|_, m| m != uid);
        }
        self.moved();
    }

    /// Picks the member of each interested group (all groups, or only `only`), skipping
    /// members that failed during this publish.
    fn route(
        &self,
        hub: &Arc<str>,
        session: &SessionId,
        kind: EventKind,
        remote: &[MemberRecord],
        only: Option<&Arc<str>>,
        failed: &[String],
    ) -> Vec<Delivery> {
        let mut hubs = self.lock();
        let h = hubs.entry(hub.clone()).or_default();
        // Groups known here or elsewhere in the cluster.
        for m in remote {
            if !h.groups.contains_key(m.group.as_str()) {
                h.groups.insert(m.group.as_str().into(), Group::default());
            }
        }
        let mut out = Vec::new();
        for (name, g) in h.groups.iter_mut() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let delivered = g
                .delivered
                .get_or_insert_with(|| self.metrics.subscriber_counter(hub, &visible_group(name)))
                .clone();
            // The usual case: the session's member here still takes this kind.
            let assigned = g.assigned.get(session).and_then(|uid| {
                g.members
                    .iter()
                    .find(|m| m.uid == *uid && m.kinds.wants(kind) && !failed.contains(uid))
            });
            if let Some(m) = assigned {
                out.push(Delivery {
                    group: name.clone(),
                    uid: m.uid.clone(),
                    target: Target::Local {
                        id: m.id,
                        tx: m.tx.clone(),
                        cut_off: m.cut_off.clone(),
                    },
                    delivered,
                });
                continue;
            }
            let mut candidates: Vec<(String, Target)> = g
                .members
                .iter()
                .filter(|m| m.kinds.wants(kind))
                .map(|m| {
                    let target = Target::Local {
                        id: m.id,
                        tx: m.tx.clone(),
                        cut_off: m.cut_off.clone(),
                    };
                    (m.uid.clone(), target)
                })
                .chain(
                    remote
                        .iter()
                        .filter(|m| m.group.as_str() == &**name && Kinds(m.kinds).wants(kind))
                        .map(|m| {
                            let target = Target::Remote {
                                uid: m.uid.clone(),
                                node: m.node.clone(),
                            };
                            (m.uid.clone(), target)
                        }),
                )
                .filter(|(uid, _)| !failed.contains(uid))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            candidates.sort_by(|a, b| a.0.cmp(&b.0));
            let pick = g
                .assigned
                .get(session)
                .and_then(|uid| candidates.iter().position(|c| c.0 == *uid))
                .unwrap_or_else(|| {
                    let i = g.next % candidates.len();
                    g.next = g.next.wrapping_add(1);
                    i
                });
            let (uid, target) = candidates.swap_remove(pick);
            g.assigned.insert(session.clone(), uid.clone());
            out.push(Delivery {
                group: name.clone(),
                uid,
                target,
                delivered,
            });
        }
        // Drop the groups created only for routing if nothing was assigned in them.
        h.groups
            .retain(|_, g| !g.members.is_empty() || !g.assigned.is_empty());
        if h.groups.is_empty() {
            hubs.remove(hub);
        }
        out
    }

    fn forget(&self, hub: &str, session: &SessionId) {
        let mut hubs = self.lock();
        if let Some(h) = hubs.get_mut(hub) {
            for g in h.groups.values_mut() {
                g.assigned.remove(session);
            }
            h.groups
                .retain(|_, g| !g.members.is_empty() || !g.assigned.is_empty());
            if h.groups.is_empty() {
                hubs.remove(hub);
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
        EventBus::new(
            "n1".into(),
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
            TaskTracker::new(),
            None,
        )
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
        let mut a = bus.subscribe("h", "g", Kinds::ALL).await;
        let mut b = bus.subscribe("h", "g", Kinds::ALL).await;
        let mut other = bus.subscribe("h", "other", Kinds::ALL).await;
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
        let mut owner: HashMap<String, &str> = HashMap::new();
        for (name, sub) in [("a", &mut a), ("b", &mut b)] {
            while let Ok(e) = sub.events.try_recv() {
                let prev = owner.insert(e.session_id.clone(), name);
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
        let stuck = bus.subscribe("h", "g", Kinds::ALL).await;
        let mut live = bus.subscribe("h", "g", Kinds::ALL).await;
        let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            let mut n = 0;
            loop {
                tokio::select! {
                    Some(_) = live.events.recv() => n += 1,
                    _ = &mut finished => break,
                }
            }
            while live.events.try_recv().is_ok() {
                n += 1;
            }
            n
        });
        let total = MEMBER_QUEUE * 2 + 10;
        let mut delivered = 0;
        for _ in 0..total {
            delivered += bus
                .publish(disconnected(&SessionId::generate().unwrap()))
                .await;
        }
        assert_eq!(delivered, total, "every event reached the group");
        assert!(stuck.cut_off.is_cancelled());
        done.send(()).unwrap();
        // The stuck member holds its queue's worth; the live one got everything else.
        let live_got = reader.await.unwrap();
        assert_eq!(live_got + MEMBER_QUEUE, total);
    }

    fn message(id: &SessionId, seq: u64) -> Event {
        Event {
            session: id.clone(),
            hub: "h".into(),
            body: EventBody::Message(Inbound {
                seq,
                message: crate::message::Message {
                    kind: crate::message::Kind::Text,
                    payload: bytes::Bytes::from(seq.to_string()),
                },
                client_seq: seq,
            }),
        }
    }

    fn seqs(sub: &mut Subscription) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(e) = sub.events.try_recv() {
            if let Some(pb::event::Kind::Message(m)) = &e.kind {
                out.push(m.seq);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_cached_route_follows_every_change_of_membership() {
        let bus = bus();
        let id = SessionId::generate().unwrap();
        let cache = RouteCache::default();
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            message(&id, seq)
        };
        // Nobody subscribes: not delivered, and the empty route is cached.
        assert_eq!(bus.publish_cached(next(), &cache).await, 0);
        let mut a = bus.subscribe("h", "g", Kinds::ALL).await;
        assert_eq!(
            bus.publish_cached(next(), &cache).await,
            1,
            "a new member is seen"
        );
        assert_eq!(bus.publish_cached(next(), &cache).await, 1);
        let mut other = bus.subscribe("h", "other", Kinds::ALL).await;
        assert_eq!(
            bus.publish_cached(next(), &cache).await,
            2,
            "a new group is seen"
        );
        // A second member of the group does not take the session from the first.
        let mut b = bus.subscribe("h", "g", Kinds::ALL).await;
        assert_eq!(bus.publish_cached(next(), &cache).await, 2);
        assert_eq!(seqs(&mut b), Vec::<u64>::new());
        assert_eq!(seqs(&mut a), [2, 3, 4, 5]);
        // The member the session went to leaves: the next message goes to the other one.
        drop(a);
        assert_eq!(bus.publish_cached(next(), &cache).await, 2);
        assert_eq!(seqs(&mut b), [6]);
        assert_eq!(seqs(&mut other), [4, 5, 6]);
        drop((b, other));
        assert_eq!(
            bus.publish_cached(next(), &cache).await,
            0,
            "a member that left is not sent to"
        );
    }

    #[tokio::test]
    async fn a_session_whose_member_stops_reading_loses_no_message_to_its_cached_route() {
        let bus = bus();
        let id = SessionId::generate().unwrap();
        let cache = RouteCache::default();
        let mut first = bus.subscribe("h", "g", Kinds::ALL).await;
        let mut second = bus.subscribe("h", "g", Kinds::ALL).await;
        assert_eq!(bus.publish_cached(message(&id, 1), &cache).await, 1);
        // Whichever member took the session stops reading; the other reads everything.
        let (mut stuck, live) = if first.events.try_recv().is_ok() {
            (first, second)
        } else {
            assert!(second.events.try_recv().is_ok());
            (second, first)
        };
        let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            let mut live = live;
            let mut got = Vec::new();
            loop {
                tokio::select! {
                    Some(e) = live.events.recv() => if let Some(pb::event::Kind::Message(m)) = &e.kind {
                        got.push(m.seq);
                    },
                    _ = &mut finished => break,
                }
            }
            got.extend(seqs(&mut live));
            got
        });
        // Past the member's queue, so the route cached to it has to fail over.
        let total = 2 * MEMBER_QUEUE as u64 + 10;
        for seq in 2..=total {
            assert_eq!(
                bus.publish_cached(message(&id, seq), &cache).await,
                1,
                "message {seq}"
            );
        }
        assert!(stuck.cut_off.is_cancelled());
        done.send(()).unwrap();
        let mut all = seqs(&mut stuck);
        all.extend(reader.await.unwrap());
        all.sort_unstable();
        assert_eq!(all, (2..=total).collect::<Vec<_>>(), "each message once");
    }

    #[test]
    fn a_cached_route_takes_no_lock_shared_with_other_sessions() {
        // Two workers: one may block on the lock, the other still runs the timer.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bus = bus();
        let id = SessionId::generate().unwrap();
        let cache = Arc::new(RouteCache::default());
        let mut sub = rt.block_on(bus.subscribe("h", "g", Kinds::ALL));
        assert_eq!(rt.block_on(bus.publish_cached(message(&id, 1), &cache)), 1);
        // Another thread holds the bus's lock while the session publishes again.
        let (held, holding) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let locker = &bus;
            scope.spawn(move || {
                let _guard = locker.lock();
                held.send(()).unwrap();
                // Bounded, so a failing test still ends.
                let _ = released.recv_timeout(Duration::from_secs(60));
            });
            holding.recv().unwrap();
            let publishing = {
                let (bus, cache, id) = (Arc::clone(&bus), Arc::clone(&cache), id.clone());
                rt.spawn(async move { bus.publish_cached(message(&id, 2), &cache).await })
            };
            let published = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), publishing).await
            });
            release.send(()).unwrap();
            assert!(
                matches!(published, Ok(Ok(1))),
                "not published while another thread held the lock"
            );
        });
        assert_eq!(seqs(&mut sub), [1, 2]);
    }

    #[tokio::test]
    async fn leaving_removes_the_member() {
        let bus = bus();
        let sub = bus.subscribe("h", "", Kinds::ALL).await;
        assert_eq!(
            bus.publish(disconnected(&SessionId::generate().unwrap()))
                .await,
            1
        );
        drop(sub);
        assert!(
            bus.lock().is_empty(),
            "the hub is gone with its last member"
        );
        assert_eq!(
            bus.publish(disconnected(&SessionId::generate().unwrap()))
                .await,
            0
        );
    }
}
