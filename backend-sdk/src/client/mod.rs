//! [`Client`]: the gateway's backend API as plain async methods.
//!
//! - `builder`: settings and [`ClientBuilder::build`].
//! - `nodes`: one lazily connected channel per gateway node.
//! - `call`: routing, token, deadline, status mapping and retries for every call.
//! - `ops`: builders for the calls with optional parts (`publish`, `close`, `sessions`,
//!   `attach`, `subscribe`).
//! - `discovery` (feature `redis`): live nodes and session owners from Redis.

mod builder;
mod call;
#[cfg(feature = "redis")]
mod discovery;
mod nodes;
mod ops;

use std::{sync::Arc, time::Duration};

use switchboard_proto::v1 as pb;

pub use builder::{ClientBuilder, RetryPolicy};
pub use ops::{Attach, Close, ListSessions, Publish, SessionStream, Subscribe};

use self::{
    builder::Config,
    call::{request, Retry},
    nodes::Nodes,
};
use crate::{
    convert,
    error::Result,
    types::{Message, ReadOutcome, Receipt, SessionId, SessionInfo, SessionState, Target},
};

/// Most IDs the gateway checks in one `CheckSessions` call.
const MAX_CHECK: usize = 10_000;

/// A handle on the gateway's backend API. Cheap to clone: clones share the connections.
///
/// Every method that names a session takes `impl Into<SessionId>` (`&str`, `String`,
/// `&SessionId`), and every method that sends takes `impl Into<Message>` (`&str` or `String`
/// for text; `Vec<u8>`, `&[u8]` or `Bytes` for binary).
///
/// ```no_run
/// # async fn f() -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::{Client, Target};
///
/// let client = Client::builder()
///     .gateway("http://127.0.0.1:7070")
///     .token("s3cret")
///     .build()
///     .await?;
/// client.publish(Target::hub("files"), r#"{"new_file":"report.pdf"}"#).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// What the clones of a [`Client`] share.
pub(crate) struct Inner {
    config: Config,
    nodes: Arc<Nodes>,
    /// Session owners and live nodes from Redis; `None` without `redis_url`.
    #[cfg(feature = "redis")]
    discovery: Option<Arc<discovery::Discovery>>,
    /// The task re-reading the node list; aborted when the last clone is dropped.
    #[cfg(feature = "redis")]
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        #[cfg(feature = "redis")]
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

impl Client {
    /// Remembers where a session lives (seen in an event).
    pub(crate) fn learn_route(&self, session: &SessionId, node: &str) {
        self.inner.learn_route(session, node);
    }

    /// Starts configuring a client.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// let client = switchboard_sdk::Client::builder()
    ///     .gateway("http://127.0.0.1:7070")
    ///     .build()
    ///     .await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Queues one message for one session.
    ///
    /// Fails with [`Error::SessionGone`](crate::Error::SessionGone) or
    /// [`Error::SessionNotFound`](crate::Error::SessionNotFound) when the session is closed or
    /// unknown, and with [`Error::QueueFull`](crate::Error::QueueFull) when its client is not
    /// reading fast enough. Retried only when the request certainly never left (it could
    /// otherwise be delivered twice).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// client.send("AAAAAAAAAAAAAAAAAAAAAA", "hello").await?;
    /// client.send("AAAAAAAAAAAAAAAAAAAAAA", vec![0u8, 1, 2]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(
        &self,
        session: impl Into<SessionId>,
        message: impl Into<Message>,
    ) -> Result<()> {
        let session = session.into();
        let req = pb::SendRequest {
            session_id: session.to_string(),
            message: Some(convert::message(message.into())),
            ..Default::default()
        };
        self.inner
            .call(
                Retry::WhenUnsent,
                Some(&session),
                Duration::ZERO,
                |mut api, d| {
                    let req = request(req.clone(), d);
                    async move { api.send(req).await }
                },
            )
            .await?;
        Ok(())
    }

