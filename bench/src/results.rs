//! JSON records the tools exchange: a load generator's round summary and raw samples, a
//! publisher's report.

use serde::{Deserialize, Serialize};

use crate::stats::Percentiles;

/// What a load generator saw in one round (between two `finish` commands).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoundSummary {
    pub name: String,
    pub tag: String,
    /// The expectation checked: `broadcast M`, `unicast M N`, `flood M` or `none`.
    pub expect: String,
    pub sockets_open: u64,
    pub sockets_failed: u64,
    /// Sockets that ended before we closed them (server close, reset, protocol error).
    pub sockets_dropped: u64,
    pub expected: u64,
    /// Expected messages received exactly once or more (counted once).
    pub delivered: u64,
    /// Extra copies of a message a socket had already received.
    pub duplicates: u64,
    /// Benchmark messages no one expected on that socket (wrong socket or sequence number).
    pub unexpected: u64,
    /// Frames that carried no benchmark stamp (a welcome frame, say).
    pub other_messages: u64,
    /// Benchmark messages whose bytes differ from what the publisher built for their stamp
    /// (not counted as delivered).
    #[serde(default)]
    pub corrupt: u64,
    /// Messages a socket got after one with a higher sequence number.
    #[serde(default)]
    pub out_of_order: u64,
    pub exact: bool,
    /// Send to receive, microseconds, over delivered messages.
    pub latency_us: Percentiles,
    pub first_sent_ns: u64,
    pub last_recv_ns: u64,
    pub bytes: u64,
    /// Bytes read off the sockets this round (what the wire carried, compressed or not).
    #[serde(default)]
    pub wire_bytes: u64,
    /// Sockets whose server agreed to permessage-deflate.
    #[serde(default)]
    pub deflated_sockets: u64,
    /// For each sequence number: its send time, the last receive time and how many sockets got
    /// it (a broadcast's time to the last socket).
    pub per_seq: Vec<SeqSpan>,
    /// The load generator's own CPU ticks (user, system) since it started.
    pub self_cpu_ticks: (u64, u64),
    pub self_rss_kib: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeqSpan {
    pub seq: u64,
    pub sent_ns: u64,
    pub last_recv_ns: u64,
    pub count: u64,
}

/// Every delivered sample of a round, as columns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RawSamples {
    pub name: String,
    pub tag: String,
    /// Global socket index.
    pub sock: Vec<u64>,
    pub seq: Vec<u64>,
    pub sent_ns: Vec<u64>,
    pub recv_ns: Vec<u64>,
}

/// What a publisher did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishReport {
    pub target: String,
    pub mode: String,
    /// Messages the publisher tried to send (sequence numbers 1..=attempted).
    pub attempted: u64,
    /// Calls the server accepted; for batched unicast, items (messages) it accepted.
    pub ok: u64,
    /// Calls (batched unicast: items) that failed.
    pub failed: u64,
    /// Error kinds and counts.
    pub errors: Vec<(String, u64)>,
    pub elapsed_s: f64,
    /// `ok / elapsed_s`.
    pub achieved_per_s: f64,
    /// The rate asked for (unicast), 0 otherwise.
    pub target_per_s: f64,
    /// Sessions a Publish said it queued the message for, summed over calls.
    pub queued: u64,
    pub refused: u64,
    /// Call round trip (one `Send`, one `SendBatch` or one HTTP publish), microseconds.
    pub call_us: Percentiles,
    /// The publisher's own CPU (user, system clock ticks) over its life.
    #[serde(default)]
    pub self_cpu_ticks: (u64, u64),
    /// `SendBatch` calls made (batched unicast; 0 otherwise). Defaults keep older reports
    /// readable.
    #[serde(default)]
    pub batch_calls: u64,
    /// Mean and largest items per `SendBatch` call.
    #[serde(default)]
    pub batch_items_mean: f64,
    #[serde(default)]
    pub batch_items_max: u64,
}
