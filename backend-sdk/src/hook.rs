//! The connect hook: the gateway asks the backend, before accepting a WebSocket upgrade,
//! whether to let the client in and as whom (the `OnPreServer` of a shared connection).
//!
//! Implement [`ConnectHook`] (or pass an async closure) and serve it with [`HookServer`];
//! start the gateway with `--connect-hook http://ADDR`.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use switchboard_proto::v1::{
    self as pb,
    authorize_response::Decision as PbDecision,
    connect_hook_server::{ConnectHook as PbConnectHook, ConnectHookServer},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};

/// Decides whether a client may connect. One async function; also implemented by any
/// `Fn(ConnectRequest) -> impl Future<Output = Decision>` closure.
///
/// The gateway waits for the answer at most its `--connect-hook-timeout` (2 s by default) and
/// refuses the client with 503 when the hook is slower or down.
///
/// ```
/// use switchboard_sdk::{Allow, ConnectHook, ConnectRequest, Decision};
///
/// struct Tokens;
///
/// impl ConnectHook for Tokens {
///     async fn authorize(&self, req: ConnectRequest) -> Decision {
///         match req.bearer_token() {
///             Some("alice-token") => Allow::user("alice").group("staff").into(),
///             _ => Decision::deny(401, "unknown token"),
///         }
///     }
/// }
/// ```
pub trait ConnectHook: Send + Sync + 'static {
    /// Allows or denies one upgrade request.
    ///
    /// ```
    /// # use switchboard_sdk::{ConnectHook, ConnectRequest, Decision, Allow};
    /// struct Open;
    /// impl ConnectHook for Open {
    ///     async fn authorize(&self, _req: ConnectRequest) -> Decision {
    ///         Allow::anonymous().into()
    ///     }
    /// }
    /// ```
    fn authorize(&self, request: ConnectRequest) -> impl Future<Output = Decision> + Send;
}

impl<F, Fut> ConnectHook for F
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send,
{
    fn authorize(&self, request: ConnectRequest) -> impl Future<Output = Decision> + Send {
        self(request)
    }
}

/// An upgrade request the gateway asks the hook about.
///
/// ```
/// # fn f(req: switchboard_sdk::ConnectRequest) {
/// println!("{} from {} wants hub {}", req.path, req.remote_addr, req.hub);
/// if let Some(user) = req.query_param("user") { println!("claims to be {user}"); }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The request path, such as `/ws/chat`.
    pub path: String,
    /// The hub, from the path.
    pub hub: String,
    /// Request headers in the order received (names lower-case); repeated names are kept.
    pub headers: Vec<(String, String)>,
    /// The raw query string, without the leading `?`.
    pub query: String,
    /// The client's address as the gateway sees it.
    pub remote_addr: String,
    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in order.
    pub subprotocols: Vec<String>,
}

impl ConnectRequest {
    /// The first value of a header (the name is matched case-insensitively).
    ///
    /// ```
    /// # fn f(req: switchboard_sdk::ConnectRequest) {
    /// let origin = req.header("Origin").unwrap_or("");
    /// # let _ = origin; }
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter, percent-decoded.
    ///
    /// ```
    /// # fn f(req: switchboard_sdk::ConnectRequest) {
    /// // For /ws/chat?user=al%20ice&password=x
    /// let user = req.query_param("user"); // Some("al ice")
    /// # let _ = user; }
    /// ```
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The token of an `Authorization: Bearer <token>` header.
    ///
    /// ```
    /// # fn f(req: switchboard_sdk::ConnectRequest) {
    /// if req.bearer_token() == Some("let-me-in") { /* ... */ }
    /// # }
    /// ```
    pub fn bearer_token(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// The hook's answer.
///
/// ```
/// use switchboard_sdk::{Allow, Decision};
///
/// let yes: Decision = Allow::user("alice").group("staff").metadata("plan", "pro").into();
/// let no = Decision::deny(403, "not today");
/// # let _ = (yes, no);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Let the client in, with this identity.
    Allow(Allow),
    /// Refuse the upgrade.
    Deny {
        /// HTTP status for the refusal (400-599).
        status: u16,
        /// Reason, sent to the client as the response body.
        reason: String,
    },
}

impl Decision {
    /// Refuses the upgrade with an HTTP status (400-599) and a reason.
    ///
    /// ```
    /// let d = switchboard_sdk::Decision::deny(401, "log in first");
    /// # let _ = d;
    /// ```
    pub fn deny(status: u16, reason: impl Into<String>) -> Self {
        Decision::Deny {
            status,
            reason: reason.into(),
        }
    }
}

impl From<Allow> for Decision {
    fn from(a: Allow) -> Self {
        Decision::Allow(a)
    }
}

/// The identity an allowed client's session gets.
///
/// ```
/// use switchboard_sdk::Allow;
///
/// let a = Allow::user("alice")
///     .group("staff")
///     .metadata("tenant", "acme")
///     .subprotocol("chat.v1");
/// # let _ = a;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Allow {
    /// The session's user; empty for none.
    pub user: String,
    /// Groups of the hub the session starts in.
    pub groups: Vec<String>,
    /// Metadata the session carries (visible in `SessionInfo`).
    pub metadata: BTreeMap<String, String>,
    /// One of the offered subprotocols, or `None`.
    pub subprotocol: Option<String>,
}

