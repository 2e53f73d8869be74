"""What each trial records, as Optuna user attributes (readable by optuna-dashboard), and the
:class:`TrialRecord` that ranking and recommendation read back from a study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from training.metrics import REGISTRY, keys
from training.recipe import TrialResult
from training.specs import HeadSpec

# what one head (or the baseline's [CLS] target) has of its own in a run's metrics
HEAD_KEYS = keys(scope="head")
PROBES = keys(kind="probe")  # accuracies of the run's base
ESTIMATORS = keys(kind="label_free", scope="base")  # label-free scores of the run's base
METRICS = (*PROBES, *ESTIMATORS, *HEAD_KEYS)
PIXELS = keys(kind="reference")  # raw-pixel reference, measured at initialisation
SAMPLING_SE = tuple(m.se_key for m in REGISTRY.values() if m.se_key)  # binomial SE of each accuracy
RUN_KEYS = (*PROBES, *ESTIMATORS, *PIXELS, *SAMPLING_SE, "heldout_n")


def _row(metrics: dict[str, Any], label: str) -> dict[str, Any]:
    """The part of a run's metrics that describes ``label``: its row in ``heads``, or the
    run's own global target for the baseline."""
    rows = [row for row in metrics.get("heads", []) if row["head"] == label]
    return rows[0] if rows else metrics


def head_metrics(metrics: dict[str, Any], label: str) -> dict[str, float]:
    """The probe metrics of a run plus the discrepancies and target diagnostics of one of its
    heads (the baseline: of its [CLS] target)."""
    out = {k: float(metrics[k]) for k in RUN_KEYS if k in metrics}
    row = _row(metrics, label)
    out.update({k: float(row[k]) for k in HEAD_KEYS if k in row})
    return out


def head_collapse(metrics: dict[str, Any], label: str) -> str | None:
    """``ok``, ``uniform`` or ``one-hot`` for the global target ``label`` learns through."""
    value = _row(metrics, label).get("collapse")
    return str(value) if value is not None else None


def result_attrs(result: TrialResult, head: HeadSpec | None, seed: int, strategy: str) -> dict:
    """User attributes of one candidate's trial (for a joint run: one of its heads)."""
    label = head.label() if head else "baseline"
    return {
        "head": head.to_dict() if head else None,
        "label": label,
        "seed": seed,
        "strategy": strategy,
        "status": result.status,
        "failure_reason": result.reason,
        "init": head_metrics(result.init_metrics, label),
        "final": head_metrics(result.metrics, label),
        "collapse": head_collapse(result.metrics, label),
        "losses": [round(float(h.get("loss", float("nan"))), 6) for h in result.history],
        "knn_curve": [float(h["knn_cls"]) for h in result.history if "knn_cls" in h],
        # every evaluated epoch: both k-NN probes and this head's discrepancies
        "curve": [
            {
                "epoch": int(h.get("epoch", 0)),
                **head_metrics(h, label),
                "collapse": head_collapse(h, label),
            }
            for h in result.history
            if "knn_cls" in h
        ],
        "epochs_done": result.epochs_done,
        "wall_time_s": round(result.wall_time_s, 3),
        "images_per_s": round(result.images_per_s, 2),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
    }


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the ranking sees it."""

    number: int
    label: str
    head: HeadSpec | None
    seed: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    strategy: str
    final: dict[str, float] = field(default_factory=dict)
    init: dict[str, float] = field(default_factory=dict)
    losses: tuple[float, ...] = ()
    wall_time_s: float = 0.0
    images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    failure_reason: str | None = None
    collapse: str | None = None  # final global target: ok, uniform, one-hot (None: not measured)

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETE"

    @property
    def collapsed(self) -> bool:
        return self.collapse not in (None, "ok")

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        head = attrs.get("head")
        return cls(
            number=trial.number,
            label=attrs.get("label", f"trial-{trial.number}"),
            head=HeadSpec.from_dict(head) if head else None,
            seed=int(attrs.get("seed", 0)),
            state=trial.state.name,
            strategy=attrs.get("strategy", ""),
            final=dict(attrs.get("final", {})),
            init=dict(attrs.get("init", {})),
            losses=tuple(attrs.get("losses", ())),
            wall_time_s=attrs.get("wall_time_s", 0.0),
            images_per_s=attrs.get("images_per_s", 0.0),
            peak_memory_mb=attrs.get("peak_memory_mb", 0.0),
            failure_reason=attrs.get("failure_reason"),
            collapse=attrs.get("collapse"),
        )


def records(study: optuna.Study) -> list[TrialRecord]:
    return [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]


def baseline_records(study: optuna.Study) -> list[TrialRecord]:
    """The no-head baseline's runs (a study attribute: it has no discrepancy to tell)."""
    out = []
    for attrs in study.user_attrs.get("baseline", []):
        state = "COMPLETE" if attrs.get("status") == "completed" else "FAIL"
        out.append(
            TrialRecord(
                number=-1,
                label="baseline",
                head=None,
                seed=attrs["seed"],
                state=state,
                strategy="baseline",
                final=attrs.get("final", {}),
                init=attrs.get("init", {}),
                failure_reason=attrs.get("failure_reason"),
                collapse=attrs.get("collapse"),
            )
        )
    return out
