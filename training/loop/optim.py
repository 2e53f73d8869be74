"""Optimiser pieces of the iBOT recipe (method §3, §9): AdamW groups without weight decay on
biases and 1-D tensors, per-tensor gradient clipping, and the prototype-layer freeze."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module) -> list[dict]:
    """Two AdamW groups: decayed (≥ 2-D weights) and not decayed (biases, norms, 1-D tensors)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim <= 1:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply this iteration's lr to every group and weight decay to the decayed group only."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = float(lr)
        if i == 0:
            group["weight_decay"] = float(weight_decay)


@torch.no_grad()
def clip_per_tensor(parameters, max_norm: float) -> None:
    """Clip each parameter tensor's gradient norm to ``max_norm`` on its own (not one global
    norm), as the released code does: g ← g · min(1, max_norm / (‖g‖ + 1e-6))."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


def freeze_prototypes(model: nn.Module) -> None:
    """Drop the prototype layer's gradient (it gets none during the first epochs)."""
    for name, param in model.named_parameters():
        if "prototypes" in name:
            param.grad = None
