"""Fan-out scaling; one JSON line. Not a test: figures, printed.

(a) ``orchestration``: one independent search of 32 runs (8 heads x 4 seeds) on a real
    PostgreSQL, run by 1, 2, 4 and 8 ``hssl worker --slots 1`` processes. Each run is the
    bench-only sleeping stand-in (``bench/sleeping_worker.py``, ``--sleep`` seconds): it
    measures our orchestration (shards, claims, ask/tell, events, the final ranking), not this
    machine's two cores. Runs per hour from the first claim to the search's end; ``speedup``
    vs 1 worker, target >= 0.9 N.
(b) ``slots``: real tiny HSSL runs (trial processes, one thread each) through the embedded
    dispatcher on SQLite, 1 slot vs 2 slots on this 2-core machine; target >= 1.7x.
(c) ``overhead``: bench/overhead.py (per-run overhead of the trial process, cold vs warm pool).
(d) ``api``: bench/api_cost.py (API start, RSS, CPU per status GET vs /healthz).

    python bench/scaling.py [--parts a,b,c,d] [--sleep 4] [--workers 1,2,4,8]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, text  # noqa: E402

from search.spec import SearchSpec  # noqa: E402
from service.persistence.db import engine_for, session_scope  # noqa: E402
from service.persistence.migrate import migrate  # noqa: E402
from service.persistence.models import SearchRun  # noqa: E402
from service.persistence.settings import Settings  # noqa: E402
from tests.dispatch_helpers import new_search, search_row  # noqa: E402
from tests.pg import Cluster  # noqa: E402

SLEEPING_WORKER = ROOT / "bench" / "sleeping_worker.py"  # `hssl` whose trials sleep
HEADS = [
    "convnext:depth=1,kernel=3",
    "convnext:depth=1,kernel=5",
    "convnext:depth=2,kernel=3",
    "convnext:depth=2,kernel=5",
    "mlp:depth=1",
    "mlp:depth=2",
    "transformer:depth=1",
    "transformer:depth=2",
]
BASE = {"name": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4, "depth": 1, "width": 32}
SMALL = {"out_dim": 64, "proj_hidden": 32, "proj_bottleneck": 16, "linear_probe": False}


def spec(heads: list[str], seeds: int, epochs: int, data_limit: int) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "base": BASE,
            "data": "synthetic",
            "strategy": "independent",
            "space": {"heads": heads},
            "budget": {
                "epochs": epochs,
                "seeds": seeds,
                "batch_size": 16,
                "data_limit": data_limit,
            },
            "trial_overrides": SMALL,
        }
    )


def settings_for(url: str | None, data_dir: Path, **kw) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, database_url=url, **kw)


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def final(settings: Settings, sid: uuid.UUID) -> str | None:
    status = search_row(settings, sid).status
    return status if status in ("completed", "failed", "cancelled") else None


def run_span(settings: Settings, sid: uuid.UUID) -> float:
    """Seconds from the search's first claim to its finish."""
    return phases(settings, sid)["total_s"]


