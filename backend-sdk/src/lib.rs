//! Rust client library for Switchboard backends.
//!
//! Until the SDK lands, backends use the generated client re-exported here.

/// The generated `switchboard.v1` gRPC types and clients.
pub use switchboard_proto::v1 as proto;
