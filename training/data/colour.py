"""Batched colour operations on float images in [0, 1], shaped N x 3 x H x W.

They back the colour half of :class:`~training.data.augment.TwoCropAugment` and the colouring
of the synthetic data set. Every per-image factor is a tensor of shape (N,), so one call treats
the whole batch with no Python loop over images; the formulas follow torchvision's functional
versions (blend with a grey target, then clamp) so the augmentation matches the usual recipe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma weights, the ones torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (NTSC); Y is the luma above.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)


def _per_image(factor: Tensor) -> Tensor:
    """Reshape a (N,) factor so that it broadcasts over N x C x H x W."""
    return factor.view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """Luma of each pixel, N x 1 x H x W."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by ``factor`` (blend with black). Works in place on ``x``."""
    return x.mul_(_per_image(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with each image's mean luma: 0 gives flat grey, 1 the image itself. In place."""
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)
    mean = x.mean(dim=(2, 3)) @ luma  # mean luma = luma of the channel means
    f = _per_image(factor)
    return x.mul_(f).add_(_per_image((1.0 - factor) * mean)).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel luma: 0 gives the grey image, 1 the image itself. In place."""
    f = _per_image(factor)
    gray = grayscale(x).mul_(1.0 - f)
    return x.mul_(f).add_(gray).clamp_(0.0, 1.0)


def hsv_to_rgb(hue: Tensor, sat: Tensor, val: Tensor) -> Tensor:
    """RGB from hue, saturation, value (all in [0, 1]); the channel axis is inserted at
    dim 1 (N x H x W -> N x 3 x H x W, N -> N x 3). Used to colour the synthetic set."""
    channels = []
    for n in (5.0, 3.0, 1.0):  # the three channels, not the images
        k = (n + hue * 6.0) % 6.0
        ramp = torch.minimum(torch.minimum(k, 4.0 - k), torch.ones_like(k)).clamp_min(0.0)
        channels.append(val - val * sat * ramp)
    return torch.stack(channels, dim=1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (a fraction of the colour wheel, e.g. in [-0.1, 0.1]).

    The rotation is about the grey axis in YIQ space (one 3 x 3 matrix per image, as e.g.
    NVIDIA DALI does) rather than torchvision's RGB -> HSV -> RGB round trip, which was ten
    times slower here; both keep greys grey and turn hues by the same angle, YIQ keeping luma
    where HSV keeps the maximum channel.
    """
    rgb2yiq = torch.tensor(_RGB_TO_YIQ, device=x.device, dtype=x.dtype)
    angle = 2.0 * math.pi * shift.to(x.dtype)
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack(
        [
            torch.stack([one, zero, zero], 1),
            torch.stack([zero, cos, -sin], 1),
            torch.stack([zero, sin, cos], 1),
        ],
        1,
    )
    m = torch.linalg.inv(rgb2yiq) @ rot @ rgb2yiq  # n x 3 x 3
    n, c, h, w = x.shape
    return torch.bmm(m, x.reshape(n, c, h * w)).view(n, c, h, w).clamp_(0.0, 1.0)


def solarize(x: Tensor, threshold: float = 128 / 255) -> Tensor:
    """Invert every pixel at or above ``threshold`` (torchvision's uint8 threshold 128)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (in pixels) per image, reflect padding.

    The kernel radius is 3 sigma of the largest sigma in the batch (at least 1 pixel, at most
    what reflect padding allows); each image gets its own normalised kernel, applied as one
    grouped convolution per axis (faster here than summing shifted copies).
    """
    n, c, h, w = x.shape
    radius = int(torch.ceil(3.0 * sigma.max()).clamp(min=1).item())
    radius = max(1, min(radius, h - 1, w - 1))
    size = 2 * radius + 1
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(x.dtype).clamp_min(1e-6).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, size), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, size, 1), groups=n * c)
    return flat.view(n, c, h, w)
