"""The search's objectives: one map from a spec's objective name to the run metric it reads.

Every other module derives from :data:`METRIC_OF`: the spec's ``Objective`` literal and its
JSON Schema, the label-free set a joint search may rank by, the probes a calibration may
maximise the gain of, the ranking's column names and the CLI's. A leaf module (no torch, no
optuna): the light API imports it.
"""

from __future__ import annotations

from typing import Literal

# objective → metric key in a run's final metrics (and in a trial's ``final`` attribute)
METRIC_OF: dict[str, str] = {
    "d_kl": "d_kl",
    "d_cka": "d_cka",
    "d_loss": "d_loss",
    "knn": "knn_cls",  # weighted k-NN on the [CLS] feature
    "linear": "linear",  # linear probe on [CLS] + mean patch token
    "finetune": "finetune",  # top-1 after a short proxy fine-tune of the base
}
Objective = Literal["d_kl", "d_cka", "d_loss", "knn", "linear", "finetune"]
LABEL_FREE = ("d_kl", "d_cka", "d_loss")  # need no labels: what a joint search ranks by
PROBE_OBJECTIVES = ("knn", "linear", "finetune")  # probe accuracies: gains over a floor


def metric_of(objective: str) -> str:
    """The metric key of ``objective`` (``knn`` → ``knn_cls``); a metric key is itself."""
    if objective in METRIC_OF:
        return METRIC_OF[objective]
    if objective in METRIC_OF.values():
        return objective
    raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(METRIC_OF)}")
