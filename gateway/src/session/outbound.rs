//! A session's outbound side: a bounded queue of encoded frames and the flush that writes them.
//!
//! Invariants:
//! - One writer at a time: the socket's write half lives in `State::io` while idle and is
//!   moved into the flush task while frames are being written, so frames never interleave.
//! - No task and no buffer exists while a session has nothing to write. A frame for an idle
//!   plain-TCP session is offered to the kernel at once with a non-blocking write from the
//!   caller's task (a broadcast to 10k sessions then costs 10k syscalls, not 10k task spawns);
//!   only what the socket does not take is queued, and the first queued frame spawns a flush
//!   task, which writes everything queued by then in one vectored write and returns the write
//!   half when the queue is empty.
//! - The queue is bounded in frames and bytes. Bytes are released only once written, so the
//!   bound covers what the flush task holds too. Close frames and pongs bypass the bound: they
//!   are tiny and owed.
//! - Every write the flush task waits on has a deadline (`--write-timeout`) that restarts with
//!   each byte the socket takes: a peer advertising a zero window cannot hold the task, or the
//!   socket, for ever. A stalled or abandoned write resets the connection, since its unsent
//!   bytes would otherwise keep the kernel's socket alive long after ours is gone.
//! - The session's connection-limit permit lives here and is dropped only after the write
//!   half: once the session has ended (its read half is gone) and no flush task holds the
//!   socket.

use std::{
    collections::VecDeque,
    future::Future,
    io::IoSlice,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::tcp::OwnedWriteHalf,
};
use tokio_util::task::TaskTracker;

use crate::limits::Permit;

/// The write half of a client socket.
pub(crate) enum Writer {
    /// A plain TCP socket, which can be offered a frame without a task (`send(2)` on the
    /// non-blocking socket).
    Tcp(OwnedWriteHalf),
    /// Anything else (TLS): written only from the flush task.
    Stream(Pin<Box<dyn AsyncWrite + Send>>),
}

impl Writer {
    /// Makes closing the socket a reset rather than an orderly close that would wait, in the
    /// kernel, behind bytes the peer does not take. A TLS stream hides its socket; it is closed
    /// in order and left to the kernel's `TCP_USER_TIMEOUT` (set at accept).
    fn abort(&self) {
        if let Writer::Tcp(w) = self {
            let _ = socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Stream(w) => w.as_mut().poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Stream(w) => w.as_mut().poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Writer::Tcp(w) => w.is_write_vectored(),
            Writer::Stream(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_flush(cx),
            Writer::Stream(w) => w.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Stream(w) => w.as_mut().poll_shutdown(cx),
        }
    }
}

/// How a data frame may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Straight to an idle plain-TCP socket from the caller's task when nothing is queued:
    /// for one frame per session per call (Send, Publish), where a task per frame would cost
    /// more than the write.
    Now,
    /// Always through the flush task, so a burst of frames for one session (an Attach stream
    /// writing as fast as it can) leaves in a few vectored writes, not a syscall per frame.
    Batched,
}

/// At most this many frames go into one vectored write.
const MAX_BATCH: usize = 64;

#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnqueueError {
    /// The queue is at its bound: the client is not reading fast enough.
    Full,
    /// A close frame is queued or the socket failed: nothing more goes out.
    Closed,
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    limits: QueueLimits,
    /// Woken when the queue empties or the writer fails, for callers waiting on a flush.
    drained: tokio::sync::Notify,
    /// Woken after every written batch, for callers waiting for room.
    room: tokio::sync::Notify,
}

struct State {
    queue: VecDeque<Bytes>,
    /// Bytes queued plus bytes held by a running flush.
    bytes: usize,
    /// The write half while no flush runs; `None` while one does, after a write failed, or
    /// before the upgrade completed (frames queued meanwhile go out once it is installed).
    io: Option<Writer>,
    /// No more data frames: a close frame is queued or the socket failed.
    sealed: bool,
    /// The write half failed; the session is over.
    failed: bool,
    /// When the queue first refused a frame; cleared once the socket has taken half the
    /// queue's bound since (frames or bytes), or the queue is down to half. Progress is the
    /// test that matters: a backend waiting for room (Attach) refills the queue as fast as a
    /// healthy client drains it, so it may never get down to half.
    full_since: Option<Instant>,
    /// Frames and bytes written since `full_since` was set.
    written_since_full: (usize, usize),
    /// The session ended: the write half is dropped instead of returned, closing the socket.
    released: bool,
    /// A flush task holds the write half.
    flushing: bool,
    /// Bytes of every frame ever queued (written at once or not): a frame's position in the
    /// stream, which delivery receipts compare with the bytes written.
    enqueued: u64,
    /// The session's slot in the connection limits; dropped once the session has ended and
    /// nothing holds the socket any more.
    permit: Option<Permit>,
}

