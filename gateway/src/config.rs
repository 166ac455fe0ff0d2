//! Configuration: command-line flags with `SWITCHBOARD_*` environment fallbacks and an
//! optional TOML file (`--config`, see [`layers`]), parsed once into one validated [`Config`].

use std::{fmt, net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

mod layers;

pub use layers::{load, EnvLookup, LoadError, Loaded, ReadFile, Startup};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// A backend token that may act only on some hubs.
#[derive(Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub struct ScopedToken {
    pub hubs: Vec<String>,
    pub token: String,
}

fn parse_scoped_token(s: &str) -> Result<ScopedToken, String> {
    let (hubs, token) = s.split_once('=').ok_or("expected HUB[,HUB...]=TOKEN")?;
    let hubs: Vec<String> = hubs.split(',').map(str::to_owned).collect();
    if hubs.iter().any(|h| !is_name(h)) || token.is_empty() {
        return Err("expected HUB[,HUB...]=TOKEN with valid hub names and a token".into());
    }
    Ok(ScopedToken {
        hubs,
        token: token.to_owned(),
    })
}

/// What to do with new clients while the shared registry is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutagePolicy {
    /// Admit them; they are registered when Redis returns.
    Accept,
    /// Refuse upgrades with 503.
    Refuse,
}

/// Whether a setting is on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// A per-hub override of `--compression`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSwitch {
    pub hub: String,
    pub switch: Switch,
}

fn parse_hub_switch(s: &str) -> Result<HubSwitch, String> {
    let (hub, switch) = s.split_once('=').ok_or("expected HUB=on or HUB=off")?;
    if !is_name(hub) {
        return Err(format!(
            "'{hub}' is not a hub name (1-64 of [A-Za-z0-9._-])"
        ));
    }
    let switch =
        Switch::from_str(switch, true).map_err(|_| format!("'{switch}': expected on or off"))?;
    Ok(HubSwitch {
        hub: hub.to_owned(),
        switch,
    })
}

/// Where the admin listener binds, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|_| format!("'{s}': expected HOST:PORT (an IP address) or off"))
}

/// Everything a gateway node needs to run. Defaults are safe for a single node on loopback.
// Every argument with an environment variable is a setting, and also a key of the
// configuration file (its long flag without the dashes); arguments without one are actions.
// A secret sets `hide_env_values = true`: that is also what redacts it in `--check-config`
// and in error messages. (Not in the doc comment: clap would print it as the description.)
#[derive(Clone, Parser)]
#[cfg_attr(test, derive(PartialEq))]
#[command(
    name = "switchboard-gateway",
    version,
    about = "Switchboard WebSocket gateway"
)]
pub struct Config {
    /// Client listener: WebSocket upgrades at /ws/{hub}, plus /healthz, /readyz, /metrics
    /// (see --ops-on-client-port).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Admin listener (plain HTTP): the /admin page, the /admin/api/ JSON API, and /metrics,
    /// /healthz, /readyz for scrapers and probes; `off` disables it. Off loopback it needs
    /// --admin-token.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "127.0.0.1:9090", value_parser = parse_admin_listen)]
    pub admin_listen: AdminListen,

    /// Bearer token every /admin/api/ call must carry (the page asks for it). Without one the
    /// API is open, which is allowed on loopback only.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Also serve /metrics, /healthz and /readyz on the client port; `false` answers 404 there
    /// (expose only the client port publicly, scrape and probe the admin port).
    #[arg(long, env = "SWITCHBOARD_OPS_ON_CLIENT_PORT", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub ops_on_client_port: bool,

