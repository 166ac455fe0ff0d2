//! One client session: identity, counters, lifecycle, outbound queue and inbox.
//!
//! The session's reader task (`client::connection`) owns the socket's read half and decides
//! when the session ends; everything else (gRPC calls, fan-out, the sweeper) talks to the
//! session through this handle.

pub(crate) mod acks;
pub(crate) mod inbox;
pub(crate) mod outbound;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::model::{Closer, SessionEnd, SessionId};
pub(crate) use inbox::{Inbound, Inbox};
pub(crate) use outbound::{EnqueueError, Flush, Outbound, QueueLimits, Writer};

use crate::{
    deflate::Deflate,
    frame::{self, close_code},
    metrics::Metrics,
    model::{SessionCounters, SessionRecord},
    reliable::Reliable,
};

/// A monotonic millisecond clock shared by all sessions, with its wall-clock origin, so a
/// session stores timestamps as one atomic `u64`.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    start_wall: SystemTime,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn wall(&self, ms: u64) -> SystemTime {
        self.start_wall + Duration::from_millis(ms)
    }

    /// When the clock started: the node's start, for its uptime.
    pub(crate) fn started_at(&self) -> SystemTime {
        self.start_wall
    }
}

/// What every session shares with the rest of the node.
pub(crate) struct SessionContext {
    pub metrics: Arc<Metrics>,
    pub tasks: TaskTracker,
    pub clock: Clock,
    pub close_timeout: Duration,
    /// How long a socket may take no byte while there is something to write.
    pub write_timeout: Duration,
    pub node: Arc<str>,
    /// Wakes `Send` calls waiting for a delivery receipt.
    pub receipts: Receipts,
}

/// Wakes delivery receipts when bytes are written or a reliable client acknowledges. One per
/// node rather than per session: a session costs nothing for it, and a write looks at one
/// shared counter only (waiters are rare).
#[derive(Default)]
pub(crate) struct Receipts {
    waiters: std::sync::atomic::AtomicUsize,
    notify: Notify,
}

impl Receipts {
    /// Something a receipt may wait for happened.
    pub(crate) fn progress(&self) {
        if self.waiters.load(Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Waits until `reached` says yes, or `deadline`; re-checks after every progress.
    pub(crate) async fn wait(
        &self,
        deadline: tokio::time::Instant,
        mut reached: impl FnMut() -> bool,
    ) {
        self.waiters.fetch_add(1, Relaxed);
        let _done = WaiterGuard(&self.waiters);
        loop {
            let woken = self.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if reached() {
                return;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return;
            }
        }
    }
}

struct WaiterGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Why a message could not be queued for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// Closing or closed: the message will never reach the client.
    Gone,
    /// The outbound queue is at its bound.
    QueueFull,
}

/// What carries a session's WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Its own connection, after an HTTP/1.1 Upgrade.
    Http1,
    /// One stream of an HTTP/2 connection, after an extended CONNECT (RFC 8441).
    Http2,
}

impl Transport {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Http1 => "http1",
            Transport::Http2 => "http2",
        }
    }
}

/// Fields fixed when the session is admitted.
pub(crate) struct Admission {
    pub id: SessionId,
    pub hub: Arc<str>,
    pub user: Option<Arc<str>>,
    pub groups: BTreeSet<Arc<str>>,
    pub metadata: BTreeMap<String, String>,
    pub remote_addr: SocketAddr,
    pub subprotocol: Option<Arc<str>>,
    pub deflate: Option<Deflate>,
    pub transport: Transport,
    /// Set for a `switchboard.reliable.v1` session.
    pub reliable: Option<Arc<Reliable>>,
}

pub(crate) struct Session {
    pub id: SessionId,
    pub hub: Arc<str>,
    pub user: Option<Arc<str>>,
    /// From the connect hook; fixed for the session's life.
    pub metadata: BTreeMap<String, String>,
    pub remote_addr: SocketAddr,
    pub subprotocol: Option<Arc<str>>,
    /// permessage-deflate, when the client offered it and the gateway agreed.
    pub deflate: Option<Deflate>,
    pub transport: Transport,
    /// What a reliable session keeps across its connections; `None` for a plain session.
    pub reliable: Option<Arc<Reliable>>,
    /// A reliable session whose connection is gone, waiting for a resume.
    suspended: AtomicBool,
    pub connected_at: SystemTime,
    /// Changed by JoinGroup/LeaveGroup; the pool's group index follows it.
    groups: Mutex<BTreeSet<Arc<str>>>,
    counters: Counters,
    outbound: Arc<Outbound>,
    pub inbox: Inbox,
    lifecycle: Mutex<Lifecycle>,
    /// Wakes the reader task to end the session at once (close timeout, write failure).
    kill: Notify,
    /// Cancelled once the session has ended, so timers and streams tied to it stop.
    ended: CancellationToken,
    /// The backend attached to this session, if any (one at a time).
    attached: Mutex<Option<Attached>>,
    /// Where this session's client messages went last as hub events.
    pub routes: crate::events::RouteCache,
    ctx: Arc<SessionContext>,
}

