//! [`Subscription`]: a hub's events as a stream of typed [`Event`]s.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;
use switchboard_proto::v1 as pb;
use tonic::Streaming;

use crate::{
    client::Client,
    convert,
    error::{Error, Result},
    types::Event,
};

/// A hub's events, made by [`Client::subscribe`]: read with [`recv`](Self::recv) or use it as
/// a `Stream` of `Result<Event>`. Dropping it unsubscribes.
///
/// The stream fails with [`Error::SubscriberTooSlow`] when this subscriber falls behind for
/// too long (the gateway hands its events to another member of the group), and with
/// [`Error::Unavailable`] when the gateway shuts down; subscribe again then.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use futures_util::StreamExt;
/// use switchboard_sdk::Event;
///
/// let mut events = client.subscribe("chat").await?;
/// while let Some(event) = events.next().await {
///     if let Event::Disconnected { session, closed, .. } = event? {
///         println!("{session} left ({closed})");
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscription {
    events: Streaming<pb::Event>,
    /// To learn where sessions live from their `connected` events.
    client: Client,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(events: Streaming<pb::Event>, client: Client) -> Self {
        Subscription { events, client }
    }

    /// The next event; `Ok(None)` when the gateway ended the stream.
    ///
    /// ```no_run
    /// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
    /// let mut events = client.subscribe("chat").await?;
    /// while let Some(event) = events.recv().await? {
    ///     println!("{:?} of {}", event.kind(), event.session_id());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Result<Option<Event>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    fn take(&self, e: pb::Event) -> Option<Event> {
        let event = convert::event(e)?;
        if let Event::Connected(info) = &event {
            self.client.learn_route(&info.id, &info.node);
        }
        Some(event)
    }
}

impl Stream for Subscription {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(n) => n,
            };
            return Poll::Ready(match next {
                None => None,
                Some(Err(status)) => Some(Err(Error::from_status(&status, None))),
                Some(Ok(e)) => match self.take(e) {
                    Some(event) => Some(Ok(event)),
                    // A kind this SDK does not know: skip it.
                    None => continue,
                },
            });
        }
    }
}
