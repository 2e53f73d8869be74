"""The teacher's target distributions and the two formulas built on them (method §3, §4):
centred, sharpened targets, the student-to-target cross-entropy and the entropy of a target.
They stay differentiable: the objective trains on them and the discrepancy measures reuse them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def target_probs(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """Centred, sharpened teacher targets ``softmax((logits - center) / T)`` (method §3, ``Ta``).

    Args:
        teacher_logits: ``(..., K)`` raw teacher logits.
        center: centre broadcastable to ``teacher_logits`` (usually ``(K,)`` or ``(1, K)``).
        temperature: teacher temperature ``τt`` > 0.

    Returns:
        Probabilities of the same shape as ``teacher_logits``, summing to 1 over the last dim.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return ((teacher_logits - center) / temperature).softmax(dim=-1)


def cross_entropy(target: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample ``H(P, Q) = -Σ_k P_k log Q_k`` with ``Q = softmax(student_logits / T)`` (§3).

    Computed with ``log_softmax`` so that it stays finite for confident students, and summed
    over the last dimension only: a ``(B, K)`` input gives ``(B,)``, a ``(B, N, K)`` patch map
    gives ``(B, N)``.

    Args:
        target: ``(..., K)`` target probabilities ``P``.
        student_logits: ``(..., K)`` student logits, same shape as ``target``.
        temperature: student temperature ``τs`` > 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if target.shape != student_logits.shape:
        raise ValueError(
            f"target and student logits differ in shape: {tuple(target.shape)} vs "
            f"{tuple(student_logits.shape)}"
        )
    return -(target * (student_logits / temperature).log_softmax(dim=-1)).sum(dim=-1)


def entropy(p: Tensor) -> Tensor:
    """Per-sample Shannon entropy ``-Σ_k p_k log p_k`` in nats, with ``0 log 0 = 0`` (method §4).

    ``torch.xlogy`` gives exactly 0 for ``p_k = 0``, so one-hot targets have entropy 0 rather
    than NaN. Summed over the last dimension: ``(..., K)`` → ``(...)``.
    """
    return -torch.xlogy(p, p).sum(dim=-1)
