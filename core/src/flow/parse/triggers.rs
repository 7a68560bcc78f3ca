//! `triggers`: what starts runs of a flow besides an explicit request (schedules, webhooks and
//! Kafka topics).

use std::collections::BTreeSet;
use std::time::Duration;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;
use serde_json::Value as Json;

use super::Parser;
use super::nodes::{closest, to_json, valid_name};
use crate::expr;
use crate::flow::model::{
    InputSpec, KafkaTrigger, MissedPolicy, Schedule, Trigger, TriggerKind, WebhookTrigger,
};

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

impl Parser<'_> {
    pub(super) fn triggers(&mut self, node: &Node, inputs: &[InputSpec]) -> Vec<Trigger> {
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
            Some(node) => self.string(node, "`cron`").filter(|cron| {
                match crate::flow::schedule::parse_cron(cron) {
                    Ok(_) => true,
                    Err(e) => {
                        self.err(
                            node.span(),
                            format!("bad cron expression `{cron}` in {what}: {e}"),
                        );
                        false
                    }
                }
            }),
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
                if crate::flow::schedule::parse_timezone(tz).is_ok() {
                    return true;
                }
                let names: Vec<&str> = crate::flow::schedule::timezone_names().collect();
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
            match crate::flow::schedule::parse_instant(&text) {
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
                format!("`webhook` of {what} needs `signature_secret` (a signature over timestamp, delivery id and body) or `token_secret` (a bearer token), or both: a webhook without either would start runs for anyone"),
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
}
