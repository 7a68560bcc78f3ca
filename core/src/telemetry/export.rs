//! The span queue: finished spans wait in a bounded queue and a task on a tokio runtime of its
//! own (one thread, `rpaflow-otel`) sends them in batches. Nothing on a run's path waits for the
//! collector: a full queue drops the span, and a failed or slow export drops its batch; both are
//! counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

use super::TraceSettings;

/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// How long a span waits for a batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One export, retries included, before its batch counts as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the exporter did, for the shutdown log and for metrics.
#[derive(Debug, Default)]
pub(super) struct ExportStats {
    exported: AtomicU64,
    dropped: AtomicU64,
}

impl ExportStats {
    pub(super) fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_spans(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

enum Control {
    Flush(std::sync::mpsc::SyncSender<()>),
    Shutdown(std::sync::mpsc::SyncSender<()>),
}

/// A [`SpanProcessor`] that queues finished, sampled spans for the exporter task.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<ExportStats>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flush(_) => "Flush",
            Self::Shutdown(_) => "Shutdown",
        })
    }
}

impl QueueProcessor {
    /// Starts the exporter thread; the OTLP client is made there, on its runtime.
    pub(super) fn start(
        settings: &TraceSettings,
        resource: &Resource,
    ) -> Result<(Self, Arc<ExportStats>), String> {
        let (spans_tx, spans_rx) = mpsc::channel(settings.max_queue_spans);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ExportStats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let endpoint = settings.endpoint.clone();
        let resource = resource.clone();
        let task_stats = stats.clone();
        std::thread::Builder::new()
            .name("rpaflow-otel".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(format!("cannot start its runtime: {err}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let exporter = opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint)
                        .with_timeout(EXPORT_TIMEOUT)
                        .build();
                    let mut exporter = match exporter {
                        Ok(exporter) => exporter,
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("bad otlp exporter: {err}")));
                            return;
                        }
                    };
                    exporter.set_resource(&resource);
                    let _ = ready_tx.send(Ok(()));
                    export_loop(exporter, spans_rx, control_rx, &task_stats).await;
                });
            })
            .map_err(|err| format!("cannot start the exporter thread: {err}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the exporter thread stopped".to_owned())??;
        Ok((
            Self {
                spans: spans_tx,
                control: control_tx,
                stats: stats.clone(),
            },
            stats,
        ))
    }

    /// Asks the exporter task for `control` and waits up to `timeout` for its answer.
    fn ask(
        &self,
        control: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.control
            .send(control(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        rx.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            self.stats.drop_spans(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, EXPORT_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stats: &ExportStats,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Whether the last export got through: a stopping service does not wait on a collector
    // that has been failing.
    let mut healthy = true;
    let mut tick = tokio::time::interval(BATCH_DELAY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Below MAX_BATCH here: a full batch is sent as soon as it fills.
        let room = MAX_BATCH - batch.len();
        tokio::select! {
            biased;
            asked = control.recv() => {
                // Everything queued so far goes out before the answer, unless the collector
                // failed last time or fails now: then the rest is dropped (counted) rather
                // than tried batch by batch, so a stopping service does not wait on a
                // collector that is down.
                while let Ok(span) = spans.try_recv() {
                    if !healthy {
                        stats.drop_spans(1);
                        continue;
                    }
                    batch.push(span);
                    if batch.len() >= MAX_BATCH {
                        healthy = export(&exporter, &mut batch, stats).await;
                    }
                }
                if healthy {
                    healthy = export(&exporter, &mut batch, stats).await;
                } else {
                    stats.drop_spans(batch.len());
                    batch.clear();
                }
                match asked {
                    Some(Control::Flush(reply)) => {
                        let _ = reply.send(());
                    }
                    Some(Control::Shutdown(reply)) => {
                        let _ = exporter.shutdown();
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                }
            }
            received = spans.recv_many(&mut batch, room) => {
                if received == 0 {
                    export(&exporter, &mut batch, stats).await;
                    return;
                }
                if batch.len() >= MAX_BATCH {
                    healthy = export(&exporter, &mut batch, stats).await;
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    healthy = export(&exporter, &mut batch, stats).await;
                }
            }
        }
    }
}

/// Sends the batch; a failure or a timeout drops it (counted): a collector that is down must
/// not make spans pile up. False when the collector failed.
async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    stats: &ExportStats,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let spans = std::mem::take(batch);
    let n = spans.len();
    match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
        Ok(Ok(())) => {
            stats.exported.fetch_add(n as u64, Ordering::Relaxed);
            true
        }
        Ok(Err(err)) => {
            stats.drop_spans(n);
            tracing::debug!(error = %err, spans = n, "span export failed");
            false
        }
        Err(_) => {
            stats.drop_spans(n);
            tracing::debug!(spans = n, "span export timed out");
            false
        }
    }
}
