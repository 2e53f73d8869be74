"""Tests of search/plot.py: it writes a readable 1200x500 PNG for normal and degenerate input."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from search.plot import plot_search
from search.ranking import rank, split_baseline, summarize
from search.records import TrialRecord
from training.specs import HeadSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADS = [HeadSpec("convnext", depth=3, kernel=5), HeadSpec("transformer", 2), HeadSpec("mlp", 2)]


def _rec(number, head, seed, final, init=None, state="COMPLETE"):
    return TrialRecord(
        number=number,
        label=head.label() if head else "baseline",
        head=head,
        seed=seed,
        state=state,
        strategy="independent",
        final=final,
        init=init or {"knn_cls": 0.46},
    )


def _records() -> list[TrialRecord]:
    out, number = [], 0
    for i, head in enumerate(HEADS):
        for seed in (0, 1):
            final = {"d_kl": 0.1 * (i + 1) + 0.01 * seed, "knn_cls": 0.40 - 0.02 * i + 0.01 * seed}
            out.append(_rec(number, head, seed, final))
            number += 1
    out.append(_rec(number, HeadSpec("resnet", 2), 0, {}, state="FAIL"))
    out += [_rec(number + 1 + s, None, s, {"knn_cls": 0.42 + 0.01 * s}) for s in (0, 1)]
    return out


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (500, 1200)
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_plot_normal_search(tmp_path: Path):
    heads, baseline = split_baseline(summarize(_records()))
    ranked = rank(heads, ["d_kl"])
    out = plot_search(
        ranked, tmp_path / "sub" / "search.png", title="proxy search", baseline=baseline
    )
    assert out == tmp_path / "sub" / "search.png"
    _check_png(out)


def test_plot_unranked_input_and_knn_alias(tmp_path: Path):
    heads, _ = split_baseline(summarize(_records()))
    out = plot_search(heads, str(tmp_path / "unranked.png"), discrepancy="d_kl", accuracy="knn")
    _check_png(out)


def test_plot_single_head_single_seed(tmp_path: Path):
    one = summarize([_rec(0, HEADS[0], 0, {"d_kl": 0.2, "knn_cls": 0.4})])
    _check_png(plot_search(rank(one, ["d_kl"]), tmp_path / "one.png"))


def test_plot_all_nan_and_empty(tmp_path: Path):
    failed = summarize([_rec(0, HEADS[0], 0, {}, init={}, state="FAIL")])
    _check_png(plot_search(rank(failed, ["d_kl"]), tmp_path / "nan.png"))
    nan_values = summarize([_rec(1, HEADS[1], 0, {"d_kl": float("nan"), "knn_cls": float("nan")})])
    _check_png(plot_search(nan_values, tmp_path / "nan2.png", baseline=nan_values[0]))
    _check_png(plot_search([], tmp_path / "empty.png"))


def test_plot_rejects_unknown_metric(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown objective"):
        plot_search([], tmp_path / "x.png", discrepancy="d_nope")


def _crowd(n: int, same_accuracy: bool) -> list[TrialRecord]:
    """``n`` heads, one seed each; with ``same_accuracy`` every head has the same probe value
    (one shared base: a joint run), otherwise close points."""
    heads = [HeadSpec("convnext", depth=1 + i % 3, kernel=3 + 2 * (i % 4)) for i in range(12)]
    heads += [HeadSpec("mlp", depth=1 + i % 6, width_ratio=1.0 + i // 6) for i in range(12)]
    return [
        _rec(
            i,
            h,
            0,
            {
                "d_kl": 0.50 + 0.001 * i,
                "d_cka": 0.3,
                "knn_cls": 0.41 if same_accuracy else 0.41 + 0.0005 * i,
            },
        )
        for i, h in enumerate(heads[:n])
    ]


@pytest.mark.slow
@pytest.mark.parametrize("shared_base", [True, False])
def test_crowded_plots_draw_no_overlapping_labels(tmp_path: Path, shared_base: bool):
    from search.plot import draw_search, overlapping_texts

    ranked = rank(summarize(_crowd(24, same_accuracy=shared_base)), ["d_kl"])
    gains = {ranked[0].label: (0.031, 0.004, 0.058)} if shared_base else None
    caption = "convnext-d1-k3-nores: paired linear gain +3.1 pp [+0.4, +5.8] over the baseline"
    fig = draw_search(ranked, shared_base=shared_base, gains=gains, caption=caption)
    assert overlapping_texts(fig) == []
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert any(caption in t for t in texts)  # the evidence sentence is the caption
    if shared_base:  # what separates the heads, and the stage-2 gain where confirmed
        assert any("stage 2: +3.1 pp [+0.4, +5.8]" in t for t in texts)
        assert any("one shared base" in t for t in texts)
    path = plot_search(ranked, tmp_path / "crowd.png", shared_base=shared_base, caption=caption)
    image = matplotlib.image.imread(path)
    assert image.shape[1] == 1200 and image.shape[0] > 500  # taller for 24 heads


def test_the_overlap_check_bites():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from search.plot import overlapping_texts

    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another label")
    assert overlapping_texts(fig) == [("one label", "another label")]
