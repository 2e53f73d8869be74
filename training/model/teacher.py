"""The EMA teacher (method §2): same architecture as the student, no gradients, no drop-path,
updated as θt ← m·θt + (1 − m)·θs after every student step."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of the student with drop-path disabled (the paper builds its teacher
    without drop-path)."""
    teacher = copy.deepcopy(student)
    for module in teacher.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks hold exactly the same parameters and buffers (the teacher and the
    student at initialisation): then they compute the same outputs, and one pass serves both."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """θt ← m·θt + (1 − m)·θs over the parameters (buffers are the teacher's own)."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
