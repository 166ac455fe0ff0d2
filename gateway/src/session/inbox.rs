//! A session's inbox: client messages waiting for a backend, bounded in messages and bytes.
//!
//! When the inbox is full, `push` waits: the session's reader stops reading the socket, and TCP
//! backpressure slows the client down. Nothing is dropped. Once the client is gone the inbox is
//! closed; readers drain what is left and then see the close. When a resume moves a reliable
//! session to another connection, its old inbox is sealed: emptied and refusing pushes in one
//! step, so nothing lands behind the messages that moved.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::{message::Message, metrics::GaugeGuard};

use super::SessionEnd;

/// A client message with its per-session sequence number (1, 2, 3, ... in the order sent).
#[derive(Clone, Debug)]
pub struct Inbound {
    pub seq: u64,
    pub message: Message,
    /// The session's number of this message over its whole life: a reliable client's own
    /// seq (stable across resumes), `seq` for a plain session.
    pub client_seq: u64,
}

/// How a push ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued after waiting for room.
    Waited,
    /// The inbox was sealed (the session moved to another connection): not queued.
    Refused,
}

/// What a reader gets.
#[derive(Debug)]
pub(crate) enum Next {
    Message(Inbound),
    Closed(SessionEnd),
    TimedOut,
}

pub(crate) struct Inbox {
    state: Mutex<State>,
    max_messages: usize,
    max_bytes: usize,
    /// Woken when a message arrives or the inbox closes.
    readable: Notify,
    /// Woken when a reader frees room.
    writable: Notify,
    gauges: InboxGauges,
}

/// Node-wide gauges every inbox keeps current.
#[derive(Clone, Default)]
pub(crate) struct InboxGauges {
    /// Messages waiting in all inboxes.
    pub messages: Gauge,
    /// Readers waiting for room (sockets not being read).
    pub paused: Gauge,
}

struct State {
    queue: VecDeque<Inbound>,
    bytes: usize,
    next_seq: u64,
    closed: Option<SessionEnd>,
    /// Emptied for good by [`Inbox::seal`]: pushes are refused.
    sealed: bool,
    /// The message the last `Read` with an ack answered, until a later ack covers it.
    answered: Option<Inbound>,
}

