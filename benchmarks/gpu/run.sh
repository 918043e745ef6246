#!/usr/bin/env bash
# The GPU run as one call, on a machine with an NVIDIA GPU and no package index: install the project and the wheels
# carried in .whl/ (diffusers and the project with --no-deps; the GPU image has torch, transformers, accelerate,
# peft, onnx, onnxruntime), then run `encoder_shrink.benchmarks.gpu_run` within BUDGET_S seconds. Its report
# (results.json, results.md, results.png, each step's folder and log) goes to $OUT (or ./gpu-run).
# NO_INSTALL=1: the project is installed already.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-run}
mkdir -p "$out"
if [ -z "${NO_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl || exit 1
    fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"
exec python3 -m encoder_shrink.benchmarks.gpu_run --output "$out" --budget "${BUDGET_S:-540}" "$@"
