//! The SDK's own vocabulary: sessions, messages, closes, events and publish targets.
//!
//! **Invariant:** nothing here is a generated protobuf type; `convert` translates at the edge.

use std::{collections::BTreeMap, fmt, sync::Arc, time::SystemTime};

use bytes::Bytes;

/// The ID of one client session, as issued by the gateway (22 characters of base64url).
///
/// Cheap to clone. Every method that names a session takes `impl Into<SessionId>`, so a `&str`,
/// a `String` or a `&SessionId` will do.
///
/// ```
/// use switchboard_sdk::SessionId;
///
/// let id = SessionId::from("AAAAAAAAAAAAAAAAAAAAAA");
/// assert_eq!(id.as_str(), "AAAAAAAAAAAAAAAAAAAAAA");
/// assert_eq!(id.to_string(), "AAAAAAAAAAAAAAAAAAAAAA");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// The ID as text.
    ///
    /// ```
    /// # use switchboard_sdk::SessionId;
    /// let id: SessionId = "AAAAAAAAAAAAAAAAAAAAAA".into();
    /// assert_eq!(id.as_str().len(), 22);
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SessionId {
    fn from(s: &str) -> Self {
        SessionId(s.into())
    }
}

impl From<String> for SessionId {
    fn from(s: String) -> Self {
        SessionId(s.into())
    }
}

impl From<&String> for SessionId {
    fn from(s: &String) -> Self {
        SessionId(s.as_str().into())
    }
}

impl From<&SessionId> for SessionId {
    fn from(s: &SessionId) -> Self {
        s.clone()
    }
}

/// A WebSocket message: text reaches the client as a text frame, binary as a binary frame.
///
/// Methods that send take `impl Into<Message>`: a `&str` or `String` is text; a `Vec<u8>`,
/// `&[u8]` or [`Bytes`] is binary.
///
/// ```
/// use switchboard_sdk::Message;
///
/// let text = Message::from("hello");
/// assert_eq!(text.as_text(), Some("hello"));
/// let binary = Message::from(vec![1u8, 2, 3]);
/// assert_eq!(binary.as_bytes(), &[1, 2, 3]);
/// assert!(binary.as_text().is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The text of a text message; `None` for binary.
    ///
    /// ```
    /// # use switchboard_sdk::Message;
    /// assert_eq!(Message::Text("hi".into()).as_text(), Some("hi"));
    /// ```
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// The payload's bytes, text or binary.
    ///
    /// ```
    /// # use switchboard_sdk::Message;
    /// assert_eq!(Message::from("hi").as_bytes(), b"hi");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    ///
    /// ```
    /// # use switchboard_sdk::Message;
    /// assert_eq!(Message::from("héllo").len(), 6);
    /// ```
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    ///
    /// ```
    /// # use switchboard_sdk::Message;
    /// assert!(Message::from("").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.to_owned())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s)
    }
}

impl From<&String> for Message {
    fn from(s: &String) -> Self {
        Message::Text(s.clone())
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

/// A message a client sent, with its per-session sequence number (from 1, in sending order).
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use std::time::Duration;
/// use switchboard_sdk::ReadOutcome;
///
/// if let ReadOutcome::Message(m) = client.read("AAAAAAAAAAAAAAAAAAAAAA", Duration::from_secs(5)).await? {
///     println!("#{}: {:?}", m.seq, m.message);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inbound {
    /// Sequence number within the session, starting at 1.
    pub seq: u64,
    /// What the client sent.
    pub message: Message,
    /// The session's number of this message over its whole life (1, 2, 3...): for a reliable
    /// session (`switchboard.reliable.v1`), the client's own seq, stable across resumes (a
    /// node killed between handing a message to a backend and recording it makes the client
    /// send it again after its resume; this seq lets a backend drop that repeat); for a plain
    /// session, the same as `seq`. [`Client::read_after`](crate::Client::read_after) takes it.
    pub client_seq: u64,
}

/// Who ended a session.
///
/// ```
/// use switchboard_sdk::Closer;
/// assert_eq!(Closer::Client.to_string(), "client");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Closer {
    /// The client sent a close frame, or its connection dropped.
    Client,
    /// The gateway closed it (limits, slow consumer, idle timeout, shutdown).
    Gateway,
    /// A backend asked for the close.
    Backend,
    /// The gateway node holding the session was lost.
    NodeLost,
    /// The gateway did not say.
    Unknown,
}

