//! Graph surgery at load time, for the work the engine does not need done.
//!
//! - The LM head computes the logits of each row's last position only. Optimum's export computes
//!   `logits` for every position of its input, `[batch, seq, vocab]`, and the engine reads only the
//!   last position of each row: in a prefill pass that is `seq` times the largest matrix product of
//!   the model (hidden size x vocabulary) for nothing, and a large tensor to write. A `Gather` of
//!   the last position goes in front of the LM head's `MatMul`, and `logits` becomes
//!   `[batch, 1, vocab]`. An int8 LM head (Optimum's dynamic quantization: `DynamicQuantizeLinear`
//!   -> `MatMulInteger` -> `Cast` -> `Mul`) gets its `Gather` between the quantizer and the
//!   `MatMulInteger`, so the activations are still quantized with the scale of every position.
//! - `Identity` nodes that copy a computed tensor to a graph output are dropped, the producer
//!   writing the output itself: the export has one for `logits` and one for every `present`
//!   key/value (a copy of the whole cache on every step).
//!
//! - The int8 attention scores stop transposing the key cache (see [`attention`]).
//!
//! The model is decoded into the `onnx.proto` messages of [`rpaflow_proto::onnx`] (the weights
//! stay in the buffer the file was read into), edited and encoded again. Each row's logits come
//! out of the same `MatMul` kernel applied to the same hidden state, so they are bit for bit those
//! of the unmodified graph (the generation tests compare greedy output with a plain onnxruntime
//! loop over the original file). Anything unexpected (another shape of graph, weights in external
//! files, an old opset) leaves the model, or that part of it, as it is, and the engine reads the
//! logits' real shape either way.

mod attention;

use std::collections::{HashMap, HashSet};

use prost::Message;
use prost::bytes::Bytes;
use rpaflow_proto::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_proto::{DataLocation, DataType},
    type_proto,
};

/// What [`edit`] changed.
#[derive(Debug)]
pub(super) struct Edits {
    /// `Ok` when the LM head computes the last position only, else why not.
    pub last_position: Result<(), String>,
    /// Identity nodes that copied a tensor to a graph output, dropped.
    pub copies_dropped: usize,
    /// `MatMulInteger` nodes: matrix products on int8 weights, from dynamic quantization (Optimum's
    /// ONNX Runtime quantizer, `scripts/quantize-int8.py`); 0 in a float model.
    pub int8_matmuls: usize,
    /// int8 attention score products that no longer transpose the key cache (see [`attention`]).
    pub keys_untransposed: usize,
}

/// The model with `logits` computed for the last position only and copies to the outputs
/// dropped, or why it was left as it is.
pub(super) fn edit(model: Bytes) -> Result<(Vec<u8>, Edits), String> {
    let mut model =
        ModelProto::decode(model).map_err(|e| format!("model.onnx is not an ONNX model: {e}"))?;
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| default_domain(o.domain()))
        .filter_map(|o| o.version)
        .max()
        .ok_or("no opset for the default domain")?;
    if opset < 11 {
        return Err(format!(
            "opset {opset} (Gather needs 11 for negative indices)"
        ));
    }
    let edits = rewrite_graph(graph)?;
    Ok((model.encode_to_vec(), edits))
}

const LOGITS: &str = "logits";
const INDICES: &str = "rpaflow.last_position";
const LAST_HIDDEN: &str = "rpaflow.last_hidden";

