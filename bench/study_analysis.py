"""Pure analyses of the head study's runs (``bench/study.py``): the collapse status of each run's
target, the gain over the baseline paired by seed with a 95% t-interval, the floor rule, the
fidelity of early rankings and a replay of ``budget.stop_when_stable`` on the joint runs.

A run is a plain dict as ``study.completed_runs`` returns it: ``label``, ``seed``, ``init``
(metrics at epoch 0), ``final``, ``curve`` (one entry per evaluated epoch ≥ 1), ``collapse``,
``epochs_done``. Nothing here trains or reads a study; every result is plain data (stats are
``(mean, sample sd)`` over seeds, NaN when there is nothing to average).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from search.stability import StableRanking, head_order
from search.stats import mean_sd, spearman

Run = dict[str, Any]
PROBES = ("knn_cls", "knn_patch", "linear")
STATUSES = ("ok", "uniform", "one-hot")
FIDELITY_METRICS = ("d_kl", "d_cka", "knn_cls", "knn_patch")
JOINT_METRICS = ("d_kl", "d_cka")
PATIENCES = (1, 2, 3)
NAN = float("nan")
# Student's t quantile t(0.975, df) for df = 1..30 (scipy is not a dependency of the project).
# Beyond df 30 the df-30 value is used: the interval is then a little wider than exact.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _of(runs: Iterable[Run], label: str) -> list[Run]:
    return [r for r in runs if r["label"] == label]


def _finals(runs: Iterable[Run], metric: str) -> list[float]:
    return [r["final"][metric] for r in runs if _finite(r["final"].get(metric))]


# ---------------------------------------------------------------------------- 1. collapse


def status_of(run: Run) -> str | None:
    """A run's final collapse status: its ``collapse`` key, else its last curve entry's."""
    if run.get("collapse") is not None:
        return str(run["collapse"])
    curve = run.get("curve") or []
    return str(curve[-1]["collapse"]) if curve and curve[-1].get("collapse") else None


def collapse_table(runs: list[Run], labels: Sequence[str], ln_k: float) -> list[dict[str, Any]]:
    """Per run label (baseline first): seeds per final status (``unknown``: not measured), how
    many collapsed, and the mean final target information and entropy (nats) against ln K."""
    rows = []
    for label in ["baseline", *labels]:
        mine = _of(runs, label)
        counts = dict.fromkeys((*STATUSES, "unknown"), 0)
        for r in mine:
            status = status_of(r) or "unknown"
            counts[status] = counts.get(status, 0) + 1
        entropy = mean_sd(_finals(mine, "target_entropy"))
        rows.append(
            {
                "label": label,
                "n": len(mine),
                "counts": counts,
                "collapsed": len(mine) - counts["ok"] - counts["unknown"],
                "target_information": mean_sd(_finals(mine, "target_information")),
                "target_entropy": entropy,
                "ln_k": ln_k,
                "entropy_fraction": entropy[0] / ln_k if ln_k > 0 else NAN,
            }
        )
    return rows


# ---------------------------------------------------------------------------- 2. paired gains


def t975(df: int) -> float:
    """Student's t 0.975 quantile for ``df`` ≥ 1 (the df-30 value beyond the table)."""
    return T975[min(df, len(T975)) - 1] if df >= 1 else NAN


def t_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd, n and the 95% t-interval of the mean; no interval (NaN, and
    ``excludes_zero`` None) below 2 values."""
    n = len(values)
    mean, sd = mean_sd(values)
    if n < 2 or not (_finite(mean) and _finite(sd)):
        return {"mean": mean, "sd": sd, "n": n, "ci": [NAN, NAN], "excludes_zero": None}
    half = t975(n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"mean": mean, "sd": sd, "n": n, "ci": [lo, hi], "excludes_zero": lo > 0 or hi < 0}


def paired_gains(
    runs: list[Run], labels: Sequence[str], probes: Sequence[str] = PROBES
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per head and probe: final head − final baseline on the same seed, as a t-interval."""
    base = {r["seed"]: r["final"] for r in _of(runs, "baseline")}
    out = {}
    for label in labels:
        out[label] = {
            p: t_interval(
                [
                    r["final"][p] - base[r["seed"]][p]
                    for r in _of(runs, label)
                    if _finite(r["final"].get(p)) and _finite(base.get(r["seed"], {}).get(p))
                ]
            )
            for p in probes
        }
    return out


# ---------------------------------------------------------------------------- 3. the floor


def pixel_reference(runs: list[Run]) -> dict[str, Any] | None:
    """Raw-pixel k-NN and linear probe as measured inside the runs (``init.pixels_*``), one
    value per seed (its first run that has one), mean ± sd over seeds; None if none has."""
    per_seed: dict[int, dict[str, Any]] = {}
    for r in runs:
        init = r.get("init") or {}
        if r["seed"] not in per_seed and _finite(init.get("pixels_knn")):
            per_seed[r["seed"]] = init
    if not per_seed:
        return None
    linear = [i["pixels_linear"] for i in per_seed.values() if _finite(i.get("pixels_linear"))]
    return {
        "knn_cls": mean_sd([i["pixels_knn"] for i in per_seed.values()]),
        "linear": mean_sd(linear),
        "n": len(per_seed),
        "source": "runs",
    }


