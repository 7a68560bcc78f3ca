//! `transform`: reshapes and cleans JSON, such as records collected from APIs before they are
//! stored.
//!
//! # Input
//! - `data` (required): any JSON; a list of records (mappings) when `ops` are given.
//! - `ops`: a list of ops, applied in order. Each is a mapping with one key, the op's name:
//!
//! | op | argument | effect |
//! |---|---|---|
//! | `filter` | expression | keeps the records for which it is true |
//! | `drop_empty` | fields | drops records where any of the fields is missing, `null` or blank text |
//! | `fill` | `{field: default}` | sets fields that are missing, `null` or blank text |
//! | `trim`, `lowercase`, `uppercase` | fields | rewrites the fields that hold text |
//! | `map` | `{field: expression}` | sets fields; text constants are quoted (`"'inbox'"`), other JSON values are constants |
//! | `select` | fields | keeps only these fields |
//! | `remove` | fields | removes these fields |
//! | `rename` | `{old: new}` | renames fields |
//! | `dedupe` | fields | keeps the first record per combination of the fields; `[]` compares whole records |
//! | `sort` | `{by: fields, desc: bool}` or fields | stable sort; missing and `null` values last |
//! | `clamp` | `{field: {min, max}}` | brings numbers outside the range to its bounds (outliers) |
//! | `limit` | n | keeps the first n records |
//!
//!   *fields* is one field name or a list of them; field names are top-level keys of a record.
//!   Expressions (MiniJinja, see [`rpaflow_core::expr`]) see the record's fields by name, the
//!   whole record as `record` and its position in the list as `index`: `amount < 10000`,
//!   `record.contact.email | lower`. Every expression of a `map` sees the record as it was before
//!   that op. A missing field reads as undefined: testing it (`not phone`) is fine, comparing it
//!   (`amount < 10`) is an `expr` error naming the record; use `drop_empty` first, or
//!   `amount is defined and amount < 10`.
//! - `expr`: an expression over `data` (the result of the ops) whose value becomes the output's
//!   `data`: `data | map(attribute='amount') | sum`.
//!
//! Expressions are bare (no `{{ }}`), so the orchestrator's rendering of the step's `with` leaves
//! them for the worker.
//!
//! # Output
//! `{data, count, dropped}`: `data` is the result; `count` its length when it is a list;
//! `dropped` how many records the ops removed (present when `ops` were given).
//!
//! # Errors
//! `invalid_input` names the field or `ops[i]` and the op; `expr` names the op, the record index
//! and the field for expressions that fail to compile or evaluate. Every op is checked before
//! any runs. Large inputs are transformed on a blocking thread, which stops when the step is
//! cancelled or times out.
//!
//! # Budget
//! Every expression evaluation stays within the worker's `expr_fuel` and `expr_max_output_bytes`
//! (see [`rpaflow_core::expr::Limits`]), and all the evaluations of one step together within
//! `transform_fuel` and the step's output limit; past either, the step fails with an `expr` error
//! naming the setting (`docs/limits.md`).

mod ops;

use async_trait::async_trait;
use rpaflow_core::expr;
use serde_json::{Map, Value as Json};

use self::ops::{Op, Stop};
use super::Input;
use super::input::type_name;
use crate::{Executor, StepError, TaskContext};

/// The default fuel of all the evaluations of one transform step: 200 evaluations that use
/// their whole budget, or about 2 million cheap ones.
pub const DEFAULT_TRANSFORM_FUEL: u64 = 200 * expr::DEFAULT_FUEL;

/// The `transform` executor.
#[derive(Debug, Clone, Copy)]
pub struct TransformExecutor {
    /// The budget of one evaluation.
    limits: expr::Limits,
    /// The fuel of all the evaluations of one step.
    step_fuel: u64,
}

impl TransformExecutor {
    /// A transform executor whose evaluations stay within `limits`, and all of one step's
    /// within `step_fuel`.
    pub fn new(limits: expr::Limits, step_fuel: u64) -> Self {
        Self { limits, step_fuel }
    }
}

