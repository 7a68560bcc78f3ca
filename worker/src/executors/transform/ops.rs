//! The transform ops: parsing (every op is checked before any runs) and applying them to a list
//! of records.

use std::cmp::Ordering;
use std::collections::HashSet;

use rpaflow_core::expr;
use serde_json::{Map, Number, Value as Json};

use crate::StepError;
use crate::executors::input::type_name;

/// The op names, as a flow writes them.
pub(super) const NAMES: [&str; 14] = [
    "filter",
    "drop_empty",
    "fill",
    "trim",
    "lowercase",
    "uppercase",
    "map",
    "select",
    "remove",
    "rename",
    "dedupe",
    "sort",
    "clamp",
    "limit",
];

/// One parsed op with the place it came from, for messages.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Op {
    index: usize,
    name: &'static str,
    kind: OpKind,
}

#[derive(Debug, Clone, PartialEq)]
enum OpKind {
    /// Keep records for which the expression is true.
    Filter(String),
    /// Drop records where any field is blank.
    DropEmpty(Vec<String>),
    /// Set blank fields to a default.
    Fill(Map<String, Json>),
    /// Rewrite string fields.
    Text(TextOp, Vec<String>),
    /// Set fields from expressions (strings) or constants (anything else).
    Map(Vec<(String, Json)>),
    /// Keep only these fields.
    Select(Vec<String>),
    /// Remove these fields.
    Remove(Vec<String>),
    /// Rename fields (old, new).
    Rename(Vec<(String, String)>),
    /// Keep the first record per key; no fields means the whole record.
    Dedupe(Vec<String>),
    /// Stable sort by fields; blanks last.
    Sort { by: Vec<String>, desc: bool },
    /// Bring numbers into a range.
    Clamp(Vec<Bounds>),
    /// Keep the first n records.
    Limit(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextOp {
    Trim,
    Lowercase,
    Uppercase,
}

#[derive(Debug, Clone, PartialEq)]
struct Bounds {
    field: String,
    min: Option<Number>,
    max: Option<Number>,
}

/// Stops a long transform when the step is cancelled or timed out.
pub(super) trait Stop {
    fn stopped(&self) -> bool;
}

impl Stop for tokio_util::sync::CancellationToken {
    fn stopped(&self) -> bool {
        self.is_cancelled()
    }
}

/// How many records pass between checks of [`Stop`].
const CHECK_EVERY: usize = 256;

impl Op {
    /// Parses `ops[index]`: a mapping with one key, the op's name.
    pub(super) fn parse(index: usize, value: &Json) -> Result<Self, StepError> {
        let (name, arg) = match value.as_object() {
            Some(map) if map.len() == 1 => map.iter().next().map(|(k, v)| (k.as_str(), v)),
            _ => None,
        }
        .ok_or_else(|| {
            StepError::invalid_input(format!(
                "`ops[{index}]` must be a mapping with one key, the op's name (such as `filter: ...`), not {}",
                describe(value)
            ))
        })?;
        let Some(&name) = NAMES.iter().find(|n| **n == name) else {
            return Err(StepError::invalid_input(format!(
                "`ops[{index}]`: unknown op `{name}` (expected one of: {})",
                NAMES.join(", ")
            )));
        };
        let bad = |message: String| {
            StepError::invalid_input(format!("`ops[{index}]` (`{name}`): {message}"))
        };
        let kind = match name {
            "filter" => {
                let expression = arg
                    .as_str()
                    .ok_or_else(|| bad(format!("needs an expression, not {}", type_name(arg))))?;
                check(index, name, expression)?;
                OpKind::Filter(expression.to_owned())
            }
            "drop_empty" => OpKind::DropEmpty(fields(arg, false).map_err(bad)?),
            "fill" => OpKind::Fill(arg.as_object().cloned().ok_or_else(|| {
                bad(format!(
                    "needs a mapping of field to default, not {}",
                    type_name(arg)
                ))
            })?),
            "trim" => OpKind::Text(TextOp::Trim, fields(arg, false).map_err(bad)?),
            "lowercase" => OpKind::Text(TextOp::Lowercase, fields(arg, false).map_err(bad)?),
            "uppercase" => OpKind::Text(TextOp::Uppercase, fields(arg, false).map_err(bad)?),
            "map" => {
                let map = arg.as_object().ok_or_else(|| {
                    bad(format!(
                        "needs a mapping of field to expression, not {}",
                        type_name(arg)
                    ))
                })?;
                for expression in map.values().filter_map(Json::as_str) {
                    check(index, name, expression)?;
                }
                OpKind::Map(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            "select" => OpKind::Select(fields(arg, false).map_err(bad)?),
            "remove" => OpKind::Remove(fields(arg, false).map_err(bad)?),
            "rename" => {
                let map = arg.as_object().ok_or_else(|| {
                    bad(format!(
                        "needs a mapping of old name to new name, not {}",
                        type_name(arg)
                    ))
                })?;
                let pairs = map
                    .iter()
                    .map(|(old, new)| match new.as_str() {
                        Some(new) if !new.is_empty() => Ok((old.clone(), new.to_owned())),
                        _ => Err(bad(format!(
                            "the new name for `{old}` must be a non-empty string"
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
                OpKind::Rename(pairs)
            }
            "dedupe" => OpKind::Dedupe(fields(arg, true).map_err(bad)?),
            "sort" => parse_sort(arg).map_err(bad)?,
            "clamp" => OpKind::Clamp(parse_clamp(arg).map_err(bad)?),
            "limit" => OpKind::Limit(
                arg.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(format!("needs a whole, non-negative number, not {arg}")))?,
            ),
            _ => unreachable!("every name in NAMES is handled"),
        };
        Ok(Self { index, name, kind })
    }

    /// Applies the op to the records.
    pub(super) fn apply(
        &self,
        records: Vec<Json>,
        stop: &dyn Stop,
        meter: &mut expr::Meter,
    ) -> Result<Vec<Json>, StepError> {
        let mut out = Vec::with_capacity(records.len());
        match &self.kind {
            OpKind::Filter(expression) => {
                for (i, record) in records.into_iter().enumerate() {
                    self.check_stop(i, stop)?;
                    let keep = meter
                        .eval_bool(expression, &record_context(&record, i))
                        .map_err(|e| StepError::expr(self.at_record(i), &e))?;
                    if keep {
                        out.push(record);
                    }
                }
            }
            OpKind::DropEmpty(names) => {
                for (i, record) in records.into_iter().enumerate() {
                    let fields = self.fields_of(&record, i)?;
                    if !names.iter().any(|n| is_blank(fields.get(n))) {
                        out.push(record);
                    }
                }
            }
            OpKind::Limit(n) => out = records.into_iter().take(*n).collect(),
            OpKind::Dedupe(names) => {
                let mut seen = HashSet::new();
                for (i, record) in records.into_iter().enumerate() {
                    self.check_stop(i, stop)?;
                    let key = if names.is_empty() {
                        record.to_string()
                    } else {
                        let fields = self.fields_of(&record, i)?;
                        let key: Vec<&Json> = names
                            .iter()
                            .map(|n| fields.get(n).unwrap_or(&Json::Null))
                            .collect();
                        serde_json::to_string(&key).unwrap_or_default()
                    };
                    if seen.insert(key) {
                        out.push(record);
                    }
                }
            }
            OpKind::Sort { by, desc } => {
                for (i, record) in records.iter().enumerate() {
                    self.fields_of(record, i)?;
                }
                out = records;
                out.sort_by(|a, b| compare_records(a, b, by, *desc));
            }
            OpKind::Map(assignments) => {
                for (i, mut record) in records.into_iter().enumerate() {
                    self.check_stop(i, stop)?;
                    let ctx = record_context(&record, i);
                    let mut values = Vec::with_capacity(assignments.len());
                    for (field, value) in assignments {
                        let value = match value {
                            Json::String(expression) => {
                                meter.eval(expression, &ctx).map_err(|e| {
                                    StepError::expr(
                                        format!("{} field `{field}`", self.at_record(i)),
                                        &e,
                                    )
                                })?
                            }
                            constant => constant.clone(),
                        };
                        values.push((field.clone(), value));
                    }
                    let fields = self.fields_of_mut(&mut record, i)?;
                    fields.extend(values);
                    out.push(record);
                }
            }
            // The rest rewrite each record in place.
            _ => {
                for (i, mut record) in records.into_iter().enumerate() {
                    let fields = self.fields_of_mut(&mut record, i)?;
                    self.rewrite(fields);
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// The ops that change one record on its own, without expressions.
    fn rewrite(&self, fields: &mut Map<String, Json>) {
        match &self.kind {
            OpKind::Fill(defaults) => {
                for (name, default) in defaults {
                    if is_blank(fields.get(name)) {
                        fields.insert(name.clone(), default.clone());
                    }
                }
            }
            OpKind::Text(op, names) => {
                for name in names {
                    if let Some(Json::String(s)) = fields.get_mut(name) {
                        *s = match op {
                            TextOp::Trim => s.trim().to_owned(),
                            TextOp::Lowercase => s.to_lowercase(),
                            TextOp::Uppercase => s.to_uppercase(),
                        };
                    }
                }
            }
            OpKind::Select(names) => fields.retain(|k, _| names.contains(k)),
            OpKind::Remove(names) => fields.retain(|k, _| !names.contains(k)),
            OpKind::Rename(pairs) => {
                // Take every old value first, so that `{a: b, b: a}` swaps.
                let moved: Vec<_> = pairs
                    .iter()
                    .filter_map(|(old, new)| fields.remove(old).map(|v| (new.clone(), v)))
                    .collect();
                fields.extend(moved);
            }
            OpKind::Clamp(bounds) => {
                for Bounds { field, min, max } in bounds {
                    let Some(value) = fields.get_mut(field) else {
                        continue;
                    };
                    let Some(x) = value.as_f64() else {
                        continue;
                    };
                    if let Some(min) = min.as_ref().filter(|m| x < as_f64(m)) {
                        *value = Json::Number(min.clone());
                    } else if let Some(max) = max.as_ref().filter(|m| x > as_f64(m)) {
                        *value = Json::Number(max.clone());
                    }
                }
            }
            OpKind::Filter(_)
            | OpKind::DropEmpty(_)
            | OpKind::Map(_)
            | OpKind::Dedupe(_)
            | OpKind::Sort { .. }
            | OpKind::Limit(_) => {}
        }
    }

    fn at_record(&self, i: usize) -> String {
        format!("`ops[{}]` (`{}`) on record {i}", self.index, self.name)
    }

    fn not_a_record(&self, i: usize, record: &Json) -> StepError {
        StepError::invalid_input(format!(
            "`ops[{}]` (`{}`): record {i} is {}, not a mapping of fields",
            self.index,
            self.name,
            type_name(record)
        ))
    }

    fn fields_of<'r>(
        &self,
        record: &'r Json,
        i: usize,
    ) -> Result<&'r Map<String, Json>, StepError> {
        record
            .as_object()
            .ok_or_else(|| self.not_a_record(i, record))
    }

    fn fields_of_mut<'r>(
        &self,
        record: &'r mut Json,
        i: usize,
    ) -> Result<&'r mut Map<String, Json>, StepError> {
        match record {
            Json::Object(fields) => Ok(fields),
            other => Err(self.not_a_record(i, other)),
        }
    }

    fn check_stop(&self, i: usize, stop: &dyn Stop) -> Result<(), StepError> {
        if i.is_multiple_of(CHECK_EVERY) && stop.stopped() {
            return Err(StepError::cancelled());
        }
        Ok(())
    }
}

/// Compiles an expression so that a typo fails before any op runs.
fn check(index: usize, name: &str, expression: &str) -> Result<(), StepError> {
    expr::check_expression(expression)
        .map(drop)
        .map_err(|e| StepError::expr(format!("`ops[{index}]` (`{name}`)"), &e))
}

/// The names an expression over a record sees: the record's own fields, `record` and `index`.
fn record_context(record: &Json, index: usize) -> expr::Context {
    let mut scope = record.as_object().cloned().unwrap_or_default();
    scope.insert("record".to_owned(), record.clone());
    scope.insert("index".to_owned(), Json::from(index));
    expr::Context::new(&Json::Object(scope))
}

/// Missing, `null`, or a string of only whitespace.
fn is_blank(value: Option<&Json>) -> bool {
    match value {
        None | Some(Json::Null) => true,
        Some(Json::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    }
}

/// A field list: one name or a list of names; an empty list only where `allow_empty`.
fn fields(arg: &Json, allow_empty: bool) -> Result<Vec<String>, String> {
    let names: Vec<String> = match arg {
        Json::String(name) => vec![name.clone()],
        Json::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("field names must be strings, not {}", type_name(item)))
            })
            .collect::<Result<_, _>>()?,
        Json::Null if allow_empty => Vec::new(),
        other => {
            return Err(format!(
                "needs a field name or a list of them, not {}",
                type_name(other)
            ));
        }
    };
    if names.is_empty() && !allow_empty {
        return Err("needs at least one field".to_owned());
    }
    Ok(names)
}

fn parse_sort(arg: &Json) -> Result<OpKind, String> {
    match arg {
        Json::String(_) | Json::Array(_) => Ok(OpKind::Sort {
            by: fields(arg, false)?,
            desc: false,
        }),
        Json::Object(map) => {
            if let Some(unknown) = map.keys().find(|k| !["by", "desc"].contains(&k.as_str())) {
                return Err(format!("unknown field `{unknown}` (expected `by`, `desc`)"));
            }
            let by = map.get("by").ok_or("`by` is required")?;
            let desc = match map.get("desc") {
                None | Some(Json::Null) => false,
                Some(Json::Bool(b)) => *b,
                Some(other) => {
                    return Err(format!(
                        "`desc` must be true or false, not {}",
                        type_name(other)
                    ));
                }
            };
            Ok(OpKind::Sort {
                by: fields(by, false).map_err(|e| format!("`by` {e}"))?,
                desc,
            })
        }
        other => Err(format!(
            "needs `by` and `desc`, or a field name, not {}",
            type_name(other)
        )),
    }
}

fn parse_clamp(arg: &Json) -> Result<Vec<Bounds>, String> {
    let map = arg.as_object().ok_or_else(|| {
        format!(
            "needs a mapping of field to `{{min, max}}`, not {}",
            type_name(arg)
        )
    })?;
    if map.is_empty() {
        return Err("needs at least one field".to_owned());
    }
    map.iter()
        .map(|(field, spec)| {
            let spec = spec.as_object().ok_or_else(|| {
                format!(
                    "`{field}` needs `min` and/or `max`, not {}",
                    type_name(spec)
                )
            })?;
            if let Some(unknown) = spec.keys().find(|k| !["min", "max"].contains(&k.as_str())) {
                return Err(format!(
                    "`{field}` has unknown bound `{unknown}` (expected `min`, `max`)"
                ));
            }
            let bound = |name: &str| match spec.get(name) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::Number(n)) => Ok(Some(n.clone())),
                Some(other) => Err(format!(
                    "`{field}.{name}` must be a number, not {}",
                    type_name(other)
                )),
            };
            let (min, max) = (bound("min")?, bound("max")?);
            match (&min, &max) {
                (None, None) => return Err(format!("`{field}` needs `min` and/or `max`")),
                (Some(lo), Some(hi)) if as_f64(lo) > as_f64(hi) => {
                    return Err(format!("`{field}` has `min` {lo} above `max` {hi}"));
                }
                _ => {}
            }
            Ok(Bounds {
                field: field.clone(),
                min,
                max,
            })
        })
        .collect()
}

fn as_f64(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// Compares records by the fields in turn. Blank values sort last in either direction; values of
/// different types order as booleans, numbers, strings, lists, mappings.
fn compare_records(a: &Json, b: &Json, by: &[String], desc: bool) -> Ordering {
    for field in by {
        let (x, y) = (a.get(field), b.get(field));
        let ordering = match (is_blank_for_sort(x), is_blank_for_sort(y)) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                let ordering = compare_values(x.unwrap_or(&Json::Null), y.unwrap_or(&Json::Null));
                if desc { ordering.reverse() } else { ordering }
            }
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

fn is_blank_for_sort(value: Option<&Json>) -> bool {
    matches!(value, None | Some(Json::Null))
}

fn compare_values(a: &Json, b: &Json) -> Ordering {
    fn rank(v: &Json) -> u8 {
        match v {
            Json::Null => 0,
            Json::Bool(_) => 1,
            Json::Number(_) => 2,
            Json::String(_) => 3,
            Json::Array(_) => 4,
            Json::Object(_) => 5,
        }
    }
    match (a, b) {
        (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
        (Json::Number(x), Json::Number(y)) => as_f64(x).total_cmp(&as_f64(y)),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

/// An op value as a message shows it: its type, or its name for a mapping with several keys.
fn describe(value: &Json) -> String {
    match value {
        Json::Object(map) if map.is_empty() => "an empty mapping".to_owned(),
        Json::Object(map) => format!(
            "a mapping with {} keys ({})",
            map.len(),
            map.keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => type_name(other).to_owned(),
    }
}
