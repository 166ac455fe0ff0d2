//! Reliable sessions (`switchboard.reliable.v1`, docs/reliable.md): the envelopes on the wire,
//! resume tokens, and the state a reliable session keeps across its connections.
//!
//! A reliable session outlives its connection. Each connection is a [`Session`] of its own (its
//! socket, queues and lifecycle); what must survive from one to the next lives in the shared
//! [`Reliable`]: sequence counters, the token, and (without Redis) the unacknowledged messages.
//! With Redis the same state is in Redis first (`registry::redis::journal`), so another node
//! can take over.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    frame::{self, close_code, Opcode},
    message::{Kind, Message},
    session::{Inbound, Session},
};

/// The subprotocol a client offers to get a reliable session.
pub(crate) const PROTOCOL: &str = "switchboard.reliable.v1";

/// Close code of a refused resume (the 4xxx mirror of HTTP 401).
pub(crate) const RESUME_REFUSED: u16 = 4401;
/// Close code of a connection replaced by a resume of the same session.
pub(crate) const REPLACED: u16 = 4001;

/// A resume token: 256 random bits, base64url. Only its SHA-256 is kept.
pub(crate) struct Token(pub String);

impl Token {
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        Ok(Self(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        ))
    }
}

/// The digest a token is checked against.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` is the one whose digest is `expected`, in constant time.
pub(crate) fn token_matches(token: &str, expected: &[u8; 32]) -> bool {
    digest(token).ct_eq(expected).into()
}

/// What a resume request carries in its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumeRequest {
    pub session: String,
    pub token: String,
    /// The last gateway `seq` the client received.
    pub ack: u64,
}

impl ResumeRequest {
    /// `Some` when the query names a session to resume; `Err` when it does so badly.
    pub(crate) fn from_query(query: Option<&str>) -> Result<Option<Self>, &'static str> {
        let Some(q) = query else { return Ok(None) };
        let (mut session, mut token, mut ack) = (None, None, None);
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "session" => session = Some(v.into_owned()),
                "resume_token" => token = Some(v.into_owned()),
                "ack" => ack = Some(v.parse::<u64>().map_err(|_| "ack must be a number")?),
                _ => {}
            }
        }
        match (session, token) {
            (None, None) => Ok(None),
            (Some(session), Some(token)) => Ok(Some(Self {
                session,
                token,
                ack: ack.unwrap_or(0),
            })),
            _ => Err("a resume needs both session and resume_token"),
        }
    }
}

/// A client envelope, parsed.
#[derive(Debug, PartialEq)]
pub(crate) enum FromClient {
    Ack(u64),
    Message { seq: u64, message: Message },
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    text: Option<String>,
    binary: Option<String>,
}

/// Parses one text frame of a reliable client; `Err` carries the close code and why.
pub(crate) fn parse(message: &Message) -> Result<FromClient, (u16, String)> {
    if message.kind != Kind::Text {
        return Err((
            close_code::UNSUPPORTED,
            "reliable sessions take text envelopes only".into(),
        ));
    }
    let bad = |why: String| (close_code::INVALID_PAYLOAD, why);
    let raw: RawEnvelope = serde_json::from_slice(&message.payload)
        .map_err(|e| bad(format!("invalid envelope: {e}")))?;
    let seq = raw
        .seq
        .ok_or_else(|| bad(format!("{} envelope without seq", raw.kind)))?;
    match raw.kind.as_str() {
        "ack" => Ok(FromClient::Ack(seq)),
        "message" => {
            if seq == 0 {
                return Err(bad("message seq starts at 1".into()));
            }
            let message = match (raw.text, raw.binary) {
                (Some(t), None) => Message {
                    kind: Kind::Text,
                    payload: Bytes::from(t),
                },
                (None, Some(b)) => Message {
                    kind: Kind::Binary,
                    payload: STANDARD
                        .decode(b)
                        .map_err(|e| bad(format!("binary is not base64: {e}")))?
                        .into(),
                },
                _ => return Err(bad("a message has exactly one of text and binary".into())),
            };
            Ok(FromClient::Message { seq, message })
        }
        other => Err(bad(format!("unknown envelope type {other:?}"))),
    }
}

/// `{"type":"message","seq":N,"text":…}` (or `binary`), as a text frame.
pub(crate) fn message_frame(seq: u64, message: &Message) -> Bytes {
    let body = match message.kind {
        Kind::Text => serde_json::json!({
            "type": "message",
            "seq": seq,
            "text": String::from_utf8_lossy(&message.payload),
        }),
        Kind::Binary => serde_json::json!({
            "type": "message",
            "seq": seq,
            "binary": STANDARD.encode(&message.payload),
        }),
    };
    frame::encode(Opcode::Text, body.to_string().as_bytes())
}

