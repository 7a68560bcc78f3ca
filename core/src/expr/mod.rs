//! The one expression language of rpaflow: MiniJinja expressions and templates.
//!
//! - A *template* is any string in a step's `with` or in a flow's `outputs`. A string that is one
//!   `{{ expression }}` and nothing else evaluates to the expression's value with its JSON type
//!   kept (a list stays a list); other strings with `{{ }}` or `{% %}` render to text; plain
//!   strings stay as they are.
//! - A *condition* (`if`, `until`, `for_each`, transform filters) is a bare expression; wrapping it
//!   in `{{ }}` is allowed and means the same.
//!
//! The context is JSON: `inputs`, `steps.<id>.output|status|error`, `item`, `index` and `run`.
//!
//! Expressions and templates are user code: every evaluation runs on a budget ([`Limits`]: fuel
//! for time and memory, a result size, nesting), and a [`Meter`] shares one budget between
//! several evaluations (the templates of one `with`, the records of one transform step). Errors
//! name the limit and its setting. See `docs/limits.md`.
//!
//! # Layout
//! - this file: checking, evaluating and rendering; [`Meter`].
//! - `limits`: [`Limits`], the process-wide limits and the MiniJinja environments.
//! - `convert`: a result to JSON within a byte and a depth limit.

mod convert;
mod limits;

use std::cell::Cell;
use std::collections::BTreeSet;

use minijinja::value::{Serde, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;

pub use limits::{
    DEFAULT_FUEL, DEFAULT_MAX_OUTPUT_BYTES, Limits, MAX_RESULT_DEPTH, RECURSION_LIMIT, limits,
    set_limits,
};

/// An expression or template that failed to compile or to evaluate.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
}

impl ExprError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    fn from_minijinja(err: &minijinja::Error) -> Self {
        // The kind's description plus the detail, without MiniJinja's "(in <expression>:1)" suffix.
        let detail = err.detail().map(str::to_owned);
        let message = match detail {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        };
        Self { message }
    }

    /// Like `from_minijinja`, but running out of fuel names the limit.
    fn from_evaluation(err: &minijinja::Error, limits: &Limits) -> Self {
        if out_of_fuel(err) {
            Self::new(limits.out_of_fuel())
        } else {
            Self::from_minijinja(err)
        }
    }

    /// This error with where it happened in front, such as "template in `with.message`".
    fn at(self, place: &str) -> Self {
        Self::new(format!("{place}: {}", self.message))
    }
}

/// True when the error, or one it wraps, is MiniJinja running out of fuel.
fn out_of_fuel(err: &minijinja::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(e) = e.downcast_ref::<minijinja::Error>()
            && e.kind() == ErrorKind::OutOfFuel
        {
            return true;
        }
        current = e.source();
    }
    false
}

pub type Result<T, E = ExprError> = std::result::Result<T, E>;

/// The environment for compiling and checking (no fuel: nothing is evaluated with it).
fn env() -> &'static Environment<'static> {
    limits::compile_env()
}

/// True for names the environment itself defines, such as `range` or `namespace`.
pub fn is_global(name: &str) -> bool {
    env().globals().any(|(n, _)| n == name)
}

/// Strips one pair of surrounding `{{ }}` from a condition, if present.
fn bare(expr: &str) -> &str {
    let trimmed = expr.trim();
    whole_expression(trimmed).unwrap_or(trimmed)
}

