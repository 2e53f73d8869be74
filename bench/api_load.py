"""HTTP API under load on PostgreSQL, and how fast an idle worker picks up a search.

Prints one JSON line. Needs only the repo, its venv and Debian's PostgreSQL binaries: it starts
a throwaway cluster on loopback (``tests.pg.Cluster``), migrates a template database and clones
it twice (one database per phase, so phase 1's queued searches never reach phase 2's worker).

- Phase 1 (load): ``hssl serve`` with ``HSSL_LOCAL_WORKERS=0`` (the PostgreSQL production path:
  the API defers each new search to procrastinate; no worker runs in this phase, so the searches
  stay queued) in its own process; ``--clients`` asyncio clients (one ``httpx.AsyncClient``) for
  ``--seconds`` mix submit (POST /v1/searches, tiny spec, unique Idempotency-Key), status
  (GET /v1/searches/{id} of a random submitted search) and list (GET /v1/searches?limit=20).
  Per-route latency p50/p90/p99, errors (non-2xx or exceptions) with samples, requests/s, the
  database's connection count sampled every second against the API's pool budget, and the CPU
  each part used (the load generator shares the machine with the server and PostgreSQL).
- Phase 2 (dispatch): a fresh ``hssl serve`` (procrastinate dispatcher) and one idle
  ``hssl worker``; submit one tiny search (``--dispatch-runs`` times, one after the other) and
  time submit → procrastinate's job taken, → ``search.running``, → first ``trial.started``
  (``dispatch_latency_s``, target ≤ 2 s) and → search finished (``search_completed_s``), from
  the rows' own timestamps. The first search is the one a freshly started idle worker takes
  (``dispatch_latency_s``); later ones find it warm (``dispatch_latency_warm_s``).
- Soak (``--soak``, instead of the two phases): ``hssl serve`` as in phase 1 plus
  ``--soak-workers`` real ``hssl worker`` processes (default 2) that run the tiny searches the
  warm-up and the clients submit, so trials run for the whole soak; ``--clients`` (default 100)
  for ``--seconds`` (default 120) mix submit, status, trials (GET .../trials) and list. Prints
  errors with samples, p50/p90/p99 per route and overall, requests/s, the trials and searches
  the workers finished meanwhile, ERROR lines in the servers' logs, and the peak database
  connection count against the budget computed from the settings and the code: the API (our
  pool, procrastinate's pool) plus each worker (procrastinate's pool and its LISTEN
  connection, our pool, one Optuna storage pool per running search): ``within_budget``.

    .venv/bin/python bench/api_load.py --seconds 5
    .venv/bin/python bench/api_load.py            # 50 clients, 30 s
    .venv/bin/python bench/api_load.py --soak     # 100 clients, 120 s, 2 workers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine, pool

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from search.storage import engine_kwargs as optuna_engine_kwargs  # noqa: E402
from service.jobs.tasks import make_app  # noqa: E402
from service.persistence import store  # noqa: E402
from service.persistence.db import session_scope  # noqa: E402
from service.persistence.migrate import migrate  # noqa: E402
from service.persistence.settings import Settings  # noqa: E402
from tests.net_helpers import ReservedPort  # noqa: E402
from tests.pg import Cluster  # noqa: E402
from tests.search_helpers import TINY_SEARCH  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

ROUTES = ("submit", "status", "list", "trials")
BENCH_APP = "hssl-api-load"  # application_name of this script's own connections (not counted)
GENEROUS = 1_000_000_000
FINAL = ("completed", "failed", "cancelled")
TICK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[api_load] {message}", file=sys.stderr, flush=True)


def hssl_bin() -> str:
    beside = Path(sys.executable).parent / "hssl"
    found = str(beside) if beside.is_file() else shutil.which("hssl")
    if not found:
        raise RuntimeError("the `hssl` entry point was not found (run with the repo's venv)")
    return found


# ---- processes --------------------------------------------------------------------------
class Proc:
    """A child in its own process group (its trial processes too), logging to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        with self.log.open("w") as out:
            self.popen = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} ignored SIGTERM for {timeout:g} s; killing it")
        # whatever is left of its group (the leader, or trial processes it left behind)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
    env.update(
        HSSL_DATABASE_URL=settings.resolved_database_url,
        HSSL_DATA_DIR=str(settings.data_dir),
        HSSL_DATA_ROOT=str(settings.resolved_data_root),
        HSSL_LOCAL_WORKERS=str(settings.local_workers),
        HSSL_POOL_SIZE=str(settings.pool_size),
        HSSL_MAX_OVERFLOW=str(settings.max_overflow),
        HSSL_RATE_LIMIT_PER_MINUTE=str(settings.rate_limit_per_minute),
        HSSL_MAX_CONCURRENT_SEARCHES=str(settings.max_concurrent_searches),
        HSSL_QUEUE=settings.queue,
    )
    return env