fn rewrite_graph(graph: &mut GraphProto) -> Result<Edits, String> {
    let nodes = &graph.node;
    if let Some(n) = nodes
        .iter()
        .find(|n| matches!(n.op_type(), "If" | "Loop" | "Scan"))
    {
        return Err(format!("the graph has a subgraph ({})", n.op_type()));
    }
    let external = Some(DataLocation::External as i32);
    if graph
        .initializer
        .iter()
        .any(|t| t.data_location == external)
    {
        return Err("weights are in external data files".into());
    }
    let initializers: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let outputs: HashSet<&str> = graph.output.iter().map(ValueInfoProto::name).collect();
    let int8_matmuls = nodes
        .iter()
        .filter(|n| n.op_type() == "MatMulInteger" && default_domain(n.domain()))
        .count();
    let logits_rank = graph
        .output
        .iter()
        .rfind(|o| o.name() == LOGITS)
        .and_then(rank);

    // Identity nodes that copy a computed tensor to a graph output (the present key/values, the
    // logits): the producer writes the output itself, and every reader reads it there.
    let produced: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| &n.output)
        .map(String::as_str)
        .collect();
    let mut rename: HashMap<&str, &str> = HashMap::new();
    let mut dropped = HashSet::new();
    for (i, n) in nodes.iter().enumerate() {
        if let ("Identity", [x], [y]) = (n.op_type(), &n.input[..], &n.output[..])
            && default_domain(n.domain())
            && outputs.contains(y.as_str())
            && !outputs.contains(x.as_str())
            && produced.contains(x.as_str())
            && !rename.contains_key(x.as_str())
        {
            rename.insert(x, y);
            dropped.insert(i);
        }
    }
    let renamed = |name: &str| -> String { rename.get(name).copied().unwrap_or(name).to_string() };
    let live = || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
    };
    let producer: HashMap<String, usize> = live()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (renamed(o), i)))
        .collect();
    let mut consumers: HashMap<String, usize> = HashMap::new();
    for (_, n) in live() {
        for i in &n.input {
            *consumers.entry(renamed(i)).or_default() += 1;
        }
    }

    // A tensor of the LM head that the edit reads differently: only its own node may read it.
    let private = |name: &str| consumers.get(name) == Some(&1) && !outputs.contains(name);
    // Optimum's dynamic int8 LM head, from the `Mul` that writes its float output:
    // `Mul(Cast(MatMulInteger(x_q, w_q, x_zero, w_zero)), x_scale * w_scale)`, where
    // `DynamicQuantizeLinear(x)` gives `x_q, x_scale, x_zero` for the whole tensor (one scale,
    // one zero point). The `Gather` then takes the last position of `x_q`: the scale and zero
    // point stay those of every position, as in the file, and each row's integer product is exact,
    // so the logits kept are bit for bit the file's. Returns the `Cast` and the `MatMulInteger`.
    let int8_head = |mul: usize| -> Result<(usize, usize), String> {
        let not_int8 = || format!("`{LOGITS}` comes from a Mul node that is not an int8 LM head");
        let inputs_of =
            |n: usize| -> Vec<String> { nodes[n].input.iter().map(|i| renamed(i)).collect() };
        let produced_by = |name: &str, op: &str| {
            producer
                .get(name)
                .copied()
                .filter(|&p| nodes[p].op_type() == op && default_domain(nodes[p].domain()))
        };
        let factors = inputs_of(mul);
        // Either factor may be the product's: `Mul` commutes.
        let (cast, scale) = [(0, 1), (1, 0)]
            .into_iter()
            .find_map(|(x, s)| {
                let cast = produced_by(&factors[x], "Cast").filter(|&c| {
                    nodes[c].input.len() == 1
                        && produced_by(&inputs_of(c)[0], "MatMulInteger").is_some()
                })?;
                Some((cast, &factors[s]))
            })
            .ok_or_else(not_int8)?;
        let product = renamed(&nodes[cast].input[0]);
        let mm = produced_by(&product, "MatMulInteger").ok_or_else(not_int8)?;
        let mm_inputs = inputs_of(mm);
        if !private(&renamed(&nodes[cast].output[0])) || !private(&product) || mm_inputs.len() != 4
        {
            return Err(not_int8());
        }
        let quantize = produced_by(&mm_inputs[0], "DynamicQuantizeLinear")
            .filter(|&q| nodes[q].output.len() == 3)
            .ok_or_else(not_int8)?;
        let [x_q, x_scale, x_zero] = [0, 1, 2].map(|k| renamed(&nodes[quantize].output[k]));
        // The activation's zero point and scale are the quantizer's (one for the whole tensor), the
        // scale times a constant (the weight's); the weight's zero point is a constant.
        let scale_ok = *scale == x_scale
            || produced_by(scale, "Mul").is_some_and(|m| {
                let factors = inputs_of(m);
                factors.len() == 2
                    && factors.contains(&x_scale)
                    && factors.iter().any(|f| initializers.contains(f.as_str()))
            });
        if mm_inputs[0] != x_q
            || mm_inputs[2] != x_zero
            || !initializers.contains(mm_inputs[3].as_str())
            || !scale_ok
        {
            return Err(not_int8());
        }
        Ok((cast, mm))
    };

    // From `logits` back to the LM head, through element-wise Identity and Cast nodes that
    // nothing else reads.
    let lm_head = || -> Result<(usize, Vec<String>), String> {
        if logits_rank != Some(3) {
            return Err("no `logits` output of rank 3".into());
        }
        let mut chain = Vec::new();
        let mut name = LOGITS.to_string();
        let lm = loop {
            let &i = producer
                .get(&name)
                .ok_or_else(|| format!("nothing produces `{name}`"))?;
            let node = &nodes[i];
            if !default_domain(node.domain()) || node.output.len() != 1 {
                return Err(format!("`{name}` comes from a {} node", node.op_type()));
            }
            match node.op_type() {
                "MatMul" if node.input.len() == 2 => break i,
                "Mul" if node.input.len() == 2 => {
                    let (cast, mm) = int8_head(i)?;
                    chain.extend([i, cast]);
                    break mm;
                }
                "Identity" | "Cast" if node.input.len() == 1 => {
                    chain.push(i);
                    name = renamed(&node.input[0]);
                    if consumers.get(&name) != Some(&1) || outputs.contains(name.as_str()) {
                        return Err(format!("`{name}` is read by more than the logits"));
                    }
                }
                op => return Err(format!("`{name}` comes from a {op} node")),
            }
        };
        // The weight: an initializer, transposed or cast (float16 exports) on the way.
        let weight = renamed(&nodes[lm].input[1]);
        let mut name = weight.clone();
        let mut constant = false;
        // A well-formed graph has no cycles; a malformed one must not loop forever.
        for _ in 0..=nodes.len() {
            if initializers.contains(name.as_str()) {
                constant = true;
                break;
            }
            match producer.get(&name).map(|&p| &nodes[p]) {
                Some(n) if matches!(n.op_type(), "Transpose" | "Cast") && n.input.len() == 1 => {
                    name = renamed(&n.input[0]);
                }
                _ => break,
            }
        }
        if !constant {
            return Err(format!("the LM head's weight `{weight}` is not a constant"));
        }
        let taken = |n: &str| {
            initializers.contains(n) || producer.contains_key(n) || consumers.contains_key(n)
        };
        if taken(INDICES) || taken(LAST_HIDDEN) {
            return Err("the graph already has rpaflow's names".into());
        }
        // Shapes recorded for the tensors between the LM head and the output no longer hold.
        let stale = std::iter::once(lm)
            .chain(chain)
            .map(|i| renamed(&nodes[i].output[0]))
            .filter(|n| n != LOGITS)
            .collect();
        Ok((lm, stale))
    };
    let (lm, mut stale, last_position) = match lm_head() {
        Ok((lm, stale)) => (Some(lm), stale, Ok(())),
        Err(reason) if dropped.is_empty() => return Err(reason),
        Err(reason) => (None, Vec::new(), Err(reason)),
    };
    stale.extend(rename.keys().map(|x| x.to_string()));

    let mut edited = Vec::with_capacity(nodes.len() + 1);
    for (i, node) in live() {
        let mut node = node.clone();
        for name in node.input.iter_mut().chain(&mut node.output) {
            *name = renamed(name);
        }
        if Some(i) == lm {
            let hidden = std::mem::replace(&mut node.input[0], LAST_HIDDEN.into());
            edited.push(gather_node(hidden));
        }
        edited.push(node);
    }
    graph.node = edited;
    graph
        .value_info
        .retain(|v| !stale.iter().any(|s| s == v.name()));
    if lm.is_some() {
        graph.initializer.push(indices_tensor());
    }
    let copies_dropped = dropped.len();
    let keys_untransposed = attention::untranspose_keys(graph);
    Ok(Edits {
        last_position,
        copies_dropped,
        int8_matmuls,
        keys_untransposed,
    })
}