/// The inner expression when `s` is exactly one `{{ ... }}` block.
fn whole_expression(s: &str) -> Option<&str> {
    let s = s.trim();
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// True when the string needs rendering (has template syntax).
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The top-level names and dotted paths an expression reads, such as `steps.fetch.output`.
pub type Refs = BTreeSet<String>;

/// Compiles a condition and returns what it reads.
pub fn check_expression(expr: &str) -> Result<Refs> {
    let compiled = env()
        .compile_expression(bare(expr))
        .map_err(|e| ExprError::from_minijinja(&e))?;
    Ok(compiled.undeclared_variables(true).into_iter().collect())
}

/// Compiles a template string and returns what it reads (nothing for a plain string).
pub fn check_template(template: &str) -> Result<Refs> {
    if let Some(inner) = whole_expression(template) {
        return check_expression(inner);
    }
    if !is_template(template) {
        return Ok(Refs::new());
    }
    let compiled = env()
        .template_from_str(template)
        .map_err(|e| ExprError::from_minijinja(&e))?;
    Ok(compiled.undeclared_variables(true).into_iter().collect())
}

/// Every template in a JSON value (strings at any depth), with what each reads.
pub fn check_templates(value: &Json) -> Result<Refs> {
    let mut refs = Refs::new();
    visit_strings(value, &mut |s| {
        refs.extend(check_template(s)?);
        Ok(())
    })?;
    Ok(refs)
}

fn visit_strings(value: &Json, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    match value {
        Json::String(s) => f(s),
        Json::Array(items) => items.iter().try_for_each(|v| visit_strings(v, f)),
        Json::Object(map) => map.values().try_for_each(|v| visit_strings(v, f)),
        _ => Ok(()),
    }
}

/// A context to evaluate expressions in, converted once and reused.
#[derive(Debug, Clone)]
pub struct Context(Value);

impl Context {
    pub fn new(json: &Json) -> Self {
        Self(Value::from(Serde(json)))
    }

    /// This context with extra top-level names (such as `item`) added or replaced.
    pub fn with(&self, extra: &[(&str, &Json)]) -> Self {
        let mut merged: std::collections::BTreeMap<String, Value> =
            std::collections::BTreeMap::new();
        if let Ok(keys) = self.0.try_iter() {
            for key in keys {
                if let Some(name) = key.as_str()
                    && let Ok(v) = self.0.get_item(&key)
                {
                    merged.insert(name.to_owned(), v);
                }
            }
        }
        for (name, value) in extra {
            merged.insert((*name).to_owned(), Value::from(Serde(*value)));
        }
        Self(Value::from(merged))
    }
}

/// Evaluates an expression to JSON, within the process-wide [`limits`].
pub fn eval(expr: &str, ctx: &Context) -> Result<Json> {
    Meter::new(limits()).eval(expr, ctx)
}

/// Evaluates a condition to its truthiness, within the process-wide [`limits`].
pub fn eval_bool(expr: &str, ctx: &Context) -> Result<bool> {
    Meter::new(limits()).eval_bool(expr, ctx)
}

/// Renders every template in a JSON value (see the module docs for the rules), within the
/// process-wide [`limits`]: all the templates in the value share one budget.
pub fn render(value: &Json, ctx: &Context) -> Result<Json> {
    Meter::new(limits()).render(value, ctx)
}

/// Like [`render`], for the value of a named field (such as `with`): errors say which template
/// failed, as in "template in `with.message`".
pub fn render_field(value: &Json, ctx: &Context, field: &str) -> Result<Json> {
    let mut path = field.to_owned();
    Meter::new(limits()).render_at(value, ctx, &mut path)
}

/// True when rendering the value would change it (it holds a template somewhere).
pub fn has_templates(value: &Json) -> bool {
    match value {
        Json::String(s) => is_template(s),
        Json::Array(items) => items.iter().any(has_templates),
        Json::Object(map) => map.values().any(has_templates),
        _ => false,
    }
}

/// The filter that reads how much fuel an expression used; appended to every evaluated
/// expression. A user calling it does no harm: it only records a number.
const METER_FILTER: &str = "__rpaflow_fuel_used";

thread_local! {
    static FUEL_USED: Cell<u64> = const { Cell::new(0) };
}

thread_local! {
    /// Inside [`with_allowance`]: the fuel the evaluations on this thread may still use.
    static ALLOWANCE: Cell<Option<u64>> = const { Cell::new(None) };
    /// Inside [`with_allowance`]: whether an evaluation needed more than it allowed.
    static ALLOWANCE_EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// The most fuel one evaluation may use under [`with_allowance`].
pub const ALLOWANCE_FUEL_PER_EVALUATION: u64 = 2_000;

/// Runs `work` with the evaluations it makes on this thread held to about `fuel` in all (and
/// to [`ALLOWANCE_FUEL_PER_EVALUATION`] each, or the configured fuel when that is less). Answers
/// `work`'s result and whether the allowance was too small: then some evaluation failed where
/// the configured limits would have let it go on, so the result must be thrown away and the
/// work done again without an allowance. Evaluations that fit give exactly the results they
/// give without one. A caller that must not be held up for long (a run actor's thread) tries
/// this first and sends the work elsewhere only when it does not fit.
pub fn with_allowance<T>(fuel: u64, work: impl FnOnce() -> T) -> (T, bool) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ALLOWANCE.with(|a| a.set(None));
        }
    }
    ALLOWANCE.with(|a| a.set(Some(fuel)));
    ALLOWANCE_EXCEEDED.with(|e| e.set(false));
    let reset = Reset;
    let result = work();
    drop(reset);
    (result, ALLOWANCE_EXCEEDED.with(Cell::get))
}

