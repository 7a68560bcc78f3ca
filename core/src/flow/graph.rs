//! Renders a flow as a Mermaid flowchart.

use std::fmt::Write;

use super::model::{Flow, OnFailure};

/// The flow as a Mermaid `flowchart TD`: one node per step (decisions as diamonds), `needs` as
/// arrows, `if` conditions as arrow labels, compensations as dotted arrows.
pub fn to_mermaid(flow: &Flow) -> String {
    let mut out = String::from("flowchart TD\n");
    for step in &flow.steps {
        let mut label = step.name.clone().unwrap_or_else(|| step.id.clone());
        label.push_str(&format!("<br/><i>{}</i>", step.uses));
        if let Some(fe) = &step.for_each {
            label.push_str(&format!("<br/>for each {}", fe.items));
        }
        let label = escape(&label);
        let shape = match step.uses.as_str() {
            "approval" => format!("{{{{\"{label}\"}}}}"),
            _ if step.compensation => format!("[/\"{label}\"/]"),
            _ => format!("[\"{label}\"]"),
        };
        let _ = writeln!(out, "    {}{}", step.id, shape);
    }
    for step in &flow.steps {
        let roots = step.needs.is_empty() && !step.compensation;
        if roots {
            let _ = writeln!(out, "    start((start)) --> {}", step.id);
        }
        for need in &step.needs {
            match &step.condition {
                Some(cond) => {
                    let _ = writeln!(out, "    {need} -->|\"{}\"| {}", escape(cond), step.id);
                }
                None => {
                    let _ = writeln!(out, "    {need} --> {}", step.id);
                }
            }
        }
        if let OnFailure::Compensate(target) = &step.on_failure {
            let _ = writeln!(out, "    {} -. on failure .-> {target}", step.id);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_steps_and_edges() {
        let flow = crate::flow::parse(
            "f.yaml",
            "name: f\nsteps:\n  - { id: fetch, uses: http, with: { url: 'http://x' } }\n  - { id: ok, uses: approval, needs: fetch, if: 'steps.fetch.output.status == 200' }\n",
        )
        .unwrap();
        let m = to_mermaid(&flow);
        assert!(m.starts_with("flowchart TD\n"));
        assert!(m.contains("start((start)) --> fetch"), "{m}");
        assert!(
            m.contains("fetch -->|\"steps.fetch.output.status == 200\"| ok"),
            "{m}"
        );
        assert!(m.contains("ok{{\"ok<br/><i>approval</i>\"}}"), "{m}");
    }
}
