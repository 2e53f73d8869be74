"""The search's objectives, derived from the metric registry (:mod:`training.metrics`).

A spec's objective name maps to the run metric it reads (``knn`` → ``knn_cls``); the spec's
``Objective`` literal and its JSON Schema, the label-free set a joint search may rank by (per
head: one shared base has one value of a per-base metric), the probes a calibration may maximise
the gain of, and each objective's direction all come from the registry. A leaf module (no
torch, no optuna): the light API imports it.
"""

from __future__ import annotations

from typing import Literal

from training.metrics import (
    by_objective,
    default_objectives,
    metrics,
    objective_names,
    primary_probes,
)

# objective → metric key in a run's final metrics (and in a trial's ``final`` attribute)
METRIC_OF: dict[str, str] = {m.objective: m.key for m in metrics() if m.objective}
Objective = Literal[objective_names()]  # type: ignore[valid-type]
# need no labels and differ per head: what a joint search ranks by
LABEL_FREE = tuple(m.objective for m in metrics(kind="label_free", scope="head") if m.objective)
# need no labels, one value per base: an independent or optuna search may rank by them
BASE_ESTIMATORS = tuple(
    m.objective for m in metrics(kind="label_free", scope="base") if m.objective
)
PROBE_OBJECTIVES = tuple(m.objective for m in metrics(kind="probe") if m.objective)
PRIMARY_PROBES = primary_probes()  # metric keys: what quality means (linear, k-NN [CLS])
PrimaryProbe = Literal[tuple(m.objective for m in metrics() if m.primary)]  # type: ignore[valid-type]
DEFAULT_OBJECTIVES = default_objectives()  # a spec's objectives when it names none


def metric_of(objective: str) -> str:
    """The metric key of ``objective`` (``knn`` → ``knn_cls``); a metric key is itself."""
    return by_objective(objective).key


def direction_of(objective: str) -> str:
    """``maximize`` or ``minimize``: which way the objective's metric is better."""
    return by_objective(objective).direction
