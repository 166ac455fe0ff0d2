//! Prometheus metrics, served as text at `/metrics`.
//!
//! Every counter is an atomic: recording costs no lock and no allocation on the message path.
//! Label sets are small and closed (close codes, method names, reasons), never session IDs.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

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
    pub disconnects: Family<CodeLabel, Counter>,
    pub upgrades_refused: Family<ReasonLabel, Counter>,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub outbound_refused: Counter,
    pub outbound_discarded: Counter,
    pub slow_consumer_closes: Counter,
    pub write_timeouts: Counter,
    pub inbound_discarded: Family<ReasonLabel, Counter>,
    pub inbox_messages: Gauge,
    pub paused_sockets: Gauge,
    pub subscriber_events: Family<GroupLabel, Counter>,
    pub subscribers_cut_off: Counter,
    pub sessions_lost: Counter,
    pub rate_limited: Counter,
    pub grpc_calls: Family<GrpcLabel, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let m = Self {
            sessions_open: Gauge::default(),
            connects: Counter::default(),
            disconnects: Family::default(),
            upgrades_refused: Family::default(),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            outbound_refused: Counter::default(),
            outbound_discarded: Counter::default(),
            slow_consumer_closes: Counter::default(),
            write_timeouts: Counter::default(),
            inbound_discarded: Family::default(),
            inbox_messages: Gauge::default(),
            paused_sockets: Gauge::default(),
            subscriber_events: Family::default(),
            subscribers_cut_off: Counter::default(),
            sessions_lost: Counter::default(),
            rate_limited: Counter::default(),
            grpc_calls: Family::default(),
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
            "paused_sockets",
            "Sessions whose socket is not read because their inbox is full",
            m.paused_sockets.clone(),
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
            "rate_limited",
            "Sessions closed with 1008 for sending faster than the per-session rate",
            m.rate_limited.clone(),
        );
        r.register(
            "grpc_calls",
            "Backend gRPC calls, by method and status",
            m.grpc_calls.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn grpc(&self, method: &'static str, code: tonic::Code) {
        self.grpc_calls
            .get_or_create(&GrpcLabel {
                method,
                status: code_name(code),
            })
            .inc();
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
