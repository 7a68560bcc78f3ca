//! The W3C trace context a run's steps carry (in Kafka headers and gRPC metadata): the header's
//! name, and the `traceparent` of a step, derived from the run id so that every service can name
//! a run's trace without carrying more state. Here rather than in [`crate::kafka`] so that a
//! service built without Kafka (the inference node) shares it.

/// The W3C trace-context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The W3C `traceparent` of a step: the trace id is the run id (a UUID is 128 bits, as a trace id
/// is), so every service can name the run's trace without carrying more state.
pub fn traceparent(run_id: &str, step: &str, item: Option<u32>, attempt: u32) -> String {
    let trace_id: String = run_id.chars().filter(char::is_ascii_hexdigit).collect();
    let trace_id = if trace_id.len() == 32 {
        trace_id.to_ascii_lowercase()
    } else {
        format!("{:032x}", fnv1a(run_id.as_bytes()) as u128)
    };
    let mut seed = step.as_bytes().to_vec();
    seed.extend(item.unwrap_or(u32::MAX).to_be_bytes());
    seed.extend(attempt.to_be_bytes());
    let span_id = fnv1a(&seed).max(1);
    format!("00-{trace_id}-{span_id:016x}-01")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
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
    }
}
