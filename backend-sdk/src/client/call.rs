//! How one call is made: pick a node (the session's owner when known, else any), attach the
//! token and deadline, map the status, and retry what is safe to retry.

use std::{future::Future, sync::Arc, time::Duration};

use switchboard_proto::v1::gateway_client::GatewayClient;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Request, Status,
};

use super::{nodes::Node, Inner};
use crate::{
    error::{Error, Result},
    types::SessionId,
};

/// The generated client over one node's channel, with the token interceptor.
pub(crate) type Api = GatewayClient<InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct Auth(pub Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Whether a call may be repeated after `UNAVAILABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Repeating it changes nothing (queries, group membership, opening a stream).
    Idempotent,
    /// Repeating it could do it twice (send, publish, close) or lose a message (read): it is
    /// retried only when the request certainly never left this process (no connection).
    WhenUnsent,
}

/// Whether a failed call's request certainly never reached a gateway: the connection to it
/// could not be made (refused, or no route), so no byte of the request was sent.
fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// A request carrying its deadline, so the gateway stops working on it when the caller gives up.
pub(crate) fn request<M>(message: M, deadline: Duration) -> Request<M> {
    let mut r = Request::new(message);
    r.set_timeout(deadline);
    r
}

impl Inner {
    fn api(&self, node: &Node) -> Api {
        GatewayClient::with_interceptor(node.channel.clone(), Auth(self.config.token.clone()))
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes)
    }

    /// The node for a call naming `session` (its owner, when discovery knows it), or any node;
    /// `avoid` is a node that just failed.
    async fn route(&self, session: Option<&SessionId>, avoid: Option<&str>) -> Result<Node> {
        #[cfg(feature = "redis")]
        if let (Some(s), Some(d)) = (session, &self.discovery) {
            if let Some(node) = d.owner(s).await.and_then(|id| self.nodes.by_id(&id)) {
                if Some(&*node.url) != avoid {
                    return Ok(node);
                }
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = session;
        self.nodes
            .any(avoid)
            .ok_or_else(|| Error::Unavailable("no live gateway node is known".into()))
    }

    /// Forgets where a session lives once the gateway says it is closed or unknown.
    pub(crate) fn forget_route(&self, session: &SessionId) {
        #[cfg(feature = "redis")]
        if let Some(d) = &self.discovery {
            d.forget(session);
        }
        #[cfg(not(feature = "redis"))]
        let _ = session;
    }

    /// Remembers where a session lives (from a listing or an event).
    pub(crate) fn learn_route(&self, session: &SessionId, node: &str) {
        #[cfg(feature = "redis")]
        if let Some(d) = &self.discovery {
            d.learn(session, node);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (session, node);
    }

    /// Makes one call: `f` gets the client for the chosen node and the call's deadline (the
    /// call timeout plus `extra`, for a `read`'s own wait) and returns the gRPC future.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        retry: Retry,
        session: Option<&SessionId>,
        extra: Duration,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Api, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = self.config.call_timeout + extra;
        let attempts = self.config.retry.max_attempts;
        let mut backoff = self.config.retry.initial_backoff;
        let mut attempt = 1;
        // A retry avoids the node that just failed when another one exists.
        let mut avoid: Option<Arc<str>> = None;
        loop {
            let (err, unsent, failed) = match self.route(session, avoid.as_deref()).await {
                Ok(node) => {
                    let outcome =
                        tokio::time::timeout(deadline, f(self.api(&node), deadline)).await;
                    let (err, unsent) = match outcome {
                        Ok(Ok(response)) => return Ok(response.into_inner()),
                        Ok(Err(status)) => {
                            (Error::from_status(&status, session), never_sent(&status))
                        }
                        Err(_) => (Error::Timeout, false),
                    };
                    if let Some(s) = session.filter(|_| err.is_session_ended()) {
                        self.forget_route(s);
                    }
                    (err, unsent, Some(node.url))
                }
                Err(e) => (e, true, None),
            };
            // Any call may be retried when its request never left; only idempotent ones when
            // it may have reached the gateway.
            let may_retry = retry == Retry::Idempotent || unsent;
            if !matches!(err, Error::Unavailable(_)) || !may_retry || attempt >= attempts {
                return Err(err);
            }
            tracing::debug!(attempt, node = failed.as_deref().unwrap_or(""), error = %err, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.retry.max_backoff);
            attempt += 1;
            avoid = failed;
        }
    }
}
