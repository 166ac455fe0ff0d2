//! Conversions between the generated protobuf types and the gateway's own.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use switchboard_proto::v1 as pb;

use crate::{
    error::{Error, Result},
    message::{Kind, Message},
    node::{Delivery, Reached},
    pool::Target,
    registry::{Liveness, SessionRecord},
    session::{Closer, Inbound, SessionEnd, SessionId},
};

pub(crate) fn session_id(s: &str) -> Result<SessionId> {
    if s.is_empty() {
        return Err(Error::InvalidArgument("session_id is required".into()));
    }
    // A string that could never have been issued names no session.
    SessionId::parse(s).ok_or_else(|| Error::NotFound(s.to_owned()))
}

/// Most entries any list in one call may hold (`SendBatch` items, `CheckSessions` IDs, a
/// publish's sessions and exclusions): the work of one call, and the Redis pipelines behind it,
/// stay bounded whatever a backend sends.
pub(crate) const MAX_LIST: usize = 10_000;

/// Refuses a list longer than [`MAX_LIST`], naming its field.
pub(crate) fn bounded(field: &str, len: usize) -> Result<()> {
    if len > MAX_LIST {
        return Err(Error::InvalidArgument(format!(
            "{field} has {len} entries; at most {MAX_LIST} are allowed in one call"
        )));
    }
    Ok(())
}

/// IDs of a list of at most [`MAX_LIST`]; malformed ones are refused, so a typo is not a
/// silent "unknown".
pub(crate) fn session_ids(field: &str, ids: &[String]) -> Result<Vec<SessionId>> {
    bounded(field, ids.len())?;
    ids.iter()
        .map(|s| {
            SessionId::parse(s)
                .ok_or_else(|| Error::InvalidArgument(format!("malformed session ID {s:?}")))
        })
        .collect()
}

pub(crate) fn message(m: Option<pb::Message>) -> Result<Message> {
    use pb::message::Payload;
    match m.and_then(|m| m.payload) {
        Some(Payload::Text(t)) => Ok(Message {
            kind: Kind::Text,
            payload: Bytes::from(t),
        }),
        Some(Payload::Binary(b)) => Ok(Message {
            kind: Kind::Binary,
            payload: b,
        }),
        None => Err(Error::InvalidArgument(
            "message is required (text or binary)".into(),
        )),
    }
}

pub(crate) fn to_pb_message(m: &Message) -> pb::Message {
    use pb::message::Payload;
    let payload = match m.kind {
        // Text payloads were validated as UTF-8 when the client's frames were assembled.
        Kind::Text => Payload::Text(String::from_utf8_lossy(&m.payload).into_owned()),
        Kind::Binary => Payload::Binary(m.payload.clone()),
    };
    pb::Message {
        payload: Some(payload),
    }
}

pub(crate) fn inbound(m: &Inbound) -> pb::InboundMessage {
    pb::InboundMessage {
        seq: m.seq,
        message: Some(to_pb_message(&m.message)),
        client_seq: m.client_seq,
    }
}

/// A message another node answered (see `Peer/Release`); `None` when it carries no message.
pub(crate) fn from_inbound(m: pb::InboundMessage) -> Option<Inbound> {
    Some(Inbound {
        seq: m.seq,
        message: message(m.message).ok()?,
        client_seq: m.client_seq,
    })
}

pub(crate) fn target(t: Option<pb::Target>) -> Result<Target> {
    use pb::target::Kind as T;
    match t.and_then(|t| t.kind) {
        Some(T::Hub(hub)) => Ok(Target::Hub(hub)),
        Some(T::Group(g)) => Ok(Target::Group {
            hub: g.hub,
            group: g.group,
        }),
        Some(T::User(u)) => Ok(Target::User {
            hub: (!u.hub.is_empty()).then_some(u.hub),
            user: u.user,
        }),
        Some(T::Sessions(list)) => Ok(Target::Sessions(session_ids(
            "target.sessions.session_ids",
            &list.session_ids,
        )?)),
        None => Err(Error::InvalidArgument(
            "target is required: hub, group, user or sessions".into(),
        )),
    }
}

