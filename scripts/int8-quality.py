#!/usr/bin/env python3
"""Compares an int8 GPT-2 with the float32 model it was quantized from, on onnxruntime's CPU
provider, one prompt at a time, no padding (the plain loop of inference-node/tests/reference.py):

- greedy agreement over the fixed prompts of scripts/int8-quality/prompts.txt: for each prompt, how
  many of the first --max-new-tokens greedy tokens agree before the first difference; how many
  prompts agree fully, the mean agreeing prefix, and how many agree on the first token;
- perplexity of each model on the held-out paragraph scripts/int8-quality/heldout.txt (one pass
  over the whole text, or over windows of the model's context), and how often the two models'
  most likely next token is the same on it (teacher forcing).

Usage: int8-quality.py --float32 DIR --int8 DIR [--max-new-tokens 32] [--json OUT]
Prints a summary, and a `INT8_QUALITY {json}` line.
"""

import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load_reference():
    """The independent tokenizer and greedy loop of the node's generation tests."""
    path = os.path.join(ROOT, "inference-node", "tests", "reference.py")
    spec = importlib.util.spec_from_file_location("reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_file(model_dir):
    for name in ("model.onnx", "model_quantized.onnx"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            return path
    sys.exit(f"int8-quality: {model_dir} has no model.onnx or model_quantized.onnx")


class Model:
    def __init__(self, model_dir, threads):
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            self.config = json.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.path = model_file(model_dir)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def logits(self, ids):
        """The logits of every position of `ids`, one pass from an empty cache: [len, vocab]."""
        heads, layers = self.config["n_head"], self.config["n_layer"]
        head_dim = self.config["n_embd"] // heads
        feeds = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None, :],
        }
        for i in range(layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, heads, 0, head_dim), np.float32)
        return self.session.run(["logits"], feeds)[0][0].astype(np.float64)


def nll(logits, targets):
    """Negative log-likelihood of each target under each row of logits."""
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return log_z - logits[np.arange(len(targets)), targets]


def perplexity(model, ids, window):
    """Perplexity over `ids`, in windows of at most `window` tokens (no overlap), and the argmax of
    every position that has a next token."""
    losses, argmax = [], []
    for start in range(0, len(ids) - 1, window - 1):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        logits = model.logits(chunk)[:-1]
        losses.extend(nll(logits, np.array(chunk[1:])))
        argmax.extend(logits.argmax(axis=1))
    return float(np.exp(np.mean(losses))), argmax


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--float32", required=True, help="the float32 model directory")
    ap.add_argument("--int8", required=True, help="the quantized model directory")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", default=os.path.join(HERE, "int8-quality", "prompts.txt"))
    ap.add_argument("--heldout", default=os.path.join(HERE, "int8-quality", "heldout.txt"))
    ap.add_argument("--json", help="also write the figures, per prompt, to this file")
    args = ap.parse_args()

    reference = load_reference()
    with open(os.path.join(args.float32, "tokenizer.json"), encoding="utf-8") as f:
        bpe = reference.Bpe(json.load(f))
    fp32, int8 = Model(args.float32, args.threads), Model(args.int8, args.threads)
    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    n = args.max_new_tokens

    per_prompt = []
    for prompt in prompts:
        ids = bpe.encode(prompt)
        a = reference.generate(fp32.session, fp32.config, np.float32, ids, n)
        b = reference.generate(int8.session, int8.config, np.float32, ids, n)
        prefix = 0
        while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
            prefix += 1
        per_prompt.append({"prompt": prompt, "agreeing_prefix": prefix, "float32": a, "int8": b})
    full = sum(1 for p in per_prompt if p["agreeing_prefix"] == len(p["float32"]) == len(p["int8"]))
    first = sum(1 for p in per_prompt if p["agreeing_prefix"] >= 1)
    mean_prefix = float(np.mean([p["agreeing_prefix"] for p in per_prompt]))

    with open(args.heldout, encoding="utf-8") as f:
        text = f.read().strip()
    ids = bpe.encode(text)
    window = fp32.config["n_positions"]
    ppl_fp32, top_fp32 = perplexity(fp32, ids, window)
    ppl_int8, top_int8 = perplexity(int8, ids, window)
    top1 = float(np.mean(np.array(top_fp32) == np.array(top_int8)))

    summary = {
        "float32": fp32.path,
        "int8": int8.path,
        "prompts": len(prompts),
        "max_new_tokens": n,
        "greedy_full_agreement": full,
        "greedy_first_token_agreement": first,
        "greedy_mean_agreeing_prefix": round(mean_prefix, 2),
        "heldout_tokens": len(ids),
        "perplexity_float32": round(ppl_fp32, 2),
        "perplexity_int8": round(ppl_int8, 2),
        "heldout_top1_agreement": round(top1, 4),
    }
    print(f"prompts: {len(prompts)}, {n} greedy tokens each")
    print(f"  agree on all {n} tokens: {full} of {len(prompts)}")
    print(f"  agree on the first token: {first} of {len(prompts)}")
    print(f"  mean agreeing prefix: {mean_prefix:.2f} tokens")
    print("  agreeing prefix per prompt:", [p["agreeing_prefix"] for p in per_prompt])
    print(f"held-out text: {len(ids)} tokens")
    print(f"  perplexity float32 {ppl_fp32:.2f}, int8 {ppl_int8:.2f}")
    print(f"  same most likely next token: {top1:.1%} of positions")
    print("INT8_QUALITY " + json.dumps(summary))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "per_prompt": per_prompt}, f, indent=1)


if __name__ == "__main__":
    main()
