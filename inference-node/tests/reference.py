#!/usr/bin/env python3
"""Greedy GPT-2 generation with a plain onnxruntime loop: the reference the Rust engine must match.

Independent of the Rust code: its own GPT-2 byte-level BPE (OpenAI's original algorithm, reading
the vocabulary and merges from the model's tokenizer.json), one prompt at a time, no padding, past
key/values fed back as they come out.

Reads JSON from stdin: {"model": DIR, "prompts": [{"prompt": str, "max_new_tokens": int}, ...]}.
Writes JSON to stdout: [{"prompt_ids": [...], "token_ids": [...], "text": str}, ...].
"""

import json
import os
import re
import sys
from functools import lru_cache

import numpy as np
import onnxruntime as ort

# GPT-2's pre-tokenizer pattern, with Python `re` classes for \p{L} and \p{N}.
PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Bpe:
    def __init__(self, tokenizer_json):
        model = tokenizer_json["model"]
        self.encoder = model["vocab"]
        self.decoder = {v: k for k, v in self.encoder.items()}
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, token):
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        return word

    def encode(self, text):
        ids = []
        for piece in PATTERN.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids, skip=(50256,)):
        text = "".join(self.decoder[i] for i in ids if i not in skip)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


def generate(session, config, np_float, ids, max_new_tokens):
    heads, layers = config["n_head"], config["n_layer"]
    head_dim = config["n_embd"] // heads
    past = {}
    for i in range(layers):
        for kind in ("key", "value"):
            past[f"past_key_values.{i}.{kind}"] = np.zeros((1, heads, 0, head_dim), dtype=np_float)
    tokens = list(ids)
    out = []
    feed_ids = np.array([tokens], dtype=np.int64)
    positions = np.arange(len(tokens), dtype=np.int64)[None, :]
    for _ in range(max_new_tokens):
        mask = np.ones((1, len(tokens)), dtype=np.int64)
        feeds = {"input_ids": feed_ids, "attention_mask": mask, "position_ids": positions, **past}
        names = [o.name for o in session.get_outputs()]
        results = dict(zip(names, session.run(names, feeds)))
        logits = results["logits"][0, -1].astype(np.float32)
        nxt = int(np.argmax(logits))
        out.append(nxt)
        if nxt == config["eos_token_id"]:
            break
        tokens.append(nxt)
        for i in range(layers):
            for kind in ("key", "value"):
                past[f"past_key_values.{i}.{kind}"] = results[f"present.{i}.{kind}"]
        feed_ids = np.array([[nxt]], dtype=np.int64)
        positions = np.array([[len(tokens) - 1]], dtype=np.int64)
    return out


def main():
    request = json.load(sys.stdin)
    model_dir = request["model"]
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        bpe = Bpe(json.load(f))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # model.onnx, else an int8 model as Optimum's quantizer (and scripts/quantize-int8.py) names it.
    model_file = os.path.join(model_dir, "model.onnx")
    if not os.path.isfile(model_file):
        model_file = os.path.join(model_dir, "model_quantized.onnx")
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    past_type = next(i.type for i in session.get_inputs() if i.name.startswith("past_key_values"))
    np_float = np.float16 if past_type == "tensor(float16)" else np.float32
    results = []
    for item in request["prompts"]:
        ids = bpe.encode(item["prompt"])
        generated = generate(session, config, np_float, ids, item["max_new_tokens"])
        results.append({"prompt_ids": ids, "token_ids": generated, "text": bpe.decode(generated)})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
