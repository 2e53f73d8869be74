"""Held-out accuracy: top-k counts per batch, summed over batches and ranks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def topk_correct(logits: Tensor, labels: Tensor, ks: Iterable[int]) -> list[int]:
    """How many rows have their label among the ``k`` highest logits, for each ``k`` (ties
    broken by ``torch.topk``'s order; ``k`` is capped at the number of classes)."""
    ks = list(ks)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    autocast,
    world_size: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Top-1, top-5 (fractions) and mean cross-entropy of ``model`` over ``batches``; under
    DDP each rank passes its shard and the counts are summed over ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # top-1, top-5, loss sum, images
    for images, labels in batches:
        with autocast():
            logits = model(images)
        logits = logits.float()
        top1, top5 = topk_correct(logits, labels, (1, 5))
        loss = F.cross_entropy(logits, labels, reduction="sum")
        totals += torch.tensor([top1, top5, float(loss), len(labels)], dtype=torch.float64)
    model.train(was_training)
    if world_size > 1:
        totals = totals.to(device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    n = max(float(totals[3]), 1.0)
    return {
        "top1": float(totals[0]) / n,
        "top5": float(totals[1]) / n,
        "eval_loss": float(totals[2]) / n,
    }
