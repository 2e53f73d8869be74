"""Ranking of candidate heads from their trial records (method §4, §5, §10).

:func:`summarize` turns each candidate's completed seeds into means and sample SDs per metric,
the random-init floor of each probe and the gain over it. :func:`rank` orders heads by the
objectives (each in its registered direction: a larger discrepancy is the paper's sign of a
better base),
:func:`pareto_front` keeps the non-dominated ones, and :func:`correlations` checks the paper's
claim per base: does discrepancy track probe accuracy? Probe accuracy is only ever reported
with its seed spread and floor: at proxy scale it often stays below the random-init network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from search.jsonable import plain_json
from search.objectives import direction_of, metric_of
from search.records import METRICS, PIXELS, PROBES, TrialRecord
from search.stats import average_ranks, bootstrap_ci, mean_sd, spearman
from search.storage import INTERRUPTED
from training.metrics import keys
from training.metrics import metrics as declared
from training.specs import HeadSpec

ACCURACIES = PROBES
INIT_DISCREPANCIES = (*keys(kind="label_free"), "h_target")  # the pre-screen reads these
FAILED_STATES = ("FAIL", "PRUNED")
LEARNING_GAIN = 0.02  # a probe gain over the floor below this is read as "did not learn"
RANK_RULE = (
    "per objective, average ranks of the heads' means (1 = best); score = mean of those "
    "ranks (lower = better); equal scores share a rank; heads with no completed run or a "
    "missing objective get rank 0 and come last"
)


@dataclass(frozen=True)
class HeadSummary:
    """One candidate head (``head=None``: the no-head iBOT baseline) over its seeds."""

    label: str
    head: HeadSpec | None
    n: int  # completed runs (seeds)
    failed: int  # FAIL or PRUNED runs
    mean: dict[str, float]  # per metric in METRICS, over completed runs' final values
    sd: dict[str, float]  # sample SD of the same
    floor: dict[str, float]  # mean init value of each probe: the random-init floor
    gain: dict[str, float]  # mean over runs of (final - init) for each probe
    init: dict[str, float]  # mean init discrepancy (d_kl, d_cka, d_loss, h_target)
    trials: tuple[int, ...]  # Optuna trial numbers of every run of this candidate
    rank: int = 0
    score: float = float("nan")
    failure_reasons: tuple[str, ...] = ()
    collapsed: int = 0  # completed runs whose global target collapsed: not in the statistics
    collapse_kinds: tuple[str, ...] = ()
    pixels: dict[str, float] = field(default_factory=dict)  # raw-pixel k-NN / linear reference
    # per probe: the mean binomial sampling SE of one final reading (its held-out set's size)
    se: dict[str, float] = field(default_factory=dict)


def metric_name(objective: str) -> str:
    """The METRICS key of an objective (``knn`` → ``knn_cls``); unknown names raise."""
    try:
        name = metric_of(objective)
    except ValueError:
        name = objective
    if name not in METRICS:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(METRICS)}")
    return name


def _sign(objective: str) -> float:
    """+1 for an objective where larger is better, -1 where smaller is (``alpha_req``)."""
    try:
        return 1.0 if direction_of(objective) == "maximize" else -1.0
    except ValueError:  # a metric that is not an objective (e.g. h_target): larger first
        return 1.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _summary(label: str, runs: list[TrialRecord]) -> HeadSummary:
    done = [r for r in runs if r.ok and not r.collapsed]
    collapsed = [r for r in runs if r.ok and r.collapsed]
    failed = [r for r in runs if r.state in FAILED_STATES]
    measured = [r for r in runs if r.ok]
    stats = {m: mean_sd([r.final[m] for r in done if m in r.final]) for m in METRICS}
    init = {m: mean_sd([r.init[m] for r in done if m in r.init])[0] for m in METRICS}
    return HeadSummary(
        label=label,
        head=next((r.head for r in runs if r.head is not None), None),
        n=len(done),
        failed=len(failed),
        mean={m: v[0] for m, v in stats.items()},
        sd={m: v[1] for m, v in stats.items()},
        floor={m: init[m] for m in ACCURACIES},
        gain={
            m: mean_sd([r.final[m] - r.init[m] for r in done if m in r.final and m in r.init])[0]
            for m in ACCURACIES
        },
        init={m: init[m] for m in INIT_DISCREPANCIES},
        trials=tuple(sorted(r.number for r in runs)),
        failure_reasons=tuple(dict.fromkeys(r.failure_reason or r.state.lower() for r in failed)),
        collapsed=len(collapsed),
        collapse_kinds=tuple(dict.fromkeys(str(r.collapse) for r in collapsed)),
        pixels={m: mean_sd([r.init[m] for r in measured if m in r.init])[0] for m in PIXELS},
        se={
            m: mean_sd([r.final[f"{m}_se"] for r in done if f"{m}_se" in r.final])[0]
            for m in ACCURACIES
        },
    )


def summarize(records: Sequence[TrialRecord]) -> list[HeadSummary]:
    """One summary per label, in order of first appearance; statistics over COMPLETE runs only,
    and of those only runs whose global target did not collapse (a collapsed run is counted
    in ``collapsed`` and shown, never ranked: its discrepancy and probes describe a degenerate
    model).

    A candidate whose runs all failed stays in the list with ``n=0`` (NaN means), so a table
    can show it as failed instead of silently dropping it. Running/waiting trials count in
    ``trials`` but neither as completed nor as failed. A trial whose process died (reconciled as
    interrupted when the search resumed) is left out: its run was started again under the same
    label, so counting it would count that run twice.
    """
    groups: dict[str, list[TrialRecord]] = {}
    for record in records:
        if record.failure_reason == INTERRUPTED:  # its process died; the run was started again
            continue
        groups.setdefault(record.label, []).append(record)
    return [_summary(label, runs) for label, runs in groups.items()]


def split_baseline(summaries: Sequence[HeadSummary]) -> tuple[list[HeadSummary], Any]:
    """Separate the candidate heads from the no-head baseline (``head is None``, or None)."""
    heads = [s for s in summaries if s.head is not None]
    return heads, next((s for s in summaries if s.head is None), None)


def _rankable(s: HeadSummary, names: Sequence[str]) -> bool:
    return s.n > 0 and all(_finite(s.mean.get(m)) for m in names)


def rank(summaries: Sequence[HeadSummary], objectives: Sequence[str]) -> list[HeadSummary]:
    """Order heads by the mean-rank rule (:data:`RANK_RULE`); returns new summaries.

    Per objective each rankable head gets the average rank of its mean among the others
    (1 = best: the largest, or the smallest for a minimised objective; ties averaged); its
    score is the mean of those ranks over objectives. Heads sort by score, then label. Equal
    scores share the smaller rank (1, 2, 2, 4). Heads with no completed run or a NaN/missing
    objective mean get rank 0, score NaN and follow, by label.
    """
    names = [metric_name(o) for o in objectives]
    if not names:
        raise ValueError("rank needs at least one objective")
    ok = [s for s in summaries if _rankable(s, names)]
    rest = sorted((s for s in summaries if not _rankable(s, names)), key=lambda s: s.label)
    out: list[HeadSummary] = []
    if ok:
        signs = [_sign(o) for o in objectives]
        per_objective = np.array(
            [
                average_ranks([-sign * s.mean[m] for s in ok])
                for m, sign in zip(names, signs, strict=True)
            ]
        )
        scores = [round(float(v), 9) for v in per_objective.mean(axis=0)]
        for i in sorted(range(len(ok)), key=lambda i: (scores[i], ok[i].label)):
            place = 1 + sum(v < scores[i] for v in scores)
            out.append(replace(ok[i], rank=place, score=scores[i]))
    return out + [replace(s, rank=0, score=float("nan")) for s in rest]


def pareto_front(summaries: Sequence[HeadSummary], objectives: Sequence[str]) -> list[str]:
    """Labels of the non-dominated rankable heads, in input order (each objective in its
    registered direction).

    Head b dominates head a when b is at least as good on every objective and better on one.
    Heads without completed runs or with a missing objective are never on the front.
    """
    names = [metric_name(o) for o in objectives]
    ok = [s for s in summaries if _rankable(s, names)]
    signs = [_sign(o) for o in objectives]
    points = [[sign * s.mean[m] for m, sign in zip(names, signs, strict=True)] for s in ok]

    def dominates(q: list[float], p: list[float]) -> bool:
        pairs = list(zip(q, p, strict=True))
        return all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)

    front = [not any(dominates(q, p) for q in points) for p in points]
    return [s.label for s, keep in zip(ok, front, strict=True) if keep]


def correlations(
    records: Sequence[TrialRecord],
    discrepancies: Sequence[str] | None = None,
    accuracies: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Spearman ρ of each label-free metric (default: every one that can be an objective)
    against each probe accuracy (default: the primary probes, and any other objective probe
    that was measured), per trial (seeds count).

    Keys are ``"disc~acc"``; values ``{"rho", "ci": [lo, hi], "n"}`` over COMPLETE records
    with finite final values of both. ρ and its 95% bootstrap interval are NaN when there are
    fewer than 3 such trials or a side is constant (method §4: the paper's claim, per base).
    """
    done = [r for r in records if r.ok]
    if discrepancies is None:
        discrepancies = [m.key for m in declared(kind="label_free") if m.objective]
    if accuracies is None:
        accuracies = [
            m.key
            for m in declared(kind="probe")
            if m.objective and (m.primary or any(m.key in r.final for r in done))
        ]
    out: dict[str, dict] = {}
    for d in (metric_name(m) for m in discrepancies):
        for a in (metric_name(m) for m in accuracies):
            both = [r.final for r in done if _finite(r.final.get(d)) and _finite(r.final.get(a))]
            x, y = [f[d] for f in both], [f[a] for f in both]
            lo, hi = bootstrap_ci(x, y)
            out[f"{d}~{a}"] = {"rho": spearman(x, y), "ci": [lo, hi], "n": len(both)}
    return out