def phases(settings: Settings, sid: uuid.UUID) -> dict[str, float]:
    """Where the time went: first claim → last run's end (runs), → the search's end (the last
    shard's ranking, plot and recommendation), and the mean gap on a shard between one run's
    end and its next claim."""
    with session_scope(engine_for(settings.resolved_database_url)) as s:
        rows = s.execute(
            select(SearchRun.job_id, SearchRun.started_at, SearchRun.finished_at).where(
                SearchRun.search_id == sid
            )
        ).all()
    first = min(r.started_at for r in rows)
    last = max(r.finished_at for r in rows)
    end = search_row(settings, sid).finished_at
    gaps = []
    for job in {r.job_id for r in rows}:
        spans = sorted((r.started_at, r.finished_at) for r in rows if r.job_id == job)
        gaps += [(b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(spans)]
    jobs = sorted({r.job_id for r in rows})
    return {
        "runs_per_shard": sorted(sum(1 for r in rows if r.job_id == j) for j in jobs),
        "shard_first_claim_s": sorted(
            round((min(r.started_at for r in rows if r.job_id == j) - first).total_seconds(), 2)
            for j in jobs
        ),
        "total_s": (end - first).total_seconds(),
        "runs_s": round((last - first).total_seconds(), 2),
        "finish_s": round((end - last).total_seconds(), 2),
        "gap_between_runs_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
    }


def orchestration(workers: list[int], sleep_s: float) -> dict:
    from service.jobs.tasks import ProcrastinateDispatcher

    cluster = Cluster().start()
    out = {}
    try:
        for n in workers:
            db = cluster.create_database()
            data_dir = Path(tempfile.mkdtemp(prefix=f"hssl-scale-{n}-"))
            settings = settings_for(cluster.url(db), data_dir, local_workers=0)
            migrate(settings)
            env = {
                **os.environ,
                "HSSL_DATABASE_URL": settings.resolved_database_url,
                "HSSL_DATA_DIR": str(data_dir),
                "HSSL_LOCAL_WORKERS": "0",
                "HSSL_WARM_POOL": "0",
            }
            log = (data_dir / "workers.log").open("a")
            procs = [
                subprocess.Popen(
                    [sys.executable, str(SLEEPING_WORKER), str(sleep_s), "worker", "--slots", "1"],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
                for _ in range(n)
            ]
            engine = engine_for(settings.resolved_database_url)

            def listening(engine=engine, n=n) -> bool:
                with engine.connect() as conn:
                    count = conn.execute(text("SELECT count(*) FROM procrastinate_workers"))
                    return count.scalar() >= n

            try:
                wait(listening, 300, f"{n} workers to start")
                sid = new_search(settings, spec(HEADS, 4, 1, 32))
                dispatcher = ProcrastinateDispatcher(settings)
                dispatcher.start()
                dispatcher.submitted(sid, settings.queue)
                status = wait(lambda sid=sid, st=settings: final(st, sid), 1800, "the search")
                dispatcher.stop()
                span = run_span(settings, sid)
                out[str(n)] = {
                    **phases(settings, sid),
                    "status": status,
                    "runs": 32,
                    "seconds": round(span, 1),
                    "runs_per_hour": round(32 / span * 3600),
                    "ideal_runs_per_hour": round(n / sleep_s * 3600),
                }
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=60)
    finally:
        cluster.stop()
    one = out["1"]["runs_per_hour"] if "1" in out else None  # the speed-up needs N = 1
    for n in workers:
        row = out[str(n)]
        row["efficiency"] = round(row["runs_per_hour"] / row["ideal_runs_per_hour"], 2)
        if one:
            row["speedup"] = round(row["runs_per_hour"] / one, 2)
            row["target"] = round(0.9 * n, 2)
            row["meets_target"] = row["speedup"] >= row["target"]
    return {"sleep_s": sleep_s, "by_workers": out}


def slots(epochs: int, data_limit: int) -> dict:
    from service.jobs.local import LocalDispatcher

    out = {}
    for n in (1, 2):
        data_dir = Path(tempfile.mkdtemp(prefix=f"hssl-slots-{n}-"))
        settings = settings_for(None, data_dir, local_workers=n, warm_pool=False)
        migrate(settings)
        sid = new_search(settings, spec(HEADS[:2] + HEADS[4:6], 1, epochs, data_limit))
        dispatcher = LocalDispatcher(settings, n, poll_s=0.2)
        dispatcher.start()
        dispatcher.submitted(sid, settings.queue)
        wait(lambda sid=sid, st=settings: final(st, sid), 3600, "the search")
        dispatcher.stop()
        span = run_span(settings, sid)
        out[str(n)] = {"status": search_row(settings, sid).status, "seconds": round(span, 1)}
    speedup = out["1"]["seconds"] / out["2"]["seconds"]
    return {
        "runs": 4,
        "epochs": epochs,
        "data_limit": data_limit,
        "threads_per_trial": 1,
        "by_slots": out,
        "speedup": round(speedup, 2),
        "target": 1.7,
        "meets_target": speedup >= 1.7,
    }


def sub_bench(script: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c,d")
    parser.add_argument("--sleep", type=float, default=4.0)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-limit", type=int, default=320)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    figures: dict = {"bench": "scaling", "cpus": os.cpu_count()}
    if "a" in parts:
        figures["orchestration"] = orchestration(
            [int(n) for n in args.workers.split(",")], args.sleep
        )
    if "b" in parts:
        figures["slots"] = slots(args.epochs, args.data_limit)
    if "c" in parts:
        figures["overhead"] = sub_bench("overhead.py")
    if "d" in parts:
        figures["api"] = sub_bench("api_cost.py")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
