//! The one place where gateway errors become gRPC statuses.

use tonic::{Code, Status};

use crate::{error::Error, registry::RegistryError};

pub(crate) fn status(e: &Error) -> Status {
    let code = match e {
        Error::Remote(s) => return Status::new(s.code(), s.message()),
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) | Error::Gone { .. } => Code::NotFound,
        Error::QueueFull(_) => Code::ResourceExhausted,
        Error::AlreadyAttached(_) | Error::ReadWhileAttached(_) => Code::FailedPrecondition,
        Error::TakenOver => Code::Aborted,
        Error::StreamFailed => Code::Cancelled,
        Error::SubscriberTooSlow => Code::ResourceExhausted,
        Error::ShuttingDown => Code::Unavailable,
        Error::TooManyGroups(..) => Code::ResourceExhausted,
        Error::HubNotAllowed(_) => Code::PermissionDenied,
        Error::Registry(RegistryError::BadPageToken) => Code::InvalidArgument,
        Error::Registry(RegistryError::Unavailable(_)) => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        status(&e)
    }
}
