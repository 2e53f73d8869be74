"""iBOT block masking drawn per crop (method §3)."""

import math
import random

import numpy as np
import pytest

from training.objective.masking import _add_block, block_mask, sample_masks, sample_ratio


def test_block_mask_never_exceeds_its_target_and_is_not_empty():
    rng = random.Random(0)
    for ratio in (0.1, 0.3, 0.5):
        for _ in range(50):
            mask = block_mask(8, 8, ratio, rng)
            assert 0 < mask.sum() <= ratio * 64


def test_zero_ratio_masks_nothing():
    assert block_mask(14, 14, 0.0, random.Random(0)).sum() == 0


def test_each_block_is_a_rectangle_within_the_aspect_range():
    for seed in range(20):
        mask = np.zeros((14, 14), dtype=bool)
        added = _add_block(
            mask, 30, (14 // 3) ** 2, (math.log(0.3), math.log(1 / 0.3)), random.Random(seed)
        )
        rows, cols = np.nonzero(mask)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert added == mask.sum() == height * width <= 30  # one solid rectangle
        assert 0.3 / 1.5 <= height / width <= 1.5 / 0.3  # log-uniform aspect, rounded


def test_sample_ratio_distribution():
    rng = random.Random(0)
    ratios = np.array([sample_ratio(0.5, 0.1, 0.5, rng) for _ in range(4000)])
    masked = ratios[ratios > 0]
    assert abs((ratios == 0).mean() - 0.5) < 0.03
    assert masked.min() >= 0.1 and masked.max() <= 0.5
    assert masked.mean() == pytest.approx(0.3, abs=0.01)  # U(0.1, 0.5)


def test_realised_mask_ratio_distribution_per_crop():
    masks = sample_masks(2000, (14, 14), 0.5, (0.1, 0.5), random.Random(1)).numpy()
    realised = masks.reshape(len(masks), -1).mean(1)
    assert abs((realised == 0).mean() - 0.5) < 0.04  # half of the crops unmasked
    on = realised[realised > 0]
    assert on.max() <= 0.5
    assert 0.2 < on.mean() <= 0.3  # block placement can fall short of the target, never above
    assert len({m.tobytes() for m in masks[:50]}) > 20  # drawn independently per crop


def test_sample_masks_shape_and_dtype():
    masks = sample_masks(4, (4, 6), 1.0, (0.3, 0.3), random.Random(0))
    assert masks.shape == (4, 4, 6) and str(masks.dtype) == "torch.bool"