def _pm(mean: float, sd: float) -> str:
    if not _finite(mean):
        return "–"
    return f"{mean:.3f}±{sd:.3f}" if _finite(sd) else f"{mean:.3f}±?"


def _accuracy(s: HeadSummary, m: str) -> str:
    """Probe accuracy as mean±sd with its sampling SE, floor and gain; never a bare number."""
    if not _finite(s.mean[m]):
        return "–"
    floor = f"{s.floor[m]:.3f}" if _finite(s.floor[m]) else "?"
    gain = f"{s.gain[m]:+.3f}" if _finite(s.gain[m]) else "?"
    se = s.se.get(m)
    sampling = f"se {se:.3f}, " if _finite(se) else ""
    return f"{_pm(s.mean[m], s.sd[m])} ({sampling}floor {floor}, {gain})"


def ranking_table(
    ranked: Sequence[HeadSummary],
    objectives: Sequence[str],
    baseline: HeadSummary | None = None,
    signal: bool = True,
) -> str:
    """Fixed-width text table for a terminal, baseline last, failures listed under it; with
    ``signal`` the raw-pixel and quality-signal lines (a staged search states its decision
    instead)."""
    names = [metric_name(o) for o in objectives]
    columns = [m for m in names if m not in ACCURACIES]
    rows = [*ranked, *([baseline] if baseline else [])]
    probes = [  # k-NN [CLS] always; the other objective probes where measured
        m.key
        for m in declared(kind="probe")
        if m.objective and (m.key == "knn_cls" or any(_finite(s.mean[m.key]) for s in rows))
    ]
    header = ["rank", "head", *columns, "score", *(f"{m} (se, floor, gain)" for m in probes)]
    lines = [[*header, "n ok/collapsed/failed"]]
    for s in rows:
        place = "base" if s is baseline else (str(s.rank) if s.rank else "–")
        score = f"{s.score:.2f}" if _finite(s.score) else "–"
        cells = [_pm(s.mean[m], s.sd[m]) for m in columns]
        probe_cells = [_accuracy(s, m) for m in probes]
        counts = f"{s.n}/{s.collapsed}/{s.failed}"
        lines.append([place, s.label, *cells, score, *probe_cells, counts])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) + 1)]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    minimised = [m for m, o in zip(names, objectives, strict=True) if _sign(o) < 0]
    ways = "maximised" + (f"; minimised: {', '.join(minimised)}" if minimised else "")
    text.append(f"objectives: {', '.join(names)} ({ways}); mean±sd over completed seeds")
    text.append(
        "probe: se = binomial sampling SE of one reading on the held-out images, floor = "
        "random-init accuracy (BN statistics recalibrated), gain = mean(final - init) over seeds"
    )
    if signal:
        text.extend(line for line in (_pixel_line(rows), signal_line(rows)) if line)
    for s in (s for s in rows if s.collapsed):
        kinds = ", ".join(s.collapse_kinds)
        text.append(
            f"collapsed: {s.label}: {s.collapsed} run(s) with {kinds} targets, left out of the "
            "statistics (use the proxy recipe or `hssl search calibrate`)"
        )
    for s in (s for s in rows if s.failed):
        reasons = "; ".join(s.failure_reasons) or "no reason"
        text.append(f"failed: {s.label}: {s.failed} run(s) ({reasons})")
    return "\n".join(text)


