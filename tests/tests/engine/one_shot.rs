//! `rpaflow dev FLOW` as a one-shot process, and `rpaflow flow validate`.

use rpaflow_tests::{closed_port, rpaflow};
use serde_json::json;

use crate::{CLI_TIMEOUT, printed_outputs, temp_dir, write};

#[tokio::test]
async fn dev_runs_the_hello_example_once_and_exits_zero() {
    let data = temp_dir();
    let data_arg = data.path().to_str().expect("a UTF-8 temp path");
    let out = rpaflow(
        &[
            "dev",
            "examples/hello.yaml",
            "--input",
            "who=Ada",
            "--data",
            data_arg,
            "--listen",
            "127.0.0.1:0",
        ],
        CLI_TIMEOUT,
    )
    .await;
    out.expect_success();
    assert!(
        out.stdout
            .contains("rpaflow dev: serving gRPC on 127.0.0.1:"),
        "no serving line:\n{out}"
    );
    assert!(out.stdout.contains("flow hello v1 registered"), "{out}");
    assert!(
        out.stdout.contains("SUCCEEDED"),
        "no SUCCEEDED in the summary:\n{out}"
    );
    assert!(
        out.stdout
            .contains("count                succeeded        items 3/3"),
        "the for_each line is missing:\n{out}"
    );
    assert_eq!(
        printed_outputs(&out.stdout),
        json!({"greeting": "Hello, Ada!", "sum_of_squares": 14}),
        "{out}"
    );
}

#[tokio::test]
async fn dev_exits_non_zero_when_the_run_fails_or_the_flow_is_invalid() {
    let dir = temp_dir();
    let port = closed_port();
    let flow = write(
        dir.path(),
        "down.yaml",
        &format!(
            "name: down
steps:
  - id: call
    uses: http
    with: {{ url: 'http://127.0.0.1:{port}/nothing-here' }}
  - id: never
    uses: echo
    needs: call
"
        ),
    );
    let data = dir.path().join("data");
    let (flow_arg, data_arg) = (flow.to_str().expect("UTF-8"), data.to_str().expect("UTF-8"));
    let out = rpaflow(
        &[
            "dev",
            flow_arg,
            "--data",
            data_arg,
            "--listen",
            "127.0.0.1:0",
        ],
        CLI_TIMEOUT,
    )
    .await;
    out.expect_code(1);
    assert!(
        out.stdout.contains("FAILED"),
        "no FAILED in the summary:\n{out}"
    );
    assert!(
        out.stdout.contains("http_connect"),
        "the error code of the http step is not shown:\n{out}"
    );

    // A flow that does not validate stops before anything starts, with its diagnostics.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "name: bad\nsteps:\n  - id: a\n    uses: teleport\n",
    );
    let bad_arg = bad.to_str().expect("UTF-8");
    let out = rpaflow(
        &[
            "dev",
            bad_arg,
            "--data",
            data_arg,
            "--listen",
            "127.0.0.1:0",
        ],
        CLI_TIMEOUT,
    )
    .await;
    out.expect_code(1);
    assert!(
        out.stderr
            .contains(&format!("{bad_arg}:4:11: unknown step kind `teleport`")),
        "{out}"
    );
    assert!(
        !out.stdout.contains("serving gRPC"),
        "an invalid flow must stop before serving:\n{out}"
    );
}

// `rpaflow flow validate`

const BROKEN: &str = "name: broken
steps:
  - id: a
    uses: teleport
    colour: blue
  - id: b
    uses: sleep
    needs: [a, zzz]
    timeout: soon
    if: \"steps.a.output ==\"
";

#[tokio::test]
async fn validate_prints_every_problem_at_its_line_and_column() {
    let dir = temp_dir();
    let broken = write(dir.path(), "broken.yaml", BROKEN);
    let file = broken.to_str().expect("UTF-8");
    let out = rpaflow(&["flow", "validate", file], CLI_TIMEOUT).await;
    out.expect_code(1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let expected = [
        format!("{file}:4:11: unknown step kind `teleport`"),
        format!("{file}:5:5: unknown field `colour` in step `a`"),
        format!("{file}:8:12: step `b` needs unknown step `zzz`"),
        format!("{file}:9:14: bad duration `soon`"),
        format!("{file}:10:9: bad expression in `if`"),
    ];
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per problem expected:\n{out}"
    );
    for (line, want) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "expected a line starting with\n  {want}\ngot\n  {line}\n{out}"
        );
    }

    // Good files, including the shipped examples, pass; one bad file among good ones fails.
    let good = write(
        dir.path(),
        "good.yaml",
        "name: good\nsteps:\n  - { id: a, uses: echo, with: { x: 1 } }\n",
    );
    let good = good.to_str().expect("UTF-8");
    let out = rpaflow(
        &[
            "flow",
            "validate",
            good,
            "examples/hello.yaml",
            "examples/customer-service.yaml",
        ],
        CLI_TIMEOUT,
    )
    .await;
    out.expect_success();
    assert!(
        out.stdout
            .contains(&format!("{good}: ok (good v0, 1 steps)")),
        "{out}"
    );
    assert!(
        out.stdout.contains("examples/hello.yaml: ok (hello"),
        "{out}"
    );
    let out = rpaflow(&["flow", "validate", good, file], CLI_TIMEOUT).await;
    out.expect_code(1);
    assert!(
        out.stdout.contains(&format!("{good}: ok"))
            && out.stdout.contains(&format!("{file}:4:11:")),
        "{out}"
    );
}
