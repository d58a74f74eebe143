#!/usr/bin/env bash
# The GPU checks in one run (on a CUDA machine, from the repository root), at most about 8 minutes:
# python -m saguaro.bench.gpu_check (static shapes and CUDA graphs at the Qwen2.5-7B / 0.5B shapes
# with random weights: the weight floor, AR, verify, draft and branch steps, SD and SSD speed-ups,
# float32 exactness, the tiny pair's chi-square on the device). Results go to $OUT (default
# ./gpu_out): gpu_check.json (written after each part), the log, and nvidia-smi's view of the card.
# Commit the JSON as docs/gpu/<device>-<date>.json.
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia_smi.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m saguaro.bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
