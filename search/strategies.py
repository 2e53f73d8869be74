"""The search strategies (method §5). Each writes its trials into the search's Optuna study.

- ``joint``: the paper's fast search — one proxy run per seed with every candidate attached to
  one base (1/K weighting), each head scored by its discrepancy.
- ``independent``: one proxy run per candidate and seed — the ground truth ``joint`` is
  checked against; ranked by probe accuracy or discrepancy.
- ``optuna``: the sampler proposes head specs; Pareto front of the objectives, or one scalar
  with k-NN pruning.
- ``prescreen``: zero-cost scoring of every candidate at initialisation on a few images.
- ``calibrate``: no heads — TPE over the proxy recipe on the baseline (``search.calibrate``).
Runs that are already in the study are skipped, so every strategy resumes where it stopped.
Every run is claimed first (``ctx.claim``, see ``search.claims``), so several shards of one
search can run these loops on one study at once, each run executed by one of them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from search import calibrate
from search.claims import baseline_unit, independent_unit, joint_unit, optuna_unit
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
    for seed in ctx.spec.seeds():
        if ctx.out_of_time() or ctx.cancelled():
            return
        if not ctx.claim(baseline_unit(seed), weight=0):
            continue
        if seed not in {r["seed"] for r in ctx.study.user_attrs.get("baseline", [])}:
            result = ctx.run(ctx.spec.trial_config((), seed), f"baseline-s{seed}")
            ctx.record_baseline(result, seed)
        ctx.claims.done(baseline_unit(seed))


def run_joint(ctx: SearchContext, candidates: list[HeadSpec]) -> None:
    for seed in ctx.spec.seeds():
        if ctx.out_of_time() or ctx.cancelled():
            return
        unit = joint_unit(seed)
        if not ctx.claim(unit, weight=len(candidates)):
            continue
        done = done_runs(ctx, "joint")
        if not all((h.label(), seed) in done for h in candidates):
            _joint_seed(ctx, candidates, seed, done)
        ctx.claims.done(unit)


def _joint_seed(
    ctx: SearchContext, candidates: list[HeadSpec], seed: int, done: set[tuple[str, int]]
) -> None:
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
    """Every (candidate, seed) not yet finished, claimed and read again before each run, so
    several processes can share one study: each skips what the others finished or run."""
    dist = {"head": ctx.head_param(candidates)}
    for seed in ctx.spec.seeds():  # seed-major: every head gets seed 0 before any gets seed 1
        for head in candidates:
            if ctx.out_of_time() or ctx.cancelled():
                return
            unit = independent_unit(head.label(), seed)
            if not ctx.claim(unit):
                continue
            taken = done_runs(ctx, "independent")
            if not ctx.claims.exclusive:  # unclaimed joiners also skip what others run now
                taken |= running_runs(ctx, "independent")
            if (head.label(), seed) not in taken:
                trial = _ask_fixed(ctx, dist, head.label())
                ctx.identify(trial, head, seed, "independent", unit)
                result = ctx.run(
                    ctx.spec.trial_config((head,), seed),
                    f"{head.label()}-s{seed}",
                    report=_knn_reporter(trial, prune=False),
                )
                ctx.tell(trial, result, head, seed, "independent")
            ctx.claims.done(unit)


class _HeadSampler(optuna.samplers.RandomSampler):
    """Samples the ``head`` it was given (and nothing else is asked of it)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def sample_independent(self, study, trial, name, distribution):
        return (
            self.label
            if name == "head"
            else super().sample_independent(study, trial, name, distribution)
        )


def _ask_fixed(ctx: SearchContext, dist: dict, label: str) -> optuna.Trial:
    """Ask a trial whose ``head`` is ``label`` (over the full candidate distribution, so the
    dashboard compares them). A fixed sampler, not ``enqueue_trial``: the waiting-trial
    queue is shared by every process on the study, so another shard could pop ours."""
    sampler, ctx.study.sampler = ctx.study.sampler, _HeadSampler(label)
    try:
        return ctx.study.ask(dist)
    finally:
        ctx.study.sampler = sampler


def run_optuna(ctx: SearchContext) -> None:
    """Ask/tell until the study holds ``budget.trials`` finished trials of this strategy;
    each of the ``budget.trials`` slots is one claimable unit (shards ask in parallel: the
    sampler's constant liar keeps them from proposing the same head)."""
    spec = ctx.spec
    ctx.study.sampler = make_sampler(spec)
    ctx.study.pruner = make_pruner(spec)
    for slot in range(spec.budget.trials):
        if ctx.out_of_time() or ctx.cancelled():
            return
        unit = optuna_unit(slot)
        if not ctx.claim(unit):
            continue
        if _finished_count(ctx, "optuna") < spec.budget.trials:
            _optuna_trial(ctx, unit)
        ctx.claims.done(unit)


def _optuna_trial(ctx: SearchContext, unit: str) -> None:
    """One finished trial: a fresh run, or the result of a head the sampler proposed again."""
    spec, seed = ctx.spec, ctx.spec.seed
    prune = spec.optuna_mode == "pruned"
    trial = ctx.study.ask()
    head = suggest_head(trial, spec.space)
    ctx.identify(trial, head, seed, "optuna", unit)
    cached = _finished_twin(ctx, head.label())
    if cached is not None:  # the sampler proposed a head already trained: reuse its result
        for key, value in cached.user_attrs.items():
            if key != "unit":
                trial.set_user_attr(key, value)
        trial.set_user_attr("reused_from", cached.number)
        frozen = ctx.study.tell(trial, cached.values if len(cached.values) > 1 else cached.value)
        ctx.finished(frozen)
        return
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
