//! Cross-step checks, once every step is parsed: unique ids, `needs` that exist and form no
//! cycle, compensation steps, and expressions that compile and read only what they may.

use std::collections::{BTreeSet, HashMap};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::Parser;
use super::nodes::closest;
use crate::expr;
use crate::flow::model::{Approvers, Flow, OnFailure};

/// Unknown `needs` that get a "did you mean" hint; each hint compares with every step id.
const MAX_HINTS: usize = 20;

/// Where a step's expressions are checked: what names they may read.
struct Scope<'s> {
    step: &'s str,
    /// Steps whose outputs this step may read (its transitive needs); None means any.
    visible: Option<Visible<'s>>,
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
        // The first mapping of each id; later duplicates are reported below.
        let mut nodes: HashMap<&str, &MarkedMappingNode> = HashMap::new();
        for m in &step_nodes {
            if let Some(id) = m.get_scalar("id") {
                nodes.entry(id.as_str()).or_insert(m);
            }
        }
        let node_of = |id: &str| nodes.get(id).copied();
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

        let ids: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut unknown_needs = 0;
        for step in &flow.steps {
            for need in &step.needs {
                if need == &step.id {
                    self.err(
                        &span_of(&step.id, "needs"),
                        format!("step `{}` needs itself", step.id),
                    );
                } else if !all.contains(need) {
                    // A hint compares with every id: only for the first few, to stay linear.
                    unknown_needs += 1;
                    let hint = (unknown_needs <= MAX_HINTS)
                        .then(|| closest(need, &ids))
                        .flatten()
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
            if step.uses == "approval"
                && let Err(e) = Approvers::of(&step.with)
            {
                self.err(
                    &span_of(&step.id, "with"),
                    format!("approval step `{}`: {e}", step.id),
                );
            }
            if step.uses == "approval" && step.for_each.is_some() {
                self.err(
                    &span_of(&step.id, "for_each"),
                    format!("`{}` steps cannot use `for_each`", step.uses),
                );
            }
        }

        let index: HashMap<&str, usize> = flow
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let graph = Needs::new(flow, &index);
        let order = match graph.order() {
            Ok(order) => order,
            Err(cycle) => {
                let ids: Vec<&str> = cycle.iter().map(|&i| flow.steps[i].id.as_str()).collect();
                self.err(
                    &span_of(ids[0], "needs"),
                    format!("`needs` form a cycle: {}", ids.join(" -> ")),
                );
                return;
            }
        };
        let ancestors = Ancestors::new(&graph, &order);

        for (i, step) in flow.steps.iter().enumerate() {
            let visible = (!step.compensation).then_some(Visible {
                step: i,
                ancestors: &ancestors,
                index: &index,
            });
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
        let mut todo = vec![node];
        while let Some(node) = todo.pop() {
            match node {
                Node::Scalar(s) => self.check_expr(s.as_str(), s.span(), "template", scope, true),
                Node::Sequence(seq) => todo.extend(seq.iter().rev()),
                Node::Mapping(map) => todo.extend(map.values().rev()),
            }
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
                    } else if let Some(visible) = &scope.visible
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

/// The `needs` graph by step index; names of unknown steps are left out (reported elsewhere).
struct Needs {
    needs: Vec<Vec<usize>>,
}

impl Needs {
    fn new(flow: &Flow, index: &HashMap<&str, usize>) -> Self {
        let needs = flow
            .steps
            .iter()
            .map(|s| {
                s.needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect()
            })
            .collect();
        Self { needs }
    }

    /// Every step after the steps it needs (an iterative depth-first walk, linear in steps
    /// and `needs`), or a cycle as step indices from its first step back to that step.
    fn order(&self) -> Result<Vec<usize>, Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut marks = vec![Mark::New; self.needs.len()];
        let mut order = Vec::with_capacity(self.needs.len());
        // The open path: a step and how many of its needs are walked.
        let mut path: Vec<(usize, usize)> = Vec::new();
        for root in 0..self.needs.len() {
            if marks[root] != Mark::New {
                continue;
            }
            marks[root] = Mark::Open;
            path.push((root, 0));
            while let Some((step, next)) = path.last_mut() {
                let Some(&need) = self.needs[*step].get(*next) else {
                    marks[*step] = Mark::Done;
                    order.push(*step);
                    path.pop();
                    continue;
                };
                *next += 1;
                match marks[need] {
                    Mark::New => {
                        marks[need] = Mark::Open;
                        path.push((need, 0));
                    }
                    Mark::Open => {
                        let start = path.iter().position(|&(s, _)| s == need).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[start..].iter().map(|&(s, _)| s).collect();
                        cycle.push(need);
                        return Err(cycle);
                    }
                    Mark::Done => {}
                }
            }
        }
        Ok(order)
    }
}

/// For each step, the steps it needs directly or through others: one bit per step, filled in
/// `needs` order. Memory is steps² / 8 bytes (125 KB at 1,000 steps), time steps × `needs` / 64.
struct Ancestors {
    words: usize,
    bits: Vec<u64>,
}

impl Ancestors {
    fn new(graph: &Needs, order: &[usize]) -> Self {
        let n = graph.needs.len();
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; n * words];
        let mut row = vec![0u64; words];
        for &step in order {
            row.iter_mut().for_each(|w| *w = 0);
            for &need in &graph.needs[step] {
                row[need / 64] |= 1 << (need % 64);
                let from = &bits[need * words..(need + 1) * words];
                row.iter_mut().zip(from).for_each(|(w, f)| *w |= f);
            }
            bits[step * words..(step + 1) * words].copy_from_slice(&row);
        }
        Self { words, bits }
    }

    fn contains(&self, step: usize, ancestor: usize) -> bool {
        self.bits[step * self.words + ancestor / 64] & (1 << (ancestor % 64)) != 0
    }
}

/// The steps one step may read: its ancestors.
#[derive(Clone, Copy)]
struct Visible<'s> {
    step: usize,
    ancestors: &'s Ancestors,
    index: &'s HashMap<&'s str, usize>,
}

impl Visible<'_> {
    fn contains(&self, id: &str) -> bool {
        self.index
            .get(id)
            .is_some_and(|&a| self.ancestors.contains(self.step, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(needs: Vec<Vec<usize>>) -> Needs {
        Needs { needs }
    }

    #[test]
    fn a_long_chain_orders_and_reaches_without_recursion() {
        let n = 50_000;
        let g = graph(
            (0..n)
                .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
                .collect(),
        );
        let order = g.order().expect("no cycle");
        assert_eq!(order.len(), n);
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_long_cycle_is_found_without_recursion() {
        let n = 100_000;
        let g = graph((0..n).map(|i| vec![(i + 1) % n]).collect());
        let cycle = g.order().expect_err("a cycle");
        assert_eq!(cycle.len(), n + 1);
        assert_eq!(cycle.first(), cycle.last());
    }

    #[test]
    fn ancestors_are_transitive_and_nothing_else() {
        // 0 <- 1 <- 2, 3 alone, 4 needs 2 and 3.
        let g = graph(vec![vec![], vec![0], vec![1], vec![], vec![2, 3]]);
        let order = g.order().unwrap();
        let a = Ancestors::new(&g, &order);
        assert!(a.contains(2, 0) && a.contains(4, 0) && a.contains(4, 3));
        assert!(!a.contains(0, 2) && !a.contains(3, 0) && !a.contains(2, 2));
    }
}
