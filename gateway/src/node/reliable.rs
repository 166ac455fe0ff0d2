//! Reliable sessions on the node (docs/reliable.md): backend messages numbered and kept until
//! the client acknowledges them, client messages acknowledged once a backend has them, and a
//! session that outlives its connection (suspended) until its client resumes here or on
//! another node.
//!
//! Without Redis the kept messages live in [`Reliable`]; with Redis they are written there
//! *before* a `Send` is answered, so they survive the node. Every step that numbers a message,
//! replays, or hands the session from one connection to the next holds the session's `order`
//! lock: frames reach the socket in `seq` order and a replay never interleaves with a send.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt;

use super::{Node, Sent};
use crate::{
    api::convert,
    error::{Error, Result},
    events::{Event, EventBody},
    frame::close_code,
    message::Message,
    registry::{Appended, NewState, RedisRegistry},
    reliable::{self, Counters, FromClient, Receive, Reliable, ResumeRequest, Token},
    session::{Closer, Flush, Inbound, SendError, Session, SessionEnd, SessionId},
};

/// How long a node that lost a session to a resume elsewhere keeps trying to hand a message
/// to the new holder (which may not have it in its pool for a moment).
const HAND_ON_FOR: Duration = Duration::from_secs(2);

/// Kept messages a catch-up reads and queues at a time.
const CATCH_UP_BATCH: usize = 256;

/// How long a resume waits for the node that held the session to release it.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// A session a resume found: what the new connection takes over.
pub(crate) struct Found {
    pub reliable: Arc<Reliable>,
    pub user: String,
    pub groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// The previous connection, when it is on this node.
    pub previous: Option<Arc<Session>>,
}

impl Node {
    fn journal(&self) -> Option<&RedisRegistry> {
        self.registry.cluster().map(|c| &c.redis)
    }

    /// A new reliable session's state, and (with Redis) its record there.
    pub(crate) async fn start_reliable(
        &self,
        id: &SessionId,
        hub: &str,
        user: &str,
        groups: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<(Arc<Reliable>, Token)> {
        let token = Token::generate()
            .map_err(|e| Error::InvalidArgument(format!("no randomness for a token: {e}")))?;
        let digest = reliable::digest(&token.0);
        if let Some(redis) = self.journal() {
            redis
                .rel_create(
                    id.as_str(),
                    NewState {
                        token: &digest,
                        owner: &self.id,
                        hub,
                        user,
                        groups,
                        metadata,
                    },
                )
                .await?;
        }
        Ok((Reliable::new(digest, Counters::default()), token))
    }

    /// Finds the session a resume names and checks its token; with Redis, takes it over from
    /// whichever node held it. `None`: refuse (the reason is logged, never the token); `Err`:
    /// Redis did not answer, so nothing can be said yet (the client should try again).
    pub(crate) async fn find_for_resume(
        &self,
        req: &ResumeRequest,
        hub: &str,
    ) -> Result<Option<Found>> {
        let Some(id) = SessionId::parse(&req.session) else {
            tracing::info!(session = %req.session, "resume refused: not a session ID");
            return Ok(None);
        };
        if let Some(s) = self.pool.get(&id) {
            let Some(rel) = s.reliable.clone() else {
                tracing::info!(session = %id, "resume refused: not a reliable session");
                return Ok(None);
            };
            if !rel.token_matches(&req.token) || *s.hub != *hub {
                tracing::info!(session = %id, "resume refused: wrong token or hub");
                return Ok(None);
            }
            return Ok(Some(Found {
                reliable: rel,
                user: s.user.as_deref().unwrap_or_default().to_owned(),
                groups: s.groups().iter().map(|g| g.to_string()).collect(),
                metadata: s.metadata.clone(),
                previous: Some(s),
            }));
        }
        let Some(redis) = self.journal() else {
            tracing::info!(session = %id, "resume refused: unknown session");
            return Ok(None);
        };
        let claimed = match redis.rel_claim(id.as_str(), &req.token, &self.id).await {
            Ok(Some(c)) if c.hub == hub => c,
            Ok(Some(_)) => {
                tracing::info!(session = %id, "resume refused: another hub's session");
                return Ok(None);
            }
            Ok(None) => {
                tracing::info!(session = %id, "resume refused: unknown, expired or wrong token");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "resume deferred: registry unavailable");
                return Err(e.into());
            }
        };
        tracing::info!(session = %id, from = %claimed.previous, "session taken over for a resume");
        let mut counters = claimed.counters;
        let (released, pending) = self.release_at(&claimed.previous, &id).await;
        // The previous holder records its progress before it lets go, also when it let go on
        // its own (it saw the session move) before our call: read it again after the call.
        let recorded = match redis.rel_in(id.as_str()).await {
            Ok(n) => n,
            Err(e) => return Err(e.into()),
        };
        counters.taken = counters.taken.max(released).max(recorded);
        let rel = Reliable::new(reliable::digest(&req.token), counters);
        if let Some(m) = pending {
            rel.adopt_answer(m);
        }
        Ok(Some(Found {
            reliable: rel,
            user: claimed.user,
            groups: claimed.groups,
            metadata: claimed.metadata,
            previous: None,
        }))
    }

