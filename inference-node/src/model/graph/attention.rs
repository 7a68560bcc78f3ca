//! The int8 attention scores without a transposed copy of the key cache.
//!
//! Optimum's dynamic int8 GPT-2 computes each layer's scores `Q K^T` as
//! `MatMulInteger(DynamicQuantizeLinear(Q), DynamicQuantizeLinear(Transpose(K)))`, where `K` is the
//! whole key cache (`present.{i}.key`, `[batch, heads, len, head_dim]`): every decode step
//! transposes the cache in float32 (ONNX Runtime's profile at batch 32 on the 124M-sized model: a
//! quarter of the step) only to quantize it. Quantization looks at every element once, whatever
//! their order (one scale and zero point from the minimum and maximum), so quantizing `K` itself
//! gives the same integers, transposed; and the integer product is exact, so `Q K^T` is the
//! transpose of `K Q^T`. The edit quantizes `K` as it is and computes
//! `Transpose(MatMulInteger(K_q, Transpose(Q_q)))`, with the two zero points swapped along: the
//! transposes left move `Q` (one position per row when decoding) and the scores, not the cache.
//! The scores are the same integers, so everything after them is bit for bit the file's.

use std::collections::{HashMap, HashSet};

use rpaflow_proto::onnx::{AttributeProto, GraphProto, NodeProto, attribute_proto::AttributeType};

use super::default_domain;

/// Rewrites every such score product of `graph` and returns how many. The value_info of the
/// tensors whose shape changes goes.
pub(super) fn untranspose_keys(graph: &mut GraphProto) -> usize {
    let nodes = &graph.node;
    let producer: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        for i in &n.input {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *readers.entry(o.name()).or_default() += 1;
    }
    let taken: HashSet<&str> = producer
        .keys()
        .copied()
        .chain(readers.keys().copied())
        .chain(graph.initializer.iter().map(|t| t.name()))
        .chain(graph.input.iter().map(|i| i.name()))
        .collect();
    let node_of = |name: &str, op: &str| {
        producer
            .get(name)
            .copied()
            .filter(|&p| nodes[p].op_type() == op && default_domain(nodes[p].domain()))
    };
    let read_once = |name: &str| readers.get(name) == Some(&1);

    // Score products found: (the MatMulInteger, the key's Transpose, the key's quantizer, the
    // permutation swapping the last two axes).
    let mut found = Vec::new();
    for (mm, node) in nodes.iter().enumerate() {
        if node.op_type() != "MatMulInteger"
            || !default_domain(node.domain())
            || node.input.len() != 4
            || node.output.len() != 1
        {
            continue;
        }
        let [a, b, a_zero, b_zero] = [0, 1, 2, 3].map(|k| node.input[k].as_str());
        let quantizer = |x: &str, zero: &str| {
            node_of(x, "DynamicQuantizeLinear").filter(|&q| {
                let out = &nodes[q].output;
                out.len() == 3 && out[0] == x && out[2] == zero
            })
        };
        let (Some(qa), Some(qb)) = (quantizer(a, a_zero), quantizer(b, b_zero)) else {
            continue;
        };
        let Some(tb) = node_of(&nodes[qb].input[0], "Transpose") else {
            continue;
        };
        let Some(perm) = last_two_swapped(&nodes[tb]) else {
            continue;
        };
        // `Q` must have the rank the permutation is for: it comes out of a Transpose too in
        // Optimum's graph (heads before positions).
        let q_rank = node_of(&nodes[qa].input[0], "Transpose")
            .and_then(|t| permutation(&nodes[t]))
            .map(|p| p.len());
        let names = [
            format!("{a}.rpaflow_t"),
            format!("{}.rpaflow_t", node.output[0]),
        ];
        if q_rank != Some(perm.len())
            || !read_once(nodes[tb].output[0].as_str())
            || !read_once(b)
            || names.iter().any(|n| taken.contains(n.as_str()))
        {
            continue;
        }
        found.push((mm, tb, qb, perm, names));
    }
    if found.is_empty() {
        return 0;
    }

    let mut stale = HashSet::new();
    let mut dropped = HashSet::new();
    let mut quantize_keys = HashMap::new();
    let mut replace = HashMap::new();
    for (mm, tb, qb, perm, [a_t, scores_t]) in &found {
        let (transpose, product) = (&nodes[*tb], &nodes[*mm]);
        dropped.insert(*tb);
        quantize_keys.insert(*qb, transpose.input[0].clone());
        stale.insert(transpose.output[0].clone());
        stale.insert(product.input[1].clone());
        let [a, b, a_zero, b_zero] = [0, 1, 2, 3].map(|k| product.input[k].clone());
        let scores = product.output[0].clone();
        let product_name = product.name().to_string();
        replace.insert(
            *mm,
            [
                transpose_node(a, a_t.clone(), perm, format!("{product_name}.rpaflow_q_t")),
                NodeProto {
                    input: vec![b, a_t.clone(), b_zero, a_zero],
                    output: vec![scores_t.clone()],
                    name: Some(format!("{product_name}.rpaflow_kq")),
                    op_type: Some("MatMulInteger".into()),
                    ..Default::default()
                },
                transpose_node(
                    scores_t.clone(),
                    scores,
                    perm,
                    format!("{product_name}.rpaflow_scores_t"),
                ),
            ],
        );
    }
    let mut edited = Vec::with_capacity(nodes.len() + 2 * found.len());
    for (i, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        if let Some(nodes) = replace.remove(&i) {
            edited.extend(nodes);
            continue;
        }
        let mut node = node;
        if let Some(keys) = quantize_keys.remove(&i) {
            node.input[0] = keys;
        }
        edited.push(node);
    }
    graph.node = edited;
    graph.value_info.retain(|v| !stale.contains(v.name()));
    found.len()
}

