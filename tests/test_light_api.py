"""The API process stays light: ``uvicorn service.api:app`` with ``HSSL_LOCAL_WORKERS=0``
imports, builds the app, validates specs (timm names with suggestions, heads, data under the
data root), stores one and answers its status without ever loading torch, timm or torchvision
(seconds of start-up and most of a GB; only workers' children train). So does ``hssl serve``
with its local workers on: each search runs in a child process, which stores the ranking and
the recommendation the server then reads back."""

from __future__ import annotations

import difflib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import timm
import yaml

from tests.api_helpers import SPEC
from tests.conftest import make_settings
from tests.dispatch_helpers import job_row, search_row, tenant_key
from tests.net_helpers import ReservedPort, http
from tests.process_helpers import start_serve
from tests.search_helpers import TINY_SEARCH
from tests.waiting import wait_until

HEAVY = ("torch", "timm", "torchvision")
REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys
import service.api
from fastapi.testclient import TestClient
from service.persistence import store
from service.persistence.db import engine_for, session_scope

app = service.api.app
settings = app.state.settings
with session_scope(engine_for(settings.resolved_database_url)) as s:
    tenant = store.create_tenant(s, "light", max_concurrent=5, max_trials=50)
    key, _ = store.create_api_key(s, tenant)
answers = {}
with TestClient(app, headers={"Authorization": f"Bearer " + key}) as client:
    created = client.post("/v1/searches", json=json.loads(sys.argv[1]))
    answers["submit"] = created.status_code
    answers["status"] = client.get(created.headers["location"]).json()["status"]
    for name, body in {
        "base": {"base": {"name": "resnet19"}},
        "head": {"space": {"heads": ["convnext:kernel=4"]}},
        "family": {"space": {"heads": ["nohead"]}},
        "data": {"data": "/etc"},
    }.items():
        r = client.post("/v1/searches", json=body)
        answers[name] = [r.status_code, r.json()["detail"]]
    answers["openapi"] = client.get("/openapi.json").status_code
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print(json.dumps({"answers": answers, "heavy": heavy}))
"""


def test_the_api_validates_stores_and_answers_without_torch_timm_or_torchvision(
    sqlite_database_url, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSSL_")}
    env.update(
        HSSL_LOCAL_WORKERS="0",
        HSSL_DATABASE_URL=sqlite_database_url,
        HSSL_DATA_DIR=str(tmp_path / "data"),
        HSSL_DATA_ROOT=str(tmp_path),
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(SPEC), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,  # no .env of the repo
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    answers = result["answers"]
    assert answers["submit"] == 202 and answers["status"] == "queued"
    close = difflib.get_close_matches("resnet19", timm.list_models(), n=5, cutoff=0.6)
    suggested = f"unknown timm model 'resnet19'; did you mean: {', '.join(close)}"
    assert answers["base"] == [422, f"base.name: {suggested}"]  # timm's own suggestions
    assert answers["head"][0] == 422 and "kernel must be odd" in answers["head"][1]
    assert answers["family"][0] == 422 and "unknown head family 'nohead'" in answers["family"][1]
    assert answers["data"][0] == 422 and "outside the data root" in answers["data"][1]
    assert answers["openapi"] == 200
    assert result["heavy"] == [], f"the API process loaded {result['heavy']}"


# ---- hssl serve with its local workers -----------------------------------------------------
NATIVE = ("libtorch", "torch/lib", "torchvision/", "matplotlib/")  # timm loads only with torch
SERVER_RSS_MB = 250  # issue 24's bound; torch alone maps more than that


def mapped(pid: int) -> list[str]:
    """The shared objects of ``NATIVE`` mapped into process ``pid`` (from /proc/PID/maps)."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}
    return sorted(p for p in paths if any(name in p for name in NATIVE))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.slow
def test_hssl_serve_runs_a_search_and_serves_its_results_without_torch(
    sqlite_database_url, tmp_path, clean_env
):
    settings = make_settings(tmp_path, sqlite_database_url, local_workers=1, heartbeat_s=1)
    key = tenant_key(settings)
    body = {**TINY_SEARCH, "strategy": "joint"}
    log_path = tmp_path / "serve.log"
    with ReservedPort() as port:
        base = f"http://127.0.0.1:{port}/v1/searches"
        serve = start_serve(settings, port, log_path, local_workers=1)
        try:
            status, _, raw = http("POST", base, key, body)
            assert status == 202, raw
            sid = uuid.UUID(json.loads(raw)["id"])
            wait_until(
                lambda: (
                    json.loads(http("GET", f"{base}/{sid}", key)[2])["status"]
                    in ("completed", "failed", "cancelled")
                ),
                300,
                "the search to end",
            )
            ranking = json.loads(http("GET", f"{base}/{sid}/ranking", key)[2])
            as_json = json.loads(http("GET", f"{base}/{sid}/recommendation", key)[2])
            as_yaml = yaml.safe_load(
                http("GET", f"{base}/{sid}/recommendation?format=yaml", key)[2]
            )
            loaded, peak = mapped(serve.pid), peak_rss_mb(serve.pid)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
    row = search_row(settings, sid)
    assert row.status == "completed", log_path.read_text()[-3000:]
    assert job_row(settings, sid).worker.startswith("serve:")  # the server's own dispatcher
    assert ranking == row.ranking and as_json == as_yaml == row.recommendation  # as stored
    assert as_json["head_label"] == ranking["heads"][0]["label"]  # the first head
    assert loaded == [], f"hssl serve loaded {loaded}"
    assert peak <= SERVER_RSS_MB, f"hssl serve peaked at {peak:.0f} MB"
