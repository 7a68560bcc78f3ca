//! Starting one step (`if`, approval, `for_each`) and handing out an attempt.

use rpaflow_core::expr;
use serde_json::{Value as Json, json};

use super::advance::finish_failed;
use super::{Tx, deadline_after, millis};
use crate::state::{ErrorInfo, EventKind, StepOutcome};

/// Starts a step whose needs are met: its `if`, then approval, `for_each` or a single dispatch.
pub(super) fn start_step(tx: &mut Tx<'_>, index: usize) {
    let def = tx.state.flow.steps[index].clone();
    if let Some(cond) = &def.condition {
        let ctx = tx.context();
        match expr::eval_bool(cond, &ctx) {
            Ok(true) => {}
            Ok(false) => {
                tx.emit(EventKind::StepSkipped {
                    step: def.id.clone(),
                    reason: format!("`if` is false: {cond}"),
                });
                return;
            }
            Err(e) => {
                finish_failed(
                    tx,
                    index,
                    ErrorInfo::new(
                        "expr",
                        format!("step `{}`: `if` failed: {}", def.id, e.message),
                        false,
                    ),
                );
                return;
            }
        }
    }
    if def.uses == "approval" {
        let ctx = tx.context();
        let message = match def.with.get("message").map(|m| expr::render(m, &ctx)) {
            Some(Ok(Json::String(s))) => s,
            Some(Ok(other)) => other.to_string(),
            Some(Err(e)) => format!("(message could not be rendered: {})", e.message),
            None => format!("approve step `{}`?", def.id),
        };
        let deadline_ms = (!def.timeout.is_zero()).then(|| tx.now + millis(def.timeout));
        tx.emit(EventKind::ApprovalRequested {
            step: def.id.clone(),
            message,
            deadline_ms,
        });
        return;
    }
    if let Some(fe) = &def.for_each {
        let ctx = tx.context();
        match expr::eval(&fe.items, &ctx) {
            Ok(Json::Array(items)) if items.len() > tx.state.max_for_each_items => {
                let error = ErrorInfo::new(
                    "limit",
                    format!(
                        "`for_each` gave {} items, over the limit of {} (orchestrator.max_for_each_items)",
                        items.len(),
                        tx.state.max_for_each_items
                    ),
                    false,
                );
                finish_failed(tx, index, error);
            }
            Ok(Json::Array(items)) => {
                let empty = items.is_empty();
                tx.emit(EventKind::StepExpanded {
                    step: def.id.clone(),
                    items,
                });
                if empty {
                    tx.emit(EventKind::StepFinished {
                        step: def.id.clone(),
                        outcome: StepOutcome::Succeeded,
                        output: Some(Json::Array(vec![])),
                        error: None,
                    });
                }
                // Units are dispatched by `fill_for_each`.
            }
            Ok(other) => {
                let error = ErrorInfo::new(
                    "expr",
                    format!("`for_each` must give a list, got {}", type_name(&other)),
                    false,
                );
                finish_failed(tx, index, error);
            }
            Err(e) => finish_failed(
                tx,
                index,
                ErrorInfo::new(
                    "expr",
                    format!("step `{}`: `for_each` failed: {}", def.id, e.message),
                    false,
                ),
            ),
        }
        return;
    }
    dispatch(tx, index, None);
}
/// Renders the step's inputs and hands out the next attempt of one unit.
pub(super) fn dispatch(tx: &mut Tx<'_>, index: usize, item: Option<u32>) {
    let def = tx.state.flow.steps[index].clone();
    let st = &tx.state.steps[index];
    let attempt = match st.unit_index(item) {
        Some(u) => st.units[u].attempt + 1,
        None => st.attempt_base + 1,
    };
    let item_json = item.and_then(|i| {
        st.items
            .as_ref()
            .and_then(|items| items.get(i as usize))
            .cloned()
    });
    let rendered = if expr::has_templates(&def.with) {
        // Secrets render to markers tagged for this attempt: their values never enter a run's
        // events, and a marker that reaches an input from data is not honoured (core::secrets).
        let this = rpaflow_core::secrets::Attempt {
            run_id: &tx.state.run_id,
            step: &def.id,
            item,
            attempt,
        };
        let secrets: serde_json::Map<String, Json> = tx
            .state
            .flow
            .secrets
            .iter()
            .map(|name| (name.clone(), Json::String(this.marker(name))))
            .collect();
        let secrets = Json::Object(secrets);
        let base = tx.context().with(&[("secrets", &secrets)]);
        let ctx = match (&item_json, item) {
            (Some(value), Some(i)) => base.with(&[("item", value), ("index", &json!(i))]),
            _ => base,
        };
        expr::render_field(&def.with, &ctx, "with")
            .map_err(|e| ErrorInfo::new("expr", format!("step `{}`: {}", def.id, e.message), false))
    } else {
        Ok(def.with.clone())
    };
    let rendered = rendered.and_then(|input| {
        let size = input.to_string().len();
        if size > tx.state.max_payload_bytes {
            Err(ErrorInfo::new(
                "payload_too_large",
                format!(
                    "rendered input is {size} bytes, over the limit of {} bytes",
                    tx.state.max_payload_bytes
                ),
                false,
            ))
        } else {
            Ok(input)
        }
    });
    match rendered {
        Ok(input) => {
            let deadline_ms = deadline_after(tx.now, def.timeout);
            tx.emit(EventKind::TaskDispatched {
                step: def.id.clone(),
                item,
                attempt,
                input,
                deadline_ms,
            });
        }
        Err(error) => {
            // Record the attempt so the failure has a unit to land on.
            tx.emit(EventKind::TaskDispatched {
                step: def.id.clone(),
                item,
                attempt,
                input: Json::Null,
                deadline_ms: tx.now,
            });
            tx.emit(EventKind::TaskFailed {
                step: def.id,
                item,
                attempt,
                error,
            });
        }
    }
}
fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}
