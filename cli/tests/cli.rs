//! The `rpaflow` binary's own commands that need no server: what a person at a terminal sees.
//!
//! Being an integration test of `rpaflow-cli`, this also makes `cargo test --workspace` build
//! `target/debug/rpaflow` with the workspace's features, so the end-to-end tests in `rpaflow-tests`
//! can run that binary instead of a second build of every dependency (scripts/test.sh).

use std::process::{Command, Output, Stdio};

fn rpaflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rpaflow"))
        .args(args)
        .env_remove("RPAFLOW_TOKEN")
        .env_remove("RPAFLOW_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("the rpaflow binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generate_key_writes_a_private_key_once_and_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.key");
    let file = path.to_str().unwrap();

    let out = rpaflow(&["secret", "generate-key", file]);
    assert!(
        out.status.success(),
        "generate-key failed: {}",
        stderr(&out)
    );
    let key = std::fs::read_to_string(&path).unwrap();
    // 32 random bytes in standard base64, one line.
    assert_eq!(
        key.trim_end().len(),
        44,
        "not a 32-byte base64 key: {key:?}"
    );
    assert!(key.ends_with('\n'));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key file is readable by others: {mode:o}");
    }

    // A second key to the same file is refused, names the file, and leaves the first key intact.
    let again = rpaflow(&["secret", "generate-key", file]);
    assert!(!again.status.success(), "a key file was replaced");
    assert!(
        stderr(&again).contains(file),
        "the error does not name the file: {}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key);

    // Two keys are never the same.
    let other = dir.path().join("other.key");
    assert!(
        rpaflow(&["secret", "generate-key", other.to_str().unwrap()])
            .status
            .success()
    );
    assert_ne!(std::fs::read_to_string(&other).unwrap(), key);
}

#[test]
fn a_client_command_without_a_server_says_where_it_looked() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let out = rpaflow(&["run", "list", "--server", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the orchestrator at http://127.0.0.1:1"),
        "unclear error: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "printed something on stdout: {:?}",
        out.stdout
    );
}

#[test]
fn generate_passes_a_negative_temperature_on_to_the_node() {
    // The node names what is wrong with a parameter; the argument parser must not take `-1` for
    // a flag first. Nothing listens on port 1, so getting as far as connecting proves it parsed.
    let out = rpaflow(&[
        "generate",
        "--server",
        "127.0.0.1:1",
        "--temperature",
        "-1",
        "--top-p",
        "-0.5",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        !err.contains("unexpected argument") && !err.contains("Usage:"),
        "the parser refused the value: {err}"
    );
    assert!(
        err.contains("127.0.0.1:1"),
        "no connection was tried: {err}"
    );
}
