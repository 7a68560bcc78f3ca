//! [`Dev`]: one `rpaflow dev --keep-running` process (or one `rpaflow orchestrator` service) on a
//! data directory, and the gRPC calls the scenarios make against it.

use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tempfile::TempDir;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::events::{EventLog, Events};
use crate::pb;
use crate::pb::flow_service_client::FlowServiceClient;

/// How long a process may take to print its serving line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What `rpaflow dev` and `rpaflow orchestrator` print once their gRPC API accepts connections:
/// `rpaflow dev: serving gRPC on ADDR ...`.
const SERVING: &str = ": serving gRPC on ";
/// How many lines of process output a failure message shows.
const TAIL_LINES: usize = 150;

/// Everything the processes of one [`Dev`] printed, every line tagged with its process and stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputBuffer(Arc<Mutex<String>>);

impl OutputBuffer {
    pub(crate) fn push(&self, line: &str) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.push_str(line);
        buf.push('\n');
    }

    pub(crate) fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An `rpaflow dev` process serving gRPC on `127.0.0.1:<free port>`, killed when dropped.
///
/// The data directory is a fresh temporary one (removed on drop) unless given; [`Dev::restart`]
/// starts a new process on the same directory, as an operator would after a crash.
pub struct Dev {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    _temp: Option<TempDir>,
    output: OutputBuffer,
    drains: Vec<std::thread::JoinHandle<()>>,
    /// One connection to the current process, shared by every call (made on first use).
    channel: Option<Channel>,
    /// How many processes this handle has started (1 for the first).
    generation: u32,
    /// More `rpaflow dev` arguments, for every start.
    extra: Vec<String>,
    /// The command and its first arguments: `dev --keep-running` or `orchestrator`.
    mode: Vec<String>,
    /// More environment variables, for every start.
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dev")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Dev {
    /// Starts a process on a new temporary data directory.
    pub async fn launch() -> Self {
        Self::launch_with(&[]).await
    }

    /// Starts a process on a new temporary data directory, with more `rpaflow dev` arguments
    /// (kept for restarts).
    pub async fn launch_with(args: &[&str]) -> Self {
        Self::start_temp(&["dev", "--keep-running"], args, &[]).await
    }

