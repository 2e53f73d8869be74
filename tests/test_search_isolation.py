"""Trials in child processes: a killed trial, one over its memory cap and one whose data
vanish mid-run each fail with their reason and the search goes on; the CLI runs a whole search;
optuna-dashboard opens the study."""

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from search.run import run_search
from search.trial_process import last_child
from tests.cli_helpers import BIN, run
from tests.search_helpers import TINY_SEARCH, tiny
from tests.waiting import wait_until


@pytest.mark.slow
def test_a_killed_trial_fails_with_a_reason_and_the_search_completes(tmp_path):
    """Play the OOM killer: SIGKILL the first trial's process at its first report. The child
    then waits for the answer to that report, so it is mid-run for certain (neither still
    importing nor already done), and ``last_child`` (this thread's) is that process."""
    killed: list[int] = []

    def on_event(kind: str, data: dict) -> None:
        child = last_child()
        if kind == "trial.reported" and not killed and child is not None:
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)

    spec = tiny(strategy="independent", space={"heads": ["mlp:depth=1", "convnext:depth=1"]})
    outcome = run_search(spec, tmp_path, progress=False, isolate=True, on_event=on_event)
    assert len(killed) == 1, "no trial reported, so none was killed"
    rows = {r["label"]: r for r in outcome.ranking["heads"]}
    assert rows["mlp-d1-nores"]["n"] == 0 and rows["mlp-d1-nores"]["failed"] == 1
    assert "SIGKILL" in rows["mlp-d1-nores"]["failure_reasons"][0]
    assert rows["convnext-d1-k7-nores"]["n"] == 1
    assert outcome.status == "completed" and "json" in outcome.files


@pytest.mark.slow
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


@pytest.mark.slow
def test_optuna_dashboard_opens_the_search_study(tmp_path, reserved_port):
    outcome = run_search(tiny(name="dash"), tmp_path, progress=False, isolate=False)
    port = reserved_port
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

    def studies_listed() -> dict | None:
        assert server.poll() is None, f"optuna-dashboard exited with {server.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as resp:
                return json.loads(resp.read())
        except OSError:  # not listening yet
            return None

    try:
        body = wait_until(studies_listed, 60, "optuna-dashboard to list the studies", every=0.2)
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


@pytest.mark.slow
def test_a_trial_over_its_memory_cap_fails_out_of_memory_and_the_search_goes_on(tmp_path):
    # one base for both; the 12-block wide convnext head needs ~1 GiB of activations, the
    # one-block MLP ~0.1 GiB: a 400 MiB cap lets one through and stops the other
    spec = tiny(
        strategy="independent",
        base={"img_size": 32, "width": 64},
        space={"heads": ["mlp:depth=1", "convnext:depth=12,kernel=11,width_ratio=16"]},
        budget={"batch_size": 64, "trial_memory_mb": 400},
        objectives=["d_kl"],
    )
    outcome = run_search(spec, tmp_path, progress=False, isolate=True)
    assert outcome.status == "completed"
    heads = {h["label"]: h for h in outcome.ranking["heads"]}
    small, big = (heads[h.label()] for h in spec.space.candidates())
    assert (small["n"], small["failed"], small["rank"]) == (1, 0, 1)
    assert big["n"] == 0 and big["failed"] == 1
    assert any("out of memory" in r for r in big["failure_reasons"]), big


def _image_folder(root: Path, per_class: int = 40) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) // (1 + c)
            files.append(root / name / f"{i:03d}.png")
            Image.fromarray(pixels).save(files[-1])
    return files


@pytest.mark.slow
def test_a_trial_whose_images_vanish_mid_run_fails_naming_one_and_the_next_runs(tmp_path):
    files = _image_folder(tmp_path / "pets")
    spec = tiny(
        strategy="independent",
        data=str(tmp_path / "pets"),
        space={"heads": ["mlp:depth=1", "pool:depth=1"]},
        budget={"epochs": 3, "data_limit": None},
        objectives=["d_kl"],
    )
    vanished: list[Path] = []

    def on_event(kind, data):  # the first trial's first epoch: half of every class goes
        if kind == "trial.reported" and data["epoch"] == 1 and not vanished:
            for path in files[::2]:
                path.unlink()
                vanished.append(path)

    outcome = run_search(spec, tmp_path / "work", progress=False, isolate=True, on_event=on_event)
    assert outcome.status == "completed" and vanished
    heads = {h["label"]: h for h in outcome.ranking["heads"]}
    first, second = (heads[h.label()] for h in spec.space.candidates())  # in the order run
    assert first["failed"] == 1 and first["n"] == 0
    (reason,) = first["failure_reasons"]
    assert "cannot decode image" in reason and any(str(p) in reason for p in vanished)
    assert second["n"] == 1 and second["failed"] == 0  # scanned afresh: the files left
