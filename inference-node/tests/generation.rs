//! Generation on the real thing: ONNX Runtime loaded through `ort`, the test GPT-2 models, checked
//! against an independent Python onnxruntime loop.

mod common;

use common::{Client, client, greedy, node, reference, request, setup};
use futures::StreamExt;
use rpaflow_proto::v1 as pb;

const PROMPTS: [(&str, u32); 5] = [
    ("Hi", 24),
    ("Hello, world!", 16),
    (
        "The customer wrote about a late delivery and asked for a refund of order 1234",
        20,
    ),
    ("Héllo 日本語 — ünïcödé text", 12),
    ("a", 30),
];

async fn unary(
    client: &mut Client,
    prompt: &str,
    params: pb::GenerationParams,
) -> pb::GenerateResponse {
    client
        .generate(request(prompt, params))
        .await
        .unwrap_or_else(|e| panic!("generate {prompt:?}: {e}"))
        .into_inner()
}

/// Streams a request and puts the chunks together as a unary answer would be.
async fn streamed(
    client: &mut Client,
    prompt: &str,
    params: pb::GenerationParams,
) -> (String, Vec<u32>, i32, pb::GenerateSummary, usize) {
    let mut stream = client
        .generate_stream(request(prompt, params))
        .await
        .unwrap_or_else(|e| panic!("generate_stream {prompt:?}: {e}"))
        .into_inner();
    let (mut text, mut ids, mut reason, mut summary, mut chunks) =
        (String::new(), Vec::new(), 0, None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("stream {prompt:?}: {e}"));
        assert!(summary.is_none(), "a chunk after the last one");
        assert!(
            !chunk.text.contains('\u{FFFD}'),
            "a chunk split a character: {:?}",
            chunk.text
        );
        text.push_str(&chunk.text);
        ids.push(chunk.token_id);
        chunks += 1;
        if let Some(r) = chunk.finish_reason {
            reason = r;
            summary = chunk.summary;
        }
    }
    (
        text,
        ids,
        reason,
        summary.unwrap_or_else(|| panic!("no last chunk for {prompt:?}")),
        chunks,
    )
}

