//! Where the `rpaflow` binary under test is: `$RPAFLOW_BIN` when set, else the workspace's own
//! build, brought up to date once per test binary with `cargo build -p rpaflow-cli --bin rpaflow`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the one build of the binary may take (a cold build on two cores is slow).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The workspace root (the folder above `tests/`).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the tests crate lives one folder below the workspace root")
            .to_path_buf()
    })
}

/// The `rpaflow` binary to test. Panics with cargo's output when it cannot be built.
pub fn rpaflow_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("RPAFLOW_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "RPAFLOW_BIN={} is not a file", bin.display());
            bin
        }
        None => build(),
    })
}

/// A command for the binary with the caller's `RPAFLOW_*` settings removed, so that a developer's
/// environment cannot change what the tests see; run from the workspace root.
pub(crate) fn command() -> Command {
    let mut cmd = Command::new(rpaflow_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RPAFLOW_") {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(workspace_root()).stdin(Stdio::null());
    cmd
}

/// Runs `cargo build` for the binary and returns the executable cargo reports.
fn build() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "-p",
            "rpaflow-cli",
            "--bin",
            "rpaflow",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "cannot run cargo to build the rpaflow binary (set RPAFLOW_BIN to use a built one)",
        );
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for cargo") {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "`cargo build -p rpaflow-cli` took over {BUILD_TIMEOUT:?}; cargo said:\n{}",
                crate::tail(&err, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "`cargo build -p rpaflow-cli --bin rpaflow` failed ({status}):\n{}",
        crate::tail(&err, 80)
    );
    out.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "rpaflow")
        .filter_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .next_back()
        .unwrap_or_else(|| {
            panic!(
                "cargo built rpaflow-cli but named no `rpaflow` executable; cargo said:\n{}",
                crate::tail(&err, 40)
            )
        })
}