    /// Backend listener: the gRPC API. Keep it off the internet.
    #[arg(
        long,
        env = "SWITCHBOARD_BACKEND_LISTEN",
        default_value = "127.0.0.1:7070"
    )]
    pub backend_listen: SocketAddr,

    /// Connections the kernel may hold for each listener before they are accepted (capped by
    /// net.core.somaxconn). A short queue resets clients during connect bursts.
    #[arg(long, env = "SWITCHBOARD_LISTEN_BACKLOG", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub listen_backlog: u32,

    /// Bearer token every backend call must carry.
    #[arg(long, env = "SWITCHBOARD_BACKEND_TOKEN", hide_env_values = true)]
    pub backend_token: Option<String>,

    /// Allow a non-loopback backend listener without a token.
    #[arg(long, env = "SWITCHBOARD_INSECURE_BACKEND")]
    pub insecure_backend: bool,

    /// Connect hook: a gRPC endpoint serving switchboard.v1.ConnectHook, asked before each upgrade.
    #[arg(long, env = "SWITCHBOARD_CONNECT_HOOK")]
    pub connect_hook: Option<String>,

    /// How long the connect hook may take before the upgrade is refused with 503.
    #[arg(long, env = "SWITCHBOARD_CONNECT_HOOK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_hook_timeout: Duration,

    /// Largest client or backend message, in bytes (client messages over it are closed with 1009).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value = "1048576")]
    pub max_message_bytes: NonZeroUsize,

    /// permessage-deflate (RFC 7692) for clients that offer it. Both directions run without
    /// context takeover, so a broadcast is compressed once and idle sessions hold no
    /// compression state.
    #[arg(
        long,
        env = "SWITCHBOARD_COMPRESSION",
        value_enum,
        default_value = "on"
    )]
    pub compression: Switch,

    /// permessage-deflate for one hub, overriding --compression, as `HUB=on` or `HUB=off`;
    /// repeatable.
    #[arg(
        long = "hub-compression",
        env = "SWITCHBOARD_HUB_COMPRESSION",
        value_name = "HUB=on|off",
        value_delimiter = ' ',
        value_parser = parse_hub_switch
    )]
    pub hub_compression: Vec<HubSwitch>,

    /// Messages shorter than this go uncompressed even to sessions that negotiated compression.
    #[arg(long, env = "SWITCHBOARD_COMPRESSION_MIN_BYTES", default_value = "256")]
    pub compression_min_bytes: usize,

    /// zlib compression level for outgoing messages, 1 (fastest) to 9 (smallest).
    #[arg(long, env = "SWITCHBOARD_COMPRESSION_LEVEL", default_value = "6",
          value_parser = clap::value_parser!(u8).range(1..=9))]
    pub compression_level: u8,

    /// Interval between server pings on a quiet connection.
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A client silent for this long (not even a pong) is closed.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Outbound queue bound per session, in frames.
    #[arg(
        long,
        env = "SWITCHBOARD_OUTBOUND_QUEUE_MESSAGES",
        default_value = "1024"
    )]
    pub outbound_queue_messages: NonZeroUsize,

    /// Outbound queue bound per session, in bytes [default: 4194304, or 4 messages of
    /// --max-message-bytes when that is more].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES")]
    pub outbound_queue_bytes: Option<NonZeroUsize>,

    /// How long a session's outbound queue may stay full, without its client taking half of
    /// it, before the session is closed with 1013.
    #[arg(long, env = "SWITCHBOARD_SLOW_CONSUMER_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub slow_consumer_grace: Duration,

    /// A client socket that takes no byte for this long while the gateway has bytes for it is
    /// reset and its session ended (the clock restarts with every byte the socket takes).
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Inbox bound per session, in messages: past it the gateway stops reading the socket.
    #[arg(long, env = "SWITCHBOARD_INBOX_MESSAGES", default_value = "256")]
    pub inbox_messages: NonZeroUsize,

    /// Inbox bound per session, in bytes [default: 4194304, or 4 messages of
    /// --max-message-bytes when that is more].
    #[arg(long, env = "SWITCHBOARD_INBOX_BYTES")]
    pub inbox_bytes: Option<NonZeroUsize>,

    /// How long unread messages of a closed session stay readable.
    #[arg(long, env = "SWITCHBOARD_CLOSED_INBOX_RETENTION", default_value = "60s", value_parser = parse_duration)]
    pub closed_inbox_retention: Duration,

    /// Longest timeout a `Read` call may ask for.
    #[arg(long, env = "SWITCHBOARD_MAX_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub max_read_timeout: Duration,

    /// How long a `Subscribe` stream may stay full before it is cut off (RESOURCE_EXHAUSTED).
    #[arg(long, env = "SWITCHBOARD_SUBSCRIBER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub subscriber_timeout: Duration,

    /// How long a closing session waits for the client's close frame.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// A client must finish sending its HTTP request headers within this time.
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Most client connections in their handshake at once (TLS, HTTP request, connect hook,
    /// registration, 101); more wait in the kernel's listen queue. Bounds the memory of a
    /// reconnect storm. A connection counts for at most `--handshake-timeout`.
    #[arg(long, env = "SWITCHBOARD_MAX_HANDSHAKES", default_value = "512")]
    pub max_handshakes: NonZeroUsize,

    /// Send `{"type":"welcome","session":"..."}` as the first frame of every session.
    #[arg(long, env = "SWITCHBOARD_WELCOME_FRAME")]
    pub welcome_frame: bool,

    /// How long a reliable session (`switchboard.reliable.v1`) whose connection dropped waits
    /// for its client to resume before it ends.
    #[arg(long, env = "SWITCHBOARD_RESUME_WINDOW", default_value = "120s", value_parser = parse_duration)]
    pub resume_window: Duration,

    /// Most messages a reliable session keeps for its client before an ack; past it the session
    /// ends with 1008 "resume buffer full".
    #[arg(long, env = "SWITCHBOARD_RESUME_BUFFER", default_value = "1024")]
    pub resume_buffer: NonZeroUsize,

    /// On SIGTERM/SIGINT, how long to wait for sessions and calls to finish before exiting.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// This node's ID in the registry; random when not given.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,

    /// Shared registry: `redis://host:port[/db]`, or `redis+cluster://h1:p1,h2:p2` for Redis
    /// Cluster. Without it the node keeps its registry in memory (single node).
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key this cluster uses.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "switchboard")]
    pub redis_prefix: String,

    /// The backend URL other nodes use to reach this one; default `http://` + the bound
    /// backend address.
    #[arg(long, env = "SWITCHBOARD_ADVERTISE_BACKEND")]
    pub advertise_backend: Option<String>,

    /// Lifetime of this node's lease in Redis: a node silent this long is dead.
    #[arg(long, env = "SWITCHBOARD_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// How often the lease is renewed (and dead nodes looked for).
    #[arg(long, env = "SWITCHBOARD_LEASE_REFRESH", default_value = "3s", value_parser = parse_duration)]
    pub lease_refresh: Duration,

    /// How often this node compares its entries in Redis with the sessions it holds and
    /// repairs both ways (a failed write is also retried as soon as Redis answers again).
    #[arg(long, env = "SWITCHBOARD_RECONCILE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// While Redis is unreachable: keep admitting clients locally (`accept`) or refuse them
    /// with 503 (`refuse`).
    #[arg(
        long,
        env = "SWITCHBOARD_REGISTRY_OUTAGE",
        value_enum,
        default_value = "accept"
    )]
    pub registry_outage: OutagePolicy,

    /// Log format.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "switchboard_gateway=debug".
    #[arg(long, env = "SWITCHBOARD_LOG", default_value = "info")]
    pub log: String,

    /// PEM certificate chain for TLS on the client listener (wss://); with --tls-key.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate chain for TLS on the backend listener; with --backend-tls-key.
    #[arg(
        long,
        env = "SWITCHBOARD_BACKEND_TLS_CERT",
        requires = "backend_tls_key"
    )]
    pub backend_tls_cert: Option<PathBuf>,

    /// PEM private key for --backend-tls-cert.
    #[arg(
        long,
        env = "SWITCHBOARD_BACKEND_TLS_KEY",
        requires = "backend_tls_cert"
    )]
    pub backend_tls_key: Option<PathBuf>,

    /// PEM CA bundle: backends must present a client certificate it signed (mutual TLS).
    #[arg(
        long,
        env = "SWITCHBOARD_BACKEND_CLIENT_CA",
        requires = "backend_tls_cert"
    )]
    pub backend_client_ca: Option<PathBuf>,

    /// PEM CA bundle this node trusts when it calls other nodes over backend TLS; defaults to
    /// --backend-client-ca. With --backend-client-ca set, the node presents its own backend
    /// certificate to its peers.
    #[arg(long, env = "SWITCHBOARD_PEER_CA")]
    pub peer_ca: Option<PathBuf>,

    /// A backend token limited to some hubs, as `HUB[,HUB...]=TOKEN`; repeatable.
    #[arg(long = "scoped-backend-token", env = "SWITCHBOARD_SCOPED_BACKEND_TOKENS", value_delimiter = ';', hide_env_values = true, value_parser = parse_scoped_token)]
    pub scoped_backend_tokens: Vec<ScopedToken>,

    /// Origins browsers may connect from, as `ORIGIN` (every hub) or `HUB=ORIGIN`; repeatable.
    /// Without any, every origin is allowed. Requests with no Origin header (not a browser)
    /// are allowed.
    #[arg(
        long = "allowed-origin",
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ' '
    )]
    pub allowed_origins: Vec<String>,

    /// HS256 secret for client JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) for client JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file (RS256/ES256 keys, chosen by `kid`) for client JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// Required `aud` of client JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of client JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Claim holding the session's groups (an array of strings).
    #[arg(long, env = "SWITCHBOARD_JWT_GROUPS_CLAIM", default_value = "groups")]
    pub jwt_groups_claim: String,

    /// Most open client sessions on this node; 0 for no limit. Over it: 503 before the upgrade.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value = "0")]
    pub max_connections: usize,

    /// Most open sessions per client IP; 0 for no limit. Over it: 429 before the upgrade.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP", default_value = "0")]
    pub max_connections_per_ip: usize,

    /// Messages a client may send per second (bursts up to one second's worth); 0 for no
    /// limit. Over it the session is closed with 1008.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_MESSAGES_PER_SECOND",
        default_value = "1000"
    )]
    pub max_messages_per_second: u32,

    /// Message bytes a client may send per second (bursts up to one second's worth, and at
    /// least one message of --max-message-bytes); 0 for no limit. Over it: closed with 1008.
    #[arg(long, env = "SWITCHBOARD_MAX_BYTES_PER_SECOND", default_value = "0")]
    pub max_bytes_per_second: u64,

    /// Most groups one session may be in.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_GROUPS_PER_SESSION",
        default_value = "100"
    )]
    pub max_groups_per_session: usize,

    /// Most concurrent gRPC streams (calls) per backend connection.
    #[arg(long, env = "SWITCHBOARD_BACKEND_MAX_STREAMS", default_value = "1024")]
    pub backend_max_streams: u32,

    /// HTTP/2 flow-control window of one gRPC call, in bytes (also on calls between nodes):
    /// what a backend may send on an Attach stream beyond what its session has taken.
    #[arg(long, env = "SWITCHBOARD_BACKEND_STREAM_WINDOW", default_value = "262144", value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub backend_stream_window: u32,

    /// HTTP/2 flow-control window of one backend connection, in bytes. The HTTP/2 stack closes
    /// a connection whose unread small DATA frames cost more than half of it, so it must be
    /// well above --backend-stream-window (16 times at least).
    #[arg(long, env = "SWITCHBOARD_BACKEND_CONNECTION_WINDOW", default_value = "33554432", value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub backend_connection_window: u32,

    /// TOML file of settings: each key is a long flag without its dashes (`lease-ttl = "10s"`,
    /// arrays for repeatable flags). Flags and SWITCHBOARD_* variables override it.
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print the effective values (secrets redacted) with where
    /// each came from, and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Print a configuration file with every option, its help and its default, and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// A configuration that cannot work; the binary exits with code 64 before binding a port.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the backend listener {0} is not on loopback and no --backend-token is set; \
         set a token or pass --insecure-backend"
    )]
    InsecureBackend(SocketAddr),
    #[error("--backend-token must not be empty")]
    EmptyToken,
    #[error(
        "the admin listener {0} is not on loopback and no --admin-token is set; set \
         --admin-token, or keep --admin-listen on 127.0.0.1 (or off)"
    )]
    InsecureAdmin(SocketAddr),
    #[error("--admin-token must not be empty")]
    EmptyAdminToken,
    #[error("{name} must be greater than zero")]
    ZeroDuration { name: &'static str },
    #[error("--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?})")]
    IdleBeforePing { idle: Duration, ping: Duration },
    #[error("--outbound-queue-bytes must be at least --max-message-bytes plus a frame header")]
    QueueSmallerThanMessage,
    #[error("--inbox-bytes must be at least --max-message-bytes")]
    InboxSmallerThanMessage,
    #[error("--node-id must be 1-64 characters of [A-Za-z0-9._-]")]
    BadNodeId,
    #[error(
        "--lease-refresh must be at most half of --lease-ttl, or a slow refresh loses the lease"
    )]
    LeaseTooShort,
    #[error("--scoped-backend-token with --redis-url needs a full --backend-token for calls between nodes")]
    ClusterNeedsFullToken,
    #[error(
        "--allowed-origin {0:?}: expected ORIGIN or HUB=ORIGIN with an http:// or https:// origin"
    )]
    BadOrigin(String),
    #[error("give one of --jwt-secret, --jwt-public-key, --jwt-jwks")]
    JwtKeys,
    #[error(
        "--backend-connection-window must be at least 16 times --backend-stream-window: \
         unread small frames of one stream would otherwise close the whole connection"
    )]
    WindowsTooClose,
    #[error("--redis-url must start with redis://, rediss://, redis+cluster:// or unix://")]
    BadRedisUrl,
    #[error("--redis-prefix must be 1-64 characters of [A-Za-z0-9._-]")]
    BadPrefix,
    #[error("--connect-hook must be an http:// or https:// URL: {0}")]
    BadHookUrl(String),
}

