"""``independent``: one proxy run per candidate and seed — the ground truth ``joint`` is checked
against; ranked by probe accuracy or discrepancy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.strategies.ranked import Ranked
from search.strategy import register

if TYPE_CHECKING:
    import optuna

    from search.context import SearchContext
    from training.specs import HeadSpec


@register
class Independent(Ranked):
    name = "independent"
    summary = "one proxy run per candidate and seed (the ground truth)"
    prescreen = True

    def run(self, ctx: SearchContext, candidates: list[HeadSpec]) -> None:
        run_independent(ctx, candidates)


def run_independent(
    ctx: SearchContext,
    candidates: list[HeadSpec],
    seeds: list[int] | None = None,
    stage: int | None = None,
    space: list[HeadSpec] | None = None,
) -> None:
    """Every (candidate, seed) not yet finished, claimed and read again before each run, so
    several processes can share one study: each skips what the others finished or run.
    ``seeds`` default to the spec's; ``stage`` tags the trials and ``space`` (default:
    ``candidates``) is the head distribution they are asked over (the staged strategy runs a
    few of the candidates its study already knows)."""
    from search.claims import independent_unit
    from search.strategies.common import done_runs, knn_reporter, running_runs

    dist = {"head": ctx.head_param(space or candidates)}
    for seed in seeds if seeds is not None else ctx.spec.seeds():  # seed-major
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
                ctx.identify(trial, head, seed, "independent", unit, stage=stage)
                result = ctx.run(
                    ctx.spec.trial_config((head,), seed),
                    f"{head.label()}-s{seed}",
                    report=knn_reporter(trial, prune=False),
                )
                ctx.tell(trial, result, head, seed, "independent")
            ctx.claims.done(unit)


def _ask_fixed(ctx: SearchContext, dist: dict, label: str) -> optuna.Trial:
    """Ask a trial whose ``head`` is ``label`` (over the full candidate distribution, so the
    dashboard compares them). A fixed sampler, not ``enqueue_trial``: the waiting-trial
    queue is shared by every process on the study, so another shard could pop ours."""
    import optuna

    class HeadSampler(optuna.samplers.RandomSampler):
        """Samples the ``head`` it was given (and nothing else is asked of it)."""

        def sample_independent(self, study, trial, name, distribution):
            if name == "head":
                return label
            return super().sample_independent(study, trial, name, distribution)

    sampler, ctx.study.sampler = ctx.study.sampler, HeadSampler()
    try:
        return ctx.study.ask(dist)
    finally:
        ctx.study.sampler = sampler
