//! Compiles `proto/rpaflow/v1/*.proto` with protox (no `protoc` needed) into `OUT_DIR`, together
//! with the descriptor set that the servers expose through gRPC reflection, and the vendored
//! `proto/onnx/onnx.proto` (messages only, kept out of that descriptor set).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rpaflow/v1/flow.proto",
        "proto/rpaflow/v1/auth.proto",
        "proto/rpaflow/v1/task.proto",
        "proto/rpaflow/v1/inference.proto",
    ];
    let onnx = "proto/onnx/onnx.proto";
    for file in files.iter().chain([&onnx]) {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("rpaflow_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(descriptors)?;

    // The weights of a model are `bytes` fields: `Bytes` lets a model decoded from a `Bytes`
    // buffer share them instead of copying them.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .bytes(".onnx")
        .compile_fds(protox::compile([onnx], ["proto"])?)?;
    Ok(())
}
