"""A generated ten-class image set for fast tests and smoke runs.

Each class is a shape or texture (disk, ring, square, stripes, checkerboard, cross, triangle,
concentric rings, two dots, dot grid) drawn at a random position, size and angle, in a colour
whose hue is tied to the class (with jitter), over a dark random background with pixel noise.
Shape and hue both carry the class, so even a nearest-neighbour on raw pixels beats chance,
while the augmentation's colour jitter and grayscale push a network towards the shapes.
Generation is vectorised per class and deterministic given the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from training.data.colour import hsv_to_rgb

SYNTHETIC_CLASSES = (
    "disk",
    "ring",
    "square",
    "stripes",
    "checker",
    "cross",
    "triangle",
    "rings",
    "dots",
    "grid",
)
SYNTHETIC_SIZE = 1000
SYNTHETIC_SEED = 20240611  # content is fixed; open_dataset's seed only picks the split

# Each shape maps per-image parameters to a boolean mask N x S x S. ``dx, dy`` are offsets
# from the shape centre, ``u, v`` the same rotated by the image's angle, ``r`` the size and
# ``f`` a spatial frequency (all broadcast as N x 1 x 1 where per-image).
Shape = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def _triangle(dx: Tensor, dy: Tensor, u: Tensor, v: Tensor, r: Tensor, f: Tensor) -> Tensor:
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):  # three half-planes, not a loop over images
        a = 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) < 0.5 * r
    return inside


def _dots(dx: Tensor, dy: Tensor, u: Tensor, v: Tensor, r: Tensor, f: Tensor) -> Tensor:
    d = 0.55 * r
    small = (0.35 * r) ** 2
    return ((u - d) ** 2 + v**2 < small) | ((u + d) ** 2 + v**2 < small)


_SHAPES: tuple[Shape, ...] = (
    lambda dx, dy, u, v, r, f: dx**2 + dy**2 < r**2,
    lambda dx, dy, u, v, r, f: ((dx**2 + dy**2).sqrt() - 0.8 * r).abs() < 0.2 * r,
    lambda dx, dy, u, v, r, f: torch.maximum(u.abs(), v.abs()) < 0.75 * r,
    lambda dx, dy, u, v, r, f: torch.sin(f * u) > 0,
    lambda dx, dy, u, v, r, f: torch.sin(f * u) * torch.sin(f * v) > 0,
    lambda dx, dy, u, v, r, f: (
        ((u.abs() < 0.25 * r) & (v.abs() < r)) | ((v.abs() < 0.25 * r) & (u.abs() < r))
    ),
    _triangle,
    lambda dx, dy, u, v, r, f: torch.sin(f * (dx**2 + dy**2).sqrt()) > 0,
    _dots,
    lambda dx, dy, u, v, r, f: (torch.sin(f * u) > 0.6) & (torch.sin(f * v) > 0.6),
)


def make_synthetic(
    img_size: int, n: int = SYNTHETIC_SIZE, seed: int = SYNTHETIC_SEED
) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """``n`` images (uint8 n x 3 x S x S), balanced int64 labels, and the class names."""
    g = torch.Generator().manual_seed(seed)
    k = len(SYNTHETIC_CLASSES)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    axis = torch.linspace(-1.0, 1.0, img_size)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    cx, cy = 0.6 * rand(n) - 0.3, 0.6 * rand(n) - 0.3
    size = 0.35 + 0.25 * rand(n)
    angle = math.pi * rand(n)
    freq = math.pi * (2.0 + 2.0 * rand(n))
    masks = torch.zeros(n, img_size, img_size, dtype=torch.bool)
    for c, shape in enumerate(_SHAPES):  # one vectorised call per class
        idx = (labels == c).nonzero().squeeze(1)
        if not idx.numel():
            continue
        dx = xs - cx[idx].view(-1, 1, 1)
        dy = ys - cy[idx].view(-1, 1, 1)
        cos, sin = angle[idx].cos().view(-1, 1, 1), angle[idx].sin().view(-1, 1, 1)
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        r, f = size[idx].view(-1, 1, 1), freq[idx].view(-1, 1, 1)
        masks[idx] = shape(dx, dy, u, v, r, f)
    hue = (labels.float() / k + 0.06 * (rand(n) - 0.5)) % 1.0
    fg = hsv_to_rgb(hue, 0.6 + 0.4 * rand(n), 0.7 + 0.3 * rand(n))  # n x 3
    bg = (0.3 * rand(n)).view(-1, 1).expand(-1, 3)
    m = masks.unsqueeze(1).float()
    images = bg.view(n, 3, 1, 1) + m * (fg - bg).view(n, 3, 1, 1)
    images = images + 0.05 * torch.randn(n, 3, img_size, img_size, generator=g)
    images = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return images, labels, SYNTHETIC_CLASSES
