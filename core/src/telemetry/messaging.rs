//! Kafka's spans, named as OpenTelemetry's messaging conventions name them:
//!
//! - `send {topic}` (PRODUCER) around each message produced, until the broker holds it, with the
//!   partition and offset it got;
//! - `process {topic}` (CONSUMER) from a message's receipt until the application acknowledges
//!   it (a task: its result published; a result or a trigger message: its effect durable), with
//!   the consumer group, partition and offset it came from.
//!
//! Each continues the trace of the `traceparent` it is given (the producer's caller; the
//! message's header on the consumer side) and names itself in the `traceparent` the message, or
//! the application, carries on. No parent, no span: a message from outside rpaflow without trace
//! context starts no trace of its own. Nothing is recorded when traces are not exported.

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry::{Context, KeyValue};

use super::TRACER_NAME;
use super::run_trace::{enabled, format_traceparent, remote_context};

const SYSTEM: &str = "kafka";

fn common(operation: &'static str, topic: &str, key: Option<&[u8]>) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("messaging.system", SYSTEM),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
    ];
    if let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) {
        attributes.push(KeyValue::new("messaging.kafka.message.key", key.to_owned()));
    }
    attributes
}

/// Starts a span as a child of `parent`; returns it with the `traceparent` naming it.
fn start(
    name: String,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    parent: &str,
) -> Option<(BoxedSpan, String)> {
    if !enabled() {
        return None;
    }
    let parent: Context = remote_context(Some(parent))?;
    let tracer = opentelemetry::global::tracer(TRACER_NAME);
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    let own = span.span_context().clone();
    own.is_valid().then(|| (span, format_traceparent(&own)))
}

/// A message on its way to the broker.
pub struct Sending {
    span: BoxedSpan,
    traceparent: String,
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending")
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

impl Sending {
    /// The span of producing one message to `topic`, as a child of `parent`; none when traces
    /// are not exported or `parent` is not a `traceparent`.
    pub fn start(topic: &str, key: &str, body_size: usize, parent: &str) -> Option<Self> {
        let mut attributes = common("send", topic, Some(key.as_bytes()));
        attributes.push(KeyValue::new(
            "messaging.message.body.size",
            i64::try_from(body_size).unwrap_or(i64::MAX),
        ));
        let (span, traceparent) = start(
            format!("send {topic}"),
            SpanKind::Producer,
            attributes,
            parent,
        )?;
        Some(Self { span, traceparent })
    }

    /// The `traceparent` header the message carries: this span.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The broker holds the message.
    pub fn delivered(mut self, partition: i32, offset: i64) {
        self.span.set_attribute(KeyValue::new(
            "messaging.destination.partition.id",
            partition.to_string(),
        ));
        self.span
            .set_attribute(KeyValue::new("messaging.kafka.offset", offset));
        self.span.end();
    }

    /// The broker did not take the message.
    pub fn failed(mut self, error: &str) {
        self.span
            .set_attribute(KeyValue::new("error.type", "send_failed"));
        self.span.set_status(Status::error(error.to_owned()));
        self.span.end();
    }
}

/// Where a consumed message came from.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub body_size: usize,
}

/// A message being processed: ends (on drop too) when the application is done with it.
pub struct Processing {
    span: BoxedSpan,
    traceparent: String,
}

impl std::fmt::Debug for Processing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processing")
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

impl Processing {
    /// The span of processing `message`, as a child of its `traceparent` header; none when
    /// traces are not exported or the message has no trace context.
    pub fn start(message: &Received<'_>, header: Option<&str>) -> Option<Self> {
        let mut attributes = common("process", message.topic, message.key);
        attributes.extend([
            KeyValue::new("messaging.consumer.group.name", message.group.to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                message.partition.to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", message.offset),
            KeyValue::new(
                "messaging.message.body.size",
                i64::try_from(message.body_size).unwrap_or(i64::MAX),
            ),
        ]);
        let (span, traceparent) = start(
            format!("process {}", message.topic),
            SpanKind::Consumer,
            attributes,
            header?,
        )?;
        Some(Self { span, traceparent })
    }

    /// The `traceparent` the application continues: this span.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The application is done with the message.
    pub fn end(mut self) {
        self.span.end();
    }

    /// The message could not be processed: `error.type` and an ERROR status.
    pub fn fail(mut self, error_type: &'static str, message: &str) {
        self.span
            .set_attribute(KeyValue::new("error.type", error_type));
        self.span.set_status(Status::error(message.to_owned()));
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_export_or_parent_there_is_no_span() {
        // Traces are not exported in unit tests.
        let parent = "00-01935f2a7c1e7b449a550d3c1f2e4b6a-00f067aa0ba902b7-01";
        assert!(Sending::start("t", "k", 3, parent).is_none());
        let received = Received {
            topic: "t",
            group: "g",
            partition: 0,
            offset: 7,
            key: None,
            body_size: 3,
        };
        assert!(Processing::start(&received, Some(parent)).is_none());
        assert!(Processing::start(&received, None).is_none());
    }
}
