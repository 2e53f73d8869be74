"""Study v2's registered analysis (bench/study_v2_analysis.py) on constructed runs whose answers
are known, and its report written from a real (tiny) Optuna study."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the study's scripts import each other this way

from study_v2_analysis import (  # noqa: E402
    CANDIDATES,
    contrast,
    head_means,
    joint_vs_independent,
    noise,
    panel_correlations,
    usable,
    value_at,
)

NORES, RES = "convnext-d2-k3-nores", "convnext-d2-k3-res"


def run(label: str, seed: int, collapse: str = "ok", **final: float) -> dict:
    return {
        "label": label,
        "seed": seed,
        "init": {k: v / 2 for k, v in final.items()},
        "final": final,
        "curve": [{"epoch": 4, **{k: v / 3 for k, v in final.items()}}],
        "collapse": collapse,
    }


def test_values_at_epochs_and_the_collapse_rule() -> None:
    r = run(NORES, 10, linear=0.6)
    assert (value_at(r, "linear"), value_at(r, "linear", 0)) == (0.6, 0.3)
    assert value_at(r, "linear", 4) == pytest.approx(0.2)
    assert math.isnan(value_at(r, "linear", 2)) and math.isnan(value_at(r, "rankme"))
    assert not usable(run(NORES, 10, "uniform")) and usable({"label": "x", "seed": 0})


def test_contrast_pairs_by_seed_and_holm_corrects_the_six_tests() -> None:
    runs = []
    for i, seed in enumerate(range(10, 18)):
        wobble = 0.002 * (i % 3)
        runs += [
            run(NORES, seed, linear=0.65 + wobble, knn_cls=0.50 + wobble, linear_se=0.005),
            run(
                RES,
                seed,
                linear=0.60 + wobble + 0.001 * (i % 2),
                knn_cls=0.50 + 0.01 * (i % 2 - 0.5),
            ),
            run("baseline", seed, linear=0.60 + 0.001 * i, knn_cls=0.45),
        ]
    runs.append(run(NORES, 99, "uniform", linear=0.99, knn_cls=0.99))  # collapsed: ignored
    tests = {(t["a"], t["b"], t["probe"]): t for t in contrast(runs)}
    assert len(tests) == 6
    big = tests[(NORES, RES, "linear")]
    assert big["n"] == 8 and big["seeds"] == list(range(10, 18))
    assert big["mean"] == pytest.approx(0.05 - 0.0005, abs=1e-9)
    assert big["reject"] and big["p_holm"] < 0.001 and big["holm_lo"] > 0.04
    assert big["level"] > 0.95  # tested at a Holm level stricter than 95 %
    null = tests[(NORES, RES, "knn_cls")]  # +-0.005 around a tiny mean: no signal
    assert not null["reject"] and null["lo"] < 0 < null["hi"]
    assert 0 < null["p_sign_flip"] <= 1


def test_panel_correlations_find_a_planted_link_and_no_link_where_there_is_none() -> None:
    runs = []
    for h in range(24):
        for seed in (20, 21):
            runs.append(
                run(
                    f"mlp-d{h}",
                    seed,
                    d_kl=h + 0.1 * seed,
                    linear=0.4 + 0.01 * h,
                    knn_cls=0.4 + 0.01 * ((h * 7) % 24),
                    rankme=5.0,
                    d_cka=(h * 11) % 24,
                    alpha_req=3 - 0.05 * h,
                    target_information=0.1,
                    d_loss=1.0,
                    knn_patch=0.3,
                )
            )
    out = panel_correlations(runs)
    primary = {(e["metric"], e["probe"]): e for e in out["primary"]}
    assert len(primary) == 2 * len(CANDIDATES)
    link = primary[("d_kl", "linear")]
    assert link["rho"] == pytest.approx(1.0) and link["reject"] and link["n"] == 24
    assert primary[("alpha_req", "linear")]["rho"] == pytest.approx(-1.0)
    assert primary[("alpha_req", "linear")]["expected_sign"] == -1
    assert math.isnan(primary[("rankme", "linear")]["rho"])  # constant: undefined, not 0
    assert not primary[("d_kl", "knn_cls")]["reject"]  # a scrambled order
    assert out["by_epoch"]["d_kl~linear@4"]["rho"] == pytest.approx(1.0)
    assert out["over_runs"]["d_kl~linear"]["n"] == 48


def test_joint_vs_independent_and_the_noise_split() -> None:
    independent = [
        run(f"h{i}", s, d_kl=i, linear=0.5 + 0.01 * i, linear_se=0.01)
        for i in range(6)
        for s in (20, 21)
    ]
    joint = [run(f"h{i}", s, d_kl=2 * i) for i in range(6) for s in (20, 21)]
    joint.append(run("h9", 20, "uniform", d_kl=9.0))
    out = joint_vs_independent(joint, independent)
    assert out["d_kl"]["rho"] == pytest.approx(1.0) and out["collapsed"] == ["h9"]
    assert head_means(joint, "d_kl")["h2"] == 4.0
    # two seeds reading 0.50 and 0.52: variance 2e-4; SE 0.01: evaluation variance 1e-4
    split = noise(
        [run("a", 1, linear=0.50, linear_se=0.01), run("a", 2, linear=0.52, linear_se=0.01)]
    )
    assert split["linear"]["evaluation_share"] == pytest.approx(0.5)
    assert split["linear"]["training_sd"] == pytest.approx(0.01)


TINY = """
data: digits
isolate: false  # runs in the driver's process: seconds, not a child's torch import each
base: {name: vit_tiny_patch16_224, img_size: 16, patch_size: 4, depth: 1, width: 32}
recipe: proxy
budget: {epochs: 1, batch_size: 32, data_limit: 200, heldout_images: 300}
trial_overrides: {interim_eval_images: 100, out_dim: 64, proj_hidden: 32, proj_bottleneck: 16}
parts:
  contrast: {seed: 10, seeds: 2, heads: ["convnext:depth=1,kernel=3,first_residual=false",
                                         "convnext:depth=1,kernel=3,first_residual=true"]}
  panel: {seed: 20, seeds: 1, heads: ["mlp:depth=1", "pool:depth=1,kernel=3"]}
