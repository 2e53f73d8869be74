"""What several strategies share: which runs a study already holds, the baseline runs, the
zero-cost pre-screen and the per-epoch k-NN reporter. Runs that are already in the study are
skipped, so every strategy resumes where it stopped; every run is claimed first (``ctx.claim``,
see ``search.claims``), so several shards of one search can run these loops on one study at
once, each run executed by one of them."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from search.claims import baseline_unit
from search.context import SearchContext
from search.objectives import DEFAULT_OBJECTIVES, LABEL_FREE
from search.records import head_metrics
from search.storage import INTERRUPTED
from training.specs import HeadSpec


def done_runs(ctx: SearchContext, strategy: str) -> set[tuple[str, int]]:
    """(label, seed) of the finished (not running or waiting) trials of a strategy.

    A trial whose process died (reconciled as interrupted) does not count: the run is started
    again under the same name, so it continues from its checkpoint.
    """
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return {
        (t.user_attrs["label"], t.user_attrs["seed"])
        for t in ctx.study.get_trials(deepcopy=False, states=finished)
        if t.user_attrs.get("strategy") == strategy
        and t.user_attrs.get("failure_reason") != INTERRUPTED
    }


def finished_count(ctx: SearchContext, strategy: str) -> int:
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    trials = ctx.study.get_trials(deepcopy=False, states=finished)
    return sum(
        1
        for t in trials
        if t.user_attrs.get("strategy") == strategy
        and t.user_attrs.get("failure_reason") != INTERRUPTED
    )


def run_baseline(ctx: SearchContext, seeds: list[int] | None = None) -> None:
    """The no-head baseline on each of ``seeds`` (default: the spec's) not yet run."""
    for seed in seeds if seeds is not None else ctx.spec.seeds():
        if ctx.out_of_time() or ctx.cancelled():
            return
        if not ctx.claim(baseline_unit(seed), weight=0):
            continue
        if seed not in {r["seed"] for r in ctx.study.user_attrs.get("baseline", [])}:
            result = ctx.run(ctx.spec.trial_config((), seed), f"baseline-s{seed}")
            ctx.record_baseline(result, seed)
        ctx.claims.done(baseline_unit(seed))


def running_runs(ctx: SearchContext, strategy: str) -> set[tuple[str, int]]:
    """(label, seed) of the trials of a strategy running now (named when asked)."""
    return {
        (t.user_attrs["label"], t.user_attrs["seed"])
        for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("strategy") == strategy and "label" in t.user_attrs
    }


def prescreen(ctx: SearchContext, candidates: list[HeadSpec], keep: int) -> list[HeadSpec]:
    """Score every candidate at initialisation (all heads on one untrained base, a few
    held-out images) by the label-free objectives and keep the ``keep`` best."""
    stored = ctx.study.user_attrs.get("prescreen")
    if stored is None:
        config = ctx.spec.trial_config(
            tuple(candidates),
            ctx.spec.seed,
            data_limit=ctx.spec.budget.prescreen_images,
            batch_size=min(ctx.spec.budget.batch_size, 16),
            eval_at_init=True,
            linear_probe=False,
            epochs=1,
        )
        result = ctx.run(config, "prescreen", report=lambda epoch, metrics: True)
        if not result.init_metrics.get("heads"):
            raise RuntimeError(f"the pre-screen run failed: {result.reason}")
        stored = {h.label(): head_metrics(result.init_metrics, h.label()) for h in candidates}
        ctx.study.set_user_attr("prescreen", stored)
    keys = [o for o in ctx.spec.objectives if o in LABEL_FREE] or list(DEFAULT_OBJECTIVES)
    kept = sorted(candidates, key=lambda h: _mean_rank(stored, h.label(), keys))[:keep]
    ctx.study.set_user_attr("prescreen_kept", [h.label() for h in kept])
    return kept


def _mean_rank(scores: dict[str, dict[str, float]], label: str, keys: list[str]) -> float:
    ranks = []
    for key in keys:
        ordered = sorted(scores, key=lambda lbl: -scores[lbl].get(key, float("-inf")))
        ranks.append(ordered.index(label))
    return sum(ranks) / len(ranks)


def knn_reporter(trial: optuna.Trial, *, prune: bool):
    """Report k-NN accuracy as the intermediate value; ask the pruner when pruning is on."""

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        if not prune or "knn_cls" not in metrics:
            return False
        trial.report(float(metrics["knn_cls"]), epoch)
        return epoch > 0 and trial.should_prune()

    return report
