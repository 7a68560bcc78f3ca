//! The `rpaflow` CLI run as a process, as a person would run it.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// What one CLI run printed and how it ended.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with everything printed unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "expected exit code {code}:\n{self}"
        );
        self
    }

    /// Panics with everything printed unless the command exited 0.
    pub fn expect_success(&self) -> &Self {
        self.expect_code(0)
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ rpaflow {}", self.args.join(" "))?;
        writeln!(f, "exit: {}", self.status)?;
        writeln!(f, "--- stdout ---\n{}", crate::tail(&self.stdout, 120))?;
        write!(f, "--- stderr ---\n{}", crate::tail(&self.stderr, 60))
    }
}

/// Runs `rpaflow ARGS` from the workspace root; panics when it runs longer than `timeout`.
pub async fn rpaflow(args: &[&str], timeout: Duration) -> CliOutput {
    rpaflow_with_env(args, &[], timeout).await
}

/// [`rpaflow`] with `RPAFLOW_*` (or other) variables set for this run.
pub async fn rpaflow_with_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CliOutput {
    let mut cmd = tokio::process::Command::from(crate::binary::command());
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run rpaflow {}: {e}", args.join(" ")));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => CliOutput {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("cannot wait for rpaflow {}: {e}", args.join(" ")),
        // Dropping the future kills the process (kill_on_drop).
        Err(_) => panic!("rpaflow {} ran longer than {timeout:?}", args.join(" ")),
    }
}
