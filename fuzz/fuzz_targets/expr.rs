//! Expressions and templates: compile, check and evaluate any text within the default budget.
//! Nothing may panic, overflow the stack, run long (libFuzzer's `-timeout`) or allocate much
//! (`-rss_limit_mb`); the budget must stop it with an error instead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpaflow_core::expr::{self, Context, Limits, Meter};
use serde_json::json;
use std::sync::OnceLock;

fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        Context::new(&json!({
            "inputs": {
                "name": "Ada",
                "text": "lorem ipsum ".repeat(2_000),
                "n": 7,
                "items": (0..200).collect::<Vec<_>>(),
                "records": (0..50).map(|i| json!({"id": i, "tags": ["a", "b"]})).collect::<Vec<_>>(),
            },
            "steps": {"fetch": {"output": {"status": 200, "body": {"ok": true}}, "status": "succeeded"}},
            "item": {"x": 1},
            "index": 0,
            "run": {"id": "r-1"},
        }))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = context();
    let limits = Limits::defaults("fuzz");
    // As a condition (`if`, `until`, `for_each`).
    if expr::check_expression(text).is_ok() {
        let _ = Meter::new(limits).eval(text, ctx);
        let _ = Meter::new(limits).eval_bool(text, ctx);
    }
    // As a template in a step's `with`.
    if expr::check_template(text).is_ok() {
        let _ = Meter::new(limits).render(&json!({ "message": text }), ctx);
    }
});
