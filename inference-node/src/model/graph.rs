//! Graph surgery at load time, for the work the engine does not need done.
//!
//! - The LM head computes the logits of each row's last position only. Optimum's export computes
//!   `logits` for every position of its input, `[batch, seq, vocab]`, and the engine reads only the
//!   last position of each row: in a prefill pass that is `seq` times the largest matrix product of
//!   the model (hidden size x vocabulary) for nothing, and a large tensor to write. A `Gather` of
//!   the last position goes in front of the LM head's `MatMul`, and `logits` becomes
//!   `[batch, 1, vocab]`.
//! - `Identity` nodes that copy a computed tensor to a graph output are dropped, the producer
//!   writing the output itself: the export has one for `logits` and one for every `present`
//!   key/value (a copy of the whole cache on every step).
//!
//! The graph is rewritten on the protobuf wire format as it is loaded (no ONNX library needed).
//! Each row's logits come out of the same `MatMul` kernel applied to the same hidden state, so they
//! are bit for bit those of the unmodified graph (the generation tests compare greedy output with a
//! plain onnxruntime loop over the original file). Anything unexpected (another shape of graph,
//! weights in external files, an old opset) leaves the model, or that part of it, as it is, and
//! the engine reads the logits' real shape either way.

use std::collections::{HashMap, HashSet};

/// What [`edit`] changed.
#[derive(Debug)]
pub(super) struct Edits {
    /// `Ok` when the LM head computes the last position only, else why not.
    pub last_position: Result<(), String>,
    /// Identity nodes that copied a tensor to a graph output, dropped.
    pub copies_dropped: usize,
}

