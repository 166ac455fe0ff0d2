//! Shared pieces of the benchmark tools: the message stamp every publisher writes and every
//! load generator reads, the clock, percentiles, `/proc` readings, and the lean WebSocket
//! client frame parser.
//!
//! Binaries: `loadgen` (holds many client sockets and records what arrives), `publish` (sends
//! through Switchboard's gRPC API or to nchan / Pushpin over HTTP), `suite` (starts every
//! process of a scenario and prints tables), `report` (medians of several suite runs into
//! BENCHMARKS.md and PNG plots) and `subscribe` (client messages to `Subscribe` consumer
//! groups).

pub mod payload;
pub mod procfs;
pub mod results;
pub mod stats;
pub mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: the shared clock of every process on this machine.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A `ws://host:port/path` URL split for a raw connection; `{i}` in the path is replaced by
/// the socket's global index.
#[derive(Clone, Debug)]
pub struct WsUrl {
    pub host: String,
    pub path_template: String,
}

impl WsUrl {
    pub fn parse(url: &str) -> anyhow::Result<WsUrl> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        anyhow::ensure!(!host.contains("{i}"), "{{i}} may only appear in the path");
        Ok(WsUrl {
            host: host.to_owned(),
            path_template: path.to_owned(),
        })
    }

    pub fn path(&self, index: u64) -> String {
        self.path_template.replace("{i}", &index.to_string())
    }
}
