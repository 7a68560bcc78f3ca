//! Rendering for people (aligned text) and for programs (`--output json`).

use std::time::Duration;

use rpaflow_proto::v1 as pb;
use serde_json::{Value as Json, json};

pub fn ms_to_rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_json(text: &str) -> Json {
    if text.is_empty() {
        Json::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_owned()))
    }
}

pub fn run_status_name(status: i32) -> &'static str {
    match pb::RunStatus::try_from(status).unwrap_or(pb::RunStatus::Unspecified) {
        pb::RunStatus::Queued => "queued",
        pb::RunStatus::Running => "running",
        pb::RunStatus::Succeeded => "succeeded",
        pb::RunStatus::Failed => "failed",
        pb::RunStatus::Cancelled => "cancelled",
        pb::RunStatus::Unspecified => "unknown",
    }
}

pub fn step_status_name(status: i32) -> &'static str {
    match pb::StepStatus::try_from(status).unwrap_or(pb::StepStatus::Unspecified) {
        pb::StepStatus::Pending => "pending",
        pb::StepStatus::Running => "running",
        pb::StepStatus::WaitingRetry => "waiting_retry",
        pb::StepStatus::WaitingApproval => "waiting_approval",
        pb::StepStatus::Succeeded => "succeeded",
        pb::StepStatus::Failed => "failed",
        pb::StepStatus::Skipped => "skipped",
        pb::StepStatus::Cancelled => "cancelled",
        pb::StepStatus::Unspecified => "unknown",
    }
}

fn error_json(e: Option<&pb::StepError>) -> Json {
    e.map_or(
        Json::Null,
        |e| json!({"code": e.code, "message": e.message, "retryable": e.retryable}),
    )
}

pub fn run_json(run: &pb::Run) -> Json {
    json!({
        "run_id": run.run_id,
        "namespace": run.namespace,
        "flow": run.flow,
        "flow_version": run.flow_version,
        "status": run_status_name(run.status),
        "inputs": parse_json(&run.inputs_json),
        "outputs": parse_json(&run.outputs_json),
        "error": error_json(run.error.as_ref()),
        "created_at": ms_to_rfc3339(run.created_at_ms),
        "updated_at": ms_to_rfc3339(run.updated_at_ms),
        "idempotency_key": run.idempotency_key,
        "trigger": run.trigger,
        "steps": run.steps.iter().map(|s| json!({
            "step_id": s.step_id,
            "status": step_status_name(s.status),
            "attempt": s.attempt,
            "output": parse_json(&s.output_json),
            "error": error_json(s.error.as_ref()),
            "items_total": s.items_total,
            "items_done": s.items_done,
        })).collect::<Vec<_>>(),
    })
}

