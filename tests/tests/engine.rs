//! End-to-end scenarios of the engine: each test starts its own `rpaflow dev` process (its own
//! data directory, ports from 0) and asserts on what a user can observe: exit codes, printed
//! text, gRPC answers, run events and the requests a scripted HTTP API received.
//!
//! # Layout
//! - `one_shot`: `rpaflow dev FLOW` (run once, exit code) and `rpaflow flow validate`.
//! - `crash`: SIGKILL mid-flight, restart on the same data, every run finishes exactly once.
//! - `runs`: idempotent start, cancel, fail and retry, approval.
//! - `client`: the CLI client commands, gRPC health and reflection.

#[path = "engine/client.rs"]
mod client;
#[path = "engine/crash.rs"]
mod crash;
#[path = "engine/one_shot.rs"]
mod one_shot;
#[path = "engine/runs.rs"]
mod runs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rpaflow_tests::{describe_run, pb};
use serde_json::Value as Json;
use tempfile::TempDir;

/// How long a CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a short run may take to finish.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("rpaflow-e2e-")
        .tempdir()
        .expect("cannot create a temporary directory")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

fn outputs(run: &pb::Run) -> Json {
    serde_json::from_str(&run.outputs_json).unwrap_or_else(|e| {
        panic!(
            "outputs of run {} are not JSON ({e}): {:?}",
            run.run_id, run.outputs_json
        )
    })
}

fn step<'r>(run: &'r pb::Run, id: &str) -> &'r pb::StepRun {
    run.steps
        .iter()
        .find(|s| s.step_id == id)
        .unwrap_or_else(|| panic!("run has no step `{id}`:\n{}", describe_run(run)))
}

/// The JSON after `outputs: ` in the text `rpaflow dev FLOW` prints at the end.
fn printed_outputs(stdout: &str) -> Json {
    let at = stdout
        .find("outputs: ")
        .unwrap_or_else(|| panic!("no `outputs:` in:\n{stdout}"));
    serde_json::from_str(stdout[at + "outputs: ".len()..].trim())
        .unwrap_or_else(|e| panic!("`outputs:` is not followed by JSON ({e}):\n{stdout}"))
}
