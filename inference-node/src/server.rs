//! Starting a node: the engine, then the gRPC server (inference, health, reflection) on a bound
//! address. [`start`] is what `rpaflow inference`, `rpaflow dev` and the tests use.

use std::net::SocketAddr;

use rpaflow_proto::v1::inference_server::InferenceServer;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::{
    engine::{self, EngineConfig, EngineHandle, EngineThread},
    error::{Error, Result},
    service::InferenceService,
};

/// How long a stopping node's server may take, once the last generation is over, to send what
/// is left and see its clients' connections close.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything a node needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub engine: EngineConfig,
    /// `host:port`; port 0 picks a free one.
    pub listen: String,
}

/// A node serving in this process.
#[derive(Debug)]
pub struct RunningNode {
    addr: SocketAddr,
    engine: EngineHandle,
    stop: oneshot::Sender<()>,
    health: tonic_health::server::HealthReporter,
    server: JoinHandle<Result<()>>,
    thread: EngineThread,
}

/// Loads the model, starts the engine thread, binds `config.listen` and serves.
pub async fn start(config: NodeConfig) -> Result<RunningNode> {
    let (engine, thread) = engine::start(config.engine.clone()).await?;
    let listener = match TcpListener::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(source) => {
            engine.shutdown();
            return Err(Error::Bind {
                addr: config.listen,
                source,
            });
        }
    };
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen.clone(),
        source,
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<InferenceServer<InferenceService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rpaflow_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let inference = InferenceServer::new(InferenceService::new(engine.clone()));

    // Without TCP_NODELAY a small response can wait for a delayed ACK (tens of milliseconds).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown_engine = engine.clone();
    let reporter = health.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(inference)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.await;
                health
                    .set_not_serving::<InferenceServer<InferenceService>>()
                    .await;
                shutdown_engine.shutdown();
            })
            .await
            .map_err(Error::from)
    });
    info!(%addr, "inference node serving");
    Ok(RunningNode {
        addr,
        engine,
        stop,
        health: reporter,
        server,
        thread,
    })
}

impl RunningNode {
    /// The address the server is bound to (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Says NOT_SERVING on the health service while still taking requests: what a node does on
    /// SIGTERM for `admin.drain_delay` before [`RunningNode::shutdown`], so that clients stop
    /// sending to it before it refuses.
    pub async fn announce_drain(&self) {
        self.health
            .set_not_serving::<InferenceServer<InferenceService>>()
            .await;
    }

    /// Says NOT_SERVING, stops accepting requests, lets running generations finish, and waits
    /// for the engine thread and then the server to end. Connections still open [`DRAIN_GRACE`]
    /// after the last generation (a client's health watch never ends by itself) are closed.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.engine.shutdown();
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        let mut server = self.server;
        let Ok(served) = tokio::time::timeout(DRAIN_GRACE, &mut server).await else {
            tracing::warn!(
                grace = ?DRAIN_GRACE,
                "connections still open after the last generation; closing them"
            );
            server.abort();
            return Ok(());
        };
        match served {
            Ok(result) => result,
            Err(e) => Err(Error::Generation {
                reason: format!("server task failed: {e}"),
            }),
        }
    }
}
