"""iBOT/BEiT block masking, drawn per crop (method §3).

Each view independently gets no mask (probability ``1 - prob``) or a target ratio drawn from
U(low, high). Blocks of area at least ``(min(H, W) // 3) ** 2`` with a log-uniform aspect ratio in
[0.3, 1/0.3] are added until the target count is reached or no block fits.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

ASPECT = (0.3, 1 / 0.3)


def block_mask(height: int, width: int, ratio: float, rng: random.Random) -> np.ndarray:
    """A boolean H x W mask covering at most ``round(ratio * H * W)`` cells in blocks."""
    mask = np.zeros((height, width), dtype=bool)
    target = ratio * height * width
    min_area = (min(height, width) // 3) ** 2
    log_aspect = (math.log(ASPECT[0]), math.log(ASPECT[1]))
    count = 0
    while count < target:
        added = _add_block(mask, target - count, min_area, log_aspect, rng)
        if added == 0:
            break
        count += added
    return mask


def _add_block(
    mask: np.ndarray,
    budget: float,
    min_area: int,
    log_aspect: tuple[float, float],
    rng: random.Random,
) -> int:
    """Try up to 10 random blocks; mask the first that adds 1..budget new cells."""
    height, width = mask.shape
    for _ in range(10):
        area = rng.uniform(min_area, budget)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = round(math.sqrt(area * aspect))
        w = round(math.sqrt(area / aspect))
        if not (0 < h < height and 0 < w < width):
            continue
        top = rng.randint(0, height - h)
        left = rng.randint(0, width - w)
        window = mask[top : top + h, left : left + w]
        new = h * w - int(window.sum())
        if 0 < new <= budget:
            window[...] = True
            return new
    return 0


def sample_ratio(prob: float, low: float, high: float, rng: random.Random) -> float:
    """0 with probability ``1 - prob``, else U(low, high)."""
    if rng.random() >= prob:
        return 0.0
    return rng.uniform(low, high)


def sample_masks(
    batch: int,
    grid: tuple[int, int],
    prob: float,
    ratio: tuple[float, float],
    rng: random.Random,
) -> torch.Tensor:
    """Masks for ``batch`` crops: bool tensor B x H x W, True = masked."""
    height, width = grid
    masks = [block_mask(height, width, sample_ratio(prob, *ratio, rng), rng) for _ in range(batch)]
    return torch.from_numpy(np.stack(masks))