pub(crate) fn closed(end: &SessionEnd) -> pb::Closed {
    pb::Closed {
        code: end.code.into(),
        reason: end.reason.clone(),
        closed_by: match end.closed_by {
            Closer::Client => pb::Closer::Client,
            Closer::Gateway => pb::Closer::Gateway,
            Closer::Backend => pb::Closer::Backend,
            Closer::NodeLost => pb::Closer::NodeLost,
        } as i32,
    }
}

pub(crate) fn state(l: &Liveness) -> pb::SessionState {
    match l {
        Liveness::Open => pb::SessionState::Open,
        Liveness::Suspended => pb::SessionState::Suspended,
        Liveness::Closed(_) => pb::SessionState::Closed,
        Liveness::Unknown => pb::SessionState::Unknown,
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn session_info(r: SessionRecord) -> pb::SessionInfo {
    pb::SessionInfo {
        session_id: r.id.to_string(),
        hub: r.hub,
        user: r.user,
        groups: r.groups,
        metadata: r.metadata.into_iter().collect(),
        node: r.node,
        connected_at: Some(timestamp(r.connected_at)),
        last_active_at: Some(timestamp(r.last_active_at)),
        remote_addr: r.remote_addr,
        subprotocol: r.subprotocol,
        reliable: r.reliable,
        suspended: r.suspended,
        counters: r.counters.map(|c| pb::SessionCounters {
            messages_in: c.messages_in,
            bytes_in: c.bytes_in,
            messages_out: c.messages_out,
            bytes_out: c.bytes_out,
            outbound_queue_depth: c.outbound_queue_depth,
            inbox_depth: c.inbox_depth,
        }),
    }
}

/// A required, non-negative timeout.
pub(crate) fn timeout(d: Option<prost_types::Duration>) -> Result<Duration> {
    let d = d.ok_or_else(|| {
        Error::InvalidArgument("timeout is required (it is capped by the gateway)".into())
    })?;
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::InvalidArgument(
            "timeout must not be negative".into(),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A hub event in its wire form (encoded once per event, shared by every subscriber).
pub(crate) fn encode_event(e: &crate::events::Event) -> pb::Event {
    use crate::events::EventBody;
    use pb::event::Kind;
    let kind = match &e.body {
        EventBody::Connected(r) => Kind::Connected(session_info((**r).clone())),
        EventBody::Message(m) => Kind::Message(inbound(m)),
        EventBody::Disconnected(end) => Kind::Disconnected(closed(end)),
        EventBody::Suspended(end) => Kind::Suspended(closed(end)),
        EventBody::Resumed(r) => Kind::Resumed(session_info((**r).clone())),
    };
    pb::Event {
        session_id: e.session.to_string(),
        hub: e.hub.to_string(),
        kind: Some(kind),
    }
}

/// The receipt a `Send` asks for.
pub(crate) fn receipt(r: pb::Receipt) -> Reached {
    match r {
        pb::Receipt::Queued => Reached::Queued,
        pb::Receipt::Written => Reached::Written,
        pb::Receipt::Acked => Reached::Acked,
    }
}

pub(crate) fn reached(r: Reached) -> pb::Receipt {
    match r {
        Reached::Queued => pb::Receipt::Queued,
        Reached::Written => pb::Receipt::Written,
        Reached::Acked => pb::Receipt::Acked,
    }
}

pub(crate) fn delivery(d: Delivery) -> pb::PublishResponse {
    pb::PublishResponse {
        queued: d.queued,
        refused: d.refused,
        unreachable_nodes: Vec::new(),
        outcomes: d
            .outcomes
            .into_iter()
            .map(|(id, queued)| pb::SessionOutcome {
                session_id: id.to_string(),
                outcome: if queued {
                    pb::Outcome::Queued
                } else {
                    pb::Outcome::Refused
                } as i32,
            })
            .collect(),
    }
}