#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    /// Clock milliseconds of the last frame received (any frame, pongs included).
    last_rx_ms: AtomicU64,
    last_ping_ms: AtomicU64,
    /// `last_rx_ms` as last written to the registry.
    reported_rx_ms: AtomicU64,
}

/// The current `Attach` stream of a session.
struct Attached {
    id: u64,
    ender: Arc<Ender>,
    acks: Arc<acks::Acks>,
}

/// Ends a stream from outside, with the status its backend should see.
#[derive(Default)]
pub(crate) struct Ender {
    token: CancellationToken,
    why: std::sync::OnceLock<crate::error::Error>,
}

impl Ender {
    /// Ends the stream; the first reason given wins.
    pub(crate) fn end(&self, why: crate::error::Error) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    pub(crate) async fn ended(&self) {
        self.token.cancelled().await
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }

    pub(crate) fn why(&self) -> Option<&crate::error::Error> {
        self.why.get()
    }
}

enum Lifecycle {
    Open,
    Closing(SessionEnd),
    Closed(SessionEnd),
}

impl Session {
    /// A session whose socket is not there yet (see [`Session::install_writer`]): it can be
    /// admitted, and sent to, before the 101 response goes out.
    pub(crate) fn new(
        admission: Admission,
        limits: QueueLimits,
        inbox: Inbox,
        ctx: Arc<SessionContext>,
        permit: Option<crate::limits::Permit>,
    ) -> Arc<Self> {
        let now = ctx.clock.now_ms();
        let counters = Counters::default();
        counters.last_rx_ms.store(now, Relaxed);
        counters.last_ping_ms.store(now, Relaxed);
        counters.reported_rx_ms.store(now, Relaxed);
        Arc::new(Self {
            id: admission.id,
            hub: admission.hub,
            user: admission.user,
            metadata: admission.metadata,
            remote_addr: admission.remote_addr,
            subprotocol: admission.subprotocol,
            deflate: admission.deflate,
            transport: admission.transport,
            reliable: admission.reliable,
            suspended: AtomicBool::new(false),
            connected_at: SystemTime::now(),
            groups: Mutex::new(admission.groups),
            counters,
            // The outbound side holds the permit: it knows when the socket is really gone.
            outbound: Arc::new(Outbound::new(limits, permit)),
            inbox,
            lifecycle: Mutex::new(Lifecycle::Open),
            kill: Notify::new(),
            ended: CancellationToken::new(),
            attached: Mutex::new(None),
            routes: Default::default(),
            ctx,
        })
    }

    /// Makes `ender`'s stream the session's attached backend. With `take_over`, a stream
    /// already attached is ended (ABORTED); without, it is an error to attach twice.
    pub(crate) fn attach(
        &self,
        id: u64,
        ender: Arc<Ender>,
        acks: Arc<acks::Acks>,
        take_over: bool,
    ) -> Result<(), ()> {
        let mut slot = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.as_ref() {
            if !take_over && !old.ender.is_ended() {
                return Err(());
            }
            old.ender.end(crate::error::Error::TakenOver);
        }
        *slot = Some(Attached { id, ender, acks });
        Ok(())
    }

