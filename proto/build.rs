//! Compiles `proto/rpaflow/v1/*.proto` with protox (no `protoc` needed) into `OUT_DIR`, together
//! with the descriptor set that the servers expose through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rpaflow/v1/flow.proto",
        "proto/rpaflow/v1/task.proto",
        "proto/rpaflow/v1/inference.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("rpaflow_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
