"""The search strategies (spec §5). Each writes its trials into the search's Optuna study.

- ``joint``: the paper's fast search — one proxy run per seed with every candidate attached to
  one base (1/K weighting), each head scored by its discrepancy.
- ``independent``: one proxy run per candidate and seed — the ground truth ``joint`` is
  checked against; ranked by probe accuracy or discrepancy.
- ``optuna``: the sampler proposes head specs; Pareto front of the objectives, or one scalar
  with k-NN pruning.
- ``prescreen``: zero-cost scoring of every candidate at initialisation on a few images.
- ``calibrate``: no heads — TPE over the proxy recipe on the baseline (``search.calibrate``).
Runs that are already in the study are skipped, so every strategy resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from search import calibrate
from search.context import SearchContext
from search.records import head_metrics
from search.sampling import make_pruner, make_sampler, suggest_head
from search.stability import StableRanking
from search.storage import INTERRUPTED
from training.config import HeadSpec


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


def _finished_count(ctx: SearchContext, strategy: str) -> int:
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    trials = ctx.study.get_trials(deepcopy=False, states=finished)
    return sum(
        1
        for t in trials
        if t.user_attrs.get("strategy") == strategy
        and t.user_attrs.get("failure_reason") != INTERRUPTED
    )


def run_baseline(ctx: SearchContext) -> None:
    done = {r["seed"] for r in ctx.study.user_attrs.get("baseline", [])}
    for seed in ctx.spec.seeds():
        if seed in done or ctx.out_of_time() or ctx.cancelled():
            continue
        ctx.record_baseline(ctx.run(ctx.spec.trial_config((), seed), f"baseline-s{seed}"), seed)


def run_joint(ctx: SearchContext, candidates: list[HeadSpec]) -> None:
    done = done_runs(ctx, "joint")
    for seed in ctx.spec.seeds():
        if all((h.label(), seed) in done for h in candidates):
            continue
        if ctx.out_of_time() or ctx.cancelled():
            return
        patience = ctx.spec.budget.stop_when_stable
        stable = StableRanking(ctx.spec.objectives, patience) if patience else None
        config = ctx.spec.trial_config(tuple(candidates), seed)
        result = ctx.run(config, f"joint-s{seed}", report=stable.update if stable else None)
        if stable and stable.stopped_at is not None and result.status == "stopped":
            # stopped because the order settled: its last evaluation is its result
            result = replace(result, status="completed", reason=None)
        for head in candidates:
            if (head.label(), seed) not in done:
                ctx.add_finished(result, head, seed, "joint", candidates)


def running_runs(ctx: SearchContext, strategy: str) -> set[tuple[str, int]]:
    """(label, seed) of the trials of a strategy running now (named when asked)."""
    return {
        (t.user_attrs["label"], t.user_attrs["seed"])
        for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("strategy") == strategy and "label" in t.user_attrs
    }


def run_independent(ctx: SearchContext, candidates: list[HeadSpec]) -> None:
    """Every (candidate, seed) not yet finished, read again before each run, so several
    processes can share one study: each skips what the others finished or are running."""
    dist = {"head": ctx.head_param(candidates)}
    for seed in ctx.spec.seeds():  # seed-major: every head gets seed 0 before any gets seed 1
        for head in candidates:
            taken = done_runs(ctx, "independent") | running_runs(ctx, "independent")
            if (head.label(), seed) in taken:
                continue
            if ctx.out_of_time() or ctx.cancelled():
                return
            ctx.study.enqueue_trial({"head": head.label()}, skip_if_exists=False)
            trial = ctx.study.ask(dist)
            ctx.identify(trial, head, seed, "independent")
            result = ctx.run(
                ctx.spec.trial_config((head,), seed),
                f"{head.label()}-s{seed}",
                report=_knn_reporter(trial, prune=False),
            )
            ctx.tell(trial, result, head, seed, "independent")


def run_optuna(ctx: SearchContext) -> None:
    """Ask/tell until the study holds ``budget.trials`` finished trials of this strategy."""
    spec = ctx.spec
    ctx.study.sampler = make_sampler(spec)
    ctx.study.pruner = make_pruner(spec)
    prune = spec.optuna_mode == "pruned"
    seed = spec.seed
    while _finished_count(ctx, "optuna") < spec.budget.trials:
        if ctx.out_of_time() or ctx.cancelled():
            return
        trial = ctx.study.ask()
        head = suggest_head(trial, spec.space)
        ctx.identify(trial, head, seed, "optuna")
        cached = _finished_twin(ctx, head.label())
        if cached is not None:  # the sampler proposed a head already trained: reuse its result
            for key, value in cached.user_attrs.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("reused_from", cached.number)
            frozen = ctx.study.tell(
                trial, cached.values if len(cached.values) > 1 else cached.value
            )
            ctx.finished(frozen)
            continue
        result = ctx.run(
            spec.trial_config((head,), seed),
            f"optuna-{trial.number}-{head.label()}",
            report=_knn_reporter(trial, prune=prune),
        )
        ctx.tell(trial, result, head, seed, "optuna")


def run_calibrate(ctx: SearchContext) -> None:
    """Proxy calibration: ``budget.trials`` baseline runs over the recipe space, each valued by
    its probe gain over the floor per minute (collapsed runs fail); see ``search.calibrate``."""
    calibrate.calibrate(ctx)


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
    keys = [o for o in ctx.spec.objectives if o.startswith("d_")] or ["d_kl", "d_cka"]
    kept = sorted(candidates, key=lambda h: _mean_rank(stored, h.label(), keys))[:keep]
    ctx.study.set_user_attr("prescreen_kept", [h.label() for h in kept])
    return kept


def _mean_rank(scores: dict[str, dict[str, float]], label: str, keys: list[str]) -> float:
    ranks = []
    for key in keys:
        ordered = sorted(scores, key=lambda lbl: -scores[lbl].get(key, float("-inf")))
        ranks.append(ordered.index(label))
    return sum(ranks) / len(ranks)


def _knn_reporter(trial: optuna.Trial, *, prune: bool):
    """Report k-NN accuracy as the intermediate value; ask the pruner when pruning is on."""

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        if not prune or "knn_cls" not in metrics:
            return False
        trial.report(float(metrics["knn_cls"]), epoch)
        return epoch > 0 and trial.should_prune()

    return report


def _finished_twin(ctx: SearchContext, label: str) -> optuna.trial.FrozenTrial | None:
    for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("label") == label and t.user_attrs.get("strategy") == "optuna":
            return t
    return None