pub fn run_text(run: &pb::Run) -> String {
    let trigger = if run.trigger.is_empty() {
        String::new()
    } else {
        format!("  ({})", run.trigger)
    };
    let mut out = format!(
        "run {}  {} v{}  {}{trigger}\n",
        run.run_id,
        run.flow,
        run.flow_version,
        run_status_name(run.status).to_uppercase()
    );
    for s in &run.steps {
        let mut line = format!("  {:<20} {:<16}", s.step_id, step_status_name(s.status));
        if s.attempt > 1 {
            line.push_str(&format!(" attempt {}", s.attempt));
        }
        if s.items_total > 0 {
            line.push_str(&format!(" items {}/{}", s.items_done, s.items_total));
        }
        if let Some(e) = &s.error {
            line.push_str(&format!(" {} ({})", e.message, e.code));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(e) = &run.error {
        out.push_str(&format!("error: {} ({})\n", e.message, e.code));
    }
    if !run.outputs_json.is_empty() && run.outputs_json != "{}" {
        let pretty =
            serde_json::to_string_pretty(&parse_json(&run.outputs_json)).unwrap_or_default();
        out.push_str(&format!("outputs: {pretty}\n"));
    }
    out.trim_end().to_owned()
}

pub fn event_json(e: &pb::RunEvent) -> Json {
    json!({
        "run_id": e.run_id,
        "seq": e.seq,
        "at": ms_to_rfc3339(e.at_ms),
        "kind": e.kind,
        "step_id": e.step_id,
        "item": e.item,
        "attempt": e.attempt,
        "message": e.message,
        "run_status": run_status_name(e.run_status),
        "detail": parse_json(&e.detail_json),
    })
}

/// One line per event: elapsed time, step (with item and attempt), what happened.
pub fn event_line(e: &pb::RunEvent, elapsed: Duration) -> String {
    let mut target = e.step_id.clone();
    if let Some(item) = e.item {
        target.push_str(&format!("[{item}]"));
    }
    if e.attempt > 1 {
        target.push_str(&format!(" #{}", e.attempt));
    }
    if target.is_empty() {
        target.push('-');
    }
    format!(
        "  {:>8.3}s  {:<24} {}",
        elapsed.as_secs_f64(),
        target,
        e.message
    )
}

pub fn flow_json(f: &pb::Flow) -> Json {
    let def = f.definition.clone().unwrap_or_default();
    json!({
        "name": f.name,
        "namespace": f.namespace,
        "version": f.version,
        "versions": f.versions,
        "created_at": ms_to_rfc3339(f.created_at_ms),
        "description": def.description,
        "inputs": def.inputs.iter().map(|i| json!({
            "name": i.name, "type": i.r#type, "required": i.required,
            "default": i.default_json.as_deref().map(parse_json), "description": i.description,
        })).collect::<Vec<_>>(),
        "steps": def.steps.iter().map(|s| json!({
            "id": s.id, "uses": s.uses, "needs": s.needs, "queue": s.queue, "if": s.r#if,
            "for_each": s.for_each, "timeout_ms": s.timeout_ms, "on_failure": s.on_failure,
            "compensation": s.compensation, "with": parse_json(&s.with_json),
        })).collect::<Vec<_>>(),
        "source": f.source,
    })
}

pub fn flow_text(f: &pb::Flow) -> String {
    let def = f.definition.clone().unwrap_or_default();
    let mut out = format!(
        "flow {} v{} (versions: {:?})\n",
        f.name, f.version, f.versions
    );
    if !def.description.is_empty() {
        out.push_str(&format!("  {}\n", def.description));
    }
    for i in &def.inputs {
        let default = i
            .default_json
            .as_deref()
            .map(|d| format!(" = {d}"))
            .unwrap_or_else(|| " (required)".into());
        out.push_str(&format!("  input {}: {}{}\n", i.name, i.r#type, default));
    }
    for s in &def.steps {
        let needs = if s.needs.is_empty() {
            String::new()
        } else {
            format!(" needs {}", s.needs.join(", "))
        };
        out.push_str(&format!("  step {:<20} {:<10}{needs}\n", s.id, s.uses));
    }
    out.trim_end().to_owned()
}

pub fn approval_json(a: &pb::Approval) -> Json {
    json!({
        "run_id": a.run_id,
        "flow": a.flow,
        "flow_version": a.flow_version,
        "step_id": a.step_id,
        "message": a.message,
        "requested_at": ms_to_rfc3339(a.requested_at_ms),
        "deadline": if a.deadline_ms > 0 { Json::String(ms_to_rfc3339(a.deadline_ms)) } else { Json::Null },
        "approvers": { "roles": a.approver_roles, "names": a.approver_names },
    })
}

pub fn schedule_json(s: &pb::ScheduleInfo) -> Json {
    json!({
        "flow": s.flow,
        "trigger": s.trigger,
        "cron": s.cron,
        "timezone": s.timezone,
        "paused": s.paused,
        "next_fires": s.next_fire_ms.iter().map(|ms| ms_to_rfc3339(*ms)).collect::<Vec<_>>(),
        "last_fire": if s.last_fire_ms > 0 { Json::String(ms_to_rfc3339(s.last_fire_ms)) } else { Json::Null },
    })
}

/// A table of schedules: one line each, then its next fire times.
pub fn schedules_text(schedules: &[pb::ScheduleInfo]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:<18} {:<18} {:<8} NEXT FIRES (UTC)\n",
        "FLOW", "TRIGGER", "CRON", "TIMEZONE", "STATE"
    );
    for s in schedules {
        let next: Vec<String> = s.next_fire_ms.iter().map(|ms| ms_to_rfc3339(*ms)).collect();
        let next = if next.is_empty() {
            "(ended)".to_owned()
        } else {
            next.join(", ")
        };
        out.push_str(&format!(
            "{:<20} {:<16} {:<18} {:<18} {:<8} {next}\n",
            s.flow,
            s.trigger,
            s.cron,
            s.timezone,
            if s.paused { "paused" } else { "active" },
        ));
    }
    out.trim_end().to_owned()
}
