#!/usr/bin/env bash
# Set up from nothing and run the main job on the embedded default: a small real head search
# (examples/quickstart.yaml) on the built-in Animal-MNIST images, SQLite storage under
# hssl-data/. Prints the ranking and writes the recommendation (JSON + YAML) and a plot.
# Running it again resumes the same search instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hssl search run examples/quickstart.yaml --data-dir hssl-data --resume "$@"
