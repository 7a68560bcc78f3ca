//! The engine: one dedicated thread owns the model and runs continuous batching over a bounded
//! request queue; cheap [`EngineHandle`]s submit requests and read statistics from anywhere.
//!
//! A request goes through: validation and tokenization (in [`EngineHandle::submit`], on the
//! caller's thread), the queue (full: [`Error::QueueFull`]), admission between two decode steps
//! when the budgets allow (batch size, total tokens), prefill with the other newcomers, then decode
//! steps in the running batch until it finishes or its receiver is dropped.
//!
//! [`metrics`] are the Prometheus metrics the engine thread observes as it works.

mod batch;
pub mod metrics;
mod sampling;
mod stats;
mod text;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokenizers::Tokenizer;
use tokio::sync::{mpsc, oneshot};

pub use self::{sampling::argmax, stats::EngineStats};
use crate::{
    error::{Error, Result},
    model::{Device, Model, ModelSpec, Threads},
    params::GenerationParams,
};

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_dir: PathBuf,
    /// The ONNX Runtime library; `None` reads `ORT_DYLIB_PATH`.
    pub onnxruntime: Option<PathBuf>,
    pub device: Device,
    /// ONNX Runtime intra-op threads; 0 lets it choose.
    pub threads: usize,
    /// Whether those threads spin between operators rather than sleep (see `model::Threads`).
    pub spinning: bool,
    /// Sequences decoded together at most.
    pub max_batch_size: usize,
    /// Prompt plus new tokens of the running sequences, added up, at most.
    pub max_total_tokens: usize,
    /// Requests waiting for admission at most; one more answers RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Tokens (padding included) in one prefill pass at most; newcomers beyond it are prefilled
    /// in further passes of similar prompt lengths.
    pub max_prefill_tokens: usize,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    Eos,
    Stop,
}

/// Times of one request, from its arrival.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub queue: Duration,
    pub time_to_first_token: Duration,
    pub total: Duration,
}

/// The end of a generation, carried by its last token.
#[derive(Debug, Clone)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub seed: u64,
    pub timings: Timings,
}

/// One generated token and the text that became final with it.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub token_id: u32,
    pub text: String,
    /// Set on the last token.
    pub finished: Option<Finished>,
}

/// A whole generation, for requests submitted with [`Delivery::Whole`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finished: Finished,
}

/// How a request wants its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One [`Event::Token`] per token, as they come.
    Stream,
    /// One [`Event::Completed`] at the end (no per-token wake-ups).
    Whole,
}

/// What a request's receiver gets: tokens (the last one finished) or one completion, or one
/// failure.
#[derive(Debug)]
pub enum Event {
    Token(TokenEvent),
    Completed(Completion),
    Failed(Error),
}

/// A request as it waits in the queue.
#[derive(Debug)]
struct Request {
    id: u64,
    prompt: Vec<u32>,
    params: GenerationParams,
    delivery: Delivery,
    events: mpsc::UnboundedSender<Event>,
    arrived: Instant,
}

impl Request {
    /// Tokens it may hold at most: the budget it takes.
    fn reserved_tokens(&self) -> usize {
        self.prompt.len() + self.params.max_new_tokens as usize
    }
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Request>,
    shutdown: bool,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<EngineStats>,
    metrics: metrics::NodeMetrics,
    next_id: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, EngineStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cheap, cloneable handle on a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    spec: Arc<ModelSpec>,
    config: Arc<EngineConfig>,
}

/// The engine thread; [`EngineThread::join`] waits for it after [`EngineHandle::shutdown`].
#[derive(Debug)]
pub struct EngineThread(JoinHandle<()>);

impl EngineThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("inference engine thread panicked");
        }
    }
}

/// Loads the model on a new engine thread and starts it there.
pub async fn start(config: EngineConfig) -> Result<(EngineHandle, EngineThread)> {
    if config.max_batch_size == 0 || config.max_total_tokens == 0 || config.max_queue == 0 {
        return Err(Error::Config(
            "max batch size, max total tokens and max queue must be at least 1".into(),
        ));
    }
    let (ready_tx, ready_rx) = oneshot::channel();
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        stats: Mutex::new(EngineStats::default()),
        metrics: metrics::NodeMetrics::default(),
        next_id: AtomicU64::new(1),
    });
    let thread_shared = Arc::clone(&shared);
    let thread_config = config.clone();
    let thread = std::thread::Builder::new()
        .name("rpaflow-engine".into())
        .spawn(move || {
            let model = Model::load(
                &thread_config.model_dir,
                thread_config.onnxruntime.as_deref(),
                thread_config.device,
                Threads {
                    intra_op: thread_config.threads,
                    spinning: thread_config.spinning,
                },
            );
            let model = match model {
                Ok(model) => model,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let ready = (model.spec().clone(), model.tokenizer());
            if ready_tx.send(Ok(ready)).is_err() {
                return;
            }
            batch::Runner::new(model, thread_shared, thread_config).run();
        })
        .map_err(|e| Error::Config(format!("cannot start the engine thread: {e}")))?;
    let (spec, tokenizer) = ready_rx.await.map_err(|_| Error::NotRunning)??;
    let handle = EngineHandle {
        shared,
        tokenizer,
        spec: Arc::new(spec),
        config: Arc::new(config),
    };
    Ok((handle, EngineThread(thread)))
}

