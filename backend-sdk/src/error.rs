//! The SDK's one error type, and the one place where gRPC statuses become it.
//!
//! The gateway's statuses carry a code and a message; where one code covers several cases
//! (`NOT_FOUND` for an unknown and for a closed session) a `google.rpc.ErrorInfo` detail in the
//! `switchboard.v1` domain names the case, with its facts as metadata. Gateways that predate
//! the details are still understood from the message. That reading happens here and nowhere
//! else.

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::types::{Closed, Closer, SessionId};

/// Shorthand for results of this crate.
///
/// ```
/// fn check() -> switchboard_sdk::Result<()> {
///     Ok(())
/// }
/// # check().unwrap();
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, in the terms a caller branches on.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::Error;
///
/// match client.send("AAAAAAAAAAAAAAAAAAAAAA", "hello").await {
///     Ok(()) => {}
///     Err(Error::SessionGone { .. } | Error::SessionNotFound { .. }) => { /* forget it */ }
///     Err(Error::QueueFull { .. }) => { /* the browser is slow: drop or retry later */ }
///     Err(e) if e.is_retryable() => { /* try again later */ }
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such session: never issued, or closed too long ago for the gateway to remember.
    #[error("session {session} not found")]
    SessionNotFound {
        /// The session asked for.
        session: SessionId,
    },
    /// The session existed and is closed now.
    #[error("session {session} is closed{}", .closed.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    SessionGone {
        /// The session asked for.
        session: SessionId,
        /// How it ended, when the gateway said.
        closed: Option<Closed>,
    },
    /// The session's outbound queue is full: its client is not reading fast enough.
    #[error("outbound queue of session {session} is full")]
    QueueFull {
        /// The slow session.
        session: SessionId,
    },
    /// Another backend is attached to the session (attach with `take_over` to replace it).
    #[error("session {session} already has an attached backend")]
    AlreadyAttached {
        /// The session asked for.
        session: SessionId,
    },
    /// `Read` was refused: a backend is attached to the session and receives its messages.
    #[error("session {session} has an attached backend, which receives its messages")]
    ReadWhileAttached {
        /// The session asked for.
        session: SessionId,
    },
    /// Another backend took the shared connection over; this one is detached.
    #[error("another backend took over the session")]
    TakenOver,
    /// The shared connection's stream has ended; [`SharedConnection::read`] tells why.
    ///
    /// [`SharedConnection::read`]: crate::SharedConnection::read
    #[error("the shared connection is no longer attached")]
    Detached,
    /// This subscriber did not keep up and the gateway cut it off; its queued events are lost.
    #[error("the subscriber did not keep up and was cut off")]
    SubscriberTooSlow,
    /// The backend token is missing or wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The call is not allowed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No gateway could be reached, or it is shutting down. Transient.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The gateway refused the arguments (bad hub or group name, close code, size ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The call did not finish within its deadline.
    #[error("the call timed out")]
    Timeout,
    /// The client's configuration is unusable (no gateway address, a bad URL ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A server of this SDK (the connect hook) could not bind or serve.
    #[error("server failed: {0}")]
    Server(String),
    /// Any other gRPC status.
    #[error("gRPC status {code}: {message}")]
    Grpc {
        /// The gRPC status code, as a number (see the gRPC specification).
        code: i32,
        /// The status message.
        message: String,
    },
}

