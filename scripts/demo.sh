#!/usr/bin/env bash
# Set up from nothing and run the main job on the embedded default: start the service
# (`hssl serve`: REST API + local dispatcher, SQLite under hssl-data/), submit a small real head
# search (examples/quickstart.yaml, built-in Animal-MNIST images) through the REST API with the
# CLI, watch it to the end (ranking printed) and download the recommendation to
# hssl-data/recommendation.yaml. Running it again reuses the same search (idempotency key).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export HSSL_DATA_DIR=${HSSL_DATA_DIR:-hssl-data}
port=${HSSL_PORT:-8765}
export HSSL_URL=${HSSL_URL:-http://127.0.0.1:$port}
hssl=.venv/bin/hssl
mkdir -p "$HSSL_DATA_DIR"
$hssl migrate > /dev/null
keyfile="$HSSL_DATA_DIR/demo.key"
if [ ! -s "$keyfile" ]; then
  $hssl tenants create demo > /dev/null
  $hssl keys create --tenant demo --name demo 2>/dev/null \
    | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["key"])' > "$keyfile"
fi
HSSL_API_KEY=$(cat "$keyfile")
export HSSL_API_KEY

$hssl serve --port "$port" > "$HSSL_DATA_DIR/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "$HSSL_URL/readyz" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$HSSL_DATA_DIR/serve.log"; exit 1; }
  sleep 0.5
done

$hssl search submit examples/quickstart.yaml --idempotency-key quickstart-demo \
  --watch --download "$HSSL_DATA_DIR/recommendation.yaml"
echo "optuna-dashboard: .venv/bin/optuna-dashboard sqlite:///$HSSL_DATA_DIR/optuna.sqlite3 --artifact-dir $HSSL_DATA_DIR/artifacts"
