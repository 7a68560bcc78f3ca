//! The rpaflow contracts: the `rpaflow.v1` gRPC services and the task and result messages that
//! travel on the step bus, generated from `proto/rpaflow/v1/*.proto` at build time.
//!
//! # Layout
//! - [`v1`]: the generated messages, clients and servers.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("rpaflow.v1");
}

/// The encoded `FileDescriptorSet` of every rpaflow proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rpaflow_descriptor.bin"));