impl Inbox {
    pub(crate) fn new(max_messages: usize, max_bytes: usize, gauges: InboxGauges) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                closed: None,
                sealed: false,
                answered: None,
            }),
            max_messages,
            max_bytes,
            readable: Notify::new(),
            writable: Notify::new(),
            gauges,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation under this lock is a single push/pop: a poisoned lock is still coherent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers the next message; the reader calls it once per message, whatever path it takes.
    pub(crate) fn stamp(&self, message: Message) -> Inbound {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        Inbound {
            seq,
            message,
            client_seq: seq,
        }
    }

    /// Appends a message, waiting while the inbox is full. A message larger than the byte bound
    /// is still accepted into an empty inbox, so one big message cannot wedge a session.
    pub(crate) async fn push(&self, msg: Inbound) -> Pushed {
        let mut paused = None;
        loop {
            let room = self.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.lock();
                if st.sealed {
                    return Pushed::Refused;
                }
                let fits = st.queue.is_empty()
                    || (st.queue.len() < self.max_messages
                        && st.bytes + msg.message.len() <= self.max_bytes);
                if fits {
                    st.bytes += msg.message.len();
                    st.queue.push_back(msg);
                    drop(st);
                    self.gauges.messages.inc();
                    self.readable.notify_waiters();
                    return if paused.is_some() {
                        Pushed::Waited
                    } else {
                        Pushed::Queued
                    };
                }
            }
            if paused.is_none() {
                // Held until the push ends, however it ends (also when cancelled).
                paused = Some(GaugeGuard::inc(&self.gauges.paused));
            }
            room.await;
        }
    }

    /// The oldest message, if any.
    pub(crate) fn try_pop(&self) -> Option<Inbound> {
        let mut st = self.lock();
        let msg = st.queue.pop_front()?;
        st.bytes -= msg.message.len();
        drop(st);
        self.gauges.messages.dec();
        self.writable.notify_one();
        Some(msg)
    }

    /// Takes every waiting message, in order, and refuses pushes from now on: a resume moves
    /// them to the new connection's inbox, and a push racing the move must fail (its message
    /// is not marked received, and the client sends it again on the new connection) rather
    /// than land here, behind them, where a `Read` could answer it out of order or nobody
    /// would read it at all.
    pub(crate) fn seal(&self) -> Vec<Inbound> {
        let mut st = self.lock();
        st.sealed = true;
        st.bytes = 0;
        let taken: Vec<_> = st.queue.drain(..).collect();
        drop(st);
        self.gauges.messages.dec_by(taken.len() as i64);
        // A push waiting for room wakes to see the seal.
        self.writable.notify_waiters();
        taken
    }

    /// Puts messages a reader took but did not process back at the front, in order. They were
    /// in the inbox before, so the bound may be passed for a moment. A sealed inbox takes
    /// nothing: they come back, for the connection the session moved to.
    pub(crate) fn requeue(
        &self,
        msgs: impl DoubleEndedIterator<Item = Inbound>,
    ) -> Result<(), Vec<Inbound>> {
        let mut st = self.lock();
        if st.sealed {
            return Err(msgs.collect());
        }
        let mut n = 0;
        for m in msgs.rev() {
            st.bytes += m.message.len();
            st.queue.push_front(m);
            n += 1;
        }
        drop(st);
        if n > 0 {
            self.gauges.messages.inc_by(n);
            self.readable.notify_waiters();
        }
        Ok(())
    }

    /// The next message, the close once drained, or `TimedOut` after `timeout`.
    pub(crate) async fn next(&self, timeout: Duration) -> Next {
        let wait = async {
            loop {
                let arrived = self.readable.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if let Some(msg) = self.try_pop() {
                    return Next::Message(msg);
                }
                if let Some(end) = self.lock().closed.clone() {
                    return Next::Closed(end);
                }
                arrived.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Next::TimedOut)
    }

    /// A `Read` whose backend received up to `ack`: the message answered before and not
    /// covered (its answer was lost on the way), if any. Plain sessions only: a reliable one
    /// keeps its answer across connections and nodes (`Reliable::confirm_read`).
    pub(crate) fn unconfirmed(&self, ack: u64) -> Option<Inbound> {
        let mut st = self.lock();
        match &st.answered {
            Some(m) if m.client_seq > ack => Some(m.clone()),
            _ => {
                st.answered = None;
                None
            }
        }
    }

    /// Keeps `m`, answered to a `Read` with an ack, until a later ack covers it.
    pub(crate) fn answered(&self, m: &Inbound) {
        self.lock().answered = Some(m.clone());
    }

    /// Marks the client gone; readers drain what is left, then see `end`.
    pub(crate) fn close(&self, end: SessionEnd) {
        self.lock().closed = Some(end);
        self.readable.notify_waiters();
    }

    pub(crate) fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.lock().sealed
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let left = self.lock().queue.len();
        self.gauges.messages.dec_by(left as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::{message::Kind, session::Closer};

    fn msg(inbox: &Inbox, s: &'static str) -> Inbound {
        inbox.stamp(Message {
            kind: Kind::Text,
            payload: Bytes::from_static(s.as_bytes()),
        })
    }

    #[tokio::test]
    async fn messages_come_out_in_order_with_sequence_numbers() {
        let inbox = Inbox::new(10, 1000, InboxGauges::default());
        for s in ["a", "b", "c"] {
            inbox.push(msg(&inbox, s)).await;
        }
        for (i, s) in ["a", "b", "c"].iter().enumerate() {
            match inbox.next(Duration::from_secs(1)).await {
                Next::Message(m) => {
                    assert_eq!(m.seq, i as u64 + 1);
                    assert_eq!(&m.message.payload[..], s.as_bytes());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_inbox_times_out() {
        let inbox = Inbox::new(10, 1000, InboxGauges::default());
        assert!(matches!(
            inbox.next(Duration::from_secs(3)).await,
            Next::TimedOut
        ));
    }

    /// An inbox of two messages, full, and a writer waiting to push a third.
    async fn full_with_a_waiting_writer() -> (Arc<Inbox>, tokio::task::JoinHandle<Pushed>) {
        let inbox = Arc::new(Inbox::new(2, 1000, InboxGauges::default()));
        assert_eq!(inbox.push(msg(&inbox, "1")).await, Pushed::Queued);
        assert_eq!(inbox.push(msg(&inbox, "2")).await, Pushed::Queued);
        let third = msg(&inbox, "3");
        let writer = {
            let inbox = Arc::clone(&inbox);
            tokio::spawn(async move { inbox.push(third).await })
        };
        // The writer is parked once the paused gauge says so.
        while inbox.gauges.paused.get() == 0 {
            tokio::task::yield_now().await;
        }
        (inbox, writer)
    }

    #[tokio::test]
    async fn a_full_inbox_makes_the_writer_wait() {
        let (inbox, writer) = full_with_a_waiting_writer().await;
        assert_eq!(inbox.depth(), 2);
        assert!(inbox.try_pop().is_some());
        assert_eq!(writer.await.unwrap(), Pushed::Waited);
        assert_eq!(inbox.depth(), 2);
    }

    #[tokio::test]
    async fn a_sealed_inbox_hands_over_its_messages_in_order_and_refuses_more() {
        // A push waiting for room when the seal comes is refused, not queued behind.
        let (inbox, writer) = full_with_a_waiting_writer().await;
        let moved: Vec<u64> = inbox.seal().iter().map(|m| m.seq).collect();
        assert_eq!(moved, [1, 2]);
        assert_eq!(writer.await.unwrap(), Pushed::Refused);
        assert_eq!(inbox.push(msg(&inbox, "4")).await, Pushed::Refused);
        // Nor does it take back what a reader had: that goes where the session went.
        let back = inbox.requeue([msg(&inbox, "5")].into_iter()).unwrap_err();
        assert_eq!(back.len(), 1);
        assert!(inbox.is_empty());
        assert_eq!(inbox.gauges.messages.get(), 0);
        assert_eq!(inbox.gauges.paused.get(), 0);
    }

    /// Pushes racing a seal on other threads: each message is either handed over by the
    /// seal or refused to its pusher, never left behind in the sealed inbox.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_push_racing_a_seal_is_left_behind() {
        for _ in 0..200 {
            let inbox = Arc::new(Inbox::new(1_000, 1_000_000, InboxGauges::default()));
            let pushers: Vec<_> = (0..3)
                .map(|_| {
                    let inbox = Arc::clone(&inbox);
                    tokio::spawn(async move {
                        let mut refused = 0;
                        for _ in 0..50 {
                            if inbox.push(msg(&inbox, "m")).await == Pushed::Refused {
                                refused += 1;
                            }
                        }
                        refused
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            let moved = inbox.seal().len();
            let mut refused = 0;
            for p in pushers {
                refused += p.await.unwrap();
            }
            assert_eq!(moved + refused, 150);
            assert!(inbox.is_empty());
        }
    }

    #[tokio::test]
    async fn close_is_seen_after_the_last_message() {
        let inbox = Inbox::new(10, 1000, InboxGauges::default());
        inbox.push(msg(&inbox, "last")).await;
        inbox.close(SessionEnd {
            code: 1000,
            reason: "bye".into(),
            closed_by: Closer::Client,
        });
        assert!(matches!(
            inbox.next(Duration::from_secs(1)).await,
            Next::Message(_)
        ));
        match inbox.next(Duration::from_secs(1)).await {
            Next::Closed(end) => assert_eq!(end.code, 1000),
            other => panic!("unexpected {other:?}"),
        }
    }
}
