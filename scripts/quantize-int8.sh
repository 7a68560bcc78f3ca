#!/usr/bin/env bash
# Makes an int8 GPT-2 from an Optimum export directory (model.onnx, config.json, tokenizer.json):
# OUT/model_quantized.onnx, dynamic int8 quantization with the settings of Optimum's
# AutoQuantizationConfig.avx512_vnni (default) or .avx2, plus copies of the export's other files.
# `rpaflow inference --model OUT` serves it. See scripts/quantize-int8.py for what is done.
#
# Usage: scripts/quantize-int8.sh MODEL_DIR OUT_DIR [--config avx512_vnni|avx2] [--with-optimum]
#
# By default onnxruntime's quantizer does the work, in the venv of scripts/setup-inference.sh,
# called with the arguments Optimum passes it (the result is byte for byte what Optimum writes:
# docs/benchmarks.md, "int8"). --with-optimum runs Optimum's own ORTQuantizer instead, from a venv
# of its own ($RPAFLOW_CACHE/venv-optimum), installed the first time: optimum-onnx[onnxruntime]
# pulls in torch and its CUDA libraries, about 5.7 GB.
#
# Environment: RPAFLOW_CACHE (default ~/.cache/rpaflow), PYTHON (default python3).
set -euo pipefail

ORT_VERSION=1.31.1
OPTIMUM_ONNX_VERSION=0.1.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}"

if [ $# -lt 2 ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
MODEL="$1"
OUT="$2"
shift 2
CONFIG=avx512_vnni
OPTIMUM=0
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG="$2"; shift 2 ;;
        --with-optimum) OPTIMUM=1; shift ;;
        *) echo "quantize-int8: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ "$OPTIMUM" = 1 ]; then
    VENV="$CACHE/venv-optimum"
    if ! "$VENV/bin/python" -c "import optimum.onnxruntime" 2>/dev/null; then
        echo "quantize-int8: installing optimum-onnx[onnxruntime]==$OPTIMUM_ONNX_VERSION into $VENV (pulls in torch)" >&2
        "${PYTHON:-python3}" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "optimum-onnx[onnxruntime]==$OPTIMUM_ONNX_VERSION" "onnxruntime==$ORT_VERSION" >&2
    fi
    exec "$VENV/bin/python" "$HERE/quantize-int8.py" --model "$MODEL" --out "$OUT" --config "$CONFIG" --backend optimum
fi
eval "$("$HERE/setup-inference.sh")"
exec "$RPAFLOW_PYTHON" "$HERE/quantize-int8.py" --model "$MODEL" --out "$OUT" --config "$CONFIG" --backend onnxruntime