    /// Starts `rpaflow dev --keep-running ARGS...` on a new temporary data directory with `env`
    /// set (e.g. `RPAFLOW_ORCHESTRATOR__MAX_ACTIVE_RUNS`), kept for restarts.
    pub async fn launch_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_temp(&["dev", "--keep-running"], args, env).await
    }

    /// Starts the orchestrator service, `rpaflow orchestrator --kafka BROKERS ARGS...`, on a new
    /// temporary data directory, with `env` set; every call of a [`Dev`] works against it.
    pub async fn orchestrator(brokers: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_temp(&["orchestrator", "--kafka", brokers], args, env).await
    }

    /// Starts `rpaflow MODE... --listen 127.0.0.1:0 --data TEMP ARGS...` with `env`; mode, arguments
    /// and environment are kept for restarts.
    async fn start_temp(mode: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let temp = tempfile::Builder::new()
            .prefix("rpaflow-e2e-")
            .tempdir()
            .expect("cannot create a temporary data directory");
        let mut dev = Self::new_in(temp.path());
        dev.mode = mode.iter().map(|a| (*a).to_owned()).collect();
        dev.extra = args.iter().map(|a| (*a).to_owned()).collect();
        dev.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        dev._temp = Some(temp);
        dev.spawn().await;
        dev
    }

    fn new_in(data_dir: &Path) -> Self {
        Self {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            output: OutputBuffer::default(),
            drains: Vec::new(),
            channel: None,
            generation: 0,
            extra: Vec::new(),
            mode: vec!["dev".into(), "--keep-running".into()],
            env: Vec::new(),
        }
    }

    async fn spawn(&mut self) {
        self.generation += 1;
        let tag = format!("{}#{}", self.mode[0], self.generation);
        let mut child = crate::binary::command()
            .args(&self.mode)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("RPAFLOW_TELEMETRY__LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            // `rpaflow orchestrator` turns API tokens on by default; the scenarios that test
            // them (tests/tests/auth.rs) turn them on again through `env`.
            .env("RPAFLOW_AUTH__ENABLED", "false")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", crate::rpaflow_bin().display()));
        self.output.push(&format!(
            "[{tag}] started pid {} on {}",
            child.id(),
            self.data_dir.display()
        ));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        self.drains.push(drain(
            stdout,
            format!("[{tag} out] "),
            self.output.clone(),
            Some(ready_tx),
        ));
        self.drains.push(drain(
            stderr,
            format!("[{tag} err] "),
            self.output.clone(),
            None,
        ));
        self.child = Some(child);
        self.channel = None;
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(addr)) => {
                self.addr = addr;
                let endpoint = Channel::from_shared(self.url()).expect("a valid URI");
                self.channel = Some(endpoint.connect_lazy());
            }
            Ok(Err(_)) => {
                // Its stdout closed: it exited, or is about to.
                let mut status = None;
                for _ in 0..50 {
                    status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    if status.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
                self.kill9();
                self.fail(&format!(
                    "{tag} exited ({status:?}) before it printed `{SERVING}ADDR`"
                ));
            }
            Err(_) => {
                self.kill9();
                self.fail(&format!(
                    "{tag} printed no `{SERVING}ADDR` line within {START_TIMEOUT:?}"
                ));
            }
        }
    }

    /// Panics with `message` and the tail of everything the processes printed.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- rpaflow dev output ({}) ---\n{}\n--- end of output ---",
            self.data_dir.display(),
            crate::tail(&self.output(), TAIL_LINES)
        )
    }

    /// Everything the processes printed so far.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// The gRPC address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC address as a URL, for `--server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The webhook endpoint of the current process, `http://127.0.0.1:PORT`, from the
    /// `webhooks on http://ADDR` line it printed (started with `--hooks-listen`).
    pub fn hooks_url(&self) -> String {
        const HOOKS: &str = ": webhooks on ";
        let output = self.output();
        // The current process printed its line last (before its serving line).
        output
            .lines()
            .rev()
            .find_map(|line| line.split_once(HOOKS).map(|(_, url)| url.trim().to_owned()))
            .unwrap_or_else(|| self.fail("the process printed no `webhooks on ADDR` line"))
    }

    /// The admin listener of the current process, `http://127.0.0.1:PORT`, from the
    /// `admin on http://ADDR` line it printed (started with `RPAFLOW_ADMIN__LISTEN`).
    pub fn admin_url(&self) -> String {
        const ADMIN: &str = ": admin on ";
        self.output()
            .lines()
            .rev()
            .find_map(|line| line.split_once(ADMIN).map(|(_, url)| url.trim().to_owned()))
            .unwrap_or_else(|| self.fail("the process printed no `admin on ADDR` line"))
    }

    /// Sends SIGTERM (a graceful stop: the process drains), without waiting.
    pub fn terminate(&self) {
        let Some(child) = &self.child else {
            self.fail("the process is not running");
        };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot send SIGTERM to {}",
            child.id()
        );
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("the process was started");
            if let Some(status) = child.try_wait().expect("cannot wait for the process") {
                self.child = None;
                self.channel = None;
                self.join_drains();
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("the process did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Sends SIGKILL (no chance to flush or drain) and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let status = child.wait();
            self.output.push(&format!(
                "[{}#{}] killed: {status:?}",
                self.mode[0], self.generation
            ));
        }
        self.channel = None;
        self.join_drains();
    }

    /// Kills the process if it still runs, then starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    fn join_drains(&mut self) {
        for handle in self.drains.drain(..) {
            let _ = handle.join();
        }
    }

    /// `rpaflow ARGS --server URL --token TOKEN --output json` against this process, its
    /// answer parsed; panics with the command's output when it fails.
    pub async fn cli_json(&self, token: &str, args: &[&str]) -> Json {
        let url = self.url();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--server", &url, "--token", token, "--output", "json"]);
        let out = crate::rpaflow(&full, Duration::from_secs(30)).await;
        out.expect_success();
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// A client of the current process (clients share one connection).
    pub async fn client(&self) -> FlowServiceClient<Channel> {
        FlowServiceClient::new(self.channel().await)
    }

    /// The connection to the current process, for any gRPC service (health, reflection).
    pub async fn channel(&self) -> Channel {
        match &self.channel {
            Some(channel) => channel.clone(),
            None => self.fail("the process is not running (killed and not restarted)"),
        }
    }

    /// Registers a flow; panics with the server's diagnostics when it is refused.
    pub async fn register(&self, source: &str) -> pb::Flow {
        let req = pb::RegisterFlowRequest {
            source: source.to_owned(),
            file_name: "flow.yaml".into(),
        };
        match self.client().await.register_flow(req).await {
            Ok(resp) => resp
                .into_inner()
                .flow
                .unwrap_or_else(|| self.fail("RegisterFlow answered without a flow")),
            Err(status) => self.fail(&format!(
                "RegisterFlow refused the flow: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }

    /// Starts a run of the latest version of `flow`; returns the run and whether it is new.
    pub async fn start(&self, flow: &str, inputs: Json, key: &str) -> (pb::Run, bool) {
        let req = pb::StartRunRequest {
            flow: flow.to_owned(),
            version: 0,
            inputs_json: inputs.to_string(),
            idempotency_key: key.to_owned(),
        };
        match self.client().await.start_run(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                (
                    resp.run
                        .unwrap_or_else(|| self.fail("StartRun answered without a run")),
                    resp.created,
                )
            }
            Err(status) => self.fail(&format!(
                "StartRun of `{flow}` failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }

    /// Starts a new run (no idempotency key) and returns its id.
    pub async fn run(&self, flow: &str, inputs: Json) -> String {
        self.start(flow, inputs, "").await.0.run_id
    }

    pub async fn get(&self, run_id: &str) -> pb::Run {
        match self
            .client()
            .await
            .get_run(pb::GetRunRequest {
                run_id: run_id.to_owned(),
            })
            .await
        {
            Ok(run) => run.into_inner(),
            Err(status) => self.fail(&format!(
                "GetRun {run_id} failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    }

    /// Polls GetRun until `done` holds; panics after `timeout` with the last state seen.
    pub async fn wait_for(
        &self,
        run_id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&pb::Run) -> bool,
    ) -> pb::Run {
        let started = Instant::now();
        let mut client = self.client().await;
        loop {
            let run = match client
                .get_run(pb::GetRunRequest {
                    run_id: run_id.to_owned(),
                })
                .await
            {
                Ok(run) => run.into_inner(),
                Err(status) => self.fail(&format!(
                    "GetRun {run_id} failed while waiting for {what}: {:?}: {}",
                    status.code(),
                    status.message()
                )),
            };
            if done(&run) {
                return run;
            }
            if started.elapsed() > timeout {
                self.fail(&format!(
                    "run {run_id}: no {what} within {timeout:?}; last state:\n{}",
                    describe_run(&run)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the run is no longer running and returns it.
    pub async fn wait_finished(&self, run_id: &str, timeout: Duration) -> pb::Run {
        self.wait_for(run_id, timeout, "end of the run", |run| {
            !matches!(run.status(), pb::RunStatus::Running | pb::RunStatus::Queued)
        })
        .await
    }

    /// Approves step `step` of a run (as user `test`); panics with the output when refused.
    pub async fn approve(&self, run_id: &str, step: &str) {
        self.client()
            .await
            .signal_run(pb::SignalRunRequest {
                run_id: run_id.to_owned(),
                step_id: step.to_owned(),
                approve: true,
                comment: String::new(),
                by: "test".into(),
            })
            .await
            .unwrap_or_else(|s| self.fail(&format!("approving {run_id}/{step} failed: {s:?}")));
    }

    /// Waits until the run finished and asserts it succeeded.
    pub async fn wait_succeeded(&self, run_id: &str, timeout: Duration) -> pb::Run {
        let run = self.wait_finished(run_id, timeout).await;
        if run.status() != pb::RunStatus::Succeeded {
            let events = self.events(run_id).await;
            self.fail(&format!(
                "run {run_id} did not succeed:\n{}\nevents:\n{events}",
                describe_run(&run)
            ));
        }
        run
    }

    /// Waits until the run finished, asserts it failed, and returns the run's error message.
    pub async fn wait_failed(&self, run_id: &str, timeout: Duration) -> String {
        self.wait_failed_error(run_id, timeout).await.message
    }

    /// Waits until the run finished, asserts it failed, and returns the run's error.
    pub async fn wait_failed_error(&self, run_id: &str, timeout: Duration) -> pb::StepError {
        let run = self.wait_finished(run_id, timeout).await;
        if run.status() != pb::RunStatus::Failed {
            self.fail(&format!(
                "run {run_id} did not fail:\n{}",
                describe_run(&run)
            ));
        }
        run.error
            .unwrap_or_else(|| self.fail(&format!("run {run_id} failed without an error")))
    }

    /// Waits until step `step` of the run has `status`.
    pub async fn wait_step(
        &self,
        run_id: &str,
        step: &str,
        status: pb::StepStatus,
        timeout: Duration,
    ) -> pb::Run {
        let what = format!("step `{step}` in {status:?}");
        self.wait_for(run_id, timeout, &what, |run| {
            run.steps
                .iter()
                .any(|s| s.step_id == step && s.status() == status)
        })
        .await
    }

    /// Every event of the run: WatchRun from the start until the stream ends (the run finished).
    pub async fn events(&self, run_id: &str) -> Events {
        let timeout = Duration::from_secs(30);
        let req = pb::WatchRunRequest {
            run_id: run_id.to_owned(),
            from_seq: 0,
        };
        let mut stream = match self.client().await.watch_run(req).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => self.fail(&format!(
                "WatchRun {run_id} failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        };
        let mut events = Vec::new();
        let collect = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => events.push(event),
                    Err(status) => return Err(status),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(Ok(())) => Events(events),
            Ok(Err(status)) => self.fail(&format!("WatchRun {run_id} broke off: {:?}: {}\nevents so far:\n{}", status.code(), status.message(), Events(events))),
            Err(_) => self.fail(&format!("WatchRun {run_id} did not end within {timeout:?} (is the run still going?); events so far:\n{}", Events(events))),
        }
    }

    /// Follows the run's events in the background (see [`EventLog`]).
    pub async fn watch(&self, run_id: &str) -> EventLog {
        let client = self.client().await;
        EventLog::spawn(client, run_id)
    }

    /// Every run of `flow` in `status` ("" for all), newest first, page by page.
    pub async fn list_runs(&self, flow: &str, status: &str) -> Vec<pb::Run> {
        let mut client = self.client().await;
        let mut runs = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = pb::ListRunsRequest {
                flow: flow.to_owned(),
                status: status.to_owned(),
                page_size: 1000,
                page_token,
            };
            let page = match client.list_runs(req).await {
                Ok(resp) => resp.into_inner(),
                Err(e) => self.fail(&format!("ListRuns failed: {:?}: {}", e.code(), e.message())),
            };
            runs.extend(page.runs);
            if page.next_page_token.is_empty() {
                return runs;
            }
            page_token = page.next_page_token;
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies a pipe into the buffer line by line, so the process never blocks on a full pipe; the
/// first serving line's address goes to `ready`.
pub(crate) fn drain(
    pipe: impl Read + Send + 'static,
    prefix: String,
    output: OutputBuffer,
    mut ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            output.push(&format!("{prefix}{text}"));
            if text.starts_with("rpaflow ")
                && let Some((_, rest)) = text.split_once(SERVING)
                && let Some(addr) = rest.split_whitespace().next().and_then(|a| a.parse().ok())
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(addr);
            }
        }
    })
}

/// A run as a few readable lines, for failure messages.
pub fn describe_run(run: &pb::Run) -> String {
    let mut out = format!(
        "run {} {} v{} {:?}",
        run.run_id,
        run.flow,
        run.flow_version,
        run.status()
    );
    if let Some(e) = &run.error {
        out.push_str(&format!(" error {}: {}", e.code, e.message));
    }
    for s in &run.steps {
        out.push_str(&format!(
            "\n  {:<12} {:?} attempt {} items {}/{}",
            s.step_id,
            s.status(),
            s.attempt,
            s.items_done,
            s.items_total
        ));
        if let Some(e) = &s.error {
            out.push_str(&format!(" error {}: {}", e.code, e.message));
        }
    }
    if !run.outputs_json.is_empty() {
        out.push_str(&format!("\n  outputs {}", run.outputs_json));
    }
    out
}