impl Default for TransformExecutor {
    fn default() -> Self {
        Self::new(expr::Limits::defaults("worker"), DEFAULT_TRANSFORM_FUEL)
    }
}

#[async_trait]
impl Executor for TransformExecutor {
    fn kind(&self) -> &'static str {
        "transform"
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let plan = Plan::parse(input)?;
        // Cancelled with the run, and when this future is dropped (the step timed out).
        let stop = ctx.cancel.child_token();
        let _stop_when_dropped = stop.clone().drop_guard();
        let mut meter = expr::Meter::with_totals(
            self.limits,
            (self.step_fuel, "worker.transform_fuel"),
            (ctx.max_output_bytes, "the step's output limit"),
        );
        tokio::task::spawn_blocking(move || plan.run(&stop, &mut meter))
            .await
            .map_err(|e| StepError::internal(format!("transform stopped unexpectedly: {e}")))?
    }
}

/// A checked transform, ready to run.
#[derive(Debug)]
struct Plan {
    data: Json,
    ops: Vec<Op>,
    expr: Option<String>,
}

impl Plan {
    fn parse(mut input: Json) -> Result<Self, StepError> {
        let (ops, expr) = {
            let fields = Input::new(&input)?;
            fields.deny_unknown(&["data", "ops", "expr"])?;
            fields.required("data")?;
            let ops = fields
                .array("ops")?
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, op)| Op::parse(i, op))
                .collect::<Result<Vec<_>, _>>()?;
            let expr = fields.str("expr")?.map(str::to_owned);
            if let Some(expression) = &expr {
                expr::check_expression(expression).map_err(|e| StepError::expr("`expr`", &e))?;
            }
            (ops, expr)
        };
        let data = input
            .as_object_mut()
            .and_then(|fields| fields.remove("data"))
            .unwrap_or_default();
        if !ops.is_empty() && !data.is_array() {
            return Err(StepError::invalid_input(format!(
                "`data` must be a list of records when `ops` are given, not {}",
                type_name(&data)
            )));
        }
        Ok(Self { data, ops, expr })
    }

    fn run(self, stop: &dyn Stop, meter: &mut expr::Meter) -> Result<Json, StepError> {
        let mut output = Map::new();
        let data = match self.data {
            Json::Array(mut records) if !self.ops.is_empty() => {
                let before = records.len();
                for op in &self.ops {
                    records = op.apply(records, stop, meter)?;
                }
                output.insert("dropped".to_owned(), Json::from(before - records.len()));
                Json::Array(records)
            }
            data => data,
        };
        let data = match &self.expr {
            Some(expression) => {
                let ctx = expr::Context::new(&serde_json::json!({ "data": data }));
                meter
                    .eval(expression, &ctx)
                    .map_err(|e| StepError::expr("`expr`", &e))?
            }
            None => data,
        };
        if let Json::Array(items) = &data {
            output.insert("count".to_owned(), Json::from(items.len()));
        }
        output.insert("data".to_owned(), data);
        Ok(Json::Object(output))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn transform(input: Json) -> Result<Json, StepError> {
        TransformExecutor::default()
            .execute(&TaskContext::new("r", "clean"), input)
            .await
    }

    /// Messages as they arrive from a support inbox and a web form.
    fn customer_messages() -> Json {
        json!([
            {"id": 1, "email": "  Ada@Example.com ", "channel": "email", "message": "Where is my order?", "amount": 120},
            {"id": 2, "email": "bob@example.com", "channel": null, "message": "   ", "amount": 80},
            {"id": 3, "email": "ADA@example.com", "channel": "chat", "message": "Any news?", "amount": 50},
            {"id": 4, "email": "carol@example.com", "message": "Refund please", "amount": 999_999},
            {"id": 5, "email": null, "message": "Anonymous note", "amount": 10},
            {"id": 6, "email": "Dan@Example.com", "channel": "", "message": " Hello ", "amount": -5},
            {"id": 7, "email": "erin@example.com", "channel": "web", "message": "Invoice copy", "amount": 300},
        ])
    }

    #[tokio::test]
    async fn cleans_customer_messages() {
        let out = transform(json!({
            "data": customer_messages(),
            "ops": [
                {"drop_empty": ["email", "message"]},
                {"trim": ["email", "message"]},
                {"lowercase": "email"},
                {"dedupe": ["email"]},
                {"fill": {"channel": "web"}},
                {"filter": "amount < 10000"},
                {"clamp": {"amount": {"min": 0, "max": 5000}}},
                {"map": {"label": "channel ~ ':' ~ id", "position": "index", "source": "'inbox'", "checked": false}},
                {"sort": {"by": "amount", "desc": true}},
                {"select": ["id", "email", "channel", "message", "amount", "label", "source", "checked"]},
            ],
        }))
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({
                "data": [
                    {"id": 7, "email": "erin@example.com", "channel": "web", "message": "Invoice copy", "amount": 300, "label": "web:7", "source": "inbox", "checked": false},
                    {"id": 1, "email": "ada@example.com", "channel": "email", "message": "Where is my order?", "amount": 120, "label": "email:1", "source": "inbox", "checked": false},
                    {"id": 6, "email": "dan@example.com", "channel": "web", "message": "Hello", "amount": 0, "label": "web:6", "source": "inbox", "checked": false},
                ],
                "count": 3,
                "dropped": 4,
            })
        );
    }

    #[tokio::test]
    async fn expr_reduces_the_result() {
        let out = transform(json!({
            "data": customer_messages(),
            "ops": [{"filter": "email and amount > 0"}, {"rename": {"amount": "total"}}],
            "expr": "data | map(attribute='total') | sum",
        }))
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"data": 120 + 80 + 50 + 999_999 + 300, "dropped": 2})
        );
        // Without ops, any data goes in.
        let out = transform(json!({"data": {"a": [1, 2, 3]}, "expr": "data.a | length"}))
            .await
            .unwrap();
        assert_eq!(out, json!({"data": 3}));
        let out = transform(json!({"data": [1, 2]})).await.unwrap();
        assert_eq!(out, json!({"data": [1, 2], "count": 2}));
    }

    #[tokio::test]
    async fn record_ops_do_what_they_say() {
        let data = json!([
            {"a": 2, "b": "x", "c": 1},
            {"a": null, "b": "y"},
            {"a": 1, "b": "x", "c": 3},
            {"a": 2, "b": "x", "c": 1},
        ]);
        let run = |ops: Json| {
            let data = data.clone();
            async move { transform(json!({"data": data, "ops": ops})).await.unwrap()["data"].clone() }
        };
        assert_eq!(
            run(json!([{"dedupe": []}])).await.as_array().unwrap().len(),
            3
        );
        assert_eq!(
            run(json!([{"dedupe": "b"}, {"select": "a"}])).await,
            json!([{"a": 2}, {"a": null}])
        );
        assert_eq!(
            run(json!([{"sort": "a"}, {"select": "c"}])).await,
            json!([{"c": 3}, {"c": 1}, {"c": 1}, {}])
        );
        assert_eq!(
            run(json!([{"remove": ["b", "c"]}, {"limit": 2}])).await,
            json!([{"a": 2}, {"a": null}])
        );
        assert_eq!(
            run(json!([{"rename": {"a": "b", "b": "a"}}, {"limit": 1}])).await,
            json!([{"a": "x", "b": 2, "c": 1}])
        );
        assert_eq!(
            run(json!([{"uppercase": "b"}, {"limit": 1}])).await[0]["b"],
            "X"
        );
    }

    #[tokio::test]
    async fn bad_ops_name_their_index_and_op() {
        let message = |ops: Json| async move {
            transform(json!({"data": [], "ops": ops}))
                .await
                .unwrap_err()
        };
        let err = message(json!([{"trim": "a"}, {"filtr": "x"}])).await;
        assert_eq!(err.code, "invalid_input");
        assert!(
            err.message
                .starts_with("`ops[1]`: unknown op `filtr` (expected one of: filter,"),
            "{}",
            err.message
        );
        let err = message(json!([{"sort": {"desc": true}}])).await;
        assert_eq!(err.message, "`ops[0]` (`sort`): `by` is required");
        let err = message(json!([{"clamp": {"amount": {"min": 10, "max": 1}}}])).await;
        assert_eq!(
            err.message,
            "`ops[0]` (`clamp`): `amount` has `min` 10 above `max` 1"
        );
        let err = message(json!([{"drop_empty": []}])).await;
        assert_eq!(
            err.message,
            "`ops[0]` (`drop_empty`): needs at least one field"
        );
        let err = message(json!([{"trim": "a", "lowercase": "a"}])).await;
        assert!(
            err.message
                .starts_with("`ops[0]` must be a mapping with one key"),
            "{}",
            err.message
        );
        let err = message(json!([{"filter": "amount <"}])).await;
        assert_eq!(err.code, "expr");
        assert!(
            err.message.starts_with("`ops[0]` (`filter`): syntax error"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn bad_data_and_failing_expressions_are_reported() {
        let err = transform(json!({"ops": []})).await.unwrap_err();
        assert_eq!(err.message, "`data` is required");
        let err = transform(json!({"data": {"a": 1}, "ops": [{"limit": 1}]}))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "`data` must be a list of records when `ops` are given, not a mapping"
        );
        let err = transform(json!({"data": [{"a": 1}, 5], "ops": [{"trim": "a"}]}))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "`ops[0]` (`trim`): record 1 is a number, not a mapping of fields"
        );
        let err = transform(
            json!({"data": [{"a": 1}, {"a": "x"}], "ops": [{"map": {"b": "a * 2 + 1"}}]}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, "expr");
        assert!(
            err.message
                .starts_with("`ops[0]` (`map`) on record 1 field `b`:"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn comparing_a_missing_field_is_an_error_naming_the_record() {
        let data = json!([{"amount": 5}, {"note": "no amount"}, {"amount": 50}]);
        let err = transform(json!({"data": data, "ops": [{"filter": "amount < 10"}]}))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "`ops[0]` (`filter`) on record 1: undefined value"
        );
        let out = transform(
            json!({"data": data, "ops": [{"filter": "amount is defined and amount < 10"}]}),
        )
        .await
        .unwrap();
        assert_eq!(out["data"], json!([{"amount": 5}]));
    }

    #[tokio::test]
    async fn a_cancelled_step_stops_transforming() {
        let ctx = TaskContext::new("r", "clean");
        ctx.cancel.cancel();
        let err = TransformExecutor::default()
            .execute(&ctx, json!({"data": [{"a": 1}], "ops": [{"filter": "a"}]}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "cancelled");
    }

    #[tokio::test]
    async fn one_expression_that_grows_a_string_fails_on_its_budget() {
        let started = std::time::Instant::now();
        let err = transform(json!({
            "data": [{"s": "abc"}],
            "ops": [{"map": {"s": "(s ~ s ~ s ~ s) | replace('a', s * 4000) | replace('b', s * 4000) | replace('c', s * 4000)"}}],
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code, "expr");
        assert!(err.message.contains("worker.expr_fuel"), "{}", err.message);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn all_the_records_of_a_step_share_one_budget() {
        // Each record fits the budget of one evaluation; a hundred thousand of them do not.
        let records: Vec<Json> = (0..100_000).map(|i| json!({"n": i})).collect();
        let started = std::time::Instant::now();
        let err = transform(json!({
            "data": records,
            "ops": [{"filter": "(range(n % 300) | map('string') | join(',')) | length > 5"}],
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code, "expr");
        assert!(
            err.message.contains("worker.transform_fuel"),
            "{}",
            err.message
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
}
