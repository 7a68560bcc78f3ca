//! `rpaflow bench-inference`: the same requests sent C at a time (C = 1, 8, 32, 64 by default)
//! and one at a time; tokens per second, time to first token and the engine's mean batch size.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use rpaflow_proto::v1 as pb;
use tonic::transport::Channel;

use crate::{
    cli::{BenchInferenceArgs, connect, rpc_error},
    error::{Error, Result},
    server::{self, NodeConfig},
};

type Client = pb::inference_client::InferenceClient<Channel>;

/// The figures of one concurrency level.
#[derive(Debug, Clone, Default)]
pub struct LevelReport {
    pub concurrency: usize,
    pub requests: usize,
    pub generated_tokens: u64,
    pub wall: Duration,
    pub tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub mean_batch_size: f64,
}

const WORDS: &[&str] = &[
    "the", "customer", "wrote", "about", "a", "late", "delivery", "and", "asked", "for", "refund",
    "of", "order", "number", "please", "reply", "politely", "with", "next", "steps", "today",
];

/// `n` prompts of 3 to 40 words, the same every run.
pub fn prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let words = 3 + (i * 7) % 38;
            (0..words)
                .map(|j| WORDS[(i * 5 + j * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

pub async fn run(args: BenchInferenceArgs) -> Result<()> {
    let node = match &args.model {
        Some(model) => Some(
            server::start(NodeConfig {
                engine: args.engine.engine_config(model.clone(), args.device),
                listen: "127.0.0.1:0".into(),
            })
            .await?,
        ),
        None => None,
    };
    let server = match (&node, &args.server) {
        (Some(node), _) => node.url(),
        (None, Some(server)) => server.clone(),
        (None, None) => return Err(Error::Config("give --server or --model".into())),
    };
    let result = bench(&server, &args).await;
    if let Some(node) = node {
        node.shutdown().await?;
    }
    result
}

async fn bench(server: &str, args: &BenchInferenceArgs) -> Result<()> {
    let client = connect(server).await?;
    let info = client
        .clone()
        .model_info(pb::ModelInfoRequest {})
        .await
        .map_err(rpc_error(server))?
        .into_inner();
    println!(
        "model {} ({} layers, {} heads, {} wide, {}), device {}, max batch {}, {} requests of {} new tokens, greedy, {}",
        info.model_dir,
        info.layers,
        info.heads,
        info.hidden_size,
        info.kv_dtype,
        info.device,
        info.max_batch_size,
        args.requests,
        args.max_new_tokens,
        if args.stream {
            "streamed (TTFT at the client)"
        } else {
            "unary (TTFT at the node)"
        }
    );
    let prompts = Arc::new(prompts(args.requests));
    // Warm up (first-run allocations, thread pools).
    level(
        &client,
        server,
        &Arc::new(prompts[..1].to_vec()),
        1,
        args.max_new_tokens,
        args.stream,
    )
    .await?;

    let one_at_a_time = level(
        &client,
        server,
        &prompts,
        1,
        args.max_new_tokens,
        args.stream,
    )
    .await?;
    println!(
        "one at a time: {:.1} tokens/s, TTFT p50 {:.1} ms p99 {:.1} ms",
        one_at_a_time.tokens_per_s, one_at_a_time.ttft_p50_ms, one_at_a_time.ttft_p99_ms
    );
    let mut reports = Vec::new();
    for &c in &args.concurrency {
        let r = level(
            &client,
            server,
            &prompts,
            c.max(1),
            args.max_new_tokens,
            args.stream,
        )
        .await?;
        println!(
            "C={:<3} {:>8.1} tokens/s  TTFT p50 {:>7.1} ms p99 {:>7.1} ms  mean batch {:>5.1}  | one at a time {:>7.1} tokens/s  speed-up {:.1}x",
            r.concurrency,
            r.tokens_per_s,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.mean_batch_size,
            one_at_a_time.tokens_per_s,
            r.tokens_per_s / one_at_a_time.tokens_per_s.max(1e-9)
        );
        reports.push(r);
    }
    for r in &reports {
        println!(
            "BENCH_INFERENCE {{\"concurrency\":{},\"requests\":{},\"generated_tokens\":{},\"tokens_per_s\":{:.1},\"ttft_p50_ms\":{:.1},\"ttft_p99_ms\":{:.1},\"mean_batch_size\":{:.2},\"one_at_a_time_tokens_per_s\":{:.1},\"speedup\":{:.2},\"device\":\"{}\"}}",
            r.concurrency,
            r.requests,
            r.generated_tokens,
            r.tokens_per_s,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.mean_batch_size,
            one_at_a_time.tokens_per_s,
            r.tokens_per_s / one_at_a_time.tokens_per_s.max(1e-9),
            info.device
        );
    }
    Ok(())
}

async fn stats(client: &Client, server: &str) -> Result<pb::EngineStats> {
    let info = client
        .clone()
        .model_info(pb::ModelInfoRequest {})
        .await
        .map_err(rpc_error(server))?
        .into_inner();
    Ok(info.stats.unwrap_or_default())
}

/// Sends every prompt, `concurrency` at a time, streaming, and measures.
async fn level(
    client: &Client,
    server: &str,
    prompts: &Arc<Vec<String>>,
    concurrency: usize,
    max_new_tokens: u32,
    stream: bool,
) -> Result<LevelReport> {
    let before = stats(client, server).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut client, prompts, next) = (client.clone(), Arc::clone(prompts), Arc::clone(&next));
        let server = server.to_string();
        workers.push(tokio::spawn(async move {
            let mut ttfts = Vec::new();
            let mut tokens = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(prompt) = prompts.get(i) else { break };
                let sent = Instant::now();
                let request = pb::GenerateRequest {
                    prompt: prompt.clone(),
                    params: Some(pb::GenerationParams {
                        max_new_tokens: Some(max_new_tokens),
                        greedy: true,
                        ..Default::default()
                    }),
                };
                if !stream {
                    // Unary: the node's own time to first token (from the request's arrival).
                    let r = client
                        .generate(request)
                        .await
                        .map_err(rpc_error(&server))?
                        .into_inner();
                    let ttft = r.timings.map_or(0.0, |t| t.time_to_first_token_ms);
                    ttfts.push(Duration::from_secs_f64(ttft / 1e3));
                    tokens += u64::from(r.generated_tokens);
                    continue;
                }
                let mut chunks = client
                    .generate_stream(request)
                    .await
                    .map_err(rpc_error(&server))?
                    .into_inner();
                let mut first = true;
                while let Some(chunk) = chunks.next().await {
                    chunk.map_err(rpc_error(&server))?;
                    if first {
                        ttfts.push(sent.elapsed());
                        first = false;
                    }
                    tokens += 1;
                }
            }
            Ok::<_, Error>((ttfts, tokens))
        }));
    }
    let mut ttfts = Vec::new();
    let mut generated_tokens = 0;
    for worker in workers {
        let (t, n) = worker.await.map_err(|e| Error::Generation {
            reason: format!("benchmark worker failed: {e}"),
        })??;
        ttfts.extend(t);
        generated_tokens += n;
    }
    let wall = started.elapsed();
    let after = stats(client, server).await?;
    ttfts.sort();
    let steps = after.decode_steps.saturating_sub(before.decode_steps);
    let rows = after.batch_rows.saturating_sub(before.batch_rows);
    Ok(LevelReport {
        concurrency,
        requests: prompts.len(),
        generated_tokens,
        wall,
        tokens_per_s: generated_tokens as f64 / wall.as_secs_f64(),
        ttft_p50_ms: percentile(&ttfts, 0.50),
        ttft_p99_ms: percentile(&ttfts, 0.99),
        mean_batch_size: if steps > 0 {
            rows as f64 / steps as f64
        } else {
            0.0
        },
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), 50.0);
        assert_eq!(percentile(&d, 0.99), 99.0);
        assert_eq!(percentile(&d[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn prompts_are_stable_and_varied() {
        let p = prompts(40);
        assert_eq!(p, prompts(40));
        let lengths: std::collections::HashSet<usize> =
            p.iter().map(|s| s.split(' ').count()).collect();
        assert!(lengths.len() > 10);
    }
}