/// What the byte bounds of a session's queues are when not given: room for four messages of the
/// largest size, and never less than 4 MiB. Raising `--max-message-bytes` alone then works.
const DEFAULT_QUEUE_BYTES: usize = 4 << 20;

impl Config {
    /// The outbound queue's byte bound: as given, or derived from `--max-message-bytes`.
    pub fn outbound_queue_bytes(&self) -> usize {
        // Four messages always hold one plus its frame header (the floor covers tiny limits).
        self.outbound_queue_bytes.map_or_else(
            || DEFAULT_QUEUE_BYTES.max(self.max_message_bytes.get().saturating_mul(4)),
            NonZeroUsize::get,
        )
    }

    /// The inbox's byte bound: as given, or derived from `--max-message-bytes`.
    pub fn inbox_bytes(&self) -> usize {
        self.inbox_bytes.map_or_else(
            || DEFAULT_QUEUE_BYTES.max(self.max_message_bytes.get().saturating_mul(4)),
            NonZeroUsize::get,
        )
    }

    /// Whether sessions of `hub` may negotiate permessage-deflate: its `--hub-compression`
    /// (the last one given), else `--compression`.
    pub fn compression_for(&self, hub: &str) -> Switch {
        self.hub_compression
            .iter()
            .rev()
            .find(|h| h.hub == hub)
            .map_or(self.compression, |h| h.switch)
    }

