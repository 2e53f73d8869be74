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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from api_cost import (  # the API bench's tools (it puts the checkout on sys.path)
    ReservedPort,
    hssl,
    memory_mb,
    stop_server,
    wait_healthy,
)

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


def torch_mapped(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "torch/lib" in maps


def wait_for_search(client: httpx.Client, path: str, proc: subprocess.Popen) -> str:
    """The search's final status (polled every 0.5 s; fails if the server exits)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hssl serve exited with {proc.returncode} during the search")
        status = client.get(path).json()["status"]
        if status in FINAL:
            return status
        time.sleep(0.5)
    raise RuntimeError("timed out waiting for the search")


def measure(env: dict[str, str], port: int, key: str, cwd: str) -> dict:
    url = f"http://127.0.0.1:{port}"
    log = open(Path(cwd) / "serve.log", "wb")  # noqa: SIM115 (closed below)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(HSSL), "serve", "--port", str(port)], env=env, cwd=cwd, stdout=log, stderr=log
    )
    try:
        wait_healthy(url, proc)
        result = {"start_s": round(time.monotonic() - started, 2)}
        rss = {"started": round(memory_mb(proc.pid), 1)}
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            posted = time.monotonic()
            created = client.post("/v1/searches", json=SPEC)
            if created.status_code != 202:
                raise RuntimeError(f"submit: {created.status_code} {created.text[:300]}")
            rss["submitted"] = round(memory_mb(proc.pid), 1)
            path = f"/v1/searches/{created.json()['id']}"
            status = wait_for_search(client, path, proc)
            result.update(search_s=round(time.monotonic() - posted, 1), status=status)
            for part in ("ranking", "recommendation"):
                answer = client.get(f"{path}/{part}")
                if answer.status_code != 200:
                    raise RuntimeError(f"GET {part}: {answer.status_code} {answer.text[:300]}")
            rss["read"] = round(memory_mb(proc.pid), 1)
        hwm = round(memory_mb(proc.pid, "VmHWM"), 1)
        result.update(rss_mb=rss, hwm_mb=hwm, torch_mapped=torch_mapped(proc.pid))
        return result
    finally:
        stop_server(proc, timeout=60)
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
        with ReservedPort() as port:  # held until hssl serve binds it
            result = {"bench": "light_server", **measure(env, port, key, tmp)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
