//! What an `Attach` stream was sent and has not acknowledged (`manual_ack`), or was last
//! handed (without it): what goes back to the inbox, or with the session to its next
//! connection, when the stream ends.

use super::Inbound;

/// Messages sent on a `manual_ack` stream and not yet acknowledged.
#[derive(Default)]
pub(crate) struct Acks {
    manual: bool,
    unacked: std::sync::Mutex<std::collections::VecDeque<Inbound>>,
    acked: tokio::sync::Notify,
    /// Without `manual_ack`: the reliable client seq of the message last handed to the stream.
    handed: std::sync::atomic::AtomicU64,
}

/// Unacknowledged messages a `manual_ack` stream may have in flight.
pub(crate) const ACK_WINDOW: usize = 64;

impl Acks {
    pub(crate) fn new(manual: bool) -> Self {
        Self {
            manual,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Inbound>> {
        self.unacked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until another message may be sent.
    pub(crate) async fn window(&self) {
        if !self.manual {
            return;
        }
        loop {
            let acked = self.acked.notified();
            tokio::pin!(acked);
            acked.as_mut().enable();
            if self.lock().len() < ACK_WINDOW {
                return;
            }
            acked.await;
        }
    }

    /// Remembers a message until it is acknowledged (or, without `manual_ack`, until the
    /// stream asks for the next one).
    pub(crate) fn sent(&self, m: &Inbound) {
        if self.manual {
            self.lock().push_back(m.clone());
        } else {
            self.handed
                .store(m.client_seq, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The reliable client's seq of the message the stream was last handed, now that it asks
    /// for the next one (so it has the previous); 0 when none.
    pub(crate) fn take_handed(&self) -> u64 {
        self.handed.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets every message up to `seq`; answers the highest reliable client seq among them.
    pub(crate) fn ack(&self, seq: u64) -> u64 {
        let mut q = self.lock();
        let mut client_seq = 0;
        while q.front().is_some_and(|m| m.seq <= seq) {
            if let Some(m) = q.pop_front() {
                client_seq = client_seq.max(m.client_seq);
            }
        }
        drop(q);
        self.acked.notify_waiters();
        client_seq
    }

    pub(crate) fn take_all(&self) -> Vec<Inbound> {
        self.lock().drain(..).collect()
    }
}