    /// Releases the slot if stream `id` still holds it.
    pub(crate) fn detach(&self, id: u64) {
        let mut slot = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|a| a.id == id) {
            *slot = None;
        }
    }

    /// Ends the attached backend's stream, if any, with `why`, and takes what it was sent and
    /// did not acknowledge, in order: the session moved to another connection, and these go
    /// with it (the stream's own end then finds nothing to put back).
    pub(crate) fn end_attachment(&self, why: crate::error::Error) -> Vec<Inbound> {
        match self
            .attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(a) => {
                a.ender.end(why);
                a.acks.take_all()
            }
            None => Vec::new(),
        }
    }

    pub(crate) fn is_attached(&self) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|a| !a.ender.is_ended())
    }

    /// Waits until the outbound queue would take a frame of `len` bytes (or the session can no
    /// longer send).
    pub(crate) async fn room(&self, len: usize) {
        self.outbound.room(len).await
    }

    /// Connects the outbound queue to the upgraded socket.
    pub(crate) fn install_writer(self: &Arc<Self>, writer: Writer) {
        self.outbound.install(writer, &self.ctx.tasks, self);
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn groups(&self) -> BTreeSet<Arc<str>> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds a group; false when already a member.
    pub(crate) fn add_group(&self, group: Arc<str>) -> bool {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group)
    }

    /// Removes a group; false when not a member.
    pub(crate) fn remove_group(&self, group: &str) -> bool {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group)
    }

    pub(crate) fn is_suspended(&self) -> bool {
        self.suspended.load(Relaxed)
    }

    pub(crate) fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Relaxed);
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(*self.lifecycle(), Lifecycle::Open)
    }

    /// Queues an encoded data frame (the same bytes may be queued for many sessions); `flush`
    /// says whether it may be written from the caller's task.
    pub(crate) fn send(self: &Arc<Self>, frame: Bytes, flush: Flush) -> Result<(), SendError> {
        self.send_tracked(frame, flush).map(drop)
    }

    /// [`Session::send`], answering the frame's position for a delivery receipt: it is on the
    /// socket once [`Session::bytes_written`] reaches it.
    pub(crate) fn send_tracked(
        self: &Arc<Self>,
        frame: Bytes,
        flush: Flush,
    ) -> Result<u64, SendError> {
        // No look at the lifecycle (one lock and cache line less per session of a broadcast):
        // every way out of `Open` seals the queue right after (the close frame, or the release
        // of the socket), and a frame queued in between goes out before the close frame, as if
        // sent a moment earlier, or is dropped with the socket.
        match self.outbound.push(frame, flush, &self.ctx.tasks, self) {
            Ok(position) => Ok(position),
            Err(EnqueueError::Closed) => Err(SendError::Gone),
            Err(EnqueueError::Full) => {
                self.ctx.metrics.outbound_refused.inc();
                Err(SendError::QueueFull)
            }
        }
    }

    /// Queues a pong or ping; skipped once closing.
    pub(crate) fn send_control(self: &Arc<Self>, frame: Bytes) {
        self.outbound.push_control(frame, &self.ctx.tasks, self);
    }

    /// Starts a server-side close: the close frame follows what is queued (or replaces it with
    /// `discard`), and the session ends when the client answers or `close_timeout` passes.
    /// Returns false when the session was already closing.
    pub(crate) fn close(
        self: &Arc<Self>,
        code: u16,
        reason: &str,
        by: Closer,
        discard: bool,
    ) -> bool {
        {
            let mut lc = self.lifecycle();
            if !matches!(*lc, Lifecycle::Open) {
                return false;
            }
            *lc = Lifecycle::Closing(SessionEnd {
                code,
                reason: reason.to_owned(),
                closed_by: by,
            });
        }
        let dropped = self
            .outbound
            .push_close(
                frame::encode_close(code, reason),
                discard,
                &self.ctx.tasks,
                self,
            )
            .unwrap_or(0);
        if dropped > 0 {
            self.ctx.metrics.outbound_discarded.inc_by(dropped as u64);
            tracing::debug!(session = %self.id, dropped, "queued frames discarded by close");
        }
        let this = Arc::clone(self);
        let timeout = self.ctx.close_timeout;
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => this.kill(),
                _ = this.ended.cancelled() => {}
            }
        });
        true
    }

    /// The client sent a close frame. If we had not started closing, echo it (RFC 6455 §5.5.1)
    /// and end with the client's code; otherwise this completes our close handshake.
    pub(crate) fn client_closed(self: &Arc<Self>, code: u16, reason: String) -> SessionEnd {
        let mut lc = self.lifecycle();
        match &*lc {
            Lifecycle::Closing(end) | Lifecycle::Closed(end) => end.clone(),
            Lifecycle::Open => {
                let end = SessionEnd {
                    code,
                    reason,
                    closed_by: Closer::Client,
                };
                *lc = Lifecycle::Closing(end.clone());
                drop(lc);
                let echo = if code == close_code::NO_STATUS {
                    frame::encode(frame::Opcode::Close, &[])
                } else {
                    frame::encode_close(code, &end.reason)
                };
                self.outbound.push_close(echo, false, &self.ctx.tasks, self);
                end
            }
        }
    }

    /// Records the final state; `fallback` applies when no close was started (the connection
    /// just dropped or failed).
    pub(crate) fn finish(&self, fallback: SessionEnd) -> SessionEnd {
        let mut lc = self.lifecycle();
        let end = match &*lc {
            Lifecycle::Closing(end) | Lifecycle::Closed(end) => end.clone(),
            Lifecycle::Open => fallback,
        };
        *lc = Lifecycle::Closed(end.clone());
        drop(lc);
        self.outbound.release();
        self.ended.cancel();
        end
    }

    /// Replaces the recorded end of a session whose connection already ended (a reliable
    /// session that outlived it, and ends later for its own reason).
    pub(crate) fn reclose(&self, end: SessionEnd) {
        *self.lifecycle() = Lifecycle::Closed(end);
    }

    /// The end recorded by a close in progress, if any.
    pub(crate) fn closing(&self) -> Option<SessionEnd> {
        match &*self.lifecycle() {
            Lifecycle::Closing(end) | Lifecycle::Closed(end) => Some(end.clone()),
            Lifecycle::Open => None,
        }
    }

    /// Waits until everything queued is on the socket (used before ending a closed session).
    pub(crate) async fn flushed(&self, limit: Duration) -> bool {
        self.outbound.drained(limit).await
    }

    pub(crate) fn kill(&self) {
        self.kill.notify_one();
    }

    pub(crate) async fn killed(&self) {
        self.kill.notified().await
    }

    /// Bytes the socket has taken over this connection's life.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.counters.bytes_out.load(Relaxed)
    }

    /// A frame arrived: the client is alive.
    pub(crate) fn touch(&self) {
        self.counters
            .last_rx_ms
            .store(self.ctx.clock.now_ms(), Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.counters.messages_in.fetch_add(1, Relaxed);
        self.counters.bytes_in.fetch_add(bytes as u64, Relaxed);
        self.ctx.metrics.messages_in.inc();
        self.ctx.metrics.bytes_in.inc_by(bytes as u64);
    }

    /// The client's last activity if it changed since the previous call.
    pub(crate) fn take_activity(&self) -> Option<u64> {
        let rx = self.counters.last_rx_ms.load(Relaxed);
        let before = self.counters.reported_rx_ms.swap(rx, Relaxed);
        (rx != before).then_some(rx)
    }

    /// Milliseconds since the client last sent anything.
    pub(crate) fn silent_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.counters.last_rx_ms.load(Relaxed))
    }

    /// Whether a keepalive ping is due: the client has been quiet, and so have our pings.
    pub(crate) fn ping_due(&self, now_ms: u64, interval_ms: u64) -> bool {
        self.silent_ms(now_ms) >= interval_ms
            && now_ms.saturating_sub(self.counters.last_ping_ms.load(Relaxed)) >= interval_ms
    }

    pub(crate) fn pinged(&self, now_ms: u64) {
        self.counters.last_ping_ms.store(now_ms, Relaxed);
    }

    pub(crate) fn outbound_stalled(&self, grace: Duration, now: Instant) -> bool {
        self.outbound.stalled_for(grace, now)
    }

    /// A snapshot for the registry and the API.
    pub(crate) fn record(&self) -> SessionRecord {
        let c = &self.counters;
        SessionRecord {
            id: self.id.clone(),
            hub: self.hub.to_string(),
            user: self.user.as_deref().unwrap_or_default().to_owned(),
            groups: self.groups().iter().map(|g| g.to_string()).collect(),
            metadata: self.metadata.clone(),
            node: self.ctx.node.to_string(),
            connected_at: self.connected_at,
            last_active_at: self.ctx.clock.wall(c.last_rx_ms.load(Relaxed)),
            remote_addr: self.remote_addr.to_string(),
            subprotocol: self.subprotocol.as_deref().unwrap_or_default().to_owned(),
            reliable: self.reliable.is_some(),
            suspended: self.is_suspended(),
            counters: Some(SessionCounters {
                messages_in: c.messages_in.load(Relaxed),
                bytes_in: c.bytes_in.load(Relaxed),
                messages_out: c.messages_out.load(Relaxed),
                bytes_out: c.bytes_out.load(Relaxed),
                outbound_queue_depth: self.outbound.depth() as u64,
                inbox_depth: self.inbox.depth() as u64,
            }),
        }
    }
}

