"""What the ``hssl serve`` process itself costs while its local workers run a search.

Prints one JSON line. Migrates SQLite under a temporary data directory and creates a tenant
and its key with the ``hssl`` admin commands, then starts ``hssl serve`` (local workers on, one
slot) and measures the server process (not its children):

- ``start_s``: from spawning it to the first 200 of ``/healthz``;
- ``rss_mb``: its VmRSS (``/proc/PID/status``) once started (``started``), after
  ``POST /v1/searches`` of a tiny joint search (``submitted``), and after reading the finished
  search's ranking and recommendation (``read``); ``hwm_mb`` its peak (VmHWM);
- ``search_s``: from the POST to the search's final status; ``status``: that status;
- ``torch_mapped``: whether libtorch was ever mapped into it (``/proc/PID/maps``).

Targets (issue 24): ``start_s`` <= 3, every ``rss_mb`` <= 250, ``torch_mapped`` false.

    .venv/bin/python bench/light_server.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
HSSL = Path(sys.executable).parent / "hssl"
FINAL = ("completed", "failed", "cancelled")
SPEC = {  # a joint run of three tiny heads on a tiny ViT: seconds of training
    "name": "light-server",
    "strategy": "joint",
    "base": {"name": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4, "depth": 1},
    "data": "synthetic",
    "space": {"heads": ["convnext:depth=1,kernel=3", "mlp:depth=1", "transformer:depth=1"]},
    "budget": {"epochs": 1, "batch_size": 16, "data_limit": 160},
    "trial_overrides": {
        "out_dim": 64,
        "proj_hidden": 32,
        "proj_bottleneck": 16,
        "linear_probe": False,
    },
}


def hssl(env: dict[str, str], *args: str) -> dict:
    """Run ``hssl <args>`` (an admin command) and parse the JSON it prints."""
    proc = subprocess.run([str(HSSL), *args], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"hssl {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def status_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for {pid}")


def torch_mapped(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "torch/lib" in maps


def wait_until(check, proc: subprocess.Popen, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hssl serve exited with {proc.returncode} waiting for {what}")
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def measure(env: dict[str, str], port: int, key: str, cwd: str) -> dict:
    url = f"http://127.0.0.1:{port}"
    log = open(Path(cwd) / "serve.log", "wb")  # noqa: SIM115 (closed below)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(HSSL), "serve", "--port", str(port)], env=env, cwd=cwd, stdout=log, stderr=log
    )
    try:
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, proc, 120, "/healthz")
        result = {"start_s": round(time.monotonic() - started, 2)}
        rss = {"started": status_mb(proc.pid)}
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            posted = time.monotonic()
            created = client.post("/v1/searches", json=SPEC)
            if created.status_code != 202:
                raise RuntimeError(f"submit: {created.status_code} {created.text[:300]}")
            rss["submitted"] = status_mb(proc.pid)
            path = f"/v1/searches/{created.json()['id']}"
            status = wait_until(
                lambda: (s := client.get(path).json()["status"]) in FINAL and s,
                proc,
                900,
                "the search",
                every=0.5,
            )
            result.update(search_s=round(time.monotonic() - posted, 1), status=status)
            for part in ("ranking", "recommendation"):
                answer = client.get(f"{path}/{part}")
                if answer.status_code != 200:
                    raise RuntimeError(f"GET {part}: {answer.status_code} {answer.text[:300]}")
            rss["read"] = status_mb(proc.pid)
        result.update(
            rss_mb=rss, hwm_mb=status_mb(proc.pid, "VmHWM"), torch_mapped=torch_mapped(proc.pid)
        )
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hssl-light-server-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
        env.update(
            HSSL_DATA_DIR=str(Path(tmp) / "data"),
            HSSL_DATA_ROOT=tmp,
            HSSL_LOCAL_WORKERS="1",
            PYTHONPATH=str(REPO),
        )
        hssl(env, "migrate")
        hssl(env, "tenants", "create", "bench")
        key = hssl(env, "keys", "create", "--tenant", "bench")["key"]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        result = {"bench": "light_server", **measure(env, port, key, tmp)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
