//! The parsed, validated form of a flow definition.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Step kinds the orchestrator handles itself rather than dispatching to a worker.
pub const ORCHESTRATOR_KINDS: &[&str] = &["approval", "subflow"];

/// Step kinds the workers of this release ship.
pub const WORKER_KINDS: &[&str] = &[
    "http",
    "transform",
    "sleep",
    "log",
    "echo",
    "llm",
    "sql",
    "notify",
    "browser",
];

/// The queue (worker pool) a step runs on when it names none.
pub const DEFAULT_QUEUE: &str = "default";

/// How long a step may run when it sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated flow definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub name: String,
    /// The version the file asked for, if any; the registry assigns the real one.
    pub version: Option<u32>,
    pub description: String,
    pub inputs: Vec<InputSpec>,
    /// Steps in the order they were written.
    pub steps: Vec<Step>,
    /// Output templates rendered when the run succeeds.
    pub outputs: BTreeMap<String, Json>,
    /// The secrets the steps read (`secrets.NAME` in `with`).
    #[serde(default)]
    pub secrets: std::collections::BTreeSet<String>,
    /// What starts runs besides the API: schedules, webhooks, Kafka topics.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// How many runs of the flow may be active at once, and what happens past that.
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// Step positions by id, filled by the parser ([`Flow::index_steps`]); a run looks steps up
    /// on every decision, so a lookup must not cost a pass over the steps.
    #[serde(skip)]
    pub step_positions: StepPositions,
}

/// Step positions by id: derived from `steps`, so two flows with the same steps are equal
/// whatever their index holds.
#[derive(Debug, Clone, Default)]
pub struct StepPositions(std::collections::HashMap<String, usize>);

impl PartialEq for StepPositions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Flow {
    /// Fills [`Flow::step_positions`] from `steps` (the first step of each id).
    pub fn index_steps(&mut self) {
        let positions = &mut self.step_positions.0;
        positions.clear();
        for (i, step) in self.steps.iter().enumerate() {
            positions.entry(step.id.clone()).or_insert(i);
        }
    }

    /// Whether deciding what a run of this flow does next evaluates any expression or
    /// template: an `if`, `for_each`, `until`, a templated `with`, or `outputs`.
    pub fn evaluates_expressions(&self) -> bool {
        !self.outputs.is_empty()
            || self.steps.iter().any(|s| {
                s.condition.is_some()
                    || s.for_each.is_some()
                    || s.until.is_some()
                    || crate::expr::has_templates(&s.with)
            })
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.step_index(id).map(|i| &self.steps[i])
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        let positions = &self.step_positions.0;
        if positions.is_empty() && !self.steps.is_empty() {
            // Built without the parser (deserialized): no index.
            return self.steps.iter().position(|s| s.id == id);
        }
        positions.get(id).copied()
    }

    /// The inputs given, checked against the declared ones, with defaults filled in.
    pub fn resolve_inputs(&self, given: &serde_json::Map<String, Json>) -> Result<Json, String> {
        let mut out = serde_json::Map::new();
        let mut problems = Vec::new();
        for name in given.keys() {
            if !self.inputs.iter().any(|i| &i.name == name) {
                problems.push(format!("unknown input `{name}`"));
            }
        }
        for spec in &self.inputs {
            match given.get(&spec.name).or(spec.default.as_ref()) {
                Some(value) => {
                    if !spec.ty.accepts(value) {
                        problems.push(format!(
                            "input `{}` must be {}, got {value}",
                            spec.name,
                            spec.ty.describe()
                        ));
                    }
                    out.insert(spec.name.clone(), value.clone());
                }
                None => problems.push(format!("input `{}` is required", spec.name)),
            }
        }
        if problems.is_empty() {
            Ok(Json::Object(out))
        } else {
            Err(problems.join("; "))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub ty: InputType,
    pub default: Option<Json>,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Any,
}

impl InputType {
    pub const NAMES: &'static [&'static str] = &[
        "string", "number", "integer", "boolean", "object", "array", "any",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "number" => Self::Number,
            "integer" => Self::Integer,
            "boolean" => Self::Boolean,
            "object" => Self::Object,
            "array" => Self::Array,
            "any" => Self::Any,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    fn describe(self) -> String {
        match self {
            Self::Any => "any value".into(),
            Self::Integer | Self::Array | Self::Object => format!("an {}", self.name()),
            other => format!("a {}", other.name()),
        }
    }

    pub fn accepts(self, value: &Json) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Boolean => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
            Self::Any => true,
        }
    }
}

/// Something that starts runs of a flow on its own: a schedule, a webhook or a Kafka topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// Unique within the flow; runs it starts record `<kind>:<id>` (see [`Trigger::source`]).
    pub id: String,
    pub kind: TriggerKind,
}

