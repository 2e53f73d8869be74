"""The HSSL objective over network outputs: targets, K heads, baseline, DINO variant, gradient
paths (method §3, §5)."""

import pytest
import torch

from training.model.network import HSSLNetwork, NetworkOutput
from training.model.teacher import make_teacher
from training.objective.hssl import HSSLObjective
from training.objective.losses import global_loss, patch_loss, target_probs, weighted_total
from training.specs import BaseSpec, HeadSpec

K, B, N, V = 6, 3, 4, 2


def fake_output(num_heads: int, seed: int) -> NetworkOutput:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return NetworkOutput(
        base_logits=rand(V * B, K),
        patch_logits=rand(V * B, N, K),
        head_logits=[rand(V * B, K) for _ in range(num_heads)],
        base_features=rand(V * B, 5),
        head_features=[rand(V * B, 5) for _ in range(num_heads)],
    )


def masks(side: int = 2) -> torch.Tensor:
    m = torch.zeros(V * B, side, side, dtype=torch.bool)
    m[0, 0, 0] = m[4, 1] = True
    return m


def test_single_head_terms_match_the_formulas():
    student, teacher = fake_output(1, 0), fake_output(1, 1)
    obj = HSSLObjective(1, K)
    obj.global_centers.fill_(0.3)
    parts = obj(student, teacher, masks(), teacher_temp=0.04)
    targets = list(target_probs(teacher.head_logits[0], obj.global_centers[0], 0.04).chunk(V))
    cls1 = global_loss(targets, list(student.base_logits.chunk(V)), 0.1)
    cls2 = global_loss(targets, list(student.head_logits[0].chunk(V)), 0.1)
    patch_t = list(target_probs(teacher.patch_logits, obj.patch_center, 0.04).chunk(V))
    mim = patch_loss(
        patch_t, list(student.patch_logits.chunk(V)), list(masks().flatten(1).chunk(V)), 0.1
    )
    assert parts.total.item() == pytest.approx((0.5 * cls1 + 0.5 * cls2 + mim).item(), rel=1e-6)
    assert parts.cls1[0].item() == pytest.approx(cls1.item())


def only_head(out: NetworkOutput, k: int) -> NetworkOutput:
    return NetworkOutput(
        out.base_logits,
        out.patch_logits,
        [out.head_logits[k]],
        out.base_features,
        [out.head_features[k]],
    )


def test_k_heads_average_each_term_over_heads():
    student, teacher = fake_output(2, 0), fake_output(2, 1)
    joint = HSSLObjective(2, K)(student, teacher, masks(), 0.04)
    singles = []
    for k in range(2):
        student_k, teacher_k = only_head(student, k), only_head(teacher, k)
        singles.append(HSSLObjective(1, K)(student_k, teacher_k, masks(), 0.04))
    expected = weighted_total(
        [s.cls1[0] for s in singles], [s.cls2[0] for s in singles], singles[0].mim
    )
    assert joint.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert joint.total.item() != pytest.approx(singles[0].total.item())


def test_baseline_targets_the_teacher_base_cls():
    student, teacher = fake_output(0, 0), fake_output(0, 1)
    parts = HSSLObjective(0, K)(student, teacher, masks(), 0.04)
    targets = list(target_probs(teacher.base_logits, torch.zeros(1, K), 0.04).chunk(V))
    cls = global_loss(targets, list(student.base_logits.chunk(V)), 0.1)
    assert parts.cls2 == [] and parts.cls1[0].item() == pytest.approx(cls.item())
    assert parts.total.item() == pytest.approx((cls + parts.mim).item())


def test_dino_variant_has_no_patch_term_and_needs_no_masks():
    parts = HSSLObjective(1, K, masking=False)(fake_output(1, 0), fake_output(1, 1), None, 0.04)
    assert parts.mim is None
    assert parts.total.item() == pytest.approx(
        0.5 * parts.cls1[0].item() + 0.5 * parts.cls2[0].item()
    )


def test_centres_update_from_raw_teacher_logits():
    teacher = fake_output(2, 1)
    obj = HSSLObjective(2, K)
    obj.update_centers(teacher)
    assert torch.allclose(obj.global_centers[1], 0.1 * teacher.head_logits[1].mean(0, keepdim=True))
    # the patch centre averages over every token of every image, masked or not
    assert torch.allclose(obj.patch_center, 0.1 * teacher.patch_logits.reshape(-1, K).mean(0))


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    base = BaseSpec(name="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, width=32)
    student = HSSLNetwork(
        base,
        (HeadSpec("convnext", depth=1, kernel=3),),
        out_dim=K,
        proj_hidden=16,
        proj_bottleneck=8,
    )
    return student, make_teacher(student)


def run_parts(student, teacher):
    images = torch.randn(V * B, 3, 16, 16)
    with torch.no_grad():
        t_out = teacher(images)
    s_out = student(images, masks(4))
    return HSSLObjective(1, K)(s_out, t_out, masks(4), 0.04)


def grads_of(module):
    return [p.grad for p in module.parameters()]


def test_teacher_receives_no_gradient(tiny_pair):
    student, teacher = tiny_pair
    student.zero_grad(set_to_none=True)
    run_parts(student, teacher).total.backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(g is not None and g.abs().sum() > 0 for g in grads_of(student.base))


def test_cls2_reaches_the_base_and_cls1_does_not_train_the_head(tiny_pair):
    student, teacher = tiny_pair
    student.zero_grad(set_to_none=True)
    run_parts(student, teacher).cls2[0].backward()
    block_grads = [p.grad for p in student.base.model.blocks.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in block_grads)  # no stop-gradient
    student.zero_grad(set_to_none=True)
    run_parts(student, teacher).cls1[0].backward()
    assert all(g is None or g.abs().sum() == 0 for g in grads_of(student.heads[0]))
    assert all(g is None or g.abs().sum() == 0 for g in grads_of(student.head_projectors[0]))


def test_student_projects_only_masked_tokens_and_the_loss_is_unchanged(tiny_pair):
    student, teacher = tiny_pair
    student.eval()  # no drop-path, so two passes agree
    images, m = torch.randn(V * B, 3, 16, 16), masks(4)
    out = student(images, m)
    full = student.prototypes(student.base_projector(student.base(images, m).tokens))
    where = m.flatten(1)
    assert torch.allclose(out.patch_logits[where], full[where], atol=1e-6)
    assert out.patch_logits[~where].abs().sum() == 0
    with torch.no_grad():
        t_out = teacher(images)
    dense = NetworkOutput(
        out.base_logits, full, out.head_logits, out.base_features, out.head_features
    )
    obj = HSSLObjective(1, K)
    assert obj(out, t_out, m, 0.04).total.item() == pytest.approx(
        obj(dense, t_out, m, 0.04).total.item(), rel=1e-6
    )
    student.train()


def test_heads_can_read_the_unmasked_views(tiny_pair):
    student, _ = tiny_pair
    student.eval()
    images, m = torch.randn(V * B, 3, 16, 16), masks(4)
    clean = student.embed(images)[0].head_features[0]
    assert not torch.allclose(student(images, m).head_features[0], clean, atol=1e-5)
    student.head_sees_mask = False
    assert torch.allclose(student(images, m).head_features[0], clean, atol=1e-5)
    student.head_sees_mask = True
    student.train()