"""


@pytest.mark.slow
def test_the_driver_trains_resumes_and_reports(tmp_path: Path) -> None:
    import json
    import subprocess

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    command = [
        sys.executable,
        str(ROOT / "bench" / "study_v2.py"),
        "--config",
        str(config),
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    first = subprocess.run([*command, "--part", "all"], capture_output=True, text=True, check=True)
    trained = [json.loads(line) for line in first.stdout.splitlines() if '"part"' in line]
    assert [t["trained_now"] for t in trained] == [6, 3, 1]  # 2 arms + baseline x 2; 2 + 1; 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"]["parts"]["contrast"] == {"done": 6, "planned": 6}
    assert results["status"]["complete"] is True
    run = results["runs"]["panel"][0]
    assert run["final"]["heldout_n"] == 300 and "rankme" in run["final"]
    assert len(results["contrast"]["tests"]) == 6
    report = (tmp_path / "out" / "report.md").read_text()
    for section in (
        "(a) The controlled contrast",
        "(b) The panel",
        "Joint vs independent",
        "evaluation noise",
    ):
        assert section in report
    assert (tmp_path / "out" / "dkl_vs_linear.png").stat().st_size > 5000
    import optuna  # the raw storage beside the report: every part's study, readable

    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'out' / 'optuna.sqlite3'}")
    assert sorted(names) == ["study-v2-contrast", "study-v2-joint", "study-v2-panel"]
    again = subprocess.run(
        [*command, "--part", "contrast"], capture_output=True, text=True, check=True
    )
    assert json.loads(again.stdout.splitlines()[0])["trained_now"] == 0  # resumed, not retrained
