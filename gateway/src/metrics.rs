//! Prometheus metrics, served as text at `/metrics`.
//!
//! Every counter is an atomic: recording costs no lock and no allocation on the message path.
//! Label sets are small and closed (close codes, method names, Redis commands, reasons), never
//! session IDs; the one label a backend chooses (a `Subscribe` hub and consumer group) is capped
//! at [`MAX_GROUP_LABELS`] sets, the rest counted under `_other`. Names follow Prometheus
//! conventions: base units (`_seconds`, `_bytes`), `_total` on counters; the standard
//! `process_*` metrics (memory, CPU, file descriptors) are read from `/proc` at each scrape.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        text::{encode_eof, encode_registry},
        DescriptorEncoder, EncodeLabelSet, EncodeMetric,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

/// Distinct (hub, group) label sets `subscriber_events` takes before lumping the rest.
pub(crate) const MAX_GROUP_LABELS: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CommandLabel {
    pub command: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms to 10 s: a Redis round trip on a LAN up to a stalled one.
fn redis_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ])
}

/// 0.1 ms to 60 s: a local Send up to a long `Read`.
fn call_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        60.0,
    ])
}

/// 10 µs to 10 s: a publish to a handful of sessions up to one to a hundred thousand.
fn fanout_buckets() -> Histogram {
    Histogram::new([
        0.00001, 0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    pub code: u16,
    pub closed_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabel {
    pub method: &'static str,
    pub status: &'static str,
}

/// How a session's WebSocket is carried, and whether it is compressed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabel {
    /// `http1` (an Upgrade) or `http2` (an extended CONNECT, RFC 8441).
    pub transport: &'static str,
    /// `deflate` (permessage-deflate) or `none`.
    pub compression: &'static str,
}

/// Who protects an upgraded TLS session's records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RecordsLabel {
    /// `gateway` (TLS 1.3, out of rustls after the upgrade) or `rustls` (TLS 1.2).
    pub records: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabel {
    pub hub: String,
    pub group: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub sessions_open: Gauge,
    pub connects: Counter,
    pub connects_by_transport: Family<TransportLabel, Counter>,
    pub tls_sessions: Family<RecordsLabel, Counter>,
    pub disconnects: Family<CodeLabel, Counter>,
    pub upgrades_refused: Family<ReasonLabel, Counter>,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub outbound_refused: Counter,
    pub outbound_discarded: Counter,
    pub slow_consumer_closes: Counter,
    pub sessions_suspended: Gauge,
    pub resumes: Counter,
    pub resumes_refused: Counter,
    pub reliable_duplicates: Counter,
    pub write_timeouts: Counter,
    pub inbound_discarded: Family<ReasonLabel, Counter>,
    pub inbox_messages: Gauge,
    pub reads_waiting: Gauge,
    pub paused_sockets: Gauge,
    pub handshakes: Gauge,
    pub handshake_waits: Counter,
    pub subscriber_events: Family<GroupLabel, Counter>,
    pub subscribers_cut_off: Counter,
    pub sessions_lost: Counter,
    pub registry_repairs: Counter,
    pub rate_limited: Counter,
    pub grpc_calls: Family<GrpcLabel, Counter>,
    pub grpc_duration: Histograms<GrpcLabel>,
    pub publish_fanout: Histogram,
    pub redis_duration: Histograms<CommandLabel>,
    pub redis_errors: Family<CommandLabel, Counter>,
    /// Sessions in the registry, all nodes (the cluster's view; this node's pool when alone).
    pub registry_sessions: Gauge,
    pub cluster_nodes: Gauge,
    group_labels: AtomicUsize,
    /// Standard `process_*` metrics, without the `switchboard_` prefix.
    process: Registry,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let m = Self {
            sessions_open: Gauge::default(),
            connects: Counter::default(),
            connects_by_transport: Family::default(),
            tls_sessions: Family::default(),
            disconnects: Family::default(),
            upgrades_refused: Family::default(),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            outbound_refused: Counter::default(),
            outbound_discarded: Counter::default(),
            slow_consumer_closes: Counter::default(),
            sessions_suspended: Gauge::default(),
            resumes: Counter::default(),
            resumes_refused: Counter::default(),
            reliable_duplicates: Counter::default(),
            write_timeouts: Counter::default(),
            inbound_discarded: Family::default(),
            inbox_messages: Gauge::default(),
            reads_waiting: Gauge::default(),
            paused_sockets: Gauge::default(),
            handshakes: Gauge::default(),
            handshake_waits: Counter::default(),
            subscriber_events: Family::default(),
            subscribers_cut_off: Counter::default(),
            sessions_lost: Counter::default(),
            registry_repairs: Counter::default(),
            rate_limited: Counter::default(),
            grpc_calls: Family::default(),
            grpc_duration: Family::new_with_constructor(call_buckets),
            publish_fanout: fanout_buckets(),
            redis_duration: Family::new_with_constructor(redis_buckets),
            redis_errors: Family::default(),
            registry_sessions: Gauge::default(),
            cluster_nodes: Gauge::default(),
            group_labels: AtomicUsize::new(0),
            process: Registry::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "sessions_open",
            "Open client sessions",
            m.sessions_open.clone(),
        );
        r.register("connects", "Sessions admitted", m.connects.clone());
        r.register(
            "sessions_suspended",
            "Reliable sessions waiting for their client to resume (counted in sessions_open too)",
            m.sessions_suspended.clone(),
        );
        r.register(
            "resumes",
            "Reliable sessions resumed on this node",
            m.resumes.clone(),
        );
        r.register(
            "resumes_refused",
            "Resumes refused with 4401 (unknown or expired session, wrong token)",
            m.resumes_refused.clone(),
        );
        r.register(
            "reliable_duplicates",
            "Client messages of reliable sessions dropped as duplicates (resent after a resume, or covered by a backend's Read ack)",
            m.reliable_duplicates.clone(),
        );
        r.register(
            "connects_by_transport",
            "Sessions admitted, by transport (http1, http2) and compression (deflate, none)",
            m.connects_by_transport.clone(),
        );
        r.register(
            "tls_sessions",
            "WebSocket sessions over TLS (HTTP/1.1), by who protects their records after the upgrade",
            m.tls_sessions.clone(),
        );
        r.register(
            "disconnects",
            "Sessions ended, by close code and by who closed",
            m.disconnects.clone(),
        );
        r.register(
            "upgrades_refused",
            "Upgrade requests refused, by reason",
            m.upgrades_refused.clone(),
        );
        r.register(
            "messages_in",
            "Client messages received",
            m.messages_in.clone(),
        );
        r.register(
            "bytes_in",
            "Client message bytes received",
            m.bytes_in.clone(),
        );
        r.register(
            "frames_out",
            "Frames written to clients",
            m.messages_out.clone(),
        );
        r.register("bytes_out", "Bytes written to clients", m.bytes_out.clone());
        r.register(
            "outbound_refused",
            "Messages refused because a session's outbound queue was full",
            m.outbound_refused.clone(),
        );
        r.register(
            "outbound_discarded",
            "Queued frames dropped when a session was closed (slow consumers)",
            m.outbound_discarded.clone(),
        );
        r.register(
            "slow_consumer_closes",
            "Sessions closed with 1013 because the client did not read",
            m.slow_consumer_closes.clone(),
        );
        r.register(
            "write_timeouts",
            "Client sockets reset because they took no byte for --write-timeout",
            m.write_timeouts.clone(),
        );
        r.register(
            "inbound_discarded",
            "Client messages no backend received, by reason",
            m.inbound_discarded.clone(),
        );
        r.register(
            "inbox_messages",
            "Client messages waiting in inboxes",
            m.inbox_messages.clone(),
        );
        r.register(
            "reads_waiting",
            "Read calls waiting for a client message",
            m.reads_waiting.clone(),
        );
        r.register(
            "paused_sockets",
            "Sessions whose socket is not read because their inbox is full",
            m.paused_sockets.clone(),
        );
        r.register(
            "handshakes",
            "Client connections accepted and not yet WebSockets (TLS, HTTP request, upgrade)",
            m.handshakes.clone(),
        );
        r.register(
            "handshake_waits",
            "Times the client listener stopped accepting because --max-handshakes connections \
             were in their handshake",
            m.handshake_waits.clone(),
        );
        r.register(
            "subscriber_events",
            "Events delivered to Subscribe streams, by hub and consumer group",
            m.subscriber_events.clone(),
        );
        r.register(
            "subscribers_cut_off",
            "Subscribe streams ended because they did not keep up",
            m.subscribers_cut_off.clone(),
        );
        r.register(
            "sessions_lost",
            "Sessions of dead nodes removed from the registry by this node",
            m.sessions_lost.clone(),
        );
        r.register(
            "registry_repairs",
            "Registry entries of this node put right by reconciliation (missing or stale)",
            m.registry_repairs.clone(),
        );
        r.register(
            "rate_limited",
            "Sessions closed with 1008 for sending faster than the per-session rate",
            m.rate_limited.clone(),
        );
        r.register(
            "grpc_calls",
            "Backend gRPC calls, by method and status",
            m.grpc_calls.clone(),
        );
        r.register(
            "grpc_call_duration_seconds",
            "Backend gRPC calls from request to answer (to the stream's start for streams), by method and status",
            m.grpc_duration.clone(),
        );
        r.register(
            "publish_fanout_duration_seconds",
            "Time a publish takes to queue its message for this node's sessions",
            m.publish_fanout.clone(),
        );
        r.register(
            "redis_command_duration_seconds",
            "Redis round trips of the registry, by command (PIPELINE for a batch)",
            m.redis_duration.clone(),
        );
        r.register(
            "redis_errors",
            "Redis round trips of the registry that failed or timed out, by command",
            m.redis_errors.clone(),
        );
        r.register(
            "registry_sessions",
            "Sessions recorded in the registry, all nodes",
            m.registry_sessions.clone(),
        );
        r.register(
            "cluster_nodes",
            "Live nodes of the cluster this node sees (1 alone)",
            m.cluster_nodes.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            process,
            ..m
        }
    }

    /// The exposition (OpenMetrics text).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.process);
        let _ = encode_eof(&mut out);
        out
    }

    /// Counts a finished gRPC call and how long it took.
    pub(crate) fn grpc(&self, method: &'static str, code: tonic::Code, started: Instant) {
        let label = GrpcLabel {
            method,
            status: code_name(code),
        };
        self.grpc_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        self.grpc_calls.get_or_create(&label).inc();
    }

    /// Times one Redis round trip.
    pub(crate) fn redis(&self, command: &'static str, started: Instant, ok: bool) {
        let label = CommandLabel { command };
        self.redis_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            self.redis_errors.get_or_create(&label).inc();
        }
    }

    /// The counter of events delivered to a `Subscribe` group, under a capped set of labels;
    /// a group keeps it, so counting an event costs one atomic add.
    pub(crate) fn subscriber_counter(&self, hub: &str, group: &str) -> Counter {
        let label = GroupLabel {
            hub: hub.to_owned(),
            group: group.to_owned(),
        };
        if let Some(c) = self.subscriber_events.get(&label) {
            return c.clone();
        }
        let label = if self.group_labels.fetch_add(1, Ordering::Relaxed) < MAX_GROUP_LABELS {
            label
        } else {
            self.group_labels.fetch_sub(1, Ordering::Relaxed);
            GroupLabel {
                hub: "_other".into(),
                group: "_other".into(),
            }
        };
        self.subscriber_events.get_or_create(&label).clone()
    }
}