def quality_signal(rows: Sequence[HeadSummary]) -> tuple[bool | None, str]:
    """Did any probe leave the random-init floor by more than its seed spread? (None, "")
    when no probe was measured. A gain counts only over at least two seeds, above both
    LEARNING_GAIN and the SD of the probe across seeds; otherwise the quality columns are
    noise and the ranking rests on discrepancy alone, and the line says so."""
    gains = [
        (s.gain[m], m, s.label, s.sd.get(m, float("nan")), s.n)
        for s in rows
        for m in ACCURACIES
        if _finite(s.gain.get(m))
    ]
    if not gains:
        return None, ""
    real = [g for g in gains if g[4] >= 2 and g[0] > LEARNING_GAIN and g[0] > g[3]]
    if not real:
        best, metric, _, sd, n = max(gains)
        spread = (
            f"seed spread {sd:.3f} over {n} seeds"
            if n >= 2 and _finite(sd)
            else ("a single seed: no spread to compare with")
        )
        return False, (
            "quality signal: none yet — ranked on discrepancy alone "
            f"(best {metric} gain over the floor {best:+.3f}; {spread}). Use more seeds, train "
            "longer, or calibrate the proxy recipe (hssl search calibrate)"
        )
    best, metric, label, _, _ = max(real)
    shared = len({g for g, m, *_ in gains if m == metric}) == 1 and len(rows) > 1
    where = "one shared base (joint search)" if shared else label
    return True, (
        f"quality signal: probes rose above the floor (best: {where}, {metric} {best:+.3f}), "
        "by more than their seed spread"
    )


