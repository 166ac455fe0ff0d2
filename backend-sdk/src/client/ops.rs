//! Builders for the calls with optional parts. Each is awaited directly (it implements
//! `IntoFuture`), except [`ListSessions`], which turns into a stream.

use std::{
    collections::VecDeque,
    future::{Future, IntoFuture},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{stream, Stream, StreamExt};
use switchboard_proto::v1::{
    self as pb, attach_request::Kind as Req, attach_response::Kind as Resp,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{
    call::{request, Retry},
    Client,
};
use crate::{
    connection::{SharedConnection, WRITE_QUEUE},
    convert,
    error::Result,
    events::Subscription,
    types::{Delivery, EventKind, Message, SessionId, SessionInfo, SessionOutcome, Target},
};

/// A boxed future, the `IntoFuture` of the builders.
type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A publish being prepared; made by [`Client::publish`], sent by `.await`.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::Target;
///
/// let sender = "AAAAAAAAAAAAAAAAAAAAAA";
/// client.publish(Target::hub("chat"), "someone said hi").exclude(sender).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a publish does nothing until it is awaited"]
pub struct Publish<'a> {
    client: &'a Client,
    target: Target,
    message: Message,
    exclude: Vec<SessionId>,
    outcomes: bool,
}

impl<'a> Publish<'a> {
    pub(super) fn new(client: &'a Client, target: Target, message: Message) -> Self {
        Publish {
            client,
            target,
            message,
            exclude: Vec::new(),
            outcomes: false,
        }
    }

    /// Asks for each matching session's outcome ([`Delivery::outcomes`]), on every node, not
    /// only the counts.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// # use switchboard_sdk::Target;
    /// let d = client.publish(Target::hub("chat"), "hi").outcomes().await?;
    /// for o in d.outcomes.iter().filter(|o| !o.queued) {
    ///     println!("{} did not get it", o.session);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn outcomes(mut self) -> Self {
        self.outcomes = true;
        self
    }

    /// Leaves this session out even when the target matches it (say, the sender).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// # use switchboard_sdk::Target;
    /// client.publish(Target::hub("chat"), "hi").exclude("AAAAAAAAAAAAAAAAAAAAAA").await?;
    /// # Ok(()) }
    /// ```
    pub fn exclude(mut self, session: impl Into<SessionId>) -> Self {
        self.exclude.push(session.into());
        self
    }

    /// Leaves all these sessions out.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// # use switchboard_sdk::Target;
    /// let muted = ["AAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBA"];
    /// client.publish(Target::hub("chat"), "hi").exclude_all(muted).await?;
    /// # Ok(()) }
    /// ```
    pub fn exclude_all<I, S>(mut self, sessions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<SessionId>,
    {
        self.exclude.extend(sessions.into_iter().map(Into::into));
        self
    }

    async fn run(self) -> Result<Delivery> {
        let req = pb::PublishRequest {
            target: Some(convert::target(self.target)),
            exclude: self.exclude.iter().map(ToString::to_string).collect(),
            message: Some(convert::message(self.message)),
            outcomes: self.outcomes,
            ..Default::default()
        };
        let resp = self
            .client
            .inner
            .call(Retry::WhenUnsent, None, Duration::ZERO, |mut api, d| {
                let req = request(req.clone(), d);
                async move { api.publish(req).await }
            })
            .await?;
        Ok(Delivery {
            queued: resp.queued,
            refused: resp.refused,
            unreachable_nodes: resp.unreachable_nodes,
            outcomes: resp
                .outcomes
                .into_iter()
                .map(|o| SessionOutcome {
                    queued: o.outcome() == pb::Outcome::Queued,
                    session: SessionId::from(o.session_id),
                })
                .collect(),
        })
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<Delivery>;
    type IntoFuture = Call<'a, Delivery>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A close being prepared; made by [`Client::close`], sent by `.await`.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// client.close("AAAAAAAAAAAAAAAAAAAAAA").code(4003).reason("kicked").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a close does nothing until it is awaited"]
pub struct Close<'a> {
    client: &'a Client,
    session: SessionId,
    code: u16,
    reason: String,
}

impl<'a> Close<'a> {
    pub(super) fn new(client: &'a Client, session: SessionId) -> Self {
        Close {
            client,
            session,
            code: 1000,
            reason: String::new(),
        }
    }

    /// The WebSocket close code (default 1000): 1000, 1001-1003, 1007-1014 or 3000-4999.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// client.close("AAAAAAAAAAAAAAAAAAAAAA").code(4000).await?;
    /// # Ok(()) }
    /// ```
    pub fn code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    /// The close reason (at most 123 bytes).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// client.close("AAAAAAAAAAAAAAAAAAAAAA").reason("bye").await?;
    /// # Ok(()) }
    /// ```
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    async fn run(self) -> Result<()> {
        let req = pb::CloseRequest {
            session_id: self.session.to_string(),
            code: self.code.into(),
            reason: self.reason,
        };
        self.client
            .inner
            .call(
                Retry::WhenUnsent,
                Some(&self.session),
                Duration::ZERO,
                |mut api, d| {
                    let req = request(req.clone(), d);
                    async move { api.close(req).await }
                },
            )
            .await?;
        Ok(())
    }
}

impl<'a> IntoFuture for Close<'a> {
    type Output = Result<()>;
    type IntoFuture = Call<'a, ()>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A session listing being prepared; made by [`Client::sessions`]. Empty filters do not filter.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// let in_room = client.sessions().hub("chat").group("room-1").all().await?;
/// println!("{} in the room", in_room.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a listing does nothing until `stream` or `all` is called"]
pub struct ListSessions {
    client: Client,
    filter: pb::ListSessionsRequest,
}

impl ListSessions {
    pub(super) fn new(client: Client) -> Self {
        ListSessions {
            client,
            filter: pb::ListSessionsRequest::default(),
        }
    }

    /// Only sessions of this hub.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let all = client.sessions().hub("chat").all().await?;
    /// # let _ = all; Ok(()) }
    /// ```
    pub fn hub(mut self, hub: impl Into<String>) -> Self {
        self.filter.hub = hub.into();
        self
    }

    /// Only sessions in this group (needs [`hub`](Self::hub): groups belong to a hub).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let room = client.sessions().hub("chat").group("room-1").all().await?;
    /// # let _ = room; Ok(()) }
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.filter.group = group.into();
        self
    }

    /// Only sessions of this user.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let alices = client.sessions().user("alice").all().await?;
    /// # let _ = alices; Ok(()) }
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.filter.user = user.into();
        self
    }

    /// Only sessions held by this gateway node (its ID).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let here = client.sessions().node("node-1").all().await?;
    /// # let _ = here; Ok(()) }
    /// ```
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.filter.node = node.into();
        self
    }

    /// Sessions fetched per call (default: the gateway's, 100; at most 1000).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let mut s = client.sessions().page_size(500).stream();
    /// # let _ = s.next_session().await?; Ok(()) }
    /// ```
    pub fn page_size(mut self, n: u32) -> Self {
        self.filter.page_size = n;
        self
    }

    /// The matching sessions, one page fetched at a time as the stream is read. A failed
    /// page ends the stream with its error. Sessions that open or close while the listing runs
    /// may or may not appear.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use futures_util::TryStreamExt;
    ///
    /// let users: Vec<String> = client.sessions().hub("chat").stream()
    ///     .map_ok(|s| s.user)
    ///     .try_collect()
    ///     .await?;
    /// # let _ = users; Ok(()) }
    /// ```
    pub fn stream(self) -> SessionStream {
        struct State {
            client: Client,
            req: pb::ListSessionsRequest,
            page: VecDeque<SessionInfo>,
            done: bool,
        }
        let state = State {
            client: self.client,
            req: self.filter,
            page: VecDeque::new(),
            done: false,
        };
        let s = stream::unfold(state, |mut st| async move {
            loop {
                if let Some(info) = st.page.pop_front() {
                    return Some((Ok(info), st));
                }
                if st.done {
                    return None;
                }
                let req = st.req.clone();
                let page = st
                    .client
                    .inner
                    .call(Retry::Idempotent, None, Duration::ZERO, |mut api, d| {
                        let req = request(req.clone(), d);
                        async move { api.list_sessions(req).await }
                    })
                    .await;
                match page {
                    Ok(page) => {
                        st.done = page.next_page_token.is_empty();
                        st.req.page_token = page.next_page_token;
                        st.page = page
                            .sessions
                            .into_iter()
                            .map(convert::session_info)
                            .inspect(|s| st.client.inner.learn_route(&s.id, &s.node))
                            .collect();
                    }
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
        });
        SessionStream { inner: Box::pin(s) }
    }

    /// Every matching session, all pages collected.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let n = client.sessions().hub("chat").all().await?.len();
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn all(self) -> Result<Vec<SessionInfo>> {
        let mut out = Vec::new();
        let mut s = self.stream();
        while let Some(info) = s.next_session().await? {
            out.push(info);
        }
        Ok(out)
    }
}

/// Sessions of a listing, fetched page by page: a `Stream` of `Result<SessionInfo>`, or read
/// with [`next_session`](Self::next_session).
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use futures_util::StreamExt;
///
/// let mut sessions = client.sessions().hub("chat").stream();
/// while let Some(info) = sessions.next().await {
///     println!("{}", info?.id);
/// }
/// # Ok(()) }
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct SessionStream {
    inner: Pin<Box<dyn Stream<Item = Result<SessionInfo>> + Send>>,
}

impl std::fmt::Debug for SessionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStream").finish_non_exhaustive()
    }
}

