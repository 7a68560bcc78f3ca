//! The processes behind the `browser` executor: one `chromedriver` per worker, in its own process
//! group so that killing the group also ends every Chromium it started, and one WebDriver session
//! (a Chromium with a fresh profile directory) per step.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::{Map, Value as Json, json};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use super::{BrowserConfig, unavailable};
use crate::StepError;
use crate::egress::Egress;
use crate::egress::proxy::EgressProxy;

/// How long `chromedriver` may take to listen after it starts.
const DRIVER_START: Duration = Duration::from_secs(10);
/// How long closing a session may take before it is left to the driver's end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Chromium's flags: headless on a closed network (no background connections, no first-run or
/// sync), as root in a container (`--no-sandbox`), with a fixed window for stable screenshots.
const CHROMIUM_ARGS: &[&str] = &[
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,900",
];

/// A running `chromedriver`, leader of its own process group.
#[derive(Debug)]
pub(super) struct Driver {
    child: Child,
    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Driver {
    /// Starts `chromedriver` on a free loopback port and waits until it listens.
    pub async fn start(config: &BrowserConfig) -> Result<Self, StepError> {
        require_file(&config.chromedriver, "chromedriver", "RPAFLOW_CHROMEDRIVER")?;
        let port = free_port().await?;
        let mut child = Command::new(&config.chromedriver)
            .arg(format!("--port={port}"))
            .arg("--silent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                unavailable(format!(
                    "could not start chromedriver at {}: {e}",
                    config.chromedriver.display()
                ))
            })?;
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(unavailable(format!(
                    "chromedriver at {} exited as it started ({status})",
                    config.chromedriver.display()
                )));
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if started.elapsed() > DRIVER_START {
                let mut driver = Self {
                    child,
                    url: String::new(),
                };
                driver.kill();
                return Err(unavailable(format!(
                    "chromedriver did not listen on port {port} within {}s",
                    DRIVER_START.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::debug!(port, pid = ?child.id(), "chromedriver started");
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The driver's process id (also its process group's), while it runs.
    #[cfg(test)]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the driver and every Chromium process it started (its process group) at once.
    pub fn kill(&mut self) {
        if let Some(pid) = self.child.id().and_then(|id| Pid::from_raw(id as i32)) {
            // The group may already be gone; nothing is left to do then.
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.start_kill();
    }

    /// Kills the driver's process group and reaps the driver.
    pub async fn stop(mut self) {
        self.kill();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.child.wait()).await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Flags that send all of Chromium's traffic through the egress proxy: loopback too (Chromium
/// bypasses proxies for it by default), no UDP outside the proxy (WebRTC), no QUIC (above), no
/// DNS prefetching.
const PROXY_ARGS: &[&str] = &[
    "--proxy-bypass-list=<-loopback>",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--dns-prefetch-disable",
];

/// A step's browsing context: a WebDriver session, its profile directory and the egress proxy
/// its requests go through. Close it with
/// [`Session::close`]; if it is dropped instead (the step's future was dropped at its timeout),
/// it closes itself in the background.
#[derive(Debug)]
pub(super) struct Session {
    client: Option<Client>,
    profile: Option<TempDir>,
    proxy: EgressProxy,
}

impl Session {
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a session's client is there until it is closed")
    }

    /// The proxy the session's requests go through, which records what it denied.
    pub fn proxy(&self) -> &EgressProxy {
        &self.proxy
    }

    /// Ends the session (Chromium exits) and removes its profile.
    pub async fn close(mut self) {
        close(self.client.take(), self.profile.take()).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let (client, profile) = (self.client.take(), self.profile.take());
        if client.is_none() && profile.is_none() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close(client, profile));
        }
    }
}

async fn close(client: Option<Client>, profile: Option<TempDir>) {
    if let Some(client) = client
        && let Err(e) = tokio::time::timeout(CLOSE_TIMEOUT, client.close())
            .await
            .unwrap_or(Err(fantoccini::error::CmdError::WaitTimeout))
    {
        tracing::debug!(error = %e, "closing a browser session failed");
    }
    if let Some(profile) = profile {
        // Chromium has exited; its profile is many small files.
        let _ = tokio::task::spawn_blocking(move || drop(profile)).await;
    }
}

/// Opens a session on the driver at `url`: a new Chromium with an empty profile of its own,
/// whose every request goes through an egress proxy of its own.
pub(super) async fn new_session(
    url: String,
    config: BrowserConfig,
    egress: Egress,
) -> Result<Session, StepError> {
    require_file(&config.chromium, "chromium", "RPAFLOW_CHROMIUM")?;
    let proxy = EgressProxy::start(egress)
        .await
        .map_err(|e| unavailable(format!("could not start the browser's egress proxy: {e}")))?;
    let profile = tempfile::Builder::new()
        .prefix("rpaflow-browser-")
        .tempdir()
        .map_err(|e| unavailable(format!("could not create a browser profile directory: {e}")))?;
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
    if config.headless {
        args.push("--headless".to_owned());
    }
    args.push(format!("--user-data-dir={}", profile.path().display()));
    args.push(format!("--proxy-server=http://{}", proxy.addr()));
    args.extend(PROXY_ARGS.iter().map(|a| (*a).to_owned()));
    let mut capabilities = Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({"binary": config.chromium, "args": args}),
    );
    capabilities.insert("pageLoadStrategy".to_owned(), Json::from("normal"));
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&url)
        .await
        .map_err(|e| {
            unavailable(format!(
                "chromium at {} did not start a session: {e}",
                config.chromium.display()
            ))
        })?;
    Ok(Session {
        client: Some(client),
        profile: Some(profile),
        proxy,
    })
}

fn require_file(path: &Path, what: &str, env: &str) -> Result<(), StepError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(unavailable(format!(
            "{what} not found at {} (install it with scripts/setup-browser.sh or set {env})",
            path.display()
        )))
    }
}

async fn free_port() -> Result<u16, StepError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| unavailable(format!("no free port for chromedriver: {e}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| unavailable(format!("no free port for chromedriver: {e}")))
}
