"""What a staged search reports (``search.strategies.staged``): the screen's order, each
stage-2 head's paired gain over the baseline with its Holm-corrected interval, and the decision
— a head that beat the baseline, or the baseline itself.

:func:`judge` is pure (records in, verdicts out); :func:`staged_report` turns a study into the
table the CLI and the dashboard note show and the ranking JSON the API serves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna

from search.evidence import card_lines, evidence_card
from search.jsonable import plain_json
from search.objectives import metric_of
from search.ranking import (
    HeadSummary,
    correlations,
    quality_signal,
    rank,
    ranking_table,
    summarize,
    summary_json,
)
from search.records import TrialRecord, baseline_records, records
from search.spec import SearchSpec
from search.stats import holm, paired_t

RULE = (
    "stage 1 ranks every candidate by the objectives over joint runs (the screen); stage 2 "
    "judges the kept heads by the paired gain of the probe over the baseline on the same "
    "seeds (paired t-test, Holm-corrected over the stage-2 heads); the recommendation is the "
    "largest gain that the corrected test says beat the baseline, else the baseline"
)


@dataclass(frozen=True)
class Verdict:
    """One stage-2 head against the baseline on the probe, paired by seed."""

    label: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]  # head − baseline per seed
    mean: float
    lo: float  # interval at the Holm level of this head's test
    hi: float
    level: float
    p: float
    p_holm: float
    beat: bool  # the corrected test rejects "no gain" and the gain is positive

    def sentence(self, probe: str) -> str:
        interval = (
            f" [{100 * self.lo:+.1f}, {100 * self.hi:+.1f}] ({100 * self.level:.1f} % level)"
            if math.isfinite(self.lo)
            else ""
        )
        return (
            f"{self.label}: paired {probe} gain {100 * self.mean:+.1f} pp{interval} over the "
            f"baseline on {len(self.seeds)} seeds, Holm p {self.p_holm:.3g}"
            if math.isfinite(self.p_holm)
            else f"{self.label}: {len(self.seeds)} paired seed(s), too few to test"
        )


def judge(
    stage2: Sequence[TrialRecord], baseline: Sequence[TrialRecord], probe: str, alpha: float
) -> list[Verdict]:
    """Each stage-2 head's paired gain on ``probe`` (a metric key) over the baseline, best
    mean first. Collapsed or failed runs, on either side, drop their seed."""
    base = {
        r.seed: r.final[probe] for r in baseline if r.ok and not r.collapsed and probe in r.final
    }
    by_head: dict[str, dict[int, float]] = {}
    for r in stage2:
        if r.ok and not r.collapsed and probe in r.final and r.seed in base:
            by_head.setdefault(r.label, {})[r.seed] = r.final[probe] - base[r.seed]
    tests = {label: paired_t(list(d.values())) for label, d in by_head.items()}
    labels = list(tests)
    corrected = holm([tests[label]["p"] for label in labels], alpha)
    verdicts = []
    for label, c in zip(labels, corrected, strict=True):
        d = by_head[label]
        at_level = (
            paired_t(list(d.values()), level=c["level"])
            if math.isfinite(c["level"])
            else tests[label]
        )
        verdicts.append(
            Verdict(
                label=label,
                seeds=tuple(sorted(d)),
                differences=tuple(d[s] for s in sorted(d)),
                mean=tests[label]["mean"],
                lo=at_level["lo"],
                hi=at_level["hi"],
                level=c["level"],
                p=tests[label]["p"],
                p_holm=c["p_holm"],
                beat=bool(c["reject"]) and tests[label]["mean"] > 0,
            )
        )
    return sorted(verdicts, key=lambda v: (not v.beat, -v.mean if math.isfinite(v.mean) else 0))


def decision(verdicts: Sequence[Verdict], probe: str, screened: int) -> dict[str, Any]:
    """The recommendation in one sentence: the best head that beat the baseline, or not."""
    winners = [v for v in verdicts if v.beat]
    if winners:
        best = winners[0]
        return {"recommend": best.label, "keep_baseline": False, "line": best.sentence(probe)}
    if not verdicts:
        line = f"keep the baseline (no head reached stage 2 with paired seeds: {screened} screened)"
    else:
        line = f"keep the baseline (no head beat it: best {verdicts[0].sentence(probe)})"
    return {"recommend": None, "keep_baseline": True, "line": line}


def screen_order(study: optuna.Study, spec: SearchSpec) -> list[HeadSummary]:
    """Stage 1's heads ranked by the objectives over the joint runs."""
    joint = [r for r in records(study) if r.strategy == "joint"]
    return rank(summarize(joint), spec.objectives)


