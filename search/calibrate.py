"""Proxy calibration: find the recipe under which short proxy runs of *your* base on *your*
data learn at all, before searching heads with them.

Short HSSL/iBOT proxy runs can collapse (the global targets go uniform) or sit at the random-init
floor, and then no head ranking means anything. The ``calibrate`` strategy is an Optuna study
(the search's own: multivariate TPE, seeded by the spec) over the recipe knobs of
:data:`RECIPE_SPACE`. Each trial is one baseline proxy run (plain iBOT, ``heads=()``) of the
spec's base, data and budget, with the sampled knobs on top of the spec's ``trial_overrides``,
run by the search's runner (a child process). Its value is the gain of the chosen probe over its
random-init floor per wall-clock minute (:func:`score`); a run that failed, stopped or ended
collapsed (final ``collapse`` != "ok") is a *failed* trial whose reason is a user attribute, so
it is never ranked. The best recipe (``search.calibrate_report``) is a dict to paste under a
search spec's ``trial_overrides``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from search.context import SearchContext
from search.objectives import metric_of
from search.records import result_attrs
from search.sampling import make_sampler
from search.spec import SearchSpec
from search.storage import INTERRUPTED
from training.recipe import GLOBAL_TARGETS, TrialConfig, TrialResult

STRATEGY = "calibrate"
# The recipe knobs (TrialConfig fields) a calibration samples. The ranges bracket the proxy
# default and the paper's values; the categorical ones are the anti-collapse departures.
RECIPE_SPACE: dict[str, BaseDistribution] = {
    "proj_bn": CategoricalDistribution((True, False)),
    "global_targets": CategoricalDistribution(GLOBAL_TARGETS),
    "koleo_weight": CategoricalDistribution((0.0, 0.1)),
    "out_dim": CategoricalDistribution((256, 1024)),
    "lr": FloatDistribution(2e-4, 1e-2, log=True),
    "momentum_teacher": FloatDistribution(0.9, 0.999),
    "teacher_temp": FloatDistribution(0.02, 0.1),
}


@dataclass(frozen=True)
class Score:
    """How one calibration run counts: ``gain`` of the probe over its floor in ``minutes`` of
    wall time, or ``reason`` why it does not count (then it is a failed trial)."""

    gain: float | None
    minutes: float
    reason: str | None = None

    @property
    def value(self) -> float | None:
        """The objective: probe gain per wall-clock minute (None when the run does not count)."""
        return None if self.reason or self.gain is None else self.gain / self.minutes


def probe_of(spec: SearchSpec) -> str:
    """The metric whose gain is maximised: the spec's single objective (``knn`` → ``knn_cls``)."""
    return metric_of(spec.objectives[0])


def run_config(spec: SearchSpec, recipe: Mapping[str, Any], probe: str) -> TrialConfig:
    """The baseline proxy run of one recipe: the knobs over the spec's ``trial_overrides``, the
    floor always measured (the gain needs it) and the linear probe on when it is scored."""
    changes = {**recipe, "eval_at_init": True}
    if probe == "linear":
        changes["linear_probe"] = True
    return spec.trial_config((), spec.seed, **changes)


def score(result: TrialResult, probe: str) -> Score:
    """Score a finished run (pure): gain = final − init of ``probe``; minutes = its wall time.

    Failed, stopped or cancelled runs, runs whose final targets collapsed (or were not
    measured) and runs missing the probe at either end do not count; the reason says which.
    """
    minutes = max(result.wall_time_s, 1e-3) / 60
    if result.status != "completed":
        return Score(None, minutes, result.reason or result.status)
    status = result.metrics.get("collapse")
    if status != "ok":
        return Score(None, minutes, collapse_reason(result.metrics))
    init, final = result.init_metrics.get(probe), result.metrics.get(probe)
    if not (_finite(init) and _finite(final)):
        return Score(None, minutes, f"no finite {probe} probe at initialisation and at the end")
    return Score(float(final) - float(init), minutes)


def collapse_reason(metrics: Mapping[str, Any]) -> str:
    """Why final metrics count as collapsed: the targets' information about the image and
    their entropy against its maximum (``training.evaluation.collapse``)."""
    status = metrics.get("collapse")
    if status is None:
        return "collapse not measured: the final metrics have no collapse status"
    info, entropy = metrics.get("target_information"), metrics.get("target_entropy")
    ln_k = metrics.get("ln_k")
    detail = ""
    if _finite(info) and _finite(entropy) and _finite(ln_k):
        detail = f" (information {info:.4f} nats; target entropy {entropy:.3f} of ln K {ln_k:.3f})"
    return f"collapsed: {status} global targets at the end{detail}"


def calibrate(ctx: SearchContext, space: Mapping[str, BaseDistribution] = RECIPE_SPACE) -> None:
    """Ask/tell recipes until the study holds ``budget.trials`` finished calibration trials
    (resumable: trials of a process that died are not counted and are asked again)."""
    ctx.study.sampler = make_sampler(ctx.spec)
    probe = probe_of(ctx.spec)
    while finished_count(ctx.study) < ctx.spec.budget.trials:
        if ctx.out_of_time() or ctx.cancelled():
            return
        run_recipe(ctx, ctx.study.ask(dict(space)), probe)


def run_recipe(ctx: SearchContext, trial: optuna.Trial, probe: str) -> TrialState:
    """Run the baseline with the trial's knobs and tell Optuna its score (or its failure)."""
    seed, label = ctx.spec.seed, f"recipe-{trial.number}"
    for key, value in {"label": label, "seed": seed, "strategy": STRATEGY}.items():
        trial.set_user_attr(key, value)  # named before it runs, so a dead process is known
    recipe = dict(trial.params)
    result = ctx.run(run_config(ctx.spec, recipe, probe), f"calibrate-{trial.number}")
    scored = score(result, probe)
    attrs = {
        **result_attrs(result, None, seed, STRATEGY),
        "label": label,
        "probe": probe,
        "recipe": recipe,
        "collapse": result.metrics.get("collapse"),
        "target_entropy": result.metrics.get("target_entropy"),
        "ln_k": result.metrics.get("ln_k"),
        "gain": scored.gain,
        "minutes": round(scored.minutes, 4),
        "failure_reason": scored.reason,
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    state = TrialState.FAIL if scored.value is None else TrialState.COMPLETE
    ctx.finished(ctx.study.tell(trial, scored.value, state=state))
    return state


def finished_count(study: optuna.Study) -> int:
    """Finished calibration trials, not counting those reconciled as interrupted."""
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=finished)
        if t.user_attrs.get("strategy") == STRATEGY
        and t.user_attrs.get("failure_reason") != INTERRUPTED
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
