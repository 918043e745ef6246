#!/usr/bin/env bash
# The `accelerator` test tier on a machine with an NVIDIA GPU and no package index: install the wheels carried in
# .whl/ (diffusers, transformers: the GPU image has torch, accelerate, peft, onnx and onnxruntime) into a private
# folder, then run every test marked `accelerator` (offload with a student inside, fp16/bf16 CUDA paths, TensorRT
# where installed). The log and a JUnit report go to $OUT (or ./accelerator-tier).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-accelerator-tier}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
PYTHONUNBUFFERED=1 python3 -m pytest -q -m accelerator -p no:cacheprovider -rs --continue-on-collection-errors --junitxml="$out/junit.xml" \
    --durations=15 "${@:-tests}" 2>&1 | tee "$out/accelerator-tier.log"
