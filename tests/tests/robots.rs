//! The robots end to end: `rpaflow dev examples/web-form.yaml` signs in to a real web application
//! in headless Chromium, places an order, reads the confirmation off the page and records it in
//! the real PostgreSQL; the test then reads the application's and the database's state.

use std::process::Stdio;
use std::time::Duration;

use rpaflow_tests::{get_json, printed_outputs, psql, rpaflow, setup_script, workspace_root};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn the_web_form_robot_places_an_order_and_records_it() {
    setup_script("setup-browser.sh");
    setup_script("setup-postgres.sh");

    // The web application, on a free port.
    let mut app = tokio::process::Command::new("python3")
        .arg(workspace_root().join("examples/web-form/app.py"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start the web application");
    let mut lines = BufReader::new(app.stdout.take().expect("piped stdout")).lines();
    let base = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("web form app on ") {
                return url.trim().to_owned();
            }
        }
        panic!("the web application ended without serving");
    })
    .await
    .expect("the web application did not start in time");

    // A customer name that is also an injection attempt: it must be stored as data.
    let customer = format!("Robert'); DROP TABLE web_orders; -- {}", std::process::id());
    let data = tempfile::tempdir().expect("a temp dir");
    let app_input = format!("app={base}");
    let customer_input = format!("customer=\"{customer}\"");
    let out = rpaflow(
        &[
            "dev",
            "examples/web-form.yaml",
            "--input",
            &app_input,
            "--input",
            &customer_input,
            "--input",
            "product=gadget",
            "--input",
            "quantity=2",
            "--data",
            data.path().to_str().expect("a UTF-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        TIMEOUT,
    )
    .await;
    out.expect_success();
    let outputs = printed_outputs(&out.stdout);
    let confirmation = outputs["confirmation"]
        .as_str()
        .unwrap_or_else(|| panic!("no confirmation:\n{out}"))
        .to_owned();
    assert!(confirmation.starts_with("WF-"), "{out}");
    let receipt = outputs["receipt"]
        .as_str()
        .unwrap_or_else(|| panic!("no receipt:\n{out}"));
    let png = std::fs::read(receipt).unwrap_or_else(|e| panic!("no screenshot at {receipt}: {e}"));
    assert!(png.starts_with(b"\x89PNG"), "the receipt is not a PNG");

    // The application got the order the robot typed in.
    let orders = get_json(&format!("{base}/orders.json"));
    let placed: Vec<&Json> = orders["orders"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|o| o["customer"] == customer.as_str())
        .collect();
    assert_eq!(placed.len(), 1, "{orders}");
    assert_eq!(placed[0]["confirmation"], confirmation.as_str());
    assert_eq!(placed[0]["product"], "gadget");
    assert_eq!(placed[0]["quantity"], 2);

    // The database holds the same confirmation, and the customer name verbatim.
    let escaped = customer.replace('\'', "''");
    let row = psql(&format!(
        "SELECT product, quantity, confirmation FROM web_orders WHERE customer = '{escaped}'"
    ));
    assert_eq!(row, format!("gadget|2|{confirmation}"));
    assert_eq!(
        psql("SELECT to_regclass('web_orders') IS NOT NULL"),
        "t",
        "the table is gone"
    );
    let _ = app.kill().await;
}
