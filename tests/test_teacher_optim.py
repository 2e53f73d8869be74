"""EMA teacher, per-tensor gradient clipping, weight-decay groups, prototype freeze."""

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from training.loop.optim import clip_per_tensor, freeze_prototypes, param_groups
from training.model.teacher import ema_update, make_teacher


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.norm = nn.LayerNorm(2)
        self.drop = DropPath(0.3)
        self.prototypes = nn.Linear(2, 3, bias=False)


def test_ema_formula():
    student, teacher = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(-1.0)
        student.weight.fill_(3.0), student.bias.fill_(1.0)
    ema_update(teacher, student, momentum=0.9)
    assert teacher.weight.item() == pytest.approx(0.9 * 1 + 0.1 * 3)
    assert teacher.bias.item() == pytest.approx(0.9 * -1 + 0.1 * 1)
    assert student.weight.item() == 3.0


def test_make_teacher_is_a_frozen_copy_without_drop_path():
    student = Tiny()
    teacher = make_teacher(student)
    assert teacher.drop.drop_prob == 0.0 and student.drop.drop_prob == 0.3
    assert all(not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.linear.weight, student.linear.weight)
    assert teacher.linear.weight.data_ptr() != student.linear.weight.data_ptr()


def test_clipping_is_per_tensor_not_global():
    big, small = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    big.grad = torch.tensor([3.0, 4.0])  # norm 5
    small.grad = torch.tensor([0.06, 0.08])  # norm 0.1
    clip_per_tensor([big, small], max_norm=0.3)
    assert big.grad.norm().item() == pytest.approx(0.3, rel=1e-4)
    # a global-norm clip would also have shrunk the small tensor; per-tensor leaves it alone
    assert torch.allclose(small.grad, torch.tensor([0.06, 0.08]))


def test_no_weight_decay_on_biases_and_1d_tensors():
    model = Tiny()
    decay, no_decay = param_groups(model)
    assert {id(p) for p in decay["params"]} == {
        id(model.linear.weight),
        id(model.prototypes.weight),
    }
    assert {id(p) for p in no_decay["params"]} == {
        id(model.linear.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }
    assert no_decay["weight_decay"] == 0.0


def test_freeze_prototypes_drops_only_their_gradient():
    model = Tiny()
    model.prototypes(model.linear(torch.ones(1, 2))).sum().backward()
    freeze_prototypes(model)
    assert model.prototypes.weight.grad is None and model.linear.weight.grad is not None
