//! `json_memory_bytes`, the measure behind `orchestrator.max_input_memory_bytes` and
//! `max_run_output_memory_bytes`, against what the allocator really hands out for the same
//! values, parsed from text as StartRun and results parse them. The limits' worst cases in
//! `docs/limits.md` are only as true as this estimate.
//!
//! dhat's allocator (this test binary's own; one test, so nothing else allocates meanwhile)
//! counts the bytes and blocks a value keeps.

use rpaflow_orchestrator::state::json_memory_bytes;
use serde_json::Value as Json;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// What the allocator takes for the blocks it hands out, besides the bytes asked for: glibc's
/// 8-byte header and rounding to 16, about 16 bytes a block on average.
const PER_BLOCK: usize = 16;

/// The bytes that `text`, parsed, keeps allocated (the `Value` itself included).
fn allocated(text: &str) -> (Json, usize) {
    let before = dhat::HeapStats::get();
    let value: Json = serde_json::from_str(text).expect("valid JSON");
    let after = dhat::HeapStats::get();
    let bytes = after.curr_bytes - before.curr_bytes;
    let blocks = after.curr_blocks - before.curr_blocks;
    (
        value,
        bytes + blocks * PER_BLOCK + std::mem::size_of::<Json>(),
    )
}

#[test]
fn the_estimate_is_close_to_what_is_allocated() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let objects: Vec<Json> = (0..80_000).map(|i| serde_json::json!({ "k": i })).collect();
    let wide: serde_json::Map<String, Json> = (0..5_000)
        .map(|i| (format!("key-{i}"), serde_json::json!(i)))
        .collect();
    // Written in sorted order: every insertion splits the last leaf.
    let sorted: String = format!(
        "{{{}}}",
        (0..5_000)
            .map(|i| format!("\"k{i:05}\": {i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let small_maps = Json::Array(
        (0..10_000)
            .map(|i| serde_json::json!({ "id": i, "name": format!("n{i}"), "tags": ["a", "b"] }))
            .collect(),
    );
    let cases = [
        ("80,000 one-key objects", Json::Array(objects).to_string()),
        (
            "one 1 MB string",
            Json::String("x".repeat(1 << 20)).to_string(),
        ),
        (
            "100,000 short strings",
            Json::Array(
                (0..100_000)
                    .map(|i| Json::String(format!("s{i}")))
                    .collect(),
            )
            .to_string(),
        ),
        ("one object of 5,000 keys", Json::Object(wide).to_string()),
        ("one object of 5,000 keys, sorted", sorted),
        ("10,000 records of three fields", small_maps.to_string()),
        (
            "nested arrays of numbers",
            serde_json::json!([[1, 2, 3], [[4, 5], [6, [7, 8, 9]]], {"a": [1.5, true, null]}])
                .to_string(),
        ),
    ];
    let mut report = Vec::new();
    for (what, text) in &cases {
        let (value, real) = allocated(text);
        let estimate = json_memory_bytes(&value);
        let ratio = estimate as f64 / real as f64;
        report.push(format!(
            "{what}: {} bytes of text, estimated {estimate}, allocated {real}, ratio {ratio:.2}",
            text.len()
        ));
        drop(value);
        assert!(
            (0.9..=1.2).contains(&ratio),
            "the estimate is off:\n{}",
            report.join("\n")
        );
    }
    println!("{}", report.join("\n"));
}
