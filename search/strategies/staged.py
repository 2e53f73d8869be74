"""``staged``: the search a careful person runs, as one submission (issue 22).

Stage 1 screens every candidate with one joint run per budget seed (cheap: all heads on one
base), ranked on the label-free objectives. Stage 2 gives the ``staged.keep`` best heads
independent runs on ``staged.seeds`` paired seeds beside the no-head baseline on the same seeds,
and judges them on the measured gain of the primary probe over the baseline, paired by seed,
with a paired t-test per head, Holm-corrected over the stage-2 heads. The recommendation is the
head with the largest gain whose corrected test says it beat the baseline — or the baseline
itself when none did. Every stage resumes where it stopped; the shard that finishes stage 1 fans
stage 2 out over the workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.objectives import LABEL_FREE
from search.strategy import Strategy, register

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from search.context import SearchContext
    from search.spec import SearchSpec
    from training.specs import HeadSpec

SCREEN, CONFIRM = 1, 2


@register
class Staged(Strategy):
    name = "staged"
    summary = (
        "a joint screen of every candidate, then paired independent runs of the best "
        "staged.keep beside the baseline; recommends by measured probe gain (or the baseline)"
    )
    shared_base = True  # its ranked heads are the screen's (one joint base per seed)
    baseline = False  # it runs its own, on stage 2's seeds, whatever include_baseline says

    def defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        """The screen ranks on D_kl unless told otherwise."""
        return {"objectives": ["d_kl"], **data}

    def check(self, spec: SearchSpec) -> None:
        if set(spec.objectives) - set(LABEL_FREE):
            raise ValueError(
                "the staged strategy screens with a joint run: objectives must be among "
                f"{list(LABEL_FREE)}; stage 2 is judged on staged.probe"
            )

    def schema_rule(self) -> dict[str, Any]:
        return {"properties": {"objectives": {"items": {"enum": list(LABEL_FREE)}}}}

    def kept(self, spec: SearchSpec) -> int:
        return min(spec.staged.keep, len(spec.space.candidates()))

    def confirm_seeds(self, spec: SearchSpec) -> list[int]:
        """Stage 2's seeds, shared by every kept head and the baseline (paired)."""
        return [spec.seed + i for i in range(spec.staged.seeds)]

    def planned_trials(self, spec: SearchSpec) -> int:
        screen = len(spec.space.candidates()) * len(spec.seeds())
        return screen + self.kept(spec) * spec.staged.seeds

    def width(self, spec: SearchSpec) -> int:
        return len(spec.seeds())  # stage 1: one joint run per seed; stage 2 fans out itself

    def confirm_width(self, spec: SearchSpec) -> int:
        return max(1, min(self.kept(spec) * spec.staged.seeds, spec.budget.parallel or 10**6))

    def stages(self, spec: SearchSpec) -> list[dict[str, Any]]:
        return [
            {
                "stage": SCREEN,
                "name": "screen",
                "planned": len(spec.space.candidates()) * len(spec.seeds()),
            },
            {"stage": CONFIRM, "name": "confirm", "planned": self.kept(spec) * spec.staged.seeds},
        ]

    def run(self, ctx: SearchContext, candidates: list[HeadSpec]) -> None:
        from search.strategies.common import run_baseline
        from search.strategies.independent import run_independent
        from search.strategies.joint import run_joint

        spec = ctx.spec
        if ctx.study.user_attrs.get("stage") is None:
            ctx.study.set_user_attr("stage", SCREEN)
            ctx.emit("search.stage", {**self.stages(spec)[0], "of": 2, "seeds": spec.seeds()})
        run_joint(ctx, candidates, stage=SCREEN)
        if ctx.out_of_time() or ctx.cancelled() or not _screen_done(ctx, candidates):
            return  # another shard's joint run is still going: it goes on into stage 2
        kept = _screened_in(ctx, candidates, self.kept(spec))
        if ctx.study.user_attrs.get("stage") != CONFIRM:
            ctx.study.set_user_attr("stage", CONFIRM)
            names = [h.label() for h in kept]
            ctx.emit(
                "search.stage",
                {
                    **self.stages(spec)[1],
                    "of": 2,
                    "seeds": self.confirm_seeds(spec),
                    "kept": names,
                    "screened_out": [h.label() for h in candidates if h.label() not in names],
                },
            )
        if ctx.fan_out is not None:
            ctx.fan_out(self.confirm_width(ctx.spec))
        seeds = self.confirm_seeds(ctx.spec)
        run_baseline(ctx, seeds)
        run_independent(ctx, kept, seeds=seeds, stage=CONFIRM, space=candidates)

    def report(self, study: optuna.Study, spec: SearchSpec) -> dict[str, Any]:
        from search.staged_report import staged_report

        return staged_report(study, spec, self.kept(spec))

    def write_outputs(
        self, study: optuna.Study, spec: SearchSpec, report: dict[str, Any], url: str, out: Path
    ) -> dict[str, Path]:
        from search.run import write_ranking_outputs

        return write_ranking_outputs(study, spec, report, url, out)


def _screen_done(ctx: SearchContext, candidates: list[HeadSpec]) -> bool:
    """Every (candidate, seed) of stage 1 is finished in the study (whichever shard ran it)."""
    from search.strategies.common import done_runs

    done = done_runs(ctx, "joint")
    return all((h.label(), s) in done for h in candidates for s in ctx.spec.seeds())


def _screened_in(ctx: SearchContext, candidates: list[HeadSpec], keep: int) -> list[HeadSpec]:
    """The ``keep`` best heads of the screen (stored in the study, so every shard and a resume
    agree); collapsed or failed heads are never kept."""
    from search.staged_report import screen_order

    stored = ctx.study.user_attrs.get("stage2_heads")
    if stored is None:
        ranked = screen_order(ctx.study, ctx.spec)
        stored = [s.label for s in ranked if s.rank > 0][:keep]
        ctx.study.set_user_attr("stage2_heads", stored)
    by_label = {h.label(): h for h in candidates}
    return [by_label[label] for label in stored if label in by_label]
