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

/// A `ws://host:port/path` (or `wss://`) URL split for a raw connection; `{i}` in the path is
/// replaced by the socket's global index.
#[derive(Clone, Debug)]
pub struct WsUrl {
    pub host: String,
    pub path_template: String,
    /// `wss://`: TLS over the TCP connection.
    pub tls: bool,
}

impl WsUrl {
    pub fn parse(url: &str) -> anyhow::Result<WsUrl> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => anyhow::bail!("only ws:// and wss:// URLs are supported: {url}"),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        anyhow::ensure!(!host.contains("{i}"), "{{i}} may only appear in the path");
        Ok(WsUrl {
            host: host.to_owned(),
            path_template: path.to_owned(),
            tls,
        })
    }

    pub fn path(&self, index: u64) -> String {
        self.path_template.replace("{i}", &index.to_string())
    }
}

/// A gateway started on loopback ports the system chooses, with keepalive pings off (a ping
/// round landing in a measured window would be charged to the messages measured there) and no
/// admin listener: the child, and its client and backend addresses from its listening line.
/// It logs at `warn` unless `SWITCHBOARD_BENCH_LOG` names another level (`info`, the
/// gateway's default, to measure what a default deployment pays).
pub async fn spawn_gateway(
    bin: &std::path::Path,
    args: &[String],
    stderr: std::process::Stdio,
) -> anyhow::Result<(tokio::process::Child, String, String)> {
    use anyhow::Context;
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--backend-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off"])
        .args(["--ping-interval", "1h", "--idle-timeout", "2h"])
        .args(args)
        .env(
            "SWITCHBOARD_LOG",
            std::env::var("SWITCHBOARD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .context("spawn gateway")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .context("gateway did not print its listening line")??
        .context("gateway exited before listening")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |name: &str| -> anyhow::Result<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {name} in {line:?}"))
    };
    Ok((child, field("client=")?, field("backend=")?))
}
