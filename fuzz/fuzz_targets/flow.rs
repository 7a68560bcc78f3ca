//! Flow files: parse and check any text, and draw what parses. Nothing may panic, overflow the
//! stack, run long or allocate much; a bad flow is answered with diagnostics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpaflow_core::flow;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = flow::parse("fuzz.yaml", text) {
        let _ = flow::to_mermaid(&parsed);
    }
});
