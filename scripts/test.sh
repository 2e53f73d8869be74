#!/usr/bin/env bash
# Set up from nothing and run every check: lint, format, tests. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The database tests start a throwaway PostgreSQL cluster (tests/pg.py) and fail without one:
# install Debian's package when no initdb is found (on PATH or under /usr/lib/postgresql).
have_postgres() {
  [ -x "${PG_BINDIR:-/nonexistent}/initdb" ] || command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if ! have_postgres; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL (apt-get) for the database tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "PostgreSQL not found and not root: install it (sudo apt-get install postgresql)" \
      "or set PG_BINDIR; the PostgreSQL tests will fail without it" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