impl SessionStream {
    /// The next session; `Ok(None)` after the last page.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let mut sessions = client.sessions().stream();
    /// while let Some(info) = sessions.next_session().await? {
    ///     println!("{}", info.id);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_session(&mut self) -> Result<Option<SessionInfo>> {
        self.inner.next().await.transpose()
    }
}

impl Stream for SessionStream {
    type Item = Result<SessionInfo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// An attach being prepared; made by [`Client::attach`], opened by `.await`.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// // Replace whichever backend holds the session now.
/// let conn = client.attach("AAAAAAAAAAAAAAAAAAAAAA").take_over().await?;
/// # let _ = conn; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "an attach does nothing until it is awaited"]
pub struct Attach<'a> {
    client: &'a Client,
    session: SessionId,
    take_over: bool,
}

impl<'a> Attach<'a> {
    pub(super) fn new(client: &'a Client, session: SessionId) -> Self {
        Attach {
            client,
            session,
            take_over: false,
        }
    }

    /// Replaces the backend attached now (its [`read`](SharedConnection::read) fails with
    /// [`Error::TakenOver`](crate::Error::TakenOver)) instead of failing with
    /// [`Error::AlreadyAttached`](crate::Error::AlreadyAttached).
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let conn = client.attach("AAAAAAAAAAAAAAAAAAAAAA").take_over().await?;
    /// # let _ = conn; Ok(()) }
    /// ```
    pub fn take_over(mut self) -> Self {
        self.take_over = true;
        self
    }

