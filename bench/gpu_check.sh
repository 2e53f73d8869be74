#!/usr/bin/env bash
# HSSL training-step throughput and MFU on one GPU; prints ONE JSON line (bench/gpu_step.py).
#
#   bash bench/gpu_check.sh                # ViT-S/16 @ 224, batch 128, bf16, paper head/projectors
#   bash bench/gpu_check.sh --cpu-smoke    # tiny CPU run (< 1 min) proving the script works
#   PEAK_TFLOPS=500 bash bench/gpu_check.sh --batch 64   # other GPU / other flags
#
# Needs only this repository and a Python with PyTorch (CUDA), timm, numpy, tqdm: the repo root
# goes on PYTHONPATH (nothing is installed) and the images are random uint8 tensors made on the
# GPU (nothing is downloaded). Python: $PYTHON, else the repo's .venv, else python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3 || command -v python)"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
if ! "$PY" -c "import torch, timm, numpy, tqdm, training.loop.train" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch, timm, numpy, tqdm and training.loop.train" \
    "(PYTHONPATH=$PYTHONPATH); install the project's deps or set PYTHON" >&2
  exit 2
fi
# Whole run (build, warm-up, FLOP count, timed steps) stays under 5 minutes.
exec timeout "${GPU_CHECK_TIMEOUT_S:-290}" "$PY" bench/gpu_step.py "$@"