/// The permutation of a Transpose node.
fn permutation(node: &NodeProto) -> Option<&[i64]> {
    let perm = node.attribute.iter().find(|a| a.name() == "perm")?;
    Some(&perm.ints)
}

/// The permutation of a Transpose that swaps the last two axes of a tensor of rank 3 or more and
/// keeps the others.
fn last_two_swapped(node: &NodeProto) -> Option<Vec<i64>> {
    let perm = permutation(node)?;
    let r = perm.len();
    let swapped = r >= 3
        && perm[..r - 2].iter().copied().eq(0..r as i64 - 2)
        && perm[r - 2] == r as i64 - 1
        && perm[r - 1] == r as i64 - 2;
    swapped.then(|| perm.to_vec())
}

fn transpose_node(input: String, output: String, perm: &[i64], name: String) -> NodeProto {
    NodeProto {
        input: vec![input],
        output: vec![output],
        name: Some(name),
        op_type: Some("Transpose".into()),
        attribute: vec![AttributeProto {
            name: Some("perm".into()),
            ints: perm.to_vec(),
            r#type: Some(AttributeType::Ints as i32),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use rpaflow_proto::onnx::ValueInfoProto;

    use super::*;
    use crate::model::graph::tests::node;

    fn transpose(input: &str, output: &str, perm: &[i64]) -> NodeProto {
        transpose_node(input.into(), output.into(), perm, String::new())
    }

    /// One layer's scores as Optimum's int8 GPT-2 has them.
    fn scores_graph() -> GraphProto {
        GraphProto {
            node: vec![
                transpose("q_heads", "q", &[0, 2, 1, 3]),
                node("Concat", &["past_key", "k_new"], &["present_key"]),
                transpose("present_key", "kt", &[0, 1, 3, 2]),
                node("DynamicQuantizeLinear", &["q"], &["q_q", "q_s", "q_z"]),
                node("DynamicQuantizeLinear", &["kt"], &["kt_q", "kt_s", "kt_z"]),
                node("Mul", &["q_s", "kt_s"], &["s"]),
                node("MatMulInteger", &["q_q", "kt_q", "q_z", "kt_z"], &["qk"]),
                node("Cast", &["qk"], &["qk_f"]),
                node("Mul", &["qk_f", "s"], &["scores"]),
            ],
            output: vec![info("present_key"), info("scores")],
            value_info: vec![info("kt"), info("kt_q"), info("qk")],
            ..Default::default()
        }
    }

    fn info(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn ops(graph: &GraphProto) -> Vec<(&str, Vec<&str>, Vec<&str>)> {
        graph
            .node
            .iter()
            .map(|n| {
                (
                    n.op_type(),
                    n.input.iter().map(String::as_str).collect(),
                    n.output.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_key_cache_is_quantized_as_it_is_and_the_operands_swap() {
        let mut graph = scores_graph();
        assert_eq!(untranspose_keys(&mut graph), 1);
        let ops = ops(&graph);
        let expected: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            ("Transpose", vec!["q_heads"], vec!["q"]),
            ("Concat", vec!["past_key", "k_new"], vec!["present_key"]),
            (
                "DynamicQuantizeLinear",
                vec!["q"],
                vec!["q_q", "q_s", "q_z"],
            ),
            (
                "DynamicQuantizeLinear",
                vec!["present_key"],
                vec!["kt_q", "kt_s", "kt_z"],
            ),
            ("Mul", vec!["q_s", "kt_s"], vec!["s"]),
            ("Transpose", vec!["q_q"], vec!["q_q.rpaflow_t"]),
            (
                "MatMulInteger",
                vec!["kt_q", "q_q.rpaflow_t", "kt_z", "q_z"],
                vec!["qk.rpaflow_t"],
            ),
            ("Transpose", vec!["qk.rpaflow_t"], vec!["qk"]),
            ("Cast", vec!["qk"], vec!["qk_f"]),
            ("Mul", vec!["qk_f", "s"], vec!["scores"]),
        ];
        assert_eq!(ops, expected);
        for n in graph
            .node
            .iter()
            .filter(|n| n.op_type() == "Transpose")
            .skip(1)
        {
            assert_eq!(permutation(n), Some(&[0, 1, 3, 2][..]));
        }
        let infos: Vec<&str> = graph.value_info.iter().map(|v| v.name()).collect();
        assert_eq!(infos, ["qk"], "the shapes of the key's tensors changed");
    }

    #[test]
    fn other_products_are_left_alone() {
        let unchanged = |change: fn(&mut GraphProto)| {
            let mut graph = scores_graph();
            change(&mut graph);
            let before = graph.clone();
            untranspose_keys(&mut graph) == 0 && graph == before
        };
        assert!(!unchanged(|_| {}));
        // Another permutation of the keys.
        assert!(unchanged(
            |g| g.node[2] = transpose("present_key", "kt", &[0, 2, 1, 3])
        ));
        // The transposed keys read by another node.
        assert!(unchanged(|g| g.output.push(info("kt"))));
        assert!(unchanged(|g| g.output.push(info("kt_q"))));
        // A zero point that is not the quantizer's.
        assert!(unchanged(|g| g.node[6].input[3] = "z".into()));
        // Q of unknown rank.
        assert!(unchanged(|g| g.node[0].op_type = Some("Identity".into())));
        // A product on constant weights.
        assert!(unchanged(|g| g.node[6].input[1] = "w".into()));
        // rpaflow's names taken.
        assert!(unchanged(|g| g.node.push(node(
            "Relu",
            &["qk.rpaflow_t"],
            &["x"]
        ))));
    }
}
