#!/usr/bin/env python3
"""Quantizes a GPT-2 model directory in the Optimum layout to int8, as Optimum's ONNX Runtime
quantizer does it: dynamic quantization (weights int8 ahead of time, activations uint8 at run time,
`MatMulInteger` and `DynamicQuantizeLinear` on ONNX Runtime's CPU provider).

Reads DIR/model.onnx (with config.json, tokenizer.json and the other files of an Optimum export)
and writes OUT/model_quantized.onnx, the name Optimum gives it, next to copies of the other files
and an `ort_config.json` that records the settings.

Two ways, the same settings:

- `optimum`: Optimum's own `ORTQuantizer` with `AutoQuantizationConfig.avx512_vnni(is_static=False)`
  or `.avx2(is_static=False)` (needs `optimum-onnx[onnxruntime]`, which pulls in torch).
- `onnxruntime`: onnxruntime's `ONNXQuantizer` called with the arguments Optimum 2.1's
  `ORTQuantizer.quantize` passes for those configurations (read from its source): QOperator format,
  IntegerOps mode, every operator of onnxruntime's IntegerOps registry, per-channel symmetric
  weights (int8 for avx512_vnni, uint8 for avx2), asymmetric uint8 activations, no reduced range.
  Note: not `quantize_dynamic`, which also sets `MatMulConstBOnly` and so leaves the attention's
  activation-by-activation MatMuls in float; Optimum quantizes them too.

`--backend auto` (the default) takes Optimum when it can be imported, onnxruntime otherwise, and
says which on standard error.

Usage: quantize-int8.py --model DIR --out OUT [--config avx512_vnni|avx2] [--backend auto|optimum|onnxruntime]
"""

import argparse
import json
import os
import shutil
import sys

# The files of an Optimum export that travel with the model (whichever of them exist).
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
OUTPUT = "model_quantized.onnx"


def settings(config):
    """What Optimum's AutoQuantizationConfig.<config>(is_static=False) holds, as plain values."""
    from onnxruntime.quantization import QuantType

    weights = {"avx512_vnni": QuantType.QInt8, "avx2": QuantType.QUInt8}[config]
    return {
        "per_channel": True,
        "reduce_range": False,
        "weights_dtype": weights,
        "activations_dtype": QuantType.QUInt8,
        "weights_symmetric": True,
        "activations_symmetric": False,
    }


def with_onnxruntime(model_dir, out, config, const_b_only=False):
    import onnx
    from onnxruntime.quantization import QuantizationMode
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    s = settings(config)
    model = onnx.load(os.path.join(model_dir, "model.onnx"))
    subgraphs = any(n.op_type in ("If", "Loop", "Scan", "SequenceMap") for n in model.graph.node)
    quantizer = ONNXQuantizer(
        model=model,
        per_channel=s["per_channel"],
        reduce_range=s["reduce_range"],
        mode=QuantizationMode.IntegerOps,
        static=False,
        weight_qType=s["weights_dtype"],
        activation_qType=s["activations_dtype"],
        tensors_range=None,
        nodes_to_quantize=[],
        nodes_to_exclude=[],
        op_types_to_quantize=list(IntegerOpsRegistry.keys()),
        extra_options={
            "WeightSymmetric": s["weights_symmetric"],
            "ActivationSymmetric": s["activations_symmetric"],
            "EnableSubgraph": subgraphs,
            "ForceSymmetric": s["weights_symmetric"] and s["activations_symmetric"],
            "AddQDQPairToWeight": False,
            "DedicatedQDQPair": False,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            # Not Optimum's: quantize_dynamic's default, the attention's MatMuls stay float.
            "MatMulConstBOnly": const_b_only,
        },
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(os.path.join(out, OUTPUT), False)
    record = {
        "quantized_by": "onnxruntime.quantization.onnx_quantizer.ONNXQuantizer (scripts/quantize-int8.py)",
        "matmul_const_b_only": const_b_only,
        "optimum_config": f"AutoQuantizationConfig.{config}(is_static=False)",
        "quantization": {
            "is_static": False,
            "format": "QOperator",
            "mode": "IntegerOps",
            "operators_to_quantize": list(IntegerOpsRegistry.keys()),
            **{k: (v.name if hasattr(v, "name") else v) for k, v in s.items()},
        },
    }
    with open(os.path.join(out, "ort_config.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def with_optimum(model_dir, out, config):
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    qconfig = getattr(AutoQuantizationConfig, config)(is_static=False)
    quantizer = ORTQuantizer.from_pretrained(model_dir, file_name="model.onnx")
    quantizer.quantize(save_dir=out, quantization_config=qconfig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an Optimum export directory holding model.onnx")
    ap.add_argument("--out", required=True, help="the directory to write (may be --model itself)")
    ap.add_argument("--config", choices=("avx512_vnni", "avx2"), default="avx512_vnni")
    ap.add_argument("--backend", choices=("auto", "optimum", "onnxruntime"), default="auto")
    ap.add_argument(
        "--matmul-const-b-only",
        action="store_true",
        help="not Optimum's settings: quantize only the MatMuls on weights (onnxruntime's quantize_dynamic "
        "default), leaving the attention's two MatMuls per layer in float32; implies --backend onnxruntime",
    )
    args = ap.parse_args()
    if args.matmul_const_b_only:
        args.backend = "onnxruntime"

    if not os.path.isfile(os.path.join(args.model, "model.onnx")):
        sys.exit(f"quantize-int8: {args.model} has no model.onnx")
    backend = args.backend
    if backend == "auto":
        try:
            import optimum.onnxruntime  # noqa: F401

            backend = "optimum"
        except ImportError:
            backend = "onnxruntime"
    os.makedirs(args.out, exist_ok=True)
    print(f"quantize-int8: {args.config}, dynamic, with {backend}", file=sys.stderr)
    if backend == "optimum":
        with_optimum(args.model, args.out, args.config)
    else:
        with_onnxruntime(args.model, args.out, args.config, args.matmul_const_b_only)
    if os.path.realpath(args.model) != os.path.realpath(args.out):
        for name in SIDE_FILES:
            src = os.path.join(args.model, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(args.out, name))
    print(f"quantize-int8: wrote {os.path.join(args.out, OUTPUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
