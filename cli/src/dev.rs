//! `rpaflow dev`: orchestrator, worker pool and gRPC API in one process, on the in-process bus
//! (or Kafka, with its Kafka triggers), and the webhook endpoint with `--hooks-listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use figment::Figment;
use futures::StreamExt;
use rpaflow_core::bus::{InProcessBus, StepBus, TaskSource};
use rpaflow_core::kafka::{KafkaStepBus, KafkaTaskSource};
use rpaflow_core::namespace::DEFAULT as DEFAULT_NAMESPACE;
use rpaflow_orchestrator::state::{EventKind, RunStatus};
use rpaflow_orchestrator::tls::ServerTls;
use rpaflow_orchestrator::triggers::kafka::KafkaTriggers;
use rpaflow_orchestrator::{OrchestratorHandle, StartRun, api};
use rpaflow_worker::{Registry, Worker};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{ConfigArgs, DevConfig, Flag as _};
use crate::output;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// A flow file to register and run once.
    pub flow: Option<PathBuf>,
    /// An input for the run, KEY=VALUE (VALUE is JSON when it parses as JSON).
    #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// Where flows, runs and events are kept (default: .rpaflow).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where the gRPC API listens (default: 127.0.0.1:50051; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve webhooks (`POST /hooks/{namespace}/{flow}`) on this address (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub hooks_listen: Option<SocketAddr>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (`[admin] listen`; port 0
    /// picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Keep serving after the flow's run ends (until Ctrl-C or SIGTERM).
    #[arg(long)]
    pub keep_running: bool,
    /// How many steps the embedded worker pool runs at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Send steps through this Kafka cluster (`host:port,...`) instead of in-process channels.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// With --kafka, a queue the embedded worker serves (repeatable; default: `default` and the
    /// queues of the flow file).
    #[arg(long = "queue", value_name = "NAME")]
    pub queues: Vec<String>,
    #[command(flatten)]
    pub settings: ConfigArgs,
    /// Serve this GPT-2 model directory in-process for `llm` steps (see `rpaflow inference`).
    #[arg(
        long,
        value_name = "DIR",
        env = "RPAFLOW_INFERENCE_MODEL",
        help_heading = "Inference node"
    )]
    pub model: Option<PathBuf>,
    /// Where the model runs: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu", help_heading = "Inference node")]
    pub device: String,
    #[command(flatten, next_help_heading = "Inference node")]
    pub engine: rpaflow_inference_node::cli::EngineArgs,
}