/// What [`EngineHandle::submit`] tells about an accepted request.
#[derive(Debug, Clone, Copy)]
pub struct Submitted {
    pub id: u64,
    pub prompt_tokens: u32,
}

impl EngineHandle {
    /// Validates and queues a request; its events arrive on the returned receiver. Dropping the
    /// receiver cancels the request (it leaves the batch at the next step).
    pub fn submit(
        &self,
        prompt: &str,
        params: GenerationParams,
        delivery: Delivery,
    ) -> Result<(Submitted, mpsc::UnboundedReceiver<Event>)> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| Error::Tokenize {
                operation: "encode the prompt",
                reason: e.to_string(),
            })?;
        let prompt_ids = encoding.get_ids().to_vec();
        self.check_budget(prompt_ids.len(), &params)?;
        let (events, receiver) = mpsc::unbounded_channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let submitted = Submitted {
            id,
            prompt_tokens: prompt_ids.len() as u32,
        };
        let request = Request {
            id,
            prompt: prompt_ids,
            params,
            delivery,
            events,
            arrived: Instant::now(),
        };
        let mut queue = self.shared.queue();
        if queue.shutdown || queue.stopped {
            return Err(Error::NotRunning);
        }
        if queue.waiting.len() >= self.config.max_queue {
            return Err(Error::QueueFull {
                capacity: self.config.max_queue,
            });
        }
        queue.waiting.push_back(request);
        drop(queue);
        self.shared.wake.notify_one();
        Ok((submitted, receiver))
    }

    fn check_budget(&self, prompt_tokens: usize, params: &GenerationParams) -> Result<()> {
        if prompt_tokens == 0 {
            return Err(Error::invalid("prompt", "must not be empty"));
        }
        // A prompt that leaves no room for one new token is the prompt's fault, whatever
        // max_new_tokens says.
        for (limit, what) in [
            (self.spec.max_positions, "the model's context"),
            (self.config.max_total_tokens, "the node's max total tokens"),
        ] {
            if prompt_tokens >= limit {
                return Err(Error::invalid(
                    "prompt",
                    format!(
                        "is {prompt_tokens} tokens, which leaves no room to generate within {what} of {limit} tokens"
                    ),
                ));
            }
        }
        let wanted = prompt_tokens + params.max_new_tokens as usize;
        if wanted > self.spec.max_positions {
            return Err(Error::invalid(
                "max_new_tokens",
                format!(
                    "prompt ({prompt_tokens} tokens) plus max_new_tokens ({}) exceeds the model's context of {} tokens",
                    params.max_new_tokens, self.spec.max_positions
                ),
            ));
        }
        if wanted > self.config.max_total_tokens {
            return Err(Error::invalid(
                "max_new_tokens",
                format!(
                    "prompt ({prompt_tokens} tokens) plus max_new_tokens ({}) exceeds the node's max total tokens of {}",
                    params.max_new_tokens, self.config.max_total_tokens
                ),
            ));
        }
        Ok(())
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn stats(&self) -> EngineStats {
        let queued = self.shared.queue().waiting.len() as u32;
        let mut stats = self.shared.stats().clone();
        stats.queued = queued;
        stats
    }

    /// Adds the engine's metrics to `registry` ([`metrics`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.metrics.register(registry);
    }

    /// Sets the gauges (queue size, running batch) from the engine: called before each scrape.
    pub fn refresh_metrics(&self) {
        let stats = self.stats();
        let metrics = &self.shared.metrics;
        metrics.queue_size.set(i64::from(stats.queued));
        metrics.batch_current_size.set(i64::from(stats.running));
    }

    /// Whether the engine takes requests (the model is loaded and it is not shutting down).
    pub fn is_serving(&self) -> bool {
        !self.shared.queue().shutdown
    }

    /// Stops accepting requests, fails the waiting ones ([`Error::Drained`]: not started), and
    /// lets the running ones finish; the engine thread then ends.
    pub fn shutdown(&self) {
        self.shared.queue().shutdown = true;
        self.shared.wake.notify_all();
    }
}