/// The fuel for the next evaluation under `limits`: theirs, or less under an allowance; an
/// allowance that is spent refuses it.
fn evaluation_fuel(limits: &Limits) -> Result<u64> {
    match ALLOWANCE.with(Cell::get) {
        None => Ok(limits.fuel),
        Some(0) => {
            ALLOWANCE_EXCEEDED.with(|e| e.set(true));
            Err(ExprError::new("the evaluation allowance is spent"))
        }
        // Not `left`: an environment is kept per fuel amount, so only two amounts are used;
        // the last evaluation may pass the allowance by up to one evaluation's fuel.
        Some(_) => Ok(limits.fuel.min(ALLOWANCE_FUEL_PER_EVALUATION)),
    }
}

/// Charges an evaluation's fuel to the allowance, if there is one; `ran_out` when it ran out
/// of the `fuel` it was given, which, when less than `limits` give, exceeds the allowance.
fn charge_allowance(limits: &Limits, fuel: u64, used: u64, ran_out: bool) {
    if let Some(left) = ALLOWANCE.with(Cell::get) {
        ALLOWANCE.with(|a| a.set(Some(left.saturating_sub(used))));
        if ran_out && fuel < limits.fuel {
            ALLOWANCE_EXCEEDED.with(|e| e.set(true));
        }
    }
}

/// Takes `amount` from `left`; when there is not that much, empties it and answers false.
fn spend<T>(left: &mut T, amount: T) -> bool
where
    T: Copy + Default + PartialOrd + std::ops::Sub<Output = T>,
{
    if amount <= *left {
        *left = *left - amount;
        true
    } else {
        *left = T::default();
        false
    }
}

fn record_fuel_used(state: &minijinja::State, value: Value) -> Value {
    if let Some((used, _)) = state.fuel_levels() {
        FUEL_USED.with(|c| c.set(used));
    }
    value
}

/// A budget shared by several evaluations: all the templates of one `with`, or every record
/// of one transform step. Each evaluation also stays within [`Limits::fuel`] on its own; the
/// total is checked after each evaluation, so it can be passed by at most one evaluation's fuel.
#[derive(Debug, Clone)]
pub struct Meter {
    limits: Limits,
    fuel_total: u64,
    fuel_left: u64,
    bytes_total: usize,
    bytes_left: usize,
    /// The settings that set the totals (fuel, bytes), named in errors.
    total_settings: Option<(&'static str, &'static str)>,
}