def api_command(server: str, port: int) -> list[str]:
    """``serve``: ``hssl serve`` (with HSSL_LOCAL_WORKERS=0 its dispatcher defers to
    procrastinate); ``uvicorn``: the module-level ``service.api:app``, as deployed behind
    ``uvicorn`` (whatever dispatcher that app has)."""
    if server == "serve":
        return [hssl_bin(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    uvicorn = [sys.executable, "-m", "uvicorn", "service.api:app"]
    return [*uvicorn, "--host", "127.0.0.1", "--port", str(port)]


def start_api(settings: Settings, workdir: Path, name: str, server: str) -> tuple[Proc, str]:
    with ReservedPort() as port:  # held until the server listens on it
        proc = Proc(name, api_command(server, port), child_env(settings), workdir)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            if not proc.alive():
                raise RuntimeError(f"{name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return proc, url
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready in 120 s:\n{proc.tail()}")
            time.sleep(0.2)


# ---- database ---------------------------------------------------------------------------
def make_key(settings: Settings, tenant_name: str) -> str:
    """A tenant whose quotas never bind, and its key."""
    engine = create_engine(settings.resolved_database_url, poolclass=pool.NullPool)
    try:
        with session_scope(engine) as s:
            tenant = store.create_tenant(
                s,
                tenant_name,
                max_concurrent=settings.max_concurrent_searches,
                max_trials=settings.max_trials_per_search,
            )
            key, _ = store.create_api_key(s, tenant, name="bench")
        return key
    finally:
        engine.dispose()


def monitor(conninfo: str) -> psycopg.Connection:
    """A connection of this script's own (named, so the sampler does not count it)."""
    return psycopg.connect(conninfo, autocommit=True, application_name=BENCH_APP)


def pool_max(settings: Settings) -> int:
    """Our SQLAlchemy engine's ceiling in one process (``service.persistence.db.engine_for``)."""
    return settings.pool_size + settings.max_overflow


def procrastinate_pool_max(settings: Settings) -> int:
    """The procrastinate connector's pool ceiling, as ``service.jobs.tasks.make_app`` builds it
    (read from the connector; building it connects to nothing)."""
    return int(make_app(settings).connector._pool_args["max_size"])


def optuna_pool_max(settings: Settings) -> int:
    """One Optuna storage's pool ceiling (``search.storage.make_storage``: one storage per
    running search)."""
    kwargs = optuna_engine_kwargs(settings.resolved_optuna_url)
    return kwargs["pool_size"] + kwargs["max_overflow"]


def api_budget(settings: Settings) -> dict[str, int]:
    """One API process: our engine, plus procrastinate's pool when it defers to workers
    (PostgreSQL and HSSL_LOCAL_WORKERS=0, under `hssl serve` and `uvicorn service.api:app`)."""
    defers = settings.is_postgres and settings.local_workers == 0
    return {
        "sqlalchemy_pool": pool_max(settings),
        "procrastinate_pool": procrastinate_pool_max(settings) if defers else 0,
    }


def worker_budget(settings: Settings, concurrency: int) -> dict[str, int]:
    """One `hssl worker`: procrastinate's pool and its LISTEN connection (opened beside the
    pool), our engine (job rows, heartbeats, events), one Optuna storage per running search."""
    return {
        "procrastinate_pool": procrastinate_pool_max(settings),
        "procrastinate_listen": 1,
        "sqlalchemy_pool": pool_max(settings),
        "optuna_storage_pools": concurrency * optuna_pool_max(settings),
    }


class ConnectionSampler:
    """Backends connected to one database (this script's own excluded), every ``every`` s."""

    QUERY = """
        SELECT count(*), count(*) FILTER (WHERE state = 'active'),
               count(*) FILTER (WHERE state LIKE 'idle in transaction%%')
        FROM pg_stat_activity
        WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> %s
    """

    def __init__(self, conninfo: str, dbname: str, every: float = 1.0) -> None:
        self.conninfo, self.dbname, self.every = conninfo, dbname, every
        self.samples: list[tuple[int, int, int]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pg-sampler", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        try:
            with monitor(self.conninfo) as conn:
                while True:
                    row = conn.execute(self.QUERY, (self.dbname, BENCH_APP)).fetchone()
                    self.samples.append(tuple(row))  # type: ignore[arg-type]
                    if self._stop.wait(self.every):
                        return
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"max": None, "max_active": None, "samples": 0, "error": self.error}
        return {
            "max": max(s[0] for s in self.samples),
            "max_active": max(s[1] for s in self.samples),
            "max_idle_in_transaction": max(s[2] for s in self.samples),
            "samples": len(self.samples),
            "error": self.error,
        }


# ---- CPU accounting ---------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(root: int | None) -> float:
    """CPU seconds of a live process and its live descendants (exited ones are lost)."""
    if root is None:
        return 0.0
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    total, todo, seen = 0.0, [root], set()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def postmaster_pid(cluster: Cluster) -> int | None:
    assert cluster.root is not None
    try:
        return int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuWindow:
    """Cores used by each part between ``start()`` and ``stop()``."""

    def __init__(self, parts: dict[str, int | None]) -> None:
        self.parts = parts

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {name: self._cpu(name, pid) for name, pid in self.parts.items()}
        self.machine0 = machine_busy()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        out: dict[str, Any] = {
            f"{name}_cores": round(max(self._cpu(name, pid) - self.cpu0[name], 0.0) / wall, 2)
            for name, pid in self.parts.items()
        }
        busy, total = machine_busy()
        out["machine_busy_fraction"] = round(
            (busy - self.machine0[0]) / max(total - self.machine0[1], 1), 3
        )
        return out

    @staticmethod
    def _cpu(name: str, pid: int | None) -> float:
        if name == "load_generator":
            t = os.times()
            return t.user + t.system
        return tree_cpu(pid)


# ---- phase 1: load ----------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


class LoadStats:
    def __init__(self, routes: tuple[str, ...] = ROUTES) -> None:
        self.names = routes
        self.latency: dict[str, list[float]] = {r: [] for r in routes}
        self.attempts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.samples: Counter[str] = Counter()

    def error(self, route: str, message: str) -> None:
        self.errors[route] += 1
        message = " ".join(message.split())[:240]
        if message in self.samples or len(self.samples) < 10:
            self.samples[message] += 1

    def routes(self) -> dict[str, Any]:
        return {
            route: {
                "count": self.attempts[route],
                "ok": len(self.latency[route]),
                "errors": self.errors[route],
                **latency_summary(self.latency[route]),
            }
            for route in self.names
        }

    def overall(self) -> dict[str, Any]:
        """Every successful request's latency, whatever its route."""
        return latency_summary([v for values in self.latency.values() for v in values])


def latency_summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


def route_mix(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(route, cumulative probability) of one client's draw; ``list`` takes what is left."""
    shares = {
        "submit": args.submit_fraction,
        "status": args.status_fraction,
        "trials": args.trials_fraction,
    }
    shares["list"] = 1.0 - sum(shares.values())
    if min(shares.values()) < -1e-9:
        raise SystemExit(f"the route fractions must be >= 0 and sum to <= 1: {shares}")
    mix, total = [], 0.0
    for route in ROUTES:
        if shares[route] > 1e-9:
            total += shares[route]
            mix.append((route, total))
    return mix


def shares(mix: list[tuple[str, float]]) -> dict[str, float]:
    cuts = [0.0] + [cut for _, cut in mix]
    return {route: round(cuts[i + 1] - cuts[i], 3) for i, (route, _) in enumerate(mix)}


def pick(mix: list[tuple[str, float]], draw: float) -> str:
    return next((route for route, cut in mix if draw < cut), mix[-1][0])


async def run_load(
    url: str, key: str, args: argparse.Namespace, on_start=lambda: None
) -> dict[str, Any]:
    body = json.dumps(TINY_SEARCH).encode()
    json_headers = {"Content-Type": "application/json"}
    mix = route_mix(args)
    stats = LoadStats(tuple(route for route, _ in mix))
    ids: list[str] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    async def submit(client: httpx.AsyncClient) -> httpx.Response:
        headers = {**json_headers, "Idempotency-Key": uuid.uuid4().hex}
        return await client.post("/v1/searches", content=body, headers=headers)

    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=args.request_timeout,
        limits=limits,
    ) as client:
        # warm-up (not timed): imports, the engine, the procrastinate app; ids for `status`
        for _ in range(args.seed_searches):
            response = await submit(client)
            response.raise_for_status()
            ids.append(response.json()["id"])
        for _ in range(3):
            (await client.get("/v1/searches", params={"limit": 20})).raise_for_status()
            (await client.get(f"/v1/searches/{ids[0]}")).raise_for_status()

        # one client, one request at a time: the service time without queueing
        single: dict[str, list[float]] = {r: [] for r in ("submit", "status", "list")}
        for i in range(args.single_client_requests):
            route = "submit" if i % 10 == 0 else "status" if i % 10 < 7 else "list"
            t0 = time.perf_counter()
            if route == "submit":
                response = await submit(client)
            elif route == "status":
                response = await client.get(f"/v1/searches/{ids[i % len(ids)]}")
            else:
                response = await client.get("/v1/searches", params={"limit": 20})
            single[route].append(time.perf_counter() - t0)
            response.raise_for_status()
            if route == "submit":
                ids.append(response.json()["id"])
        single_client = {
            f"{route}_p50_ms": ms(percentile(sorted(values), 0.5))
            for route, values in single.items()
        }

        async def call(route: str, rng: random.Random) -> httpx.Response:
            if route == "submit":
                return await submit(client)
            if route == "list":
                return await client.get("/v1/searches", params={"limit": 20})
            suffix = "/trials" if route == "trials" else ""
            return await client.get(f"/v1/searches/{rng.choice(ids)}{suffix}")

        on_start()
        deadline = time.perf_counter() + args.seconds

        async def one_client(index: int) -> None:
            rng = random.Random(args.seed * 1000 + index)
            while time.perf_counter() < deadline:
                route = pick(mix, rng.random())
                stats.attempts[route] += 1
                t0 = time.perf_counter()
                try:
                    response = await call(route, rng)
                    elapsed = time.perf_counter() - t0
                except Exception as exc:
                    stats.error(route, f"{route}: {type(exc).__name__}: {exc}")
                    continue
                if 200 <= response.status_code < 300:
                    stats.latency[route].append(elapsed)
                    if route == "submit":
                        ids.append(response.json()["id"])
                else:
                    stats.error(route, f"{route}: HTTP {response.status_code} {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(args.clients)))
        elapsed = time.perf_counter() - started

    total = sum(stats.attempts.values())
    return {
        "routes": stats.routes(),
        "overall": stats.overall(),
        "errors": sum(stats.errors.values()),
        "error_samples": [f"{n}x {m}" for m, n in stats.samples.most_common()],
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "load_elapsed_s": round(elapsed, 2),
        "searches_submitted": len(ids),
        "single_client": {"requests": args.single_client_requests, **single_client},
    }


# ---- phase 2: dispatch latency ----------------------------------------------------------
def one_dispatch(conn: psycopg.Connection, url: str, key: str, timeout: float) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    body = {**TINY_SEARCH, "name": f"dispatch-{uuid.uuid4().hex[:8]}"}
    t0 = time.time()
    response = httpx.post(f"{url}/v1/searches", json=body, headers=headers, timeout=30)
    ack = time.time() - t0
    response.raise_for_status()
    sid = response.json()["id"]

    def first(kind: str) -> float | None:
        row = conn.execute(
            "SELECT extract(epoch FROM min(created_at)) FROM search_events "
            "WHERE search_id = %s AND kind = %s",
            (sid, kind),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def final() -> tuple[str, float | None] | None:
        row = conn.execute(
            "SELECT status, extract(epoch FROM finished_at) FROM searches WHERE id = %s", (sid,)
        ).fetchone()
        if row and row[0] in FINAL:
            return row[0], float(row[1]) if row[1] is not None else time.time()
        return None

    # procrastinate's own timestamps (its job and events are deleted once it succeeds, so
    # they are read while it runs): deferred by the API → taken by the worker
    queue_events: dict[str, float] = {}

    def watch_queue() -> None:
        if "started" in queue_events:
            return
        rows = conn.execute(
            "SELECT e.type::text, extract(epoch FROM min(e.at)) FROM procrastinate_events e "
            "JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.queueing_lock = %s "
            "GROUP BY e.type",
            (sid,),
        ).fetchall()
        queue_events.update({kind: float(at) for kind, at in rows if at is not None})

    def started() -> float | None:
        watch_queue()
        if final():  # failed before any trial: no trial.started will come
            return -1.0
        return first("trial.started")

    started_at = wait_until(started, timeout, every=0.02, what="the first trial.started")
    running_at = first("search.running")

    def since(at: float | None, digits: int = 3) -> float | None:
        return None if at is None else round(at - t0, digits)

    status, finished_at = wait_until(final, timeout, every=0.2, what="the search to finish")
    job = conn.execute("SELECT status FROM jobs WHERE search_id = %s", (sid,)).fetchone()
    return {
        "search_id": sid,
        "submit_ack_ms": round(ack * 1000, 1),
        "deferred_s": since(queue_events.get("deferred")),
        "worker_took_job_s": since(queue_events.get("started")),
        "search_running_s": since(running_at),
        "dispatch_latency_s": None if started_at < 0 else round(started_at - t0, 3),
        "search_completed_s": None if finished_at is None else round(finished_at - t0, 2),
        "status": status,
        "job_status": job[0] if job else None,
    }


@contextlib.contextmanager
def supervised() -> Iterator[list[Proc]]:
    """The server processes a phase starts (append them): their log tails are printed if the
    phase fails, and every one is stopped at its end, last started first."""
    procs: list[Proc] = []
    try:
        yield procs
    except Exception:
        for proc in procs:
            say(f"--- {proc.name} log tail ---\n{proc.tail()}")
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()


def run_dispatch(
    cluster: Cluster, dbname: str, settings: Settings, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    key = make_key(settings, "bench-dispatch")
    with supervised() as procs:
        api, url = start_api(settings, workdir, "api-dispatch", args.server)
        procs.append(api)
        worker = Proc(
            "worker", [hssl_bin(), "worker", "--concurrency", "1"], child_env(settings), workdir
        )
        procs.append(worker)
        with monitor(cluster.conninfo(dbname)) as conn:

            def worker_up() -> bool:
                if not worker.alive():
                    raise RuntimeError(f"the worker exited:\n{worker.tail()}")
                row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
                return bool(row and row[0])

            wait_until(worker_up, 120, every=0.2, what="the worker to register")
            time.sleep(args.worker_settle)  # idle: its start-up maintenance job is done
            with ConnectionSampler(cluster.conninfo(), dbname) as sampler:
                runs = [
                    one_dispatch(conn, url, key, args.complete_timeout)
                    for _ in range(args.dispatch_runs)
                ]
        return {"runs": runs, "db_connections": sampler.summary()}


# ---- soak: the load while workers run trials ----------------------------------------------
SOAK_ACTIVITY = """
    SELECT count(*) FILTER (WHERE kind = 'trial.started'),
           count(*) FILTER (WHERE kind = 'trial.finished'),
           count(*) FILTER (WHERE kind = 'trial.finished' AND data->>'state' = 'COMPLETE'),
           count(*) FILTER (WHERE kind = 'search.completed'),
           count(*) FILTER (WHERE kind = 'search.failed')
    FROM search_events WHERE created_at >= to_timestamp(%s) AND created_at < to_timestamp(%s)
"""
LOG_PROBLEMS = (" ERROR ", " CRITICAL ", "Traceback (most recent call last)")


def start_workers(settings: Settings, workdir: Path, args: argparse.Namespace) -> list[Proc]:
    env = {"OMP_NUM_THREADS": "1", **child_env(settings)}  # trials: one thread, as in the tests
    command = [hssl_bin(), "worker", "--concurrency", str(args.worker_concurrency)]
    return [
        Proc(f"worker-{i}", [*command, "--name", f"soak-{i}"], env, workdir)
        for i in range(args.soak_workers)
    ]


def wait_registered(conn: psycopg.Connection, workers: list[Proc]) -> None:
    def registered() -> bool:
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"{worker.name} exited:\n{worker.tail()}")
        row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
        return bool(row and row[0] >= len(workers))

    wait_until(registered, 120, every=0.2, what="the workers to register")


def wait_running(conn: psycopg.Connection, timeout: float) -> None:
    """Until a worker runs a search (so trials run from the first second of the soak)."""

    def running() -> bool:
        row = conn.execute("SELECT 1 FROM search_events WHERE kind = 'trial.started' LIMIT 1")
        return row.fetchone() is not None

    wait_until(running, timeout, every=0.2, what="a worker to start a trial")


def soak_activity(conn: psycopg.Connection, t0: float, t1: float) -> dict[str, Any]:
    """What the workers did between t0 and t1 (epoch seconds), from the events they wrote."""
    row = conn.execute(SOAK_ACTIVITY, (t0, t1)).fetchone()
    errors = conn.execute(
        "SELECT error, count(*) FROM searches WHERE status = 'failed' "
        "GROUP BY error ORDER BY count(*) DESC LIMIT 5"
    ).fetchall()
    return {
        "runs_started": row[0],  # trial.started: one per run (a joint run trains every head)
        "trials_finished": row[1],
        "trials_complete": row[2],
        "searches_completed": row[3],
        "searches_failed": row[4],
        "search_error_samples": [f"{n}x {(e or '')[:240]}" for e, n in errors],
    }


def log_problems(procs: list[Proc]) -> dict[str, Any]:
    """ERROR/CRITICAL lines and tracebacks in the servers' own logs."""
    out: dict[str, Any] = {}
    for proc in procs:
        try:
            lines = proc.log.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        bad = [line for line in lines if any(mark in line for mark in LOG_PROBLEMS)]
        out[proc.name] = {"problems": len(bad), "samples": [b[:240] for b in bad[:3]]}
    return out


def soak_budget(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    api = api_budget(settings)
    worker = worker_budget(settings, args.worker_concurrency)
    total = sum(api.values()) + args.soak_workers * sum(worker.values())
    return {"api": api, "per_worker": worker, "workers": args.soak_workers, "total": total}


def run_soak(
    cluster: Cluster, dbname: str, settings: Settings, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """``--clients`` clients for ``--seconds`` against the API while ``--soak-workers``
    `hssl worker` processes run the searches they (and the warm-up) submit."""
    key = make_key(settings, "bench-soak")
    clock: dict[str, float] = {}
    with (
        supervised() as procs,
        ConnectionSampler(cluster.conninfo(), dbname) as sampler,
        monitor(cluster.conninfo(dbname)) as conn,
    ):
        api, url = start_api(settings, workdir, "api-soak", args.server)
        procs.append(api)
        workers = start_workers(settings, workdir, args)
        procs.extend(workers)
        wait_registered(conn, workers)
        parts = {"api": api.pid, "postgres": postmaster_pid(cluster), "load_generator": None}
        window = CpuWindow({**parts, **{w.name: w.pid for w in workers}})

        def on_start() -> None:  # after the warm-up submitted the first searches
            wait_running(conn, args.soak_start_timeout)
            clock["t0"] = time.time()
            window.start()

        say(f"soak: {args.clients} clients for {args.seconds:g} s, {len(workers)} worker(s)")
        load = asyncio.run(run_load(url, key, args, on_start=on_start))
        clock["t1"] = time.time()
        cpu = window.stop()
        activity = soak_activity(conn, clock["t0"], clock["t1"])
    # after the stop: the logs are complete
    return soak_result(load, sampler.summary(), soak_budget(settings, args), activity, cpu, procs)


def soak_result(
    load: dict[str, Any],
    connections: dict[str, Any],
    budget: dict[str, Any],
    activity: dict[str, Any],
    cpu: dict[str, Any],
    procs: list[Proc],
) -> dict[str, Any]:
    peak = connections["max"]
    within = peak is not None and peak <= budget["total"]
    status_p99 = load["routes"].get("status", {}).get("p99_ms")
    return {
        **load,
        "p99_ms": load["overall"]["p99_ms"],
        "db_connections_max": peak,
        "db_connection_budget": budget["total"],
        "within_budget": within,
        "db_connections": {**connections, "budget": budget},
        **activity,
        "server_logs": log_problems(procs),
        "cpu": cpu,
        "targets": {
            "zero_errors": load["errors"] == 0,
            "within_budget": within,
            "trials_ran": activity["trials_finished"] > 0,
            "status_p99_le_50ms": status_p99 is not None and status_p99 <= 50,
        },
    }


# ---- main -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--server",
        choices=["serve", "uvicorn"],
        default="serve",
        help="the API process: `hssl serve` or `uvicorn service.api:app`",
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="instead of phases 1 and 2: the load while `hssl worker` processes run trials",
    )
    p.add_argument("--clients", type=int, default=None, help="default 50 (soak: 100)")
    p.add_argument("--seconds", type=float, default=None, help="default 30 (soak: 120)")
    p.add_argument("--submit-fraction", type=float, default=0.10)
    p.add_argument("--status-fraction", type=float, default=0.60)
    p.add_argument(
        "--trials-fraction", type=float, default=None, help="default 0 (soak: 0.15); list: the rest"
    )
    p.add_argument("--seed-searches", type=int, default=20, help="submitted before the clock")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--single-client-requests", type=int, default=50, help="before the load")
    p.add_argument("--pool-size", type=int, default=None, help="default: Settings' default")
    p.add_argument("--max-overflow", type=int, default=None, help="default: Settings' default")
    p.add_argument("--dispatch-runs", type=int, default=2, help="searches timed one by one")
    p.add_argument("--worker-settle", type=float, default=3.0)
    p.add_argument("--complete-timeout", type=float, default=900.0)
    p.add_argument("--skip-dispatch", action="store_true")
    p.add_argument("--soak-workers", type=int, default=2, help="`hssl worker` processes")
    p.add_argument("--worker-concurrency", type=int, default=1, help="searches per worker")
    p.add_argument(
        "--soak-start-timeout", type=float, default=300.0, help="for the first trial to start"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    soak = {"clients": 100, "seconds": 120.0, "trials_fraction": 0.15}
    plain = {"clients": 50, "seconds": 30.0, "trials_fraction": 0.0}
    for name, value in (soak if args.soak else plain).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def settings_factory(cluster: Cluster, workdir: Path, args: argparse.Namespace):
    """Settings for one database of the cluster: the production path (PostgreSQL, searches
    deferred to procrastinate workers), quotas that never bind."""
    overrides: dict[str, Any] = {}
    if args.pool_size is not None:
        overrides["pool_size"] = args.pool_size
    if args.max_overflow is not None:
        overrides["max_overflow"] = args.max_overflow

    def settings_for(dbname: str) -> Settings:
        return Settings(
            _env_file=None,
            database_url=cluster.url(dbname),
            data_dir=workdir / f"data-{dbname}",
            data_root=workdir,
            local_workers=0,
            rate_limit_per_minute=GENEROUS,
            max_concurrent_searches=GENEROUS,
            **overrides,
        )

    return settings_for


def run_phases(
    cluster: Cluster, template: str, settings_for, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Phase 1 (the load, no worker) then phase 2 (dispatch latency)."""
    result: dict[str, Any] = {}
    load_db = cluster.create_database(template=template, name="hssl_bench_load")
    dispatch_db = cluster.create_database(template=template, name="hssl_bench_dispatch")

    # ---- phase 1
    load_settings = settings_for(load_db)
    key = make_key(load_settings, "bench-load")
    api, url = start_api(load_settings, workdir, "api-load", args.server)
    try:
        say(f"phase 1: {args.clients} clients for {args.seconds:g} s against {url}")
        window = CpuWindow(
            {"api": api.pid, "postgres": postmaster_pid(cluster), "load_generator": None}
        )
        with ConnectionSampler(cluster.conninfo(), load_db) as sampler:
            load = asyncio.run(run_load(url, key, args, on_start=window.start))
            cpu = window.stop()
    except Exception:
        say(f"--- {api.name} log tail ---\n{api.tail()}")
        raise
    finally:
        api.stop()
    connections = sampler.summary()
    # the API defers with its own procrastinate pool (psycopg_pool) beside SQLAlchemy's
    api_parts = api_budget(load_settings)
    budget = api_parts["sqlalchemy_pool"]
    procrastinate_max = api_parts["procrastinate_pool"]
    result.update(load)
    result["db_connections_max"] = connections["max"]
    result["db_connection_budget"] = budget
    result["db_connections"] = {
        **connections,
        "sqlalchemy_pool": {
            "pool_size": load_settings.pool_size,
            "max_overflow": load_settings.max_overflow,
        },
        "procrastinate_pool_max": procrastinate_max,
        "budget_with_procrastinate": budget + procrastinate_max,
    }
    cpu["api_cpu_ms_per_request"] = round(
        cpu["api_cores"] * load["load_elapsed_s"] / max(load["requests"], 1) * 1000, 2
    )
    result["cpu"] = cpu
    say(f"phase 1: {load['requests']} requests, {load['errors']} errors")

    # ---- phase 2
    dispatch: dict[str, Any] = {}
    if not args.skip_dispatch:
        say(f"phase 2: {args.dispatch_runs} tiny search(es) through an idle worker")
        dispatch = run_dispatch(cluster, dispatch_db, settings_for(dispatch_db), workdir, args)
        runs = dispatch["runs"]
        # the first search a fresh idle worker takes, then (warm) the later ones
        result["dispatch_latency_s"] = runs[0]["dispatch_latency_s"]
        result["search_completed_s"] = runs[0]["search_completed_s"]
        if len(runs) > 1:
            result["dispatch_latency_warm_s"] = runs[-1]["dispatch_latency_s"]
            result["search_completed_warm_s"] = runs[-1]["search_completed_s"]
        result["dispatch_runs"] = runs
        result["dispatch_db_connections"] = dispatch["db_connections"]

    status_p99 = result["routes"]["status"]["p99_ms"]
    latencies = [r["dispatch_latency_s"] for r in dispatch.get("runs", [])]

    def within(values: list[float | None]) -> bool | None:
        if not values:
            return None
        return all(v is not None and v <= 2.0 for v in values)

    result["targets"] = {
        "zero_errors": result["errors"] == 0,
        "status_p99_le_50ms": status_p99 is not None and status_p99 <= 50,
        "dispatch_le_2s": within(latencies[:1]),
        "dispatch_warm_le_2s": within(latencies[1:]),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="hssl-api-load-"))
    os.chmod(workdir, 0o755)
    cluster = Cluster()
    result: dict[str, Any] = {
        "bench": "api_load",
        "mode": "soak" if args.soak else "load+dispatch",
        "server": args.server,
        "clients": args.clients,
        "seconds": args.seconds,
        "mix": shares(route_mix(args)),
    }
    try:
        cluster.start()
        say(f"PostgreSQL on 127.0.0.1:{cluster.port}; workdir {workdir}")
        settings_for = settings_factory(cluster, workdir, args)
        template = cluster.create_database(name="hssl_bench_template")
        t0 = time.monotonic()
        migrate(settings_for(template))
        result["migrate_s"] = round(time.monotonic() - t0, 2)
        cluster.mark_template(template)
        if args.soak:
            soak_db = cluster.create_database(template=template, name="hssl_bench_soak")
            result["workers"] = args.soak_workers
            result["worker_concurrency"] = args.worker_concurrency
            result.update(run_soak(cluster, soak_db, settings_for(soak_db), workdir, args))
        else:
            result.update(run_phases(cluster, template, settings_for, workdir, args))
        result["machine"] = {
            "cores": os.cpu_count(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "note": "load generator, API, PostgreSQL and the workers with their trial "
            "processes share these cores (and whatever else runs on the machine)",
        }
        print(json.dumps(result), flush=True)
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
