//! Backend credentials: a full token, and tokens limited to some hubs. Checked in constant time
//! in an interceptor, before the request body is decoded; the grant travels with the request.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::{config::Config, error::Error};

/// What a call may touch.
#[derive(Clone, Debug)]
pub(crate) enum Grant {
    All,
    Hubs(Arc<Vec<String>>),
}

impl Grant {
    /// The grant of a call (every call passes the interceptor, which sets it).
    pub(crate) fn of<T>(req: &Request<T>) -> Grant {
        req.extensions()
            .get::<Grant>()
            .cloned()
            .unwrap_or(Grant::All)
    }

    pub(crate) fn check_hub(&self, hub: &str) -> Result<(), Error> {
        match self {
            Grant::All => Ok(()),
            Grant::Hubs(hubs) if hubs.iter().any(|h| h == hub) => Ok(()),
            Grant::Hubs(_) => Err(Error::HubNotAllowed(hub.to_owned())),
        }
    }

    pub(crate) fn is_all(&self) -> bool {
        matches!(self, Grant::All)
    }
}

#[derive(Clone)]
pub(crate) struct Tokens {
    full: Option<Arc<str>>,
    scoped: Arc<Vec<(Arc<Vec<String>>, String)>>,
}

impl Tokens {
    pub(crate) fn from_config(c: &Config) -> Self {
        Self {
            full: c.backend_token.as_deref().map(Arc::from),
            scoped: Arc::new(
                c.scoped_backend_tokens
                    .iter()
                    .map(|t| (Arc::new(t.hubs.clone()), t.token.clone()))
                    .collect(),
            ),
        }
    }

    /// The grant a call's bearer token carries.
    pub(crate) fn check<T>(&self, req: &Request<T>) -> Result<Grant, Status> {
        if self.full.is_none() && self.scoped.is_empty() {
            return Ok(Grant::All);
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            tracing::warn!("backend call without a token");
            return Err(Status::unauthenticated(
                "missing backend token: send 'authorization: Bearer <token>'",
            ));
        };
        // Compare against every token, so timing says nothing about which one matched.
        let mut grant = None;
        if let Some(full) = &self.full {
            if bool::from(presented.as_bytes().ct_eq(full.as_bytes())) {
                grant = Some(Grant::All);
            }
        }
        for (hubs, token) in self.scoped.iter() {
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) && grant.is_none() {
                grant = Some(Grant::Hubs(Arc::clone(hubs)));
            }
        }
        grant.ok_or_else(|| {
            tracing::warn!("backend call with a wrong token");
            Status::unauthenticated("invalid backend token")
        })
    }
}
