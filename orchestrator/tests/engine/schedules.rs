//! Schedule triggers on the engine's (paused) clock: half an hour passes in a sleep, and every fire
//! starts its run on time and runs it through the worker.

use std::time::Duration;

use rpaflow_orchestrator::state::RunStatus;

use crate::harness::{Engine, paused, succeed_all};

const EVERY_5_MIN: &str = r#"
name: report
triggers:
  - { id: five, schedule: { cron: "*/5 * * * *" } }
steps:
  - { id: build, uses: echo, with: { at: "{{ run.id }}" } }
"#;

const FIVE_MIN_MS: i64 = 5 * 60 * 1000;

#[test]
fn a_schedule_fires_on_the_engine_clock_and_its_runs_finish() {
    paused(async {
        let dir = tempfile::tempdir().unwrap();
        // The engine's clock starts at the wall time of its start and then follows tokio's.
        let base_ms = rpaflow_core::time::now_ms();
        let engine = Engine::start(dir.path(), succeed_all()).await;
        // Register half-way between two fire times, so that half an hour from now holds six of
        // them whatever the wall time the test started at.
        let to_middle = (FIVE_MIN_MS - base_ms.rem_euclid(FIVE_MIN_MS) + FIVE_MIN_MS / 2) as u64;
        tokio::time::sleep(Duration::from_millis(to_middle)).await;
        engine.register(EVERY_5_MIN).await;
        let registered_ms = base_ms + to_middle as i64;

        tokio::time::sleep(Duration::from_secs(1800)).await;
        let runs = engine.runs_of("report");
        assert_eq!(runs.len(), 6, "one run per fire time in the half hour");
        let first_fire = registered_ms + FIVE_MIN_MS / 2;
        for (n, id) in runs.iter().enumerate() {
            let run = engine.finished(id).await;
            assert_eq!(run.status, RunStatus::Succeeded, "run {n}");
            assert_eq!(run.trigger, "schedule:five");
            let nominal = first_fire + n as i64 * FIVE_MIN_MS;
            // The real clock moved a little between `base_ms` and the engine's start.
            let fired = run
                .idempotency_key
                .rsplit(':')
                .next()
                .and_then(|ms| ms.parse::<i64>().ok())
                .expect("a schedule's key ends with its fire time");
            assert_eq!(fired % FIVE_MIN_MS, 0, "run {n} fired at {fired}");
            assert!(
                (fired - nominal).abs() < 1000,
                "run {n}: {fired}, not {nominal}"
            );
            let late = run.created_at_ms - fired;
            assert!(
                (0..=1000).contains(&late),
                "run {n} started {late} ms after its fire time"
            );
            assert_eq!(engine.taken_for(id), vec![("build".to_owned(), 1)]);
        }
    });
}
