"""``joint``: the paper's fast search (method §5) — one proxy run per seed with every candidate
attached to one base (1/K weighting), each head scored by its per-head label-free metrics."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from search.objectives import LABEL_FREE
from search.strategies.ranked import Ranked
from search.strategy import register

if TYPE_CHECKING:
    from search.context import SearchContext
    from training.specs import HeadSpec


@register
class Joint(Ranked):
    name = "joint"
    summary = "one proxy run per seed with every candidate on one shared base (the paper's)"
    prescreen = True
    shared_base = True

    def check(self, spec) -> None:
        if set(spec.objectives) - set(LABEL_FREE):
            raise ValueError(
                "the joint strategy ranks by discrepancy: objectives must be "
                f"among {list(LABEL_FREE)} (its heads share one base: one probe score, one "
                "value of a per-base estimator)"
            )

    def schema_rule(self) -> dict[str, Any]:
        return {
            "properties": {"objectives": {"items": {"enum": list(LABEL_FREE)}}},
            "description": "a joint search ranks by label-free objectives only",
        }

    def width(self, spec) -> int:
        return len(spec.seeds())  # one run per seed

    def run(self, ctx: SearchContext, candidates: list[HeadSpec]) -> None:
        run_joint(ctx, candidates)


def run_joint(ctx: SearchContext, candidates: list[HeadSpec], stage: int | None = None) -> None:
    """One joint run per seed not yet finished (claimed first); ``stage`` tags its trials."""
    from search.claims import joint_unit
    from search.strategies.common import done_runs

    for seed in ctx.spec.seeds():
        if ctx.out_of_time() or ctx.cancelled():
            return
        unit = joint_unit(seed)
        if not ctx.claim(unit, weight=len(candidates)):
            continue
        done = done_runs(ctx, "joint")
        if not all((h.label(), seed) in done for h in candidates):
            _joint_seed(ctx, candidates, seed, done, stage)
        ctx.claims.done(unit)


def _joint_seed(
    ctx: SearchContext,
    candidates: list[HeadSpec],
    seed: int,
    done: set[tuple[str, int]],
    stage: int | None,
) -> None:
    from search.stability import StableRanking

    patience = ctx.spec.budget.stop_when_stable
    objectives = [o for o in ctx.spec.objectives if o in LABEL_FREE] or ["d_kl"]
    stable = StableRanking(objectives, patience) if patience else None
    config = ctx.spec.trial_config(tuple(candidates), seed)
    result = ctx.run(config, f"joint-s{seed}", report=stable.update if stable else None)
    if stable and stable.stopped_at is not None and result.status == "stopped":
        # stopped because the order settled: its last evaluation is its result
        result = replace(result, status="completed", reason=None)
    for head in candidates:
        if (head.label(), seed) not in done:
            ctx.add_finished(result, head, seed, "joint", candidates, stage=stage)
