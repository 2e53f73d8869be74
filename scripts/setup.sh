#!/usr/bin/env bash
# Create .venv with everything hssl-search needs, from nothing; safe to run again.
# PyTorch and torchvision are installed as a pinned, matching pair first (override with
# TORCH_PACKAGES, e.g. TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1 --index-url ..."); they
# are not in the lock files (see scripts/lock.sh), everything else is.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ "$(uname -m)" = "aarch64" ]; then default_torch="torch==2.9.1 torchvision==0.24.1"
else default_torch="torch==2.14.1 torchvision==0.29.1"; fi
torch_packages=${TORCH_PACKAGES:-$default_torch}

quiet_pip() { .venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
# Everything but the torch pair comes from requirements-dev.lock (re-lock: scripts/lock.sh), the
# project itself without dependencies. A stamp of what was installed skips the installs when
# nothing changed (this runs at the start of every test run).
stamp=.venv/.hssl-setup
want="$(cat requirements-dev.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $torch_packages"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -f "$stamp"
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  quiet_pip $torch_packages
  quiet_pip -r requirements-dev.lock
  quiet_pip --no-deps -e .
  # The animal-mnist wheel ships 10,000 real images; its declared deps pull tensorflow: --no-deps.
  quiet_pip --no-deps animal-mnist==0.4
  echo "$want" >"$stamp"
fi
.venv/bin/python -c "import torch, torchvision, timm, training; print('hssl-search ready: torch', torch.__version__, 'timm', timm.__version__)"
