//! A `browser` step's input, parsed and checked before any browser starts: the list of actions,
//! each with its timeout, and where screenshots go.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value as Json;

use crate::StepError;
use crate::executors::input::{self, Input};

/// How long an action waits when neither it nor the step says.
pub(super) const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The action keys an entry of `actions` may have (besides `timeout`).
const KINDS: &[&str] = &[
    "open",
    "wait_for",
    "fill",
    "select",
    "click",
    "read_text",
    "read_attribute",
    "read_table",
    "screenshot",
];

/// A checked `browser` step input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Script {
    pub actions: Vec<Action>,
    /// `screenshots_dir`, when the input sets it.
    pub screenshots_dir: Option<PathBuf>,
}

/// One entry of `actions` with the time it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Action {
    pub kind: Kind,
    pub timeout: Duration,
}

/// What an action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Open {
        url: String,
    },
    WaitFor {
        selector: String,
    },
    Fill {
        selector: String,
        value: String,
    },
    Select {
        selector: String,
        value: String,
    },
    Click {
        selector: String,
    },
    ReadText {
        selector: String,
        name: String,
    },
    ReadAttribute {
        selector: String,
        attribute: String,
        name: String,
    },
    ReadTable {
        selector: String,
        name: String,
    },
    Screenshot {
        name: String,
    },
}

impl Kind {
    /// The action's key in the input, such as `click`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::WaitFor { .. } => "wait_for",
            Self::Fill { .. } => "fill",
            Self::Select { .. } => "select",
            Self::Click { .. } => "click",
            Self::ReadText { .. } => "read_text",
            Self::ReadAttribute { .. } => "read_attribute",
            Self::ReadTable { .. } => "read_table",
            Self::Screenshot { .. } => "screenshot",
        }
    }

    /// Where the action's result goes in the output (`values` or `screenshots`) and its name.
    fn output_slot(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::ReadText { name, .. }
            | Self::ReadAttribute { name, .. }
            | Self::ReadTable { name, .. } => Some(("values", name)),
            Self::Screenshot { name } => Some(("screenshots", name)),
            _ => None,
        }
    }

    /// The CSS selector the action works on, if any.
    pub fn selector(&self) -> Option<&str> {
        match self {
            Self::WaitFor { selector }
            | Self::Fill { selector, .. }
            | Self::Select { selector, .. }
            | Self::Click { selector }
            | Self::ReadText { selector, .. }
            | Self::ReadAttribute { selector, .. }
            | Self::ReadTable { selector, .. } => Some(selector),
            Self::Open { .. } | Self::Screenshot { .. } => None,
        }
    }
}

/// How an action reads in a message: "click `#submit`", "open `http://host/path`" (never the
/// query string, which may hold credentials), "screenshot `after-login`".
impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Self::Open { url } => {
                let shown = url.split(['?', '#']).next().unwrap_or(url);
                write!(f, "{name} `{shown}`")
            }
            Self::Screenshot { name: shot } => write!(f, "{name} `{shot}`"),
            _ => write!(f, "{name} `{}`", self.selector().unwrap_or_default()),
        }
    }
}

impl Script {
    /// Reads and checks the whole step input; the errors name the field (`actions[2].fill`).
    pub fn parse(value: &Json) -> Result<Self, StepError> {
        let input = Input::new(value)?;
        input.deny_unknown(&["actions", "default_timeout", "screenshots_dir"])?;
        let default_timeout = input
            .duration("default_timeout")?
            .unwrap_or(DEFAULT_ACTION_TIMEOUT);
        let screenshots_dir = input.str("screenshots_dir")?.map(PathBuf::from);
        let list = input
            .array("actions")?
            .ok_or_else(|| StepError::invalid_input("`actions` is required"))?;
        if list.is_empty() {
            return Err(StepError::invalid_input("`actions` must not be empty"));
        }
        let mut names = HashSet::new();
        let mut actions = Vec::with_capacity(list.len());
        for (index, entry) in list.iter().enumerate() {
            let action = parse_action(index, entry, default_timeout)?;
            if let Some((output, name)) = action.kind.output_slot()
                && !names.insert((output, name.to_owned()))
            {
                return Err(StepError::invalid_input(format!(
                    "actions[{index}].{}: `as: {name}` is already used by an earlier action",
                    action.kind.name(),
                )));
            }
            actions.push(action);
        }
        Ok(Self {
            actions,
            screenshots_dir,
        })
    }
}