/// `{"type":"ack","seq":N}`, as a text frame.
pub(crate) fn ack_frame(seq: u64) -> Bytes {
    frame::encode(
        Opcode::Text,
        format!(r#"{{"type":"ack","seq":{seq}}}"#).as_bytes(),
    )
}

/// The welcome, first frame of every reliable connection.
pub(crate) fn welcome_frame(
    session: &str,
    token: &str,
    resumed: bool,
    ack: u64,
    window_ms: u64,
) -> Bytes {
    let body = serde_json::json!({
        "type": "welcome",
        "session": session,
        "resume_token": token,
        "resumed": resumed,
        "ack": ack,
        "resume_window_ms": window_ms,
    });
    frame::encode(Opcode::Text, body.to_string().as_bytes())
}

/// Counters a reliable session starts from: zero for a new one, from its store for a resume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Last gateway `seq` assigned.
    pub out: u64,
    /// Last gateway `seq` the client acknowledged.
    pub acked: u64,
    /// Last client `seq` in a backend's hands.
    pub taken: u64,
}

/// What a reliable session keeps across its connections on this node.
pub(crate) struct Reliable {
    token: [u8; 32],
    /// Held while a message is numbered and queued, and while a resume replays: frames reach
    /// the socket in `seq` order, and a replay never interleaves with a send.
    pub order: tokio::sync::Mutex<()>,
    out: AtomicU64,
    acked: AtomicU64,
    /// Last client `seq` accepted by this node (in the inbox or beyond): a resend at or below
    /// it is a duplicate.
    received: AtomicU64,
    taken: AtomicU64,
    /// The last `seq` queued on the current connection.
    pushed: AtomicU64,
    /// A task is writing kept messages the connection has not had yet; new ones wait for it.
    catching_up: AtomicBool,
    /// An ack task is running (see `Node::taken`).
    acking: AtomicBool,
    /// The message the last `Read` answered until the backend confirms it, and whether the
    /// session was released to another node (no more answers here).
    read: Mutex<ReadSlot>,
    /// Unacknowledged messages, when there is no Redis to hold them.
    journal: Mutex<VecDeque<(u64, Message)>>,
    /// IDs of the last messages kept, when there is no Redis to hold them.
    ids: Mutex<VecDeque<Box<str>>>,
    /// The connection now carrying the session.
    current: Mutex<Weak<Session>>,
    /// Woken when another connection takes the session over.
    replaced: tokio::sync::Notify,
}

impl Reliable {
    pub(crate) fn new(token: [u8; 32], counters: Counters) -> Arc<Self> {
        Arc::new(Self {
            token,
            order: tokio::sync::Mutex::new(()),
            out: AtomicU64::new(counters.out),
            acked: AtomicU64::new(counters.acked),
            received: AtomicU64::new(counters.taken),
            taken: AtomicU64::new(counters.taken),
            pushed: AtomicU64::new(counters.out),
            catching_up: AtomicBool::new(false),
            acking: AtomicBool::new(false),
            read: Mutex::new(ReadSlot::default()),
            journal: Mutex::new(VecDeque::new()),
            ids: Mutex::new(VecDeque::new()),
            current: Mutex::new(Weak::new()),
            replaced: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn token_digest(&self) -> &[u8; 32] {
        &self.token
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            out: self.out.load(Relaxed),
            acked: self.acked.load(Relaxed),
            taken: self.taken.load(Relaxed),
        }
    }

    pub(crate) fn token_matches(&self, token: &str) -> bool {
        token_matches(token, &self.token)
    }

    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()
    }

    pub(crate) fn set_current(&self, s: &Arc<Session>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(s);
        self.replaced.notify_waiters();
    }

    /// Resolves once `s` no longer carries the session (a resume took it over).
    pub(crate) async fn replaced(&self, s: &Arc<Session>) {
        loop {
            let changed = self.replaced.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.current().is_some_and(|c| Arc::ptr_eq(&c, s)) {
                return;
            }
            changed.await;
        }
    }

    /// The last gateway `seq` the client acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Relaxed)
    }

    /// Messages sent and not yet acknowledged.
    pub(crate) fn unacked(&self) -> u64 {
        self.out
            .load(Relaxed)
            .saturating_sub(self.acked.load(Relaxed))
    }

