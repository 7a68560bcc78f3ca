//! One inference node as this worker sees it: a lazy gRPC channel, whether it takes requests
//! (watched on its gRPC health service), the model it serves (its `ModelInfo`) and the requests
//! outstanding on it.
//!
//! A node is healthy while its health watch says SERVING for `rpaflow.v1.Inference` (it turns
//! NOT_SERVING when SIGTERM starts its drain) and it has told its model. Any other status, or a
//! broken watch (the node died, the connection dropped), makes it unhealthy at once; the watch is
//! tried again after a pause (growing to `max_backoff`), and the node comes back when it says
//! SERVING again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpaflow_proto::v1 as pb;
use rpaflow_proto::v1::inference_client::InferenceClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::{debug, info, warn};

/// The health service name the inference node reports under.
pub(super) const INFERENCE_SERVICE: &str = "rpaflow.v1.Inference";

/// How the worker reaches nodes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timings {
    /// A connection not made in this time fails (the node is then unhealthy until it answers).
    pub connect_timeout: Duration,
    /// The longest wait between two tries of a broken health watch.
    pub max_backoff: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Debug)]
pub(super) struct Node {
    pub addr: SocketAddr,
    pub channel: Channel,
    healthy: AtomicBool,
    model: Mutex<Option<String>>,
    /// Requests this worker has on it now (see `balancer::Lease`).
    pub outstanding: AtomicUsize,
    /// Asks the watch to look again (a request found the node unreachable).
    recheck: Notify,
    /// Ends the watch (the node left the name's addresses, or the executor went away).
    stop: CancellationToken,
    timings: Timings,
}

impl Node {
    /// A node at `addr`, unhealthy until its watch ([`Node::watch`]) says otherwise.
    pub fn new(addr: SocketAddr, timings: Timings) -> Arc<Self> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .connect_timeout(timings.connect_timeout)
            .tcp_nodelay(true)
            // A node that vanished without closing its connections (a lost machine) is noticed.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        Arc::new(Self {
            addr,
            channel,
            healthy: AtomicBool::new(false),
            model: Mutex::new(None),
            outstanding: AtomicUsize::new(0),
            recheck: Notify::new(),
            stop: CancellationToken::new(),
            timings,
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// The model it serves (the name of its model directory), once it has said.
    pub fn model(&self) -> Option<String> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A request could not reach it: no more requests until its health watch says SERVING again.
    pub fn unreachable(&self) {
        if self.healthy.swap(false, Ordering::SeqCst) {
            info!(node = %self.addr, "inference node unreachable; not sending to it");
        }
        self.recheck.notify_one();
    }

    /// Ends its watch.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::SeqCst) != healthy {
            if healthy {
                info!(node = %self.addr, model = ?self.model(), "inference node serving");
            } else {
                info!(node = %self.addr, why, "inference node not serving; not sending to it");
            }
        }
    }

    #[cfg(test)]
    pub fn set_state_for_test(&self, healthy: bool, model: Option<&str>) {
        *self.model.lock().unwrap() = model.map(str::to_owned);
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Watches the node's health until stopped: every status it reports is taken as it comes; a
    /// broken watch marks it unhealthy and is tried again with a growing pause.
    pub async fn watch(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let why = tokio::select! {
                () = self.stop.cancelled() => return,
                why = self.watch_once(&mut backoff) => why,
            };
            self.set_healthy(false, &why);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
                // A request found it unreachable while waiting: no reason to wait longer.
                () = self.recheck.notified() => {}
            }
            backoff = (backoff * 2).min(self.timings.max_backoff);
        }
    }

    /// One health watch, until it breaks or a recheck is asked for; says why it ended.
    async fn watch_once(&self, backoff: &mut Duration) -> String {
        let mut health = HealthClient::new(self.channel.clone());
        let request = HealthCheckRequest {
            service: INFERENCE_SERVICE.to_owned(),
        };
        let mut statuses = match health.watch(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return format!("health watch failed: {}", status.message()),
        };
        let mut model_asked = false;
        loop {
            let message = tokio::select! {
                message = statuses.message() => message,
                () = self.recheck.notified() => {
                    // Watching again gives the status now as its first message.
                    return "a request could not reach it".to_owned();
                }
            };
            match message {
                Ok(Some(reply)) if reply.status == ServingStatus::Serving as i32 => {
                    // A node restarted at the same address may serve another model: asked once
                    // per watch.
                    if !model_asked {
                        match self.ask_model().await {
                            Ok(model) => {
                                *self.model.lock().unwrap_or_else(|p| p.into_inner()) = Some(model);
                                model_asked = true;
                            }
                            Err(status) => {
                                return format!("model info failed: {}", status.message());
                            }
                        }
                    }
                    *backoff = Duration::from_millis(100);
                    self.set_healthy(true, "serving");
                }
                Ok(Some(reply)) => {
                    // Not kept open: a draining node's server waits for its streams to end, and
                    // this one would not. Watched again after a pause.
                    let status = ServingStatus::try_from(reply.status)
                        .map_or("UNKNOWN", |s| s.as_str_name());
                    return format!("health says {status}");
                }
                Ok(None) => return "health watch ended".to_owned(),
                Err(status) => return format!("health watch broke: {}", status.message()),
            }
        }
    }

    /// The node's model: the name of its model directory.
    async fn ask_model(&self) -> Result<String, tonic::Status> {
        let mut client = InferenceClient::new(self.channel.clone());
        let ask = client.model_info(pb::ModelInfoRequest {});
        let info = tokio::time::timeout(Duration::from_secs(10), ask)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer in 10 s"))??
            .into_inner();
        let name = model_name(&info.model_dir);
        debug!(node = %self.addr, model = %name, device = %info.device, "inference node model");
        if name.is_empty() {
            warn!(node = %self.addr, "inference node names no model");
        }
        Ok(name)
    }
}

/// The name a step asks for a model by: the last part of the node's model directory.
pub(super) fn model_name(model_dir: &str) -> String {
    std::path::Path::new(model_dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model_dir.to_owned())
}
