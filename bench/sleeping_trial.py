"""A bench-only stand-in for a proxy run: it sleeps instead of training.

``bench/scaling.py`` measures our orchestration (claims, shards, ask/tell, database writes)
across many worker processes on a 2-core machine; real training there would measure the
cores instead. ``bench/sleeping_worker.py`` passes ``sleeping_runner(seconds)`` to
``search.run.use_trial_runner``: every trial reports one epoch, sleeps that long (polling
cancel) and returns a completed result whose metrics are a stable function of the head and
seed, so the ranking has something to order. Nothing here touches torch.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any

from training.recipe import TrialConfig, TrialResult


def _score(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def sleeping_runner(seconds: float) -> Callable[..., TrialResult]:
    """A trial runner that sleeps ``seconds`` per trial."""
    return functools.partial(run_trial_sleeping, seconds=seconds)


def run_trial_sleeping(
    config: TrialConfig,
    report: Callable[[int, dict[str, Any]], bool] | None = None,
    *,
    output_dir=None,
    timeout_s: float | None = None,
    should_cancel: Callable[[], bool] | None = None,
    memory_limit_mb: int | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    seconds: float = 1.0,
) -> TrialResult:
    started = time.monotonic()
    duration = seconds
    labels = [h.label() for h in config.heads]
    metrics: dict[str, Any] = {
        "knn_cls": _score(f"knn{config.seed}{labels}"),
        "knn_patch": _score(f"patch{config.seed}{labels}"),
        "linear": _score(f"linear{config.seed}{labels}"),
        "d_kl": _score(f"kl{config.seed}{labels}"),
        "d_cka": _score(f"cka{config.seed}{labels}"),
        "heads": [
            {"head": lb, "d_kl": _score(f"kl{config.seed}{lb}"), "d_cka": _score(f"cka{lb}")}
            for lb in labels
        ],
    }
    if report is not None:
        report(0, {**metrics, "epoch": 0})
    while time.monotonic() - started < duration:
        if should_cancel is not None and should_cancel():
            return TrialResult(status="cancelled", reason="cancelled")
        time.sleep(min(0.1, duration))
    return TrialResult(
        status="completed",
        epochs_done=1,
        metrics=metrics,
        history=({**metrics, "epoch": 0},),
        wall_time_s=time.monotonic() - started,
    )
