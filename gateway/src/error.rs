//! Errors of the gateway's operations, as backends see them. `api::status` maps each to a gRPC
//! status in one place.

use crate::{
    model::{SessionEnd, SessionId},
    registry::RegistryError,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("session {0} not found")]
    NotFound(String),
    #[error("session {id} is closed (code {}, {:?}, closed by {})", end.code, end.reason, end.closed_by.as_str())]
    Gone { id: SessionId, end: SessionEnd },
    #[error("outbound queue of session {0} is full: the client is not reading fast enough")]
    QueueFull(SessionId),
    #[error("session {0} already has an attached backend; set take_over to replace it")]
    AlreadyAttached(SessionId),
    #[error("session {0} has an attached backend, which receives its messages")]
    ReadWhileAttached(SessionId),
    #[error("another backend took over this session")]
    TakenOver,
    #[error("the backend's request stream failed")]
    StreamFailed,
    #[error("this subscriber did not keep up and was cut off; events queued for it are lost")]
    SubscriberTooSlow,
    /// The node holding the session answered with this status.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
    #[error("session {0} is already in {1} groups, the most one session may join")]
    TooManyGroups(SessionId, usize),
    #[error("this backend token may not act on hub {0:?}")]
    HubNotAllowed(String),
    #[error(
        "session {0} was resumed on another connection or node while this call ran; call again"
    )]
    Moved(SessionId),
    #[error("session {0} has --resume-buffer messages its client has not acknowledged; it ends")]
    ResumeBufferFull(SessionId),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
