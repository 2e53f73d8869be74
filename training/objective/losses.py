"""The HSSL objective's terms as pure functions (method §3, [code]).

Views are given as sequences (one tensor per global view). Targets are teacher probabilities
(``target_probs``: centred, sharpened by τt); student inputs are raw logits (sharpened by τs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from training.objective.targets import cross_entropy, target_probs

__all__ = [
    "center_update",
    "global_loss",
    "koleo_loss",
    "patch_loss",
    "sinkhorn_targets",
    "target_probs",
    "weighted_total",
]


def global_loss(targets: Sequence[Tensor], student_logits: Sequence[Tensor], student_temp: float):
    """Mean over cross-view pairs q ≠ v of the batch-mean H(target_q, softmax(student_v / τs)).

    Used for L_cls1 (head target, base prediction), L_cls2 (head target, head prediction) and the
    baseline's [CLS] loss (base target, base prediction).
    """
    total, pairs = 0.0, 0
    for q, target in enumerate(targets):
        for v, logits in enumerate(student_logits):
            if q == v:
                continue
            total = total + cross_entropy(target, logits, student_temp).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("global_loss needs at least two views (it uses cross-view pairs only)")
    return total / pairs


def patch_loss(
    targets: Sequence[Tensor],
    student_logits: Sequence[Tensor],
    masks: Sequence[Tensor],
    student_temp: float,
) -> Tensor:
    """iBOT's masked-patch loss, same view (q = v).

    Per image: CE summed over masked tokens / max(#masked, 1); then the mean over the whole
    batch (images without a mask count as 0); then the mean over views.
    ``targets[v]``/``student_logits[v]``: B x N x K; ``masks[v]``: B x N (bool).
    """
    total = 0.0
    for target, logits, mask in zip(targets, student_logits, masks, strict=True):
        per_token = cross_entropy(target, logits, student_temp)  # B x N
        weight = mask.to(per_token.dtype)
        per_image = (per_token * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)
        total = total + per_image.mean()
    return total / len(targets)


@torch.no_grad()
def center_update(center: Tensor, teacher_logits: Tensor, momentum: float) -> Tensor:
    """EMA of the raw (uncentred) teacher logits: c ← m·c + (1−m)·mean(logits).

    The mean runs over every leading dimension (views, images and, for patches, all tokens,
    masked or not). Under DDP the caller all-reduces the mean before calling.
    """
    batch_mean = teacher_logits.float().reshape(-1, teacher_logits.shape[-1]).mean(0, keepdim=True)
    return center * momentum + batch_mean * (1 - momentum)


def weighted_total(
    cls1: Sequence[Tensor],
    cls2: Sequence[Tensor],
    mim: Tensor | None,
    lambda_cls: float = 1.0,
    lambda_mim: float = 1.0,
) -> Tensor:
    """L = λcls·(0.5·(1/K)Σk L_cls1^k + 0.5·(1/K)Σk L_cls2^k) + λmim·L_mim  (method §3, §5).

    With one head this is the paper's 0.5·L_cls1 + 0.5·L_cls2 + L_mim; the baseline passes its
    single [CLS] loss as ``cls1`` and nothing as ``cls2`` (weight 1 on it, as in plain iBOT).
    """
    if cls2:
        cls = 0.5 * torch.stack(list(cls1)).mean() + 0.5 * torch.stack(list(cls2)).mean()
    else:
        cls = torch.stack(list(cls1)).mean()
    total = lambda_cls * cls
    if mim is not None:
        total = total + lambda_mim * mim
    return total


@torch.no_grad()
def sinkhorn_targets(teacher_logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp teacher targets (SwAV, DINOv2) [recon option beside the EMA centre].

    ``Q = exp(logits / τt)`` (B x K) is scaled alternately so that every prototype gets the same
    total mass over the batch (columns sum to B/K) and every image sums to 1 (the last step), so
    the batch cannot put all its mass on one prototype, without a running centre. Under DDP the
    column sums run over every rank's batch. Returns B x K probabilities.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = teacher_logits.float()
    # shift by the global max (one constant for every rank): same Q after normalising; a
    # per-rank max would rescale each rank's rows, which 3 iterations do not undo
    shift = logits.max()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = ((logits - shift) / temperature).exp()
    batch, k = q.shape
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    total = q.sum()
    _all_sum(total)
    q = q / total
    for _ in range(iterations):
        cols = q.sum(0, keepdim=True)
        _all_sum(cols)
        q = q / cols / k
        q = q / q.sum(1, keepdim=True) / (batch * world)
    return q * (batch * world)


def _all_sum(t: Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser (DINOv2): −mean log of each L2-normalised feature's distance to its
    nearest neighbour in the batch. Spreads the [CLS] embeddings apart, which works against
    the collapse of all images onto one point. ``features``: B x C, B ≥ 2."""
    if features.shape[0] < 2:
        raise ValueError("koleo_loss needs at least two samples")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.T
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -(distances + eps).log().mean()