impl Error {
    /// Whether the same call may succeed if tried again later: the gateway was unreachable or
    /// shutting down, the call timed out, a queue was full, or a subscriber was cut off.
    ///
    /// The [`Client`](crate::Client) itself retries only [`Error::Unavailable`], and only for
    /// calls that are safe to repeat; whether a `send` or `publish` is safe to repeat is the
    /// caller's decision.
    ///
    /// ```
    /// use switchboard_sdk::Error;
    /// assert!(Error::Unavailable("gateway restarting".into()).is_retryable());
    /// assert!(!Error::Unauthenticated("bad token".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::Timeout
                | Error::QueueFull { .. }
                | Error::SubscriberTooSlow
        )
    }

    /// Whether the error says the session is closed or unknown, the two cases where a backend
    /// should forget the session.
    ///
    /// ```
    /// use switchboard_sdk::Error;
    /// let e = Error::SessionNotFound { session: "AAAAAAAAAAAAAAAAAAAAAA".into() };
    /// assert!(e.is_session_ended());
    /// ```
    pub fn is_session_ended(&self) -> bool {
        matches!(
            self,
            Error::SessionGone { .. } | Error::SessionNotFound { .. }
        )
    }

    /// Maps a gateway status; `session` is the session the call named, if any.
    pub(crate) fn from_status(status: &Status, session: Option<&SessionId>) -> Error {
        let msg = status.message();
        let session = || {
            session
                .cloned()
                .or_else(|| id_in(msg))
                .unwrap_or_else(|| SessionId::from(""))
        };
        if let Some(e) = Self::from_error_info(status, session) {
            return e;
        }
        match status.code() {
            Code::NotFound if msg.contains(" is closed") => Error::SessionGone {
                session: session(),
                closed: parse_closed(msg),
            },
            Code::NotFound => Error::SessionNotFound { session: session() },
            Code::ResourceExhausted if msg.contains("did not keep up") => Error::SubscriberTooSlow,
            Code::ResourceExhausted if msg.contains("queue") => {
                Error::QueueFull { session: session() }
            }
            Code::FailedPrecondition if msg.contains("already has an attached backend") => {
                Error::AlreadyAttached { session: session() }
            }
            Code::FailedPrecondition if msg.contains("has an attached backend") => {
                Error::ReadWhileAttached { session: session() }
            }
            Code::Aborted if msg.contains("took over") => Error::TakenOver,
            Code::Unauthenticated => Error::Unauthenticated(msg.to_owned()),
            Code::PermissionDenied => Error::PermissionDenied(msg.to_owned()),
            Code::Unavailable => Error::Unavailable(describe(status)),
            // A status made on this side from a transport error (it has a source; one sent by
            // the gateway never does), such as a connection that closed under the call.
            Code::Cancelled | Code::Unknown if std::error::Error::source(status).is_some() => {
                Error::Unavailable(describe(status))
            }
            Code::InvalidArgument => Error::InvalidArgument(msg.to_owned()),
            Code::DeadlineExceeded => Error::Timeout,
            code => Error::Grpc {
                code: code as i32,
                message: describe(status),
            },
        }
    }
}

impl Error {
    /// Reads the gateway's `ErrorInfo` detail, when the status has one this SDK knows.
    fn from_error_info(status: &Status, session: impl Fn() -> SessionId) -> Option<Error> {
        let details = status.get_error_details();
        let info = details.error_info().filter(|i| i.domain == DOMAIN)?;
        let m = &info.metadata;
        let session = || {
            m.get("session")
                .map_or_else(&session, |s| SessionId::from(s.as_str()))
        };
        Some(match info.reason.as_str() {
            "SESSION_NOT_FOUND" => Error::SessionNotFound { session: session() },
            "SESSION_CLOSED" => Error::SessionGone {
                session: session(),
                closed: m
                    .get("code")
                    .and_then(|c| c.parse().ok())
                    .map(|code| Closed {
                        code,
                        reason: m.get("reason").cloned().unwrap_or_default(),
                        closed_by: m.get("closed_by").map_or(Closer::Unknown, |c| closer(c)),
                    }),
            },
            "QUEUE_FULL" => Error::QueueFull { session: session() },
            "ALREADY_ATTACHED" => Error::AlreadyAttached { session: session() },
            "READ_WHILE_ATTACHED" => Error::ReadWhileAttached { session: session() },
            "TAKEN_OVER" => Error::TakenOver,
            "SUBSCRIBER_TOO_SLOW" => Error::SubscriberTooSlow,
            "HUB_NOT_ALLOWED" => Error::PermissionDenied(status.message().to_owned()),
            // A reason added after this SDK: the code decides, as for any status.
            _ => return None,
        })
    }
}

/// The `ErrorInfo` domain of the gateway's reasons.
const DOMAIN: &str = "switchboard.v1";

/// Who closed a session, as the gateway names it.
fn closer(s: &str) -> Closer {
    match s {
        "client" => Closer::Client,
        "gateway" => Closer::Gateway,
        "backend" => Closer::Backend,
        "node lost" | "node_lost" => Closer::NodeLost,
        _ => Closer::Unknown,
    }
}

/// The status message, plus its source (a transport error says more than "tcp connect error").
fn describe(status: &Status) -> String {
    let mut s = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let part = e.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        source = e.source();
    }
    s
}

/// The session ID in a gateway message such as `session ABC... not found`.
fn id_in(msg: &str) -> Option<SessionId> {
    let rest = msg.strip_prefix("session ")?;
    let id = rest.split_whitespace().next()?;
    Some(SessionId::from(id))
}

/// Reads `... is closed (code 4000, "reason", closed by client)`, the gateway's message for a
/// closed session. `None` when the message has another shape.
fn parse_closed(msg: &str) -> Option<Closed> {
    let inner = msg.split_once("(code ")?.1.strip_suffix(')')?;
    let (code, rest) = inner.split_once(", ")?;
    let (quoted, closer_name) = rest.rsplit_once(", closed by ")?;
    let reason = quoted.strip_prefix('"')?.strip_suffix('"')?;
    Some(Closed {
        code: code.parse().ok()?,
        reason: unescape(reason),
        closed_by: closer(closer_name),
    })
}

