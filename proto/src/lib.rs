//! The rpaflow contracts: the `rpaflow.v1` gRPC services and the task and result messages that
//! travel on the step bus, generated from `proto/rpaflow/v1/*.proto` at build time; and the ONNX
//! model format, generated from the vendored `proto/onnx/onnx.proto`.
//!
//! # Layout
//! - [`v1`]: the generated messages, clients and servers.
//! - [`codec`]: their codec, prost's with undecodable messages answered `INVALID_ARGUMENT`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection (`rpaflow.v1` only).
//! - [`onnx`]: the ONNX messages (`ModelProto` and the rest), `bytes` fields as `bytes::Bytes`.

#![allow(clippy::all, missing_docs)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("rpaflow.v1");
}

/// The messages of `onnx.proto` (ONNX 1.23.2). Decoded from a `bytes::Bytes` buffer, their
/// `bytes` fields (the weights) share that buffer instead of copying it.
pub mod onnx {
    tonic::include_proto!("onnx");
}

/// Metadata an inference node puts on an error status to say that it never started the request
/// (it was still queued when the node began to drain), so that a client may send it to another
/// node without risk of generating it twice. An error without it, after the node accepted a
/// `GenerateStream` call, may come from a request that had produced tokens.
pub const NOT_STARTED_METADATA: &str = "rpaflow-not-started";

/// The encoded `FileDescriptorSet` of every rpaflow proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rpaflow_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::{Message, bytes::Bytes};

    use super::onnx::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
        TensorShapeProto, TypeProto, ValueInfoProto,
        attribute_proto::AttributeType,
        tensor_proto::DataType,
        tensor_shape_proto::{Dimension, dimension},
        type_proto,
    };

    /// A small model with a field of every kind the graph surgery touches: proto2 optional
    /// scalars and strings, unpacked repeated integers, `bytes`, nested messages and a oneof.
    fn model() -> ModelProto {
        let batch = TensorShapeProto {
            dim: vec![Dimension {
                value: Some(dimension::Value::DimParam("batch".into())),
                ..Default::default()
            }],
        };
        let value = |name: &str| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(DataType::Float as i32),
                    shape: Some(batch.clone()),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = NodeProto {
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            name: Some("gather".into()),
            op_type: Some("Gather".into()),
            attribute: vec![AttributeProto {
                name: Some("axis".into()),
                i: Some(0),
                r#type: Some(AttributeType::Int as i32),
                ..Default::default()
            }],
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("rpaflow".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: vec![node],
                initializer: vec![TensorProto {
                    name: Some("w".into()),
                    dims: vec![2, 3],
                    data_type: Some(DataType::Float as i32),
                    raw_data: Some(Bytes::from_static(&[1; 24])),
                    ..Default::default()
                }],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn onnx_optional_fields_are_options_and_absent_ones_stay_absent() {
        let decoded = ModelProto::decode(&model().encode_to_vec()[..]).unwrap_or_default();
        assert_eq!(decoded.ir_version, Some(8));
        assert_eq!(decoded.model_version, None);
        assert_eq!(decoded.domain, None);
        assert_eq!(decoded.opset_import[0].domain.as_deref(), Some(""));
        let graph = decoded.graph.unwrap_or_default();
        assert_eq!(graph.initializer[0].data_location, None);
        assert_eq!(
            graph.node[0].domain(),
            "",
            "the getter reads an absent field as its default"
        );
    }

    #[test]
    fn onnx_models_round_trip() {
        let Ok(decoded) = ModelProto::decode(Bytes::from(model().encode_to_vec())) else {
            panic!("the model should decode");
        };
        assert_eq!(decoded, model());
        let again = ModelProto::decode(Bytes::from(decoded.encode_to_vec()));
        assert_eq!(again.as_ref(), Ok(&decoded));
    }

    #[test]
    fn onnx_weights_decoded_from_bytes_share_the_buffer() {
        let buffer = Bytes::from(model().encode_to_vec());
        let decoded = ModelProto::decode(buffer.clone()).unwrap_or_default();
        let graph = decoded.graph.unwrap_or_default();
        let Some(raw) = &graph.initializer[0].raw_data else {
            panic!("the weights should be there");
        };
        assert!(buffer.as_ptr_range().contains(&raw.as_ptr()), "not a copy");
    }
}
