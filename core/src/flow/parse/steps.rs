//! `defaults` and `steps`: each step's kind, inputs, `needs`, queue, timeout, `retry`, `for_each`
//! and `on_failure`.

use std::time::Duration;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;
use serde_json::Value as Json;

use super::Parser;
use super::nodes::{closest, to_json, valid_identifier, valid_name};
use crate::flow::model::{
    Backoff, DEFAULT_QUEUE, DEFAULT_TIMEOUT, ForEach, ORCHESTRATOR_KINDS, OnFailure, RetryPolicy,
    Step, WORKER_KINDS,
};

const DEFAULTS_FIELDS: &[&str] = &["queue", "timeout", "retry"];
const STEP_FIELDS: &[&str] = &[
    "id",
    "name",
    "uses",
    "with",
    "needs",
    "if",
    "for_each",
    "queue",
    "timeout",
    "retry",
    "until",
    "on_failure",
];
const RETRY_FIELDS: &[&str] = &["max_attempts", "backoff", "delay", "max_delay", "on"];
const FOR_EACH_FIELDS: &[&str] = &["items", "concurrency"];

/// Step defaults from the flow's `defaults` section.
pub(super) struct Defaults {
    queue: String,
    timeout: Duration,
    retry: RetryPolicy,
}

impl Parser<'_> {
    pub(super) fn defaults(&mut self, node: Option<&Node>) -> Defaults {
        let mut defaults = Defaults {
            queue: DEFAULT_QUEUE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
        };
        let Some(map) = node.and_then(|n| self.mapping(n, "`defaults`")) else {
            return defaults;
        };
        self.check_fields(map, DEFAULTS_FIELDS, "`defaults`");
        if let Some(q) = map.get_node("queue").and_then(|n| self.queue(n)) {
            defaults.queue = q;
        }
        if let Some(t) = map
            .get_node("timeout")
            .and_then(|n| self.duration(n, "`timeout`"))
        {
            defaults.timeout = t;
        }
        if let Some(r) = map.get_node("retry") {
            defaults.retry = self.retry(r, &RetryPolicy::default());
        }
        defaults
    }

    fn queue(&mut self, node: &Node) -> Option<String> {
        let q = self.string(node, "`queue`")?;
        if !valid_name(&q) {
            self.err(
                node.span(),
                format!("queue name `{q}` may only use letters, digits, `-`, `_` and `.`"),
            );
            return None;
        }
        Some(q)
    }

    fn retry(&mut self, node: &Node, base: &RetryPolicy) -> RetryPolicy {
        let mut policy = base.clone();
        let Some(map) = self.mapping(node, "`retry`") else {
            return policy;
        };
        self.check_fields(map, RETRY_FIELDS, "`retry`");
        if let Some(n) = map
            .get_node("max_attempts")
            .and_then(|n| self.uint(n, "`retry.max_attempts`", 1))
        {
            policy.max_attempts = n;
        }
        if let Some(node) = map.get_node("backoff") {
            match self.string(node, "`retry.backoff`").as_deref() {
                Some("fixed") => policy.backoff = Backoff::Fixed,
                Some("exponential") => policy.backoff = Backoff::Exponential,
                Some(other) => self.err(
                    node.span(),
                    format!("unknown backoff `{other}` (expected `fixed` or `exponential`)"),
                ),
                None => {}
            }
        }
        if let Some(d) = map
            .get_node("delay")
            .and_then(|n| self.duration(n, "`retry.delay`"))
        {
            policy.delay = d;
        }
        if let Some(d) = map
            .get_node("max_delay")
            .and_then(|n| self.duration(n, "`retry.max_delay`"))
        {
            policy.max_delay = d;
        }
        if policy.max_delay < policy.delay {
            policy.max_delay = policy.delay;
        }
        if let Some(node) = map.get_node("on") {
            policy.on = self
                .string_list(node, "`retry.on`")
                .into_iter()
                .map(|(s, _)| s)
                .collect();
        }
        policy
    }

    pub(super) fn steps(&mut self, node: &Node, defaults: &Defaults) -> Vec<Step> {
        let Some(seq) = self.sequence(node, "`steps`") else {
            return Vec::new();
        };
        if seq.is_empty() {
            self.err(node.span(), "a flow needs at least one step");
        }
        seq.iter()
            .filter_map(|n| {
                self.mapping(n, "a step")
                    .and_then(|m| self.step(m, defaults))
            })
            .collect()
    }

    fn step(&mut self, map: &MarkedMappingNode, defaults: &Defaults) -> Option<Step> {
        let id = match map.get_node("id") {
            Some(node) => self.string(node, "`id`"),
            None => {
                self.err(map.span(), "a step needs an `id`");
                None
            }
        };
        let what = match &id {
            Some(id) => format!("step `{id}`"),
            None => "a step".to_owned(),
        };
        self.check_fields(map, STEP_FIELDS, &what);
        if let (Some(id), Some(node)) = (&id, map.get_node("id"))
            && !valid_identifier(id)
        {
            self.err(node.span(), format!("step id `{id}` must start with a letter or `_` and use only letters, digits and `_` (it is used as `steps.{id}` in expressions)"));
        }
        let uses = match map.get_node("uses") {
            Some(node) => self.string(node, "`uses`").inspect(|kind| {
                if !ORCHESTRATOR_KINDS.contains(&kind.as_str())
                    && !WORKER_KINDS.contains(&kind.as_str())
                {
                    let known: Vec<&str> = WORKER_KINDS
                        .iter()
                        .chain(ORCHESTRATOR_KINDS)
                        .copied()
                        .collect();
                    let hint = closest(kind, &known)
                        .map(|c| format!("did you mean `{c}`? "))
                        .unwrap_or_default();
                    self.err(
                        node.span(),
                        format!(
                            "unknown step kind `{kind}` in {what} ({hint}known kinds: {})",
                            known.join(", ")
                        ),
                    );
                }
            }),
            None => {
                self.err(map.span(), format!("{what} needs `uses` (the step kind)"));
                None
            }
        };
        let with = match map.get_node("with") {
            Some(node) if node.as_mapping().is_some() => to_json(node),
            Some(node) => {
                self.err(node.span(), format!("`with` of {what} must be a mapping"));
                Json::Object(Default::default())
            }
            None => Json::Object(Default::default()),
        };
        let needs = map
            .get_node("needs")
            .map(|n| self.string_list(n, "`needs`"))
            .unwrap_or_default();
        let condition = map.get_node("if").and_then(|n| self.string(n, "`if`"));
        let for_each = map.get_node("for_each").and_then(|n| self.for_each(n));
        let queue = map
            .get_node("queue")
            .and_then(|n| self.queue(n))
            .unwrap_or_else(|| defaults.queue.clone());
        let explicit_timeout = map
            .get_node("timeout")
            .and_then(|n| self.duration(n, "`timeout`"));
        // A person answering an approval has no deadline unless the step sets one.
        let is_approval = uses
            .as_deref()
            .is_some_and(|k| ORCHESTRATOR_KINDS.contains(&k));
        let timeout = match explicit_timeout {
            Some(t) => t,
            None if is_approval => Duration::ZERO,
            None => defaults.timeout,
        };
        let retry = match map.get_node("retry") {
            Some(node) => self.retry(node, &defaults.retry),
            None => defaults.retry.clone(),
        };
        let until = map
            .get_node("until")
            .and_then(|n| self.string(n, "`until`"));
        let on_failure = map
            .get_node("on_failure")
            .map(|n| self.on_failure(n))
            .unwrap_or(OnFailure::Fail);
        Some(Step {
            id: id?,
            name: map.get_node("name").and_then(|n| self.string(n, "`name`")),
            uses: uses?,
            with,
            needs: needs.into_iter().map(|(s, _)| s).collect(),
            condition,
            for_each,
            queue,
            timeout,
            retry,
            until,
            on_failure,
            compensation: false,
        })
    }

    fn for_each(&mut self, node: &Node) -> Option<ForEach> {
        if let Some(s) = node.as_scalar() {
            return Some(ForEach {
                items: s.as_str().to_owned(),
                concurrency: 10,
            });
        }
        let map = self.mapping(node, "`for_each`")?;
        self.check_fields(map, FOR_EACH_FIELDS, "`for_each`");
        let items = match map.get_node("items") {
            Some(n) => self.string(n, "`for_each.items`")?,
            None => {
                self.err(
                    map.span(),
                    "`for_each` needs `items` (an expression giving a list)",
                );
                return None;
            }
        };
        let concurrency = map
            .get_node("concurrency")
            .and_then(|n| self.uint(n, "`for_each.concurrency`", 1))
            .unwrap_or(10);
        Some(ForEach { items, concurrency })
    }

    fn on_failure(&mut self, node: &Node) -> OnFailure {
        if let Some(map) = node.as_mapping() {
            self.check_fields(map, &["compensate"], "`on_failure`");
            return match map
                .get_node("compensate")
                .and_then(|n| self.string(n, "`on_failure.compensate`"))
            {
                Some(step) => OnFailure::Compensate(step),
                None => {
                    self.err(
                        node.span(),
                        "`on_failure` as a mapping needs `compensate: STEP_ID`",
                    );
                    OnFailure::Fail
                }
            };
        }
        match self.string(node, "`on_failure`").as_deref() {
            Some("fail") | None => OnFailure::Fail,
            Some("continue") => OnFailure::Continue,
            Some(other) => {
                self.err(node.span(), format!("unknown `on_failure` value `{other}` (expected `fail`, `continue` or `{{compensate: STEP_ID}}`)"));
                OnFailure::Fail
            }
        }
    }
}
