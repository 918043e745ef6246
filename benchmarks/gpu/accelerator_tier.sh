#!/usr/bin/env bash
# The `accelerator` test tier on a machine with an NVIDIA GPU and no package index: install the project and the
# wheels carried in .whl/ (diffusers: the GPU image has torch, transformers, accelerate, peft, onnx, onnxruntime),
# then run every test marked `accelerator` (offload with a student inside, fp16/bf16 CUDA paths, TensorRT where
# installed), within a time budget. The log and a JUnit report go to $OUT (or ./accelerator-tier).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-accelerator-tier}
mkdir -p "$out"
# The project itself editable (its exporters/ and benchmarks/ folders are mapped into encoder_shrink.*), then the
# carried wheels, into the machine's Python: both without a package index.
# NO_INSTALL=1: the project is installed already (the CPU smoke test).
if [ -z "${NO_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl || exit 1
    fi
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
else
    echo "no nvidia-smi: the accelerator tests skip with their reason" | tee "$out/gpu.txt"
fi
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
PYTHONUNBUFFERED=1 timeout "${BUDGET_S:-420}" python3 -m pytest -q -m accelerator -p no:cacheprovider -rs \
    --continue-on-collection-errors --junitxml="$out/junit.xml" --durations=15 "${@:-tests}" 2>&1 \
    | tee "$out/accelerator-tier.log"