    /// Records the `seq` a store assigned (with Redis) or assigns the next one (without).
    pub(crate) fn assigned(&self, seq: u64) {
        self.out.fetch_max(seq, Relaxed);
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.out.fetch_add(1, Relaxed) + 1
    }

    /// The client acknowledged up to `seq`: `false` if it claims more than was sent.
    pub(crate) fn client_acked(&self, seq: u64) -> bool {
        if seq > self.out.load(Relaxed) {
            return false;
        }
        self.acked.fetch_max(seq, Relaxed);
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        while j.front().is_some_and(|(s, _)| *s <= seq) {
            j.pop_front();
        }
        true
    }

    pub(crate) fn journal_push(&self, seq: u64, message: Message) {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((seq, message));
    }

    /// Remembers a message ID among the last `max`; false when it is there already.
    pub(crate) fn remember(&self, id: &str, max: usize) -> bool {
        if id.is_empty() {
            return true;
        }
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.iter().any(|i| &**i == id) {
            return false;
        }
        if ids.len() >= max {
            ids.pop_front();
        }
        ids.push_back(id.into());
        true
    }

    /// Up to `max` journaled messages after `seq`, in order.
    pub(crate) fn journal_after(&self, seq: u64, max: usize) -> Vec<(u64, Message)> {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, _)| *s > seq)
            .take(max)
            .cloned()
            .collect()
    }

    /// The last gateway `seq` assigned.
    pub(crate) fn out(&self) -> u64 {
        self.out.load(Relaxed)
    }

    /// The last `seq` queued on the current connection.
    pub(crate) fn pushed(&self) -> u64 {
        self.pushed.load(Relaxed)
    }

    pub(crate) fn set_pushed(&self, seq: u64) {
        self.pushed.store(seq, Relaxed);
    }

    pub(crate) fn is_catching_up(&self) -> bool {
        self.catching_up.load(Relaxed)
    }

    /// Claims the catch-up task; false when one runs.
    pub(crate) fn start_catching_up(&self) -> bool {
        !self.catching_up.swap(true, Relaxed)
    }

    pub(crate) fn stop_catching_up(&self) {
        self.catching_up.store(false, Relaxed);
    }

    /// What to do with client message `seq`.
    pub(crate) fn receive(&self, seq: u64) -> Receive {
        let last = self.received.load(Relaxed);
        if seq <= last {
            Receive::Duplicate
        } else if seq == last + 1 {
            Receive::New
        } else {
            Receive::Gap { expected: last + 1 }
        }
    }

    /// Client message `seq` is in this node's hands (delivered to the inbox or a subscriber):
    /// a resend of it is a duplicate from now on. Not before: a delivery cut short by the end
    /// of its connection must let the client's resend in.
    pub(crate) fn received(&self, seq: u64) {
        self.received.fetch_max(seq, Relaxed);
    }

    /// A backend has client message `seq`; true when it moves the mark.
    pub(crate) fn take(&self, seq: u64) -> bool {
        self.taken.fetch_max(seq, Relaxed) < seq
    }

    pub(crate) fn taken(&self) -> u64 {
        self.taken.load(Relaxed)
    }

    fn read_slot(&self) -> std::sync::MutexGuard<'_, ReadSlot> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `Read` is about to answer `m`; false once the session was released to another node
    /// (the answer must not go out: the client sends it there).
    pub(crate) fn read(&self, m: &Inbound) -> bool {
        let mut r = self.read_slot();
        if r.released {
            return false;
        }
        r.answered = Some(m.clone());
        true
    }

    /// A `Read` arrived; `ack` is the last client seq the backend says it received, `None`
    /// when it does not say (then asking again confirms the previous answer).
    pub(crate) fn confirm_read(&self, ack: Option<u64>) -> Confirmed {
        let mut r = self.read_slot();
        match (&r.answered, ack) {
            (None, _) => Confirmed::Nothing,
            (Some(m), Some(ack)) if ack < m.client_seq => Confirmed::Lost(m.clone()),
            (Some(_), _) => r
                .answered
                .take()
                .map_or(Confirmed::Nothing, |m| Confirmed::Taken(m.client_seq)),
        }
    }

    /// Stops `Read` answers here for good and hands over the answer not yet confirmed.
    pub(crate) fn release(&self) -> Option<Inbound> {
        let mut r = self.read_slot();
        r.released = true;
        r.answered.take()
    }

    /// On the node that takes the session over: the previous holder's answer not yet
    /// confirmed, answered again to a `Read` that did not get it. The client's resend of it
    /// is a duplicate from now on.
    pub(crate) fn adopt_answer(&self, m: Inbound) {
        if m.client_seq <= self.taken() {
            return;
        }
        self.received(m.client_seq);
        self.read_slot().answered = Some(m);
    }

    /// Claims the ack task; false when one is already running.
    pub(crate) fn start_acking(&self) -> bool {
        !self.acking.swap(true, Relaxed)
    }

    pub(crate) fn stop_acking(&self) {
        self.acking.store(false, Relaxed);
    }
}

