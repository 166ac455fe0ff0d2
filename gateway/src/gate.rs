//! What a client must pass before its upgrade is accepted, apart from the connect hook: the
//! Origin allow-list (against cross-site WebSocket hijacking), connection limits, and JWTs.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    config::Config,
    hook::{ConnectHook, HookUrlError},
    jwt::{JwtConfigError, JwtVerifier},
    limits::{ConnectionLimiter, Permit, Refusal},
};

pub(crate) struct Gate {
    limiter: Arc<ConnectionLimiter>,
    pub jwt: Option<JwtVerifier>,
    origins: Origins,
    /// The backend asked before each upgrade, if any.
    pub hook: Option<ConnectHook>,
}

/// A gate that cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GateError {
    #[error("{0}")]
    Jwt(#[from] JwtConfigError),
    #[error("{0}")]
    Hook(#[from] HookUrlError),
}

/// Allowed origins, for every hub and per hub. Empty: no check.
#[derive(Default)]
struct Origins {
    everywhere: Vec<String>,
    per_hub: HashMap<String, Vec<String>>,
}

impl Gate {
    pub(crate) fn from_config(c: &Config) -> Result<Self, GateError> {
        let mut origins = Origins::default();
        for o in &c.allowed_origins {
            match o.split_once('=') {
                Some((hub, origin)) if crate::config::is_name(hub) => origins
                    .per_hub
                    .entry(hub.to_owned())
                    .or_default()
                    .push(normalize(origin)),
                _ => origins.everywhere.push(normalize(o)),
            }
        }
        let hook = c
            .connect_hook
            .as_deref()
            .map(|url| ConnectHook::new(url, c.connect_hook_timeout))
            .transpose()?;
        Ok(Self {
            limiter: ConnectionLimiter::new(c.max_connections, c.max_connections_per_ip),
            jwt: JwtVerifier::from_config(c)?,
            origins,
            hook,
        })
    }

    /// Whether a browser page from `origin` may open a session on `hub`. Clients that send no
    /// Origin are not browsers, so there is no cross-site page to protect against.
    pub(crate) fn origin_allowed(&self, hub: &str, origin: Option<&str>) -> bool {
        let o = &self.origins;
        if o.everywhere.is_empty() && o.per_hub.is_empty() {
            return true;
        }
        let Some(origin) = origin else { return true };
        let origin = normalize(origin);
        o.everywhere.contains(&origin)
            || o.per_hub
                .get(hub)
                .is_some_and(|list| list.contains(&origin))
    }

    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Permit, Refusal> {
        self.limiter.acquire(ip)
    }
}

/// Origins compare without case and without a trailing slash.
fn normalize(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn gate(args: &[&str]) -> Gate {
        let mut all = vec!["switchboard-gateway"];
        all.extend_from_slice(args);
        Gate::from_config(&Config::try_parse_from(all).unwrap()).unwrap()
    }

    #[test]
    fn origins_are_checked_per_hub_and_everywhere() {
        let g = gate(&[
            "--allowed-origin",
            "https://app.example",
            "--allowed-origin",
            "chat=https://chat.example/",
        ]);
        assert!(g.origin_allowed("news", Some("https://APP.example")));
        assert!(g.origin_allowed("chat", Some("https://chat.example")));
        assert!(!g.origin_allowed("news", Some("https://chat.example")));
        assert!(!g.origin_allowed("chat", Some("https://evil.example")));
        assert!(g.origin_allowed("chat", None));
        assert!(gate(&[]).origin_allowed("x", Some("https://anything")));
    }
}
