//! [`InferenceNode`]: an `rpaflow inference` process serving the test model that
//! `scripts/setup-inference.sh` makes, on free ports, for the tests that need a real node.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

/// How long a node may take to load its model and serve.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One `rpaflow inference` process with its admin listener; killed when dropped.
pub struct InferenceNode {
    child: tokio::process::Child,
    grpc: String,
    admin: String,
    log: Arc<Mutex<String>>,
}

impl InferenceNode {
    /// Starts `rpaflow inference --model TEST_MODEL --onnxruntime ORT --listen 127.0.0.1:0
    /// --admin-listen 127.0.0.1:0 ARGS...` with `env`, and waits until it serves.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let setup = crate::setup_script("setup-inference.sh");
        Self::start_with_model(&setup["RPAFLOW_TEST_MODEL"], args, env).await
    }

    /// [`InferenceNode::start`] serving the model directory `model` instead of the test model.
    pub async fn start_with_model(model: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let setup = crate::setup_script("setup-inference.sh");
        let mut child = tokio::process::Command::new(crate::rpaflow_bin())
            .args([
                "inference",
                "--model",
                model,
                "--onnxruntime",
                setup["ORT_DYLIB_PATH"].as_str(),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start rpaflow inference");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let kept = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut admin, mut grpc) = (None, None);
        tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("rpaflow inference: admin on ") {
                    admin = Some(url.trim().to_owned());
                }
                if let Some(addr) = line.strip_prefix("rpaflow inference: serving gRPC on ") {
                    grpc = Some(addr.trim().to_owned());
                    return;
                }
            }
            panic!("rpaflow inference ended without serving");
        })
        .await
        .expect("rpaflow inference did not start in time");
        // Keep reading, so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            grpc: grpc.expect("a gRPC address"),
            admin: admin.expect("the admin address, printed before serving"),
            log,
        }
    }

    /// The gRPC address, `127.0.0.1:PORT`.
    pub fn grpc(&self) -> &str {
        &self.grpc
    }

    /// The admin listener, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> String {
        self.child.id().expect("the node runs").to_string()
    }

    /// What the node wrote to standard error so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills the node (SIGKILL) and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGKILL without waiting.
    pub fn start_kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// A counter or gauge of the node's `/metrics` (`0` when the series is absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, text) = crate::http_get(&format!("{}/metrics", self.admin)).await;
        assert_eq!(status, 200, "{text}");
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().unwrap_or(0.0))
    }
}