def signal_line(rows: Sequence[HeadSummary]) -> str:
    return quality_signal(rows)[1]


def _pixel_line(rows: Sequence[HeadSummary]) -> str:
    """The raw-pixel reference: a probe gain means learning only above the floor, and a
    representation worth having should also beat the pixels themselves."""
    values = {
        m: float(np.mean(v))
        for m in PIXELS
        if (v := [s.pixels[m] for s in rows if _finite(s.pixels.get(m))])
    }
    if not values:
        return ""
    parts = [f"{m.removeprefix('pixels_')} {v:.3f}" for m, v in values.items()]
    return "raw pixels (reference): " + ", ".join(parts)


def summary_json(s: HeadSummary) -> dict[str, Any]:
    """One head as plain data (the head spec as its dict, so it round-trips)."""
    return plain_json(
        {
            "rank": s.rank,
            "score": s.score,
            "label": s.label,
            "head": s.head.to_dict() if s.head else None,
            "n": s.n,
            "failed": s.failed,
            "failure_reasons": s.failure_reasons,
            "mean": s.mean,
            "sd": s.sd,
            "floor": s.floor,
            "gain": s.gain,
            "init": s.init,
            "trials": s.trials,
            "collapsed": s.collapsed,
            "collapse_kinds": s.collapse_kinds,
            "pixels": s.pixels,
            "se": s.se,
        }
    )


def ranking_json(
    ranked: Sequence[HeadSummary],
    objectives: Sequence[str],
    pareto: list[str],
    correlations: dict,
    baseline: HeadSummary | None = None,
) -> dict[str, Any]:
    """The ranking as plain JSON-able data (``json.dumps(..., allow_nan=False)`` works)."""
    return plain_json(
        {
            "objectives": [metric_name(o) for o in objectives],
            "rule": RANK_RULE,
            "heads": [summary_json(s) for s in ranked],
            "baseline": summary_json(baseline) if baseline else None,
            "pareto": list(pareto),
            "correlations": correlations,
            "signal": dict(zip(("quality", "line"), quality_signal(ranked), strict=True)),
        }
    )