/// Why a flush task stopped writing before its queue was empty.
enum Stop {
    Failed(std::io::Error),
    /// The socket took no byte for the write timeout.
    Stalled,
    /// The session ended meanwhile; what is left will never be read.
    Released,
}

/// What a finished write contributed, for the session's counters.
pub(crate) trait WriteObserver: Send + Sync + 'static {
    fn wrote(&self, frames: usize, bytes: usize);
    fn write_failed(&self, error: &std::io::Error);
    /// The socket took no byte for [`WriteObserver::write_timeout`] and has been reset.
    fn write_timed_out(&self);
    /// How long one write may wait for the socket to take a byte.
    fn write_timeout(&self) -> Duration;
}

impl Outbound {
    /// A queue with no socket yet: frames wait until [`Outbound::install`]. `permit` is held
    /// until the socket is gone.
    pub(crate) fn new(limits: QueueLimits, permit: Option<Permit>) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                io: None,
                sealed: false,
                failed: false,
                full_since: None,
                written_since_full: (0, 0),
                released: false,
                flushing: false,
                enqueued: 0,
                permit,
            }),
            limits,
            drained: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the queue itself is still coherent
        // (every mutation is a single push/pop), so keep going rather than cascade the panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the bound refuses a frame of `len` bytes now.
    fn is_full(&self, st: &State, len: usize) -> bool {
        st.queue.len() >= self.limits.messages || st.bytes + len > self.limits.bytes
    }

    /// Queues a data frame within the bound. Returns its end's position in the bytes ever
    /// queued: the frame is on the socket once that many bytes have been written.
    pub(crate) fn push(
        self: &Arc<Self>,
        frame: Bytes,
        flush: Flush,
        tasks: &TaskTracker,
        observer: &Arc<impl WriteObserver>,
    ) -> Result<u64, EnqueueError> {
        let mut st = self.lock();
        if st.sealed {
            return Err(EnqueueError::Closed);
        }
        if self.is_full(&st, frame.len()) {
            if st.full_since.is_none() {
                st.full_since = Some(Instant::now());
                st.written_since_full = (0, 0);
            }
            return Err(EnqueueError::Full);
        }
        let position = st.enqueued + frame.len() as u64;
        self.enqueue(st, frame, flush, tasks, observer);
        Ok(position)
    }

    /// Queues a control frame (pong, ping) regardless of the bound, unless sealed.
    pub(crate) fn push_control(
        self: &Arc<Self>,
        frame: Bytes,
        tasks: &TaskTracker,
        observer: &Arc<impl WriteObserver>,
    ) -> bool {
        let st = self.lock();
        if st.sealed {
            return false;
        }
        self.enqueue(st, frame, Flush::Now, tasks, observer);
        true
    }

    /// Queues the final close frame and seals the queue. With `discard`, frames not yet handed
    /// to the socket are dropped first (a slow consumer gets its close now, not after megabytes
    /// it will not read); returns how many were dropped. `None` when already sealed.
    pub(crate) fn push_close(
        self: &Arc<Self>,
        frame: Bytes,
        discard: bool,
        tasks: &TaskTracker,
        observer: &Arc<impl WriteObserver>,
    ) -> Option<usize> {
        let mut st = self.lock();
        if st.sealed {
            return None;
        }
        st.sealed = true;
        let mut dropped = 0;
        if discard {
            dropped = st.queue.len();
            let freed: usize = st.queue.drain(..).map(|f| f.len()).sum();
            st.bytes -= freed;
        }
        self.enqueue(st, frame, Flush::Now, tasks, observer);
        Some(dropped)
    }

    /// Hands over the socket's write half once the upgrade has completed, and writes whatever
    /// was queued before.
    pub(crate) fn install(
        self: &Arc<Self>,
        io: Writer,
        tasks: &TaskTracker,
        observer: &Arc<impl WriteObserver>,
    ) {
        let mut st = self.lock();
        if st.released {
            return;
        }
        if st.queue.is_empty() {
            st.io = Some(io);
            return;
        }
        st.flushing = true;
        drop(st);
        tasks.spawn(Arc::clone(self).flush(io, Arc::clone(observer)));
    }

    fn enqueue(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, State>,
        mut frame: Bytes,
        flush: Flush,
        tasks: &TaskTracker,
        observer: &Arc<impl WriteObserver>,
    ) {
        st.enqueued += frame.len() as u64;
        // Nothing queued and no flush running: the frame may go straight to the socket. The
        // lock is held across the non-blocking write so nothing queued meanwhile overtakes it.
        if let (Flush::Now, true, Some(Writer::Tcp(w))) = (flush, st.queue.is_empty(), &st.io) {
            // A plain `send(2)` on the non-blocking socket rather than tokio's `try_write`:
            // that one first reads the socket's readiness, another cache miss per session
            // in a broadcast. Tokio is not told of a `WouldBlock` here; the flush task's own
            // write finds out again and waits for readiness as usual.
            match socket2::SockRef::from(w.as_ref()).send(&frame) {
                Ok(n) if n == frame.len() => {
                    drop(st);
                    observer.wrote(1, n);
                    return;
                }
                // The rest is queued below; its frame is counted when the flush writes it.
                Ok(n) => {
                    frame = frame.slice(n..);
                    observer.wrote(0, n);
                }
                // Full (or interrupted): the flush task writes it once the socket takes more.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    let io = st.io.take();
                    Self::fail(st);
                    drop(io);
                    observer.write_failed(&e);
                    self.drained.notify_waiters();
                    self.room.notify_waiters();
                    return;
                }
            }
        }
        st.bytes += frame.len();
        st.queue.push_back(frame);
        if let Some(io) = st.io.take() {
            st.flushing = true;
            drop(st);
            tasks.spawn(Arc::clone(self).flush(io, Arc::clone(observer)));
        }
    }

    async fn flush(self: Arc<Self>, mut io: Writer, observer: Arc<impl WriteObserver>) {
        let limit = observer.write_timeout();
        let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH);
        let mut batch_bytes = 0;
        loop {
            {
                let mut st = self.lock();
                st.bytes = st.bytes.saturating_sub(batch_bytes);
                if st.full_since.is_some() {
                    let (frames, bytes) = &mut st.written_since_full;
                    *frames += batch.len();
                    *bytes += batch_bytes;
                    let progressed =
                        *frames >= self.limits.messages / 2 || *bytes >= self.limits.bytes / 2;
                    // A refused large frame may have found little queued before it.
                    let drained = st.queue.len() <= self.limits.messages / 2
                        && st.bytes <= self.limits.bytes / 2;
                    if progressed || drained {
                        st.full_since = None;
                    }
                }
                batch.clear();
                if st.queue.is_empty() || st.released {
                    st.flushing = false;
                    if !st.released {
                        st.io = Some(io);
                        drop(st);
                        self.drained.notify_waiters();
                        self.room.notify_waiters();
                        return;
                    }
                    // Frames the ended session will never send: the peer is not reading them.
                    let abandoned = !st.queue.is_empty();
                    st.queue.clear();
                    st.bytes = 0;
                    let permit = st.permit.take();
                    drop(st);
                    if abandoned {
                        io.abort();
                    }
                    // The socket first, then its slot in the limits.
                    drop(io);
                    drop(permit);
                    self.drained.notify_waiters();
                    self.room.notify_waiters();
                    return;
                }
                let n = st.queue.len().min(MAX_BATCH);
                batch.extend(st.queue.drain(..n));
            }
            batch_bytes = batch.iter().map(Bytes::len).sum();
            if let Err(stop) = self.write_batch(&mut io, &batch, limit).await {
                if !matches!(stop, Stop::Failed(_)) {
                    io.abort();
                }
                let permit = {
                    let mut st = self.lock();
                    st.flushing = false;
                    let permit = if st.released { st.permit.take() } else { None };
                    Self::fail(st);
                    permit
                };
                drop(io);
                drop(permit);
                self.drained.notify_waiters();
                self.room.notify_waiters();
                match stop {
                    Stop::Failed(e) => observer.write_failed(&e),
                    Stop::Stalled => observer.write_timed_out(),
                    Stop::Released => {}
                }
                return;
            }
            observer.wrote(batch.len(), batch_bytes);
            self.room.notify_waiters();
        }
    }

    /// Writes one batch, unless the socket stalls for `limit` or the session ends meanwhile.
    async fn write_batch(
        &self,
        io: &mut Writer,
        batch: &[Bytes],
        limit: Duration,
    ) -> Result<(), Stop> {
        let released = async {
            loop {
                // `release` wakes `room`; other wakeups only cost a look at the flag.
                let woken = self.room.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if self.lock().released {
                    return;
                }
                woken.await;
            }
        };
        tokio::select! {
            // A write that completes at once never looks at the lock.
            biased;
            r = write_all_vectored(io, batch, limit) => r,
            () = released => Err(Stop::Released),
        }
    }

    /// The socket failed: nothing more is queued or written.
    fn fail(mut st: MutexGuard<'_, State>) {
        st.sealed = true;
        st.failed = true;
        st.queue.clear();
        st.bytes = 0;
    }

    /// Waits until everything queued so far has been handed to the socket, or the socket
    /// failed, or `limit` passed. Returns whether the queue drained cleanly.
    pub(crate) async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = self.lock();
                    if st.failed || (st.released && !st.flushing) {
                        return false;
                    }
                    if st.queue.is_empty() && st.io.is_some() {
                        return true;
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Waits until a frame of `len` bytes would be taken, or nothing more can be sent. The test
    /// is `push`'s own, so a caller that retries after this never spins on a refusal. (Config
    /// validation keeps the byte bound above the largest frame, so an empty queue takes any.)
    pub(crate) async fn room(&self, len: usize) {
        loop {
            let freed = self.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let st = self.lock();
                if st.sealed || !self.is_full(&st, len) {
                    return;
                }
            }
            freed.await;
        }
    }

    /// Drops the write half (now, or when a running flush ends, which it does at once) so the
    /// socket closes even while the session object lives on for readers of its inbox; the
    /// permit goes with the write half.
    pub(crate) fn release(&self) {
        let mut st = self.lock();
        st.released = true;
        st.sealed = true;
        let io = st.io.take();
        // A running flush task clears the queue itself: what it finds unwritten tells it to
        // reset the connection.
        let permit = if st.flushing {
            None
        } else {
            st.queue.clear();
            st.bytes = 0;
            st.permit.take()
        };
        drop(st);
        drop(io);
        drop(permit);
        self.room.notify_waiters();
        self.drained.notify_waiters();
    }

    /// Frames waiting to be written.
    pub(crate) fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether the queue has refused frames for longer than `grace`.
    pub(crate) fn stalled_for(&self, grace: Duration, now: Instant) -> bool {
        self.lock()
            .full_since
            .is_some_and(|since| now.saturating_duration_since(since) >= grace)
    }
}