/// The model with `logits` computed for the last position only and copies to the outputs
/// dropped, or why it was left as it is.
pub(super) fn edit(model: &[u8]) -> Result<(Vec<u8>, Edits), String> {
    let top = fields(model).ok_or("model.onnx is not a protobuf message")?;
    let graphs: Vec<&Field<'_>> = top
        .iter()
        .filter(|f| f.number == MODEL_GRAPH && f.wire == LEN)
        .collect();
    let [graph_field] = graphs[..] else {
        return Err("the model has no single graph".into());
    };
    let opset = top
        .iter()
        .filter(|f| f.number == MODEL_OPSET_IMPORT && f.wire == LEN)
        .filter_map(|f| default_opset(f.payload))
        .max()
        .ok_or("no opset for the default domain")?;
    if opset < 11 {
        return Err(format!(
            "opset {opset} (Gather needs 11 for negative indices)"
        ));
    }
    let (graph, edits) = rewrite_graph(graph_field.payload)?;
    let mut out = Vec::with_capacity(model.len() + 256);
    for f in &top {
        if f.number == MODEL_GRAPH && f.wire == LEN {
            put_len(&mut out, MODEL_GRAPH, &graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok((out, edits))
}

const LOGITS: &str = "logits";
const INDICES: &str = "rpaflow.last_position";
const LAST_HIDDEN: &str = "rpaflow.last_hidden";

// Field numbers of onnx.proto.
const MODEL_GRAPH: u32 = 7;
const MODEL_OPSET_IMPORT: u32 = 8;
const OPSET_DOMAIN: u32 = 1;
const OPSET_VERSION: u32 = 2;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_OUTPUT: u32 = 12;
const GRAPH_VALUE_INFO: u32 = 13;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_NAME: u32 = 3;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const NODE_DOMAIN: u32 = 7;
const ATTRIBUTE_NAME: u32 = 1;
const ATTRIBUTE_I: u32 = 3;
const ATTRIBUTE_TYPE: u32 = 20;
const ATTRIBUTE_TYPE_INT: u64 = 2;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_DATA_TYPE_INT64: u64 = 7;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_DATA_LOCATION: u32 = 14;
const TENSOR_DATA_LOCATION_EXTERNAL: u64 = 1;
const VALUE_INFO_NAME: u32 = 1;
const VALUE_INFO_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TENSOR_TYPE_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;

// Wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;

fn rewrite_graph(graph: &[u8]) -> Result<(Vec<u8>, Edits), String> {
    let parts = fields(graph).ok_or("the graph is not a protobuf message")?;
    let mut nodes = Vec::new();
    let mut initializers = HashSet::new();
    let mut logits_rank = None;
    let mut outputs = HashSet::new();
    for (index, f) in parts.iter().enumerate() {
        match (f.number, f.wire) {
            (GRAPH_NODE, LEN) => {
                let node =
                    Node::parse(index, f.payload).ok_or("a node is not a protobuf message")?;
                if matches!(node.op_type, "If" | "Loop" | "Scan") {
                    return Err(format!("the graph has a subgraph ({})", node.op_type));
                }
                nodes.push(node);
            }
            (GRAPH_INITIALIZER, LEN) => {
                let tensor = fields(f.payload).ok_or("an initializer is not a protobuf message")?;
                let external = tensor.iter().any(|t| {
                    t.number == TENSOR_DATA_LOCATION
                        && t.wire == VARINT
                        && t.value == TENSOR_DATA_LOCATION_EXTERNAL
                });
                if external {
                    return Err("weights are in external data files".into());
                }
                if let Some(name) = tensor.iter().find(|t| t.number == TENSOR_NAME) {
                    initializers.insert(name.string()?);
                }
            }
            (GRAPH_OUTPUT, LEN) => {
                let info = fields(f.payload).ok_or("an output is not a protobuf message")?;
                let name = info
                    .iter()
                    .find(|t| t.number == VALUE_INFO_NAME)
                    .map(Field::string)
                    .transpose()?
                    .unwrap_or_default();
                if name == LOGITS {
                    logits_rank = info
                        .iter()
                        .find(|t| t.number == VALUE_INFO_TYPE)
                        .and_then(|t| rank(t.payload));
                }
                outputs.insert(name);
            }
            _ => {}
        }
    }
    let default_domain = |n: &Node<'_>| matches!(n.domain, "" | "ai.onnx");

    // Identity nodes that copy a computed tensor to a graph output (the present key/values, the
    // logits): the producer writes the output itself, and every reader reads it there.
    let produced: HashSet<&str> = nodes.iter().flat_map(|n| n.outputs.clone()).collect();
    let mut rename: HashMap<&str, &str> = HashMap::new();
    let mut dropped = HashSet::new();
    for (i, n) in nodes.iter().enumerate() {
        if let ("Identity", &[x], &[y]) = (n.op_type, &n.inputs[..], &n.outputs[..])
            && default_domain(n)
            && outputs.contains(y)
            && !outputs.contains(x)
            && produced.contains(x)
            && !rename.contains_key(x)
        {
            rename.insert(x, y);
            dropped.insert(i);
        }
    }
    let renamed = |name: &'_ str| -> String {
        rename
            .get(name)
            .map_or_else(|| name.to_string(), |y| y.to_string())
    };
    let live = || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
    };
    let producer: HashMap<String, usize> = live()
        .flat_map(|(i, n)| n.outputs.iter().map(move |&o| (renamed(o), i)))
        .collect();
    let mut consumers: HashMap<String, usize> = HashMap::new();
    for (_, n) in live() {
        for &i in &n.inputs {
            *consumers.entry(renamed(i)).or_default() += 1;
        }
    }

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
            if !default_domain(node) || node.outputs.len() != 1 {
                return Err(format!("`{name}` comes from a {} node", node.op_type));
            }
            match node.op_type {
                "MatMul" if node.inputs.len() == 2 => break i,
                "Identity" | "Cast" if node.inputs.len() == 1 => {
                    chain.push(i);
                    name = renamed(node.inputs[0]);
                    if consumers.get(&name) != Some(&1) || outputs.contains(name.as_str()) {
                        return Err(format!("`{name}` is read by more than the logits"));
                    }
                }
                op => return Err(format!("`{name}` comes from a {op} node")),
            }
        };
        // The weight: an initializer, transposed or cast (float16 exports) on the way.
        let weight = renamed(nodes[lm].inputs[1]);
        let mut name = weight.clone();
        let mut constant = false;
        // A well-formed graph has no cycles; a malformed one must not loop forever.
        for _ in 0..=nodes.len() {
            if initializers.contains(name.as_str()) {
                constant = true;
                break;
            }
            match producer.get(&name).map(|&p| &nodes[p]) {
                Some(n) if matches!(n.op_type, "Transpose" | "Cast") && n.inputs.len() == 1 => {
                    name = renamed(n.inputs[0]);
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
            .map(|i| renamed(nodes[i].outputs[0]))
            .filter(|n| n != LOGITS)
            .collect();
        Ok((lm, stale))
    };
    let (lm, mut stale, why_not) = match lm_head() {
        Ok((lm, stale)) => (Some(lm), stale, None),
        Err(reason) => (None, Vec::new(), Some(reason)),
    };
    if lm.is_none() && dropped.is_empty() {
        return Err(why_not.unwrap_or_default());
    }
    stale.extend(rename.keys().map(|x| x.to_string()));

    let node_at: HashMap<usize, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.field, i))
        .collect();
    let mut out = Vec::with_capacity(graph.len() + 256);
    for (index, f) in parts.iter().enumerate() {
        if let Some(&i) = node_at.get(&index) {
            if dropped.contains(&i) {
                continue;
            }
            let mut first_input = None;
            if Some(i) == lm {
                put_len(
                    &mut out,
                    GRAPH_NODE,
                    &gather_node(&renamed(nodes[i].inputs[0])),
                );
                first_input = Some(LAST_HIDDEN);
            }
            put_len(
                &mut out,
                GRAPH_NODE,
                &Node::encode(f.payload, first_input, renamed)?,
            );
            continue;
        }
        if f.number == GRAPH_VALUE_INFO && f.wire == LEN {
            let name = fields(f.payload)
                .and_then(|info| {
                    info.iter()
                        .find(|t| t.number == VALUE_INFO_NAME)
                        .map(|t| t.payload)
                })
                .unwrap_or_default();
            if stale.iter().any(|s| s.as_bytes() == name) {
                continue;
            }
        }
        out.extend_from_slice(f.raw);
    }
    if lm.is_some() {
        put_len(&mut out, GRAPH_INITIALIZER, &indices_tensor());
    }
    let edits = Edits {
        last_position: why_not.map_or(Ok(()), Err),
        copies_dropped: dropped.len(),
    };
    Ok((out, edits))
}