    /// Checks the rules flags alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let any_token = self.backend_token.is_some() || !self.scoped_backend_tokens.is_empty();
        match &self.backend_token {
            Some(t) if t.is_empty() => return Err(ConfigError::EmptyToken),
            None if !any_token
                && !self.backend_listen.ip().is_loopback()
                && !self.insecure_backend =>
            {
                return Err(ConfigError::InsecureBackend(self.backend_listen))
            }
            _ => {}
        }
        match (&self.admin_token, self.admin_listen.0) {
            (Some(t), _) if t.is_empty() => return Err(ConfigError::EmptyAdminToken),
            // The admin API can close sessions and drain the node: off loopback, never open.
            (None, Some(addr)) if !addr.ip().is_loopback() => {
                return Err(ConfigError::InsecureAdmin(addr))
            }
            _ => {}
        }
        if self.redis_url.is_some() && self.backend_token.is_none() && any_token {
            // Nodes call each other with the full token.
            return Err(ConfigError::ClusterNeedsFullToken);
        }
        for o in &self.allowed_origins {
            let origin =
                o.split_once('=').map_or(
                    o.as_str(),
                    |(hub, origin)| {
                        if is_name(hub) {
                            origin
                        } else {
                            ""
                        }
                    },
                );
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::BadOrigin(o.clone()));
            }
        }
        let jwt_keys = [
            self.jwt_secret.is_some(),
            self.jwt_public_key.is_some(),
            self.jwt_jwks.is_some(),
        ];
        if jwt_keys.iter().filter(|k| **k).count() > 1 {
            return Err(ConfigError::JwtKeys);
        }
        for (name, d) in [
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--connect-hook-timeout", self.connect_hook_timeout),
            ("--max-read-timeout", self.max_read_timeout),
            ("--close-timeout", self.close_timeout),
            ("--subscriber-timeout", self.subscriber_timeout),
            ("--lease-ttl", self.lease_ttl),
            ("--lease-refresh", self.lease_refresh),
            ("--reconcile-interval", self.reconcile_interval),
            ("--handshake-timeout", self.handshake_timeout),
            ("--write-timeout", self.write_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration { name });
            }
        }
        if u64::from(self.backend_connection_window) < 16 * u64::from(self.backend_stream_window) {
            return Err(ConfigError::WindowsTooClose);
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::IdleBeforePing {
                idle: self.idle_timeout,
                ping: self.ping_interval,
            });
        }
        if self
            .lease_refresh
            .checked_mul(2)
            .is_none_or(|d| d > self.lease_ttl)
        {
            return Err(ConfigError::LeaseTooShort);
        }
        if let Some(url) = &self.redis_url {
            let ok = [
                "redis://",
                "rediss://",
                "redis+cluster://",
                "unix://",
                "redis+unix://",
            ]
            .iter()
            .any(|s| url.starts_with(s));
            if !ok {
                return Err(ConfigError::BadRedisUrl);
            }
        }
        if !is_name(&self.redis_prefix) {
            return Err(ConfigError::BadPrefix);
        }
        // Only a bound that was given can be too small: the derived ones grow with the limit.
        if self
            .outbound_queue_bytes
            .is_some_and(|q| q.get() < self.max_message_bytes.get().saturating_add(14))
        {
            return Err(ConfigError::QueueSmallerThanMessage);
        }
        if self.inbox_bytes.is_some_and(|i| i < self.max_message_bytes) {
            return Err(ConfigError::InboxSmallerThanMessage);
        }
        if let Some(id) = &self.node_id {
            if !is_name(id) {
                return Err(ConfigError::BadNodeId);
            }
        }
        if let Some(url) = &self.connect_hook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::BadHookUrl(url.clone()));
            }
        }
        Ok(())
    }
}