impl Allow {
    /// Allows the client without a user.
    ///
    /// ```
    /// let a = switchboard_sdk::Allow::anonymous();
    /// # let _ = a;
    /// ```
    pub fn anonymous() -> Self {
        Allow::default()
    }

    /// Allows the client as `user`.
    ///
    /// ```
    /// let a = switchboard_sdk::Allow::user("alice");
    /// # let _ = a;
    /// ```
    pub fn user(user: impl Into<String>) -> Self {
        Allow {
            user: user.into(),
            ..Allow::default()
        }
    }

    /// Adds a group of the hub.
    ///
    /// ```
    /// let a = switchboard_sdk::Allow::user("alice").group("staff");
    /// # let _ = a;
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Adds a metadata entry.
    ///
    /// ```
    /// let a = switchboard_sdk::Allow::user("alice").metadata("plan", "pro");
    /// # let _ = a;
    /// ```
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Picks the subprotocol (it must be one the client offered).
    ///
    /// ```
    /// let a = switchboard_sdk::Allow::anonymous().subprotocol("chat.v1");
    /// # let _ = a;
    /// ```
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocol = Some(protocol.into());
        self
    }
}

/// Serves a [`ConnectHook`] as the gRPC service `switchboard.v1.ConnectHook`.
///
/// ```no_run
/// # async fn f() -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::{Allow, ConnectRequest, Decision, HookServer};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await.unwrap();
/// HookServer::new(|req: ConnectRequest| async move {
///     match req.query_param("token").as_deref() {
///         Some("demo") => Allow::user("demo").into(),
///         _ => Decision::deny(401, "bad token"),
///     }
/// })
/// .serve(listener)
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HookServer<H> {
    hook: H,
}

impl<H: ConnectHook> HookServer<H> {
    /// Wraps a hook.
    ///
    /// ```
    /// use switchboard_sdk::{Allow, ConnectRequest, Decision, HookServer};
    /// let server = HookServer::new(|_req: ConnectRequest| async { Decision::from(Allow::anonymous()) });
    /// # let _ = server;
    /// ```
    pub fn new(hook: H) -> Self {
        HookServer { hook }
    }

    /// Serves on `listener` until the process ends or the server fails.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// # use switchboard_sdk::{Allow, ConnectRequest, Decision, HookServer};
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// println!("hook on {}", listener.local_addr().unwrap());
    /// HookServer::new(|_r: ConnectRequest| async { Decision::from(Allow::anonymous()) })
    ///     .serve(listener)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes the calls in flight.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// # use switchboard_sdk::{Allow, ConnectRequest, Decision, HookServer};
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await.unwrap();
    /// HookServer::new(|_r: ConnectRequest| async { Decision::from(Allow::anonymous()) })
    ///     .serve_with_shutdown(listener, async { let _ = tokio::signal::ctrl_c().await; })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        tonic::transport::Server::builder()
            .add_service(ConnectHookServer::new(Adapter(Arc::new(self.hook))))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(|e| Error::Server(e.to_string()))
    }
}

/// The generated service over a [`ConnectHook`].
struct Adapter<H>(Arc<H>);

#[tonic::async_trait]
impl<H: ConnectHook> PbConnectHook for Adapter<H> {
    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let r = req.into_inner();
        let request = ConnectRequest {
            path: r.path,
            hub: r.hub,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            query: r.query,
            remote_addr: r.remote_addr,
            subprotocols: r.subprotocols,
        };
        let decision = match self.0.authorize(request).await {
            Decision::Allow(a) => PbDecision::Allow(pb::Allow {
                user: a.user,
                groups: a.groups,
                metadata: a.metadata.into_iter().collect(),
                subprotocol: a.subprotocol.unwrap_or_default(),
            }),
            Decision::Deny { status, reason } => PbDecision::Deny(pb::Deny {
                http_status: status.into(),
                reason,
            }),
        };
        Ok(Response::new(pb::AuthorizeResponse {
            decision: Some(decision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &str, headers: &[(&str, &str)]) -> ConnectRequest {
        ConnectRequest {
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ConnectRequest::default()
        }
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let r = req("user=al%20ice&password=p%26w+d&flag", &[]);
        assert_eq!(r.query_param("user").as_deref(), Some("al ice"));
        assert_eq!(r.query_param("password").as_deref(), Some("p&w d"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("nope"), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(
            req("", &[("authorization", "bearer abc")]).bearer_token(),
            Some("abc")
        );
        assert_eq!(
            req("", &[("Authorization", "Bearer  xyz ")]).bearer_token(),
            Some("xyz")
        );
        assert_eq!(
            req("", &[("authorization", "Basic abc")]).bearer_token(),
            None
        );
        assert_eq!(req("", &[]).bearer_token(), None);
    }
}
