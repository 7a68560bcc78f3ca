//! Parsing and validating flow text (YAML, or JSON as its subset), collecting every problem with
//! its line and column instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoaderOptions, Node, Span};
use serde_json::Value as Json;

use super::model::*;
use crate::expr;

/// One problem in a flow definition, at a place in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in a flow definition, in the order of the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses and validates a flow. `file` names the source in the diagnostics.
pub fn parse(file: &str, source: &str) -> Result<Flow, Diagnostics> {
    let mut p = Parser {
        file,
        diags: Vec::new(),
        secrets: BTreeSet::new(),
    };
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let flow = match marked_yaml::parse_yaml_with_options(0, source, options) {
        Ok(node) => match node.as_mapping() {
            Some(map) => p.flow(map),
            None => {
                p.err(
                    node.span(),
                    "a flow must be a mapping with `name` and `steps`",
                );
                None
            }
        },
        Err(err) => {
            p.load_error(&err);
            None
        }
    };
    p.diags.sort_by_key(|d| (d.line, d.column));
    p.diags.dedup();
    match flow {
        Some(flow) if p.diags.is_empty() => Ok(flow),
        _ => Err(Diagnostics(p.diags)),
    }
}

const FLOW_FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "inputs",
    "defaults",
    "steps",
    "outputs",
    "triggers",
    "concurrency",
];
const TRIGGER_FIELDS: &[&str] = &["id", "schedule", "webhook", "kafka"];
const SCHEDULE_FIELDS: &[&str] = &[
    "cron",
    "timezone",
    "start",
    "end",
    "jitter",
    "missed",
    "max_catch_up",
    "inputs",
];
const WEBHOOK_FIELDS: &[&str] = &["signature_secret", "token_secret", "input"];
const KAFKA_FIELDS: &[&str] = &["topic", "input"];
const CONCURRENCY_FIELDS: &[&str] = &["max_runs", "policy", "max_queued"];
const INPUT_FIELDS: &[&str] = &["type", "default", "description"];
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
struct Defaults {
    queue: String,
    timeout: Duration,
    retry: RetryPolicy,
}

struct Parser<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
    /// The secrets read by the flow's steps.
    secrets: BTreeSet<String>,
}

/// Where a step's expressions are checked: what names they may read.
struct Scope<'s> {
    step: &'s str,
    /// Steps whose outputs this step may read (its transitive needs); None means any.
    visible: Option<&'s BTreeSet<String>>,
    all_steps: &'s BTreeSet<String>,
    item: bool,
    output: bool,
    /// True in a step's `with`, the only place secrets may be read.
    secrets: bool,
}

