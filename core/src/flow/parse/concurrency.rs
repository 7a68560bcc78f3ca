//! `concurrency`: how many runs of a flow may be active at once, and what happens to the rest.

use marked_yaml::Node;

use super::Parser;
use super::nodes::closest;
use crate::flow::model::{Concurrency, ConcurrencyPolicy};

const CONCURRENCY_FIELDS: &[&str] = &["max_runs", "policy", "max_queued"];

impl Parser<'_> {
    pub(super) fn concurrency(&mut self, node: &Node) -> Option<Concurrency> {
        let map = self.mapping(node, "`concurrency`")?;
        self.check_fields(map, CONCURRENCY_FIELDS, "`concurrency`");
        let max_runs = match map.get_node("max_runs") {
            Some(node) => self.uint(node, "`concurrency.max_runs`", 1),
            None => {
                self.err(map.span(), "`concurrency` needs `max_runs` (at least 1)");
                None
            }
        };
        let policy = match map.get_node("policy") {
            Some(node) => match self
                .string(node, "`concurrency.policy`")
                .as_deref()
                .map(|name| (name, ConcurrencyPolicy::from_name(name)))
            {
                Some((_, Some(policy))) => Some(policy),
                Some((other, None)) => {
                    let hint = closest(other, ConcurrencyPolicy::NAMES)
                        .map(|c| format!("did you mean `{c}`? "))
                        .unwrap_or_default();
                    self.err(
                        node.span(),
                        format!(
                            "unknown concurrency policy `{other}` ({hint}expected one of: {})",
                            ConcurrencyPolicy::NAMES.join(", ")
                        ),
                    );
                    None
                }
                None => None,
            },
            None => Some(ConcurrencyPolicy::default()),
        };
        let max_queued = match map.get_node("max_queued") {
            Some(node) => {
                let value = self.uint(node, "`concurrency.max_queued`", 1);
                if policy.is_some_and(|p| p != ConcurrencyPolicy::Queue) {
                    self.err(
                        node.span(),
                        "`concurrency.max_queued` applies to `policy: queue` only",
                    );
                }
                value.map(Some)
            }
            None => Some(None),
        };
        Some(Concurrency {
            max_runs: max_runs?,
            policy: policy?,
            max_queued: max_queued?,
        })
    }
}