impl Trigger {
    /// What a run started by this trigger records as its trigger: `schedule:<id>`,
    /// `webhook:<id>` or `kafka:<id>`.
    pub fn source(&self) -> String {
        format!("{}:{}", self.kind.name(), self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Schedule(Schedule),
    Webhook(WebhookTrigger),
    Kafka(KafkaTrigger),
}

impl TriggerKind {
    /// `schedule`, `webhook` or `kafka`: the YAML key, and the prefix of a run's trigger.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Schedule(_) => "schedule",
            Self::Webhook(_) => "webhook",
            Self::Kafka(_) => "kafka",
        }
    }
}

/// A cron schedule in a time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Five fields (minute precision) or six (with seconds first); validated at parse time.
    pub cron: String,
    /// An IANA time zone name; `UTC` when the flow names none.
    pub timezone: String,
    /// No fire before this instant (Unix milliseconds).
    pub start_ms: Option<i64>,
    /// No fire after this instant (Unix milliseconds).
    pub end_ms: Option<i64>,
    /// Each fire is delayed by a random amount up to this.
    #[serde(with = "duration_ms")]
    pub jitter: Duration,
    /// What happens to fire times that passed while the orchestrator was down.
    pub missed: MissedPolicy,
    /// The inputs of the runs it starts.
    pub inputs: serde_json::Map<String, Json>,
}

/// What happens to fire times that passed while the orchestrator was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// None of them run.
    Skip,
    /// One run, for the latest of them.
    #[default]
    RunOnce,
    /// One run for each, oldest first, at most `max` (the latest `max`).
    CatchUp { max: u32 },
}

impl MissedPolicy {
    /// `max_catch_up` when a flow sets none.
    pub const DEFAULT_MAX_CATCH_UP: u32 = 10;
}

/// A webhook: `POST /hooks/{namespace}/{flow}`, authenticated by an HMAC signature, a token, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTrigger {
    /// The secret (by name) that keys the HMAC signature of the timestamp, delivery id and body
    /// ([`crate::signature`]).
    pub signature_secret: Option<String>,
    /// The secret (by name) holding the bearer token.
    pub token_secret: Option<String>,
    /// A template over `body` whose value becomes the run's inputs; the whole body when none.
    pub input: Option<String>,
}

/// One run per message of a Kafka topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaTrigger {
    pub topic: String,
    /// A template over `message` whose value becomes the run's inputs; the whole message when none.
    pub input: Option<String>,
}

/// How many runs of a flow may be active at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    /// At least 1.
    pub max_runs: u32,
    pub policy: ConcurrencyPolicy,
    /// With `queue`: how many runs may wait; past it a new run is refused. None: no limit
    /// but the orchestrator's `max_active_runs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
}

/// What happens to a run started while `max_runs` runs of its flow are active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// It waits until one of them ends.
    #[default]
    Queue,
    /// It is refused.
    Skip,
    /// The oldest of them is cancelled to make room.
    CancelOldest,
}

impl ConcurrencyPolicy {
    pub const NAMES: &'static [&'static str] = &["queue", "skip", "cancel_oldest"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "queue" => Self::Queue,
            "skip" => Self::Skip,
            "cancel_oldest" => Self::CancelOldest,
            _ => return None,
        })
    }
}

/// One step of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub name: Option<String>,
    /// The executor kind.
    pub uses: String,
    /// Inputs, with templates; rendered just before each dispatch.
    pub with: Json,
    pub needs: Vec<String>,
    /// `if`: the step is skipped when this is false.
    pub condition: Option<String>,
    pub for_each: Option<ForEach>,
    pub queue: String,
    /// How long an attempt may take; for `approval` steps, the deadline for an answer (zero when
    /// the step sets none: it waits for as long as it takes).
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Evaluated over `output`; false fails the attempt with the code `until`.
    pub until: Option<String>,
    pub on_failure: OnFailure,
    /// True when the step only runs as another step's compensation.
    pub compensation: bool,
}

impl Step {
    /// True when the orchestrator runs the step itself.
    pub fn is_orchestrator_kind(&self) -> bool {
        ORCHESTRATOR_KINDS.contains(&self.uses.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// An expression yielding the list of items.
    pub items: String,
    /// How many items may run at once.
    pub concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 means no retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
    #[serde(with = "duration_ms")]
    pub delay: Duration,
    #[serde(with = "duration_ms")]
    pub max_delay: Duration,
    /// Error codes to retry; empty means every error its executor marks retryable.
    pub on: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff: Backoff::Exponential,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            on: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether an error with this code may be retried after `attempt` attempts.
    pub fn should_retry(&self, attempt: u32, code: &str, retryable: bool) -> bool {
        attempt < self.max_attempts
            && if self.on.is_empty() {
                retryable
            } else {
                self.on.iter().any(|c| c == code)
            }
    }

    /// How long to wait after the failure of attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
                self.delay.saturating_mul(factor).min(self.max_delay)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Fixed,
    Exponential,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails.
    Fail,
    /// The step counts as finished (failed) and the run goes on.
    Continue,
    /// The named compensation step runs, then the run fails.
    Compensate(String),
}

impl std::fmt::Display for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fail => f.write_str("fail"),
            Self::Continue => f.write_str("continue"),
            Self::Compensate(step) => write!(f, "compensate:{step}"),
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            on: vec![],
        };
        let delays: Vec<u128> = (1..=5).map(|a| policy.delay_after(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn retry_respects_codes_and_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            on: vec!["timeout".into()],
            ..RetryPolicy::default()
        };
        assert!(policy.should_retry(1, "timeout", false));
        assert!(!policy.should_retry(1, "http_status", true));
        assert!(!policy.should_retry(3, "timeout", true));
        let any = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        assert!(any.should_retry(1, "whatever", true));
        assert!(!any.should_retry(1, "whatever", false));
    }
}

