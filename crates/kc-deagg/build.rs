//! Generates the prost types for `proto/kpl_aggregation.proto` with a vendored `protoc`, so that a machine with
//! nothing but cargo builds the crate.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    const PROTO: &str = "proto/kpl_aggregation.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes` fields as `bytes::Bytes`, like the decoder's own output.
    config.bytes(["."]);
    config.compile_protos(&[PROTO], &["proto"])?;
    Ok(())
}
