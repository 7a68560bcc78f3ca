//! `rpaflow orchestrator` and `rpaflow worker`: the distributed services, talking only through
//! Kafka. Each takes a config file, `RPAFLOW_*` variables and flags (see [`crate::config`]), and
//! drains on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use figment::Figment;
use rpaflow_core::flow::DEFAULT_QUEUE;
use rpaflow_core::kafka::{KafkaStepBus, KafkaTaskSource};
use rpaflow_orchestrator::tls::ServerTls;
use rpaflow_orchestrator::triggers::kafka::KafkaTriggers;
use rpaflow_orchestrator::triggers::webhook as hooks;
use rpaflow_orchestrator::{Orchestrator, OrchestratorHandle, api};
use rpaflow_worker::{Registry, Worker};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::Admin;
use crate::config::{ConfigArgs, Flag as _, OrchestratorServiceConfig, WorkerServiceConfig};
use crate::dev::wait_for_signal;

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    /// Kafka brokers, `host:port[,host:port]...`.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Where flows, runs and events are kept.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where the gRPC API listens (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve webhooks (`POST /hooks/{namespace}/{flow}`) on this address (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub hooks_listen: Option<SocketAddr>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (`[admin] listen`).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub settings: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Kafka brokers, `host:port[,host:port]...`.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// A queue whose worker pool to join (repeatable; default: `default`).
    #[arg(long = "queue", value_name = "NAME")]
    pub queues: Vec<String>,
    /// How many steps run at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Names this worker in results and logs (default: HOSTNAME-RANDOM, unique per process).
    #[arg(long)]
    pub id: Option<String>,
    /// The inference node for `llm` steps, `host:port` or `http://host:port`, or several,
    /// comma-separated; a name may resolve to several nodes (`worker.inference_endpoint`).
    #[arg(long, value_name = "URL")]
    pub inference: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (`[admin] listen`).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub settings: ConfigArgs,
}