impl Meter {
    /// A budget of one evaluation's fuel and output in all.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            fuel_total: limits.fuel,
            fuel_left: limits.fuel,
            bytes_total: limits.max_output_bytes,
            bytes_left: limits.max_output_bytes,
            total_settings: None,
        }
    }

    /// A budget of `fuel` and `bytes` in all (each set by the named setting), for many
    /// evaluations that each stay within `limits`.
    pub fn with_totals(
        limits: Limits,
        (fuel, fuel_setting): (u64, &'static str),
        (bytes, bytes_setting): (usize, &'static str),
    ) -> Self {
        Self {
            limits,
            fuel_total: fuel,
            fuel_left: fuel,
            bytes_total: bytes,
            bytes_left: bytes,
            total_settings: Some((fuel_setting, bytes_setting)),
        }
    }

    /// Fuel used so far.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_total - self.fuel_left
    }

    /// Evaluates an expression to JSON.
    pub fn eval(&mut self, expr: &str, ctx: &Context) -> Result<Json> {
        let value = self.eval_value(expr, ctx)?;
        self.convert(&value)
    }

    /// Evaluates a condition to its truthiness.
    pub fn eval_bool(&mut self, expr: &str, ctx: &Context) -> Result<bool> {
        Ok(self.eval_value(expr, ctx)?.is_true())
    }

    /// Renders every template in a JSON value (see the module docs for the rules).
    pub fn render(&mut self, value: &Json, ctx: &Context) -> Result<Json> {
        let mut path = String::new();
        self.render_at(value, ctx, &mut path)
    }

    fn render_at(&mut self, value: &Json, ctx: &Context, path: &mut String) -> Result<Json> {
        match value {
            Json::String(s) => self.render_str(s, ctx).map_err(|e| {
                if path.is_empty() {
                    e
                } else {
                    e.at(&format!("template in `{path}`"))
                }
            }),
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    push_path(path, &i.to_string());
                    out.push(self.render_at(item, ctx, path));
                    path.truncate(len);
                }
                out.into_iter().collect::<Result<_>>().map(Json::Array)
            }
            Json::Object(map) => {
                let mut out = serde_json::Map::new();
                for (key, item) in map {
                    let len = path.len();
                    push_path(path, key);
                    let rendered = self.render_at(item, ctx, path);
                    path.truncate(len);
                    out.insert(key.clone(), rendered?);
                }
                Ok(Json::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn render_str(&mut self, s: &str, ctx: &Context) -> Result<Json> {
        if let Some(inner) = whole_expression(s) {
            return self.eval(inner, ctx);
        }
        if !is_template(s) {
            return Ok(Json::String(s.to_owned()));
        }
        self.check_fuel_left()?;
        let fuel = evaluation_fuel(&self.limits)?;
        let env = limits::env_with_fuel(fuel);
        let template = env
            .template_from_str(s)
            .map_err(|e| ExprError::from_minijinja(&e))?;
        let captured = contain_panic(|| template.render_captured(ctx.0.clone()))?.map_err(|e| {
            charge_allowance(&self.limits, fuel, fuel, out_of_fuel(&e));
            self.fuel_left = self.fuel_left.saturating_sub(self.limits.fuel);
            ExprError::from_evaluation(&e, &self.limits)
        })?;
        let used = captured.state().fuel_levels().map_or(0, |(used, _)| used);
        charge_allowance(&self.limits, fuel, used, false);
        self.charge_fuel(used)?;
        let text = captured.into_output();
        self.charge_bytes(text.len() + 2)?;
        Ok(Json::String(text))
    }

    fn eval_value(&mut self, expr: &str, ctx: &Context) -> Result<Value> {
        self.check_fuel_left()?;
        let fuel = evaluation_fuel(&self.limits)?;
        let env = limits::env_with_fuel(fuel);
        // Compiled alone first, so that errors are about the expression as written.
        env.compile_expression(bare(expr))
            .map_err(|e| ExprError::from_minijinja(&e))?;
        let metered = format!("({})|{METER_FILTER}", bare(expr));
        let compiled = env
            .compile_expression(&metered)
            .map_err(|e| ExprError::from_minijinja(&e))?;
        FUEL_USED.with(|c| c.set(0));
        let value = contain_panic(|| compiled.eval(ctx.0.clone()))?.map_err(|e| {
            charge_allowance(&self.limits, fuel, fuel, out_of_fuel(&e));
            self.fuel_left = self.fuel_left.saturating_sub(self.limits.fuel);
            ExprError::from_evaluation(&e, &self.limits)
        })?;
        let used = FUEL_USED.with(Cell::get);
        charge_allowance(&self.limits, fuel, used, false);
        self.charge_fuel(used)?;
        Ok(value)
    }

    fn check_fuel_left(&self) -> Result<()> {
        if self.fuel_left == 0 {
            return Err(self.out_of_total_fuel());
        }
        Ok(())
    }

    fn charge_fuel(&mut self, used: u64) -> Result<()> {
        if spend(&mut self.fuel_left, used) {
            Ok(())
        } else {
            Err(self.out_of_total_fuel())
        }
    }

    fn out_of_total_fuel(&self) -> ExprError {
        match self.total_settings {
            Some((setting, _)) => ExprError::new(format!(
                "used more than {} fuel in all its evaluations ({setting})",
                self.fuel_total
            )),
            None => ExprError::new(self.limits.out_of_fuel()),
        }
    }

    fn charge_bytes(&mut self, bytes: usize) -> Result<()> {
        if spend(&mut self.bytes_left, bytes) {
            Ok(())
        } else {
            Err(self.output_too_large())
        }
    }

    fn output_too_large(&self) -> ExprError {
        match self.total_settings {
            Some((_, setting)) => ExprError::new(format!(
                "results are larger than {} bytes of JSON in all ({setting})",
                self.bytes_total
            )),
            None => ExprError::new(self.limits.output_too_large()),
        }
    }

    /// Converts a result to JSON within the bytes left (and one evaluation's limit).
    fn convert(&mut self, value: &Value) -> Result<Json> {
        if value.is_undefined() {
            return Ok(Json::Null);
        }
        let max = self.bytes_left.min(self.limits.max_output_bytes);
        match convert::to_json(value, max) {
            Ok((json, spent)) => {
                self.bytes_left -= spent;
                Ok(json)
            }
            Err(convert::ConvertError::TooLarge) if max < self.limits.max_output_bytes => {
                self.bytes_left = 0;
                Err(self.output_too_large())
            }
            Err(convert::ConvertError::TooLarge) => {
                Err(ExprError::new(self.limits.output_too_large()))
            }
            Err(convert::ConvertError::TooDeep) => Err(ExprError::new(format!(
                "result is nested deeper than {MAX_RESULT_DEPTH} lists or mappings"
            ))),
            Err(convert::ConvertError::NotJson(detail)) => {
                Err(ExprError::new(format!("result is not JSON: {detail}")))
            }
        }
    }
}

/// Runs an evaluation so that a panic inside the template engine (a bug there, reachable by
/// whoever writes a flow) fails this evaluation instead of the actor or worker running it.
fn contain_panic<T>(f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        ExprError::new(format!("the template engine failed: {detail}"))
    })
}

