"""Tests of search/ranking.py on hand-built trial records with hand-computed values.

Three heads × two seeds, one extra pruned run of head A, one candidate (D) whose only run
failed, and a no-head baseline:

    head  seed  d_kl  d_cka  knn_cls  linear | init: knn_cls  linear  d_kl
    A     0     0.25  0.28   0.40     0.50   |       0.46     0.48    0.20
    A     1     0.27  0.26   0.36     0.46   |       0.47     0.48    0.22
    B     0     0.17  0.04   0.40     0.45   |       0.46     0.44    0.15
    B     1     0.19  0.03   0.42     0.47   |       0.47     0.44    0.15
    C     0     0.20  0.05   0.35     –      |       0.46     –       0.18
    C     1     0.20  0.04   0.39     –      |       0.47     –       0.18
    base  0/1   –     –      0.43/0.42  –    |       0.46/0.47
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest

from search.ranking import (
    HeadSummary,
    correlations,
    pareto_front,
    rank,
    ranking_json,
    ranking_table,
    signal_line,
    split_baseline,
    summarize,
)
from search.records import METRICS, TrialRecord
from training.metrics import metrics as declared
from training.specs import HeadSpec

A = HeadSpec("convnext", depth=3, kernel=5)
B = HeadSpec("transformer", depth=2)
C = HeadSpec("mlp", depth=2)
D = HeadSpec("resnet", depth=2, kernel=3)


def _rec(number, head, seed, final=None, init=None, state="COMPLETE", reason=None):
    return TrialRecord(
        number=number,
        label=head.label() if head else "baseline",
        head=head,
        seed=seed,
        state=state,
        strategy="independent",
        final=final or {},
        init=init or {},
        failure_reason=reason,
    )


def _fin(d_kl, d_cka, knn, linear=None):
    out = {"d_kl": d_kl, "d_cka": d_cka, "knn_cls": knn}
    return out if linear is None else {**out, "linear": linear}


def _init(knn, linear=None, d_kl=None):
    out = {"knn_cls": knn}
    out.update({"linear": linear} if linear is not None else {})
    out.update({"d_kl": d_kl} if d_kl is not None else {})
    return out


def records() -> list[TrialRecord]:
    return [
        _rec(0, A, 0, _fin(0.25, 0.28, 0.40, 0.50), _init(0.46, 0.48, 0.20)),
        _rec(1, A, 1, _fin(0.27, 0.26, 0.36, 0.46), _init(0.47, 0.48, 0.22)),
        _rec(2, B, 0, _fin(0.17, 0.04, 0.40, 0.45), _init(0.46, 0.44, 0.15)),
        _rec(3, B, 1, _fin(0.19, 0.03, 0.42, 0.47), _init(0.47, 0.44, 0.15)),
        _rec(4, C, 0, _fin(0.20, 0.05, 0.35), _init(0.46, d_kl=0.18)),
        _rec(5, C, 1, _fin(0.20, 0.04, 0.39), _init(0.47, d_kl=0.18)),
        _rec(6, D, 0, state="FAIL", reason="out of memory"),
        _rec(7, None, 0, {"knn_cls": 0.43}, _init(0.46)),
        _rec(8, None, 1, {"knn_cls": 0.42}, _init(0.47)),
        _rec(9, A, 2, _fin(0.9, 0.9, 0.9, 0.9), state="PRUNED"),  # must not enter the stats
    ]


def by_label(summaries):
    return {s.label: s for s in summaries}


def test_summarize_means_sds_floor_gain_and_lineage():
    summaries = summarize(records())
    assert [s.label for s in summaries] == [A.label(), B.label(), C.label(), D.label(), "baseline"]
    a = by_label(summaries)[A.label()]
    assert (a.n, a.failed, a.trials, a.head) == (2, 1, (0, 1, 9), A)
    assert a.failure_reasons == ("pruned",)
    assert a.mean["d_kl"] == pytest.approx(0.26)
    assert a.sd["d_kl"] == pytest.approx(0.02 / math.sqrt(2))  # |0.25 - 0.27| / sqrt(2)
    assert a.mean["knn_cls"] == pytest.approx(0.38)
    assert a.sd["knn_cls"] == pytest.approx(0.04 / math.sqrt(2))
    assert a.floor["knn_cls"] == pytest.approx(0.465)
    assert a.gain["knn_cls"] == pytest.approx(-0.085)  # mean of 0.40-0.46 and 0.36-0.47
    assert a.gain["linear"] == pytest.approx(0.0)  # mean of +0.02 and -0.02
    assert a.init["d_kl"] == pytest.approx(0.21)
    assert set(a.mean) == set(METRICS) and math.isnan(a.mean["knn_patch"])
    c = by_label(summaries)[C.label()]
    assert c.sd["d_kl"] == 0.0 and math.isnan(c.mean["linear"]) and math.isnan(c.floor["linear"])


def test_summarize_keeps_failed_candidate_and_baseline():
    summaries = by_label(summarize(records()))
    d = summaries[D.label()]
    assert (d.n, d.failed, d.trials, d.failure_reasons) == (0, 1, (6,), ("out of memory",))
    assert math.isnan(d.mean["d_kl"]) and math.isnan(d.floor["knn_cls"])
    base = summaries["baseline"]
    assert base.head is None and base.n == 2 and math.isnan(base.mean["d_kl"])
    assert base.gain["knn_cls"] == pytest.approx(-0.04)  # mean of -0.03 and -0.05
    heads, baseline = split_baseline(summarize(records()))
    assert baseline is not None and baseline.label == "baseline"
    assert [s.label for s in heads] == [A.label(), B.label(), C.label(), D.label()]


def test_rank_one_objective():
    # d_kl means: A 0.26, B 0.18, C 0.20 -> ranks A 1, C 2, B 3; D has no completed run.
    heads, _ = split_baseline(summarize(records()))
    ranked = rank(heads, ["d_kl"])
    assert [(s.label, s.rank, s.score) for s in ranked[:3]] == [
        (A.label(), 1, 1.0),
        (C.label(), 2, 2.0),
        (B.label(), 3, 3.0),
    ]
    assert ranked[3].label == D.label() and ranked[3].rank == 0 and math.isnan(ranked[3].score)
    assert heads[0].rank == 0  # inputs are not changed


def test_rank_two_objectives_mean_rank_rule():
    # d_kl: A 0.26 (1), C 0.20 (2), B 0.18 (3); knn_cls: B 0.41 (1), A 0.38 (2), C 0.37 (3)
    # scores: A (1+2)/2 = 1.5, B (3+1)/2 = 2.0, C (2+3)/2 = 2.5  -> A, B, C
    heads, _ = split_baseline(summarize(records()))
    ranked = rank(heads, ["d_kl", "knn"])  # "knn" is the spec's name for knn_cls
    assert [(s.label, s.rank, s.score) for s in ranked[:3]] == [
        (A.label(), 1, 1.5),
        (B.label(), 2, 2.0),
        (C.label(), 3, 2.5),
    ]
    assert (ranked[3].label, ranked[3].rank) == (D.label(), 0)


def test_rank_missing_objective_goes_last():
    # linear: A 0.48 (1), B 0.46 (2); C has no linear probe, D no completed run: both get
    # rank 0 and follow, by label ("mlp-d2-nores" < "resnet-d2-k3-nores")
    heads, _ = split_baseline(summarize(records()))
    ranked = rank(heads, ["linear"])
    assert [(s.label, s.rank) for s in ranked] == [
        (A.label(), 1),
        (B.label(), 2),
        (C.label(), 0),
        (D.label(), 0),
    ]


def _head(label, n=2, **means):
    nan = float("nan")
    return HeadSummary(
        label=label,
        head=None,
        n=n,
        failed=0,
        mean={m: means.get(m, nan) for m in METRICS},
        sd={m: 0.0 for m in METRICS},
        floor={},
        gain={},
        init={},
        trials=(),
    )


def test_rank_equal_scores_share_a_rank():
    # d_kl: x 0.3 (1), z 0.2 (2), y 0.1 (3), w 0.05 (4)
    # knn:  y 0.3 (1), z 0.2 (2), x 0.1 (3), w 0.05 (4)
    # scores: x 2, y 2, z 2, w 4 -> x, y, z share rank 1 (then by label), w is 4th
    heads = [
        _head("z", d_kl=0.2, knn_cls=0.2),
        _head("w", d_kl=0.05, knn_cls=0.05),
        _head("y", d_kl=0.1, knn_cls=0.3),
        _head("x", d_kl=0.3, knn_cls=0.1),
    ]
    ranked = rank(heads, ["d_kl", "knn_cls"])
    assert [(s.label, s.rank, s.score) for s in ranked] == [
        ("x", 1, 2.0),
        ("y", 1, 2.0),
        ("z", 1, 2.0),
        ("w", 4, 4.0),
    ]
    with pytest.raises(ValueError, match="unknown objective"):
        rank(heads, ["accuracy"])


def test_pareto_front_by_hand():
    # (d_kl, knn): p (3, 1), q (1, 3), r (2, 2), s (2, 1) <= p, t (1, 3) = q, u (0, 0),
    # v: no completed run. s is dominated by p, u by everyone; q and t tie, so both stay.
    heads = [
        _head("p", d_kl=3, knn_cls=1),
        _head("q", d_kl=1, knn_cls=3),
        _head("r", d_kl=2, knn_cls=2),
        _head("s", d_kl=2, knn_cls=1),
        _head("t", d_kl=1, knn_cls=3),
        _head("u", d_kl=0, knn_cls=0),
        _head("v", n=0),
    ]
    assert pareto_front(heads, ["d_kl", "knn_cls"]) == ["p", "q", "r", "t"]
    assert pareto_front(heads, ["d_kl"]) == ["p"]
    # On the records: C (0.20, 0.37) is dominated by A (0.26, 0.38); B has the best k-NN.
    assert pareto_front(summarize(records()), ["d_kl", "knn"]) == [A.label(), B.label()]


def test_correlations_by_hand():
    # d_kl~knn_cls over the 6 completed head trials (baseline has no d_kl, failures excluded):
    #   d_kl ranks [5, 6, 1, 2, 3.5, 3.5], knn ranks [4.5, 2, 4.5, 6, 1, 3], both mean 3.5
    #   centred x [1.5, 2.5, -2.5, -1.5, 0, 0], y [1, -1.5, 1, 2.5, -2.5, -0.5]
    #   Σxy = 1.5 - 3.75 - 2.5 - 3.75 = -8.5, Σx² = 17, Σy² = 17 -> rho = -0.5
    # d_kl~linear over A and B (C has no linear): d_kl ranks [3, 4, 1, 2], linear [4, 2, 1, 3]
    #   centred [.5, 1.5, -1.5, -.5] and [1.5, -.5, -1.5, .5]: Σxy = .75 - .75 + 2.25 - .25 = 2,
    #   Σx² = Σy² = 5 -> rho = 0.4
    out = correlations(records())
    label_free = [m.key for m in declared(kind="label_free") if m.objective]  # the default
    assert set(out) == {f"{d}~{a}" for d in label_free for a in ("knn_cls", "linear")}
    assert out["d_kl~knn_cls"]["rho"] == pytest.approx(-0.5)
    assert out["d_kl~knn_cls"]["n"] == 6
    assert out["d_kl~linear"]["rho"] == pytest.approx(0.4)
    assert out["d_kl~linear"]["n"] == 4
    lo, hi = out["d_kl~knn_cls"]["ci"]
    assert -1.0 <= lo <= hi <= 1.0
    assert out["d_loss~knn_cls"]["n"] == 0 and math.isnan(out["d_loss~knn_cls"]["rho"])
    assert correlations(records())["d_kl~knn_cls"]["ci"] == [lo, hi]  # seeded: reproducible


ACC = re.compile(r"\d\.\d{3}±\d\.\d{3} \(floor (\d\.\d{3}|\?), ([+-]\d\.\d{3}|\?)\)")


def test_table_shows_spread_floor_failures_and_baseline():
    heads, baseline = split_baseline(summarize(records()))
    ranked = rank(heads, ["d_kl", "d_cka"])
    table = ranking_table(ranked, ["d_kl", "d_cka"], baseline=baseline)
    lines = table.splitlines()
    assert "0.380±0.028 (floor 0.465, -0.085)" in table  # head A's k-NN
    assert "0.260±0.014" in table  # head A's d_kl
    assert lines[2].startswith("1 ") and A.label() in lines[2]
    row = next(line for line in lines if line.startswith("base"))
    assert "0.425±0.007 (floor 0.465, -0.040)" in row
    assert D.label() in table and "failed: " + D.label() + ": 1 run(s) (out of memory)" in table
    assert "(pruned)" in table
    # every k-NN/linear value of the 4 rows with probes comes with ± and floor: A, B, C, base
    # k-NN on 4 rows + linear on A, B (C and baseline have none)
    assert len(ACC.findall(table)) == 6
    for number in ("0.380", "0.410", "0.370", "0.425"):
        assert re.search(rf"{number}(?!±)", table) is None


def test_json_round_trips():
    summaries = summarize(records())
    heads, baseline = split_baseline(summaries)
    ranked = rank(heads, ["d_kl"])
    data = ranking_json(
        ranked, ["d_kl"], pareto_front(ranked, ["d_kl"]), correlations(records()), baseline
    )
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back == data
    assert [row["label"] for row in back["heads"]] == [s.label for s in ranked]
    assert HeadSpec.from_dict(back["heads"][0]["head"]) == A
    failed = back["heads"][-1]
    assert failed["n"] == 0 and failed["rank"] == 0 and failed["score"] is None
    assert failed["mean"]["d_kl"] is None
    assert back["baseline"]["head"] is None and back["pareto"] == [A.label()]
    assert back["correlations"]["d_kl~knn_cls"]["rho"] == pytest.approx(-0.5)


def test_collapsed_runs_are_shown_and_never_ranked():
    """A run whose global target collapsed leaves the statistics (its numbers describe a
    degenerate model), is counted and named in the table, and a head with only collapsed runs
    is not ranked nor recommended."""
    recs = records()
    uniform = [
        TrialRecord(
            number=20 + seed,
            label=D.label(),
            head=D,
            seed=seed,
            state="COMPLETE",
            strategy="independent",
            final=_fin(5.0, 0.99, 0.99, 0.99),  # would top every column if it counted
            init={**_init(0.46), "pixels_knn": 0.78},
            collapse="uniform",
        )
        for seed in (0, 1)
    ]
    healthy_b = [r if r.label != B.label() else replace_collapse(r, "ok") for r in recs]
    heads, baseline = split_baseline(summarize(healthy_b + uniform))
    d = by_label(heads)[D.label()]
    assert d.n == 0 and d.collapsed == 2 and d.collapse_kinds == ("uniform",)
    assert d.failed == 1 and math.isnan(d.mean["d_kl"])  # the earlier OOM run is still there
    assert d.pixels["pixels_knn"] == pytest.approx(0.78)
    ranked = rank(heads, ["d_kl", "d_cka"])
    assert ranked[0].label == A.label() and by_label(ranked)[D.label()].rank == 0
    table = ranking_table(ranked, ["d_kl", "d_cka"], baseline=baseline)
    assert f"collapsed: {D.label()}: 2 run(s) with uniform targets" in table
    assert "raw pixels (reference): knn 0.780" in table
    row = next(line for line in table.splitlines() if line.startswith("– ") and D.label() in line)
    assert row.rstrip().endswith("0/2/1")


def replace_collapse(record: TrialRecord, status: str) -> TrialRecord:
    return replace(record, collapse=status)


def test_signal_line_says_when_no_probe_left_the_floor():
    learned = [
        replace_final(r, knn_cls=r.init["knn_cls"] + 0.12) if r.label == A.label() and r.ok else r
        for r in records()
    ]
    heads, baseline = split_baseline(summarize(learned))
    table = ranking_table(rank(heads, ["d_kl"]), ["d_kl"], baseline=baseline)
    assert f"quality signal: probes rose above the floor (best: {A.label()}, knn_cls +0.120)" in (
        table
    )
    shared = [replace_final(r, knn_cls=0.6) if r.ok else r for r in records()]
    shared = [replace(r, init={**r.init, "knn_cls": 0.46}) if r.ok else r for r in shared]
    heads, baseline = split_baseline(summarize(shared))
    table = ranking_table(rank(heads, ["d_kl"]), ["d_kl"])  # a joint search: one base's probes
    assert "(best: one shared base (joint search), knn_cls +0.140)" in table
    flat = [replace_final(r, **r.init) if r.head and r.ok else r for r in records()]
    heads, baseline = split_baseline(summarize(flat))
    table = ranking_table(rank(heads, ["d_kl"]), ["d_kl"], baseline=baseline)
    assert "quality signal: none yet — ranked on discrepancy alone" in table
    assert ranking_json(rank(heads, ["d_kl"]), ["d_kl"], [], {})["signal"]["quality"] is False
    # a gain within the seeds' spread, or from a single seed, is no signal either
    noisy = [
        replace_final(r, knn_cls=r.init["knn_cls"] + (0.3 if r.seed == 0 else -0.25))
        if r.label == A.label() and r.ok
        else r
        for r in records()
    ]
    heads, _ = split_baseline(summarize(noisy))
    line = signal_line(heads)
    assert line.startswith("quality signal: none yet") and "seed spread" in line, line
    one_seed = [r for r in learned if r.seed == 0]
    heads, _ = split_baseline(summarize(one_seed))
    assert "a single seed: no spread" in signal_line(heads)


def replace_final(record: TrialRecord, **values: float) -> TrialRecord:
    return replace(record, final={**record.final, **values})


def test_each_probe_reading_shows_its_sampling_se_in_the_table_and_json():
    runs = [
        _rec(0, A, 0, {**_fin(0.2, 0.3, 0.40), "knn_cls_se": 0.005}, {"knn_cls": 0.35}),
        _rec(1, A, 1, {**_fin(0.2, 0.3, 0.44), "knn_cls_se": 0.007}, {"knn_cls": 0.35}),
    ]
    ranked = rank(summarize(runs), ["d_kl"])
    assert ranked[0].se["knn_cls"] == pytest.approx(0.006)
    assert "0.420±0.028 (se 0.006, floor 0.350, +0.070)" in ranking_table(ranked, ["d_kl"])
    data = ranking_json(ranked, ["d_kl"], [], {})
    assert data["heads"][0]["se"]["knn_cls"] == pytest.approx(0.006)
    assert data["heads"][0]["se"]["linear"] is None  # not measured: no SE invented
