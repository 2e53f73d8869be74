"""Trials in child processes: a killed trial fails with its reason and the search goes on;
the CLI runs a whole search; optuna-dashboard opens the study."""

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from search.run import run_search
from tests.cli_helpers import BIN, run
from tests.net_helpers import free_port
from tests.search_helpers import TINY_SEARCH, tiny


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_first_child(stop: threading.Event) -> None:
    """Play the OOM killer: SIGKILL the first trial process this test starts."""
    while not stop.is_set():
        for pid in children_of(os.getpid()):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                time.sleep(1.0)  # let it get going
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.05)


def test_a_killed_trial_fails_with_a_reason_and_the_search_completes(tmp_path):
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_child, args=(stop,), daemon=True)
    killer.start()
    spec = tiny(strategy="independent", space={"heads": ["mlp:depth=1", "convnext:depth=1"]})
    try:
        outcome = run_search(spec, tmp_path, progress=False, isolate=True)
    finally:
        stop.set()
    rows = {r["label"]: r for r in outcome.ranking["heads"]}
    assert rows["mlp-d1-nores"]["n"] == 0 and rows["mlp-d1-nores"]["failed"] == 1
    assert "SIGKILL" in rows["mlp-d1-nores"]["failure_reasons"][0]
    assert rows["convnext-d1-k7-nores"]["n"] == 1
    assert outcome.status == "completed" and "json" in outcome.files


def test_cli_search_run_prints_the_ranking_and_writes_the_recommendation(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SEARCH, "name": "cli-search"}))
    proc = run(
        [
            str(BIN / "hssl"),
            "search",
            "run",
            str(spec),
            "--data-dir",
            str(tmp_path),
            "--no-progress",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank" in proc.stdout and "floor" in proc.stdout and "search cli-search: completed"
    rec = json.loads((tmp_path / "searches" / "cli-search" / "recommendation.json").read_text())
    assert rec["lineage"]["study"] == "cli-search"
    bad = run(
        [str(BIN / "hssl"), "search", "run", "--base", "resnet_18", "--data-dir", str(tmp_path)]
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "base.name: unknown timm model 'resnet_18'; did you mean: resnet18" in bad.stderr


def test_optuna_dashboard_opens_the_search_study(tmp_path):
    outcome = run_search(tiny(name="dash"), tmp_path, progress=False, isolate=False)
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "optuna-dashboard"),
            outcome.storage,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as resp:
                    body = json.loads(resp.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer"
        studies = {s["study_name"]: s for s in body["study_summaries"]}
        assert "dash" in studies and len(studies["dash"]["directions"]) == 2
        url = f"http://127.0.0.1:{port}/api/studies/{studies['dash']['study_id']}"
        with urllib.request.urlopen(url) as resp:
            detail = json.loads(resp.read())
        assert len(detail["trials"]) == 3
        keys = {attr["key"] for attr in detail["trials"][0]["user_attrs"]}
        assert {"final", "init", "label", "wall_time_s", "peak_memory_mb"} <= keys
    finally:
        server.terminate()
        server.wait(timeout=30)