/// `Gather(hidden, [-1], axis = 1)`: `[batch, seq, hidden]` to `[batch, 1, hidden]`.
fn gather_node(hidden: &str) -> Vec<u8> {
    let mut axis = Vec::new();
    put_len(&mut axis, ATTRIBUTE_NAME, b"axis");
    put_varint_field(&mut axis, ATTRIBUTE_I, 1);
    put_varint_field(&mut axis, ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INT);
    let mut node = Vec::new();
    put_len(&mut node, NODE_INPUT, hidden.as_bytes());
    put_len(&mut node, NODE_INPUT, INDICES.as_bytes());
    put_len(&mut node, NODE_OUTPUT, LAST_HIDDEN.as_bytes());
    put_len(&mut node, NODE_NAME, INDICES.as_bytes());
    put_len(&mut node, NODE_OP_TYPE, b"Gather");
    put_len(&mut node, NODE_ATTRIBUTE, &axis);
    node
}

/// The int64 tensor `[-1]`.
fn indices_tensor() -> Vec<u8> {
    let mut tensor = Vec::new();
    put_varint_field(&mut tensor, TENSOR_DIMS, 1);
    put_varint_field(&mut tensor, TENSOR_DATA_TYPE, TENSOR_DATA_TYPE_INT64);
    put_len(&mut tensor, TENSOR_NAME, INDICES.as_bytes());
    put_len(&mut tensor, TENSOR_RAW_DATA, &(-1i64).to_le_bytes());
    tensor
}

/// The version of the default domain in an `OperatorSetIdProto`.
fn default_opset(payload: &[u8]) -> Option<u64> {
    let parts = fields(payload)?;
    let domain = parts
        .iter()
        .find(|f| f.number == OPSET_DOMAIN && f.wire == LEN)
        .map_or(&b""[..], |f| f.payload);
    if !(domain.is_empty() || domain == b"ai.onnx") {
        return None;
    }
    parts
        .iter()
        .find(|f| f.number == OPSET_VERSION && f.wire == VARINT)
        .map(|f| f.value)
}

/// The rank of a `TypeProto` holding a tensor with a shape.
fn rank(type_proto: &[u8]) -> Option<usize> {
    let tensor = fields(type_proto)?
        .into_iter()
        .find(|f| f.number == TYPE_TENSOR && f.wire == LEN)?;
    let shape = fields(tensor.payload)?
        .into_iter()
        .find(|f| f.number == TENSOR_TYPE_SHAPE && f.wire == LEN)?;
    Some(
        fields(shape.payload)?
            .iter()
            .filter(|f| f.number == SHAPE_DIM)
            .count(),
    )
}