def above_floor(
    runs: list[Run], labels: Sequence[str], probes: Sequence[str] = PROBES
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per run label (baseline first) and probe: final − init per seed (mean, sd, n) and
    ``learned``: positive on every seed and the mean above 2 sd (None below 2 seeds)."""
    out = {}
    for label in ["baseline", *labels]:
        out[label] = {}
        for p in probes:
            diffs = [
                r["final"][p] - r["init"][p]
                for r in _of(runs, label)
                if _finite(r["final"].get(p)) and _finite((r.get("init") or {}).get(p))
            ]
            mean, sd = mean_sd(diffs)
            learned = None if len(diffs) < 2 else all(d > 0 for d in diffs) and mean > 2 * sd
            out[label][p] = {"mean": mean, "sd": sd, "n": len(diffs), "learned": learned}
    return out


# ---------------------------------------------------------------------------- 4. fidelity


def series(run: Run, metric: str) -> dict[int, float]:
    """``metric`` per evaluated epoch of one run (epoch 0 from ``init``), finite values only."""
    points = [(0, (run.get("init") or {}).get(metric))]
    points += [(int(c["epoch"]), c.get(metric)) for c in run.get("curve") or []]
    return {e: float(v) for e, v in points if _finite(v)}


def common_epochs(runs: list[Run]) -> list[int]:
    """The epochs every run evaluated (0 = initialisation), ascending."""
    sets = [{0} | {int(c["epoch"]) for c in r.get("curve") or []} for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


def _rho_to_last(runs: list[Run], metric: str, epoch: int) -> float:
    """Spearman ρ over these runs between ``metric`` at ``epoch`` and at each run's last
    evaluation (NaN below 3 runs with both values, or when either side is constant)."""
    pairs = []
    for r in runs:
        s = series(r, metric)
        if epoch in s:
            pairs.append((s[epoch], s[max(s)]))
    if len(pairs) < 3:
        return NAN
    return spearman([a for a, _ in pairs], [b for _, b in pairs])


def fidelity(runs: list[Run], metrics: Sequence[str] = FIDELITY_METRICS) -> dict[str, Any]:
    """How early the heads' order matches the final one: at each epoch every head run evaluated
    and per metric, Spearman ρ over one seed's heads between that epoch and each run's last
    evaluation, then mean ± sd (and n) over the seeds where ρ is defined."""
    heads = [r for r in runs if r["label"] != "baseline"]
    epochs = common_epochs(heads)
    seeds = sorted({r["seed"] for r in heads})
    rows = []
    for epoch in epochs:
        row: dict[str, Any] = {"epoch": epoch}
        for m in metrics:
            rhos = [_rho_to_last([r for r in heads if r["seed"] == s], m, epoch) for s in seeds]
            rhos = [v for v in rhos if _finite(v)]
            row[m], row[f"{m}_n"] = mean_sd(rhos), len(rhos)
        rows.append(row)
    last = max((int(c["epoch"]) for r in heads for c in r.get("curve") or []), default=None)
    return {"metrics": list(metrics), "epochs": epochs, "final_epoch": last, "rows": rows}


# ---------------------------------------------------------------------------- 5. stop replay


def _evaluations(runs: list[Run], objectives: Sequence[str]) -> list[tuple[int, dict]]:
    """One joint run (its heads' trials of one seed) as (epoch, metrics) per evaluation ≥ 1, the
    metrics in the shape :func:`search.stability.head_order` reads."""
    out = []
    for epoch in [e for e in common_epochs(runs) if e > 0]:
        rows = [
            {"head": r["label"], **{m: series(r, m).get(epoch, NAN) for m in objectives}}
            for r in runs
        ]
        out.append((epoch, {"heads": rows}))
    return out


def _positions(order: Sequence[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(order)}


def replay_stop(
    runs: list[Run], patience: int, objectives: Sequence[str] = JOINT_METRICS
) -> dict[str, Any] | None:
    """``stop_when_stable`` replayed on one finished joint run: the epoch it would stop at
    (None: never), the fraction of the run's epochs saved (0 if never), and Spearman ρ between
    the head order there and at the run's last evaluation (NaN if never: nothing to compare).
    None when no evaluation has an order."""
    evals = [(e, m) for e, m in _evaluations(runs, objectives) if head_order(m, objectives)]
    if not evals:
        return None
    rule = StableRanking(objectives, patience)
    stop = next((e for e, m in evals if rule.update(e, m)), None)
    epochs = max([evals[-1][0], *(r.get("epochs_done") or 0 for r in runs)])
    if stop is None:
        return {"stop_epoch": None, "epochs": epochs, "saved": 0.0, "rho": NAN}
    here = _positions(head_order(dict(evals)[stop], objectives) or ())
    last = _positions(head_order(evals[-1][1], objectives) or ())
    rho = spearman([here[k] for k in last], [last[k] for k in last])
    return {"stop_epoch": stop, "epochs": epochs, "saved": (epochs - stop) / epochs, "rho": rho}


def simulate_stop(
    joint_runs: list[Run],
    patiences: Sequence[int] = PATIENCES,
    objectives: Sequence[str] = JOINT_METRICS,
) -> dict[str, Any]:
    """:func:`replay_stop` per patience and seed (one joint run per seed), with how many seeds
    the rule stopped, the mean ± sd of the fraction saved over all seeds and of ρ over the
    stopped ones."""
    seeds = sorted({r["seed"] for r in joint_runs})
    rows = []
    for m in patiences:
        per_seed = []
        for s in seeds:
            result = replay_stop([r for r in joint_runs if r["seed"] == s], m, objectives)
            if result is not None:
                per_seed.append({"seed": s, **result})
        rows.append(
            {
                "patience": m,
                "seeds": per_seed,
                "stopped": sum(p["stop_epoch"] is not None for p in per_seed),
                "saved": mean_sd([p["saved"] for p in per_seed]),
                "rho": mean_sd([p["rho"] for p in per_seed if _finite(p["rho"])]),
            }
        )
    return {"objectives": list(objectives), "rows": rows}