pub async fn orchestrator(args: OrchestratorArgs) -> anyhow::Result<ExitCode> {
    let overrides = Figment::new()
        .flag("kafka.brokers", args.kafka.as_ref())
        .flag("orchestrator.data_dir", args.data.as_ref())
        .flag("listen", args.listen)
        .flag("hooks_listen", args.hooks_listen)
        .flag("admin.listen", args.admin_listen);
    let Some(config) = args.settings.load::<OrchestratorServiceConfig>(overrides)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let telemetry =
        rpaflow_core::telemetry::init_telemetry(&config.telemetry, "rpaflow-orchestrator");

    let bus = Arc::new(
        KafkaStepBus::connect(config.kafka.clone())
            .await
            .context("the orchestrator cannot use Kafka")?,
    );
    bus.ensure_queue(DEFAULT_QUEUE).await?;
    let orchestrator = start_orchestrator(
        &config.orchestrator,
        &config.auth,
        &config.secrets,
        bus.clone(),
    )
    .await?;
    let handle = orchestrator.handle();
    let tls = ServerTls::load(&config.tls).context("cannot set up tls")?;
    let (listener, addr) = api::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    // Cancelled first on SIGTERM: gRPC health says NOT_SERVING and /readyz 503 while draining.
    let draining = CancellationToken::new();
    let forwarder = tokio::spawn(forward_events(handle.subscribe(), Arc::clone(&bus)));
    let serve_stop = shutdown.clone();
    let api_handle = handle.clone();
    let api_tls = tls.clone();
    let api_draining = draining.clone();
    let server = tokio::spawn(async move {
        let stop = serve_stop.cancelled_owned();
        if let Err(err) =
            api::serve(api_handle, listener, api_tls.as_ref(), api_draining, stop).await
        {
            error!(error = %err, "gRPC server stopped with an error");
        }
    });
    // The admin listener answers until the very end of the drain.
    let admin = match config.admin.listen {
        Some(addr) => {
            let admin = Admin::new(draining.clone())
                .metrics_token(config.admin.metrics_token()?)
                .trace_export(telemetry.span_stats())
                .orchestrator(&handle, true);
            Some(crate::admin::serve(addr, admin, "orchestrator").await?)
        }
        None => None,
    };
    // Webhooks and Kafka triggers stop taking deliveries before the orchestrator stops.
    let intake = CancellationToken::new();
    let hooks = match config.hooks_listen {
        Some(hooks_addr) => {
            let hooks_config = config.hooks.clone();
            let hooks = HooksListener {
                addr: hooks_addr,
                config: hooks_config,
                tls: tls.clone(),
            };
            Some(serve_hooks(&handle, hooks, &intake, "orchestrator").await?)
        }
        None => None,
    };
    let triggers =
        tokio::spawn(KafkaTriggers::new(handle.clone(), config.kafka.clone()).run(intake.clone()));
    let orchestrator_stop = shutdown.clone();
    let running = tokio::spawn(async move { orchestrator.run(orchestrator_stop).await });
    // The web console is on the gRPC port (docs/console.md).
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("rpaflow orchestrator: web console on {scheme}://{addr}/");
    println!(
        "rpaflow orchestrator: serving gRPC on {addr} (data in {}, kafka {})",
        config.orchestrator.data_dir.display(),
        config.kafka.brokers
    );
    wait_for_signal().await;
    info!("rpaflow orchestrator: shutting down");
    config.admin.start_draining(&draining).await;
    intake.cancel();
    if let Some(hooks) = hooks {
        let _ = hooks.await;
    }
    let _ = triggers.await;
    shutdown.cancel();
    let _ = server.await;
    let outcome = running.await.context("orchestrator task failed")?;
    forwarder.abort();
    if let Some(admin) = admin {
        admin.stop().await;
    }
    outcome.context("orchestrator stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}

/// Where and how the webhook endpoint listens.
pub struct HooksListener {
    pub addr: SocketAddr,
    pub config: hooks::HooksConfig,
    /// HTTPS with the API's certificate.
    pub tls: Option<ServerTls>,
}

/// Binds the webhook endpoint, prints `rpaflow WHO: webhooks on http[s]://ADDR` and serves it
/// until `shutdown`.
pub async fn serve_hooks(
    handle: &OrchestratorHandle,
    listen: HooksListener,
    shutdown: &CancellationToken,
    who: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let HooksListener { addr, config, tls } = listen;
    let (listener, local) = hooks::bind(addr)
        .await
        .with_context(|| format!("cannot listen for webhooks on {addr}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("rpaflow {who}: webhooks on {scheme}://{local}");
    let handle = handle.clone();
    let stop = shutdown.clone();
    Ok(tokio::spawn(async move {
        let stop = stop.cancelled_owned();
        if let Err(err) = hooks::serve(handle, config, listener, tls.as_ref(), stop).await {
            error!(error = %err, "webhook server stopped with an error");
        }
    }))
}

/// Run events to `rpaflow.events`, for other systems. A burst larger than the broadcast buffer
/// loses events here (said in the log); the run's own history is never affected.
async fn forward_events(
    mut events: broadcast::Receiver<rpaflow_orchestrator::Published>,
    bus: Arc<KafkaStepBus>,
) {
    loop {
        let batch = match events.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "event feed fell behind; events skipped on rpaflow.events"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (run_id, run_events) = &*batch;
        for event in run_events {
            let event = rpaflow_orchestrator::event_to_pb(run_id, event);
            if let Err(err) = bus.publish_event(&event) {
                warn!(run_id = %run_id, error = %err, "cannot queue a run event");
            }
        }
    }
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let overrides = Figment::new()
        .flag("kafka.brokers", args.kafka.as_ref())
        .flag("queues", (!args.queues.is_empty()).then_some(&args.queues))
        .flag("worker.concurrency", args.concurrency)
        .flag("worker.id", args.id.as_ref())
        .flag("worker.inference_endpoint", args.inference.as_ref())
        .flag("admin.listen", args.admin_listen);
    let Some(config) = args.settings.load::<WorkerServiceConfig>(overrides)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let telemetry = rpaflow_core::telemetry::init_telemetry(&config.telemetry, "rpaflow-worker");

    let registry = Registry::for_config(&config.worker).context("cannot set up the executors")?;
    let source = KafkaTaskSource::connect(config.kafka.clone(), &config.queues, &config.worker.id)
        .await
        .context("the worker cannot use Kafka")?;
    let mut worker_config = config.worker.clone();
    worker_config.secrets_key = config
        .secrets
        .load(None)
        .context("cannot load the secrets key")?;
    if worker_config.secrets_key.is_none() {
        info!("no secrets key (secrets.key_file): steps that use secrets will fail on this worker");
    }
    let worker = Worker::new(worker_config, registry, Arc::new(source));
    let shutdown = CancellationToken::new();
    let draining = CancellationToken::new();
    let admin = match config.admin.listen {
        Some(addr) => {
            let admin = Admin::new(draining.clone())
                .metrics_token(config.admin.metrics_token()?)
                .trace_export(telemetry.span_stats())
                .worker(&worker.handle(), true);
            Some(crate::admin::serve(addr, admin, "worker").await?)
        }
        None => None,
    };
    let stop = shutdown.clone();
    let running = tokio::spawn(worker.run(stop));
    println!(
        "rpaflow worker {}: serving queues {} on kafka {} ({} at once)",
        config.worker.id,
        config.queues.join(","),
        config.kafka.brokers,
        config.worker.concurrency
    );
    wait_for_signal().await;
    config.admin.start_draining(&draining).await;
    info!("rpaflow worker: draining");
    shutdown.cancel();
    let stopped = running.await.context("worker task failed");
    if let Some(admin) = admin {
        admin.stop().await;
    }
    stopped?.context("worker stopped with an error")?;
    println!("rpaflow worker {}: stopped", config.worker.id);
    Ok(ExitCode::SUCCESS)
}

/// Starts the orchestrator with what the process-level sections give it (`[auth]`, and the key
/// of `[secrets]`, the data directory's own when none is configured); on the first start with
/// authentication on, makes the admin token and shows it this once (it is also in
/// `DATA_DIR/admin.token`, mode 0600). Shared by `rpaflow dev` and `rpaflow orchestrator`.
pub async fn start_orchestrator(
    orchestrator: &rpaflow_orchestrator::OrchestratorConfig,
    auth: &rpaflow_orchestrator::auth::AuthConfig,
    secrets: &rpaflow_core::secrets::SecretsConfig,
    bus: Arc<dyn rpaflow_core::bus::StepBus>,
) -> anyhow::Result<Orchestrator> {
    let data_dir = orchestrator.data_dir.clone();
    let mut config = orchestrator.clone();
    config.auth = auth.clone();
    config.secrets_key = secrets
        .load(Some(&data_dir))
        .context("cannot load the secrets key")?;
    let orchestrator = Orchestrator::start(config, bus)
        .await
        .with_context(|| format!("cannot start the orchestrator on {}", data_dir.display()))?;
    if let Some(token) = orchestrator
        .handle()
        .bootstrap_admin_token()
        .await
        .context("cannot make the first admin token")?
    {
        eprintln!(
            "authentication is on and there was no token: made an admin token (also written to {}):\n  RPAFLOW_TOKEN={token}",
            data_dir.join("admin.token").display()
        );
    }
    Ok(orchestrator)
}