/// `process_*` metrics from `/proc/self` (Linux), read at each scrape; absent elsewhere.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = process::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(p.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent",
            None,
            counter.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size",
                p.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
            (
                "process_max_fds",
                "Limit of open file descriptors",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time since the Unix epoch",
                p.start_time_seconds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The standard process metrics, from Linux's `/proc/self`.
mod process {
    /// Linux reports CPU times in `USER_HZ` ticks, fixed at 100 for user space on every
    /// architecture it runs on (`sysconf(_SC_CLK_TCK)`).
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) struct Process {
        pub cpu_seconds: f64,
        pub resident_bytes: f64,
        pub virtual_bytes: f64,
        pub open_fds: f64,
        pub max_fds: f64,
        pub start_time_seconds: f64,
    }

    pub(super) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces; fields after it are split on spaces.
        let after = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Field n of proc(5) is f[n - 3] here.
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = (num(14)? + num(15)?) / TICKS_PER_SECOND;
        let started_ticks = num(22)?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = |key: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.trim().strip_suffix("kB")?;
                v.trim().parse::<f64>().ok().map(|k| k * 1024.0)
            })
        };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("Max open files")?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .unwrap_or(0.0);
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Some(Process {
            cpu_seconds,
            resident_bytes: kib("VmRSS:").unwrap_or(0.0),
            virtual_bytes: kib("VmSize:").unwrap_or(0.0),
            open_fds,
            max_fds,
            start_time_seconds: boot + started_ticks / TICKS_PER_SECOND,
        })
    }
}

/// Holds a gauge one up for as long as it lives, however the work it counts ends (also when
/// its future is dropped).
pub(crate) struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn inc(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_group_labels_stop_at_the_cap_and_the_rest_are_lumped() {
        let m = Metrics::new();
        for i in 0..MAX_GROUP_LABELS + 50 {
            m.subscriber_counter("h", &format!("g{i}")).inc();
        }
        // A label set already taken keeps counting under its own name.
        m.subscriber_counter("h", "g0").inc();
        let text = m.render();
        let sets = text
            .lines()
            .filter(|l| l.starts_with("switchboard_subscriber_events_total{"))
            .count();
        assert_eq!(sets, MAX_GROUP_LABELS + 1, "{text}");
        assert!(
            text.contains(r#"switchboard_subscriber_events_total{hub="_other",group="_other"} 50"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchboard_subscriber_events_total{hub="h",group="g0"} 2"#),
            "{text}"
        );
    }
}
