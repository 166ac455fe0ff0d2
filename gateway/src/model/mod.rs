//! The vocabulary that sessions, the registry and errors share: what a session is called, how
//! it ended, and what the registry records of it. It depends on nothing else in the crate, so
//! `session`, `registry` and `error` each depend on it and not on one another.

mod id;

use std::{collections::BTreeMap, time::SystemTime};

pub use id::SessionId;

/// Who ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    Client,
    Gateway,
    Backend,
    NodeLost,
}

impl Closer {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Gateway => "gateway",
            Closer::Backend => "backend",
            Closer::NodeLost => "node_lost",
        }
    }
}

/// How a session ended: the close code and reason on the wire (1006 when the connection simply
/// dropped) and who started it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    pub code: u16,
    pub reason: String,
    pub closed_by: Closer,
}

/// What the registry knows of one open session.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SessionRecord {
    pub id: SessionId,
    pub hub: String,
    pub user: String,
    pub groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub node: String,
    pub connected_at: SystemTime,
    pub last_active_at: SystemTime,
    pub remote_addr: String,
    pub subprotocol: String,
    /// A `switchboard.reliable.v1` session.
    pub reliable: bool,
    /// Reliable, and its connection is gone: waiting for a resume.
    pub suspended: bool,
    /// Live counters; present only when the record comes from the node holding the session.
    pub counters: Option<SessionCounters>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionCounters {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub outbound_queue_depth: u64,
    pub inbox_depth: u64,
}

/// The registry's answer to "is this session still open?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Open,
    /// A reliable session waiting for its client to resume.
    Suspended,
    /// Closed recently enough that the registry still remembers how.
    Closed(SessionEnd),
    /// Never seen, or closed too long ago to remember.
    Unknown,
}