fn parse_action(
    index: usize,
    entry: &Json,
    default_timeout: Duration,
) -> Result<Action, StepError> {
    let at = format!("actions[{index}]");
    let Some(fields) = entry.as_object() else {
        return Err(input::wrong_type(
            &at,
            "a mapping such as {click: \"#submit\"}",
            entry,
        ));
    };
    let mut keys = fields.keys().filter(|k| *k != "timeout");
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(StepError::invalid_input(format!(
            "`{at}` must have exactly one action key (one of: {}), besides `timeout`",
            KINDS.join(", ")
        )));
    };
    let value = &fields[key];
    let field = format!("{at}.{key}");
    let named = |e: StepError| StepError::invalid_input(format!("{field}: {}", e.message));
    let mut timeout = match fields.get("timeout").filter(|v| !v.is_null()) {
        Some(v) => Some(input::duration(&format!("{at}.timeout"), v)?),
        None => None,
    };
    let kind = match key.as_str() {
        "open" => Kind::Open {
            url: string(&field, value)?,
        },
        "click" => Kind::Click {
            selector: string(&field, value)?,
        },
        "wait_for" => match value {
            Json::Object(_) => {
                let args = Args::new(value, &["selector", "timeout"]).map_err(named)?;
                if let Some(inner) = args.input.duration("timeout").map_err(named)? {
                    timeout = Some(inner);
                }
                Kind::WaitFor {
                    selector: args.str("selector").map_err(named)?,
                }
            }
            other => Kind::WaitFor {
                selector: string(&field, other)?,
            },
        },
        "fill" | "select" => {
            let args = mapping(&field, value, &["selector", "value"])?;
            let selector = args.str("selector").map_err(named)?;
            let value = args.scalar("value").map_err(named)?;
            if key == "fill" {
                Kind::Fill { selector, value }
            } else {
                Kind::Select { selector, value }
            }
        }
        "read_text" | "read_table" => {
            let args = mapping(&field, value, &["selector", "as"])?;
            let selector = args.str("selector").map_err(named)?;
            let name = args.str("as").map_err(named)?;
            if key == "read_text" {
                Kind::ReadText { selector, name }
            } else {
                Kind::ReadTable { selector, name }
            }
        }
        "read_attribute" => {
            let args = mapping(&field, value, &["selector", "attribute", "as"])?;
            Kind::ReadAttribute {
                selector: args.str("selector").map_err(named)?,
                attribute: args.str("attribute").map_err(named)?,
                name: args.str("as").map_err(named)?,
            }
        }
        "screenshot" => {
            let args = mapping(&field, value, &["as"])?;
            Kind::Screenshot {
                name: args.str("as").map_err(named)?,
            }
        }
        other => {
            return Err(StepError::invalid_input(format!(
                "`{at}`: unknown action `{other}` (expected one of: {})",
                KINDS.join(", ")
            )));
        }
    };
    Ok(Action {
        kind,
        timeout: timeout.unwrap_or(default_timeout),
    })
}

/// The arguments of an action written as a mapping.
struct Args<'a> {
    input: Input<'a>,
}

impl<'a> Args<'a> {
    fn new(value: &'a Json, allowed: &[&str]) -> Result<Self, StepError> {
        let input = Input::new(value)?;
        input.deny_unknown(allowed)?;
        Ok(Self { input })
    }

    fn str(&self, name: &str) -> Result<String, StepError> {
        self.input.required_str(name).map(str::to_owned)
    }

    /// A string, or a number or boolean written as text (a form value from a run input).
    fn scalar(&self, name: &str) -> Result<String, StepError> {
        match self.input.required(name)? {
            Json::String(s) => Ok(s.clone()),
            Json::Number(n) => Ok(n.to_string()),
            Json::Bool(b) => Ok(b.to_string()),
            other => Err(input::wrong_type(
                name,
                "a string, number or boolean",
                other,
            )),
        }
    }
}

