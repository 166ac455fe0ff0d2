//! The one place where gateway errors become gRPC statuses.
//!
//! Where one code covers several cases (`NOT_FOUND` for an unknown and for a closed session),
//! the status carries a `google.rpc.ErrorInfo` detail in the `switchboard.v1` domain whose
//! `reason` names the case and whose metadata holds its facts, so backends need not read the
//! message (the reasons are listed in `gateway.proto`).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{error::Error, registry::RegistryError};

/// The `ErrorInfo` domain of every reason below.
pub(crate) const DOMAIN: &str = "switchboard.v1";

pub(crate) fn status(e: &Error) -> Status {
    let code = match e {
        // The owning node's status as it sent it, details included.
        Error::Remote(s) => return s.clone(),
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) | Error::Gone { .. } => Code::NotFound,
        Error::QueueFull(_) => Code::ResourceExhausted,
        Error::AlreadyAttached(_) | Error::ReadWhileAttached(_) => Code::FailedPrecondition,
        Error::TakenOver => Code::Aborted,
        Error::StreamFailed => Code::Cancelled,
        Error::SubscriberTooSlow => Code::ResourceExhausted,
        Error::ShuttingDown | Error::Moved(_) => Code::Unavailable,
        Error::ResumeBufferFull(_) => Code::ResourceExhausted,
        Error::TooManyGroups(..) => Code::ResourceExhausted,
        Error::HubNotAllowed(_) => Code::PermissionDenied,
        Error::Registry(RegistryError::BadPageToken) => Code::InvalidArgument,
        Error::Registry(RegistryError::Unavailable(_) | RegistryError::Misconfigured(_)) => {
            Code::Unavailable
        }
    };
    match info(e) {
        Some((reason, metadata)) => Status::with_error_details(
            code,
            e.to_string(),
            ErrorDetails::with_error_info(reason, DOMAIN, metadata),
        ),
        None => Status::new(code, e.to_string()),
    }
}

/// The `ErrorInfo` reason and metadata of the errors a backend acts on differently.
fn info(e: &Error) -> Option<(&'static str, HashMap<String, String>)> {
    let session = |id: &str| HashMap::from([("session".to_owned(), id.to_owned())]);
    Some(match e {
        Error::NotFound(id) => ("SESSION_NOT_FOUND", session(id)),
        Error::Gone { id, end } => {
            let mut m = session(id.as_str());
            m.insert("code".into(), end.code.to_string());
            m.insert("reason".into(), end.reason.to_string());
            m.insert("closed_by".into(), end.closed_by.as_str().into());
            ("SESSION_CLOSED", m)
        }
        Error::QueueFull(id) => ("QUEUE_FULL", session(id.as_str())),
        Error::Moved(id) => ("SESSION_MOVED", session(id.as_str())),
        Error::ResumeBufferFull(id) => ("RESUME_BUFFER_FULL", session(id.as_str())),
        Error::AlreadyAttached(id) => ("ALREADY_ATTACHED", session(id.as_str())),
        Error::ReadWhileAttached(id) => ("READ_WHILE_ATTACHED", session(id.as_str())),
        Error::TakenOver => ("TAKEN_OVER", HashMap::new()),
        Error::SubscriberTooSlow => ("SUBSCRIBER_TOO_SLOW", HashMap::new()),
        Error::TooManyGroups(id, _) => ("TOO_MANY_GROUPS", session(id.as_str())),
        Error::HubNotAllowed(hub) => (
            "HUB_NOT_ALLOWED",
            HashMap::from([("hub".to_owned(), hub.clone())]),
        ),
        _ => return None,
    })
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Closer, SessionEnd, SessionId};

    fn reason(s: &Status) -> Option<(String, HashMap<String, String>)> {
        let d = s.get_error_details();
        let i = d.error_info()?;
        assert_eq!(i.domain, DOMAIN);
        Some((i.reason.clone(), i.metadata.clone()))
    }

    #[test]
    fn closed_and_unknown_sessions_differ_in_their_details_not_only_their_text() {
        let id = SessionId::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let gone = status(&Error::Gone {
            id: id.clone(),
            end: SessionEnd {
                code: 4000,
                reason: "bye, \"friend\"".into(),
                closed_by: Closer::Client,
            },
        });
        assert_eq!(gone.code(), Code::NotFound);
        let (r, m) = reason(&gone).unwrap();
        assert_eq!(r, "SESSION_CLOSED");
        assert_eq!(m["session"], id.as_str());
        assert_eq!(m["code"], "4000");
        assert_eq!(m["reason"], "bye, \"friend\"");
        assert_eq!(m["closed_by"], "client");

        let unknown = status(&Error::NotFound(id.to_string()));
        assert_eq!(unknown.code(), Code::NotFound);
        assert_eq!(reason(&unknown).unwrap().0, "SESSION_NOT_FOUND");
    }

    #[test]
    fn a_forwarded_status_keeps_its_details() {
        let there = status(&Error::QueueFull(
            SessionId::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap(),
        ));
        let here = status(&Error::Remote(there.clone()));
        assert_eq!(here.code(), Code::ResourceExhausted);
        assert_eq!(here.message(), there.message());
        assert_eq!(reason(&here).unwrap().0, "QUEUE_FULL");
    }

    #[test]
    fn plain_errors_have_no_details() {
        let s = status(&Error::InvalidArgument("bad".into()));
        assert!(reason(&s).is_none());
    }
}
