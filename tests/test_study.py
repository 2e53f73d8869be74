"""bench/study.py at its tiny scale: the outputs, the Markdown's sections and numbers, and a
second invocation that resumes (reuses every finished run) instead of training again; and the
pure analyses of bench/study_analysis.py on hand-built runs."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # bench/study.py imports its analyses the same way

from study_analysis import (  # noqa: E402
    T975,
    above_floor,
    collapse_table,
    fidelity,
    paired_gains,
    pixel_reference,
    replay_stop,
    simulate_stop,
    t_interval,
)

NUMBER = r"\d\.\d{3} ± \d\.\d{3}"
NEW_SECTIONS = (
    "Collapse of the learning target",
    "Gain over the baseline, paired by seed",
    "Above the floor?",
    "Fidelity: does an epoch's order of the heads match the final order?",
    "stop_when_stable replayed on the joint runs",
)


def study(tmp_path: Path, *extra: str) -> None:
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


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


@pytest.mark.slow
def test_tiny_study_writes_the_report_and_resumes_without_retraining(tmp_path):
    study(tmp_path)
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
    for title in NEW_SECTIONS:
        assert section(md, title).strip(), title
    assert "| run | n | collapse |" in table
    assert re.search(r"\| baseline \(iBOT, no head\) \| 3 \| (ok 3/3|\*\*COLLAPSED)", table)
    said = section(md, "What the data say")
    assert "floor rule" in said and "t-interval" in said and "stop_when_stable" in said
    fid = section(md, "Fidelity")
    assert re.search(r"^\| 1 \| [+-]\d\.\d\d ± \d\.\d\d \(3\) \|", fid, re.M)  # D_kl at epoch 1
    stop = section(md, "stop_when_stable replayed")
    assert all(re.search(rf"^\| {m} \| \d of 3 \|", stop, re.M) for m in (1, 2, 3))

    for key in ("collapse", "gains", "above_floor", "fidelity", "stop_when_stable", "joint_runs"):
        assert key in results, key
    assert results["raw_pixels"]["source"] == "runs" and results["raw_pixels"]["n"] == 3
    assert all("collapse" in r for r in results["runs"])
    assert [row["label"] for row in results["collapse"]] == ["baseline", *heads]
    assert sum(results["collapse"][0]["counts"].values()) == 3
    assert set(results["gains"]) == set(heads)
    assert set(results["gains"][heads[0]]) == {"knn_cls", "knn_patch", "linear"}
    assert results["gains"][heads[0]]["knn_cls"]["n"] == 3
    assert set(results["above_floor"]) == {"baseline", *heads}
    for kind, metrics in (("independent", 4), ("joint", 2)):
        fid_json = results["fidelity"][kind]
        assert fid_json["epochs"] == [0, 1, 2] and len(fid_json["metrics"]) == metrics
        assert fid_json["rows"][-1]["d_kl"] == pytest.approx([1.0, 0.0])  # last epoch vs itself
    assert [row["patience"] for row in results["stop_when_stable"]["rows"]] == [1, 2, 3]
    assert len(results["joint_runs"]) == 12

    run = results["runs"][0]  # the per-epoch record keeps both k-NN probes and the discrepancies
    assert [c["epoch"] for c in run["curve"]] == [1, 2] and "knn_patch" in run["curve"][0]
    heads_runs = [r for r in results["runs"] if r["label"] != "baseline"]
    assert len(heads_runs) == 12 and all("d_kl" in c for r in heads_runs for c in r["curve"])
    timing = results["timing"]
    assert timing["trained_now"] == 3 * 5 + 3  # (baseline + 4 heads) x 3 seeds + 3 joint runs
    assert timing["independent_trials"] == 12 and timing["baseline_runs"] == 3

    study(tmp_path)  # resumes: every run is reused (counted, not timed)
    again = json.loads((out / "results.json").read_text())["timing"]
    assert again["trained_now"] == 0
    for key in ("independent_trials", "baseline_runs", "joint_trials"):
        assert again[key] == timing[key]

    (out / "study.md").unlink()
    study(tmp_path, "--report-only")  # trains nothing, reports what the studies hold
    reported = json.loads((out / "results.json").read_text())
    assert reported["timing"]["trained_now"] == 0
    assert reported["rows"] == json.loads(json.dumps(results["rows"]))
    assert (out / "study.md").read_text().count("| baseline") == md.count("| baseline")


# ---------------------------------------------------------------------------- pure analyses


def run(label, seed, final, init=None, curve=(), collapse=None, epochs_done=None):
    """A hand-built run dict in the shape of ``study.completed_runs``."""
    return {
        "label": label,
        "seed": seed,
        "final": final,
        "init": init or {},
        "curve": list(curve),
        "collapse": collapse,
        "epochs_done": epochs_done,
    }


def test_t_table_matches_scipy_when_it_is_installed():
    stats = pytest.importorskip("scipy.stats")
    assert all(abs(T975[df - 1] - stats.t.ppf(0.975, df)) < 5e-4 for df in range(1, 31))


def test_t_interval_by_hand():
    # mean 0.02, sd 0.01, n 3: half-width t(0.975, 2) * 0.01 / sqrt(3) = 4.303 * 0.005774
    cell = t_interval([0.01, 0.03, 0.02])
    half = 4.303 * 0.01 / math.sqrt(3)
    assert (
        cell["n"] == 3 and cell["mean"] == pytest.approx(0.02) and cell["sd"] == pytest.approx(0.01)
    )
    assert cell["ci"] == pytest.approx([0.02 - half, 0.02 + half])
    assert cell["excludes_zero"] is False
    assert t_interval([0.05, 0.06, 0.07])["excludes_zero"] is True
    assert t_interval([-0.05, -0.06, -0.07])["excludes_zero"] is True
    single = t_interval([0.05])
    assert single["excludes_zero"] is None and all(math.isnan(v) for v in single["ci"])


def test_paired_gains_pair_by_seed_and_skip_unpaired_seeds():
    runs = [
        run("baseline", 0, {"knn_cls": 0.50}),
        run("baseline", 1, {"knn_cls": 0.60}),
        run("baseline", 2, {"knn_cls": 0.70}),
        run("h", 0, {"knn_cls": 0.55}),
        run("h", 1, {"knn_cls": 0.66}),
        run("h", 2, {"knn_cls": 0.77}),
        run("h", 3, {"knn_cls": 0.99}),  # no baseline on seed 3: not paired
    ]
    cell = paired_gains(runs, ["h"], ("knn_cls",))["h"]["knn_cls"]
    half = 4.303 * 0.01 / math.sqrt(3)
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.06)
    assert cell["ci"] == pytest.approx([0.06 - half, 0.06 + half]) and cell["excludes_zero"]


def test_collapse_table_counts_statuses_and_falls_back_to_the_curve():
    final = {"target_entropy": 2.0, "target_information": 0.5}
    runs = [
        run("baseline", 0, final, collapse="ok"),
        run("baseline", 1, final, curve=[{"epoch": 1, "collapse": "uniform"}]),
        run("baseline", 2, {"target_entropy": 4.0, "target_information": 0.1}),
        run("h", 0, final, collapse="one-hot"),
    ]
    rows = collapse_table(runs, ["h"], ln_k=4.0)
    base, head = rows
    assert base["counts"] == {"ok": 1, "uniform": 1, "one-hot": 0, "unknown": 1}
    assert base["collapsed"] == 1 and head["collapsed"] == 1 and head["counts"]["one-hot"] == 1
    assert base["target_entropy"][0] == pytest.approx(8 / 3)
    assert base["entropy_fraction"] == pytest.approx(8 / 12)


def test_floor_rule_and_pixel_reference():
    def runs_of(label, diffs):
        return [
            run(label, s, {"knn_cls": 0.5 + d}, init={"knn_cls": 0.5}) for s, d in enumerate(diffs)
        ]

    runs = (
        runs_of("baseline", [0.10, 0.11, 0.12])  # every seed up, mean 0.11 > 2 sd 0.02
        + runs_of("a", [0.10, -0.01, 0.20])  # one seed down
        + runs_of("b", [0.10, 0.20, 0.30])  # mean 0.2 = 2 sd 0.2: not above
        + runs_of("c", [0.30])  # one seed: no verdict
    )
    verdicts = {k: v["knn_cls"]["learned"] for k, v in above_floor(runs, ["a", "b", "c"]).items()}
    assert verdicts == {"baseline": True, "a": False, "b": False, "c": None}

    assert pixel_reference(runs) is None
    pixels = [
        run("baseline", 0, {}, init={"pixels_knn": 0.6, "pixels_linear": 0.7}),
        run("h", 0, {}, init={"pixels_knn": 0.1}),  # seed 0 already has its value
        run("h", 1, {}, init={"pixels_knn": 0.8, "pixels_linear": 0.9}),
    ]
    ref = pixel_reference(pixels)
    assert ref["n"] == 2 and ref["source"] == "runs"
    assert ref["knn_cls"] == pytest.approx((0.7, math.sqrt(0.02)))
    assert ref["linear"][0] == pytest.approx(0.8)


def curve_runs(value, seeds=(0, 1), heads=4, epochs=3):
    """Runs whose metric ``d_kl`` (and ``knn_cls``) is ``value(head index, epoch)``."""
    out = []
    for seed in seeds:
        for i in range(heads):
            point = {m: value(i, 0) for m in ("d_kl", "knn_cls")}
            curve = [
                {"epoch": e, **{m: value(i, e) for m in ("d_kl", "knn_cls")}}
                for e in range(1, epochs)
            ]
            out.append(run(f"h{i}", seed, curve[-1], init=point, curve=curve))
    return out


def test_fidelity_is_one_for_identical_orders_and_minus_one_for_reversed():
    same = fidelity(curve_runs(lambda i, e: i + 10 * e), ("d_kl", "knn_cls"))
    assert same["epochs"] == [0, 1, 2] and same["final_epoch"] == 2
    for row in same["rows"]:
        assert row["d_kl"] == pytest.approx((1.0, 0.0)) and row["d_kl_n"] == 2
    flipped = fidelity(curve_runs(lambda i, e: i if e == 2 else -i), ("d_kl",))
    assert [row["d_kl"][0] for row in flipped["rows"]] == pytest.approx([-1.0, -1.0, 1.0])
    constant = fidelity(curve_runs(lambda i, e: 0.5), ("knn_cls",))  # ρ undefined: no seeds
    assert constant["rows"][0]["knn_cls_n"] == 0


def test_fidelity_uses_only_epochs_every_run_evaluated():
    runs = curve_runs(lambda i, e: i + e, epochs=4)
    runs[0]["curve"] = runs[0]["curve"][:1]  # one run evaluated epoch 1 only
    assert fidelity(runs, ("d_kl",))["epochs"] == [0, 1]


ORDERS = {  # d_kl = d_cka per head at each epoch of one joint run (higher ranks first)
    1: {"a": 1, "b": 2, "c": 3, "d": 4},  # order d c b a
    2: {"a": 4, "b": 3, "c": 2, "d": 1},  # order a b c d ...
    3: {"a": 4, "b": 3, "c": 2, "d": 1},
    4: {"a": 4, "b": 3, "c": 2, "d": 1},
    5: {"a": 4, "b": 3, "c": 2, "d": 1},
    6: {"a": 3, "b": 4, "c": 2, "d": 1},  # final: b a c d
}


def joint_runs(seed=0):
    return [
        run(
            label,
            seed,
            {},
            curve=[{"epoch": e, "d_kl": v[label], "d_cka": v[label]} for e, v in ORDERS.items()],
            epochs_done=6,
        )
        for label in "abcd"
    ]


def test_stop_replay_stops_once_the_order_held_for_patience_evaluations():
    # the order first appears at epoch 2; patience m stops at epoch 2 + m
    rho_b_vs_final = 1 - 6 * 2 / (4 * 15)  # a and b swapped: Σd² = 2 over 4 heads
    for patience, epoch in ((1, 3), (2, 4), (3, 5)):
        got = replay_stop(joint_runs(), patience)
        assert got["stop_epoch"] == epoch and got["epochs"] == 6
        assert got["saved"] == pytest.approx((6 - epoch) / 6)
        assert got["rho"] == pytest.approx(rho_b_vs_final)
    never = replay_stop(joint_runs(), 4)
    assert never["stop_epoch"] is None and never["saved"] == 0.0 and math.isnan(never["rho"])

    summary = simulate_stop(joint_runs(0) + joint_runs(1), patiences=(1, 4))
    first, last = summary["rows"]
    assert first["stopped"] == 2 and [s["seed"] for s in first["seeds"]] == [0, 1]
    assert first["saved"] == pytest.approx((0.5, 0.0))
    assert last["stopped"] == 0 and math.isnan(last["rho"][0])


def test_gain_sentences_say_no_signal_when_the_interval_spans_zero():
    import study

    def cell(mean, lo, hi):
        return {"mean": mean, "sd": 0.01, "n": 3, "ci": [lo, hi], "excludes_zero": lo > 0 or hi < 0}

    spans = {"a": {p: cell(0.01, -0.01, 0.03) for p in study.PROBES}}
    said = " ".join(study.gain_sentences({"gains": spans}))
    assert "no signal" in said and "above 0" not in said
    mixed = {
        "a": {p: cell(0.02, 0.01, 0.03) for p in study.PROBES},
        "b": {p: cell(0.01, -0.01, 0.03) for p in study.PROBES},
    }
    said = " ".join(study.gain_sentences({"gains": mixed}))
    assert "is above 0 for a (" in said and "spans 0 for the other 1 head (no signal)" in said
