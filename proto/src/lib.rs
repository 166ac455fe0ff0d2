//! Generated gRPC types and services of Switchboard's backend API (`switchboard.v1`).
//!
//! This crate holds no logic: it compiles `switchboard/v1/*.proto` at build time.

#![allow(clippy::all, missing_docs)]

/// `switchboard.v1`: the `Gateway` service backends call and the `ConnectHook` service a
/// backend implements.
pub mod v1 {
    tonic::include_proto!("switchboard.v1");
}

/// Encoded `FileDescriptorSet` of every Switchboard proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));
