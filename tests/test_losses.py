"""The objective's terms against values worked out by hand on tiny tensors (method §3)."""

import math

import pytest
import torch

from training.objective.losses import center_update, global_loss, patch_loss, weighted_total

TAU_S = 0.1


def test_global_loss_uses_cross_view_pairs_only():
    # targets: view 0 one-hot [1, 0], view 1 uniform [.5, .5]
    targets = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    # student view 0 uniform; view 1 softmax([ln 3, 0]) = [3/4, 1/4] after dividing by τs
    students = [torch.zeros(1, 2), torch.tensor([[math.log(3) * TAU_S, 0.0]])]
    # pairs (q=0, v=1): -ln(3/4); (q=1, v=0): -ln(1/2); same-view pairs are not used
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert global_loss(targets, students, TAU_S).item() == pytest.approx(expected, rel=1e-6)


def test_global_loss_needs_two_views():
    with pytest.raises(ValueError, match="two views"):
        global_loss([torch.ones(1, 2) / 2], [torch.zeros(1, 2)], TAU_S)


def test_patch_loss_normalises_per_image_then_whole_batch():
    # one view, 2 images x 2 tokens, one-hot targets on class 0
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    # token CE: image 0 token 0 uniform → ln 2; token 1 softmax [3/4,1/4] → ln(4/3)
    logits = torch.zeros(2, 2, 2)
    logits[0, 1] = torch.tensor([math.log(3) * TAU_S, 0.0])
    mask = torch.tensor([[True, True], [False, False]])
    # image 0: (ln 2 + ln 4/3) / 2 ; image 1 has no mask → counts as 0 in the batch mean
    expected = ((math.log(2) + math.log(4 / 3)) / 2 + 0.0) / 2
    assert patch_loss([target], [logits], [mask], TAU_S).item() == pytest.approx(expected, rel=1e-6)


def test_patch_loss_ignores_unmasked_tokens_and_averages_views():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    logits = torch.zeros(1, 2, 2)
    only_first = torch.tensor([[True, False]])
    view_a = patch_loss([target], [logits], [only_first], TAU_S)
    assert view_a.item() == pytest.approx(math.log(2))
    # second view with nothing masked contributes 0; mean over the two views halves it
    both = patch_loss([target, target], [logits, logits], [only_first, ~only_first & False], TAU_S)
    assert both.item() == pytest.approx(math.log(2) / 2)


def test_center_update_is_an_ema_of_the_mean_over_all_leading_dims():
    center = torch.tensor([[1.0, 2.0]])
    logits = torch.tensor([[[2.0, 4.0], [4.0, 8.0]]])  # 1 x 2 tokens x K: mean [3, 6]
    updated = center_update(center, logits, momentum=0.9)
    assert torch.allclose(updated, torch.tensor([[0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 6]]))


def test_weighted_total_hssl_with_k_heads_uses_one_over_k():
    cls1 = [torch.tensor(1.0), torch.tensor(3.0)]  # mean 2
    cls2 = [torch.tensor(5.0), torch.tensor(7.0)]  # mean 6
    total = weighted_total(cls1, cls2, torch.tensor(10.0))
    assert total.item() == pytest.approx(0.5 * 2 + 0.5 * 6 + 10)


def test_weighted_total_baseline_and_dino_variants():
    assert weighted_total([torch.tensor(2.0)], [], torch.tensor(1.0)).item() == pytest.approx(3.0)
    no_mim = weighted_total([torch.tensor(2.0)], [torch.tensor(4.0)], None, lambda_cls=2.0)
    assert no_mim.item() == pytest.approx(2.0 * (1.0 + 2.0))