/// A node of the graph: what surgery needs to know of it.
#[derive(Debug)]
struct Node<'a> {
    /// Its index among the graph's fields.
    field: usize,
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
    op_type: &'a str,
    domain: &'a str,
}

impl<'a> Node<'a> {
    fn parse(field: usize, payload: &'a [u8]) -> Option<Node<'a>> {
        let mut node = Node {
            field,
            inputs: Vec::new(),
            outputs: Vec::new(),
            op_type: "",
            domain: "",
        };
        for f in fields(payload)? {
            let text = || std::str::from_utf8(f.payload).ok();
            match (f.number, f.wire) {
                (NODE_INPUT, LEN) => node.inputs.push(text()?),
                (NODE_OUTPUT, LEN) => node.outputs.push(text()?),
                (NODE_OP_TYPE, LEN) => node.op_type = text()?,
                (NODE_DOMAIN, LEN) => node.domain = text()?,
                _ => {}
            }
        }
        Some(node)
    }

    /// A node's message with its inputs and outputs renamed, and its first input replaced if
    /// `first_input` is given.
    fn encode(
        payload: &[u8],
        first_input: Option<&str>,
        renamed: impl Fn(&str) -> String,
    ) -> Result<Vec<u8>, String> {
        let parts = fields(payload).ok_or("a node is not a protobuf message")?;
        let mut replace = first_input;
        let mut out = Vec::with_capacity(payload.len() + 32);
        for f in &parts {
            match (f.number, f.wire) {
                (NODE_INPUT | NODE_OUTPUT, LEN) => {
                    let first = if f.number == NODE_INPUT {
                        replace.take()
                    } else {
                        None
                    };
                    let name = match first {
                        Some(name) => name.to_string(),
                        None => renamed(f.string()?),
                    };
                    put_len(&mut out, f.number, name.as_bytes());
                }
                _ => out.extend_from_slice(f.raw),
            }
        }
        Ok(out)
    }
}

/// One field of a protobuf message.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    number: u32,
    wire: u8,
    /// The whole field, key included, as it is in the message.
    raw: &'a [u8],
    /// The bytes of a length-delimited field.
    payload: &'a [u8],
    /// The value of a varint field.
    value: u64,
}

impl<'a> Field<'a> {
    fn string(&self) -> Result<&'a str, String> {
        std::str::from_utf8(self.payload).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// The fields of a protobuf message, in order; `None` if it is not one.
fn fields(buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3).ok()?;
        let wire = (key & 7) as u8;
        let (mut payload, mut value): (&[u8], u64) = (&[], 0);
        match wire {
            VARINT => value = varint(buf, &mut pos)?,
            1 => pos = pos.checked_add(8)?,
            LEN => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                payload = buf.get(pos..end)?;
                pos = end;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
        out.push(Field {
            number,
            wire,
            raw: buf.get(start..pos)?,
            payload,
            value,
        });
    }
    Some(out)
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    put_varint(out, (u64::from(number) << 3) | u64::from(VARINT));
    put_varint(out, value);
}

