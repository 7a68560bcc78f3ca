//! A gRPC client that is not ours: Python stubs generated with grpcio-tools from
//! `proto/proto/rpaflow/v1/flow.proto` drive a live `rpaflow dev` (see
//! `tests/python/client_test.py`). This proves the contract works for any client, not only for
//! code built from the same Rust types.
//!
//! The virtual environment is cached in `${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}/venv-grpc` and
//! reused. The test fails (never skips) when Python, pip or protoc fail, with their output.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rpaflow_tests::{Dev, workspace_root};

/// Versions that exist on PyPI with wheels for current CPython on Linux.
const PACKAGES: [&str; 2] = ["grpcio==1.76.0", "grpcio-tools==1.76.0"];

struct Ran {
    ok: bool,
    text: String,
}

/// Runs a command to its end (killed after `timeout`); returns whether it exited 0 and everything
/// it printed.
async fn run(program: &Path, args: &[&str], envs: &[(&str, &Path)], timeout: Duration) -> Ran {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .current_dir(workspace_root());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let line = format!("{} {}", program.display(), args.join(" "));
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Ran {
                ok: false,
                text: format!("$ {line}\ncannot start: {e}"),
            };
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ran {
            ok: out.status.success(),
            text: format!(
                "$ {line}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        },
        Ok(Err(e)) => Ran {
            ok: false,
            text: format!("$ {line}\ncannot wait: {e}"),
        },
        Err(_) => Ran {
            ok: false,
            text: format!("$ {line}\nran longer than {timeout:?} and was killed"),
        },
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RPAFLOW_CACHE") {
        return PathBuf::from(dir);
    }
    let home =
        std::env::var_os("HOME").expect("HOME is not set; set RPAFLOW_CACHE to a cache folder");
    PathBuf::from(home).join(".cache").join("rpaflow")
}

/// The cached venv's python with grpcio and grpcio-tools, created when missing or broken.
async fn venv_python() -> PathBuf {
    let cache = cache_dir();
    let venv = cache.join("venv-grpc");
    let python = venv.join("bin").join("python");
    let probe = [
        "-c",
        "import grpc, grpc_tools.protoc; print('grpcio==' + grpc.__version__)",
    ];
    // A venv with other versions (an older pin) is rebuilt.
    let usable = |ran: &Ran| ran.ok && ran.text.contains(PACKAGES[0]);
    if python.exists() && usable(&run(&python, &probe, &[], Duration::from_secs(60)).await) {
        return python;
    }
    std::fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", cache.display()));
    // Build next to the final place and move it in, so a half-made venv is never reused.
    let building = cache.join(format!("venv-grpc.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let system_python =
        PathBuf::from(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()));
    let made = run(
        &system_python,
        &["-m", "venv", building.to_str().expect("a UTF-8 cache path")],
        &[],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        made.ok,
        "cannot create a Python venv (set PYTHON to a Python 3 interpreter):\n{}",
        made.text
    );
    let new_python = building.join("bin").join("python");
    let mut args = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    args.extend(PACKAGES);
    let installed = run(&new_python, &args, &[], Duration::from_secs(600)).await;
    if !installed.ok {
        let _ = std::fs::remove_dir_all(&building);
        panic!(
            "pip install {} failed:\n{}",
            PACKAGES.join(" "),
            installed.text
        );
    }
    let _ = std::fs::remove_dir_all(&venv);
    if std::fs::rename(&building, &venv).is_err() {
        // Another test process finished first; use the one in place.
        let _ = std::fs::remove_dir_all(&building);
    }
    let checked = run(&python, &probe, &[], Duration::from_secs(60)).await;
    assert!(
        usable(&checked),
        "the new venv at {} cannot import grpc and grpc_tools:\n{}",
        venv.display(),
        checked.text
    );
    python
}

#[tokio::test]
async fn a_python_grpc_client_registers_runs_and_watches_a_flow() {
    let python = venv_python().await;

    let stubs = tempfile::Builder::new()
        .prefix("rpaflow-pystubs-")
        .tempdir()
        .expect("cannot create a temporary directory");
    let stubs_dir = stubs.path().to_str().expect("a UTF-8 temp path");
    let proto_root = workspace_root().join("proto").join("proto");
    let include = format!("-I{}", proto_root.display());
    let (py_out, grpc_out) = (
        format!("--python_out={stubs_dir}"),
        format!("--grpc_python_out={stubs_dir}"),
    );
    let generated = run(
        &python,
        &[
            "-m",
            "grpc_tools.protoc",
            &include,
            &py_out,
            &grpc_out,
            "rpaflow/v1/flow.proto",
        ],
        &[],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        generated.ok,
        "generating Python stubs from flow.proto failed:\n{}",
        generated.text
    );
    assert!(
        stubs.path().join("rpaflow/v1/flow_pb2_grpc.py").is_file(),
        "protoc wrote no rpaflow/v1/flow_pb2_grpc.py:\n{}",
        generated.text
    );

    let dev = Dev::launch().await;
    let script = workspace_root()
        .join("tests")
        .join("python")
        .join("client_test.py");
    let server = dev.addr().to_string();
    let checked = run(
        &python,
        &[script.to_str().expect("a UTF-8 path"), "--server", &server],
        &[("PYTHONPATH", stubs.path())],
        Duration::from_secs(90),
    )
    .await;
    if !checked.ok || !checked.text.contains("\nPASS\n") {
        dev.fail(&format!(
            "the Python client's checks failed:\n{}",
            checked.text
        ));
    }
    eprintln!("{}", checked.text);
}