impl<'a> Parser<'a> {
    fn err(&mut self, span: &Span, message: impl Into<String>) {
        let (line, column) = span.start().map_or((1, 1), |m| (m.line(), m.column()));
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn load_error(&mut self, err: &marked_yaml::LoadError) {
        use marked_yaml::LoadError as E;
        let (marker, message) = match err {
            E::TopLevelMustBeMapping(m) => (
                *m,
                "a flow must be a mapping with `name` and `steps`".to_owned(),
            ),
            E::TopLevelMustBeSequence(m) => (*m, "expected a sequence".to_owned()),
            E::UnexpectedAnchor(m) => (*m, "YAML anchors are not supported in flows".to_owned()),
            E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_owned()),
            E::UnexpectedTag(m) => (*m, "YAML tags are not supported in flows".to_owned()),
            E::ScanError(m, e) => (*m, format!("invalid YAML: {}", e.info())),
            E::DuplicateKey(inner) => {
                let at = inner
                    .key
                    .span()
                    .start()
                    .copied()
                    .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1));
                (at, format!("duplicate key `{}`", inner.key.as_str()))
            }
        };
        self.err(&Span::new_start(marker), message);
    }

    /// Reports keys of `map` that are not in `allowed`.
    fn check_fields(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = closest(key.as_str(), allowed)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_else(|| format!(" (expected one of: {})", allowed.join(", ")));
                self.err(
                    key.span(),
                    format!("unknown field `{}` in {what}{hint}", key.as_str()),
                );
            }
        }
    }

    fn scalar<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedScalarNode> {
        let s = node.as_scalar();
        if s.is_none() {
            self.err(node.span(), format!("{what} must be a single value"));
        }
        s
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        self.scalar(node, what).map(|s| s.as_str().to_owned())
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        let m = node.as_mapping();
        if m.is_none() {
            self.err(node.span(), format!("{what} must be a mapping"));
        }
        m
    }

    fn sequence<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedSequenceNode> {
        let s = node.as_sequence();
        if s.is_none() {
            self.err(node.span(), format!("{what} must be a list"));
        }
        s
    }

    fn uint(&mut self, node: &Node, what: &str, min: u32) -> Option<u32> {
        let s = self.scalar(node, what)?;
        match s.as_str().parse::<u32>() {
            Ok(v) if v >= min => Some(v),
            _ => {
                self.err(
                    node.span(),
                    format!(
                        "{what} must be a whole number of at least {min}, got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let s = self.scalar(node, what)?;
        match humantime::parse_duration(s.as_str().trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(node.span(), format!("{what} must be longer than zero"));
                None
            }
            Err(e) => {
                self.err(
                    node.span(),
                    format!("bad duration `{}` for {what}: {e} (write e.g. `500ms`, `30s`, `5m`, `1h 30m`)", s.as_str()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Vec<(String, Span)> {
        if let Some(s) = node.as_scalar() {
            return vec![(s.as_str().to_owned(), *s.span())];
        }
        let Some(seq) = self.sequence(node, what) else {
            return Vec::new();
        };
        seq.iter()
            .filter_map(|item| self.string(item, what).map(|s| (s, *item.span())))
            .collect()
    }

    fn flow(&mut self, map: &MarkedMappingNode) -> Option<Flow> {
        self.check_fields(map, FLOW_FIELDS, "the flow");
        let name = match map.get_node("name") {
            Some(node) => self.string(node, "`name`").filter(|name| {
                let ok = valid_name(name);
                if !ok {
                    self.err(
                        node.span(),
                        format!(
                            "flow name `{name}` may only use letters, digits, `-`, `_` and `.`"
                        ),
                    );
                }
                ok
            }),
            None => {
                self.err(map.span(), "missing required field `name`");
                None
            }
        };
        let version = map
            .get_node("version")
            .and_then(|n| self.uint(n, "`version`", 1));
        let description = map
            .get_node("description")
            .and_then(|n| self.string(n, "`description`"))
            .unwrap_or_default();
        let inputs = map
            .get_node("inputs")
            .map(|n| self.inputs(n))
            .unwrap_or_default();
        let defaults = self.defaults(map.get_node("defaults"));
        let outputs: BTreeMap<String, Json> = match map.get_node("outputs") {
            Some(node) => self
                .mapping(node, "`outputs`")
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                        .collect()
                })
                .unwrap_or_default(),
            None => BTreeMap::new(),
        };
        let steps = match map.get_node("steps") {
            Some(node) => self.steps(node, &defaults),
            None => {
                self.err(map.span(), "missing required field `steps`");
                Vec::new()
            }
        };
        let triggers = map
            .get_node("triggers")
            .map(|n| self.triggers(n, &inputs))
            .unwrap_or_default();
        let concurrency = map
            .get_node("concurrency")
            .and_then(|n| self.concurrency(n));
        let mut flow = Flow {
            name: name?,
            version,
            description,
            inputs,
            steps,
            outputs,
            secrets: BTreeSet::new(),
            triggers,
            concurrency,
        };
        self.check_graph(&mut flow, map);
        flow.secrets = std::mem::take(&mut self.secrets);
        Some(flow)
    }

    fn inputs(&mut self, node: &Node) -> Vec<InputSpec> {
        let Some(map) = self.mapping(node, "`inputs`") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in map.iter() {
            let name = key.as_str().to_owned();
            if !valid_identifier(&name) {
                self.err(key.span(), format!("input name `{name}` must start with a letter or `_` and use only letters, digits and `_`"));
            }
            let Some(spec) = value.as_mapping() else {
                // Shorthand: `name: default-value`.
                out.push(InputSpec {
                    name,
                    ty: InputType::Any,
                    default: Some(to_json(value)),
                    description: String::new(),
                });
                continue;
            };
            self.check_fields(spec, INPUT_FIELDS, &format!("input `{name}`"));
            let ty = match spec.get_node("type") {
                Some(t) => match self.string(t, "`type`") {
                    Some(s) => InputType::from_name(&s).unwrap_or_else(|| {
                        self.err(
                            t.span(),
                            format!(
                                "unknown input type `{s}` (expected one of: {})",
                                InputType::NAMES.join(", ")
                            ),
                        );
                        InputType::Any
                    }),
                    None => InputType::Any,
                },
                None => InputType::Any,
            };
            let default = spec.get_node("default").map(to_json);
            if let (Some(d), Some(node)) = (&default, spec.get_node("default"))
                && !ty.accepts(d)
            {
                self.err(
                    node.span(),
                    format!("default of input `{name}` is not of type `{}`", ty.name()),
                );
            }
            let description = spec
                .get_node("description")
                .and_then(|n| self.string(n, "`description`"))
                .unwrap_or_default();
            out.push(InputSpec {
                name,
                ty,
                default,
                description,
            });
        }
        out
    }

    fn triggers(&mut self, node: &Node, inputs: &[InputSpec]) -> Vec<Trigger> {
        let Some(seq) = self.sequence(node, "`triggers`") else {
            return Vec::new();
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for item in seq.iter() {
            let Some(map) = self.mapping(item, "a trigger") else {
                continue;
            };
            let id = match map.get_node("id") {
                Some(node) => self.string(node, "`id`").filter(|id| {
                    if !valid_name(id) {
                        self.err(
                            node.span(),
                            format!(
                                "trigger id `{id}` may only use letters, digits, `-`, `_` and `.`"
                            ),
                        );
                        false
                    } else if !seen.insert(id.clone()) {
                        self.err(node.span(), format!("duplicate trigger id `{id}`"));
                        false
                    } else {
                        true
                    }
                }),
                None => {
                    self.err(map.span(), "a trigger needs an `id`");
                    None
                }
            };
            let what = match &id {
                Some(id) => format!("trigger `{id}`"),
                None => "a trigger".to_owned(),
            };
            self.check_fields(map, TRIGGER_FIELDS, &what);
            let kinds: Vec<&str> = ["schedule", "webhook", "kafka"]
                .into_iter()
                .filter(|k| map.get_node(k).is_some())
                .collect();
            let kind = match kinds.as_slice() {
                ["schedule"] => map
                    .get_node("schedule")
                    .and_then(|n| self.schedule(n, &what, inputs))
                    .map(TriggerKind::Schedule),
                ["webhook"] => map
                    .get_node("webhook")
                    .and_then(|n| self.webhook(n, &what))
                    .map(TriggerKind::Webhook),
                ["kafka"] => map
                    .get_node("kafka")
                    .and_then(|n| self.kafka(n, &what))
                    .map(TriggerKind::Kafka),
                [] => {
                    self.err(
                        map.span(),
                        format!("{what} needs one of `schedule`, `webhook` or `kafka`"),
                    );
                    None
                }
                _ => {
                    self.err(
                        map.span(),
                        format!(
                            "{what} has {}: a trigger is one of them",
                            kinds.join(" and ")
                        ),
                    );
                    None
                }
            };
            if let (Some(id), Some(kind)) = (id, kind) {
                out.push(Trigger { id, kind });
            }
        }
        out
    }

    fn schedule(&mut self, node: &Node, what: &str, inputs: &[InputSpec]) -> Option<Schedule> {
        let map = self.mapping(node, &format!("`schedule` of {what}"))?;
        self.check_fields(map, SCHEDULE_FIELDS, &format!("`schedule` of {what}"));
        let cron = match map.get_node("cron") {
            Some(node) => {
                self.string(node, "`cron`")
                    .filter(|cron| match super::schedule::parse_cron(cron) {
                        Ok(_) => true,
                        Err(e) => {
                            self.err(
                                node.span(),
                                format!("bad cron expression `{cron}` in {what}: {e}"),
                            );
                            false
                        }
                    })
            }
            None => {
                self.err(
                    map.span(),
                    format!(
                        "`schedule` of {what} needs `cron` (e.g. `0 2 * * *`: 02:00 every day)"
                    ),
                );
                None
            }
        };
        let timezone = match map.get_node("timezone") {
            Some(node) => self.string(node, "`timezone`").filter(|tz| {
                if super::schedule::parse_timezone(tz).is_ok() {
                    return true;
                }
                let names: Vec<&str> = super::schedule::timezone_names().collect();
                let hint = closest(tz, &names)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_else(|| {
                        " (an IANA name such as `Europe/Berlin` or `UTC`)".to_owned()
                    });
                self.err(
                    node.span(),
                    format!("unknown time zone `{tz}` in {what}{hint}"),
                );
                false
            }),
            None => Some("UTC".to_owned()),
        };
        let instant = |p: &mut Self, field: &str| -> Option<Option<i64>> {
            let Some(node) = map.get_node(field) else {
                return Some(None);
            };
            let text = p.string(node, &format!("`{field}`"))?;
            match super::schedule::parse_instant(&text) {
                Ok(ms) => Some(Some(ms)),
                Err(e) => {
                    p.err(node.span(), format!("bad `{field}` of {what}: {e}"));
                    None
                }
            }
        };
        let start_ms = instant(&mut *self, "start");
        let end_ms = instant(&mut *self, "end");
        if let (Some(Some(start)), Some(Some(end)), Some(node)) =
            (start_ms, end_ms, map.get_node("end"))
            && end <= start
        {
            self.err(
                node.span(),
                format!("`end` of {what} must be after its `start`"),
            );
        }
        let jitter = map
            .get_node("jitter")
            .map(|n| self.duration(n, "`jitter`"))
            .unwrap_or(Some(Duration::ZERO));
        let max_catch_up = map
            .get_node("max_catch_up")
            .and_then(|n| self.uint(n, "`max_catch_up`", 1));
        let missed = match map.get_node("missed") {
            Some(node) => match self.string(node, "`missed`").as_deref() {
                Some("skip") => Some(MissedPolicy::Skip),
                Some("run_once") => Some(MissedPolicy::RunOnce),
                Some("catch_up") => Some(MissedPolicy::CatchUp {
                    max: max_catch_up.unwrap_or(MissedPolicy::DEFAULT_MAX_CATCH_UP),
                }),
                Some(other) => {
                    self.err(
                        node.span(),
                        format!("unknown `missed` policy `{other}` (expected `skip`, `run_once` or `catch_up`)"),
                    );
                    None
                }
                None => None,
            },
            None => Some(MissedPolicy::default()),
        };
        if let (Some(node), Some(policy)) = (map.get_node("max_catch_up"), missed)
            && !matches!(policy, MissedPolicy::CatchUp { .. })
        {
            self.err(
                node.span(),
                "`max_catch_up` only applies with `missed: catch_up`",
            );
        }
        let run_inputs = match map.get_node("inputs") {
            Some(node) => match to_json(node) {
                Json::Object(values) => {
                    if let Some(m) = node.as_mapping() {
                        for key in m.keys() {
                            if !inputs.iter().any(|i| i.name == key.as_str()) {
                                self.err(
                                    key.span(),
                                    format!("{what} sets unknown input `{}`", key.as_str()),
                                );
                            }
                        }
                    }
                    values
                }
                _ => {
                    self.err(node.span(), format!("`inputs` of {what} must be a mapping"));
                    serde_json::Map::new()
                }
            },
            None => serde_json::Map::new(),
        };
        Some(Schedule {
            cron: cron?,
            timezone: timezone?,
            start_ms: start_ms?,
            end_ms: end_ms?,
            jitter: jitter?,
            missed: missed?,
            inputs: run_inputs,
        })
    }

    fn secret_name(&mut self, map: &MarkedMappingNode, field: &str) -> Option<String> {
        let node = map.get_node(field)?;
        let name = self.string(node, &format!("`{field}`"))?;
        if !crate::secrets::valid_name(&name) {
            self.err(
                node.span(),
                format!("`{field}` names a secret: `{name}` must start with a letter or `_` and use only letters, digits and `_`"),
            );
            return None;
        }
        Some(name)
    }

    fn input_template(&mut self, map: &MarkedMappingNode, what: &str) -> Option<String> {
        let node = map.get_node("input")?;
        let text = self.string(node, "`input`")?;
        if let Err(e) = expr::check_template(&text) {
            self.err(
                node.span(),
                format!("bad expression in `input` of {what}: {}", e.message),
            );
        }
        Some(text)
    }

    fn webhook(&mut self, node: &Node, what: &str) -> Option<WebhookTrigger> {
        let Some(map) = node.as_mapping() else {
            if node.as_scalar().is_some_and(|s| s.as_str().is_empty()) {
                self.err(
                    node.span(),
                    format!("`webhook` of {what} needs `signature_secret` or `token_secret`"),
                );
            } else {
                self.err(
                    node.span(),
                    format!("`webhook` of {what} must be a mapping"),
                );
            }
            return None;
        };
        self.check_fields(map, WEBHOOK_FIELDS, &format!("`webhook` of {what}"));
        let signature_secret = self.secret_name(map, "signature_secret");
        let token_secret = self.secret_name(map, "token_secret");
        if map.get_node("signature_secret").is_none() && map.get_node("token_secret").is_none() {
            self.err(
                map.span(),
                format!("`webhook` of {what} needs `signature_secret` (HMAC of the body) or `token_secret` (a bearer token), or both: a webhook without either would start runs for anyone"),
            );
            return None;
        }
        let input = self.input_template(map, what);
        Some(WebhookTrigger {
            signature_secret,
            token_secret,
            input,
        })
    }

    fn kafka(&mut self, node: &Node, what: &str) -> Option<KafkaTrigger> {
        let map = self.mapping(node, &format!("`kafka` of {what}"))?;
        self.check_fields(map, KAFKA_FIELDS, &format!("`kafka` of {what}"));
        let topic = match map.get_node("topic") {
            Some(node) => self.string(node, "`topic`").filter(|t| {
                let ok = valid_name(t) && t.len() <= 249;
                if !ok {
                    self.err(
                        node.span(),
                        format!("Kafka topic `{t}` may only use letters, digits, `-`, `_` and `.`"),
                    );
                }
                ok
            }),
            None => {
                self.err(map.span(), format!("`kafka` of {what} needs `topic`"));
                None
            }
        };
        let input = self.input_template(map, what);
        Some(KafkaTrigger {
            topic: topic?,
            input,
        })
    }

    fn concurrency(&mut self, node: &Node) -> Option<Concurrency> {
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
            Some(node) => match self.string(node, "`concurrency.policy`").as_deref() {
                Some("queue") => Some(ConcurrencyPolicy::Queue),
                Some("skip") => Some(ConcurrencyPolicy::Skip),
                Some("cancel_oldest") => Some(ConcurrencyPolicy::CancelOldest),
                Some(other) => {
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

    fn defaults(&mut self, node: Option<&Node>) -> Defaults {
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

    fn steps(&mut self, node: &Node, defaults: &Defaults) -> Vec<Step> {
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

    /// Cross-step checks: unique ids, `needs` that exist and form no cycle, compensation steps,
    /// and expressions that compile and read only what they may.
    fn check_graph(&mut self, flow: &mut Flow, map: &MarkedMappingNode) {
        let step_nodes: Vec<&MarkedMappingNode> = map
            .get_node("steps")
            .and_then(Node::as_sequence)
            .map(|seq| seq.iter().filter_map(Node::as_mapping).collect())
            .unwrap_or_default();
        let node_of = |id: &str| {
            step_nodes
                .iter()
                .copied()
                .find(|m| m.get_scalar("id").is_some_and(|s| s.as_str() == id))
        };
        let span_of = |id: &str, field: &str| -> Span {
            node_of(id)
                .and_then(|m| m.get_node(field).map(|n| *n.span()).or(Some(*m.span())))
                .unwrap_or_else(Span::new_blank)
        };

        let mut seen = BTreeSet::new();
        for (i, step) in flow.steps.iter().enumerate() {
            if !seen.insert(step.id.clone()) {
                let span = step_nodes
                    .get(i)
                    .and_then(|m| m.get_node("id"))
                    .map(|n| *n.span())
                    .unwrap_or_else(Span::new_blank);
                self.err(&span, format!("duplicate step id `{}`", step.id));
            }
        }
        let all: BTreeSet<String> = seen;

        // Compensation steps: referenced from on_failure, never part of the normal graph.
        let mut compensations = BTreeSet::new();
        for step in &flow.steps {
            if let OnFailure::Compensate(target) = &step.on_failure {
                if !all.contains(target) {
                    self.err(
                        &span_of(&step.id, "on_failure"),
                        format!(
                            "step `{}` compensates with unknown step `{target}`",
                            step.id
                        ),
                    );
                } else if target == &step.id {
                    self.err(
                        &span_of(&step.id, "on_failure"),
                        format!("step `{}` cannot be its own compensation", step.id),
                    );
                } else {
                    compensations.insert(target.clone());
                }
            }
        }
        for step in &mut flow.steps {
            step.compensation = compensations.contains(&step.id);
        }

        for step in &flow.steps {
            for need in &step.needs {
                if need == &step.id {
                    self.err(
                        &span_of(&step.id, "needs"),
                        format!("step `{}` needs itself", step.id),
                    );
                } else if !all.contains(need) {
                    let hint = closest(need, &all.iter().map(String::as_str).collect::<Vec<_>>())
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    self.err(
                        &span_of(&step.id, "needs"),
                        format!("step `{}` needs unknown step `{need}`{hint}", step.id),
                    );
                } else if compensations.contains(need) {
                    self.err(&span_of(&step.id, "needs"), format!("step `{}` needs `{need}`, which is a compensation step and only runs when another step fails", step.id));
                }
            }
            if step.uses == "subflow"
                && !step
                    .with
                    .get("flow")
                    .is_some_and(serde_json::Value::is_string)
            {
                self.err(
                    &span_of(&step.id, "with"),
                    format!(
                        "`subflow` step `{}` needs `with.flow`, the name of a registered flow",
                        step.id
                    ),
                );
            }
            if step.uses == "approval" && step.for_each.is_some() {
                self.err(
                    &span_of(&step.id, "for_each"),
                    format!("`{}` steps cannot use `for_each`", step.uses),
                );
            }
        }

        if let Some(cycle) = find_cycle(flow) {
            let first = &cycle[0];
            self.err(
                &span_of(first, "needs"),
                format!("`needs` form a cycle: {}", cycle.join(" -> ")),
            );
            return;
        }

        let ancestors = ancestors(flow);
        for step in &flow.steps {
            let visible = if step.compensation {
                None
            } else {
                ancestors.get(&step.id)
            };
            let scope = |item: bool, output: bool| Scope {
                step: &step.id,
                visible,
                all_steps: &all,
                item,
                output,
                secrets: false,
            };
            let in_loop = step.for_each.is_some();
            if let Some(cond) = &step.condition {
                self.check_expr(
                    cond,
                    &span_of(&step.id, "if"),
                    "`if`",
                    &scope(false, false),
                    false,
                );
            }
            if let Some(fe) = &step.for_each {
                self.check_expr(
                    &fe.items,
                    &span_of(&step.id, "for_each"),
                    "`for_each`",
                    &scope(false, false),
                    false,
                );
            }
            if let Some(until) = &step.until {
                self.check_expr(
                    until,
                    &span_of(&step.id, "until"),
                    "`until`",
                    &scope(in_loop, true),
                    false,
                );
            }
            if let Some(with) = node_of(&step.id).and_then(|m| m.get_node("with")) {
                let scope = Scope {
                    secrets: true,
                    ..scope(in_loop, false)
                };
                self.check_templates_in(with, &scope);
            }
        }
        if let Some(outputs) = map.get_node("outputs") {
            let scope = Scope {
                step: "",
                visible: None,
                all_steps: &all,
                item: false,
                output: false,
                secrets: false,
            };
            self.check_templates_in(outputs, &scope);
        }
    }

    fn check_templates_in(&mut self, node: &Node, scope: &Scope<'_>) {
        match node {
            Node::Scalar(s) => self.check_expr(s.as_str(), s.span(), "template", scope, true),
            Node::Sequence(seq) => seq.iter().for_each(|n| self.check_templates_in(n, scope)),
            Node::Mapping(map) => map.values().for_each(|n| self.check_templates_in(n, scope)),
        }
    }

    fn check_expr(
        &mut self,
        source: &str,
        span: &Span,
        what: &str,
        scope: &Scope<'_>,
        template: bool,
    ) {
        let checked = if template {
            expr::check_template(source)
        } else {
            expr::check_expression(source)
        };
        let refs = match checked {
            Ok(refs) => refs,
            Err(e) => {
                self.err(span, format!("bad expression in {what}: {}", e.message));
                return;
            }
        };
        for r in refs {
            let mut parts = r.split('.');
            let root = parts.next().unwrap_or_default();
            match root {
                "inputs" | "run" => {}
                _ if expr::is_global(root) => {}
                "item" | "index" if scope.item => {}
                "output" if scope.output => {}
                "secrets" if !scope.secrets => self.err(
                    span,
                    format!("{what} reads `secrets`: secrets may only be read in a step's `with`, so that their values never reach run records"),
                ),
                "secrets" => match parts.next() {
                    Some(name) if crate::secrets::valid_name(name) => {
                        self.secrets.insert(name.to_owned());
                    }
                    _ => self.err(span, format!("{what} must read one secret at a time, as `secrets.NAME`")),
                },
                "steps" => {
                    let Some(target) = parts.next() else { continue };
                    if !scope.all_steps.contains(target) {
                        self.err(
                            span,
                            format!(
                                "{what} reads `steps.{target}`, but there is no step `{target}`"
                            ),
                        );
                    } else if let Some(visible) = scope.visible
                        && !visible.contains(target)
                    {
                        self.err(span, format!("{what} of step `{}` reads `steps.{target}`, which is not among its `needs` (directly or through other steps)", scope.step));
                    }
                }
                other => {
                    let mut names = vec!["inputs", "steps", "run"];
                    if scope.item {
                        names.extend(["item", "index"]);
                    }
                    if scope.output {
                        names.push("output");
                    }
                    self.err(
                        span,
                        format!(
                            "{what} reads unknown name `{other}` (available: {})",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// Converts a YAML node to JSON: plain scalars become null, booleans and numbers where they read
/// as such; quoted scalars stay strings.
fn to_json(node: &Node) -> Json {
    match node {
        Node::Scalar(s) => scalar_to_json(s),
        Node::Sequence(seq) => Json::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

fn scalar_to_json(s: &MarkedScalarNode) -> Json {
    if s.may_coerce() {
        match s.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => return Json::Null,
            _ => {}
        }
        if let Some(b) = s.as_bool() {
            return Json::Bool(b);
        }
        if let Some(i) = s.as_i64() {
            return Json::from(i);
        }
        if let Some(u) = s.as_u64() {
            return Json::from(u);
        }
        if let Some(f) = s.as_f64().filter(|f| f.is_finite()) {
            let text = s.as_str();
            if text
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
                && let Some(n) = serde_json::Number::from_f64(f)
            {
                return Json::Number(n);
            }
        }
    }
    Json::String(s.as_str().to_owned())
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A cycle in `needs`, as step ids from the first back to it, if there is one.
fn find_cycle(flow: &Flow) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: HashMap<&str, usize> = flow
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; flow.steps.len()];
    let mut stack: Vec<usize> = Vec::new();

    fn visit(
        i: usize,
        flow: &Flow,
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[i] = Mark::Open;
        stack.push(i);
        for need in &flow.steps[i].needs {
            let Some(&j) = index.get(need.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::Open => {
                    let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..]
                        .iter()
                        .map(|&k| flow.steps[k].id.clone())
                        .collect();
                    cycle.push(flow.steps[j].id.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(j, flow, index, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        None
    }

    (0..flow.steps.len()).find_map(|i| {
        if marks[i] == Mark::New {
            visit(i, flow, &index, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

/// For each step, every step it transitively needs. Assumes no cycles.
fn ancestors(flow: &Flow) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    fn collect(
        id: &str,
        flow: &Flow,
        out: &mut BTreeMap<String, BTreeSet<String>>,
    ) -> BTreeSet<String> {
        if let Some(done) = out.get(id) {
            return done.clone();
        }
        let mut set = BTreeSet::new();
        if let Some(step) = flow.step(id) {
            for need in &step.needs {
                if flow.step(need).is_some() {
                    set.insert(need.clone());
                    set.extend(collect(need, flow, out));
                }
            }
        }
        out.insert(id.to_owned(), set.clone());
        set
    }
    for step in &flow.steps {
        collect(&step.id, flow, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GOOD: &str = r#"
name: greet
description: Says hello
inputs:
  who: { type: string, default: world }
  times: { type: integer, default: 2 }
defaults:
  timeout: 10s
steps:
  - id: hello
    uses: log
    with:
      message: "Hello, {{ inputs.who }}!"
  - id: each
    uses: echo
    needs: hello
    for_each: { items: "range(inputs.times)", concurrency: 2 }
    with: { n: "{{ item }}" }
    retry: { max_attempts: 3, backoff: fixed, delay: 100ms }
    on_failure: { compensate: undo }
  - id: undo
    uses: log
    with: { message: "undo {{ steps.each.output }}" }
outputs:
  said: "{{ steps.hello.output }}"
"#;

    #[test]
    fn parses_a_good_flow() {
        let flow = parse("greet.yaml", GOOD).unwrap();
        assert_eq!(flow.name, "greet");
        assert_eq!(flow.steps.len(), 3);
        let each = flow.step("each").unwrap();
        assert_eq!(each.needs, vec!["hello"]);
        assert_eq!(each.for_each.as_ref().unwrap().concurrency, 2);
        assert_eq!(each.retry.max_attempts, 3);
        assert_eq!(each.retry.delay, Duration::from_millis(100));
        assert_eq!(each.timeout, Duration::from_secs(10));
        assert_eq!(each.on_failure, OnFailure::Compensate("undo".into()));
        assert!(flow.step("undo").unwrap().compensation);
        assert_eq!(flow.inputs[1].default, Some(json!(2)));
    }

    #[test]
    fn reports_every_problem_with_its_position() {
        let src = "name: broken
steps:
  - id: a
    uses: teleport
    colour: blue
  - id: b
    uses: sleep
    needs: [a, zzz]
    timeout: soon
    if: \"steps.a.output ==\"
";
        let err = parse("broken.yaml", src).unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("broken.yaml:4:11: unknown step kind `teleport`"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("broken.yaml:5:5: unknown field `colour` in step `a`"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("broken.yaml:8:12: step `b` needs unknown step `zzz`"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("broken.yaml:9:14: bad duration `soon`"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("broken.yaml:10:9: bad expression in `if`"),
            "{text}"
        );
    }

    #[test]
    fn finds_cycles() {
        let src = "name: c
steps:
  - { id: a, uses: log, needs: c }
  - { id: b, uses: log, needs: a }
  - { id: c, uses: log, needs: b }
";
        let err = parse("c.yaml", src).unwrap_err().to_string();
        assert!(
            err.contains("`needs` form a cycle: a -> c -> b -> a"),
            "{err}"
        );
        assert!(err.starts_with("c.yaml:3:"), "{err}");
    }

    #[test]
    fn expressions_may_only_read_what_the_step_needs() {
        let src = "name: r
steps:
  - { id: a, uses: log }
  - { id: b, uses: log, with: { m: '{{ steps.a.output }} {{ steps.c.output }}' } }
  - { id: c, uses: log, needs: a, with: { m: '{{ item }}' } }
";
        let err = parse("r.yaml", src).unwrap_err().to_string();
        assert!(
            err.contains("reads `steps.a`, which is not among its `needs`"),
            "{err}"
        );
        assert!(
            err.contains("reads `steps.c`, which is not among its `needs`"),
            "{err}"
        );
        assert!(err.contains("reads unknown name `item`"), "{err}");
    }

    #[test]
    fn secrets_are_read_only_in_with() {
        let src = "name: s
steps:
  - { id: a, uses: http, with: { headers: { Authorization: 'Bearer {{ secrets.API_TOKEN }}' } } }
  - { id: b, uses: log, needs: a, if: 'secrets.API_TOKEN', with: { m: x } }
outputs: { leak: '{{ secrets.API_TOKEN }}' }
";
        let err = parse("s.yaml", src).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.contains("s.yaml:4:") && err.contains("`if` reads `secrets`"),
            "{err}"
        );
        assert!(
            err.contains("s.yaml:5:") && err.contains("template reads `secrets`"),
            "{err}"
        );
        let ok = parse(
            "s.yaml",
            "name: s\nsteps:\n  - { id: a, uses: http, with: { t: '{{ secrets.API_TOKEN }}' } }\n",
        )
        .unwrap();
        assert_eq!(ok.secrets, BTreeSet::from(["API_TOKEN".to_owned()]));
    }

    #[test]
    fn yaml_syntax_errors_have_positions() {
        let err = parse("x.yaml", "name: x\nsteps: [\n").unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].message.starts_with("invalid YAML"), "{err}");
        let err = parse("x.yaml", "name: x\nname: y\nsteps: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.yaml:2:1: duplicate key `name`"), "{err}");
    }

    #[test]
    fn json_flows_parse_too() {
        let flow = parse(
            "j.json",
            r#"{"name": "j", "steps": [{"id": "a", "uses": "echo", "with": {"n": 1, "s": "1"}}]}"#,
        )
        .unwrap();
        assert_eq!(flow.steps[0].with, json!({"n": 1, "s": "1"}));
    }

    #[test]
    fn suggests_near_misses() {
        let err = parse(
            "t.yaml",
            "name: t\nsteps:\n  - { id: a, uses: log, neds: [] }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did you mean `needs`?"), "{err}");
    }

    #[test]
    fn inputs_are_resolved_with_defaults_and_types() {
        let flow = parse("greet.yaml", GOOD).unwrap();
        let given = json!({"who": "Ada"});
        let resolved = flow.resolve_inputs(given.as_object().unwrap()).unwrap();
        assert_eq!(resolved, json!({"who": "Ada", "times": 2}));
        let bad = json!({"times": "two", "extra": 1});
        let err = flow.resolve_inputs(bad.as_object().unwrap()).unwrap_err();
        assert!(
            err.contains("unknown input `extra`")
                && err.contains("input `times` must be an integer"),
            "{err}"
        );
    }

    const TRIGGERS: &str = r#"
name: t
inputs:
  region: { type: string, default: us }
triggers:
  - id: nightly
    schedule: { cron: "0 30 2 * * *", timezone: Europe/Berlin, start: "2026-01-01T00:00:00Z", end: "2027-01-01T00:00:00Z", jitter: 30s, missed: catch_up, max_catch_up: 5, inputs: { region: eu } }
  - id: hourly
    schedule: { cron: "0 * * * *" }
  - id: inbound
    webhook: { signature_secret: HOOK_KEY, token_secret: HOOK_TOKEN, input: "{{ body.customer }}" }
  - id: orders
    kafka: { topic: orders, input: "{{ message }}" }
concurrency: { max_runs: 5, policy: cancel_oldest }
steps:
  - { id: a, uses: log }
"#;

    #[test]
    fn parses_triggers_and_concurrency() {
        let flow = parse("t.yaml", TRIGGERS).unwrap();
        assert_eq!(flow.triggers.len(), 4);
        let TriggerKind::Schedule(nightly) = &flow.triggers[0].kind else {
            panic!("not a schedule: {:?}", flow.triggers[0]);
        };
        assert_eq!(nightly.cron, "0 30 2 * * *");
        assert_eq!(nightly.timezone, "Europe/Berlin");
        assert_eq!(nightly.start_ms, Some(1_767_225_600_000));
        assert_eq!(nightly.end_ms, Some(1_798_761_600_000));
        assert_eq!(nightly.jitter, Duration::from_secs(30));
        assert_eq!(nightly.missed, MissedPolicy::CatchUp { max: 5 });
        assert_eq!(nightly.inputs.get("region"), Some(&json!("eu")));
        let TriggerKind::Schedule(hourly) = &flow.triggers[1].kind else {
            panic!("not a schedule");
        };
        assert_eq!(
            (hourly.timezone.as_str(), hourly.missed, hourly.jitter),
            ("UTC", MissedPolicy::RunOnce, Duration::ZERO)
        );
        assert_eq!(
            flow.triggers[2].kind,
            TriggerKind::Webhook(WebhookTrigger {
                signature_secret: Some("HOOK_KEY".into()),
                token_secret: Some("HOOK_TOKEN".into()),
                input: Some("{{ body.customer }}".into()),
            })
        );
        assert_eq!(flow.triggers[3].source(), "kafka:orders");
        assert_eq!(
            flow.concurrency,
            Some(Concurrency {
                max_runs: 5,
                policy: ConcurrencyPolicy::CancelOldest,
                max_queued: None,
            })
        );
        // Stored flows from before triggers existed still load.
        let mut old = serde_json::to_value(&flow).unwrap();
        old.as_object_mut().unwrap().remove("triggers");
        old.as_object_mut().unwrap().remove("concurrency");
        let loaded: Flow = serde_json::from_value(old).unwrap();
        assert!(loaded.triggers.is_empty() && loaded.concurrency.is_none());
        // And the new fields round-trip.
        let text = serde_json::to_string(&flow).unwrap();
        assert_eq!(serde_json::from_str::<Flow>(&text).unwrap(), flow);
    }

    #[test]
    fn reports_bad_triggers_with_positions() {
        let src = "name: t
triggers:
  - id: a
    schedule: { cron: '0 0 25 * * * *', timezone: Europe/Berlinn, start: yesterday, jiter: 5s }
  - id: a
    webhook: { input: '{{ body }}' }
  - id: k
    kafka: { input: '{{ message }}' }
  - id: s
    schedule: { cron: '0 2 * *', missed: sometimes }
concurrency: { max_runs: 0, policy: cancel_newest }
steps:
  - { id: a, uses: log }
";
        let err = parse("t.yaml", src).unwrap_err().to_string();
        let expect = [
            "t.yaml:4:23: bad cron expression `0 0 25 * * * *`",
            "t.yaml:4:51: unknown time zone `Europe/Berlinn` in trigger `a`; did you mean `Europe/Berlin`?",
            "t.yaml:4:74: bad `start` of trigger `a`",
            "t.yaml:4:85: unknown field `jiter` in `schedule` of trigger `a`; did you mean `jitter`?",
            "t.yaml:5:9: duplicate trigger id `a`",
            "t.yaml:6:14: `webhook` of a trigger needs `signature_secret`",
            "t.yaml:8:12: `kafka` of trigger `k` needs `topic`",
            "t.yaml:10:23: bad cron expression `0 2 * *` in trigger `s`",
            "t.yaml:10:42: unknown `missed` policy `sometimes`",
            "t.yaml:11:26: `concurrency.max_runs` must be a whole number of at least 1, got `0`",
            "t.yaml:11:37: unknown concurrency policy `cancel_newest`",
        ];
        for e in expect {
            assert!(
                err.lines().any(|l| l.starts_with(e)),
                "missing `{e}` in:\n{err}"
            );
        }
        assert_eq!(err.lines().count(), expect.len(), "{err}");
    }

    #[test]
    fn schedule_inputs_must_be_declared() {
        let src = "name: t
triggers:
  - { id: n, schedule: { cron: '0 * * * *', end: '2026-01-01T00:00:00Z', start: '2026-02-01T00:00:00+01:00', inputs: { regoin: eu } } }
steps:
  - { id: a, uses: log }
";
        let err = parse("t.yaml", src).unwrap_err().to_string();
        assert!(
            err.contains("`end` of trigger `n` must be after its `start`"),
            "{err}"
        );
        assert!(
            err.contains("trigger `n` sets unknown input `regoin`"),
            "{err}"
        );
        let err = parse(
            "t.yaml",
            "name: t\ntriggers:\n  - { id: x, schedule: { cron: '* * * * *' }, kafka: { topic: t } }\n  - { id: y }\nsteps: [{ id: a, uses: log }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("trigger `x` has schedule and kafka"), "{err}");
        assert!(
            err.contains("trigger `y` needs one of `schedule`, `webhook` or `kafka`"),
            "{err}"
        );
    }

    #[test]
    fn concurrency_defaults_to_queue() {
        let flow = parse(
            "c.yaml",
            "name: c\nconcurrency: { max_runs: 2, max_queued: 10 }\nsteps: [{ id: a, uses: log }]\n",
        )
        .unwrap();
        let concurrency = flow.concurrency.unwrap();
        assert_eq!(concurrency.policy, ConcurrencyPolicy::Queue);
        assert_eq!(
            (concurrency.max_runs, concurrency.max_queued),
            (2, Some(10))
        );
        let err = parse(
            "c.yaml",
            "name: c\nconcurrency: { max_runs: 2, policy: skip, max_queued: 3 }\nsteps: [{ id: a, uses: log }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("c.yaml:2:55: `concurrency.max_queued` applies to `policy: queue` only"),
            "{err}"
        );
    }
}
