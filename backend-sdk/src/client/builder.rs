//! [`ClientBuilder`]: addresses, token, timeouts, retries and (with the `redis` feature)
//! discovery, checked once in [`ClientBuilder::build`].

use std::{sync::Arc, time::Duration};

use tonic::metadata::{Ascii, MetadataValue};

use super::{nodes::Nodes, Client, Inner};
use crate::error::{Error, Result};

/// Largest gRPC message the client sends or accepts by default: the gateway's default largest
/// WebSocket message (1 MiB) with plenty of room.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Retries of calls that failed with [`Error::Unavailable`].
///
/// Calls that are safe to repeat are retried: `session`, `check`, `sessions`, `join`,
/// `leave`, and opening `subscribe` and `attach`. `send`, `publish`, `close` and `read` are
/// retried only when the connection was refused, so the request certainly never left: one
/// that may have reached the gateway before the failure could be done twice (or, for `read`,
/// a message would be consumed and lost). A retry goes to another node when there is one.
///
/// ```
/// use std::time::Duration;
/// use switchboard_sdk::RetryPolicy;
///
/// let patient = RetryPolicy::default()
///     .max_attempts(5)
///     .backoff(Duration::from_millis(100), Duration::from_secs(2));
/// let never = RetryPolicy::none();
/// # let _ = (patient, never);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, waiting 50 ms then 100 ms (doubling, at most 1 s).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// One attempt: no retries.
    ///
    /// ```
    /// # use switchboard_sdk::RetryPolicy;
    /// let p = RetryPolicy::none();
    /// # let _ = p;
    /// ```
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Attempts in all, the first included (at least 1).
    ///
    /// ```
    /// # use switchboard_sdk::RetryPolicy;
    /// let p = RetryPolicy::default().max_attempts(5);
    /// # let _ = p;
    /// ```
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The wait before the first retry, doubled each time up to `max`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use switchboard_sdk::RetryPolicy;
    /// let p = RetryPolicy::default().backoff(Duration::from_millis(20), Duration::from_millis(500));
    /// # let _ = p;
    /// ```
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }
}

/// Settings the client's calls share.
pub(crate) struct Config {
    pub token: Option<MetadataValue<Ascii>>,
    pub call_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_message_bytes: usize,
}

/// Builds a [`Client`]; start with [`Client::builder`].
///
/// ```no_run
/// # async fn f() -> Result<(), switchboard_sdk::Error> {
/// use std::time::Duration;
/// use switchboard_sdk::{Client, RetryPolicy};
///
/// let client = Client::builder()
///     .gateway("http://10.0.0.1:7070")
///     .gateway("http://10.0.0.2:7070")
///     .token("s3cret")
///     .connect_timeout(Duration::from_secs(2))
///     .call_timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::default().max_attempts(4))
///     .build()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct ClientBuilder {
    gateways: Vec<String>,
    token: Option<String>,
    connect_timeout: Duration,
    call_timeout: Duration,
    retry: RetryPolicy,
    max_message_bytes: usize,
    #[cfg(feature = "redis")]
    redis: super::discovery::Settings,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            gateways: Vec::new(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            #[cfg(feature = "redis")]
            redis: super::discovery::Settings::default(),
        }
    }
}