fn push_path(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

#[cfg(test)]
mod budget_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        Context::new(&json!({
            "inputs": {"name": "Ada", "limit": 3},
            "steps": {"fetch": {"output": {"items": [1, 2, 3], "status": 200}, "status": "succeeded"}},
        }))
    }

    #[test]
    fn whole_expression_keeps_its_type() {
        let out = render(&json!("{{ steps.fetch.output.items }}"), &ctx()).unwrap();
        assert_eq!(out, json!([1, 2, 3]));
        let out = render(&json!({"n": "{{ inputs.limit * 2 }}"}), &ctx()).unwrap();
        assert_eq!(out, json!({"n": 6}));
    }

    #[test]
    fn mixed_text_renders_to_a_string() {
        let out = render(&json!("Hello, {{ inputs.name }}!"), &ctx()).unwrap();
        assert_eq!(out, json!("Hello, Ada!"));
        assert_eq!(render(&json!("plain"), &ctx()).unwrap(), json!("plain"));
        assert_eq!(render(&json!(42), &ctx()).unwrap(), json!(42));
    }

    #[test]
    fn text_keeps_its_trailing_newline() {
        let out = render(&json!("Dear {{ inputs.name }},\n"), &ctx()).unwrap();
        assert_eq!(out, json!("Dear Ada,\n"));
    }

    #[test]
    fn conditions_accept_braces_or_not() {
        assert!(eval_bool("steps.fetch.output.status == 200", &ctx()).unwrap());
        assert!(eval_bool("{{ inputs.limit > 2 }}", &ctx()).unwrap());
        assert!(!eval_bool("inputs.missing", &ctx()).unwrap());
    }

    #[test]
    fn compile_errors_are_reported() {
        let err = check_expression("steps.fetch.output ==").unwrap_err();
        assert!(err.message.contains("syntax error"), "{}", err.message);
        assert!(check_template("Hello {{ name").is_err());
    }

    #[test]
    fn references_are_listed() {
        let refs = check_template("{{ steps.fetch.output.items | length }} for {{ inputs.name }}")
            .unwrap();
        assert!(
            refs.iter().any(|r| r.starts_with("steps.fetch")),
            "{refs:?}"
        );
        assert!(refs.iter().any(|r| r.starts_with("inputs")), "{refs:?}");
    }

    #[test]
    fn extra_names_are_added() {
        let c = ctx().with(&[("item", &json!({"x": 5}))]);
        assert_eq!(eval("item.x + inputs.limit", &c).unwrap(), json!(8));
    }
}
