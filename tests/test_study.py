"""bench/study.py at its tiny scale: the outputs, the Markdown's sections and numbers, and a
second invocation that resumes (reuses every finished run) instead of training again."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d\.\d{3} ± \d\.\d{3}"


def study(tmp_path: Path, *extra: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "study.py"),
            "--scale",
            "tiny",
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return time.perf_counter() - started


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


@pytest.mark.slow
def test_tiny_study_writes_the_report_and_resumes_without_retraining(tmp_path):
    first = study(tmp_path)
    out = tmp_path / "out"
    for name in (
        "study.md",
        "results.json",
        "discrepancy_vs_accuracy.png",
        "accuracy_per_head.png",
    ):
        assert (out / name).stat().st_size > 0, name
    md = (out / "study.md").read_text()
    results = json.loads((out / "results.json").read_text())
    heads = [r["label"] for r in results["rows"][1:]]
    assert heads == [
        "convnext-d1-k3-nores",
        "convnext-d1-k3-res",
        "mlp-d1-nores",
        "transformer-d1-nores",
    ]

    table = section(md, "Probe accuracy and discrepancy per run")
    for label in ["raw pixels", "random-init network (floor)", "baseline (iBOT, no head)", *heads]:
        row = next((line for line in table.splitlines() if f"| {label}" in line), None)
        assert row is not None and re.search(NUMBER, row), f"{label}: {row}"
    for label in heads:  # every head has its discrepancies and a paired gain over the baseline
        row = next(line for line in table.splitlines() if f"| {label} |" in line)
        assert len(re.findall(NUMBER, row)) >= 7 and re.search(r"[+-]\d\.\d{3} ± ", row)
    assert re.search(r"D_kl vs k-NN \[CLS\] \| [+-]\d\.\d\d \[", section(md, "Does discrepancy"))
    joint = section(md, "Joint search ranking vs the ground truth")
    assert all(f"| {label} |" in joint for label in heads)
    curve = section(md, "Learning curve: k-NN [CLS]")
    assert "ep 0" in curve and "ep 2" in curve and re.search(r"\| baseline \| \d\.\d{3}", curve)
    assert "Spearman ρ" in section(md, "What the data say")

    run = results["runs"][0]  # the per-epoch record keeps both k-NN probes and the discrepancies
    assert [c["epoch"] for c in run["curve"]] == [1, 2] and "knn_patch" in run["curve"][0]
    heads_runs = [r for r in results["runs"] if r["label"] != "baseline"]
    assert len(heads_runs) == 12 and all("d_kl" in c for r in heads_runs for c in r["curve"])
    timing = results["timing"]
    assert timing["trained_now"] == 3 * 5 + 3  # (baseline + 4 heads) x 3 seeds + 3 joint runs
    assert timing["independent_trials"] == 12 and timing["baseline_runs"] == 3

    second = study(tmp_path)
    again = json.loads((out / "results.json").read_text())["timing"]
    assert again["trained_now"] == 0
    for key in ("independent_trials", "baseline_runs", "joint_trials"):
        assert again[key] == timing[key]
    assert second < first

    (out / "study.md").unlink()
    study(tmp_path, "--report-only")  # trains nothing, reports what the studies hold
    reported = json.loads((out / "results.json").read_text())
    assert reported["timing"]["trained_now"] == 0
    assert reported["rows"] == json.loads(json.dumps(results["rows"]))
    assert (out / "study.md").read_text().count("| baseline") == md.count("| baseline")
