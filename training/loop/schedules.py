"""Per-iteration schedules (method §9): cosine lr with linear warm-up, cosine weight decay, cosine
EMA momentum towards 1, and the teacher temperature warm-up stepped per epoch (method §3)."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    start: float,
    end: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start``, then a half cosine from ``start`` to
    ``end``; one value per iteration (``epochs * iters_per_epoch`` values)."""
    total = epochs * iters_per_epoch
    warm = min(warmup_epochs * iters_per_epoch, total)
    warmup = np.linspace(warmup_start, start, warm, endpoint=False) if warm else np.array([])
    steps = np.arange(total - warm)
    span = max(total - warm, 1)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * steps / span))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def teacher_temperature(
    warmup_temp: float,
    temp: float,
    warmup_epochs: int,
    epochs: int,
) -> np.ndarray:
    """One teacher temperature per epoch: linear ``warmup_temp`` → ``temp`` over the warm-up
    epochs, then constant (iBOT's schedule)."""
    warm = min(warmup_epochs, epochs)
    ramp = np.linspace(warmup_temp, temp, warm) if warm else np.array([])
    return np.concatenate([ramp, np.full(epochs - warm, temp)]).astype(np.float64)


def lr_for_batch(base_lr: float, batch_size: int, world_size: int = 1) -> float:
    """The linear scaling rule used by DINO/iBOT: lr × total batch / 256."""
    return base_lr * batch_size * world_size / 256.0
