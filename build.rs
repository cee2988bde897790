//! Compiles `proto/loupe/v1/*.proto` with protox (pure Rust, no `protoc`) and
//! generates the tonic client and server code plus the descriptor set that
//! server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/loupe/v1/types.proto",
        "proto/loupe/v1/inspection.proto",
        "proto/loupe/v1/recipes.proto",
        "proto/loupe/v1/results.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("loupe_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Frames are megabytes: `Bytes` fields slice the received buffer
        // instead of copying it, and clone for free.
        .bytes(".loupe.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