impl ClientBuilder {
    /// Adds a gateway's backend address, such as `http://127.0.0.1:7070` (a bare
    /// `host:port` means `http://`). Call it once per node; any node can serve any call.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// let client = switchboard_sdk::Client::builder()
    ///     .gateway("http://127.0.0.1:7070")
    ///     .build()
    ///     .await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn gateway(mut self, url: impl Into<String>) -> Self {
        self.gateways.push(url.into());
        self
    }

    /// Adds several gateway addresses.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// let client = switchboard_sdk::Client::builder()
    ///     .gateways(["http://10.0.0.1:7070", "http://10.0.0.2:7070"])
    ///     .build()
    ///     .await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn gateways<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.gateways.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The backend token, sent as `authorization: Bearer <token>` on every call.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// let client = switchboard_sdk::Client::builder()
    ///     .gateway("http://127.0.0.1:7070")
    ///     .token(std::env::var("SWITCHBOARD_BACKEND_TOKEN").unwrap_or_default())
    ///     .build()
    ///     .await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// How long connecting to a gateway may take (default 5 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = switchboard_sdk::Client::builder().connect_timeout(Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call may take (default 10 s); a `read` gets its own timeout on top.
    /// Streams (`attach`, `subscribe`) are bounded only while they open.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = switchboard_sdk::Client::builder().call_timeout(Duration::from_secs(3));
    /// # let _ = b;
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How calls that are safe to repeat are retried (default: [`RetryPolicy::default`]).
    ///
    /// ```
    /// use switchboard_sdk::{Client, RetryPolicy};
    /// let b = Client::builder().retry(RetryPolicy::none());
    /// # let _ = b;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Largest gRPC message sent or accepted (default 16 MiB); keep it above the gateway's
    /// `--max-message-bytes`.
    ///
    /// ```
    /// let b = switchboard_sdk::Client::builder().max_message_bytes(64 << 20);
    /// # let _ = b;
    /// ```
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Finds the gateway nodes in Redis (`{prefix}:nodes` and each node's lease
    /// `{prefix}:node:{id}`), follows them as they come and go, and sends calls that name a
    /// session to the node holding it (`{prefix}:session:{id}`, field `node`). Addresses given
    /// with [`gateway`](Self::gateway) are used while Redis lists no live node.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// let client = switchboard_sdk::Client::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .redis_prefix("switchboard")
    ///     .build()
    ///     .await?;
    /// # let _ = client; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis.url = Some(url.into());
        self
    }

    /// The key prefix of the gateway's Redis records (default `switchboard`).
    ///
    /// ```
    /// let b = switchboard_sdk::Client::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .redis_prefix("staging");
    /// # let _ = b;
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.prefix = prefix.into();
        self
    }

    /// How often the node list is read from Redis again (default 3 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = switchboard_sdk::Client::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .discovery_interval(Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    #[cfg(feature = "redis")]
    pub fn discovery_interval(mut self, every: Duration) -> Self {
        self.redis.interval = every;
        self
    }

    /// Checks the settings and makes the client. Gateways are connected on first use, so a
    /// gateway that is not up yet fails calls with [`Error::Unavailable`], not the build.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), switchboard_sdk::Error> {
    /// let client = switchboard_sdk::Client::builder()
    ///     .gateway("http://127.0.0.1:7070")
    ///     .build()
    ///     .await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Client> {
        #[cfg(feature = "redis")]
        let discovers = self.redis.url.is_some();
        #[cfg(not(feature = "redis"))]
        let discovers = false;
        if self.gateways.is_empty() && !discovers {
            return Err(Error::Config(
                "no gateway address: call `gateway(url)` (or `redis_url` with the redis feature)"
                    .into(),
            ));
        }
        let token = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::Config("the token must be visible ASCII".into()))?,
            ),
            None => None,
        };
        if self.call_timeout.is_zero() {
            return Err(Error::Config("call_timeout must not be zero".into()));
        }
        let nodes = Arc::new(Nodes::new(&self.gateways, self.connect_timeout)?);
        let config = Config {
            token,
            call_timeout: self.call_timeout,
            retry: self.retry,
            max_message_bytes: self.max_message_bytes,
        };
        #[cfg(feature = "redis")]
        let (discovery, refresher) = match super::discovery::start(self.redis, &nodes).await? {
            Some((d, task)) => (Some(d), Some(task)),
            None => (None, None),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                nodes,
                #[cfg(feature = "redis")]
                discovery,
                #[cfg(feature = "redis")]
                refresher,
            }),
        })
    }
}
