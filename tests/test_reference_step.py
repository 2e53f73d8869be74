"""One training step of the project against a DINO step written out by hand (to rule out a
defect of ours in the loss, clipping, AdamW, the EMA teacher or the centre).

Baseline (no head), DINO variant (no masking), one fixed batch: the project's networks give the
logits; everything after them is recomputed here from the formulas of DINO/iBOT's
``train_one_epoch``, then compared with what ``training.loop.train.train_step`` did.
"""

import copy
import math
import random

import pytest
import torch

from training.loop.session import build_session
from training.loop.train import train_step
from training.recipe import TrialConfig
from training.specs import BaseSpec

CONFIG = TrialConfig(
    base=BaseSpec(
        name="vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        depth=1,
        width=32,
        drop_path_rate=0.0,  # no random drop path: the student forward is reproducible
    ),
    heads=(),
    variant="dino",
    data="synthetic",
    data_limit=40,
    heldout=0.2,
    batch_size=8,
    out_dim=32,
    proj_hidden=16,
    proj_bottleneck=8,
    # a large lr and weight decay so that the decay term is visible after one step
    lr=0.5,
    weight_decay=0.4,
    weight_decay_end=0.4,
    clip_grad=1.0,  # gradient norms here run from 0.3 to 7600: some tensors clipped, some not
    momentum_teacher=0.9,
    teacher_temp=0.04,
    warmup_teacher_temp=0.04,
    student_temp=0.1,
    center_momentum=0.9,
    freeze_prototypes_epochs=0,
    eval_at_init=False,
    device="cpu",
    precision="fp32",
)
TAU_T, TAU_S = 0.04, 0.1
BETAS, EPS = (0.9, 0.999), 1e-8
VIEW_SEED = 1234


def dino_loss(teacher_logits, student_logits, center):
    """DINO's loss: teacher (t - c) / τt → softmax, student s / τs → log_softmax, cross-entropy
    over the pairs of different views, each pair's batch mean, averaged over the 2 pairs."""
    p = torch.softmax((teacher_logits - center) / TAU_T, dim=-1).chunk(2)
    log_q = torch.log_softmax(student_logits / TAU_S, dim=-1).chunk(2)
    pair_01 = -(p[0] * log_q[1]).sum(-1).mean()
    pair_10 = -(p[1] * log_q[0]).sum(-1).mean()
    return (pair_01 + pair_10) / 2


@pytest.fixture(scope="module")
def step():
    """The project's session before and after one train_step, and the reference inputs."""
    s = build_session(CONFIG, None)
    images = s.train_set.images[: CONFIG.batch_size]
    views = torch.cat(s.augment(images, torch.Generator().manual_seed(VIEW_SEED)))
    again = torch.cat(s.augment(images, torch.Generator().manual_seed(VIEW_SEED)))
    assert torch.equal(views, again)  # the views depend on the generator only
    student0, teacher0 = copy.deepcopy(s.network), copy.deepcopy(s.teacher)
    with torch.no_grad():
        project_loss = s.objective(s.student(views, None), s.teacher(views), None, TAU_T).total
    scalars = train_step(
        s,
        images,
        epoch=0,
        it=0,
        gen=torch.Generator().manual_seed(VIEW_SEED),
        mask_rng=random.Random(0),
        teacher_temp=TAU_T,
    )
    return dict(
        s=s,
        views=views,
        student0=student0,
        teacher0=teacher0,
        project_loss=float(project_loss),
        scalars=scalars,
    )


def reference_loss(step):
    with torch.no_grad():
        teacher_logits = step["teacher0"](step["views"]).base_logits
    student = copy.deepcopy(step["student0"])
    student_logits = student(step["views"], None).base_logits
    loss = dino_loss(teacher_logits, student_logits, torch.zeros(1, CONFIG.out_dim))
    return loss, student, teacher_logits


def test_the_loss_matches_dino_written_out(step):
    loss, _, _ = reference_loss(step)
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert step["project_loss"] == pytest.approx(loss.item(), abs=1e-5)
    # train_step drew the same views from the same generator seed
    assert step["scalars"]["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert set(step["scalars"]) == {"loss", "loss_cls1"}


def test_one_adamw_step_with_per_tensor_clipping_matches_by_hand(step):
    s = step["s"]
    loss, student, _ = reference_loss(step)
    names, params = zip(*student.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    lr = CONFIG.lr * CONFIG.batch_size / 256  # linear scaling; no warm-up → the first step's lr
    wd = CONFIG.weight_decay
    assert s.schedules.lr[0] == pytest.approx(lr) and s.schedules.wd[0] == pytest.approx(wd)
    updated = dict(s.network.named_parameters())
    state = s.optimizer.state
    clipped = unclipped = decay_seen = 0
    b1, b2 = BETAS
    for name, p0, g in zip(names, params, grads, strict=True):
        p0 = p0.detach()
        if g is None:  # e.g. the mask token, unused without masking: AdamW leaves it alone
            assert torch.equal(updated[name], p0), name
            continue
        norm = float(g.norm())
        scale = min(1.0, CONFIG.clip_grad / (norm + 1e-6))  # each tensor on its own
        clipped, unclipped = clipped + (scale < 1), unclipped + (scale == 1)
        g = g * scale
        decay = 0.0 if (name.endswith(".bias") or p0.ndim == 1) else wd  # DINO's groups
        m = (1 - b1) * g
        v = (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1), v / (1 - b2)
        expected = p0 * (1 - lr * decay) - lr * m_hat / (v_hat.sqrt() + EPS)
        project = updated[name].detach()
        assert torch.allclose(state[updated[name]]["exp_avg"], m, rtol=1e-4, atol=1e-9), name
        # elements with |g| near eps make g / (|g| + eps) sensitive to rounding of g
        assert torch.allclose(project, expected, rtol=1e-5, atol=1e-3 * lr), name
        if decay and float(p0.abs().max()) > 0.01:  # the decay is visible at this tolerance
            without = p0 - lr * m_hat / (v_hat.sqrt() + EPS)
            assert not torch.allclose(project, without, rtol=1e-5, atol=1e-3 * lr), name
            decay_seen += 1
    assert clipped > 0 and unclipped > 0  # both sides of the clip are exercised
    assert decay_seen > 0


def test_the_teacher_is_the_ema_of_the_updated_student(step):
    s = step["s"]
    m = CONFIG.momentum_teacher
    assert s.schedules.momentum[0] == pytest.approx(m)
    teacher0 = dict(step["teacher0"].named_parameters())
    student1 = dict(s.network.named_parameters())
    moved = 0
    for name, t1 in s.teacher.named_parameters():
        expected = m * teacher0[name] + (1 - m) * student1[name].detach()
        assert torch.allclose(t1, expected, atol=1e-7, rtol=1e-6), name
        moved += not torch.equal(t1, teacher0[name])
    assert moved > 0


def test_the_centre_is_an_ema_of_the_raw_teacher_logits(step):
    _, _, teacher_logits = reference_loss(step)
    expected = 0.9 * torch.zeros(1, CONFIG.out_dim) + 0.1 * teacher_logits.mean(0, keepdim=True)
    assert torch.allclose(step["s"].objective.global_centers[0], expected, atol=1e-7)
    assert expected.abs().sum() > 0