async fn check_against_reference(model: &std::path::Path, max_batch_size: usize) {
    let expected = reference(model, &PROMPTS);
    let node = common::node_with(common::engine_config(model, max_batch_size, 64)).await;
    let mut c = client(&node).await;

    // Alone: one request at a time.
    for ((prompt, n), want) in PROMPTS.iter().zip(&expected) {
        let got = unary(&mut c, prompt, greedy(*n)).await;
        assert_eq!(
            got.prompt_tokens as usize,
            want.prompt_ids.len(),
            "prompt tokens of {prompt:?}"
        );
        assert_eq!(got.token_ids, want.token_ids, "alone: tokens of {prompt:?}");
        assert_eq!(got.text, want.text, "alone: text of {prompt:?}");
        assert_eq!(got.finish_reason, pb::FinishReason::Length as i32);
    }

    // Together: every prompt at once, several times over, so that they prefill together, join a
    // running batch, and leave it at different steps.
    let before = c
        .model_info(pb::ModelInfoRequest {})
        .await
        .map(|r| r.into_inner().stats)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut calls = Vec::new();
    for round in 0..3 {
        for (i, (prompt, n)) in PROMPTS.iter().enumerate() {
            let mut c = c.clone();
            calls.push(tokio::spawn(async move {
                (i, round, unary(&mut c, prompt, greedy(*n)).await)
            }));
        }
    }
    for call in calls {
        let (i, round, got) = call.await.unwrap_or_else(|e| panic!("request task: {e}"));
        assert_eq!(
            got.token_ids, expected[i].token_ids,
            "batched (round {round}): tokens of {:?}",
            PROMPTS[i].0
        );
        assert_eq!(
            got.text, expected[i].text,
            "batched (round {round}): text of {:?}",
            PROMPTS[i].0
        );
    }
    let after = c
        .model_info(pb::ModelInfoRequest {})
        .await
        .map(|r| r.into_inner().stats)
        .ok()
        .flatten()
        .unwrap_or_default();
    let steps = after.decode_steps - before.decode_steps;
    let rows = after.batch_rows - before.batch_rows;
    assert!(
        rows as f64 / steps as f64 > 2.0,
        "the requests were not batched: {rows} rows in {steps} steps"
    );
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_matches_the_onnxruntime_reference_alone_and_batched() {
    check_against_reference(&setup().model, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float16_model_matches_its_reference_too() {
    check_against_reference(&setup().model_fp16, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_unary_agree() {
    let node = node(8, 16).await;
    let mut c = client(&node).await;
    let sampled = pb::GenerationParams {
        max_new_tokens: Some(40),
        temperature: Some(0.9),
        top_k: Some(50),
        top_p: Some(0.95),
        repetition_penalty: Some(1.3),
        seed: Some(11),
        ..Default::default()
    };
    for (prompt, params) in [
        ("Hello, world!", greedy(30)),
        ("Héllo 日本語", greedy(25)),
        ("Dear customer,", sampled),
    ] {
        let seeded = params.seed.is_some();
        let u = unary(&mut c, prompt, params.clone()).await;
        let (text, ids, reason, summary, chunks) = streamed(&mut c, prompt, params).await;
        assert_eq!(text, u.text, "text of {prompt:?}");
        assert_eq!(ids, u.token_ids, "tokens of {prompt:?}");
        assert_eq!(reason, u.finish_reason);
        assert_eq!(chunks as u32, u.generated_tokens, "one chunk per token");
        assert_eq!(summary.generated_tokens, u.generated_tokens);
        assert_eq!(summary.prompt_tokens, u.prompt_tokens);
        if seeded {
            assert_eq!(summary.seed, u.seed);
        }
    }
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_ends_the_text_before_it() {
    let node = node(8, 16).await;
    let mut c = client(&node).await;
    let full = unary(&mut c, "Hello, world!", greedy(30)).await;
    // A stop sequence from the middle of the greedy text (" heights" in the test model's output).
    let words: Vec<&str> = full.text.split_inclusive(' ').collect();
    assert!(words.len() > 3, "too short to cut: {:?}", full.text);
    let cut = full.text.find(words[words.len() / 2].trim()).unwrap_or(0);
    let stop = full.text[cut..].chars().take(4).collect::<String>();
    let first = full.text.find(&stop).unwrap_or(cut);
    let params = pb::GenerationParams {
        stop: vec!["zzzz-never".into(), stop.clone()],
        ..greedy(30)
    };
    let got = unary(&mut c, "Hello, world!", params.clone()).await;
    assert_eq!(
        got.finish_reason,
        pb::FinishReason::Stop as i32,
        "stop {stop:?} in {:?}",
        full.text
    );
    assert_eq!(got.text, full.text[..first], "text before {stop:?}");
    assert!(got.token_ids.len() < full.token_ids.len());
    assert_eq!(got.token_ids[..], full.token_ids[..got.token_ids.len()]);
    let (text, _, reason, _, _) = streamed(&mut c, "Hello, world!", params).await;
    assert_eq!((text, reason), (got.text, got.finish_reason));
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_sampled_output() {
    let node = node(16, 64).await;
    let mut c = client(&node).await;
    let params = |seed| pb::GenerationParams {
        max_new_tokens: Some(32),
        temperature: Some(1.0),
        top_k: Some(100),
        top_p: Some(0.9),
        seed: Some(seed),
        ..Default::default()
    };
    let first = unary(&mut c, "Dear customer,", params(7)).await;
    assert_eq!(first.seed, 7);
    // Again, alone and then among other requests in the same batch.
    let again = unary(&mut c, "Dear customer,", params(7)).await;
    assert_eq!(again.token_ids, first.token_ids);
    let mut calls = Vec::new();
    for i in 0..6u64 {
        let mut c = c.clone();
        let p = if i % 2 == 0 {
            params(7)
        } else {
            params(100 + i)
        };
        calls.push(tokio::spawn(async move {
            (i, unary(&mut c, "Dear customer,", p).await)
        }));
    }
    let mut others = Vec::new();
    for call in calls {
        let (i, got) = call.await.unwrap_or_else(|e| panic!("request task: {e}"));
        if i % 2 == 0 {
            assert_eq!(got.token_ids, first.token_ids, "seed 7 in a batch");
            assert_eq!(got.text, first.text);
        } else {
            others.push(got.token_ids);
        }
    }
    assert!(
        others.iter().any(|o| *o != first.token_ids),
        "other seeds gave the same tokens"
    );
    // Greedy ignores the seed; sampling differs from greedy.
    let greedy_out = unary(&mut c, "Dear customer,", greedy(32)).await;
    assert_ne!(greedy_out.token_ids, first.token_ids);
    node.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}