/// The embedded system: orchestrator, worker pool and their shutdown.
pub struct Embedded {
    pub handle: OrchestratorHandle,
    /// The embedded worker's, when there is one.
    pub worker: Option<rpaflow_worker::WorkerHandle>,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Embedded {
    /// Orchestrator and worker pool, on Kafka when `kafka.brokers` is set.
    pub async fn start(config: &DevConfig) -> anyhow::Result<Self> {
        Self::start_with(config, true).await
    }

    /// Without the embedded worker (`with_worker = false`), steps wait for `rpaflow worker`
    /// processes on Kafka.
    pub async fn start_with(config: &DevConfig, with_worker: bool) -> anyhow::Result<Self> {
        let (bus, source): (Arc<dyn StepBus>, Option<Arc<dyn TaskSource>>) =
            if config.kafka.is_enabled() {
                let bus = KafkaStepBus::connect(config.kafka.clone())
                    .await
                    .context("rpaflow dev cannot use Kafka")?;
                for queue in &config.queues {
                    bus.ensure_queue(queue).await?;
                }
                let source = if with_worker {
                    let source: Arc<dyn TaskSource> = Arc::new(
                        KafkaTaskSource::connect(
                            config.kafka.clone(),
                            &config.queues,
                            &config.worker.id,
                        )
                        .await?,
                    );
                    Some(source)
                } else {
                    None
                };
                (Arc::new(bus), source)
            } else {
                let bus = InProcessBus::new();
                let source: Arc<dyn TaskSource> = Arc::new(bus.clone());
                (Arc::new(bus), with_worker.then_some(source))
            };
        let orchestrator = crate::services::start_orchestrator(
            &config.orchestrator,
            &config.auth,
            &config.secrets,
            bus,
        )
        .await?;
        let handle = orchestrator.handle();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut worker_handle = None;
        if let Some(source) = source {
            let registry =
                Registry::for_config(&config.worker).context("cannot set up the executors")?;
            let mut worker_config = config.worker.clone();
            // The embedded worker opens secrets with the orchestrator's own key.
            worker_config.secrets_key = handle.secrets_key();
            let worker = Worker::new(worker_config, registry, source);
            worker_handle = Some(worker.handle());
            let worker_stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(err) = worker.run(worker_stop).await {
                    tracing::error!(error = %err, "worker stopped with an error");
                }
            }));
        }
        let orchestrator_stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(err) = orchestrator.run(orchestrator_stop).await {
                tracing::error!(error = %err, "orchestrator stopped with an error");
            }
        }));
        Ok(Self {
            handle,
            worker: worker_handle,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, lets in-flight steps finish, flushes storage.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let overrides = Figment::new()
        .flag("orchestrator.data_dir", args.data.as_ref())
        .flag("listen", args.listen)
        .flag("hooks_listen", args.hooks_listen)
        .flag("admin.listen", args.admin_listen)
        .flag("worker.concurrency", args.concurrency)
        .flag("kafka.brokers", args.kafka.as_ref())
        .flag("queues", (!args.queues.is_empty()).then_some(&args.queues));
    let Some(mut config) = args.settings.load::<DevConfig>(overrides)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let telemetry = rpaflow_core::telemetry::init_telemetry(&config.telemetry, "rpaflow-dev");

    // Validate the flow before starting anything, so a typo costs nothing.
    let flow_source = match &args.flow {
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            match rpaflow_core::flow::parse(&path.display().to_string(), &source) {
                Err(diags) => {
                    eprintln!("{diags}");
                    return Ok(ExitCode::FAILURE);
                }
                Ok(flow) => {
                    // The embedded worker serves the flow's queues too.
                    for step in &flow.steps {
                        if !config.queues.contains(&step.queue) {
                            config.queues.push(step.queue.clone());
                        }
                    }
                }
            }
            Some((path.display().to_string(), source))
        }
        None => None,
    };
    let inputs = crate::parse_inputs(&args.inputs, None)?;

    let node = match &args.model {
        Some(model) => {
            let device = args
                .device
                .parse()
                .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
            let node_config = rpaflow_inference_node::server::NodeConfig {
                engine: args.engine.engine_config(model.clone(), device),
                listen: "127.0.0.1:0".into(),
            };
            let node = rpaflow_inference_node::server::start(node_config)
                .await
                .with_context(|| {
                    format!("cannot start the inference node for {}", model.display())
                })?;
            println!(
                "rpaflow dev: inference node for {} on {}",
                model.display(),
                node.addr()
            );
            config.worker.inference_endpoint = Some(node.url());
            Some(node)
        }
        None => None,
    };
    let tls = ServerTls::load(&config.tls).context("cannot set up tls")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut embedded = Embedded::start(&config).await?;
    if let Some(hooks_addr) = config.hooks_listen {
        let listen = crate::services::HooksListener {
            addr: hooks_addr,
            config: config.hooks.clone(),
            tls: tls.clone(),
        };
        let hooks =
            crate::services::serve_hooks(&embedded.handle, listen, &embedded.shutdown, "dev")
                .await?;
        embedded.tasks.push(hooks);
    }
    if config.kafka.is_enabled() {
        let triggers = KafkaTriggers::new(embedded.handle.clone(), config.kafka.clone());
        embedded
            .tasks
            .push(tokio::spawn(triggers.run(embedded.shutdown.clone())));
    }
    let (listener, addr) = api::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let serve_stop = embedded.shutdown.clone();
    let handle = embedded.handle.clone();
    // Cancelled first when stopping: gRPC health NOT_SERVING, /readyz 503.
    let draining = CancellationToken::new();
    let api_draining = draining.clone();
    let server = tokio::spawn(async move {
        if let Err(err) = api::serve(handle, listener, tls.as_ref(), api_draining, async move {
            serve_stop.cancelled().await
        })
        .await
        {
            tracing::error!(error = %err, "gRPC server stopped with an error");
        }
    });
    // Before the serving line, which tells tests and scripts that everything listens.
    let admin = match config.admin.listen {
        Some(admin_addr) => {
            let on_kafka = config.kafka.is_enabled();
            let mut admin = Admin::new(draining.clone())
                .metrics_token(config.admin.metrics_token()?)
                .trace_export(telemetry.span_stats())
                .orchestrator(&embedded.handle, on_kafka);
            if let Some(worker) = &embedded.worker {
                admin = admin.worker(worker, on_kafka);
            }
            if let Some(node) = &node {
                admin = admin.inference(node.engine());
            }
            Some(crate::admin::serve(admin_addr, admin, "dev").await?)
        }
        None => None,
    };
    // The console is on the gRPC port (gRPC-Web); with tokens on, it asks for one.
    let first_token = config.orchestrator.data_dir.join("admin.token");
    let sign_in = match config.auth.enabled {
        false => String::new(),
        true if first_token.is_file() => {
            format!("; sign in with the token in {}", first_token.display())
        }
        true => "; sign in with an API token (rpaflow token create)".to_owned(),
    };
    // Said when the process stays up (no flow to run, or --keep-running).
    if args.keep_running || flow_source.is_none() {
        println!("rpaflow dev: web console on {scheme}://{addr}/{sign_in}");
    }
    println!(
        "rpaflow dev: serving gRPC on {addr} (data in {})",
        config.orchestrator.data_dir.display()
    );
    let running = Running {
        embedded,
        server,
        node,
        draining,
        admin,
        admin_config: config.admin.clone(),
    };

    let mut code = ExitCode::SUCCESS;
    if let Some((file, source)) = flow_source {
        let handle = &running.embedded.handle;
        let registered = handle
            .register_flow(DEFAULT_NAMESPACE, &file, &source)
            .await?;
        let flow = registered.record.name.clone();
        println!("flow {flow} v{} registered", registered.record.version);
        let (run, _) = handle
            .start_run(StartRun {
                flow,
                version: registered.record.version,
                inputs,
                ..StartRun::default()
            })
            .await?;
        println!("run {} started", run.run_id);
        let status = follow(handle, &run.run_id).await?;
        let finished = handle.get_run(DEFAULT_NAMESPACE, &run.run_id).await?;
        println!(
            "{}",
            output::run_text(&rpaflow_orchestrator::run_to_pb(&finished))
        );
        if status != RunStatus::Succeeded {
            code = ExitCode::FAILURE;
        }
        if !args.keep_running {
            running.stop().await;
            return Ok(code);
        }
    }
    wait_for_signal().await;
    eprintln!("rpaflow dev: shutting down");
    running.stop().await;
    Ok(code)
}

