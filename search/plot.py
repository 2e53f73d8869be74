"""The search's evidence as one PNG (method §4, §10), drawn to fit the strategy.

Heads trained alone (independent, optuna): left, each head's mean discrepancy against its mean
probe accuracy, error bars = sample SD over seeds, the random-init floor dashed and the no-head
baseline dotted, Spearman ρ over the heads' means in the title (the paper's claim, checked on
this base). Heads on one shared base (a joint search, a staged search's screen): every head has
the same probe accuracy, so the left panel shows what tells them apart instead — the screening
metric per head, and a stage-2 head's paired gain over the baseline where it was confirmed.
Right: the ranking as bars, best on top. The evidence card's sentence is the caption. Point
labels are moved until no two texts overlap (:func:`overlapping_texts` checks the drawn
figure). Drawn on a bare Agg canvas (no pyplot, no display, no global backend switch), so it
runs in workers and tests. NaNs, one head or one seed never crash it.
"""

from __future__ import annotations

import math
import textwrap
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
            f"{s.label} (n={s.n})",
            (x, y),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
            gid="point-label",
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


def _screen(
    ax: Axes,
    heads: Sequence[HeadSummary],
    disc: str,
    gains: dict[str, tuple[float, float, float]] | None,
) -> None:
    """Heads on one shared base: the screening metric per head (mean ± sd over seeds), and
    where stage 2 confirmed a head, its paired probe gain over the baseline beside the bar."""
    rows = sorted((s for s in heads if _finite(s.mean.get(disc))), key=lambda s: -s.mean[disc])
    ypos = np.arange(len(rows))
    values = [s.mean[disc] for s in rows]
    confirmed = gains or {}
    colours = ["C2" if s.label in confirmed else "C0" for s in rows]
    ax.barh(ypos, values, xerr=[_sd(s, disc) for s in rows], color=colours, capsize=2)
    ax.set_yticks(ypos, labels=[f"{s.label} (n={s.n})" for s in rows])
    ax.tick_params(axis="y", labelsize=8)
    for y, s in zip(ypos, rows, strict=True):
        gain = confirmed.get(s.label)
        if gain is not None:
            mean, lo, hi = gain
            interval = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if _finite(lo) else ""
            text = f" stage 2: {100 * mean:+.1f} pp{interval}"
            ax.text(s.mean[disc], y, text, va="center", fontsize=7, gid="point-label")
    ax.margins(x=0.35)  # room for the stage-2 notes
    ax.invert_yaxis()
    ax.set_xlabel(f"{disc} (screening metric, mean ± sd over seeds)")
    title = "one shared base: the screen"
    ax.set_title(title + (" (green: confirmed in stage 2)" if confirmed else ""))
    ax.grid(axis="x", alpha=0.3)
    if not rows:
        _empty(ax, f"no head has {disc}")


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


def draw_search(
    ranked: Sequence[HeadSummary],
    *,
    discrepancy: str = "d_kl",
    accuracy: str = "knn_cls",
    title: str = "",
    baseline: HeadSummary | None = None,
    shared_base: bool = False,
    gains: dict[str, tuple[float, float, float]] | None = None,
    caption: str = "",
) -> Figure:
    """The two-panel figure (1200 px wide, taller with many heads), labels not overlapping.

    ``ranked`` is the output of ``rank`` (best first); pass the no-head baseline separately.
    ``shared_base``: the heads were trained on one base (joint, staged screen): the left panel
    is the screen (``gains``: a stage-2 head's paired gain mean, lo, hi). ``accuracy`` may use
    the search spec's alias ``knn`` for ``knn_cls``. ``caption``: the evidence sentence.
    """
    disc, acc = metric_name(discrepancy), metric_name(accuracy)
    height = max(5.0, 1.6 + 0.28 * len(ranked))
    fig = Figure(figsize=(12, height), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1.0]})
    if shared_base:
        _screen(left, list(ranked), disc, gains)
    else:
        _scatter(left, list(ranked), disc, acc, baseline)
    _bars(right, list(ranked), disc)
    if title:
        fig.suptitle(title)
    lines = textwrap.wrap(caption, 160) if caption else []
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", ha="left")
    caption_px = 12 * len(lines) + 8 if lines else 0  # 8 pt lines at 100 dpi, and a gap
    fig.tight_layout(rect=(0, caption_px / (100 * height), 1, 1))
    _separate_labels(fig)
    return fig


def plot_search(ranked: Sequence[HeadSummary], path: str | Path, **kw) -> Path:
    """Write :func:`draw_search`'s figure as a PNG to ``path`` and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_search(ranked, **kw).savefig(out, format="png", dpi=100)
    return out


def _in_view(ax: Axes, label, axis: str) -> bool:
    """A tick label is drawn only if its tick lies inside the axes (matplotlib keeps the
    labels of ticks beyond the view limits, undrawn)."""
    box = ax.get_window_extent()
    x, y = label.get_window_extent().get_points().mean(axis=0)
    return box.x0 - 1 <= x <= box.x1 + 1 if axis == "x" else box.y0 - 1 <= y <= box.y1 + 1


def _drawn_texts(fig: Figure) -> list:
    """The texts a reader sees: the figure's own, and per axes its titles, axis labels, the
    tick labels in view, its texts and annotations, its legend's."""
    texts = [*fig.texts, *([fig._suptitle] if fig._suptitle else [])]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += [t for t in ax.get_xticklabels() if _in_view(ax, t, "x")]
        texts += [t for t in ax.get_yticklabels() if _in_view(ax, t, "y")]
        texts += list(ax.texts)
        legend = ax.get_legend()
        if legend is not None:
            texts += list(legend.get_texts())
    return texts


def _text_boxes(fig: Figure) -> list:
    """Every visible, non-empty drawn text with its pixel bounding box (after a draw)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [
        (t, t.get_window_extent(renderer))
        for t in _drawn_texts(fig)
        if t.get_visible() and str(t.get_text()).strip()
    ]


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap (what a reader could not tell apart)."""
    boxes = _text_boxes(fig)
    pairs = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            if box_a.overlaps(box_b) and box_a.width > 0 and box_b.width > 0:
                pairs.append((a.get_text(), b.get_text()))
    return pairs


def _separate_labels(fig: Figure, step: float = 11.0, tries: int = 60) -> None:
    """Move each point label (``gid="point-label"``) down or up in steps of ``step`` points
    until it overlaps no other text; a label that finds no free place within ``tries`` steps is
    hidden (its head is still named on the ranking's axis)."""
    renderer = fig.canvas.get_renderer()
    labels = [
        t for t in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "point-label")
    ]
    placed = [box for t, box in _text_boxes(fig) if t not in labels]
    for label in labels:
        x, y = label.get_position() if not hasattr(label, "xyann") else label.xyann
        for k in range(tries):
            offset = (k + 1) // 2 * step * (1 if k % 2 else -1)
            if hasattr(label, "xyann"):
                label.xyann = (x, y + offset)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
        else:
            label.set_visible(False)
