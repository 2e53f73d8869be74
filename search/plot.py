"""The search's evidence as one PNG (method §4, §10): discrepancy vs probe accuracy, ranking.

Left: each head's mean discrepancy against its mean probe accuracy, error bars = sample SD over
seeds, the random-init floor dashed and the no-head baseline dotted, Spearman ρ over the heads'
means in the title (the paper's claim, checked on this base). Right: the ranking as horizontal
bars, best on top. Drawn on a bare Agg canvas (no pyplot, no display, no global backend
switch), so it runs in workers and tests. NaNs, one head or one seed never crash it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from search.ranking import HeadSummary, metric_name
from search.stats import spearman


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _sd(s: HeadSummary, metric: str) -> float:
    """SD for an error bar; 0 where undefined (one seed gives 0, no seed gives NaN)."""
    value = s.sd.get(metric)
    return value if _finite(value) else 0.0


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _scatter(
    ax: Axes, heads: Sequence[HeadSummary], disc: str, acc: str, baseline: HeadSummary | None
) -> None:
    """Discrepancy vs accuracy per head, with the floor and the baseline as reference lines."""
    points = [s for s in heads if _finite(s.mean.get(disc)) and _finite(s.mean.get(acc))]
    for s in points:
        x, y = s.mean[disc], s.mean[acc]
        ax.errorbar(x, y, xerr=_sd(s, disc), yerr=_sd(s, acc), fmt="o", capsize=3, color="C0")
        ax.annotate(
            f"{s.label} (n={s.n})", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
    everyone = [*heads, *([baseline] if baseline else [])]
    floors = [s.floor.get(acc) for s in everyone if _finite(s.floor.get(acc))]
    if floors:
        floor = float(np.mean(floors))
        ax.axhline(floor, ls="--", color="grey", label=f"random-init floor {floor:.3f}")
    if baseline is not None and _finite(baseline.mean.get(acc)):
        value = baseline.mean[acc]
        ax.axhline(value, ls=":", color="C3", label=f"baseline, no head {value:.3f}")
    rho = spearman([s.mean[disc] for s in points], [s.mean[acc] for s in points])
    rho_text = f"{rho:+.2f}" if _finite(rho) else "n/a"
    ax.set_title(f"{disc} vs {acc}: Spearman ρ = {rho_text} over {len(points)} heads")
    ax.set_xlabel(f"{disc} (higher = larger discrepancy)")
    ax.set_ylabel(f"{acc} accuracy (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.1)  # room for the point labels
    if not points:
        _empty(ax, f"no head has both {disc} and {acc}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


def _bars(ax: Axes, heads: Sequence[HeadSummary], disc: str) -> None:
    """Scores (mean rank, from ``rank``) as bars; without scores, the discrepancy means."""
    if any(_finite(s.score) for s in heads):
        rows = sorted(
            heads, key=lambda s: (not _finite(s.score), s.score if _finite(s.score) else 0)
        )
        values = [s.score for s in rows]
        ax.set_xlabel("score: mean rank over objectives (lower = better)")
    else:
        rows = sorted(heads, key=lambda s: -s.mean[disc] if _finite(s.mean.get(disc)) else 1e300)
        values = [s.mean.get(disc, math.nan) for s in rows]
        ax.set_xlabel(f"{disc} (higher = better)")
    ypos = np.arange(len(rows))
    ok = [_finite(v) for v in values]
    ax.barh(
        ypos,
        [v if good else 0.0 for v, good in zip(values, ok, strict=True)],
        color=["C0" if good else "lightgrey" for good in ok],
    )
    names = [f"{s.rank}. {s.label}" if s.rank else s.label for s in rows]
    ax.set_yticks(ypos, labels=[f"{name} (n={s.n})" for name, s in zip(names, rows, strict=True)])
    ax.tick_params(axis="y", labelsize=8)
    for y, v, good, s in zip(ypos, values, ok, rows, strict=True):
        text = f" {v:.2f}" if good else (" failed" if s.n == 0 else " n/a")
        ax.text(v if good else 0.0, y, text, va="center", fontsize=8)
    ax.margins(x=0.12)  # room for the value labels
    ax.invert_yaxis()
    ax.set_title("ranking (best on top)")
    ax.grid(axis="x", alpha=0.3)
    if not rows:
        _empty(ax, "no heads")


def plot_search(
    ranked: Sequence[HeadSummary],
    path: str | Path,
    *,
    discrepancy: str = "d_kl",
    accuracy: str = "knn_cls",
    title: str = "",
    baseline: HeadSummary | None = None,
) -> Path:
    """Write the two-panel PNG (1200x500 px) to ``path`` and return the path.

    ``ranked`` is the output of ``rank`` (best first); pass the no-head baseline separately.
    ``accuracy`` may use the search spec's alias ``knn`` for ``knn_cls``.
    """
    disc, acc = metric_name(discrepancy), metric_name(accuracy)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1.0]})
    _scatter(left, list(ranked), disc, acc, baseline)
    _bars(right, list(ranked), disc)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    return out