    /// Asks the live node that held a session to let it go (see [`Node::release`]): the last
    /// client seq taken there, and the `Read` answer not confirmed yet. Nothing when it cannot
    /// answer (it died: what it handed out may then come again, see docs/reliable.md).
    async fn release_at(&self, previous: &str, id: &SessionId) -> (u64, Option<Inbound>) {
        let Some(cluster) = self.registry.cluster() else {
            return (0, None);
        };
        if previous.is_empty() || previous == &*self.id || !cluster.redis.is_live(previous) {
            return (0, None);
        }
        let Some(addr) = cluster.redis.node_addr(previous) else {
            return (0, None);
        };
        let Ok(mut peer) = cluster.peer(&addr) else {
            return (0, None);
        };
        let call = peer.release(switchboard_proto::v1::ReleaseRequest {
            session_id: id.to_string(),
        });
        match tokio::time::timeout(RELEASE_WAIT, call).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                (r.taken, r.pending.and_then(convert::from_inbound))
            }
            Ok(Err(e)) => {
                tracing::warn!(session = %id, node = previous, error = %e, "previous holder did not release the session");
                (0, None)
            }
            Err(_) => {
                tracing::warn!(session = %id, node = previous, "previous holder did not answer a release in time");
                (0, None)
            }
        }
    }

    /// Makes `s` the connection of its reliable session: the welcome, then (for a resume)
    /// every kept message after `after`, before anything new.
    pub(crate) async fn open_reliable(
        &self,
        s: &Arc<Session>,
        token: &str,
        resumed: Option<u64>,
    ) -> Result<()> {
        let Some(rel) = s.reliable.clone() else {
            return Ok(());
        };
        let _order = rel.order.lock().await;
        let window = self.config.resume_window.as_millis() as u64;
        let welcome =
            reliable::welcome_frame(s.id.as_str(), token, resumed.is_some(), rel.taken(), window);
        let _ = s.send(welcome, Flush::Batched);
        rel.set_current(s);
        // What the client missed goes out from the kept messages, as the queue has room.
        let after = resumed.unwrap_or(0);
        rel.set_pushed(after);
        if rel.out() > after {
            self.catch_up(s, &rel);
        }
        Ok(())
    }

    /// Starts writing kept messages the connection has not had (a resume's replay, or a burst
    /// larger than the outbound queue), in order and as the queue takes them; meanwhile new
    /// messages are only kept, and the same task writes them in turn.
    fn catch_up(&self, s: &Arc<Session>, rel: &Arc<Reliable>) {
        if !rel.start_catching_up() {
            return;
        }
        let cluster = self.registry.cluster().cloned();
        let (s, rel) = (Arc::clone(s), Arc::clone(rel));
        self.ctx.tasks.spawn(async move {
            loop {
                s.room(1).await;
                let _order = rel.order.lock().await;
                let live = rel.current().is_some_and(|c| Arc::ptr_eq(&c, &s));
                let from = rel.pushed();
                if !live || !s.is_open() || from >= rel.out() {
                    rel.stop_catching_up();
                    return;
                }
                let batch = match &cluster {
                    None => rel.journal_after(from, CATCH_UP_BATCH),
                    Some(c) => match c.redis.rel_after(s.id.as_str(), from, CATCH_UP_BATCH).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(session = %s.id, error = %e, "cannot read kept messages; the client will resume");
                            rel.stop_catching_up();
                            s.close(close_code::TRY_AGAIN_LATER, "resume again", Closer::Gateway, false);
                            return;
                        }
                    },
                };
                for (seq, m) in batch {
                    if seq != rel.pushed() + 1 {
                        // Trimmed meanwhile (acknowledged) or not there: nothing to fill the
                        // gap with, so the client resumes and says where it stands.
                        rel.stop_catching_up();
                        s.close(close_code::TRY_AGAIN_LATER, "resume again", Closer::Gateway, false);
                        return;
                    }
                    match s.send(reliable::message_frame(seq, &m), Flush::Now) {
                        Ok(()) => rel.set_pushed(seq),
                        Err(SendError::QueueFull) => break,
                        Err(SendError::Gone) => {
                            rel.stop_catching_up();
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Numbers and keeps a backend message for a reliable session, then writes it if the
    /// client is connected. `Ok` means it is kept: it reaches the client, now or after a
    /// resume, unless the session ends.
    pub(crate) async fn send_reliable(
        &self,
        s: &Arc<Session>,
        rel: &Arc<Reliable>,
        message: &Message,
        message_id: &str,
    ) -> Result<Sent> {
        let _order = rel.order.lock().await;
        let max = self.config.resume_buffer.get();
        let seq = match self.journal() {
            None => {
                if rel.unacked() >= max as u64 {
                    return Err(self.resume_buffer_full(s, rel).await);
                }
                if !rel.remember(message_id, max) {
                    return Ok(Sent::default());
                }
                let seq = rel.next_seq();
                rel.journal_push(seq, message.clone());
                seq
            }
            Some(redis) => match self
                .append_or_restore(redis, s, rel, message, message_id, max)
                .await?
            {
                Appended::Seq(seq) => {
                    rel.assigned(seq);
                    seq
                }
                Appended::Duplicate => return Ok(Sent::default()),
                Appended::Full => return Err(self.resume_buffer_full(s, rel).await),
                Appended::Moved | Appended::Gone => {
                    drop(_order);
                    self.lost_to_resume(s).await;
                    return Err(Error::Moved(s.id.clone()));
                }
            },
        };
        let mut sent = Sent {
            written_at: None,
            kept: Some((Arc::clone(rel), seq)),
        };
        match rel.current() {
            // Behind: the catch-up task writes it in turn.
            Some(_) if rel.is_catching_up() => {}
            Some(live) => {
                match live.send_tracked(reliable::message_frame(seq, message), Flush::Now) {
                    Ok(at) => {
                        rel.set_pushed(seq);
                        sent.written_at = Some((live, at));
                    }
                    Err(SendError::Gone) => {}
                    // Kept, not lost: it goes out from the kept messages as the queue drains (a
                    // client that stops reading is still closed by the slow-consumer grace).
                    Err(SendError::QueueFull) => self.catch_up(&live, rel),
                }
            }
            None => {}
        }
        Ok(sent)
    }

    /// Appends to the session's kept messages in Redis. If Redis lost the session's state (a
    /// restart without persistence) while this node holds it, the state is written again
    /// from what this node knows, and the append retried once.
    async fn append_or_restore(
        &self,
        redis: &RedisRegistry,
        s: &Arc<Session>,
        rel: &Reliable,
        message: &Message,
        message_id: &str,
        max: usize,
    ) -> Result<Appended> {
        let id = s.id.as_str();
        let first = redis
            .rel_append(id, &self.id, message, message_id, max, false)
            .await?;
        let ours = self.pool.get(&s.id).is_some_and(|p| {
            p.reliable
                .as_ref()
                .is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), rel))
        });
        if first != Appended::Gone || !ours {
            return Ok(first);
        }
        tracing::warn!(session = %s.id, "reliable session's state missing in redis; writing it again");
        let groups: Vec<String> = s.groups().iter().map(|g| g.to_string()).collect();
        redis
            .rel_restore(
                id,
                NewState {
                    token: rel.token_digest(),
                    owner: &self.id,
                    hub: &s.hub,
                    user: s.user.as_deref().unwrap_or_default(),
                    groups: &groups,
                    metadata: &s.metadata,
                },
                rel.counters(),
            )
            .await?;
        Ok(redis
            .rel_append(id, &self.id, message, message_id, max, false)
            .await?)
    }

    /// A `Send` this node could not keep because the session moved: hand it to the holder.
    pub(crate) async fn hand_on(
        &self,
        id: &SessionId,
        message: &Message,
        message_id: &str,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + HAND_ON_FOR;
        loop {
            let r = match self.route(super::Scope::Cluster, id).await? {
                super::Route::There { mut peer } => peer
                    .send(switchboard_proto::v1::SendRequest {
                        session_id: id.to_string(),
                        message: Some(crate::api::to_pb_message(message)),
                        message_id: message_id.to_owned(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(Error::Remote),
                super::Route::Here => Err(Error::Moved(id.clone())),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Whether `id` is a reliable session whose state in Redis is held by `owner`, a node that
    /// is gone: nobody holds it until its client resumes.
    pub(crate) async fn is_orphan(&self, id: &SessionId, owner: &str) -> bool {
        let Some(redis) = self.journal() else {
            return false;
        };
        !redis.is_live(owner)
            && redis
                .rel_owner(id.as_str())
                .await
                .ok()
                .flatten()
                .is_some_and(|o| o == owner)
    }

    /// A `Send` to a session not in this node's pool: kept in Redis if it is a reliable
    /// session whose node is gone, else the usual "not found" or "closed".
    pub(crate) async fn send_orphan(
        &self,
        id: &SessionId,
        message: &Message,
        message_id: &str,
    ) -> Result<()> {
        let Some(redis) = self.journal() else {
            return Err(self.missing(id).await);
        };
        let Some(owner) = redis.rel_owner(id.as_str()).await? else {
            return Err(self.missing(id).await);
        };
        if owner == *self.id {
            return Err(self.missing(id).await);
        }
        if redis.is_live(&owner) {
            // Moving (a resume on that node); the registry catches up in a moment.
            return self.hand_on(id, message, message_id).await;
        }
        let max = self.config.resume_buffer.get();
        match redis
            .rel_append(id.as_str(), &owner, message, message_id, max, true)
            .await?
        {
            Appended::Seq(_) | Appended::Duplicate => Ok(()),
            Appended::Full => Err(Error::ResumeBufferFull(id.clone())),
            Appended::Moved => self.hand_on(id, message, message_id).await,
            Appended::Gone => Err(self.missing(id).await),
        }
    }

    /// More than `--resume-buffer` messages wait for the client's ack: the session ends.
    async fn resume_buffer_full(&self, s: &Arc<Session>, rel: &Reliable) -> Error {
        const WHY: &str = "resume buffer full";
        tracing::warn!(session = %s.id, hub = %s.hub, "reliable session over its resume buffer; ending it");
        match rel.current() {
            Some(live) if live.is_open() => {
                live.close(close_code::POLICY, WHY, Closer::Gateway, true);
            }
            _ => {
                let end = SessionEnd {
                    code: close_code::POLICY,
                    reason: WHY.into(),
                    closed_by: Closer::Gateway,
                };
                let s = Arc::clone(s);
                self.forget_reliable(&s).await;
                if s.is_suspended() {
                    self.metrics.sessions_suspended.dec();
                }
                s.reclose(end.clone());
                self.retire(&s, end).await;
            }
        }
        Error::ResumeBufferFull(s.id.clone())
    }

    /// Another node resumed this session: this node's connection (if any) is closed with 4001
    /// and its entry leaves the pool without an event (the session lives on there). Answers
    /// the `Read` answer a backend has not confirmed, for the new holder to answer again.
    pub(crate) async fn lost_to_resume(&self, s: &Arc<Session>) -> Option<Inbound> {
        let rel = s.reliable.as_ref()?;
        let _order = rel.order.lock().await;
        let current = self.pool.get(&s.id)?;
        if !current
            .reliable
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, rel))
        {
            return None;
        }
        tracing::info!(session = %s.id, "session resumed on another node");
        // No answer goes out from here after this. The last one is not counted as taken: its
        // answer may have been lost on the way (the backend's call timed out, or a node that
        // forwarded it died). It goes to the new holder; when it cannot (this node learnt of
        // the move on its own), the client resends it, and a backend may see it twice.
        let pending = rel.release();
        if let Some(redis) = self.journal() {
            if let Err(e) = redis.rel_taken(s.id.as_str(), rel.taken()).await {
                tracing::warn!(session = %s.id, error = %e, "could not record the client's progress at a release");
            }
        }
        current.close(reliable::REPLACED, "replaced", Closer::Gateway, true);
        current.finish(SessionEnd {
            code: reliable::REPLACED,
            reason: "resumed elsewhere".into(),
            closed_by: Closer::Gateway,
        });
        if current.is_suspended() {
            self.metrics.sessions_suspended.dec();
        }
        // Not kept for a late Read: the client, never acknowledged for these, sends them to
        // the node that has the session now.
        current.inbox.seal();
        // The stream's unacknowledged messages are dropped with the rest: the client sends
        // them to the new holder.
        current.end_attachment(Error::Moved(current.id.clone()));
        self.pool.remove(&current);
        self.metrics.sessions_open.dec();
        pending
    }

    /// Another node took this reliable session over: what backends confirmed is recorded;
    /// what waits in the inbox is dropped (the client, never acknowledged for it, sends it to
    /// the new node); the session leaves this node. Answers the last client seq taken (0 if
    /// not held here) and the `Read` answer not confirmed yet.
    pub(crate) async fn release(&self, id: &SessionId) -> (u64, Option<Inbound>) {
        let Some(s) = self.pool.get(id) else {
            return (0, None);
        };
        let Some(rel) = s.reliable.clone() else {
            return (0, None);
        };
        let pending = self.lost_to_resume(&s).await;
        (rel.taken(), pending)
    }

    /// Acts on one envelope from a reliable client; `Err` with the close code and why when it
    /// breaks the protocol.
    pub(crate) async fn client_envelope(
        &self,
        s: &Arc<Session>,
        rel: &Arc<Reliable>,
        message: Message,
    ) -> std::result::Result<Option<(Message, u64)>, (u16, String)> {
        match reliable::parse(&message)? {
            FromClient::Ack(seq) => {
                if !rel.client_acked(seq) {
                    return Err((
                        close_code::PROTOCOL_ERROR,
                        format!("ack {seq} is beyond the last seq sent"),
                    ));
                }
                self.ctx.receipts.progress();
                if let Some(redis) = self.journal() {
                    if let Err(e) = redis.rel_acked(s.id.as_str(), seq).await {
                        tracing::warn!(session = %s.id, error = %e, "could not trim acknowledged messages");
                    }
                }
                Ok(None)
            }
            FromClient::Message { seq, message } => match rel.receive(seq) {
                Receive::New => Ok(Some((message, seq))),
                Receive::Duplicate => {
                    self.metrics.reliable_duplicates.inc();
                    let taken = rel.taken();
                    if taken >= seq {
                        let _ = s.send(reliable::ack_frame(taken), Flush::Now);
                    }
                    Ok(None)
                }
                Receive::Gap { expected } => Err((
                    close_code::PROTOCOL_ERROR,
                    format!("sequence gap: expected seq {expected}, got {seq}"),
                )),
            },
        }
    }

    /// A backend has client message `seq` of `s`: record it, then tell the client. One task
    /// per session at a time, which acknowledges the highest mark reached meanwhile.
    pub(crate) fn taken(&self, s: &Session, seq: u64) {
        let Some(rel) = &s.reliable else { return };
        if seq == 0 || !rel.take(seq) || !rel.start_acking() {
            return;
        }
        let rel = Arc::clone(rel);
        let id = s.id.clone();
        let cluster = self.registry.cluster().cloned();
        self.ctx.tasks.spawn(async move {
            let mut acked = 0;
            loop {
                let mark = rel.taken();
                if mark > acked {
                    if let Some(c) = &cluster {
                        // Recorded before the ack: a client that saw the ack never resends, and
                        // a node taking over knows where the client's messages stand.
                        if let Err(e) = c.redis.rel_taken(id.as_str(), mark).await {
                            tracing::warn!(session = %id, error = %e, "could not record the client's progress");
                        }
                    }
                    if let Some(live) = rel.current() {
                        let _ = live.send(reliable::ack_frame(mark), Flush::Now);
                    }
                    acked = mark;
                }
                rel.stop_acking();
                if rel.taken() == acked || !rel.start_acking() {
                    break;
                }
            }
        });
    }

    /// A connection of a reliable session ended: the session is suspended (the connection
    /// dropped, or the gateway closed it for a reason a resume fixes), ends (the client or a
    /// backend closed it), or lives on in a newer connection.
    pub(crate) async fn reliable_connection_ended(
        self: &Arc<Self>,
        s: &Arc<Session>,
        rel: &Arc<Reliable>,
        end: SessionEnd,
    ) -> SessionEnd {
        let order = rel.order.lock().await;
        let current = rel.current().is_some_and(|c| Arc::ptr_eq(&c, s))
            && self.pool.get(&s.id).is_some_and(|p| Arc::ptr_eq(&p, s));
        if !current {
            return s.finish(end);
        }
        if !suspends(&end) {
            drop(order);
            self.forget_reliable(s).await;
            return self.retire(s, end).await;
        }
        let end = s.finish(end);
        if let Some(redis) = self.journal() {
            match redis
                .rel_suspend(s.id.as_str(), &self.id, self.config.resume_window)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    drop(order);
                    self.lost_to_resume(s).await;
                    return end;
                }
                Err(e) => {
                    tracing::warn!(session = %s.id, error = %e, "could not start the resume window in redis")
                }
            }
        }
        s.set_suspended(true);
        self.metrics.sessions_suspended.inc();
        drop(order);
        // Announced before the record says "suspended": a node killed in between leaves the
        // announcement to the reaper (which skips records already marked), so backends hear
        // it at least once.
        self.events
            .publish(Event {
                session: s.id.clone(),
                hub: s.hub.clone(),
                body: EventBody::Suspended(end.clone()),
            })
            .await;
        if let Err(e) = self.registry.register(s.record()).await {
            tracing::warn!(session = %s.id, error = %e, "could not record the suspension");
        }
        if let Some(redis) = self.journal() {
            // Should this node die, the record leaves with the session's state.
            if let Err(e) = redis
                .rel_record_ttl(s.id.as_str(), Some(self.config.resume_window))
                .await
            {
                tracing::warn!(session = %s.id, error = %e, "could not give the record a TTL");
            }
        }
        tracing::info!(code = end.code, reason = %end.reason, "session suspended; waiting for a resume");
        self.start_window(s, rel, end.clone());
        end
    }

    /// The resume window of a suspended session: it ends when the window passes, unless it
    /// was resumed (here or elsewhere) meanwhile.
    fn start_window(self: &Arc<Self>, s: &Arc<Session>, rel: &Arc<Reliable>, end: SessionEnd) {
        let node = Arc::clone(self);
        let s = Arc::clone(s);
        let rel = Arc::clone(rel);
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(node.config.resume_window) => {}
                // Drained or shutting down: with Redis the state waits there for a resume
                // elsewhere; without, nothing survives the process.
                _ = node.shutdown.cancelled() => {
                    if node.journal().is_some() {
                        return;
                    }
                }
            }
            node.expire(&s, &rel, end).await;
        });
    }

    /// A reliable session of a dead node, suspended by the reaper: this node takes it, as a
    /// session without a connection, so what is sent or published to it is kept until its
    /// client resumes (here or on any node), and it ends when its window passes.
    pub(crate) async fn adopt(self: &Arc<Self>, r: &crate::registry::SessionRecord) {
        let Some(redis) = self.journal() else { return };
        let claimed = match redis.rel_adopt(r.id.as_str(), &r.node, &self.id).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(session = %r.id, error = %e, "could not adopt a lost node's session; it waits in redis");
                return;
            }
        };
        let rel = Reliable::new(claimed.token, claimed.counters);
        let s = Session::new(
            crate::session::Admission {
                id: r.id.clone(),
                hub: Arc::from(claimed.hub.as_str()),
                user: (!claimed.user.is_empty()).then(|| Arc::from(claimed.user.as_str())),
                groups: claimed
                    .groups
                    .iter()
                    .map(|g| Arc::from(g.as_str()))
                    .collect(),
                metadata: claimed.metadata,
                remote_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                subprotocol: Some(Arc::from(reliable::PROTOCOL)),
                deflate: None,
                transport: crate::session::Transport::Http1,
                reliable: Some(Arc::clone(&rel)),
            },
            crate::session::QueueLimits {
                messages: 1,
                bytes: 1,
            },
            crate::session::Inbox::new(1, 1, self.inbox_gauges.clone()),
            Arc::clone(&self.ctx),
            None,
        );
        let end = s.finish(crate::registry::node_lost());
        s.set_suspended(true);
        self.pool.insert(Arc::clone(&s));
        self.metrics.sessions_open.inc();
        self.metrics.sessions_suspended.inc();
        if let Err(e) = redis
            .rel_suspend(r.id.as_str(), &self.id, self.config.resume_window)
            .await
        {
            tracing::warn!(session = %r.id, error = %e, "could not start an adopted session's window");
        }
        if let Err(e) = self.registry.register(s.record()).await {
            tracing::warn!(session = %r.id, error = %e, "could not record an adopted session");
        }
        if let Err(e) = redis
            .rel_record_ttl(r.id.as_str(), Some(self.config.resume_window))
            .await
        {
            tracing::warn!(session = %r.id, error = %e, "could not give the record a TTL");
        }
        tracing::info!(session = %r.id, from = %r.node, "adopted a lost node's suspended session");
        self.start_window(&s, &rel, end);
    }

    /// A backend closed a suspended session: it ends now.
    pub(crate) async fn end_suspended(&self, s: &Arc<Session>, end: SessionEnd) {
        let Some(rel) = &s.reliable else { return };
        let order = rel.order.lock().await;
        let still = self.pool.get(&s.id).is_some_and(|p| Arc::ptr_eq(&p, s)) && s.is_suspended();
        drop(order);
        if still {
            self.metrics.sessions_suspended.dec();
            self.forget_reliable(s).await;
            s.reclose(end.clone());
            self.retire(s, end).await;
        }
    }

    /// A reliable session's groups changed: a resume on another node must find them.
    pub(crate) async fn reliable_groups_changed(&self, s: &Session) -> Result<()> {
        if let (Some(_), Some(redis)) = (&s.reliable, self.journal()) {
            let groups: Vec<String> = s.groups().iter().map(|g| g.to_string()).collect();
            redis.rel_set_groups(s.id.as_str(), &groups).await?;
        }
        Ok(())
    }

    /// Draining with Redis: waits, up to `deadline`, until every reliable session suspended
    /// here has been resumed on another node, while the backend API still serves, so that a
    /// message sent meanwhile is kept for it. Whatever is left waits in Redis.
    pub(crate) async fn hand_over(&self, deadline: tokio::time::Instant) {
        if self.journal().is_none() {
            return;
        }
        loop {
            let left: Vec<Arc<Session>> = self
                .pool
                .all()
                .into_iter()
                .filter(|s| s.is_suspended())
                .collect();
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(
                    sessions = left.len(),
                    "suspended sessions left for a resume elsewhere"
                );
                return;
            }
            futures_util::stream::iter(left)
                .for_each_concurrent(64, |s| async move {
                    let _ = self.moved_away(&s).await;
                })
                .await;
            tokio::time::sleep_until(
                (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline),
            )
            .await;
        }
    }

    /// A dead node's reliable session: its state in Redis gets the resume window as TTL, as
    /// its node would have given it on a suspension, and this node adopts it.
    pub(crate) async fn suspend_orphan(self: &Arc<Self>, r: &crate::registry::SessionRecord) {
        if let Some(redis) = self.journal() {
            if let Err(e) = redis
                .rel_suspend(r.id.as_str(), &r.node, self.config.resume_window)
                .await
            {
                tracing::warn!(session = %r.id, error = %e, "could not start a lost node's session's resume window");
            }
        }
        self.adopt(r).await;
    }

    /// Whether another node took this reliable session over (it then leaves this node quietly).
    pub(crate) async fn moved_away(
        &self,
        s: &Arc<Session>,
    ) -> std::result::Result<bool, crate::registry::RegistryError> {
        let Some(redis) = self.journal() else {
            return Ok(false);
        };
        let owner = redis.rel_owner(s.id.as_str()).await?;
        if owner.is_some_and(|o| o != *self.id) {
            self.lost_to_resume(s).await;
            return Ok(true);
        }
        Ok(false)
    }

    /// The resume window passed: the session ends, unless it was resumed meanwhile.
    async fn expire(&self, s: &Arc<Session>, rel: &Arc<Reliable>, end: SessionEnd) {
        if self.moved_away(s).await.unwrap_or(false) {
            return;
        }
        let order = rel.order.lock().await;
        let still = rel.current().is_some_and(|c| Arc::ptr_eq(&c, s))
            && self.pool.get(&s.id).is_some_and(|p| Arc::ptr_eq(&p, s));
        drop(order);
        if !still {
            return;
        }
        self.metrics.sessions_suspended.dec();
        self.forget_reliable(s).await;
        let end = SessionEnd {
            reason: format!("{}; not resumed within the resume window", end.reason),
            ..end
        };
        s.reclose(end.clone());
        self.retire(s, end).await;
    }

    /// A resumed connection takes the place of the previous one: pool, registry, event.
    pub(crate) async fn admit_resumed(&self, s: &Arc<Session>, previous: Option<&Arc<Session>>) {
        if let Some(prev) = previous {
            if prev.is_suspended() {
                self.metrics.sessions_suspended.dec();
            } else {
                prev.close(reliable::REPLACED, "replaced", Closer::Gateway, true);
            }
            // Client messages no backend took yet follow the session, in order.
            // A backend attached to the old connection attaches again, to this one; what its
            // stream was sent and did not acknowledge comes first (it left the inbox first),
            // then what waits in the inbox, sealed so that the old connection's reader cannot
            // add one behind them. A new connection's inbox is never sealed.
            let unacked = prev.end_attachment(Error::Moved(s.id.clone()));
            let waiting = prev.inbox.seal();
            let _ = s.inbox.requeue(unacked.into_iter().chain(waiting));
        } else {
            self.metrics.sessions_open.inc();
        }
        self.pool.insert(Arc::clone(s));
        self.metrics.resumes.inc();
        let record = s.record();
        if let Err(e) = self.registry.register(record.clone()).await {
            tracing::warn!(session = %s.id, error = %e, "could not register the resumed session");
        }
        if let Some(redis) = self.journal() {
            // A resume on the same node ends the window its suspension started in Redis too
            // (a claim from another node did so already): the state must not expire under a
            // live session.
            if let Err(e) = redis.rel_resumed(s.id.as_str(), &self.id).await {
                tracing::warn!(session = %s.id, error = %e, "could not end the resume window in redis");
            }
            if let Err(e) = redis.rel_record_ttl(s.id.as_str(), None).await {
                tracing::warn!(session = %s.id, error = %e, "could not take the record's TTL off");
            }
        }
        self.events
            .publish(Event {
                session: s.id.clone(),
                hub: s.hub.clone(),
                body: EventBody::Resumed(Box::new(record)),
            })
            .await;
    }

    /// Drops an ended reliable session's kept state.
    async fn forget_reliable(&self, s: &Session) {
        if let Some(redis) = self.journal() {
            if let Err(e) = redis.rel_forget(s.id.as_str(), &self.id).await {
                tracing::warn!(session = %s.id, error = %e, "could not remove the session's kept messages");
            }
        }
    }
}

/// Whether a connection that ended this way leaves its reliable session suspended.
fn suspends(end: &SessionEnd) -> bool {
    match end.closed_by {
        // No close frame: the connection dropped.
        Closer::Client => end.code == close_code::ABNORMAL,
        Closer::Gateway => matches!(
            end.code,
            close_code::GOING_AWAY
                | close_code::ABNORMAL
                | close_code::SERVICE_RESTART
                | close_code::TRY_AGAIN_LATER
                | 1011
                | reliable::REPLACED
        ),
        Closer::Backend | Closer::NodeLost => false,
    }
}
