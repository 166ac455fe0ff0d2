//! Test harness: real gateway processes on port 0, real WebSocket clients, a gRPC client, and
//! a raw socket client for the protocol violations a well-behaved library will not send.
//!
//! Every wait here has a generous upper bound so a broken gateway fails a test instead of
//! hanging it; none of the bounds is an assertion on speed.

pub mod envelope;
pub mod gateway;
pub mod h2ws;
pub mod holder;
pub mod pki;
pub mod raw;
pub mod redis;
pub mod script;
pub mod ws;

use std::time::Duration;

/// Upper bound for any single expected event (a frame, a process line, a call).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Awaits `f`, panicking with `what` if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
