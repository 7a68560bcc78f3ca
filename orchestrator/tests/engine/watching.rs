//! Watching a run: a client that reads slowly, or stops reading for a while, misses nothing.

use futures::StreamExt as _;
use serde_json::json;

use crate::harness::{Engine, NS, paused, succeed_all};

/// A chain of `n` steps: far more events than a watch stream buffers.
fn chain(n: usize) -> String {
    let mut yaml = String::from("name: chain\nsteps:\n");
    for i in 0..n {
        yaml.push_str(&format!("  - {{ id: s{i}, uses: echo"));
        if i > 0 {
            yaml.push_str(&format!(", needs: s{}", i - 1));
        }
        yaml.push_str(" }\n");
    }
    yaml
}

#[test]
fn a_watcher_that_stops_reading_gets_every_event_in_order_when_it_reads_again() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::start(dir.path(), succeed_all()).await;
        engine.register(&chain(60)).await;
        let id = engine.start_run("chain", json!({})).await;
        let mut stream = engine.handle.watch_run(NS, &id, 1).expect("the run exists");
        // The first event, then nothing read until the run (and runs beside it) finished.
        let first = stream
            .next()
            .await
            .expect("an event")
            .expect("not an error");
        assert_eq!(first.seq, 1);
        let others: Vec<String> =
            futures::future::join_all((0..5).map(|_| engine.start_run("chain", json!({})))).await;
        for other in &others {
            engine.finished(other).await;
        }
        let run = engine.finished(&id).await;
        assert_eq!(
            run.status,
            rpaflow_orchestrator::state::RunStatus::Succeeded
        );
        let rest: Vec<_> = stream.map(|e| e.expect("an event")).collect().await;
        let seqs: Vec<u64> = std::iter::once(first.seq)
            .chain(rest.iter().map(|e| e.seq))
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "every event once, in order");
        assert!(seqs.len() > 64 * 2, "{} events", seqs.len());
        assert_eq!(rest.last().map(|e| e.kind.name()), Some("run_succeeded"));
        engine.stop().await;
    });
}