    /// Sends one message and waits until it reaches `wait` (written to the client's socket,
    /// or acknowledged by a reliable client) or `timeout` passes; answers how far it got.
    /// `message_id` (may be empty) makes a retried send to a reliable session count once.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use std::time::Duration;
    /// use switchboard_sdk::Receipt;
    ///
    /// let got = client
    ///     .send_with_receipt("AAAAAAAAAAAAAAAAAAAAAA", "invoice 42", "inv-42", Receipt::Acked, Duration::from_secs(5))
    ///     .await?;
    /// if got < Receipt::Acked {
    ///     println!("not confirmed yet (reached {got:?})");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_with_receipt(
        &self,
        session: impl Into<SessionId>,
        message: impl Into<Message>,
        message_id: &str,
        wait: Receipt,
        timeout: Duration,
    ) -> Result<Receipt> {
        let session = session.into();
        let req = pb::SendRequest {
            session_id: session.to_string(),
            message: Some(convert::message(message.into())),
            message_id: message_id.to_owned(),
            receipt: convert::receipt(wait) as i32,
            receipt_timeout: Some(convert::duration(timeout)),
        };
        let resp = self
            .inner
            .call(Retry::WhenUnsent, Some(&session), timeout, |mut api, d| {
                let req = request(req.clone(), d);
                async move { api.send(req).await }
            })
            .await?;
        Ok(convert::reached(resp.reached()))
    }

    /// Queues one message for every session a [`Target`] matches: a hub, a group, a user or a
    /// list of sessions; add exclusions with [`Publish::exclude`]. Returns how many sessions
    /// got it and how many refused it (full queue). Retried only when the request certainly
    /// never left.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::Target;
    ///
    /// let d = client.publish(Target::group("chat", "room-1"), "hi all")
    ///     .exclude("AAAAAAAAAAAAAAAAAAAAAA")
    ///     .await?;
    /// println!("{} queued, {} refused", d.queued, d.refused);
    /// # Ok(()) }
    /// ```
    pub fn publish(&self, target: Target, message: impl Into<Message>) -> Publish<'_> {
        Publish::new(self, target, message.into())
    }

    /// Closes a session: code 1000 and no reason unless [`Close::code`] and [`Close::reason`]
    /// say otherwise.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// client.close("AAAAAAAAAAAAAAAAAAAAAA").code(4001).reason("logged out").await?;
    /// # Ok(()) }
    /// ```
    pub fn close(&self, session: impl Into<SessionId>) -> Close<'_> {
        Close::new(self, session.into())
    }

    /// Everything known about one open session.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let info = client.session("AAAAAAAAAAAAAAAAAAAAAA").await?;
    /// println!("user {:?} on {}", info.user, info.hub);
    /// # Ok(()) }
    /// ```
    pub async fn session(&self, session: impl Into<SessionId>) -> Result<SessionInfo> {
        let session = session.into();
        let req = pb::GetSessionRequest {
            session_id: session.to_string(),
        };
        let resp = self
            .inner
            .call(
                Retry::Idempotent,
                Some(&session),
                Duration::ZERO,
                |mut api, d| {
                    let req = request(req.clone(), d);
                    async move { api.get_session(req).await }
                },
            )
            .await?;
        let info = resp
            .session
            .map(convert::session_info)
            .ok_or_else(|| crate::Error::Grpc {
                code: tonic::Code::Internal as i32,
                message: "GetSession answered without a session".into(),
            })?;
        self.inner.learn_route(&info.id, &info.node);
        Ok(info)
    }

    /// Whether each session is open, closed, unknown or not a valid ID at all, in the order
    /// asked: one call per 10,000 IDs, the most the gateway answers at once.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::SessionState;
    ///
    /// let ids = ["AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBA"];
    /// let open: Vec<_> = client.check(ids).await?
    ///     .into_iter()
    ///     .filter(|(_, state)| *state == SessionState::Open)
    ///     .map(|(id, _)| id)
    ///     .collect();
    /// # let _ = open; Ok(()) }
    /// ```
    pub async fn check<I, S>(&self, sessions: I) -> Result<Vec<(SessionId, SessionState)>>
    where
        I: IntoIterator<Item = S>,
        S: Into<SessionId>,
    {
        let ids: Vec<SessionId> = sessions.into_iter().map(Into::into).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_CHECK) {
            let req = pb::CheckSessionsRequest {
                session_ids: chunk.iter().map(ToString::to_string).collect(),
            };
            let resp = self
                .inner
                .call(Retry::Idempotent, None, Duration::ZERO, |mut api, d| {
                    let req = request(req.clone(), d);
                    async move { api.check_sessions(req).await }
                })
                .await?;
            // One entry per ID, in request order; pair them by position.
            let states = resp.sessions.into_iter().map(|s| convert::state(s.state));
            out.extend(
                chunk
                    .iter()
                    .cloned()
                    .zip(states.chain(std::iter::repeat(SessionState::Unknown))),
            );
        }
        Ok(out)
    }

    /// Open sessions, filtered by hub, group, user or node, as a stream that fetches page after
    /// page.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let mut sessions = client.sessions().hub("chat").page_size(100).stream();
    /// while let Some(info) = sessions.next_session().await? {
    ///     println!("{} ({})", info.id, info.user);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn sessions(&self) -> ListSessions {
        ListSessions::new(self.clone())
    }

    /// Adds a session to a group of its hub. Joining twice is harmless.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// client.join("AAAAAAAAAAAAAAAAAAAAAA", "room-1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn join(
        &self,
        session: impl Into<SessionId>,
        group: impl Into<String>,
    ) -> Result<()> {
        let session = session.into();
        let req = pb::JoinGroupRequest {
            session_id: session.to_string(),
            group: group.into(),
        };
        self.inner
            .call(
                Retry::Idempotent,
                Some(&session),
                Duration::ZERO,
                |mut api, d| {
                    let req = request(req.clone(), d);
                    async move { api.join_group(req).await }
                },
            )
            .await?;
        Ok(())
    }

    /// Removes a session from a group of its hub. Leaving a group it is not in is harmless.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// client.leave("AAAAAAAAAAAAAAAAAAAAAA", "room-1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn leave(
        &self,
        session: impl Into<SessionId>,
        group: impl Into<String>,
    ) -> Result<()> {
        let session = session.into();
        let req = pb::LeaveGroupRequest {
            session_id: session.to_string(),
            group: group.into(),
        };
        self.inner
            .call(
                Retry::Idempotent,
                Some(&session),
                Duration::ZERO,
                |mut api, d| {
                    let req = request(req.clone(), d);
                    async move { api.leave_group(req).await }
                },
            )
            .await?;
        Ok(())
    }

    /// The next message the client sent, waiting at most `timeout` (the gateway caps it at its
    /// `--max-read-timeout`). After the session closes, the messages it left are still read,
    /// then [`ReadOutcome::Closed`]. Retried only when the request certainly never left (a
    /// retry could otherwise lose a message).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use std::time::Duration;
    /// use switchboard_sdk::ReadOutcome;
    ///
    /// loop {
    ///     match client.read("AAAAAAAAAAAAAAAAAAAAAA", Duration::from_secs(30)).await? {
    ///         ReadOutcome::Message(m) => println!("{:?}", m.message),
    ///         ReadOutcome::TimedOut => continue,
    ///         ReadOutcome::Closed(c) => break println!("{c}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read(
        &self,
        session: impl Into<SessionId>,
        timeout: Duration,
    ) -> Result<ReadOutcome> {
        self.read_request(session.into(), timeout, None).await
    }

    /// The next message after `ack`, the
    /// [`Inbound::client_seq`](crate::Inbound::client_seq) of the last message this backend
    /// received from the session (0 at first). A message whose answer was lost on the way (the
    /// call failed or timed out, a node between here and the session died) comes again, so
    /// this call is retried on any failure that can pass, and nothing is lost. Nothing at or
    /// below `ack` is answered, also when the client sent it again after the node that
    /// answered it first was killed: each client message is read once. One reader per
    /// session: `ack` is what this reader received.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use std::time::Duration;
    /// use switchboard_sdk::ReadOutcome;
    ///
    /// let mut ack = 0;
    /// loop {
    ///     match client.read_after("AAAAAAAAAAAAAAAAAAAAAA", ack, Duration::from_secs(30)).await? {
    ///         ReadOutcome::Message(m) => {
    ///             ack = m.client_seq;
    ///             println!("{:?}", m.message);
    ///         }
    ///         ReadOutcome::TimedOut => continue,
    ///         ReadOutcome::Closed(c) => break println!("{c}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_after(
        &self,
        session: impl Into<SessionId>,
        ack: u64,
        timeout: Duration,
    ) -> Result<ReadOutcome> {
        self.read_request(session.into(), timeout, Some(ack)).await
    }

    async fn read_request(
        &self,
        session: SessionId,
        timeout: Duration,
        ack: Option<u64>,
    ) -> Result<ReadOutcome> {
        use pb::read_response::Result as R;
        let req = pb::ReadRequest {
            session_id: session.to_string(),
            timeout: Some(convert::duration(timeout)),
            ack,
        };
        // With `ack`, an answer lost on the way comes again: retrying cannot lose a message.
        let retry = if ack.is_some() {
            Retry::Idempotent
        } else {
            Retry::WhenUnsent
        };
        let resp = self
            .inner
            .call(retry, Some(&session), timeout, |mut api, d| {
                let req = request(req.clone(), d);
                async move { api.read(req).await }
            })
            .await?;
        Ok(match resp.result {
            Some(R::Message(m)) => ReadOutcome::Message(convert::inbound(m)),
            Some(R::Closed(c)) => {
                self.inner.forget_route(&session);
                ReadOutcome::Closed(convert::closed(c))
            }
            Some(R::TimedOut(_)) | None => ReadOutcome::TimedOut,
        })
    }

    /// Opens the shared connection to a session: its messages arrive on
    /// [`SharedConnection::read`](crate::SharedConnection::read), writes and the close go back
    /// on the same stream. One backend at a time: a second attach fails with
    /// [`Error::AlreadyAttached`](crate::Error::AlreadyAttached) unless it uses
    /// [`Attach::take_over`].
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::Incoming;
    ///
    /// let mut conn = client.attach("AAAAAAAAAAAAAAAAAAAAAA").await?;
    /// while let Incoming::Message(m) = conn.read().await? {
    ///     conn.write(m.message).await?; // echo
    /// }
    /// # Ok(()) }
    /// ```
    pub fn attach(&self, session: impl Into<SessionId>) -> Attach<'_> {
        Attach::new(self, session.into())
    }

    /// Subscribes to a hub's events ([`Event`](crate::Event): connected, message,
    /// disconnected). Subscribers sharing a [`Subscribe::group`] split the events (all of one
    /// session's to the same member); every group gets every event.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::Event;
    ///
    /// let mut events = client.subscribe("chat").group("workers").await?;
    /// while let Some(event) = events.recv().await? {
    ///     if let Event::Connected(info) = event {
    ///         client.send(&info.id, "welcome").await?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, hub: impl Into<String>) -> Subscribe<'_> {
        Subscribe::new(self, hub.into())
    }
}