/// Undoes the common escapes of Rust's `{:?}` for strings.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn not_found_is_told_apart_from_closed_by_the_message() {
        let id = SessionId::from(ID);
        let e = Error::from_status(
            &Status::not_found(format!("session {ID} not found")),
            Some(&id),
        );
        assert!(matches!(e, Error::SessionNotFound { session } if session == id));

        let msg = format!(r#"session {ID} is closed (code 4000, "see \"you\"", closed by client)"#);
        match Error::from_status(&Status::not_found(msg), None) {
            Error::SessionGone { session, closed } => {
                assert_eq!(session, id);
                let closed = closed.expect("parsed");
                assert_eq!(closed.code, 4000);
                assert_eq!(closed.reason, r#"see "you""#);
                assert_eq!(closed.closed_by, Closer::Client);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_error_info_detail_decides_over_the_message() {
        use std::collections::HashMap;
        use tonic_types::ErrorDetails;
        let info = |reason: &str, m: &[(&str, &str)]| {
            let m: HashMap<String, String> = m
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ErrorDetails::with_error_info(reason, DOMAIN, m)
        };
        let closed = Status::with_error_details(
            Code::NotFound,
            "some wording this SDK does not know",
            info(
                "SESSION_CLOSED",
                &[
                    ("session", ID),
                    ("code", "4001"),
                    ("reason", "a \"quoted\" reason, closed by client)"),
                    ("closed_by", "backend"),
                ],
            ),
        );
        match Error::from_status(&closed, None) {
            Error::SessionGone { session, closed } => {
                assert_eq!(session, SessionId::from(ID));
                let closed = closed.expect("from the detail");
                assert_eq!(closed.code, 4001);
                assert_eq!(closed.reason, "a \"quoted\" reason, closed by client)");
                assert_eq!(closed.closed_by, Closer::Backend);
            }
            other => panic!("{other:?}"),
        }
        // A message that reads like "closed" does not override a SESSION_NOT_FOUND detail.
        let unknown = Status::with_error_details(
            Code::NotFound,
            format!("session {ID} is closed"),
            info("SESSION_NOT_FOUND", &[("session", ID)]),
        );
        assert!(matches!(
            Error::from_status(&unknown, None),
            Error::SessionNotFound { .. }
        ));
        // Another domain's detail is not ours: the message is read as before.
        let foreign = Status::with_error_details(
            Code::NotFound,
            format!("session {ID} not found"),
            ErrorDetails::with_error_info("SESSION_CLOSED", "example.com", HashMap::new()),
        );
        assert!(matches!(
            Error::from_status(&foreign, None),
            Error::SessionNotFound { .. }
        ));
    }

    #[test]
    fn a_closed_message_of_another_shape_still_maps_to_gone() {
        let e = Error::from_status(&Status::not_found(format!("session {ID} is closed")), None);
        assert!(matches!(e, Error::SessionGone { closed: None, .. }));
    }

    #[test]
    fn each_gateway_refusal_has_its_variant() {
        let id = SessionId::from(ID);
        let s = Some(&id);
        type Is = fn(&Error) -> bool;
        let cases: Vec<(Status, Is)> = vec![
            (
                Status::resource_exhausted("outbound queue of session X is full: slow"),
                |e| matches!(e, Error::QueueFull { .. }),
            ),
            (
                Status::resource_exhausted("this subscriber did not keep up and was cut off"),
                |e| matches!(e, Error::SubscriberTooSlow),
            ),
            (
                Status::failed_precondition(
                    "session X already has an attached backend; set take_over to replace it",
                ),
                |e| matches!(e, Error::AlreadyAttached { .. }),
            ),
            (
                Status::failed_precondition(
                    "session X has an attached backend, which receives its messages",
                ),
                |e| matches!(e, Error::ReadWhileAttached { .. }),
            ),
            (
                Status::aborted("another backend took over this session"),
                |e| matches!(e, Error::TakenOver),
            ),
            (Status::unauthenticated("invalid backend token"), |e| {
                matches!(e, Error::Unauthenticated(_))
            }),
            (Status::permission_denied("no"), |e| {
                matches!(e, Error::PermissionDenied(_))
            }),
            (Status::unavailable("the gateway is shutting down"), |e| {
                matches!(e, Error::Unavailable(_)) && e.is_retryable()
            }),
            (Status::invalid_argument("invalid hub"), |e| {
                matches!(e, Error::InvalidArgument(_)) && !e.is_retryable()
            }),
            (Status::deadline_exceeded("late"), |e| {
                matches!(e, Error::Timeout)
            }),
            (Status::internal("boom"), |e| {
                matches!(e, Error::Grpc { code: 13, .. })
            }),
        ];
        for (status, is) in cases {
            let e = Error::from_status(&status, s);
            assert!(is(&e), "{status:?} became {e:?}");
        }
    }
}
