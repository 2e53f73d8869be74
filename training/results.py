"""What a run produced: the fields both engines report (pre-training's ``TrialResult`` and the
fine-tune's ``FinetuneResult`` add their own), and their plain-dict form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="RunResult")


@dataclass(frozen=True)
class RunResult:
    """``status`` is ``completed``, ``stopped`` (the report callback asked to stop, e.g. an
    Optuna pruner) or ``failed`` (``reason`` says why); ``metrics`` is the final record and
    ``history`` every epoch's."""

    status: str
    reason: str | None = None
    epochs_done: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    wall_time_s: float = 0.0
    images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    checkpoint: str | None = None
    world_size: int = 1
    steps_per_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = list(self.history)
        return data

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return cls(**{**data, "history": tuple(data.get("history", ()))})