fn put_len(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | u64::from(LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            put_len(&mut n, NODE_INPUT, i.as_bytes());
        }
        for o in outputs {
            put_len(&mut n, NODE_OUTPUT, o.as_bytes());
        }
        put_len(&mut n, NODE_OP_TYPE, op.as_bytes());
        n
    }

    fn output(name: &str, rank: usize) -> Vec<u8> {
        let mut shape = Vec::new();
        for _ in 0..rank {
            put_len(&mut shape, SHAPE_DIM, &[]);
        }
        let mut tensor = Vec::new();
        put_len(&mut tensor, TENSOR_TYPE_SHAPE, &shape);
        let mut ty = Vec::new();
        put_len(&mut ty, TYPE_TENSOR, &tensor);
        let mut info = Vec::new();
        put_len(&mut info, VALUE_INFO_NAME, name.as_bytes());
        put_len(&mut info, VALUE_INFO_TYPE, &ty);
        info
    }

    fn initializer(name: &str) -> Vec<u8> {
        let mut t = Vec::new();
        put_len(&mut t, TENSOR_NAME, name.as_bytes());
        t
    }

    /// ln_f -> MatMul(transpose(wte)) -> `last` -> logits, as Optimum exports GPT-2 (`last` is
    /// Identity; a float16 export has Cast there, and wte cast from float16).
    fn model(last: &str, opset: u64) -> Vec<u8> {
        let mut graph = Vec::new();
        put_len(
            &mut graph,
            GRAPH_NODE,
            &node("LayerNormalization", &["h", "g", "b"], &["ln"]),
        );
        put_len(&mut graph, GRAPH_NODE, &node("Cast", &["wte16"], &["wte"]));
        put_len(
            &mut graph,
            GRAPH_NODE,
            &node("Transpose", &["wte"], &["wt"]),
        );
        put_len(
            &mut graph,
            GRAPH_NODE,
            &node("MatMul", &["ln", "wt"], &["mm"]),
        );
        put_len(&mut graph, GRAPH_NODE, &node(last, &["mm"], &["logits"]));
        put_len(&mut graph, GRAPH_INITIALIZER, &initializer("wte16"));
        put_len(&mut graph, GRAPH_OUTPUT, &output("logits", 3));
        put_len(&mut graph, GRAPH_VALUE_INFO, &output("mm", 3));
        let mut opset_id = Vec::new();
        put_varint_field(&mut opset_id, OPSET_VERSION, opset);
        let mut m = Vec::new();
        put_varint_field(&mut m, 1, 8);
        put_len(&mut m, MODEL_GRAPH, &graph);
        put_len(&mut m, MODEL_OPSET_IMPORT, &opset_id);
        m
    }

    /// Op type, inputs and outputs of a node.
    type NodeSummary = (String, Vec<String>, Vec<String>);

    /// Every node, and how many value_info entries are left.
    fn summary(model: &[u8]) -> (Vec<NodeSummary>, usize) {
        let top = fields(model).unwrap_or_default();
        let graph = top
            .iter()
            .find(|f| f.number == MODEL_GRAPH)
            .map(|f| f.payload);
        let graph = fields(graph.unwrap_or_default()).unwrap_or_default();
        let nodes = graph
            .iter()
            .filter(|f| f.number == GRAPH_NODE)
            .filter_map(|f| Node::parse(0, f.payload))
            .map(|n| {
                let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                (n.op_type.to_string(), s(&n.inputs), s(&n.outputs))
            })
            .collect();
        let infos = graph
            .iter()
            .filter(|f| f.number == GRAPH_VALUE_INFO)
            .count();
        (nodes, infos)
    }

    #[test]
    fn the_lm_head_reads_the_last_position_and_writes_logits() {
        let Ok((edited, edits)) = edit(&model("Identity", 17)) else {
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
    }

    #[test]
    fn a_cast_after_the_lm_head_stays() {
        let Ok((edited, edits)) = edit(&model("Cast", 17)) else {
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

    #[test]
    fn copies_to_outputs_are_dropped_and_their_readers_follow() {
        // concat -> Identity -> present, and concat read by attention as well.
        let mut graph = Vec::new();
        put_len(
            &mut graph,
            GRAPH_NODE,
            &node("Concat", &["past", "new"], &["c"]),
        );
        put_len(
            &mut graph,
            GRAPH_NODE,
            &node("MatMul", &["q", "c"], &["att"]),
        );
        put_len(
            &mut graph,
            GRAPH_NODE,
            &node("Identity", &["c"], &["present"]),
        );
        put_len(&mut graph, GRAPH_OUTPUT, &output("present", 4));
        put_len(&mut graph, GRAPH_OUTPUT, &output("att", 4));
        let mut opset_id = Vec::new();
        put_varint_field(&mut opset_id, OPSET_VERSION, 17);
        let mut m = Vec::new();
        put_len(&mut m, MODEL_GRAPH, &graph);
        put_len(&mut m, MODEL_OPSET_IMPORT, &opset_id);
        let Ok((edited, edits)) = edit(&m) else {
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
        assert!(edit(&model("Softmax", 17)).is_err());
        assert!(edit(&model("Identity", 9)).is_err());
        assert!(edit(b"\xff\xff\xff").is_err());
        assert!(edit(&[]).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(varint(&buf, &mut pos), Some(v));
            assert_eq!(pos, buf.len());
        }
    }
}
