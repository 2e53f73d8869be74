"""``optuna``: the sampler proposes head specs — multivariate TPE over the candidate space, a
Pareto front of the objectives (``optuna_mode: pareto``) or the first objective alone with
k-NN pruning (``pruned``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.strategies.ranked import Ranked
from search.strategy import register

if TYPE_CHECKING:
    import optuna

    from search.context import SearchContext
    from training.specs import HeadSpec


@register
class Sampled(Ranked):
    name = "optuna"
    summary = "TPE proposes head specs (Pareto front, or one objective with k-NN pruning)"

    def planned_trials(self, spec) -> int:
        return spec.budget.trials

    def width(self, spec) -> int:
        return spec.budget.trials

    def objectives(self, spec) -> list[str]:
        # pruned mode: a single-objective study of the first objective (every objective is
        # still recorded and ranked)
        return list(spec.objectives[:1] if spec.optuna_mode == "pruned" else spec.objectives)

    def run(self, ctx: SearchContext, candidates: list[HeadSpec]) -> None:
        """Ask/tell until the study holds ``budget.trials`` finished trials of this strategy;
        each of the ``budget.trials`` draws is one claimable unit (shards ask in parallel: the
        sampler's constant liar keeps them from proposing the same head)."""
        from search.claims import optuna_unit
        from search.sampling import make_pruner, make_sampler
        from search.strategies.common import finished_count

        spec = ctx.spec
        ctx.study.sampler = make_sampler(spec)
        ctx.study.pruner = make_pruner(spec)
        for draw in range(spec.budget.trials):
            if ctx.out_of_time() or ctx.cancelled():
                return
            unit = optuna_unit(draw)
            if not ctx.claim(unit):
                continue
            if finished_count(ctx, "optuna") < spec.budget.trials:
                _optuna_trial(ctx, unit)
            ctx.claims.done(unit)


def _optuna_trial(ctx: SearchContext, unit: str) -> None:
    """One finished trial: a fresh run, or the result of a head the sampler proposed again."""
    from search.sampling import suggest_head
    from search.strategies.common import knn_reporter

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
        report=knn_reporter(trial, prune=prune),
    )
    ctx.tell(trial, result, head, seed, "optuna")


def _finished_twin(ctx: SearchContext, label: str) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("label") == label and t.user_attrs.get("strategy") == "optuna":
            return t
    return None
