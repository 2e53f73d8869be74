#!/usr/bin/env bash
# Re-lock: regenerate requirements.lock (the image: pyproject's dependencies) and
# requirements-dev.lock (.venv and CI: those plus the dev and data extras, pinned to the same
# versions) from pyproject.toml with uv, for every platform and Python >= 3.10 (the dev tools
# need >= 3.11: schemathesis).
#   bash scripts/lock.sh              # after editing pyproject.toml: keeps every pin that still fits
#   bash scripts/lock.sh --upgrade    # move every pin to the newest release (any uv flag works)
# The torch pair is NOT locked: torch and torchvision are installed first by their own pinned
# step (scripts/setup.sh's TORCH_PACKAGES, the Dockerfile's TORCH_* arguments) because the
# build differs per target (CUDA wheels from PyPI, +cpu wheels from PyTorch's CPU index, a local
# wheel folder) and so do the CUDA runtime wheels torch pins exactly (nvidia-*, cuda-*, triton).
# torch's portable dependencies (sympy, networkx, filelock, jinja2, ...) are locked.
# tests/test_lock.py fails when pyproject.toml and the locks disagree.
set -euo pipefail
cd "$(dirname "$0")/.."

uv_version=0.13.9
[ -x .venv/bin/python ] || bash scripts/setup.sh
if ! .venv/bin/uv --version 2>/dev/null | grep -q " ${uv_version}\b"; then
  .venv/bin/pip install -q --disable-pip-version-check "uv==${uv_version}"
fi
export UV_CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" UV_PYTHON_DOWNLOADS=never

compile() {  # compile PYTHON_VERSION [uv args]
  local python_version=$1
  shift
  .venv/bin/uv pip compile --quiet --universal --python-version "$python_version" pyproject.toml "$@"
}
# The packages that come with the torch pair's own build: torch, torchvision and whatever CUDA
# runtime wheels this torch release pins (found by resolving once, so a new release's are too).
no_emit=(--no-emit-package torch --no-emit-package torchvision)
resolved="$(compile 3.10 --no-header --no-annotate "$@")"
for name in $(sed -nE 's/^((nvidia|cuda)-[a-z0-9-]+|triton)==.*/\1/p' <<<"$resolved" | sort -u); do
  no_emit+=(--no-emit-package "$name")
done
compile 3.10 "${no_emit[@]}" "$@" -o requirements.lock
compile 3.11 --extra dev --extra data -c requirements.lock "${no_emit[@]}" "$@" \
  -o requirements-dev.lock
echo "locked: requirements.lock ($(grep -c '^[a-z]' requirements.lock) pins)," \
  "requirements-dev.lock ($(grep -c '^[a-z]' requirements-dev.lock) pins)"