/// `Gather(hidden, [-1], axis = 1)`: `[batch, seq, hidden]` to `[batch, 1, hidden]`.
fn gather_node(hidden: String) -> NodeProto {
    NodeProto {
        input: vec![hidden, INDICES.into()],
        output: vec![LAST_HIDDEN.into()],
        name: Some(INDICES.into()),
        op_type: Some("Gather".into()),
        attribute: vec![AttributeProto {
            name: Some("axis".into()),
            i: Some(1),
            r#type: Some(AttributeType::Int as i32),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The int64 tensor `[-1]`.
fn indices_tensor() -> TensorProto {
    TensorProto {
        dims: vec![1],
        data_type: Some(DataType::Int64 as i32),
        name: Some(INDICES.into()),
        raw_data: Some(Bytes::copy_from_slice(&(-1i64).to_le_bytes())),
        ..Default::default()
    }
}

/// Whether an operator or opset domain is the default, `ai.onnx`.
fn default_domain(domain: &str) -> bool {
    matches!(domain, "" | "ai.onnx")
}

/// The rank of a tensor value with a shape.
fn rank(info: &ValueInfoProto) -> Option<usize> {
    match info.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(tensor) => Some(tensor.shape.as_ref()?.dim.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rpaflow_proto::onnx::{OperatorSetIdProto, TensorShapeProto, TypeProto};

    use super::*;

    /// A node of `op` for a test graph (also the attention edit's tests).
    pub(super) fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            op_type: Some(op.into()),
            ..Default::default()
        }
    }

    fn value(name: &str, rank: usize) -> ValueInfoProto {
        let tensor = type_proto::Tensor {
            shape: Some(TensorShapeProto {
                dim: vec![Default::default(); rank],
            }),
            ..Default::default()
        };
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(tensor)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn initializer(name: &str) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn encode(graph: GraphProto, opset: i64) -> Bytes {
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                version: Some(opset),
                ..Default::default()
            }],
            graph: Some(graph),
            ..Default::default()
        };
        model.encode_to_vec().into()
    }

    /// ln_f -> MatMul(transpose(wte)) -> `last` -> logits, as Optimum exports GPT-2 (`last` is
    /// Identity; a float16 export has Cast there, and wte cast from float16).
    fn lm_graph(last: &str) -> GraphProto {
        GraphProto {
            node: vec![
                node("LayerNormalization", &["h", "g", "b"], &["ln"]),
                node("Cast", &["wte16"], &["wte"]),
                node("Transpose", &["wte"], &["wt"]),
                node("MatMul", &["ln", "wt"], &["mm"]),
                node(last, &["mm"], &["logits"]),
            ],
            initializer: vec![initializer("wte16")],
            output: vec![value("logits", 3)],
            value_info: vec![value("mm", 3)],
            ..Default::default()
        }
    }

    fn model(last: &str, opset: i64) -> Bytes {
        encode(lm_graph(last), opset)
    }

    /// Op type, inputs and outputs of a node.
    type NodeSummary = (String, Vec<String>, Vec<String>);

    /// Every node, and how many value_info entries are left.
    fn summary(model: &[u8]) -> (Vec<NodeSummary>, usize) {
        let graph = ModelProto::decode(model)
            .ok()
            .and_then(|m| m.graph)
            .unwrap_or_default();
        let nodes = graph
            .node
            .into_iter()
            .map(|n| (n.op_type().to_string(), n.input, n.output))
            .collect();
        (nodes, graph.value_info.len())
    }

    #[test]
    fn the_lm_head_reads_the_last_position_and_writes_logits() {
        let Ok((edited, edits)) = edit(model("Identity", 17)) else {
            panic!("the graph should be edited");
        };
        assert_eq!(edits.last_position, Ok(()));
        assert_eq!(edits.copies_dropped, 1);
        let (nodes, infos) = summary(&edited);
        let ops: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            ops,
            [
                "LayerNormalization",
                "Cast",
                "Transpose",
                "Gather",
                "MatMul"
            ]
        );
        assert_eq!(nodes[3].1, [String::from("ln"), INDICES.into()]);
        assert_eq!(nodes[4].1, [String::from(LAST_HIDDEN), "wt".into()]);
        assert_eq!(nodes[4].2, [String::from(LOGITS)]);
        assert_eq!(infos, 0, "the stale shape of `mm` is gone");
        let graph = ModelProto::decode(&edited[..]).ok().and_then(|m| m.graph);
        let indices = graph.and_then(|g| g.initializer.into_iter().find(|t| t.name() == INDICES));
        assert_eq!(
            indices.and_then(|t| t.raw_data),
            Some(Bytes::from_static(&[0xff; 8])),
            "the index is -1"
        );
    }

    #[test]
    fn a_cast_after_the_lm_head_stays() {
        let Ok((edited, edits)) = edit(model("Cast", 17)) else {
            panic!("the graph should be edited");
        };
        assert_eq!(edits.last_position, Ok(()));
        let (nodes, _) = summary(&edited);
        let ops: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            ops,
            [
                "LayerNormalization",
                "Cast",
                "Transpose",
                "Gather",
                "MatMul",
                "Cast"
            ]
        );
        assert_eq!(nodes[4].2, [String::from("mm")]);
    }

    /// Optimum's dynamic int8 LM head: the final layer norm quantized for the whole tensor,
    /// `MatMulInteger` on the int8 (transposed) embedding, and the product scaled back to float.
    fn int8_graph() -> GraphProto {
        GraphProto {
            node: vec![
                node("LayerNormalization", &["h", "g", "b"], &["ln"]),
                node("DynamicQuantizeLinear", &["ln"], &["ln_q", "ln_s", "ln_z"]),
                node("Transpose", &["wte_q"], &["wt_q"]),
                node("MatMulInteger", &["ln_q", "wt_q", "ln_z", "wte_z"], &["mm"]),
                node("Cast", &["mm"], &["mm_f"]),
                node("Mul", &["ln_s", "wte_s"], &["scale"]),
                node("Mul", &["mm_f", "scale"], &["deq"]),
                node("Identity", &["deq"], &["logits"]),
            ],
            initializer: vec![
                initializer("wte_q"),
                initializer("wte_z"),
                initializer("wte_s"),
            ],
            output: vec![value("logits", 3)],
            value_info: vec![value("mm", 3), value("mm_f", 3), value("ln_q", 3)],
            ..Default::default()
        }
    }

    #[test]
    fn the_int8_lm_head_reads_the_quantized_last_position() {
        let Ok((edited, edits)) = edit(encode(int8_graph(), 17)) else {
            panic!("the graph should be edited");
        };
        assert_eq!(edits.last_position, Ok(()));
        assert_eq!((edits.copies_dropped, edits.int8_matmuls), (1, 1));
        let (nodes, infos) = summary(&edited);
        let ops: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            ops,
            [
                "LayerNormalization",
                "DynamicQuantizeLinear",
                "Transpose",
                "Gather",
                "MatMulInteger",
                "Cast",
                "Mul",
                "Mul"
            ]
        );
        // The quantizer still sees every position: its scale and zero point are the file's.
        assert_eq!(nodes[1].1, [String::from("ln")]);
        assert_eq!(nodes[3].1, [String::from("ln_q"), INDICES.into()]);
        assert_eq!(
            nodes[4].1,
            [
                String::from(LAST_HIDDEN),
                "wt_q".into(),
                "ln_z".into(),
                "wte_z".into()
            ]
        );
        assert_eq!(nodes[7].1, [String::from("mm_f"), "scale".into()]);
        assert_eq!(nodes[7].2, [String::from(LOGITS)]);
        assert_eq!(
            infos, 1,
            "the stale shapes of `mm` and `mm_f` are gone, `ln_q` stays"
        );
    }

    #[test]
    fn an_int8_lm_head_of_another_shape_is_left_alone() {
        let why = |change: fn(&mut GraphProto)| {
            let mut graph = int8_graph();
            change(&mut graph);
            match edit(encode(graph, 17)) {
                Ok((_, edits)) => edits.last_position.err(),
                Err(reason) => Some(reason),
            }
        };
        assert_eq!(why(|_| {}), None);
        // The factors of the last Mul in the other order.
        assert_eq!(why(|g| g.node[6].input.reverse()), None);
        let not_int8 = Some(String::from(
            "`logits` comes from a Mul node that is not an int8 LM head",
        ));
        // A scale that is not the quantizer's (it could differ per position).
        assert_eq!(why(|g| g.node[5].input[0] = "h".into()), not_int8);
        // A zero point that is not the quantizer's.
        assert_eq!(why(|g| g.node[3].input[2] = "h".into()), not_int8);
        // A computed weight zero point.
        assert_eq!(why(|g| g.node[3].input[3] = "ln_s".into()), not_int8);
        // The integer product read by another node as well.
        assert_eq!(why(|g| g.output.push(value("mm", 3))), not_int8);
        // A float scale on a float product: no MatMulInteger.
        assert_eq!(why(|g| g.node[4].input[0] = "h".into()), not_int8);
        // The weight is not a constant.
        assert_eq!(
            why(|g| g.initializer.retain(|t| t.name() != "wte_q")).as_deref(),
            Some("the LM head's weight `wt_q` is not a constant")
        );
    }

    #[test]
    fn copies_to_outputs_are_dropped_and_their_readers_follow() {
        // concat -> Identity -> present, and concat read by attention as well.
        let graph = GraphProto {
            node: vec![
                node("Concat", &["past", "new"], &["c"]),
                node("MatMul", &["q", "c"], &["att"]),
                node("Identity", &["c"], &["present"]),
            ],
            output: vec![value("present", 4), value("att", 4)],
            ..Default::default()
        };
        let Ok((edited, edits)) = edit(encode(graph, 17)) else {
            panic!("the copy should go");
        };
        assert!(edits.last_position.is_err(), "there is no LM head here");
        assert_eq!(edits.copies_dropped, 1);
        let (nodes, _) = summary(&edited);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].2, [String::from("present")]);
        assert_eq!(nodes[1].1, [String::from("q"), "present".into()]);
    }

    #[test]
    fn unexpected_graphs_are_left_alone() {
        assert!(edit(model("Softmax", 17)).is_err());
        assert!(edit(model("Identity", 9)).is_err());
        assert!(edit(Bytes::from_static(b"\xff\xff\xff")).is_err());
        assert!(edit(Bytes::new()).is_err());
    }

    #[test]
    fn each_fallback_says_why() {
        let why = |change: fn(&mut GraphProto)| {
            let mut graph = lm_graph("Cast");
            change(&mut graph);
            match edit(encode(graph, 17)) {
                Ok((_, edits)) => edits.last_position.err(),
                Err(reason) => Some(reason),
            }
        };
        assert_eq!(why(|_| {}), None);
        let external = |g: &mut GraphProto| {
            g.initializer[0].data_location = Some(DataLocation::External as i32);
        };
        assert_eq!(
            why(external).as_deref(),
            Some("weights are in external data files")
        );
        let subgraph = |g: &mut GraphProto| g.node.push(node("If", &["c"], &["x"]));
        assert_eq!(
            why(subgraph).as_deref(),
            Some("the graph has a subgraph (If)")
        );
        let computed = |g: &mut GraphProto| g.initializer.clear();
        assert_eq!(
            why(computed).as_deref(),
            Some("the LM head's weight `wt` is not a constant")
        );
        let taken = |g: &mut GraphProto| g.initializer.push(initializer(INDICES));
        assert_eq!(
            why(taken).as_deref(),
            Some("the graph already has rpaflow's names")
        );
        let shared = |g: &mut GraphProto| g.output.push(value("mm", 3));
        assert_eq!(
            why(shared).as_deref(),
            Some("`mm` is read by more than the logits")
        );
    }

    #[test]
    fn the_rest_of_the_model_is_kept() {
        let mut graph = lm_graph("Identity");
        graph.initializer[0].raw_data = Some(Bytes::from_static(b"weights"));
        graph.value_info.push(value("ln", 3));
        let mut model = ModelProto::decode(encode(graph, 17)).unwrap_or_default();
        model.producer_name = Some("optimum".into());
        let Ok((edited, _)) = edit(model.encode_to_vec().into()) else {
            panic!("the graph should be edited");
        };
        let edited = ModelProto::decode(&edited[..]).unwrap_or_default();
        assert_eq!(edited.producer_name(), "optimum");
        assert_eq!(edited.opset_import, model.opset_import);
        let graph = edited.graph.unwrap_or_default();
        assert_eq!(
            graph.initializer[0].raw_data.as_deref(),
            Some(&b"weights"[..])
        );
        let infos: Vec<&str> = graph.value_info.iter().map(|v| v.name()).collect();
        assert_eq!(infos, ["ln"], "only the stale shapes go");
    }
}
