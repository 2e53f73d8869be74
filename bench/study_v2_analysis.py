"""The analysis of study v2, exactly as docs/study/v2/PLAN.md registered it: pure functions of
run dicts (label, seed, init, final, curve, collapse), so tests can feed them constructed runs.
:mod:`study_v2_report` reads the studies and writes the outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from search.stats import (
    bootstrap_ci,
    holm,
    mean_sd,
    paired_t,
    permutation_p,
    sign_flip_p,
    spearman,
)

PRIMARY = ("linear", "knn_cls")
SECONDARY_PROBES = ("knn_patch",)
CANDIDATES = ("d_kl", "d_cka", "d_loss", "target_information", "rankme", "alpha_req")
EXPECTED_SIGN = {"alpha_req": -1}  # every other candidate: +1 (larger = better)
EPOCHS = (0, 1, 2, 4, 8)  # the exploratory epochs; the final one is the primary analysis
N_BOOT = 10_000
N_PERM = 10_000
NAN = float("nan")
CONTRAST = (
    ("convnext-d2-k3-nores", "convnext-d2-k3-res"),
    ("convnext-d2-k3-nores", "baseline"),
    ("convnext-d2-k3-res", "baseline"),
)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------- the runs


def runs_of(study: optuna.Study, strategy: str) -> list[dict[str, Any]]:
    """Every completed run of ``strategy`` in ``study`` (independent: the baseline's too), as
    plain dicts: label, seed, init, final, curve, collapse, wall_time_s."""
    keys = ("label", "seed", "init", "final", "curve", "collapse", "wall_time_s")
    out = []
    if strategy == "independent":
        for attrs in study.user_attrs.get("baseline", []):
            if attrs.get("status") == "completed":
                out.append({k: attrs.get(k) for k in keys})
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get("strategy") == strategy:
            out.append({k: trial.user_attrs.get(k) for k in keys})
    return out


def usable(run: dict[str, Any]) -> bool:
    """The plan's collapse rule, the same for independent and joint runs."""
    return run.get("collapse") in (None, "ok")


def value_at(run: dict[str, Any], metric: str, epoch: int | None = None) -> float:
    """``metric`` of ``run`` at ``epoch`` (0 = initialisation, None = the end)."""
    if epoch is None:
        source = run.get("final") or {}
    elif epoch == 0:
        source = run.get("init") or {}
    else:
        source = next((c for c in run.get("curve") or [] if c.get("epoch") == epoch), {})
    value = source.get(metric)
    return float(value) if _finite(value) else NAN


def by_label(runs: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        if usable(run):
            out.setdefault(run["label"], {})[int(run["seed"])] = run
    return out


def head_means(
    runs: Sequence[dict[str, Any]], metric: str, epoch: int | None = None
) -> dict[str, float]:
    """Per head label (baseline excluded): the mean of ``metric`` over its usable runs."""
    out = {}
    for label, seeds in by_label(runs).items():
        values = [value_at(r, metric, epoch) for r in seeds.values()]
        values = [v for v in values if _finite(v)]
        if label != "baseline" and values:
            out[label] = float(np.mean(values))
    return out


# ------------------------------------------------------------------------- part (a): contrast


def contrast(runs: Sequence[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """The 6 registered tests: 3 paired contrasts × 2 primary probes, Holm-corrected; each with
    the t-interval at its Holm level and a sign-flip permutation p beside the t-test."""
    arms = by_label(runs)
    rows = []
    for a, b in CONTRAST:
        for probe in PRIMARY:
            seeds = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
            d = [value_at(arms[a][s], probe) - value_at(arms[b][s], probe) for s in seeds]
            d = [x for x in d if _finite(x)]
            test = paired_t(d)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "probe": probe,
                    "seeds": seeds,
                    "differences": d,
                    **test,
                    "p_sign_flip": sign_flip_p(d),
                }
            )
    for row, corrected in zip(rows, holm([r["p"] for r in rows], alpha), strict=True):
        row.update(corrected)
        level = corrected["level"] if _finite(corrected["level"]) else 0.95
        at_level = paired_t(row["differences"], level=level)
        row["holm_lo"], row["holm_hi"] = at_level["lo"], at_level["hi"]
    return rows


def arm_table(runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per arm: n, and mean ± sd of the probes (with their mean SE), floor, D_kl, target
    information, RankMe, α-ReQ."""
    arms = by_label(runs)
    rows = []
    for label in labels:
        seeds = arms.get(label, {})
        row: dict[str, Any] = {"label": label, "n": len(seeds)}
        for m in (*PRIMARY, *SECONDARY_PROBES, "d_kl", "target_information", "rankme", "alpha_req"):
            row[m] = mean_sd([value_at(r, m) for r in seeds.values()])
        for m in PRIMARY:
            row[f"{m}_se"] = mean_sd([value_at(r, f"{m}_se") for r in seeds.values()])[0]
            row[f"{m}_floor"] = mean_sd([value_at(r, m, 0) for r in seeds.values()])[0]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- part (b): panel


def rho_entry(
    x: dict[str, float], y: dict[str, float], *, level: float = 0.95, p: bool = True
) -> dict[str, Any]:
    """Spearman ρ over the labels both have, with its bootstrap interval (and permutation p)."""
    labels = sorted(k for k in set(x) & set(y) if _finite(x[k]) and _finite(y[k]))
    a, b = [x[k] for k in labels], [y[k] for k in labels]
    lo, hi = bootstrap_ci(a, b, n_boot=N_BOOT, level=level, seed=0)
    entry = {"rho": spearman(a, b), "lo": lo, "hi": hi, "n": len(labels)}
    if p:
        entry["p"] = permutation_p(a, b, n_perm=N_PERM, seed=0)
    return entry


def panel_correlations(runs: Sequence[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """The registered family (6 metrics × 2 primary probes at the end, Holm) and the
    exploratory ones (other epochs, over runs, k-NN patch, within families)."""
    probes = {p: head_means(runs, p) for p in (*PRIMARY, *SECONDARY_PROBES)}
    primary = []
    for metric in CANDIDATES:
        x = head_means(runs, metric)
        for probe in PRIMARY:
            primary.append({"metric": metric, "probe": probe, **rho_entry(x, probes[probe])})
    for entry, corrected in zip(primary, holm([e["p"] for e in primary], alpha), strict=True):
        entry.update(corrected)
        entry["holm_lo"] = entry["holm_hi"] = NAN
        if _finite(corrected["level"]):
            x, y = head_means(runs, entry["metric"]), probes[entry["probe"]]
            held = rho_entry(x, y, level=corrected["level"], p=False)
            entry["holm_lo"], entry["holm_hi"] = held["lo"], held["hi"]
        entry["expected_sign"] = EXPECTED_SIGN.get(entry["metric"], 1)
    by_epoch = {
        f"{metric}~{probe}@{epoch}": rho_entry(
            head_means(runs, metric, epoch), probes[probe], p=False
        )
        for metric in CANDIDATES
        for probe in PRIMARY
        for epoch in EPOCHS
    }
    patch = {
        f"{metric}~knn_patch": rho_entry(head_means(runs, metric), probes["knn_patch"], p=False)
        for metric in CANDIDATES
    }
    over_runs = {}
    for metric in CANDIDATES:
        for probe in PRIMARY:
            pairs = [
                (value_at(r, metric), value_at(r, probe))
                for r in runs
                if usable(r) and r["label"] != "baseline"
            ]
            pairs = [(a, b) for a, b in pairs if _finite(a) and _finite(b)]
            keyed_x = {str(i): a for i, (a, _) in enumerate(pairs)}
            keyed_y = {str(i): b for i, (_, b) in enumerate(pairs)}
            over_runs[f"{metric}~{probe}"] = rho_entry(keyed_x, keyed_y, p=False)
    families: dict[str, Any] = {}
    for family in sorted({label.split("-")[0] for label in probes["linear"]}):
        for metric in ("d_kl", "target_information"):
            x = {k: v for k, v in head_means(runs, metric).items() if k.startswith(family + "-")}
            families[f"{family}:{metric}~linear"] = rho_entry(x, probes["linear"], p=False)
    return {
        "primary": primary,
        "by_epoch": by_epoch,
        "knn_patch": patch,
        "over_runs": over_runs,
        "within_family": families,
    }


def panel_gains(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per head: the paired gain over the baseline on each primary probe (reported only)."""
    arms = by_label(runs)
    base = arms.get("baseline", {})
    out = []
    for label, seeds in arms.items():
        if label == "baseline":
            continue
        row: dict[str, Any] = {"label": label, "n": len(seeds)}
        for probe in PRIMARY:
            d = [value_at(seeds[s], probe) - value_at(base[s], probe) for s in seeds if s in base]
            row[probe] = mean_sd([x for x in d if _finite(x)])
            row[f"{probe}_n"] = len(d)
        out.append(row)
    return sorted(out, key=lambda r: -r["linear"][0] if _finite(r["linear"][0]) else math.inf)


def joint_vs_independent(
    joint: Sequence[dict[str, Any]], independent: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Does the joint run's D_kl order reproduce the independent one, and the probes?"""
    joint_dkl = head_means(joint, "d_kl")
    out = {"d_kl": rho_entry(joint_dkl, head_means(independent, "d_kl"), p=False)}
    for probe in PRIMARY:
        out[probe] = rho_entry(joint_dkl, head_means(independent, probe), p=False)
    counted = [r for r in joint if r["label"] != "baseline"]
    out["collapsed"] = sorted({r["label"] for r in counted if not usable(r)})
    return out


# ------------------------------------------------------------------------------ noise


def noise(runs: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """How much of the seed-to-seed variance of a final probe reading is evaluation noise:
    per probe, over heads with ≥ 2 usable runs, mean sample variance vs mean SE²."""
    arms = by_label(runs)
    out = {}
    for probe in (*PRIMARY, *SECONDARY_PROBES):
        total, evaluation = [], []
        for label, seeds in arms.items():
            if labels is not None and label not in labels:
                continue
            values = [value_at(r, probe) for r in seeds.values()]
            se = [value_at(r, f"{probe}_se") for r in seeds.values()]
            if len(values) >= 2 and all(map(_finite, values + se)):
                total.append(float(np.var(values, ddof=1)))
                evaluation.append(float(np.mean(np.square(se))))
        if total:
            t, e = float(np.mean(total)), float(np.mean(evaluation))
            out[probe] = {
                "heads": len(total),
                "seed_sd": math.sqrt(t),
                "evaluation_sd": math.sqrt(e),
                "training_sd": math.sqrt(max(t - e, 0.0)),
                "evaluation_share": e / t if t > 0 else NAN,
            }
    return out


def gain_noise(contrast_rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> dict:
    """The same split for the contrast's paired differences (evaluation variance of a
    difference taken as SE_a² + SE_b²: an upper bound, the arms read the same images)."""
    arms = by_label(runs)
    out = {}
    for row in contrast_rows:
        if len(row["differences"]) < 2:
            continue
        se2 = [
            value_at(arms[row["a"]][s], f"{row['probe']}_se") ** 2
            + value_at(arms[row["b"]][s], f"{row['probe']}_se") ** 2
            for s in row["seeds"]
        ]
        t, e = row["sd"] ** 2, float(np.mean(se2))
        out[f"{row['a']} − {row['b']} ({row['probe']})"] = {
            "seed_sd": row["sd"],
            "evaluation_sd_bound": math.sqrt(e),
            "evaluation_share_bound": e / t if t > 0 else NAN,
        }
    return out


def analyse(
    contrast_runs: list[dict], panel_runs: list[dict], joint_runs: list[dict]
) -> dict[str, Any]:
    labels = [a for pair in CONTRAST[:1] for a in pair] + ["baseline"]
    tests = contrast(contrast_runs)
    return {
        "contrast": {"arms": arm_table(contrast_runs, labels), "tests": tests},
        "panel": {
            "correlations": panel_correlations(panel_runs),
            "gains": panel_gains(panel_runs),
        },
        "joint": joint_vs_independent(joint_runs, panel_runs),
        "noise": {
            "panel": noise(panel_runs),
            "contrast": noise(contrast_runs),
            "gains": gain_noise(tests, contrast_runs),
        },
    }
