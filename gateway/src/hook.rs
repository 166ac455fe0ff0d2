//! The connect hook: asks a backend's `switchboard.v1.ConnectHook/Authorize` whether to admit
//! an upgrade. Fails closed: an unreachable, slow or confused hook refuses the client.

use std::time::Duration;

use switchboard_proto::v1::{
    authorize_response::Decision, connect_hook_client::ConnectHookClient, AuthorizeRequest,
};
use tonic::transport::{Channel, Endpoint};

pub(crate) use switchboard_proto::v1::Allow;

pub(crate) struct ConnectHook {
    client: ConnectHookClient<Channel>,
    timeout: Duration,
}

/// The hook's answer.
#[derive(Debug)]
pub(crate) enum Verdict {
    Allow(Allow),
    Deny {
        status: u16,
        reason: String,
    },
    /// The hook could not be asked or gave no usable answer.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid connect hook URL {url:?}: {source}")]
pub(crate) struct HookUrlError {
    url: String,
    source: tonic::transport::Error,
}

impl ConnectHook {
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, HookUrlError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|source| HookUrlError {
            url: url.to_owned(),
            source,
        })?;
        // Lazy: the hook may start after the gateway; each call has its own deadline.
        let channel = endpoint
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: ConnectHookClient::new(channel),
            timeout,
        })
    }

    pub(crate) async fn authorize(&self, req: AuthorizeRequest) -> Verdict {
        let mut client = self.client.clone();
        let call = client.authorize(req);
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Verdict::Failed(format!("no answer within {:?}", self.timeout)),
            Ok(Err(status)) => return Verdict::Failed(format!("hook call failed: {status}")),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match reply.decision {
            Some(Decision::Allow(allow)) => Verdict::Allow(allow),
            Some(Decision::Deny(deny)) => {
                let status = match deny.http_status {
                    0 => 403,
                    s @ 400..=599 => s as u16,
                    other => {
                        return Verdict::Failed(format!(
                            "hook denied with HTTP status {other}, which is not 400-599"
                        ))
                    }
                };
                Verdict::Deny {
                    status,
                    reason: deny.reason,
                }
            }
            None => Verdict::Failed("hook answered without a decision".into()),
        }
    }
}