async fn write_all_vectored(
    io: &mut Writer,
    frames: &[Bytes],
    limit: Duration,
) -> Result<(), Stop> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = progress(limit, io.write_vectored(rest)).await?;
        if n == 0 {
            return Err(Stop::Failed(std::io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    progress(limit, io.flush()).await
}

/// One write call, given `limit` to take at least a byte. The deadline is per call, and every
/// call that returns has made progress, so it measures a stall, not how long the queue is.
async fn progress<T>(
    limit: Duration,
    write: impl Future<Output = std::io::Result<T>>,
) -> Result<T, Stop> {
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r.map_err(Stop::Failed),
        Err(_) => Err(Stop::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Frames written, and the writes that carried them.
    #[derive(Default)]
    struct Count(AtomicUsize, AtomicUsize);
    impl WriteObserver for Count {
        fn wrote(&self, frames: usize, _bytes: usize) {
            self.0.fetch_add(frames, Ordering::Relaxed);
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        fn write_failed(&self, _: &std::io::Error) {}
        fn write_timed_out(&self) {}
        fn write_timeout(&self) -> Duration {
            Duration::from_secs(30)
        }
    }

    fn setup(limits: QueueLimits) -> (Arc<Outbound>, tokio::io::DuplexStream, Arc<Count>) {
        let (a, b) = tokio::io::duplex(64);
        let out = Arc::new(Outbound::new(limits, None));
        let obs = Arc::new(Count::default());
        out.install(Writer::Stream(Box::pin(a)), &TaskTracker::new(), &obs);
        (out, b, obs)
    }

    /// A queue on the server end of a loopback TCP connection; the client end reads. The
    /// server's read half is returned so the connection stays open.
    async fn setup_tcp(
        limits: QueueLimits,
    ) -> (
        Arc<Outbound>,
        tokio::net::TcpStream,
        Arc<Count>,
        tokio::net::tcp::OwnedReadHalf,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let out = Arc::new(Outbound::new(limits, None));
        let obs = Arc::new(Count::default());
        out.install(Writer::Tcp(write), &TaskTracker::new(), &obs);
        (out, client, obs, read)
    }

    #[tokio::test]
    async fn frames_arrive_in_order() {
        let (out, mut peer, obs) = setup(QueueLimits {
            messages: 100,
            bytes: 1 << 20,
        });
        let tasks = TaskTracker::new();
        for i in 0..50u8 {
            out.push(Bytes::from(vec![i; 3]), Flush::Now, &tasks, &obs)
                .unwrap();
        }
        let mut got = vec![0u8; 150];
        peer.read_exact(&mut got).await.unwrap();
        let want: Vec<u8> = (0..50u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(got, want);
        assert!(out.drained(Duration::from_secs(5)).await);
        assert_eq!(obs.0.load(Ordering::Relaxed), 50);
    }

    /// Frames written straight to an idle TCP socket and frames queued once it blocks leave in
    /// the order they were pushed.
    #[tokio::test]
    async fn tcp_writes_directly_then_queues_in_order() {
        let (out, mut client, obs, _server_read) = setup_tcp(QueueLimits {
            messages: 100_000,
            bytes: 64 << 20,
        })
        .await;
        let tasks = TaskTracker::new();
        // 8 MiB in 4 KiB frames is more than loopback buffers hold while nobody reads, so
        // later frames find the socket blocked and go through the queue.
        let frames = 2048u32;
        for i in 0..frames {
            let mut f = vec![0u8; 4096];
            f[..4].copy_from_slice(&i.to_be_bytes());
            out.push(Bytes::from(f), Flush::Now, &tasks, &obs).unwrap();
            if i == 0 {
                // No flush task has run on this single-threaded runtime: the frame went out
                // without one.
                assert_eq!(out.depth(), 0, "the first frame was queued");
            }
        }
        assert!(out.depth() > 0, "the socket never blocked");
        let mut buf = vec![0u8; 4096];
        for i in 0..frames {
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf[..4], i.to_be_bytes(), "frame {i} out of order");
        }
        assert!(out.drained(Duration::from_secs(5)).await);
        assert_eq!(obs.0.load(Ordering::Relaxed), frames as usize);
    }

    /// A burst pushed with `Flush::Batched` leaves through the flush task in vectored writes of
    /// many frames, not a syscall per frame, even though the socket could take each at once.
    #[tokio::test]
    async fn a_batched_burst_leaves_in_few_writes() {
        let (out, mut client, obs, _server_read) = setup_tcp(QueueLimits {
            messages: 1000,
            bytes: 1 << 20,
        })
        .await;
        let tasks = TaskTracker::new();
        for i in 0..100u8 {
            out.push(Bytes::from(vec![i; 20]), Flush::Batched, &tasks, &obs)
                .unwrap();
        }
        // Nothing has been written yet on this single-threaded runtime: all of it is queued.
        assert_eq!(obs.0.load(Ordering::Relaxed), 0);
        let mut got = vec![0u8; 2000];
        client.read_exact(&mut got).await.unwrap();
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 20]).collect();
        assert_eq!(got, want);
        assert!(out.drained(Duration::from_secs(5)).await);
        assert_eq!(obs.0.load(Ordering::Relaxed), 100);
        let writes = obs.1.load(Ordering::Relaxed);
        assert!(writes <= 2, "{writes} writes for 100 frames");
    }

    /// `room` answers only once the frame it was asked about would be taken: with 80 of 100
    /// bytes queued, a 30-byte frame is refused, so `room(30)` must keep waiting even though
    /// there is room for a smaller frame.
    #[tokio::test]
    async fn room_waits_until_that_frame_fits() {
        let (out, mut peer, obs) = setup(QueueLimits {
            messages: 100,
            bytes: 100,
        });
        let tasks = TaskTracker::new();
        // The duplex holds 64 bytes and nobody reads yet: the flush blocks and bytes stay counted.
        for _ in 0..8 {
            out.push(Bytes::from(vec![1; 10]), Flush::Now, &tasks, &obs)
                .unwrap();
        }
        tokio::task::yield_now().await;
        assert_eq!(
            out.push(Bytes::from(vec![2; 30]), Flush::Now, &tasks, &obs),
            Err(EnqueueError::Full)
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), out.room(30))
                .await
                .is_err(),
            "room(30) answered while a 30-byte frame is still refused"
        );
        let mut buf = [0u8; 80];
        peer.read_exact(&mut buf).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), out.room(30))
            .await
            .unwrap();
        out.push(Bytes::from(vec![2; 30]), Flush::Now, &tasks, &obs)
            .unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_close_discards() {
        let (out, mut peer, obs) = setup(QueueLimits {
            messages: 4,
            bytes: 1 << 20,
        });
        let tasks = TaskTracker::new();
        // The duplex holds 64 bytes; 100-byte frames block the flush on the first one.
        let mut refused = 0;
        for _ in 0..10 {
            if out.push(Bytes::from(vec![7; 100]), Flush::Now, &tasks, &obs)
                == Err(EnqueueError::Full)
            {
                refused += 1;
            }
        }
        assert!(refused >= 5, "refused {refused}");
        assert!(out.stalled_for(Duration::ZERO, Instant::now()));
        let dropped = out
            .push_close(Bytes::from_static(b"CLOSE"), true, &tasks, &obs)
            .unwrap();
        assert!(dropped >= 3);
        assert_eq!(
            out.push(Bytes::from_static(b"late"), Flush::Now, &tasks, &obs),
            Err(EnqueueError::Closed)
        );
        let mut all = Vec::new();
        let reader = async {
            let mut buf = [0u8; 256];
            loop {
                let n = peer.read(&mut buf).await.unwrap();
                all.extend_from_slice(&buf[..n]);
                if all.ends_with(b"CLOSE") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap();
        assert!(out.drained(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_writer_keeping_the_queue_full_is_not_stalled_while_frames_leave() {
        // A queue longer than one flush batch: a writer waiting for room refills it while each
        // batch is written, so it never drains to half although the client reads all it can.
        let (out, mut peer, obs) = setup(QueueLimits {
            messages: 4 * MAX_BATCH,
            bytes: 1 << 20,
        });
        let writer = tokio::spawn({
            let out = Arc::clone(&out);
            async move {
                let tasks = TaskTracker::new();
                for _ in 0..1000 * MAX_BATCH {
                    let frame = Bytes::from(vec![1; 10]);
                    loop {
                        match out.push(frame.clone(), Flush::Batched, &tasks, &obs) {
                            Ok(_) => break,
                            Err(EnqueueError::Full) => out.room(10).await,
                            Err(EnqueueError::Closed) => return,
                        }
                    }
                }
            }
        });
        let mut buf = vec![0u8; 10 * MAX_BATCH * 10];
        let limit = Duration::from_secs(10);
        let read = tokio::time::timeout(limit, peer.read_exact(&mut buf)).await;
        read.unwrap().unwrap();
        let mid = Instant::now();
        let read = tokio::time::timeout(limit, peer.read_exact(&mut buf)).await;
        read.unwrap().unwrap();
        // The writer has filled the queue again and waits. Ten batches left after `mid`, so
        // whatever refusal started the clock before was cleared by that progress: the clock,
        // if it runs, started after `mid`.
        let now = Instant::now();
        assert!(out.stalled_for(Duration::ZERO, now), "the queue is full");
        assert!(!out.stalled_for(now - mid, now));
        drop(peer);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_queue_that_drains_after_refusing_a_large_frame_is_not_stalled() {
        let (out, mut peer, obs) = setup(QueueLimits {
            messages: 1024,
            bytes: 1000,
        });
        let tasks = TaskTracker::new();
        out.push(Bytes::from(vec![1; 100]), Flush::Now, &tasks, &obs)
            .unwrap();
        assert_eq!(
            out.push(Bytes::from(vec![2; 950]), Flush::Now, &tasks, &obs),
            Err(EnqueueError::Full)
        );
        let mut buf = [0u8; 100];
        peer.read_exact(&mut buf).await.unwrap();
        assert!(out.drained(Duration::from_secs(5)).await);
        // Only 100 bytes left since the refusal, but nothing is waiting any more.
        assert!(!out.stalled_for(Duration::ZERO, Instant::now()));
    }

    /// Counts stalls; writes may wait `limit` for a byte.
    struct Deadline {
        limit: Duration,
        stalls: AtomicUsize,
    }
    impl WriteObserver for Deadline {
        fn wrote(&self, _: usize, _: usize) {}
        fn write_failed(&self, _: &std::io::Error) {}
        fn write_timed_out(&self) {
            self.stalls.fetch_add(1, Ordering::Relaxed);
        }
        fn write_timeout(&self) -> Duration {
            self.limit
        }
    }

    /// A queue holding a connection-limit permit, on a loopback socket whose client never
    /// reads, pushed until its flush task is stuck on a full socket.
    async fn stuck(
        limit: Duration,
    ) -> (
        Arc<Outbound>,
        Arc<crate::limits::ConnectionLimiter>,
        Arc<Deadline>,
        tokio::net::TcpStream,
        tokio::net::tcp::OwnedReadHalf,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let limiter = crate::limits::ConnectionLimiter::new(1, 0);
        let permit = limiter.acquire(client.local_addr().unwrap().ip()).unwrap();
        let out = Arc::new(Outbound::new(
            QueueLimits {
                messages: 100_000,
                bytes: 256 << 20,
            },
            Some(permit),
        ));
        let obs = Arc::new(Deadline {
            limit,
            stalls: AtomicUsize::new(0),
        });
        let tasks = TaskTracker::new();
        out.install(Writer::Tcp(write), &tasks, &obs);
        // Bounded: loopback buffers hold a few MiB at most.
        for _ in 0..4096 {
            out.push(Bytes::from(vec![0u8; 64 << 10]), Flush::Now, &tasks, &obs)
                .unwrap();
            if out.depth() > 0 {
                break;
            }
        }
        assert!(out.depth() > 0, "the socket never blocked");
        // Let the flush task run into the full socket.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        (out, limiter, obs, client, read)
    }

    #[tokio::test]
    async fn a_socket_that_takes_no_byte_is_reset_after_the_write_timeout() {
        let (out, limiter, obs, client, read) = stuck(Duration::from_millis(100)).await;
        // The flush task gives up: the queue reports failure, not a drain.
        assert!(!out.drained(Duration::from_secs(20)).await);
        assert_eq!(obs.stalls.load(Ordering::Relaxed), 1);
        assert!(out.lock().sealed);
        // The session has not ended yet (its reader still holds the read half): the permit
        // stays until it does.
        assert_eq!(limiter.open(), 1);
        drop(read);
        out.release();
        assert_eq!(limiter.open(), 0);
        // The socket was reset, not closed in order behind bytes the client never took.
        let ready = tokio::time::timeout(
            Duration::from_secs(20),
            client.ready(tokio::io::Interest::ERROR),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(ready.is_error());
        let err = client.take_error().unwrap().map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn a_session_ending_during_a_stuck_write_ends_the_flush_and_then_frees_the_permit() {
        let (out, limiter, obs, client, read) = stuck(Duration::from_secs(3600)).await;
        // A flush task holds the socket: ending the session does not give the permit back yet.
        drop(read);
        assert_eq!(limiter.open(), 1);
        out.release();
        // The flush task notices at once, drops the socket, and then the permit.
        assert!(!out.drained(Duration::from_secs(20)).await);
        assert_eq!(limiter.open(), 0);
        assert_eq!(obs.stalls.load(Ordering::Relaxed), 0);
        let ready = tokio::time::timeout(
            Duration::from_secs(20),
            client.ready(tokio::io::Interest::ERROR),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(ready.is_error());
    }

    #[tokio::test]
    async fn a_failed_socket_seals_the_queue() {
        let (out, peer, obs) = setup(QueueLimits {
            messages: 10,
            bytes: 1 << 20,
        });
        drop(peer);
        let tasks = TaskTracker::new();
        out.push(Bytes::from_static(b"x"), Flush::Now, &tasks, &obs)
            .unwrap();
        assert!(!out.drained(Duration::from_secs(5)).await);
        assert!(out.lock().sealed);
    }
}
