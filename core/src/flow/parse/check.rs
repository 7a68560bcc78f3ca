//! Cross-step checks, once every step is parsed: unique ids, `needs` that exist and form no
//! cycle, compensation steps, and expressions that compile and read only what they may.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::Parser;
use super::nodes::closest;
use crate::expr;
use crate::flow::model::{Flow, OnFailure};

/// Where a step's expressions are checked: what names they may read.
struct Scope<'s> {
    step: &'s str,
    /// Steps whose outputs this step may read (its transitive needs); None means any.
    visible: Option<&'s BTreeSet<String>>,
    all_steps: &'s BTreeSet<String>,
    item: bool,
    output: bool,
    /// True in a step's `with`, the only place secrets may be read.
    secrets: bool,
}

impl Parser<'_> {
    /// Cross-step checks: unique ids, `needs` that exist and form no cycle, compensation steps,
    /// and expressions that compile and read only what they may.
    pub(super) fn check_graph(&mut self, flow: &mut Flow, map: &MarkedMappingNode) {
        let step_nodes: Vec<&MarkedMappingNode> = map
            .get_node("steps")
            .and_then(Node::as_sequence)
            .map(|seq| seq.iter().filter_map(Node::as_mapping).collect())
            .unwrap_or_default();
        let node_of = |id: &str| {
            step_nodes
                .iter()
                .copied()
                .find(|m| m.get_scalar("id").is_some_and(|s| s.as_str() == id))
        };
        let span_of = |id: &str, field: &str| -> Span {
            node_of(id)
                .and_then(|m| m.get_node(field).map(|n| *n.span()).or(Some(*m.span())))
                .unwrap_or_else(Span::new_blank)
        };

        let mut seen = BTreeSet::new();
        for (i, step) in flow.steps.iter().enumerate() {
            if !seen.insert(step.id.clone()) {
                let span = step_nodes
                    .get(i)
                    .and_then(|m| m.get_node("id"))
                    .map(|n| *n.span())
                    .unwrap_or_else(Span::new_blank);
                self.err(&span, format!("duplicate step id `{}`", step.id));
            }
        }
        let all: BTreeSet<String> = seen;

        // Compensation steps: referenced from on_failure, never part of the normal graph.
        let mut compensations = BTreeSet::new();
        for step in &flow.steps {
            if let OnFailure::Compensate(target) = &step.on_failure {
                if !all.contains(target) {
                    self.err(
                        &span_of(&step.id, "on_failure"),
                        format!(
                            "step `{}` compensates with unknown step `{target}`",
                            step.id
                        ),
                    );
                } else if target == &step.id {
                    self.err(
                        &span_of(&step.id, "on_failure"),
                        format!("step `{}` cannot be its own compensation", step.id),
                    );
                } else {
                    compensations.insert(target.clone());
                }
            }
        }
        for step in &mut flow.steps {
            step.compensation = compensations.contains(&step.id);
        }

        for step in &flow.steps {
            for need in &step.needs {
                if need == &step.id {
                    self.err(
                        &span_of(&step.id, "needs"),
                        format!("step `{}` needs itself", step.id),
                    );
                } else if !all.contains(need) {
                    let hint = closest(need, &all.iter().map(String::as_str).collect::<Vec<_>>())
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    self.err(
                        &span_of(&step.id, "needs"),
                        format!("step `{}` needs unknown step `{need}`{hint}", step.id),
                    );
                } else if compensations.contains(need) {
                    self.err(&span_of(&step.id, "needs"), format!("step `{}` needs `{need}`, which is a compensation step and only runs when another step fails", step.id));
                }
            }
            if step.uses == "subflow"
                && !step
                    .with
                    .get("flow")
                    .is_some_and(serde_json::Value::is_string)
            {
                self.err(
                    &span_of(&step.id, "with"),
                    format!(
                        "`subflow` step `{}` needs `with.flow`, the name of a registered flow",
                        step.id
                    ),
                );
            }
            if step.uses == "approval" && step.for_each.is_some() {
                self.err(
                    &span_of(&step.id, "for_each"),
                    format!("`{}` steps cannot use `for_each`", step.uses),
                );
            }
        }

        if let Some(cycle) = find_cycle(flow) {
            let first = &cycle[0];
            self.err(
                &span_of(first, "needs"),
                format!("`needs` form a cycle: {}", cycle.join(" -> ")),
            );
            return;
        }

        let ancestors = ancestors(flow);
        for step in &flow.steps {
            let visible = if step.compensation {
                None
            } else {
                ancestors.get(&step.id)
            };
            let scope = |item: bool, output: bool| Scope {
                step: &step.id,
                visible,
                all_steps: &all,
                item,
                output,
                secrets: false,
            };
            let in_loop = step.for_each.is_some();
            if let Some(cond) = &step.condition {
                self.check_expr(
                    cond,
                    &span_of(&step.id, "if"),
                    "`if`",
                    &scope(false, false),
                    false,
                );
            }
            if let Some(fe) = &step.for_each {
                self.check_expr(
                    &fe.items,
                    &span_of(&step.id, "for_each"),
                    "`for_each`",
                    &scope(false, false),
                    false,
                );
            }
            if let Some(until) = &step.until {
                self.check_expr(
                    until,
                    &span_of(&step.id, "until"),
                    "`until`",
                    &scope(in_loop, true),
                    false,
                );
            }
            if let Some(with) = node_of(&step.id).and_then(|m| m.get_node("with")) {
                let scope = Scope {
                    secrets: true,
                    ..scope(in_loop, false)
                };
                self.check_templates_in(with, &scope);
            }
        }
        if let Some(outputs) = map.get_node("outputs") {
            let scope = Scope {
                step: "",
                visible: None,
                all_steps: &all,
                item: false,
                output: false,
                secrets: false,
            };
            self.check_templates_in(outputs, &scope);
        }
    }

    fn check_templates_in(&mut self, node: &Node, scope: &Scope<'_>) {
        match node {
            Node::Scalar(s) => self.check_expr(s.as_str(), s.span(), "template", scope, true),
            Node::Sequence(seq) => seq.iter().for_each(|n| self.check_templates_in(n, scope)),
            Node::Mapping(map) => map.values().for_each(|n| self.check_templates_in(n, scope)),
        }
    }

    fn check_expr(
        &mut self,
        source: &str,
        span: &Span,
        what: &str,
        scope: &Scope<'_>,
        template: bool,
    ) {
        let checked = if template {
            expr::check_template(source)
        } else {
            expr::check_expression(source)
        };
        let refs = match checked {
            Ok(refs) => refs,
            Err(e) => {
                self.err(span, format!("bad expression in {what}: {}", e.message));
                return;
            }
        };
        for r in refs {
            let mut parts = r.split('.');
            let root = parts.next().unwrap_or_default();
            match root {
                "inputs" | "run" => {}
                _ if expr::is_global(root) => {}
                "item" | "index" if scope.item => {}
                "output" if scope.output => {}
                "secrets" if !scope.secrets => self.err(
                    span,
                    format!("{what} reads `secrets`: secrets may only be read in a step's `with`, so that their values never reach run records"),
                ),
                "secrets" => match parts.next() {
                    Some(name) if crate::secrets::valid_name(name) => {
                        self.secrets.insert(name.to_owned());
                    }
                    _ => self.err(span, format!("{what} must read one secret at a time, as `secrets.NAME`")),
                },
                "steps" => {
                    let Some(target) = parts.next() else { continue };
                    if !scope.all_steps.contains(target) {
                        self.err(
                            span,
                            format!(
                                "{what} reads `steps.{target}`, but there is no step `{target}`"
                            ),
                        );
                    } else if let Some(visible) = scope.visible
                        && !visible.contains(target)
                    {
                        self.err(span, format!("{what} of step `{}` reads `steps.{target}`, which is not among its `needs` (directly or through other steps)", scope.step));
                    }
                }
                other => {
                    let mut names = vec!["inputs", "steps", "run"];
                    if scope.item {
                        names.extend(["item", "index"]);
                    }
                    if scope.output {
                        names.push("output");
                    }
                    self.err(
                        span,
                        format!(
                            "{what} reads unknown name `{other}` (available: {})",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// A cycle in `needs`, as step ids from the first back to it, if there is one.
fn find_cycle(flow: &Flow) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: HashMap<&str, usize> = flow
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; flow.steps.len()];
    let mut stack: Vec<usize> = Vec::new();

    fn visit(
        i: usize,
        flow: &Flow,
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[i] = Mark::Open;
        stack.push(i);
        for need in &flow.steps[i].needs {
            let Some(&j) = index.get(need.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::Open => {
                    let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..]
                        .iter()
                        .map(|&k| flow.steps[k].id.clone())
                        .collect();
                    cycle.push(flow.steps[j].id.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(j, flow, index, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        None
    }

    (0..flow.steps.len()).find_map(|i| {
        if marks[i] == Mark::New {
            visit(i, flow, &index, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

/// For each step, every step it transitively needs. Assumes no cycles.
fn ancestors(flow: &Flow) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    fn collect(
        id: &str,
        flow: &Flow,
        out: &mut BTreeMap<String, BTreeSet<String>>,
    ) -> BTreeSet<String> {
        if let Some(done) = out.get(id) {
            return done.clone();
        }
        let mut set = BTreeSet::new();
        if let Some(step) = flow.step(id) {
            for need in &step.needs {
                if flow.step(need).is_some() {
                    set.insert(need.clone());
                    set.extend(collect(need, flow, out));
                }
            }
        }
        out.insert(id.to_owned(), set.clone());
        set
    }
    for step in &flow.steps {
        collect(&step.id, flow, &mut out);
    }
    out
}