/// Names used in URLs and registry keys (hubs, node IDs): 1–64 of `[A-Za-z0-9._-]`.
pub(crate) fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A URL with any password replaced, for printing.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A scoped token with its token redacted and its hubs kept, for printing.
fn redact_scoped(t: &ScopedToken) -> String {
    format!("{}={}", t.hubs.join(","), layers::REDACTED)
}

/// The longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Durations as `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 250ms, 10s, 5m)"))?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    // Past a year a duration is a typo, and adding one that long to a clock could overflow.
    d.filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("'{s}' is longer than a year"))
}

impl fmt::Debug for Config {
    /// The effective configuration with secrets redacted, as `--check-config` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("backend_listen", &self.backend_listen)
            .field("admin_listen", &self.admin_listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ops_on_client_port", &self.ops_on_client_port)
            .field("listen_backlog", &self.listen_backlog)
            .field(
                "backend_token",
                &self.backend_token.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure_backend", &self.insecure_backend)
            .field("connect_hook", &self.connect_hook)
            .field("connect_hook_timeout", &self.connect_hook_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("outbound_queue_messages", &self.outbound_queue_messages)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("slow_consumer_grace", &self.slow_consumer_grace)
            .field("write_timeout", &self.write_timeout)
            .field("inbox_messages", &self.inbox_messages)
            .field("inbox_bytes", &self.inbox_bytes)
            .field("closed_inbox_retention", &self.closed_inbox_retention)
            .field("max_read_timeout", &self.max_read_timeout)
            .field("subscriber_timeout", &self.subscriber_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("welcome_frame", &self.welcome_frame)
            .field("resume_window", &self.resume_window)
            .field("resume_buffer", &self.resume_buffer)
            .field("compression", &self.compression)
            .field("hub_compression", &self.hub_compression)
            .field("compression_min_bytes", &self.compression_min_bytes)
            .field("compression_level", &self.compression_level)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("node_id", &self.node_id)
            .field("redis_url", &self.redis_url.as_ref().map(|u| redact_url(u)))
            .field("redis_prefix", &self.redis_prefix)
            .field("advertise_backend", &self.advertise_backend)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_refresh", &self.lease_refresh)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("registry_outage", &self.registry_outage)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("backend_tls_cert", &self.backend_tls_cert)
            .field("backend_tls_key", &self.backend_tls_key)
            .field("backend_client_ca", &self.backend_client_ca)
            .field("peer_ca", &self.peer_ca)
            .field(
                "scoped_backend_tokens",
                &self
                    .scoped_backend_tokens
                    .iter()
                    .map(redact_scoped)
                    .collect::<Vec<_>>(),
            )
            .field("allowed_origins", &self.allowed_origins)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_jwks", &self.jwt_jwks)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_groups_claim", &self.jwt_groups_claim)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_messages_per_second", &self.max_messages_per_second)
            .field("max_bytes_per_second", &self.max_bytes_per_second)
            .field("max_groups_per_session", &self.max_groups_per_session)
            .field("backend_max_streams", &self.backend_max_streams)
            .field("backend_stream_window", &self.backend_stream_window)
            .field("backend_connection_window", &self.backend_connection_window)
            .field("log_format", &self.log_format)
            .field("log", &self.log)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["switchboard-gateway"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn a_hub_may_turn_compression_on_or_off_for_itself() {
        let c = parse(&["--compression", "off", "--hub-compression", "news=on"]);
        assert_eq!(c.compression_for("news"), Switch::On);
        assert_eq!(c.compression_for("chat"), Switch::Off);
        let c = parse(&[
            "--hub-compression",
            "chat=off",
            "--hub-compression",
            "chat=on",
        ]);
        assert_eq!(
            c.compression_for("chat"),
            Switch::On,
            "the last one given wins"
        );
        assert_eq!(c.compression_for("news"), Switch::On);
        for bad in ["chat", "chat=maybe", "a/b=on", "=off"] {
            let argv = ["switchboard-gateway", "--hub-compression", bad];
            assert!(Config::try_parse_from(argv).is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_bounds_follow_the_message_limit_unless_given() {
        let c = parse(&[]);
        assert_eq!(
            (c.outbound_queue_bytes(), c.inbox_bytes()),
            (4 << 20, 4 << 20)
        );
        let c = parse(&["--max-message-bytes", "16777216"]);
        c.validate().unwrap();
        assert_eq!(c.outbound_queue_bytes(), 4 * 16_777_216);
        assert_eq!(c.inbox_bytes(), 4 * 16_777_216);
        // Given, a bound is taken as it is, and refused when one message cannot fit.
        let c = parse(&[
            "--max-message-bytes",
            "16777216",
            "--inbox-bytes",
            "20000000",
        ]);
        assert_eq!(c.inbox_bytes(), 20_000_000);
        c.validate().unwrap();
        let c = parse(&["--max-message-bytes", "16777216", "--inbox-bytes", "1000"]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InboxSmallerThanMessage)
        ));
        let c = parse(&[
            "--max-message-bytes",
            "16777216",
            "--outbound-queue-bytes",
            "1000",
        ]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::QueueSmallerThanMessage)
        ));
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        c.validate().unwrap();
        assert_eq!(c.max_message_bytes.get(), 1 << 20);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.listen_backlog, 4096);
    }

    #[test]
    fn a_listen_backlog_outside_the_kernels_range_is_refused() {
        let parse = |v: &str| {
            Config::try_parse_from(["switchboard-gateway", "--listen-backlog", v])
                .map(|c| c.listen_backlog)
        };
        assert_eq!(parse("128").unwrap(), 128);
        assert!(parse("0").is_err());
        assert!(parse("70000").is_err());
    }

    #[test]
    fn a_connection_window_close_to_the_stream_window_is_refused() {
        let windows = |stream: &str, connection: &str| {
            parse(&[
                "--backend-stream-window",
                stream,
                "--backend-connection-window",
                connection,
            ])
            .validate()
        };
        windows("65535", "1048560").unwrap();
        assert!(matches!(
            windows("1048576", "1048576"),
            Err(ConfigError::WindowsTooClose)
        ));
        let too_small = ["switchboard-gateway", "--backend-stream-window", "1024"];
        assert!(Config::try_parse_from(too_small).is_err());
    }

    #[test]
    fn the_write_timeout_defaults_to_30s_and_refuses_zero_and_absurd_values() {
        assert_eq!(parse(&[]).write_timeout, Duration::from_secs(30));
        assert_eq!(
            parse(&["--write-timeout", "2s"]).write_timeout,
            Duration::from_secs(2)
        );
        assert!(matches!(
            parse(&["--write-timeout", "0s"]).validate(),
            Err(ConfigError::ZeroDuration {
                name: "--write-timeout"
            })
        ));
        let absurd = ["switchboard-gateway", "--write-timeout", "100000h"];
        assert!(Config::try_parse_from(absurd).is_err());
    }

    #[test]
    fn public_backend_without_token_is_refused() {
        let c = parse(&["--backend-listen", "0.0.0.0:7070"]);
        assert!(matches!(c.validate(), Err(ConfigError::InsecureBackend(_))));
        parse(&["--backend-listen", "0.0.0.0:7070", "--insecure-backend"])
            .validate()
            .unwrap();
        parse(&[
            "--backend-listen",
            "0.0.0.0:7070",
            "--backend-token",
            "s3cret",
        ])
        .validate()
        .unwrap();
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let c = parse(&["--admin-listen", "0.0.0.0:9090"]);
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::InsecureAdmin(_)));
        assert!(e.to_string().contains("--admin-token"), "{e}");
        parse(&["--admin-listen", "0.0.0.0:9090", "--admin-token", "t"])
            .validate()
            .unwrap();
        let empty = parse(&["--admin-token", ""]).validate();
        assert!(matches!(empty, Err(ConfigError::EmptyAdminToken)));
        assert_eq!(
            parse(&["--admin-listen", "off"]).admin_listen,
            AdminListen(None)
        );
        assert!(Config::try_parse_from(["switchboard-gateway", "--admin-listen", "x"]).is_err());
        let shown = format!("{:?}", parse(&["--admin-token", "hunter3"]));
        assert!(!shown.contains("hunter3"));
    }

    #[test]
    fn ops_routes_on_the_client_port_are_on_unless_turned_off() {
        assert!(parse(&[]).ops_on_client_port);
        assert!(!parse(&["--ops-on-client-port", "false"]).ops_on_client_port);
        assert!(!parse(&["--ops-on-client-port", "no"]).ops_on_client_port);
        assert!(
            Config::try_parse_from(["switchboard-gateway", "--ops-on-client-port", "maybe"])
                .is_err()
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("5124095576030432h").is_err());
        assert!(parse_duration("9223372036854775808").is_err());
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let c = parse(&["--backend-token", "hunter2"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn names_follow_the_hub_rule() {
        assert!(is_name("chat.v1-eu_2"));
        assert!(!is_name(""));
        assert!(!is_name("a/b"));
        assert!(!is_name(&"x".repeat(65)));
    }
}
