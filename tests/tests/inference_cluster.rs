//! `llm` steps over three inference nodes (`rpaflow inference` processes) behind one worker pool
//! (`rpaflow dev`'s): under load one node is killed with SIGKILL and another drained with
//! SIGTERM; every step still succeeds, each with one accepted result, with the text the model
//! generates for its prompt, and every node took a share of the requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rpaflow_tests::{Dev, InferenceNode, pb, rpaflow, setup_script};
use serde_json::{Value as Json, json};

const TIMEOUT: Duration = Duration::from_secs(60);
/// One thread per node: three nodes share the machine's cores.
const THREADS: &[&str] = &["--threads", "1"];
const LOG: &[(&str, &str)] = &[("RUST_LOG", "info")];
/// Runs started at once.
const RUNS: usize = 36;
const PROMPT: &str = "Customer Ada wrote: my order arrived broken.\nOur reply:";

const FLOW: &str = r#"
name: cluster-draft
inputs:
  model: { type: string }
steps:
  - id: draft
    uses: llm
    timeout: 30s
    # A node killed mid-generation fails its steps as llm_interrupted: generated again here.
    retry: { max_attempts: 4, delay: 100ms, on: [llm_busy, llm_unavailable, llm_interrupted, timeout] }
    with:
      prompt: "Customer Ada wrote: my order arrived broken.\nOur reply:"
      model: "{{ inputs.model }}"
      max_new_tokens: 120
      greedy: true
outputs:
  text: "{{ steps.draft.output.text }}"
"#;

/// Generations a node finished, from its `/metrics`.
async fn finished(node: &InferenceNode) -> u64 {
    node.metric(r#"rpaflow_inference_requests_total{outcome="finished"}"#)
        .await as u64
}

fn signal(node: &InferenceNode, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &node.pid()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

fn output_text(run: &pb::Run) -> String {
    let outputs: Json = serde_json::from_str(&run.outputs_json).unwrap_or(Json::Null);
    outputs["text"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_steps_survive_a_killed_node_and_a_drained_one() {
    let env = setup_script("setup-inference.sh");
    let model = env["RPAFLOW_TEST_MODEL"].as_str();
    let model_name = std::path::Path::new(model)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a model directory name");
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        InferenceNode::start(THREADS, LOG),
        InferenceNode::start(THREADS, LOG),
        InferenceNode::start(THREADS, LOG)
    );
    let (mut a, mut b, c) = (a, b, c);
    // The list form, comma-separated in the variable of the single endpoint.
    let endpoints = format!("{},{},http://{}", a.grpc(), b.grpc(), c.grpc());
    let dev = Dev::launch_env(
        &[],
        &[
            ("RPAFLOW_WORKER__INFERENCE_ENDPOINT", endpoints.as_str()),
            ("RPAFLOW_WORKER__CONCURRENCY", "12"),
        ],
    )
    .await;
    dev.register(FLOW).await;

    // What the model generates for the prompt, asked of one node directly.
    let reference = rpaflow(
        &[
            "generate",
            "--server",
            c.grpc(),
            "--max-new-tokens",
            "120",
            "--greedy",
            PROMPT,
        ],
        TIMEOUT,
    )
    .await;
    reference.expect_success();
    // `generate` prints the text and a newline.
    let reference = reference
        .stdout
        .strip_suffix('\n')
        .unwrap_or_default()
        .to_owned();

    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(dev.run("cluster-draft", json!({"model": model_name})).await);
    }
    // Mid-load: once a few runs are done, kill one node and drain another.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let done = (finished(&a).await, finished(&b).await, finished(&c).await);
        if done.0 + done.1 + done.2 >= 6 && done.0 > 0 && done.1 > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress: {done:?}\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = finished(&a).await;
    a.start_kill();
    let before_drain = finished(&b).await;
    signal(&b, "-TERM");
    let drain_started = Instant::now();

    let mut texts = BTreeMap::new();
    let mut retried = 0;
    for run_id in &runs {
        let run = dev.wait_finished(run_id, TIMEOUT).await;
        assert_eq!(
            run.status(),
            pb::RunStatus::Succeeded,
            "{}\n{}",
            rpaflow_tests::describe_run(&run),
            dev.output()
        );
        *texts.entry(output_text(&run)).or_insert(0) += 1;
        let events = dev.events(run_id).await;
        // One accepted result per attempt, and one success: no step answered twice.
        for (unit, n) in events.results_per_attempt() {
            assert_eq!(n, 1, "{unit:?} of {run_id} has {n} results");
        }
        assert_eq!(events.count("task_succeeded"), 1, "{run_id}");
        let attempts = run.steps.iter().map(|s| s.attempt).max().unwrap_or(1);
        if attempts > 1 {
            retried += 1;
        }
    }
    // Every step's text is the model's text for the prompt: none cut short or mixed.
    assert_eq!(
        texts.keys().collect::<Vec<_>>(),
        vec![&reference],
        "{texts:?}"
    );

    let exit = tokio::time::timeout(Duration::from_secs(20), b.wait())
        .await
        .expect("the drained node did not exit")
        .expect("wait");
    assert!(exit.success(), "{exit:?}\n{}", b.log());
    let drained_in = drain_started.elapsed();
    let cut = b.log().contains("connections still open");
    let _ = a.wait().await;
    let after = finished(&c).await;
    eprintln!(
        "finished generations: killed node >= {before_kill}, drained node >= {before_drain}, \
         last node {after}; runs that needed another attempt: {retried}; the drained node exited \
         {drained_in:?} after SIGTERM (connections cut after the grace: {cut}); {:?} in all",
        started.elapsed()
    );
    assert!(
        before_kill > 0 && before_drain > 0 && after > 0,
        "the load spreads"
    );
    assert!(
        retried >= 1,
        "the killed node had generations in flight, which were generated again"
    );

    // A model no node serves: the step fails at once, naming it and the model served.
    let run = dev.run("cluster-draft", json!({"model": "gpt2-xl"})).await;
    let error = dev.wait_failed_error(&run, TIMEOUT).await;
    assert_eq!(error.code, "llm_unknown_model", "{error:?}");
    assert!(
        error.message.contains("`gpt2-xl`") && error.message.contains(model_name),
        "{error:?}"
    );
    drop(c);
}