impl outbound::WriteObserver for Session {
    fn wrote(&self, frames: usize, bytes: usize) {
        self.counters.messages_out.fetch_add(frames as u64, Relaxed);
        self.counters.bytes_out.fetch_add(bytes as u64, Relaxed);
        self.ctx.metrics.messages_out.inc_by(frames as u64);
        self.ctx.metrics.bytes_out.inc_by(bytes as u64);
        self.ctx.receipts.progress();
    }

    fn write_failed(&self, error: &std::io::Error) {
        tracing::debug!(session = %self.id, %error, "write to client failed");
        self.kill();
    }

    fn write_timed_out(&self) {
        self.ctx.metrics.write_timeouts.inc();
        tracing::warn!(
            session = %self.id,
            hub = %self.hub,
            timeout = ?self.ctx.write_timeout,
            "client took no byte for the write timeout; connection reset"
        );
        {
            // A close already under way (a 1013 that could not be delivered) keeps its code.
            let mut lc = self.lifecycle();
            if matches!(*lc, Lifecycle::Open) {
                *lc = Lifecycle::Closing(SessionEnd {
                    code: close_code::ABNORMAL,
                    reason: "write timeout".into(),
                    closed_by: Closer::Gateway,
                });
            }
        }
        self.kill();
    }

    fn write_timeout(&self) -> Duration {
        self.ctx.write_timeout
    }
}
