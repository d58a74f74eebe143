#!/usr/bin/env bash
# The GPU checks in one run (on a CUDA machine, from the repository root): tiny-model exactness on the
# device, then SSD on one GPU at real shapes with random weights (python -m saguaro.bench.gpu_ssd).
# Results go to $OUT (default ./gpu_out): gpu_ssd.json, the log, and nvidia-smi's view of the card.
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia_smi.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
"$PY" -m saguaro.bench.gpu_ssd --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_ssd.log"
