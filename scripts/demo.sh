#!/usr/bin/env bash
# Set up from nothing and run the main job on the embedded default: one epoch of HSSL
# (ViT base at proxy scale + ConvNeXt head) on the built-in Animal-MNIST images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hssl train --data animal-mnist --epochs 1 --head convnext:depth=3,kernel=5 --out runs/demo "$@"
