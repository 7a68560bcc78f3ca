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

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::value::{Serde, Value};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value as Json;

/// An expression or template that failed to compile or to evaluate.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
}

impl ExprError {
    fn from_minijinja(err: &minijinja::Error) -> Self {
        // The kind's description plus the detail, without MiniJinja's "(in <expression>:1)" suffix.
        let detail = err.detail().map(str::to_owned);
        let message = match detail {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        };
        Self { message }
    }
}

pub type Result<T, E = ExprError> = std::result::Result<T, E>;

/// The shared, immutable MiniJinja environment with rpaflow's settings.
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_recursion_limit(64);
        // Text is rendered as written: a YAML block that ends in a newline keeps it.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env
    })
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

/// Evaluates an expression to JSON.
pub fn eval(expr: &str, ctx: &Context) -> Result<Json> {
    let compiled = env()
        .compile_expression(bare(expr))
        .map_err(|e| ExprError::from_minijinja(&e))?;
    let value = compiled
        .eval(ctx.0.clone())
        .map_err(|e| ExprError::from_minijinja(&e))?;
    to_json(&value)
}

/// Evaluates a condition to its truthiness.
pub fn eval_bool(expr: &str, ctx: &Context) -> Result<bool> {
    let compiled = env()
        .compile_expression(bare(expr))
        .map_err(|e| ExprError::from_minijinja(&e))?;
    let value = compiled
        .eval(ctx.0.clone())
        .map_err(|e| ExprError::from_minijinja(&e))?;
    Ok(value.is_true())
}

/// Renders every template in a JSON value (see the module docs for the rules).
pub fn render(value: &Json, ctx: &Context) -> Result<Json> {
    match value {
        Json::String(s) => render_str(s, ctx),
        Json::Array(items) => items
            .iter()
            .map(|v| render(v, ctx))
            .collect::<Result<_>>()
            .map(Json::Array),
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
            .collect::<Result<_>>()
            .map(Json::Object),
        other => Ok(other.clone()),
    }
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

fn render_str(s: &str, ctx: &Context) -> Result<Json> {
    if let Some(inner) = whole_expression(s) {
        return eval(inner, ctx);
    }
    if !is_template(s) {
        return Ok(Json::String(s.to_owned()));
    }
    env()
        .render_str(s, ctx.0.clone())
        .map(Json::String)
        .map_err(|e| ExprError::from_minijinja(&e))
}

fn to_json(value: &Value) -> Result<Json> {
    if value.is_undefined() {
        return Ok(Json::Null);
    }
    serde_json::to_value(value).map_err(|e| ExprError {
        message: format!("result is not JSON: {e}"),
    })
}

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
