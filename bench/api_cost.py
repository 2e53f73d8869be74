"""What one API process costs: start-up time, memory, and server CPU per request.

Prints one JSON line. Starts ``uvicorn service.api:app`` (the production command; access log
on, as in production) as a subprocess with ``HSSL_LOCAL_WORKERS=0`` and SQLite under a temporary
data directory, after migrating it and creating a tenant and its key with the ``hssl`` admin
commands (``service.cli.admin``). Then:

- ``start_s``: from spawning the server to the first 200 of ``/healthz``;
- ``rss_mb``: the server's VmRSS (``/proc/PID/status``) once started and after the requests,
  and ``hwm_mb``, its peak (VmHWM);
- ``cpu_us``: server CPU (utime + stime of ``/proc/PID/stat``, all threads) per request over
  ``--requests`` keep-alive requests of one ``httpx.Client``, for ``GET /healthz`` and for the
  status of a real search row (``GET /v1/searches/{id}``, submitted through the API and left
  queued: no worker runs). The two paths alternate in blocks of 50 requests (the machine's
  other load then weighs on both alike); each round measures ``--requests`` of each, after a
  warm-up; ``cpu_us`` is the median round, ``ratio`` the median of the rounds' status/healthz
  (target <= 1.5).

The server's clock ticks are 10 ms (``SC_CLK_TCK``): a block of 50 requests of ~2 ms is ~10
ticks, so single blocks are coarse but the sums over a round are not biased.

    .venv/bin/python bench/api_cost.py
    .venv/bin/python bench/api_cost.py --requests 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.net_helpers import ReservedPort  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
BLOCK = 50  # requests of one path between two readings of the server's CPU time
SPEC = {
    "base": {"name": "resnet18", "img_size": 32},
    "data": "synthetic",
    "space": {"families": ["convnext"]},
    "budget": {"epochs": 1},
}


def hssl(env: dict[str, str], *args: str) -> dict:
    """Run ``hssl <args>`` (the admin CLI) and parse the JSON it prints."""
    code = "from service.cli import app; app()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hssl {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14, 15 of proc(5)


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError("the server did not answer /healthz in time")


def stop_server(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_per_request(client: httpx.Client, pid: int, paths: dict[str, str], n: int) -> dict:
    """Server CPU per request (microseconds) of each ``GET path`` over ``n`` keep-alive
    requests each, interleaved in blocks of ``BLOCK`` so that the machine's other load weighs
    on every path alike."""
    spent = dict.fromkeys(paths, 0.0)
    for _ in range(max(1, n // BLOCK)):
        for name, path in paths.items():
            before = cpu_s(pid)
            for _ in range(BLOCK):
                r = client.get(path)
                if r.status_code != 200:
                    raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")
            spent[name] += cpu_s(pid) - before
    return {name: s / (max(1, n // BLOCK) * BLOCK) * 1e6 for name, s in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hssl-api-cost-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
        env.update(
            HSSL_DATA_DIR=str(Path(tmp) / "data"),
            HSSL_DATA_ROOT=tmp,
            HSSL_LOCAL_WORKERS="0",
            HSSL_RATE_LIMIT_PER_MINUTE=str(10**9),
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(REPO),
        )
        hssl(env, "migrate")
        hssl(env, "tenants", "create", "bench")
        key = hssl(env, "keys", "create", "--tenant", "bench")["key"]

        reserved = ReservedPort()  # held until the server listens on it
        port = reserved.port
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 (closed below)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.api:app", "--port", str(port)],
            env=env,
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(url, proc)
            start_s = time.monotonic() - started
            reserved.release()
            rss_started = memory_mb(proc.pid)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
                created = client.post("/v1/searches", json=SPEC)
                if created.status_code != 202:
                    raise RuntimeError(f"submit: {created.status_code} {created.text[:300]}")
                status_path = f"/v1/searches/{created.json()['id']}"
                paths = {"healthz": "/healthz", "status": status_path}
                cpu_per_request(client, proc.pid, paths, args.warmup)
                rounds = [
                    cpu_per_request(client, proc.pid, paths, args.requests)
                    for _ in range(args.rounds)
                ]
            per_request = {name: statistics.median(r[name] for r in rounds) for name in paths}
            ratios = [r["status"] / r["healthz"] for r in rounds]
            result = {
                "bench": "api_cost",
                "requests": args.requests,
                "rounds": args.rounds,
                "start_s": round(start_s, 2),
                "rss_mb": {
                    "started": round(rss_started, 1),
                    "after": round(memory_mb(proc.pid), 1),
                },
                "hwm_mb": round(memory_mb(proc.pid, "VmHWM"), 1),
                "cpu_us": {name: round(v) for name, v in per_request.items()},
                "cpu_us_rounds": {name: [round(r[name]) for r in rounds] for name in paths},
                "ratio": round(statistics.median(ratios), 2),
                "ratio_rounds": [round(x, 2) for x in ratios],
            }
        finally:
            stop_server(proc)
            log.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