impl fmt::Display for Closer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closer::Client => "client",
            Closer::Gateway => "gateway",
            Closer::Backend => "backend",
            Closer::NodeLost => "node lost",
            Closer::Unknown => "unknown",
        })
    }
}

/// How a session ended: the WebSocket close code and reason, and who closed it.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use std::time::Duration;
/// use switchboard_sdk::{Closer, ReadOutcome};
///
/// if let ReadOutcome::Closed(c) = client.read("AAAAAAAAAAAAAAAAAAAAAA", Duration::from_secs(5)).await? {
///     if c.closed_by == Closer::Client {
///         println!("the client left with {} {:?}", c.code, c.reason);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Closed {
    /// The close code on the wire (1006 when the connection simply dropped).
    pub code: u16,
    /// The close reason.
    pub reason: String,
    /// Who started the close.
    pub closed_by: Closer,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "closed with {} {:?} by {}",
            self.code, self.reason, self.closed_by
        )
    }
}

/// Everything the gateway knows about one open session.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// let info = client.session("AAAAAAAAAAAAAAAAAAAAAA").await?;
/// println!("{} on hub {} as {:?}, groups {:?}", info.id, info.hub, info.user, info.groups);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's ID.
    pub id: SessionId,
    /// The hub the client connected to (`/ws/{hub}`).
    pub hub: String,
    /// The user the connect hook assigned; empty when none.
    pub user: String,
    /// Groups of the hub the session belongs to.
    pub groups: Vec<String>,
    /// Metadata the connect hook assigned.
    pub metadata: BTreeMap<String, String>,
    /// The ID of the gateway node holding the session.
    pub node: String,
    /// When the client connected.
    pub connected_at: Option<SystemTime>,
    /// When the session last saw traffic.
    pub last_active_at: Option<SystemTime>,
    /// The client's address as the gateway saw it.
    pub remote_addr: String,
    /// The negotiated WebSocket subprotocol; empty when none.
    pub subprotocol: String,
    /// The client chose reliable sessions (`switchboard.reliable.v1`).
    pub reliable: bool,
    /// Reliable, and waiting for its client to resume.
    pub suspended: bool,
    /// Live counters; present only when the answer came from the node holding the session.
    pub counters: Option<SessionCounters>,
}

/// A session's traffic counters.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// if let Some(c) = client.session("AAAAAAAAAAAAAAAAAAAAAA").await?.counters {
///     println!("{} in, {} out, {} queued", c.messages_in, c.messages_out, c.outbound_queue_depth);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCounters {
    /// Messages received from the client.
    pub messages_in: u64,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Messages sent to the client.
    pub messages_out: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Frames waiting in the outbound queue.
    pub outbound_queue_depth: u64,
    /// Client messages waiting in the inbox for a reader.
    pub inbox_depth: u64,
}

/// Whether a session is still open, as [`Client::check`](crate::Client::check) reports it.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::SessionState;
///
/// for (id, state) in client.check(["AAAAAAAAAAAAAAAAAAAAAA"]).await? {
///     if state != SessionState::Open {
///         println!("forget {id}");
///     }
/// }
/// # Ok(()) }
/// ```
///
/// Further states may be added, so a `match` needs a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionState {
    /// Open: messages can be sent to it.
    Open,
    /// Closed recently enough that the gateway remembers it.
    Closed,
    /// Never seen, or closed too long ago to remember.
    Unknown,
    /// A reliable session whose connection is gone, waiting for its client to resume (on any
    /// node). Messages sent to it wait for the resume.
    Suspended,
    /// Not a well-formed session ID, so no session ever had it (a typo, a truncated or
    /// foreign string). The other IDs of the same check are still answered.
    Invalid,
}

/// Whom a [`Client::publish`](crate::Client::publish) reaches.
///
/// ```
/// use switchboard_sdk::Target;
///
/// let everyone = Target::hub("files");
/// let room = Target::group("chat", "room-1");
/// let alice = Target::user("alice");
/// let alice_in_chat = Target::user_in("chat", "alice");
/// let two = Target::sessions(["AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBA"]);
/// # let _ = (everyone, room, alice, alice_in_chat, two);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every session of a hub.
    Hub(String),
    /// Every session in a group of a hub.
    Group {
        /// The hub the group belongs to.
        hub: String,
        /// The group's name.
        group: String,
    },
    /// Every session of a user, in one hub or (with `hub: None`) in all of them.
    User {
        /// Only this hub; `None` for every hub.
        hub: Option<String>,
        /// The user, as the connect hook assigned it.
        user: String,
    },
    /// An explicit list of sessions.
    Sessions(Vec<SessionId>),
}

