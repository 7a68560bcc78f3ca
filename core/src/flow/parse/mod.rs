//! Parsing and validating flow text (YAML, or JSON as its subset), collecting every problem with
//! its line and column instead of stopping at the first.
//!
//! # Layout
//! - this file: [`parse`], its [`Diagnostic`]s, the parser state and the top-level flow fields
//! - `nodes`: reading typed values from YAML nodes, and name and typo helpers
//! - `inputs`: the flow's `inputs`
//! - `steps`: `defaults` and `steps`, with their `retry`, `for_each` and `on_failure`
//! - `triggers`: `triggers` (schedule, webhook, Kafka)
//! - `concurrency`: `concurrency`
//! - `check`: cross-step checks (ids, `needs`, cycles, compensation) and expression scopes

mod check;
mod concurrency;
mod inputs;
mod nodes;
mod steps;
#[cfg(test)]
mod tests;
mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Span};
use serde_json::Value as Json;

use self::nodes::{to_json, valid_name};
use super::model::*;

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

/// The steps a flow may have unless configured otherwise.
pub const DEFAULT_MAX_FLOW_STEPS: usize = 1_000;
/// How deeply YAML collections may nest in a flow unless configured otherwise.
pub const DEFAULT_MAX_FLOW_NESTING: usize = 64;

/// What one flow may hold. Both are checked before the flow is built, so a larger flow costs
/// no more than reading its text once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Steps in `steps`: bounds the graph checks and every run's state.
    pub max_steps: usize,
    /// Nested mappings and sequences, anywhere in the file: bounds every walk over its values.
    pub max_nesting: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_steps: DEFAULT_MAX_FLOW_STEPS,
            max_nesting: DEFAULT_MAX_FLOW_NESTING,
        }
    }
}

/// Parses and validates a flow within the default [`FlowLimits`]. `file` names the source in
/// the diagnostics.
pub fn parse(file: &str, source: &str) -> Result<Flow, Diagnostics> {
    parse_with(file, source, &FlowLimits::default())
}

/// Parses and validates a flow within `limits`.
pub fn parse_with(file: &str, source: &str, limits: &FlowLimits) -> Result<Flow, Diagnostics> {
    let mut p = Parser {
        file,
        diags: Vec::new(),
        secrets: BTreeSet::new(),
        limits: *limits,
    };
    // The YAML loader recurses once per nesting level; refuse deep files before it runs.
    if let Some((line, column)) = nesting_over(source, limits.max_nesting) {
        p.diags.push(Diagnostic {
            file: file.to_owned(),
            line,
            column,
            message: format!(
                "mappings and sequences nest deeper than the limit of {} levels (`max_flow_nesting`)",
                limits.max_nesting
            ),
        });
        return Err(Diagnostics(p.diags));
    }
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

/// Where the YAML in `source` first nests deeper than `max` (line, column), read as a stream
/// of events in one pass. Text that does not parse is left to the loader to report.
fn nesting_over(source: &str, max: usize) -> Option<(usize, usize)> {
    use yaml_rust2::Event;
    let mut events = yaml_rust2::parser::Parser::new_from_str(source);
    let mut depth = 0usize;
    loop {
        let (event, mark) = events.next_token().ok()?;
        match event {
            Event::StreamEnd => return None,
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > max {
                    return Some((mark.line(), mark.col() + 1));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
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

struct Parser<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
    /// The secrets read by the flow's steps.
    secrets: BTreeSet<String>,
    limits: FlowLimits,
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
            Some(node) if node.as_sequence().map_or(0, |s| s.len()) > self.limits.max_steps => {
                let count = node.as_sequence().map_or(0, |s| s.len());
                self.err(
                    node.span(),
                    format!(
                        "the flow has {count} steps, over the limit of {} (`max_flow_steps`)",
                        self.limits.max_steps
                    ),
                );
                return None;
            }
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
            step_positions: Default::default(),
        };
        flow.index_steps();
        self.check_graph(&mut flow, map);
        flow.secrets = std::mem::take(&mut self.secrets);
        Some(flow)
    }
}
