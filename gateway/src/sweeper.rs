//! One task for every session's timers: keepalive pings, idle timeouts, slow consumers, and
//! the expiry of unread inboxes of closed sessions.
//!
//! A per-session timer task would cost memory for every idle connection; one pass over the
//! pool per tick costs microseconds per thousand sessions.

use std::{sync::Arc, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::{
    frame::{self, close_code, Opcode},
    metrics::ReasonLabel,
    node::Node,
    session::Closer,
};

pub(crate) async fn run(node: Arc<Node>, stop: CancellationToken) {
    let cfg = &node.config;
    // Fine enough that no timer fires much later than configured, at most once a second.
    let tick = [
        Duration::from_secs(1),
        cfg.ping_interval / 2,
        cfg.idle_timeout / 4,
        cfg.slow_consumer_grace / 2,
    ]
    .into_iter()
    .filter(|d| !d.is_zero())
    .min()
    .unwrap_or(Duration::from_secs(1))
    .max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ping = frame::encode(Opcode::Ping, &[]);
    let ping_ms = cfg.ping_interval.as_millis() as u64;
    let idle_ms = cfg.idle_timeout.as_millis() as u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now().into_std();
        let now_ms = node.ctx.clock.now_ms();
        for s in node.pool.all() {
            if !s.is_open() {
                continue;
            }
            if s.silent_ms(now_ms) >= idle_ms {
                tracing::info!(session = %s.id, "closing idle session");
                s.close(close_code::POLICY, "idle timeout", Closer::Gateway, true);
            } else if s.outbound_stalled(cfg.slow_consumer_grace, now) {
                node.close_slow_consumer(&s);
            } else if s.ping_due(now_ms, ping_ms) {
                s.send_control(ping.clone());
                s.pinged(now_ms);
            }
        }
        for s in node.pool.sweep_closed(cfg.closed_inbox_retention, now) {
            let unread = s.inbox.depth();
            tracing::warn!(session = %s.id, unread, "unread messages of a closed session expired");
            node.metrics
                .inbound_discarded
                .get_or_create(&ReasonLabel { reason: "expired" })
                .inc_by(unread as u64);
        }
    }
}
