//! Namespaces: each team's own part of an orchestrator. Flows (every version), runs and their
//! events, schedules, triggers, approvals and secrets belong to exactly one namespace, and nothing
//! in one can see or reach into another; a subflow runs in its parent's namespace.
//!
//! The orchestrator keeps a flow under its *full name*, [`qualify`]: the flow's own name in the
//! `default` namespace, `<namespace>/<name>` in any other (a flow name cannot hold a `/`). Every
//! key derived from a flow (runs by flow, schedules, idempotency keys, concurrency queues) is then
//! namespaced with no second lookup, and a store written before namespaces existed is the
//! `default` namespace as it is. Secrets are kept the same way. What a client sees is the flow's
//! own name and its namespace, never the full name.

/// The namespace that always exists: what `rpaflow dev` and a store from before namespaces use.
pub const DEFAULT: &str = "default";

/// The longest namespace name (a DNS label's length, so it can name Kubernetes objects too).
pub const MAX_LEN: usize = 63;

/// Whether `name` can name a namespace: 1 to 63 lowercase ASCII letters, digits and `-`,
/// starting with a letter and not ending with `-` (a DNS label).
pub fn valid(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Why `name` cannot name a namespace, for an error message; `None` when it can.
pub fn invalid_reason(name: &str) -> Option<String> {
    (!valid(name)).then(|| {
        format!(
            "`{name}` cannot name a namespace: use 1 to {MAX_LEN} lowercase letters, digits and \
             `-`, starting with a letter and not ending with `-`"
        )
    })
}

/// The full name of `name` (a flow or a secret) in `namespace`.
pub fn qualify(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The full name of the flow or secret a caller in `namespace` named `name`; `None` when `name`
/// cannot be the name of one (it holds a `/`: read as a full name, it would reach into another
/// namespace). Every name a caller, a flow or a request path gives goes through this.
pub fn full_name(namespace: &str, name: &str) -> Option<String> {
    (!name.contains('/')).then(|| qualify(namespace, name))
}

/// The namespace and own name of a full name.
pub fn split(full: &str) -> (&str, &str) {
    match full.split_once('/') {
        Some((namespace, name)) => (namespace, name),
        None => (DEFAULT, full),
    }
}

/// The namespace of a full name.
pub fn of(full: &str) -> &str {
    split(full).0
}

/// The own name of a full name.
pub fn local(full: &str) -> &str {
    split(full).1
}

/// Whether the full name `full` belongs to `namespace`.
pub fn contains(namespace: &str, full: &str) -> bool {
    of(full) == namespace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "team-a", "t1", &"a".repeat(63)] {
            assert!(valid(good), "{good}");
        }
        for bad in [
            "",
            "Team",
            "1team",
            "-a",
            "a-",
            "a/b",
            "a_b",
            "a.b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!valid(bad), "{bad}");
            assert!(invalid_reason(bad).unwrap().contains("lowercase"));
        }
        assert_eq!(invalid_reason("ok"), None);
    }

    #[test]
    fn the_default_namespace_keeps_plain_names_and_others_are_prefixed() {
        assert_eq!(qualify(DEFAULT, "hello"), "hello");
        assert_eq!(qualify("team-a", "hello"), "team-a/hello");
        assert_eq!(split("hello"), (DEFAULT, "hello"));
        assert_eq!(split("team-a/hello"), ("team-a", "hello"));
        for ns in [DEFAULT, "team-a", "b"] {
            let full = qualify(ns, "flow.v2_x");
            assert_eq!(split(&full), (ns, "flow.v2_x"));
            assert!(contains(ns, &full));
        }
        assert!(!contains("team-a", "hello"));
        assert!(!contains(DEFAULT, "team-a/hello"));
        // A namespace's name is never a prefix match: `team` does not contain `team-a`'s flows.
        assert!(!contains("team", "team-a/hello"));
    }

    #[test]
    fn a_given_name_never_reaches_into_another_namespace() {
        assert_eq!(
            full_name("team-a", "hello").as_deref(),
            Some("team-a/hello")
        );
        assert_eq!(full_name(DEFAULT, "hello").as_deref(), Some("hello"));
        // From `default`, `team-b/x` would otherwise be team-b's flow `x`.
        assert_eq!(full_name(DEFAULT, "team-b/x"), None);
        assert_eq!(full_name("team-a", "team-b/x"), None);
        assert_eq!(full_name("team-a", "/x"), None);
    }
}
