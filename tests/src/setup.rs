//! What the end-to-end scenarios share beyond the processes: the project's set-up scripts, the
//! real PostgreSQL, and reading what `rpaflow dev` prints.

use std::collections::HashMap;

use serde_json::Value as Json;

/// Runs `scripts/NAME` (idempotent; installs or starts what it sets up) and returns the
/// `export KEY=VALUE` lines it printed. Fails loudly, never skips.
pub fn setup_script(name: &str) -> HashMap<String, String> {
    let out = std::process::Command::new("bash")
        .arg(crate::workspace_root().join("scripts").join(name))
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// One query on the machine's PostgreSQL (`test` database), rows as `a|b` lines.
pub fn psql(query: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-tAc",
            query,
        ])
        .output()
        .expect("cannot run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// GETs a JSON document (with Python's standard library, so no HTTP client is needed here).
pub fn get_json(url: &str) -> Json {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            url,
        ])
        .output()
        .expect("cannot run python3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{url} is not JSON ({e})"))
}

/// The run outputs `rpaflow dev FLOW` prints after `outputs: `.
pub fn printed_outputs(stdout: &str) -> Json {
    let at = stdout
        .find("outputs: ")
        .unwrap_or_else(|| panic!("no `outputs:` in:\n{stdout}"));
    serde_json::from_str(stdout[at + "outputs: ".len()..].trim())
        .unwrap_or_else(|e| panic!("`outputs:` is not followed by JSON ({e}):\n{stdout}"))
}

/// Starts the example's customer API on a free port; returns it and its base URL.
pub async fn customer_api() -> (tokio::process::Child, String) {
    let mut api = tokio::process::Command::new("python3")
        .arg(crate::workspace_root().join("examples/customer-api/server.py"))
        .args(["--port", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start the customer API");
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(api.stdout.take().expect("piped stdout")).lines();
    let base = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("customer API on ") {
                return url.trim().to_owned();
            }
        }
        panic!("the customer API ended without serving");
    })
    .await
    .expect("the customer API did not start in time");
    (api, base)
}