/// The roles an API caller may have (the orchestrator's `auth` grants each its permissions).
pub const ROLE_NAMES: [&str; 5] = ["admin", "developer", "operator", "approver", "viewer"];

/// Who may answer an approval step: `with.approvers`, `{ roles: [...], names: [...] }`. A caller
/// of a listed role, or a caller whose token (or certificate, or OIDC subject) has a listed name,
/// may answer; anyone else is refused, admins included. A step without `approvers` may be
/// answered by every caller the API lets answer approvals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approvers {
    pub roles: Vec<String>,
    pub names: Vec<String>,
}

impl Approvers {
    /// The approvers an approval step's `with` names, if any; an error says what is wrong.
    pub fn of(with: &Json) -> Result<Option<Self>, String> {
        let Some(value) = with.get("approvers") else {
            return Ok(None);
        };
        let Json::Object(map) = value else {
            return Err("`approvers` must be a mapping with `roles` and/or `names`".into());
        };
        let mut approvers = Approvers::default();
        for (key, list) in map {
            let target = match key.as_str() {
                "roles" => &mut approvers.roles,
                "names" => &mut approvers.names,
                other => {
                    return Err(format!(
                        "`approvers` has an unknown key `{other}` (expected `roles` or `names`)"
                    ));
                }
            };
            let Json::Array(items) = list else {
                return Err(format!("`approvers.{key}` must be a list of strings"));
            };
            for item in items {
                match item.as_str() {
                    Some(text) if !text.trim().is_empty() && !text.contains("{{") => {
                        target.push(text.trim().to_owned());
                    }
                    _ => {
                        return Err(format!(
                            "`approvers.{key}` must hold plain non-empty names, not {item}"
                        ));
                    }
                }
            }
        }
        if let Some(role) = approvers
            .roles
            .iter()
            .find(|r| !ROLE_NAMES.contains(&r.as_str()))
        {
            return Err(format!(
                "`approvers.roles` names `{role}`, which is not a role ({})",
                ROLE_NAMES.join(", ")
            ));
        }
        if approvers.roles.is_empty() && approvers.names.is_empty() {
            return Err("`approvers` names no role and no name: nobody could answer".into());
        }
        Ok(Some(approvers))
    }

    /// Whether a caller with `role` (empty: none) and `name` may answer.
    pub fn allow(&self, role: &str, name: &str) -> bool {
        (!role.is_empty() && self.roles.iter().any(|r| r == role))
            || (!name.is_empty() && self.names.iter().any(|n| n == name))
    }

    /// Who may answer, for a person: `roles approver, admin; names alice`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.roles.is_empty() {
            parts.push(format!("roles {}", self.roles.join(", ")));
        }
        if !self.names.is_empty() {
            parts.push(format!("names {}", self.names.join(", ")));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod approvers_tests {
    use serde_json::json;

    use super::Approvers;

    #[test]
    fn approvers_are_roles_or_names_and_nothing_else() {
        assert_eq!(Approvers::of(&json!({"message": "ok?"})), Ok(None));
        let both =
            Approvers::of(&json!({"approvers": {"roles": ["approver"], "names": ["alice"]}}))
                .unwrap()
                .unwrap();
        assert!(both.allow("approver", "bob"));
        assert!(both.allow("viewer", "alice"));
        assert!(!both.allow("admin", "mallory"));
        assert!(!both.allow("", ""));
        assert_eq!(both.describe(), "roles approver; names alice");
        for (bad, says) in [
            (json!("alice"), "must be a mapping"),
            (json!({"people": ["a"]}), "unknown key `people`"),
            (json!({"roles": "approver"}), "must be a list"),
            (json!({"roles": ["boss"]}), "`boss`, which is not a role"),
            (json!({"names": [""]}), "plain non-empty names"),
            (
                json!({"names": ["{{ inputs.who }}"]}),
                "plain non-empty names",
            ),
            (json!({"names": []}), "nobody could answer"),
        ] {
            let err = Approvers::of(&json!({ "approvers": bad })).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
