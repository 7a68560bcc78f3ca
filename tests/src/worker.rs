//! [`WorkerProcess`]: one `rpaflow worker` service on Kafka, as a child process.

use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::dev::{OutputBuffer, drain};

/// How long a worker may take to join its pools.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What a worker prints in its log for every step it ran to success.
const STEP_SUCCEEDED: &str = "step succeeded";
/// The egress switch the harness turns on for every worker it starts.
pub const EGRESS_ALLOW_PRIVATE: &str = "RPAFLOW_WORKER__EGRESS__ALLOW_PRIVATE";

/// An `rpaflow worker --kafka BROKERS --id ID` process, killed when dropped.
pub struct WorkerProcess {
    id: String,
    child: Option<Child>,
    output: OutputBuffer,
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("id", &self.id)
            .finish()
    }
}

impl WorkerProcess {
    /// Starts a worker with more arguments and environment variables, and waits until it has
    /// joined its pools.
    ///
    /// The scenarios' services (HTTP servers, PostgreSQL, web pages) listen on loopback, which a
    /// worker's production egress policy denies: test workers opt in with
    /// `RPAFLOW_WORKER__EGRESS__ALLOW_PRIVATE=true`; `env` may set it back to `false`.
    pub async fn start(brokers: &str, id: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = crate::binary::command()
            .args(["worker", "--kafka", brokers, "--id", id])
            .args(args)
            .env("RPAFLOW_TELEMETRY__LOG_LEVEL", "rpaflow_worker=debug,info")
            .env("NO_COLOR", "1")
            .env(EGRESS_ALLOW_PRIVATE, "true")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", crate::rpaflow_bin().display()));
        let output = OutputBuffer::default();
        let drains = vec![
            drain(
                child.stdout.take().expect("stdout is piped"),
                format!("[{id} out] "),
                output.clone(),
                None,
            ),
            drain(
                child.stderr.take().expect("stderr is piped"),
                format!("[{id} err] "),
                output.clone(),
                None,
            ),
        ];
        let worker = Self {
            id: id.to_owned(),
            child: Some(child),
            output,
            drains,
        };
        let ready = format!("rpaflow worker {id}: serving queues");
        let started = Instant::now();
        while !worker.output().contains(&ready) {
            if started.elapsed() > START_TIMEOUT {
                worker.fail(&format!(
                    "worker {id} did not join its pools in {START_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker
    }

    /// Whether the process was neither killed nor stopped by this handle.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Steps this worker ran to success, from its log.
    pub fn steps_succeeded(&self) -> usize {
        self.output().matches(STEP_SUCCEEDED).count()
    }

    /// Panics with `message` and the tail of the worker's output.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- worker {} output ---\n{}\n--- end of output ---",
            self.id,
            crate::tail(&self.output(), 80)
        )
    }

    /// SIGKILL: no draining, no commits, no goodbye to the group.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for drain in self.drains.drain(..) {
            let _ = drain.join();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the process to drain and exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            self.fail("the worker is not running");
        };
        let pid = child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "cannot send SIGTERM to {pid}"
        );
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                for drain in self.drains.drain(..) {
                    let _ = drain.join();
                }
                return status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                self.child = Some(child);
                self.fail(&format!(
                    "worker did not exit within {timeout:?} of SIGTERM"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
