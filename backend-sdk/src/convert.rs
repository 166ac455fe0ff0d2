//! Conversions between the generated protobuf types and the SDK's own. Nothing public.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_proto::v1 as pb;

use crate::types::{
    Closed, Closer, Event, EventKind, Inbound, Message, Receipt, SessionCounters, SessionId,
    SessionInfo, SessionState, Target,
};

pub(crate) fn message(m: Message) -> pb::Message {
    use pb::message::Payload;
    pb::Message {
        payload: Some(match m {
            Message::Text(t) => Payload::Text(t),
            Message::Binary(b) => Payload::Binary(b),
        }),
    }
}

fn from_message(m: Option<pb::Message>) -> Message {
    use pb::message::Payload;
    match m.and_then(|m| m.payload) {
        Some(Payload::Text(t)) => Message::Text(t),
        Some(Payload::Binary(b)) => Message::Binary(b),
        // The gateway always sets one; an empty binary message is the harmless reading.
        None => Message::Binary(Default::default()),
    }
}

pub(crate) fn inbound(m: pb::InboundMessage) -> Inbound {
    Inbound {
        seq: m.seq,
        message: from_message(m.message),
        client_seq: m.client_seq,
    }
}

pub(crate) fn closed(c: pb::Closed) -> Closed {
    Closed {
        code: u16::try_from(c.code).unwrap_or(u16::MAX),
        reason: c.reason,
        closed_by: match pb::Closer::try_from(c.closed_by) {
            Ok(pb::Closer::Client) => Closer::Client,
            Ok(pb::Closer::Gateway) => Closer::Gateway,
            Ok(pb::Closer::Backend) => Closer::Backend,
            Ok(pb::Closer::NodeLost) => Closer::NodeLost,
            _ => Closer::Unknown,
        },
    }
}

fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

pub(crate) fn session_info(s: pb::SessionInfo) -> SessionInfo {
    SessionInfo {
        id: SessionId::from(s.session_id),
        hub: s.hub,
        user: s.user,
        groups: s.groups,
        metadata: s.metadata.into_iter().collect(),
        node: s.node,
        connected_at: time(s.connected_at),
        last_active_at: time(s.last_active_at),
        remote_addr: s.remote_addr,
        subprotocol: s.subprotocol,
        reliable: s.reliable,
        suspended: s.suspended,
        counters: s.counters.map(|c| SessionCounters {
            messages_in: c.messages_in,
            bytes_in: c.bytes_in,
            messages_out: c.messages_out,
            bytes_out: c.bytes_out,
            outbound_queue_depth: c.outbound_queue_depth,
            inbox_depth: c.inbox_depth,
        }),
    }
}

pub(crate) fn state(s: i32) -> SessionState {
    match pb::SessionState::try_from(s) {
        Ok(pb::SessionState::Open) => SessionState::Open,
        Ok(pb::SessionState::Suspended) => SessionState::Suspended,
        Ok(pb::SessionState::Closed) => SessionState::Closed,
        Ok(pb::SessionState::Invalid) => SessionState::Invalid,
        _ => SessionState::Unknown,
    }
}

pub(crate) fn target(t: Target) -> pb::Target {
    use pb::target::Kind;
    let kind = match t {
        Target::Hub(hub) => Kind::Hub(hub),
        Target::Group { hub, group } => Kind::Group(pb::GroupTarget { hub, group }),
        Target::User { hub, user } => Kind::User(pb::UserTarget {
            hub: hub.unwrap_or_default(),
            user,
        }),
        Target::Sessions(ids) => Kind::Sessions(pb::SessionList {
            session_ids: ids.iter().map(|id| id.to_string()).collect(),
        }),
    };
    pb::Target { kind: Some(kind) }
}

pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn event_kind(k: EventKind) -> i32 {
    match k {
        EventKind::Connected => pb::EventKind::Connected as i32,
        EventKind::Message => pb::EventKind::Message as i32,
        EventKind::Disconnected => pb::EventKind::Disconnected as i32,
        EventKind::Suspended => pb::EventKind::Suspended as i32,
        EventKind::Resumed => pb::EventKind::Resumed as i32,
    }
}

/// An event; `None` for one without a kind (a newer gateway's kind this SDK does not know).
pub(crate) fn event(e: pb::Event) -> Option<Event> {
    use pb::event::Kind;
    let session = SessionId::from(e.session_id);
    Some(match e.kind? {
        Kind::Connected(info) => Event::Connected(session_info(info)),
        Kind::Message(m) => Event::Message {
            session,
            hub: e.hub,
            message: inbound(m),
        },
        Kind::Disconnected(c) => Event::Disconnected {
            session,
            hub: e.hub,
            closed: closed(c),
        },
        Kind::Suspended(c) => Event::Suspended {
            session,
            hub: e.hub,
            closed: closed(c),
        },
        Kind::Resumed(info) => Event::Resumed(session_info(info)),
    })
}

pub(crate) fn receipt(r: Receipt) -> pb::Receipt {
    match r {
        Receipt::Queued => pb::Receipt::Queued,
        Receipt::Written => pb::Receipt::Written,
        Receipt::Acked => pb::Receipt::Acked,
    }
}

pub(crate) fn reached(r: pb::Receipt) -> Receipt {
    match r {
        pb::Receipt::Queued => Receipt::Queued,
        pb::Receipt::Written => Receipt::Written,
        pb::Receipt::Acked => Receipt::Acked,
    }
}