fn mapping<'a>(field: &str, value: &'a Json, allowed: &[&str]) -> Result<Args<'a>, StepError> {
    if !value.is_object() {
        let expected = format!("a mapping with {}", allowed.join(", "));
        return Err(input::wrong_type(field, &expected, value));
    }
    Args::new(value, allowed)
        .map_err(|e| StepError::invalid_input(format!("{field}: {}", e.message)))
}

fn string(field: &str, value: &Json) -> Result<String, StepError> {
    match value.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.to_owned()),
        Some(_) => Err(StepError::invalid_input(format!(
            "`{field}` must not be empty"
        ))),
        None => Err(input::wrong_type(field, "a string", value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Json) -> Result<Script, String> {
        Script::parse(&value).map_err(|e| e.message)
    }

    #[test]
    fn every_action_is_read_with_its_timeout() {
        let script = parse(json!({
            "default_timeout": "3s",
            "screenshots_dir": "/tmp/shots",
            "actions": [
                {"open": "http://127.0.0.1/login?token=x"},
                {"wait_for": "#user", "timeout": "500ms"},
                {"wait_for": {"selector": "#user", "timeout": 250}},
                {"fill": {"selector": "#user", "value": 42}},
                {"select": {"selector": "#plan", "value": "pro"}},
                {"click": "#submit"},
                {"read_text": {"selector": "#n", "as": "number"}},
                {"read_attribute": {"selector": "a", "attribute": "href", "as": "link"}},
                {"read_table": {"selector": "table", "as": "rows"}},
                {"screenshot": {"as": "number"}},
            ]
        }))
        .unwrap();
        assert_eq!(script.screenshots_dir, Some(PathBuf::from("/tmp/shots")));
        let timeouts: Vec<_> = script
            .actions
            .iter()
            .map(|a| a.timeout.as_millis())
            .collect();
        assert_eq!(
            timeouts,
            [3000, 500, 250, 3000, 3000, 3000, 3000, 3000, 3000, 3000]
        );
        assert_eq!(
            script.actions[3].kind,
            Kind::Fill {
                selector: "#user".into(),
                value: "42".into()
            }
        );
        let shown: Vec<_> = script.actions.iter().map(|a| a.kind.to_string()).collect();
        assert_eq!(shown[0], "open `http://127.0.0.1/login`");
        assert_eq!(shown[5], "click `#submit`");
        assert_eq!(shown[9], "screenshot `number`");
    }

    #[test]
    fn mistakes_are_named_by_index_and_field() {
        let cases = [
            (json!({}), "`actions` is required"),
            (json!({"actions": []}), "`actions` must not be empty"),
            (json!({"actions": ["#x"]}), "`actions[0]` must be a mapping"),
            (
                json!({"actions": [{"click": "#a", "open": "http://x"}]}),
                "`actions[0]` must have exactly one action key",
            ),
            (
                json!({"actions": [{"hover": "#a"}]}),
                "unknown action `hover`",
            ),
            (
                json!({"actions": [{"open": "http://x"}, {"fill": {"selector": "#a"}}]}),
                "actions[1].fill: `value` is required",
            ),
            (
                json!({"actions": [{"read_text": {"selector": "#a", "as": "x", "into": "y"}}]}),
                "actions[0].read_text: unknown field `into`",
            ),
            (
                json!({"actions": [{"click": "#a", "timeout": "soon"}]}),
                "`actions[0].timeout` is not a duration",
            ),
            (
                json!({"actions": [
                    {"read_text": {"selector": "#a", "as": "x"}},
                    {"read_table": {"selector": "t", "as": "x"}},
                ]}),
                "actions[1].read_table: `as: x` is already used",
            ),
            (
                json!({"actions": [{"click": " "}]}),
                "`actions[0].click` must not be empty",
            ),
            (
                json!({"actions": [], "headless": true}),
                "unknown field `headless`",
            ),
        ];
        for (input, expected) in cases {
            let err = parse(input.clone()).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
