#!/usr/bin/env python3
"""Hugging Face `generate` on torch, on the same GPT-2 as an rpaflow model directory: the baseline
`rpaflow bench-inference` is compared with (docs/benchmarks.md).

The weights are read from DIR/model.onnx (a float32 model of scripts/make-test-model.py, or any
export whose initializers keep the Hugging Face names) into transformers' GPT2LMHeadModel; the
script first checks that both compute the same logits on a prompt. The prompts are those of
`rpaflow bench-inference` (inference-node/src/bench.rs: `prompts`), tokenized with DIR's
tokenizer.json; greedy, exactly --max-new-tokens new tokens each.

- C at a time: one `generate` call on the first C prompts, left-padded;
- one at a time: `generate` on each of the first --one-at-a-time prompts alone.

Needs torch and transformers (scripts/quantize-int8.sh --with-optimum installs both in
$RPAFLOW_CACHE/venv-optimum).

Usage: hf-generate-bench.py --model DIR [--concurrency 32] [--max-new-tokens 32] [--threads 2]
Prints a summary and a `HF_GENERATE {json}` line.
"""

import argparse
import json
import os
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = (
    "the customer wrote about a late delivery and asked for refund of order number please reply "
    "politely with next steps today"
).split()


def prompts(n):
    """inference-node/src/bench.rs `prompts`: n prompts of 3 to 40 words, the same every run."""
    return [
        " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(3 + (i * 7) % 38)) for i in range(n)
    ]


def load(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    config = GPT2Config(
        vocab_size=raw["vocab_size"],
        n_positions=raw["n_positions"],
        n_embd=raw["n_embd"],
        n_layer=raw["n_layer"],
        n_head=raw["n_head"],
        activation_function="gelu_new",
        layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
        bos_token_id=raw.get("bos_token_id", 50256),
        eos_token_id=raw.get("eos_token_id", 50256),
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float32).copy())
        for t in onnx.load(os.path.join(model_dir, "model.onnx")).graph.initializer
        if t.name.startswith("transformer.")
    }
    # Every parameter of the transformer, by its Hugging Face name (lm_head is tied to wte).
    state = model.state_dict()
    needed = [k for k in state if k.startswith("transformer.") and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    absent = [k for k in needed if k not in weights]
    if absent:
        raise SystemExit(f"weights not found in model.onnx: {absent[:5]}")
    for name in needed:
        if state[name].shape != weights[name].shape:
            raise SystemExit(f"{name}: {tuple(weights[name].shape)} in model.onnx, {tuple(state[name].shape)} in GPT-2")
        state[name] = weights[name]
    model.load_state_dict(state, strict=True)
    model.eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    tokenizer.pad_token = tokenizer.eos_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    return model, tokenizer


def check_logits(model, tokenizer, model_dir):
    """The torch model computes what model.onnx computes."""
    import onnxruntime as ort

    ids = tokenizer("The customer wrote about a late delivery", return_tensors="np")["input_ids"]
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    cfg = model.config
    feeds = {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones_like(ids, dtype=np.int64),
        "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
    }
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, cfg.n_head, 0, cfg.n_embd // cfg.n_head), np.float32)
    onnx_logits = session.run(["logits"], feeds)[0]
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(ids)).logits.numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    same_argmax = bool((onnx_logits.argmax(-1) == torch_logits.argmax(-1)).all())
    return diff, same_argmax


def generate(model, tokenizer, batch, new_tokens):
    enc = tokenizer(batch, return_tensors="pt", padding=True)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    wall = time.perf_counter() - start
    return (out.shape[1] - enc["input_ids"].shape[1]) * len(batch), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--one-at-a-time", type=int, default=8, help="prompts generated alone")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load(args.model)
    diff, same_argmax = check_logits(model, tokenizer, args.model)
    print(f"torch against model.onnx: max |logit difference| {diff:.2e}, same argmax everywhere: {same_argmax}")
    ps = prompts(max(args.concurrency, args.one_at_a_time))
    generate(model, tokenizer, ps[:1], 2)  # warm-up

    tokens, wall = 0, 0.0
    for p in ps[: args.one_at_a_time]:
        t, w = generate(model, tokenizer, [p], args.max_new_tokens)
        tokens, wall = tokens + t, wall + w
    alone = tokens / wall
    tokens, wall = generate(model, tokenizer, ps[: args.concurrency], args.max_new_tokens)
    batched = tokens / wall
    print(f"one at a time: {alone:.1f} tokens/s ({args.one_at_a_time} prompts)")
    print(f"C={args.concurrency}: {batched:.1f} tokens/s ({tokens} tokens in {wall:.1f} s)")
    print(
        "HF_GENERATE "
        + json.dumps(
            {
                "concurrency": args.concurrency,
                "tokens_per_s": round(batched, 1),
                "one_at_a_time_tokens_per_s": round(alone, 1),
                "threads": args.threads,
                "torch": torch.__version__,
                "max_logit_diff": diff,
                "same_argmax": same_argmax,
            }
        )
    )


if __name__ == "__main__":
    main()
