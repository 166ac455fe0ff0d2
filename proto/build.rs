//! Compiles the `.proto` files with `protox` (pure Rust), so no system `protoc` is needed.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "switchboard/v1/gateway.proto",
    "switchboard/v1/connect_hook.proto",
    "switchboard/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    // `compile_fds` does not write the descriptor set itself; reflection needs it on disk.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("switchboard_descriptor.bin"), fds.encode_to_vec())?;
    // Binary payloads as `bytes::Bytes`: a message fanned out to many streams or nodes is
    // shared, not copied, and one decoded from a request keeps the request's buffer.
    tonic_prost_build::configure()
        .bytes(".switchboard.v1.Message")
        .compile_fds(fds)?;
    Ok(())
}
