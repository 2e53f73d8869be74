"""How the ``optuna`` strategy samples heads, and the sampler/pruner it uses (recorded).

Optuna 5 made multivariate TPE with the constant liar the single-objective default and TPE
(not NSGA-II) the multi-objective default. We set every choice explicitly so a search does not
change meaning with the library: multivariate TPE with ``group=True`` (the kernel exists only
for some families, a conditional space), the constant liar (several workers may ask at once),
a short random start-up; ``MedianPruner`` on intermediate k-NN accuracy in ``pruned`` mode.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.spec import CandidateSpace, SearchSpec
from training.head_families import applies
from training.specs import HeadSpec


def sampler_settings(spec: SearchSpec) -> dict[str, Any]:
    startup = max(2, min(10, spec.budget.trials // 3))
    return {
        "name": "TPESampler",
        "multivariate": True,
        "group": True,
        "constant_liar": True,
        "n_startup_trials": startup,
        "seed": spec.seed,
    }


def pruner_settings(spec: SearchSpec) -> dict[str, Any]:
    if spec.optuna_mode != "pruned":
        return {"name": "NopPruner"}
    return {"name": "MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1}


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    settings = dict(sampler_settings(spec))
    settings.pop("name")
    return optuna.samplers.TPESampler(**settings)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    settings = dict(pruner_settings(spec))
    name = settings.pop("name")
    return getattr(optuna.pruners, name)(**settings)


def suggest_head(trial: optuna.Trial, space: CandidateSpace) -> HeadSpec:
    """A head from the space: one categorical over an explicit list, or the grid's knobs
    (kernel only for the families that have one)."""
    if space.heads is not None:
        by_label = {h.label(): h for h in space.candidates()}
        return by_label[trial.suggest_categorical("head", list(by_label))]
    family = trial.suggest_categorical("family", space.families)
    values: dict[str, Any] = {"family": family}
    values["depth"] = trial.suggest_categorical("depth", space.depths)
    if applies(family, "kernel"):
        values["kernel"] = trial.suggest_categorical("kernel", space.kernels)
    values["first_residual"] = trial.suggest_categorical("first_residual", space.first_residual)
    values["pooling"] = trial.suggest_categorical("pooling", space.pooling)
    values["width_ratio"] = trial.suggest_categorical("width_ratio", space.width_ratios)
    return HeadSpec(**values)
