//! Errors of the gateway's operations, as backends see them. `api::status` maps each to a gRPC
//! status in one place.

use crate::{
    registry::RegistryError,
    session::{SessionEnd, SessionId},
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
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
