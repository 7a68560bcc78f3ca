//! The W3C trace context a run's steps carry (in Kafka headers and gRPC metadata): the header's
//! name, and the `traceparent` of a step, derived from the run id so that every service can name
//! a run's trace without carrying more state. Here rather than in [`crate::kafka`] so that a
//! service built without Kafka (the inference node) shares it.

/// The W3C trace-context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The W3C `traceparent` of a step: the trace id is the run id (a UUID is 128 bits, as a trace id
/// is), so every service can name the run's trace without carrying more state.
pub fn traceparent(run_id: &str, step: &str, item: Option<u32>, attempt: u32) -> String {
    use std::fmt::Write as _;
    // Built in place: one allocation per dispatch, on the run actor's path.
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    let hex = run_id.bytes().filter(u8::is_ascii_hexdigit);
    if hex.clone().count() == 32 {
        out.extend(hex.map(|b| char::from(b.to_ascii_lowercase())));
    } else {
        let _ = write!(
            out,
            "{:032x}",
            u128::from(fnv1a(FNV_OFFSET, run_id.as_bytes()))
        );
    }
    let hash = fnv1a(FNV_OFFSET, step.as_bytes());
    let hash = fnv1a(hash, &item.unwrap_or(u32::MAX).to_be_bytes());
    let span_id = fnv1a(hash, &attempt.to_be_bytes()).max(1);
    let _ = write!(out, "-{span_id:016x}-01");
    out
}

/// FNV-1a's starting hash.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, going on from `hash` ([`FNV_OFFSET`] to start).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_names_the_run_as_the_trace() {
        let run = "01935f2a-7c1e-7b44-9a55-0d3c1f2e4b6a";
        let tp = traceparent(run, "fetch", None, 1);
        assert!(
            tp.starts_with("00-01935f2a7c1e7b449a550d3c1f2e4b6a-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"));
        assert_eq!(tp.len(), 55);
        assert_ne!(
            tp,
            traceparent(run, "fetch", None, 2),
            "attempts are spans of their own"
        );
        assert_eq!(traceparent("not-a-uuid", "s", Some(1), 1).len(), 55);
        // The span id is FNV-1a of the step, the item and the attempt, one after the other.
        let mut seed = b"fetch".to_vec();
        seed.extend(u32::MAX.to_be_bytes());
        seed.extend(1u32.to_be_bytes());
        assert_eq!(&tp[36..52], format!("{:016x}", fnv1a(FNV_OFFSET, &seed)));
    }
}
