"""docker/compose.yaml, checked without Docker.

- Invariants: the dashboard and (by default) the API are published on 127.0.0.1 only, no
  password is written into the file or its example env, the worker reserves one NVIDIA GPU, and
  the API and its workers agree on the database, the queue and the data mount.
- Drift: the compose file's own ``migrate``, ``api`` and ``worker`` services run as plain local
  processes against a real PostgreSQL, with the commands and environment variables the file gives
  them (``${...}`` substituted from a test env; the image's ``hssl``/``uvicorn`` mapped to this
  venv's; the data volume mapped to a temporary folder at the same place in every service), and
  a search submitted over HTTP runs to a downloadable recommendation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import make_url

from tests.cli_helpers import BIN
from tests.net_helpers import http
from tests.search_helpers import TINY_SEARCH
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
PROGRAMS = {"hssl": BIN / "hssl", "uvicorn": BIN / "uvicorn"}  # the image's PATH → this venv
FINAL = ("completed", "failed", "cancelled")

# ---- a small ${...} interpolation (the forms compose.yaml uses) -----------------------------
VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's substitution: ``${V}``, ``${V:-default}``, ``${V-default}``, ``${V:?error}``,
    ``${V?error}``, ``$V`` and ``$$`` (a literal ``$``), through lists and mappings."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-") and unset:
            return arg
        if op in ("?", ":?") and unset:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        return current or ""

    return VARIABLE.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def example_env(**changes: str) -> dict[str, str]:
    return {**read_env_file(ENV_EXAMPLE), "POSTGRES_PASSWORD": "test-placeholder", **changes}


def argv(service: dict[str, Any]) -> list[str]:
    """entrypoint + command as lists (exec form only: no shell wrappers to drift in)."""
    entrypoint, command = service.get("entrypoint") or [], service.get("command") or []
    assert isinstance(entrypoint, list) and isinstance(command, list), service
    return [str(part) for part in [*entrypoint, *command]]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path → volume name or host path (short syntax)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        out[target] = source
    return out


# ---- invariants ---------------------------------------------------------------------------
def test_compose_publishes_on_loopback_reserves_a_gpu_and_keeps_passwords_out():
    raw = COMPOSE.read_text()
    # every user:password@ in a URL takes both from the env, which must set the password
    userinfo = re.findall(r"://([^\n]*?)@", raw)
    allowed = re.compile(r"\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD:\?[^}]*\}")
    assert userinfo and all(allowed.fullmatch(u) for u in userinfo), userinfo
    assert re.search(r"POSTGRES_PASSWORD: \$\{POSTGRES_PASSWORD:\?", raw)
    assert read_env_file(ENV_EXAMPLE)["POSTGRES_PASSWORD"] == ""  # a placeholder, no default
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        compose({k: v for k, v in example_env().items() if k != "POSTGRES_PASSWORD"})

    services = compose({"POSTGRES_PASSWORD": "x"})["services"]  # nothing else set: defaults
    assert set(services) >= {"postgres", "migrate", "api", "worker", "dashboard"}
    for name in ("api", "dashboard"):
        ports = services[name]["ports"]
        assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    example = compose(example_env())["services"]
    assert all(str(p).startswith("127.0.0.1:") for p in example["api"]["ports"])
    assert all(str(p).startswith("127.0.0.1:") for p in example["dashboard"]["ports"])

    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "replicas" in worker["deploy"]

    api, migrate = services["api"], services["migrate"]
    assert api["environment"]["HSSL_LOCAL_WORKERS"] == "0"
    for key in ("HSSL_DATABASE_URL", "HSSL_QUEUE", "HSSL_DATA_ROOT", "HSSL_DATA_DIR"):
        assert api["environment"][key] == worker["environment"][key] == migrate["environment"][key]
    queue = argv(worker)[argv(worker).index("--queue") + 1]
    assert queue == api["environment"]["HSSL_QUEUE"]  # the API defers to the worker's queue
    root = api["environment"]["HSSL_DATA_ROOT"]
    assert mounts(api)[root] == mounts(worker)[root]  # the same data at the same path
    assert services["dashboard"]["command"][-1].endswith("?options=-csearch_path%3Doptuna")
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


# ---- drift: the compose services as local processes ----------------------------------------
class Service:
    """One compose service as a local process: its argv and environment, mounts mapped."""

    def __init__(self, name: str, spec: dict[str, Any], volumes: Path, tmp_path: Path) -> None:
        self.name, self.tmp_path = name, tmp_path
        args = argv(spec)
        assert args[0] in PROGRAMS, f"{name}: {args[0]!r} is not a program of the image"
        self.args = [str(PROGRAMS[args[0]]), *args[1:]]
        paths = {target: volumes / Path(source).name for target, source in mounts(spec).items()}
        for local in paths.values():
            local.mkdir(parents=True, exist_ok=True)
        self.env = {
            key: self._local(str(value), paths) for key, value in spec["environment"].items()
        }
        self.log = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _local(value: str, paths: dict[str, Path]) -> str:
        for target, local in paths.items():
            if value == target or value.startswith(target.rstrip("/") + "/"):
                return str(local) + value[len(target.rstrip("/")) :]
        return value

    def environ(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
        return {**base, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **self.env}

    def run(self, args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            args,
            env=self.environ(),
            cwd=self.tmp_path,  # no stray .env from the repository
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> Service:
        self.proc = subprocess.Popen(
            self.args,
            env=self.environ(),
            cwd=self.tmp_path,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        return self

    def logs(self) -> str:
        return f"--- {self.name} log ---\n" + self.log.read_text(errors="replace")[-3000:]

    def assert_running(self) -> None:
        code = self.proc.poll() if self.proc else None
        assert code is None, f"{self.name} exited ({code})\n{self.logs()}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.mark.slow
def test_compose_services_run_a_search_as_local_processes(
    empty_pg_database_url, tmp_path, clean_env, reserved_port
):
    url = make_url(empty_pg_database_url)
    env = example_env(
        POSTGRES_USER=url.username,
        POSTGRES_PASSWORD="unused-trust-auth",  # the test cluster trusts local connections
        POSTGRES_HOST=url.host,
        POSTGRES_PORT=str(url.port),
        POSTGRES_DB=url.database,
        HSSL_QUEUE=f"drift-{uuid.uuid4().hex[:8]}",
    )
    services = compose(env)["services"]
    volumes = tmp_path / "volumes"
    migrate, api, worker = (
        Service(name, services[name], volumes, tmp_path) for name in ("migrate", "api", "worker")
    )

    # the API listens on the container port its `ports` entry publishes; locally a held one
    container_port = str(services["api"]["ports"][0]).rsplit(":", 1)[1]
    at = api.args.index("--port")
    assert api.args[at + 1] == container_port, (api.args, container_port)
    port = reserved_port
    api.args[at + 1] = str(port)
    api.args[api.args.index("--host") + 1] = "127.0.0.1"  # not 0.0.0.0 on a test machine
    base = f"http://127.0.0.1:{port}"

    done = migrate.run(migrate.args)
    assert done.returncode == 0, done.stdout + done.stderr
    tenant = api.run([str(BIN / "hssl"), "tenants", "create", "drift"])
    assert tenant.returncode == 0, tenant.stdout + tenant.stderr
    created = api.run([str(BIN / "hssl"), "keys", "create", "--tenant", "drift"])
    assert created.returncode == 0, created.stdout + created.stderr
    key = json.loads(created.stdout)["key"]

    try:
        api.start()
        worker.start()

        def ready():
            try:
                return http("GET", f"{base}/readyz")[0] == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_until(ready, 60, "the API to be ready", 0.5, watching=(api, worker))
        status, headers, body = http("POST", f"{base}/v1/searches", key, TINY_SEARCH)
        assert status == 202, body
        search = json.loads(body)
        sid = search["id"]
        assert headers["Location"].endswith(f"/v1/searches/{sid}")

        def finished():
            resource = json.loads(http("GET", f"{base}/v1/searches/{sid}", key)[2])
            return resource if resource["status"] in FINAL else None

        resource = wait_until(finished, 180, f"search {sid}", 0.5, watching=(api, worker))
        assert resource["status"] == "completed", (resource, worker.logs())
        status, headers, body = http(
            "GET", f"{base}/v1/searches/{sid}/recommendation?format=yaml", key
        )
        assert status == 200
        assert f'recommendation-{sid}.yaml"' in headers["Content-Disposition"]
        recommendation = yaml.safe_load(body)
        assert isinstance(recommendation, dict) and recommendation, body[:500]
    finally:
        api.stop()
        worker.stop()
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(False)) as conn:
        (ran_by,) = conn.execute("SELECT worker FROM jobs WHERE search_id = %s", (sid,)).fetchone()
    assert ran_by.startswith("procrastinate:"), ran_by  # the worker ran it, not the API
    # a clean stop on SIGTERM (uvicorn re-raises the signal once it has shut down)
    assert api.proc.returncode in (0, -signal.SIGTERM), api.logs()
    assert worker.proc.returncode == 0, worker.logs()