/// The `Read` answer a session holds until the backend confirms it.
#[derive(Default)]
struct ReadSlot {
    answered: Option<Inbound>,
    released: bool,
}

/// What a `Read` says about the previous answer.
#[derive(Debug)]
pub(crate) enum Confirmed {
    /// There was none.
    Nothing,
    /// The backend has this client seq.
    Taken(u64),
    /// The backend did not get it: answer it again.
    Lost(Inbound),
}

/// How a client message's `seq` fits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Receive {
    New,
    Duplicate,
    Gap { expected: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message {
            kind: Kind::Text,
            payload: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    #[test]
    fn client_envelopes_parse_and_bad_ones_name_their_close_code() {
        assert_eq!(
            parse(&text(r#"{"type":"ack","seq":7}"#)),
            Ok(FromClient::Ack(7))
        );
        assert_eq!(
            parse(&text(r#"{"type":"message","seq":1,"text":"hi","extra":1}"#)),
            Ok(FromClient::Message {
                seq: 1,
                message: text("hi")
            })
        );
        let bin = parse(&text(r#"{"type":"message","seq":2,"binary":"AAEC"}"#));
        assert_eq!(
            bin,
            Ok(FromClient::Message {
                seq: 2,
                message: Message {
                    kind: Kind::Binary,
                    payload: Bytes::from_static(&[0, 1, 2])
                }
            })
        );
        for bad in [
            "not json",
            r#"{"type":"message","text":"no seq"}"#,
            r#"{"type":"message","seq":0,"text":"zero"}"#,
            r#"{"type":"message","seq":1}"#,
            r#"{"type":"message","seq":1,"text":"a","binary":"AA=="}"#,
            r#"{"type":"message","seq":1,"binary":"%%%"}"#,
            r#"{"type":"nope","seq":1}"#,
        ] {
            assert_eq!(
                parse(&text(bad)).map_err(|e| e.0),
                Err(close_code::INVALID_PAYLOAD),
                "{bad}"
            );
        }
        let binary_frame = Message {
            kind: Kind::Binary,
            payload: Bytes::from_static(b"{}"),
        };
        assert_eq!(
            parse(&binary_frame).map_err(|e| e.0),
            Err(close_code::UNSUPPORTED)
        );
    }

    #[test]
    fn resume_queries_need_session_and_token() {
        assert_eq!(ResumeRequest::from_query(None), Ok(None));
        assert_eq!(ResumeRequest::from_query(Some("welcome=1")), Ok(None));
        assert_eq!(
            ResumeRequest::from_query(Some("session=abc&resume_token=t%2B&ack=5")),
            Ok(Some(ResumeRequest {
                session: "abc".into(),
                token: "t+".into(),
                ack: 5
            }))
        );
        assert!(ResumeRequest::from_query(Some("session=abc")).is_err());
        assert!(ResumeRequest::from_query(Some("session=a&resume_token=b&ack=x")).is_err());
    }

    #[test]
    fn client_seqs_are_new_duplicate_or_a_gap() {
        let r = Reliable::new(digest("t"), Counters::default());
        assert_eq!(r.receive(1), Receive::New);
        r.received(1);
        assert_eq!(r.receive(1), Receive::Duplicate);
        assert_eq!(r.receive(3), Receive::Gap { expected: 2 });
        assert_eq!(r.receive(2), Receive::New);
        r.received(2);
        assert!(r.token_matches("t"));
        assert!(!r.token_matches("u"));
    }

    #[test]
    fn acks_trim_the_journal_and_cannot_run_ahead() {
        let r = Reliable::new(digest("t"), Counters::default());
        for _ in 0..3 {
            let seq = r.next_seq();
            r.journal_push(seq, text(&seq.to_string()));
        }
        assert!(!r.client_acked(4), "an ack beyond what was sent");
        assert!(r.client_acked(2));
        let left: Vec<u64> = r
            .journal_after(0, usize::MAX)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, vec![3]);
        assert_eq!(r.unacked(), 1);
    }
}
