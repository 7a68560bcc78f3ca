//! The API's shape as the compiled service definitions give it, for tests that must cover every
//! RPC (a new RPC without an expectation fails them).

use prost::Message as _;

/// Every RPC of the services `rpaflow orchestrator` serves: (path, server-streaming).
pub fn served_methods() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(rpaflow_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptors");
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            if !matches!(
                full.as_str(),
                "rpaflow.v1.FlowService" | "rpaflow.v1.AuthService"
            ) {
                continue;
            }
            for method in &service.method {
                out.push((
                    format!("/{full}/{}", method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    out
}
