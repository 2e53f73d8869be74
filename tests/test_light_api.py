"""The API process stays light: ``uvicorn service.api:app`` with ``HSSL_LOCAL_WORKERS=0``
imports, builds the app, validates specs (timm names with suggestions, heads, data under the
data root), stores one and answers its status without ever loading torch, timm or torchvision
(seconds of start-up and most of a GB; only workers' children train)."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import timm

from tests.api_helpers import SPEC

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
