//! The end-to-end sandbox of rpaflow: helpers that start the real `rpaflow` binary as child
//! processes on port 0, talk to them over gRPC and through the CLI, and serve scripted HTTP APIs
//! for their `http` steps. The scenarios themselves live in `tests/*.rs` and assert only on what
//! a user could observe: exit codes, printed text, gRPC answers, run events, HTTP requests.
//!
//! Every wait has a timeout, and every failure panics with what went wrong plus the tail of the
//! process output, so a red test explains itself.
//!
//! # Running
//! `cargo test -p rpaflow-tests` builds the binary when needed (once per test binary) and runs
//! every scenario; nothing else needs to run first. Settings:
//! - `RPAFLOW_BIN`: test this `rpaflow` binary instead of building the workspace's.
//! - `RPAFLOW_CACHE`: where the Python test keeps its venv (default `~/.cache/rpaflow`).
//! - `PYTHON`: the interpreter that creates that venv (default `python3`).
//!
//! The `RPAFLOW_*` variables of the caller's environment are not passed to the processes under
//! test.
//!
//! # Layout
//! - `api`: [`served_methods`], every RPC of the services the orchestrator serves.
//! - `binary`: where the `rpaflow` binary is (`$RPAFLOW_BIN`, else built once per test binary).
//! - `browser`: [`Browser`], a headless Chromium over WebDriver, for the web console.
//! - `dev`: [`Dev`], one `rpaflow dev` process on its data directory ([`Dev::launch`],
//!   [`Dev::kill9`], [`Dev::restart`]) and the gRPC calls scenarios make.
//! - `events`: [`Events`], a run's events with counting helpers, and [`EventLog`], a live watcher.
//! - `http`: [`HttpServer`], a recording HTTP server that can be scripted to fail.
//! - `inference`: [`InferenceNode`], an `rpaflow inference` process serving the test model.
//! - `cli`: [`rpaflow`], the CLI run as a process.
//! - `worker`: [`WorkerProcess`], one `rpaflow worker` service on Kafka.
//! - [`kafka`]: [`kafka::Broker`], Apache Kafka (one node or a three-node cluster) for the distributed tests.

mod api;
mod binary;
mod browser;
mod cli;
mod dev;
mod events;
mod http;
mod inference;
pub mod kafka;
mod setup;
mod worker;

pub use api::served_methods;
pub use binary::{rpaflow_bin, workspace_root};
pub use browser::Browser;
pub use cli::{CliOutput, rpaflow, rpaflow_with_env};
pub use dev::{Dev, describe_run};
pub use events::{EventLog, Events};
pub use http::{
    HttpServer, Recorded, get as http_get, get_with as http_get_with, post_with as http_post_with,
};
pub use inference::InferenceNode;
pub use rpaflow_proto::v1 as pb;
pub use setup::{customer_api, get_json, printed_outputs, psql, setup_script};
pub use worker::{EGRESS_ALLOW_PRIVATE, WorkerProcess};

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines]\n"));
    }
    out.push_str(&all[start..].join("\n"));
    out
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    let port = listener
        .local_addr()
        .expect("a bound listener has an address")
        .port();
    drop(listener);
    port
}