/// What `rpaflow dev` runs, to stop in order.
struct Running {
    embedded: Embedded,
    server: tokio::task::JoinHandle<()>,
    node: Option<rpaflow_inference_node::server::RunningNode>,
    draining: CancellationToken,
    admin: Option<crate::admin::AdminServer>,
    admin_config: crate::admin::AdminConfig,
}

impl Running {
    /// Says NOT_SERVING (gRPC health, /readyz), waits `[admin] drain_delay`, drains, then stops
    /// the admin listener last.
    async fn stop(self) {
        self.admin_config.start_draining(&self.draining).await;
        self.embedded.stop().await;
        let _ = self.server.await;
        if let Some(node) = self.node
            && let Err(err) = node.shutdown().await
        {
            tracing::warn!(error = %err, "inference node did not stop cleanly");
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
    }
}

/// Prints the run's events as they happen; returns how the run ended.
pub async fn follow(handle: &OrchestratorHandle, run_id: &str) -> anyhow::Result<RunStatus> {
    let started = Instant::now();
    // What `log` steps say is shown in the progress, as a person running a flow expects.
    let flow = handle.get_run(DEFAULT_NAMESPACE, run_id).await?.flow;
    let log_steps: std::collections::HashSet<&str> = flow
        .steps
        .iter()
        .filter(|s| s.uses == "log")
        .map(|s| s.id.as_str())
        .collect();
    let mut events = Box::pin(handle.watch_run(DEFAULT_NAMESPACE, run_id, 1)?);
    let mut status = RunStatus::Running;
    while let Some(event) = events.next().await {
        let event = event?;
        match &event.kind {
            EventKind::RunSucceeded { .. } => status = RunStatus::Succeeded,
            EventKind::RunFailed { .. } => status = RunStatus::Failed,
            EventKind::RunCancelled { .. } => status = RunStatus::Cancelled,
            EventKind::RunRetried { .. } | EventKind::RunDequeued { .. } => {
                status = RunStatus::Running
            }
            _ => {}
        }
        let mut pb = rpaflow_orchestrator::event_to_pb(run_id, &event);
        if let EventKind::TaskSucceeded {
            step, output: out, ..
        } = &event.kind
            && let (true, Some(message)) = (
                log_steps.contains(step.as_str()),
                out.get("message").and_then(|m| m.as_str()),
            )
        {
            pb.message = format!("log: {message}");
        }
        println!("{}", output::event_line(&pb, started.elapsed()));
    }
    Ok(status)
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
