//! The one place where gateway errors become gRPC statuses.

use tonic::{Code, Status};

use crate::{error::Error, registry::RegistryError};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) | Error::Gone { .. } => Code::NotFound,
            Error::QueueFull(_) => Code::ResourceExhausted,
            Error::ShuttingDown => Code::Unavailable,
            Error::Registry(RegistryError::BadPageToken) => Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
    }
}
