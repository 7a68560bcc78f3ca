//! An OTLP/gRPC receiver (the collector's `TraceService/Export`) that keeps every span it gets,
//! and helpers to look at them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// How long a test waits for spans.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One span as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to, as `(trace id, span id)`.
    pub links: Vec<(String, String)>,
}

/// An OTLP/gRPC receiver on `127.0.0.1:<free port>` that keeps every span.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for resource in request.into_inner().resource_spans {
            let resource_attributes = resource
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource_attributes
                .get("service.name")
                .cloned()
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    kept.push(Received {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        kind: span.kind(),
                        name: span.name,
                        attributes: attributes(&span.attributes),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    pub async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the receiver");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let receiver = Self::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (receiver, format!("http://{addr}"))
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `done` holds for the spans received so far.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {TIMEOUT:?}; spans received:\n{}",
                describe(&spans)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn describe(spans: &[Received]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} {} {:?} trace={} span={} parent={} {:?}",
                s.service, s.name, s.kind, s.trace_id, s.span_id, s.parent, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn count(spans: &[Received], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}
