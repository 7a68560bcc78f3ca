//! What a JSON value costs in memory, estimated in one iterative pass: the measure behind
//! `orchestrator.max_input_memory_bytes` (see `docs/limits.md`).

use serde_json::Value as Json;

/// A `serde_json::Value` in place: in a parent's array or map, or on its own.
const VALUE: usize = 32;
/// One B-tree leaf of a `serde_json::Map` (room for 11 keys and values, allocated whole even
/// for one entry): 11 × (24 + 32) bytes and its header.
const MAP_NODE: usize = 11 * (24 + VALUE) + 16;
/// Entries per B-tree leaf.
const MAP_NODE_ENTRIES: usize = 11;
/// An internal B-tree node: a leaf and its 12 child pointers.
const MAP_INTERNAL_NODE: usize = MAP_NODE + 12 * 8;
/// Entries per leaf on average once a map has split: nodes split in half when full, so a map
/// built one key at a time has its leaves between half and entirely full.
const MAP_FILLED_ENTRIES: usize = 7;
/// What the allocator adds to every allocation (glibc: an 8-byte header, rounded up to 16).
const ALLOCATION: usize = 8;

/// About how many bytes `json` takes as a `serde_json::Value` (64-bit, the default `Map`).
/// Small objects are the costly case: `{"a":1}` is 7 bytes of text and ~650 bytes in memory.
pub fn json_memory_bytes(json: &Json) -> usize {
    measure(json, usize::MAX)
}

/// [`json_memory_bytes`] when it is at most `stop`, else some number over `stop`: counting
/// stops once past it, so asking about a large value costs no more than `stop`.
pub fn json_memory_bytes_up_to(json: &Json, stop: usize) -> usize {
    measure(json, stop)
}

/// [`json_memory_bytes`], stopping once past `stop`. A value inside an array or a map lives in
/// its parent's allocation, so only the root counts its own [`VALUE`].
fn measure(json: &Json, stop: usize) -> usize {
    let mut total = VALUE;
    let mut todo = vec![json];
    while let Some(value) = todo.pop() {
        if total > stop {
            break;
        }
        match value {
            Json::Null | Json::Bool(_) | Json::Number(_) => {}
            Json::String(s) => total = total.saturating_add(heap(s.capacity())),
            Json::Array(items) => {
                total = total.saturating_add(heap(items.capacity() * VALUE));
                if total <= stop {
                    todo.extend(items);
                }
            }
            Json::Object(map) => {
                total = total.saturating_add(map_nodes(map.len()));
                for (key, item) in map {
                    if total > stop {
                        break;
                    }
                    total = total.saturating_add(heap(key.capacity()));
                    todo.push(item);
                }
            }
        }
    }
    total
}

/// The B-tree nodes of a map of `len` entries.
fn map_nodes(len: usize) -> usize {
    if len <= MAP_NODE_ENTRIES {
        return len.min(1) * heap(MAP_NODE);
    }
    let leaves = len.div_ceil(MAP_FILLED_ENTRIES);
    let internal = leaves.div_ceil(MAP_FILLED_ENTRIES - 1);
    leaves * heap(MAP_NODE) + internal * heap(MAP_INTERNAL_NODE)
}

/// A heap allocation of `len` bytes (none for zero): glibc's chunk, the bytes and its header
/// rounded up to 16, at least 32.
fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_add(ALLOCATION)
            .div_ceil(16)
            .saturating_mul(16)
            .max(32)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn small_objects_cost_far_more_than_their_text() {
        let one = json_memory_bytes(&json!({"a": 1}));
        assert!((600..800).contains(&one), "{one}");
        // 80,000 of them: under 1 MiB of text, ~55 MB in memory, as measured on a live run.
        let many = Json::Array((0..80_000).map(|i| json!({ "k": i })).collect());
        let text = many.to_string().len();
        let memory = json_memory_bytes(&many);
        assert!(text < 1 << 20, "{text}");
        assert!((50_000_000..70_000_000).contains(&memory), "{memory}");
    }

    #[test]
    fn asking_whether_a_value_fits_stops_past_the_limit() {
        let many = Json::Array((0..80_000).map(|i| json!({ "k": i })).collect());
        let whole = json_memory_bytes(&many);
        let partial = json_memory_bytes_up_to(&many, 64 << 10);
        assert!(partial > 64 << 10 && partial < whole, "{partial}");
        assert_eq!(json_memory_bytes_up_to(&many, whole), whole);
        let one = json_memory_bytes(&json!({"a": 1}));
        assert_eq!(json_memory_bytes_up_to(&json!({"a": 1}), 1000), one);
        assert!(json_memory_bytes_up_to(&json!({"a": 1}), 100) > 100);
    }

    #[test]
    fn deep_values_are_measured_without_recursion() {
        let mut deep = json!(1);
        for _ in 0..200_000 {
            deep = Json::Array(vec![deep]);
        }
        assert!(json_memory_bytes(&deep) > 200_000 * heap(VALUE));
        // Dropping it would recurse; leak it on purpose in this test.
        std::mem::forget(deep);
    }
}
