//! Abuse limits that cost almost nothing to enforce: connection counts (total and per client
//! IP), checked before any upgrade work, and a token bucket for each session's message and
//! byte rate, kept in the session's reader task (no shared state on the message path).

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use dashmap::DashMap;

/// Counts open sessions, in all and per client IP.
#[derive(Default)]
pub(crate) struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

/// Why a new connection is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The node holds as many sessions as it may (503).
    NodeFull,
    /// This client IP holds as many as it may (429).
    IpFull,
}

/// One admitted connection; gives its slot back when dropped.
pub(crate) struct Permit {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    /// Zero means no limit.
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            ..Self::default()
        })
    }

    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max_total > 0 && total >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::NodeFull);
        }
        let mut slot = self.per_ip.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *slot >= self.max_per_ip {
            drop(slot);
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.release_ip(ip, false);
            return Err(Refusal::IpFull);
        }
        *slot += 1;
        Ok(Permit {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Forgets an IP's entry once it counts nothing, so the map stays the size of the clients.
    fn release_ip(&self, ip: IpAddr, taken: bool) {
        if let dashmap::Entry::Occupied(mut e) = self.per_ip.entry(ip) {
            if taken {
                *e.get_mut() = e.get().saturating_sub(1);
            }
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        self.limiter.release_ip(self.ip, true);
    }
}

/// A token bucket refilled continuously; capacity is one second's worth.
pub(crate) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// `None` when `per_second` is zero (no limit).
    pub(crate) fn new(per_second: f64, min_capacity: f64) -> Option<Self> {
        (per_second > 0.0).then(|| {
            let capacity = per_second.max(min_capacity);
            Self {
                rate: per_second,
                capacity,
                tokens: capacity,
                last: Instant::now(),
            }
        })
    }

    /// Takes `n` tokens; false when the client is over its rate.
    pub(crate) fn take(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn limits_count_and_free_up() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.acquire(a).unwrap();
        let _p2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refusal::IpFull));
        let _p3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refusal::NodeFull));
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.acquire(a).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn unlimited_is_unlimited_and_the_map_shrinks() {
        let l = ConnectionLimiter::new(0, 0);
        let ip: IpAddr = "::1".parse().unwrap();
        let permits: Vec<_> = (0..1000).map(|_| l.acquire(ip).unwrap()).collect();
        drop(permits);
        assert!(l.per_ip.is_empty());
    }

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::new(10.0, 0.0).unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(b.take(1.0, t0));
        }
        assert!(!b.take(1.0, t0));
        assert!(b.take(1.0, t0 + Duration::from_millis(150)));
        assert!(Bucket::new(0.0, 1.0).is_none());
    }
}