    async fn run(self) -> Result<SharedConnection> {
        let open = pb::AttachRequest {
            kind: Some(Req::Open(pb::AttachOpen {
                session_id: self.session.to_string(),
                take_over: self.take_over,
                manual_ack: true,
            })),
        };
        // Opening is safe to retry: a failed open attached nothing.
        let (tx, responses, info) = self
            .client
            .inner
            .call(
                Retry::Idempotent,
                Some(&self.session),
                Duration::ZERO,
                |mut api, _| {
                    let open = open.clone();
                    async move {
                        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                        tx.try_send(open)
                            .map_err(|_| Status::internal("the request queue refused `open`"))?;
                        let mut responses = api.attach(ReceiverStream::new(rx)).await?.into_inner();
                        match responses.message().await? {
                            Some(pb::AttachResponse {
                                kind: Some(Resp::Attached(info)),
                            }) => Ok(Response::new((tx, responses, info))),
                            Some(other) => Err(Status::internal(format!(
                                "expected `attached` first on the Attach stream, got {other:?}"
                            ))),
                            None => Err(Status::unavailable(
                                "the Attach stream ended before the session was attached",
                            )),
                        }
                    }
                },
            )
            .await?;
        let info = convert::session_info(info);
        self.client.inner.learn_route(&info.id, &info.node);
        Ok(SharedConnection::new(info, tx, responses))
    }
}

impl<'a> IntoFuture for Attach<'a> {
    type Output = Result<SharedConnection>;
    type IntoFuture = Call<'a, SharedConnection>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A subscription being prepared; made by [`Client::subscribe`], opened by `.await`.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::EventKind;
///
/// let events = client
///     .subscribe("chat")
///     .group("greeters")
///     .kinds([EventKind::Connected])
///     .await?;
/// # let _ = events; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a subscription does nothing until it is awaited"]
pub struct Subscribe<'a> {
    client: &'a Client,
    req: pb::SubscribeRequest,
}

impl<'a> Subscribe<'a> {
    pub(super) fn new(client: &'a Client, hub: String) -> Self {
        Subscribe {
            client,
            req: pb::SubscribeRequest {
                hub,
                kinds: Vec::new(),
                consumer_group: String::new(),
            },
        }
    }

    /// The consumer group: its members share the events (each event to one member, all of a
    /// session's events to the same member). Without one, the subscriber is a group of its own
    /// and gets every event.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let events = client.subscribe("chat").group("workers").await?;
    /// # let _ = events; Ok(()) }
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.req.consumer_group = group.into();
        self
    }

    /// Only these kinds of event (default: all). A subscriber without
    /// [`EventKind::Message`] leaves client messages to `read` and `attach`.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::EventKind;
    /// let events = client.subscribe("chat").kinds([EventKind::Disconnected]).await?;
    /// # let _ = events; Ok(()) }
    /// ```
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = EventKind>) -> Self {
        self.req.kinds = kinds.into_iter().map(convert::event_kind).collect();
        self
    }

    async fn run(self) -> Result<Subscription> {
        let req = self.req;
        let events = self
            .client
            .inner
            .call(Retry::Idempotent, None, Duration::ZERO, |mut api, _| {
                // No deadline on the request: the stream lives as long as the caller wants.
                let req = tonic::Request::new(req.clone());
                async move { api.subscribe(req).await }
            })
            .await?;
        Ok(Subscription::new(events, self.client.clone()))
    }
}

impl<'a> IntoFuture for Subscribe<'a> {
    type Output = Result<Subscription>;
    type IntoFuture = Call<'a, Subscription>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