impl Target {
    /// Every session of `hub`.
    ///
    /// ```
    /// # use switchboard_sdk::Target;
    /// assert_eq!(Target::hub("files"), Target::Hub("files".into()));
    /// ```
    pub fn hub(hub: impl Into<String>) -> Self {
        Target::Hub(hub.into())
    }

    /// Every session in `group` of `hub`.
    ///
    /// ```
    /// # use switchboard_sdk::Target;
    /// let t = Target::group("chat", "room-1");
    /// # let _ = t;
    /// ```
    pub fn group(hub: impl Into<String>, group: impl Into<String>) -> Self {
        Target::Group {
            hub: hub.into(),
            group: group.into(),
        }
    }

    /// Every session of `user`, in every hub.
    ///
    /// ```
    /// # use switchboard_sdk::Target;
    /// let t = Target::user("alice");
    /// # let _ = t;
    /// ```
    pub fn user(user: impl Into<String>) -> Self {
        Target::User {
            hub: None,
            user: user.into(),
        }
    }

    /// Every session of `user` in `hub`.
    ///
    /// ```
    /// # use switchboard_sdk::Target;
    /// let t = Target::user_in("chat", "alice");
    /// # let _ = t;
    /// ```
    pub fn user_in(hub: impl Into<String>, user: impl Into<String>) -> Self {
        Target::User {
            hub: Some(hub.into()),
            user: user.into(),
        }
    }

    /// Exactly these sessions.
    ///
    /// ```
    /// # use switchboard_sdk::Target;
    /// let t = Target::sessions(["AAAAAAAAAAAAAAAAAAAAAA"]);
    /// # let _ = t;
    /// ```
    pub fn sessions<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<SessionId>,
    {
        Target::Sessions(ids.into_iter().map(Into::into).collect())
    }
}

/// What a publish did: how many sessions the message was queued for, and how many matching
/// sessions refused it because their outbound queue was full.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::Target;
///
/// let d = client.publish(Target::hub("files"), "new file").await?;
/// println!("told {} browsers ({} too slow)", d.queued, d.refused);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Sessions the message was queued for.
    pub queued: u64,
    /// Matching sessions whose outbound queue was full: they did not get the message.
    pub refused: u64,
    /// Gateway nodes that could not be reached: their sessions did not get the message.
    pub unreachable_nodes: Vec<String>,
    /// Each matching session's outcome, when asked for with
    /// [`Publish::outcomes`](crate::Publish::outcomes); empty otherwise.
    pub outcomes: Vec<SessionOutcome>,
}

/// One session's outcome of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOutcome {
    /// The session.
    pub session: SessionId,
    /// Queued for it (for a reliable session: kept until its client acknowledges); `false`
    /// when its queue or resume buffer was full.
    pub queued: bool,
}

/// How far a message got: what [`Client::send_with_receipt`](crate::Client::send_with_receipt)
/// waits for, and answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Receipt {
    /// Queued for the client (for a reliable session: kept for it).
    Queued,
    /// Handed to the client's socket.
    Written,
    /// Acknowledged by a reliable client: it reached the application.
    Acked,
}

/// The answer of [`Client::read`](crate::Client::read).
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use std::time::Duration;
/// use switchboard_sdk::ReadOutcome;
///
/// match client.read("AAAAAAAAAAAAAAAAAAAAAA", Duration::from_secs(30)).await? {
///     ReadOutcome::Message(m) => println!("got {:?}", m.message),
///     ReadOutcome::TimedOut => println!("nothing yet"),
///     ReadOutcome::Closed(c) => println!("gone: {c}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The next message the client sent.
    Message(Inbound),
    /// Nothing arrived within the timeout.
    TimedOut,
    /// The session is closed and every message it sent has been read.
    Closed(Closed),
}

