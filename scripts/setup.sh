#!/usr/bin/env bash
# Create .venv with everything hssl-search needs, from nothing; safe to run again.
# PyTorch and torchvision are installed as a pinned, matching pair first (override with
# TORCH_PACKAGES, e.g. TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1 --index-url ...").
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ "$(uname -m)" = "aarch64" ]; then default_torch="torch==2.9.1 torchvision==0.24.1"
else default_torch="torch==2.14.1 torchvision==0.29.1"; fi
torch_packages=${TORCH_PACKAGES:-$default_torch}

quiet_pip() { .venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC2086  # word splitting of the package list is intended
quiet_pip $torch_packages
quiet_pip -e ".[dev]"
# The animal-mnist wheel ships 10,000 real images; its declared deps pull tensorflow: --no-deps.
quiet_pip --no-deps animal-mnist==0.4
.venv/bin/python -c "import torch, torchvision, timm, training; print('hssl-search ready: torch', torch.__version__, 'timm', timm.__version__)"
