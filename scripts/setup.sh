#!/usr/bin/env bash
# Creates (or updates) .venv in the repo root with Saguaro, the bundled models, and the test tools.
# torch: an existing torch in .venv is kept (bring your own CUDA build); otherwise
# $SAGUARO_TORCH is installed, by default torch==2.13.0 (the CPU wheel on the dev machines).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "${SAGUARO_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -e ".[bundled,server,dev]"
# The CPU kernels are compiled for this CPU once (~15 s), here rather than in the first run.
# A machine with no compiler still runs, on PyTorch's kernels: the first run says so once.
python -m saguaro.quant.native || true