/// What [`SharedConnection::read`](crate::SharedConnection::read) yields: the next message,
/// a receipt for a [`write_tracked`](crate::SharedConnection::write_tracked), or the close
/// that ends the session.
///
/// ```no_run
/// # async fn f(mut conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::Incoming;
///
/// while let Incoming::Message(m) = conn.read().await? {
///     conn.write(m.message).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A message the client sent.
    Message(Inbound),
    /// How far the tracked write with this `id` got (only after a
    /// [`write_tracked`](crate::SharedConnection::write_tracked)). A receipt still due when
    /// the session closes does not come: [`Incoming::Closed`] ends the stream.
    Receipt {
        /// The ID given to `write_tracked`.
        id: u64,
        /// The furthest point the message reached by the receipt's deadline.
        reached: Receipt,
    },
    /// The session ended; every later read returns this again.
    Closed(Closed),
}

/// One event of a hub, from [`Client::subscribe`](crate::Client::subscribe).
///
/// A session's events arrive in order: `Connected`, its messages, `Disconnected`.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::Event;
///
/// let mut events = client.subscribe("chat").await?;
/// while let Some(event) = events.recv().await? {
///     match event {
///         Event::Connected(info) => println!("{} joined", info.id),
///         Event::Message { session, message, .. } => println!("{session}: {:?}", message.message),
///         Event::Disconnected { session, closed, .. } => println!("{session} left: {closed}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A client connected to the hub.
    Connected(SessionInfo),
    /// A client sent a message (only to subscribers that take messages, and only when no
    /// backend is attached to the session).
    Message {
        /// The sending session.
        session: SessionId,
        /// Its hub.
        hub: String,
        /// The message.
        message: Inbound,
    },
    /// A session ended.
    Disconnected {
        /// The session that ended.
        session: SessionId,
        /// Its hub.
        hub: String,
        /// How it ended.
        closed: Closed,
    },
    /// A reliable session's connection ended; the session waits for its client to resume
    /// (a [`Event::Resumed`] follows) or ends when the resume window passes
    /// ([`Event::Disconnected`]).
    Suspended {
        /// The suspended session.
        session: SessionId,
        /// Its hub.
        hub: String,
        /// How its connection ended.
        closed: Closed,
    },
    /// A reliable session's client resumed; `node` says where it is now.
    Resumed(SessionInfo),
}

impl Event {
    /// The session the event is about.
    ///
    /// ```no_run
    /// # fn f(event: switchboard_sdk::Event) {
    /// println!("event of {}", event.session_id());
    /// # }
    /// ```
    pub fn session_id(&self) -> &SessionId {
        match self {
            Event::Connected(info) | Event::Resumed(info) => &info.id,
            Event::Message { session, .. }
            | Event::Disconnected { session, .. }
            | Event::Suspended { session, .. } => session,
        }
    }

    /// The hub the event happened in.
    ///
    /// ```no_run
    /// # fn f(event: switchboard_sdk::Event) {
    /// println!("event in hub {}", event.hub());
    /// # }
    /// ```
    pub fn hub(&self) -> &str {
        match self {
            Event::Connected(info) | Event::Resumed(info) => &info.hub,
            Event::Message { hub, .. }
            | Event::Disconnected { hub, .. }
            | Event::Suspended { hub, .. } => hub,
        }
    }

    /// Which kind of event this is.
    ///
    /// ```no_run
    /// # fn f(event: switchboard_sdk::Event) {
    /// use switchboard_sdk::EventKind;
    /// if event.kind() == EventKind::Connected { /* ... */ }
    /// # }
    /// ```
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Connected(_) => EventKind::Connected,
            Event::Message { .. } => EventKind::Message,
            Event::Disconnected { .. } => EventKind::Disconnected,
            Event::Suspended { .. } => EventKind::Suspended,
            Event::Resumed(_) => EventKind::Resumed,
        }
    }
}

/// The kinds of [`Event`], to subscribe to only some of them.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::EventKind;
///
/// // Only arrivals and departures; client messages stay for Read or Attach.
/// let events = client
///     .subscribe("chat")
///     .kinds([EventKind::Connected, EventKind::Disconnected])
///     .await?;
/// # let _ = events; Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// [`Event::Connected`].
    Connected,
    /// [`Event::Message`].
    Message,
    /// [`Event::Disconnected`].
    Disconnected,
    /// [`Event::Suspended`].
    Suspended,
    /// [`Event::Resumed`].
    Resumed,
}