def staged_report(study: optuna.Study, spec: SearchSpec, keep: int) -> dict[str, Any]:
    recs = records(study)
    screen = rank(summarize([r for r in recs if r.strategy == "joint"]), spec.objectives)
    stage2 = [r for r in recs if r.strategy == "independent"]
    base_runs = baseline_records(study)
    baseline = summarize(base_runs)[0] if base_runs else None
    probe = metric_of(spec.staged.probe)
    verdicts = judge(stage2, base_runs, probe, spec.staged.alpha)
    kept = study.user_attrs.get("stage2_heads") or []
    choice = decision(verdicts, probe, len(screen))
    corr = correlations(stage2)  # every label-free metric against the probes
    confirmed = {s.label: s for s in summarize(stage2)}
    order = [v.label for v in verdicts] + [
        lbl for lbl in kept if lbl not in {v.label for v in verdicts}
    ]
    heads = [
        _confirmed_row(confirmed[lbl], verdicts, rank_)
        for rank_, lbl in enumerate(order, 1)
        if lbl in confirmed
    ]
    heads += [_screened_row(s, kept, keep) for s in screen if s.label not in confirmed]
    table = "\n".join(
        [
            f"stage 2 (confirm): paired {probe} gain over the baseline on seeds "
            f"{', '.join(map(str, sorted({r.seed for r in base_runs}))) or '–'} (Holm over "
            f"{len(verdicts)} head(s), family-wise {spec.staged.alpha:g})",
            *_verdict_lines(verdicts, probe),
            "",
            ranking_table(
                [
                    replace(confirmed[lbl], rank=i)
                    for i, lbl in enumerate(order, 1)
                    if lbl in confirmed
                ],
                spec.objectives,
                baseline,
                signal=False,
            ),
            "",
            f"stage 1 (screen): joint runs on seeds {', '.join(map(str, spec.seeds()))}, "
            f"ranked by {', '.join(spec.objectives)}; kept the best {keep}",
            ranking_table(screen, spec.objectives, signal=False),
            *_screened_out_lines(screen, kept, keep),
            "",
            f"decision: {choice['line']}",
        ]
    )
    ranking = plain_json(
        {
            "objectives": [metric_of(o) for o in spec.objectives],
            "rule": RULE,
            "heads": heads,
            "baseline": summary_json(baseline) if baseline else None,
            "pareto": [],
            "correlations": corr,
            "signal": dict(
                zip(("quality", "line"), quality_signal([*confirmed.values()]), strict=True)
            ),
            "decision": {**choice, "probe": probe, "alpha": spec.staged.alpha},
            "stages": {"screen": [s.label for s in screen], "kept": kept},
        }
    )
    ranked_by = [metric_of(o) for o in spec.objectives]
    card = evidence_card(ranked_by, corr, None, choice["line"])  # label-free: in corr
    table = "\n".join([table, *card_lines(card)])
    return {
        "ranked": screen,
        "baseline": baseline,
        "table": table,
        "ranking": {**ranking, "evidence": card},
    }


def _confirmed_row(s: HeadSummary, verdicts: Sequence[Verdict], place: int) -> dict[str, Any]:
    v = next((v for v in verdicts if v.label == s.label), None)
    row = summary_json(s)
    row.update(stage=2, rank=place)
    if v is not None:
        row["paired_gain"] = {
            "mean": v.mean,
            "lo": v.lo,
            "hi": v.hi,
            "level": v.level,
            "p": v.p,
            "p_holm": v.p_holm,
            "beat": v.beat,
            "seeds": list(v.seeds),
        }
    return plain_json(row)


def _screened_row(s: HeadSummary, kept: Sequence[str], keep: int) -> dict[str, Any]:
    row = summary_json(s)
    row.update(stage=1, screen_rank=s.rank, rank=0, why=_why_out(s, kept, keep))
    return plain_json(row)


def _why_out(s: HeadSummary, kept: Sequence[str], keep: int) -> str:
    if s.label in kept:
        return "kept for stage 2 (no paired run finished yet)"
    if s.collapsed:
        return "screened out: its target collapsed in the joint run"
    if s.rank == 0:
        return "screened out: no completed joint run"
    return f"screened out: screen rank {s.rank} > keep {keep}"


def _screened_out_lines(screen: Sequence[HeadSummary], kept: Sequence[str], keep: int) -> list[str]:
    return [f"  {s.label}: {_why_out(s, kept, keep)}" for s in screen if s.label not in kept]


def _verdict_lines(verdicts: Sequence[Verdict], probe: str) -> list[str]:
    return [f"  {'beat' if v.beat else 'no  '}  {v.sentence(probe)}" for v in verdicts]
