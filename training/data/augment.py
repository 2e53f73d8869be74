"""Batched two-view augmentation and the fixed evaluation view.

Per-sample torchvision pipelines were the bottleneck of proxy training (427 img/s, see
measurements.md), so :class:`TwoCropAugment` treats a whole uint8 batch at once on whatever
device it lives on: every random factor is drawn as a tensor, the random-resized crop and the
horizontal flip are one ``grid_sample`` over an affine grid, and colour operations act on
the subset of images that drew them. The recipe is the BYOL/DINO global-crop one (method §9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from training.data import colour

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINO's blur sigma range, meant for 224-pixel crops; scaled by img_size / 224 here.
_BLUR_SIGMA_224 = (0.1, 2.0)
_CROP_TRIES = 10  # candidate crops per image, as torchvision's RandomResizedCrop
# Columns of the per-view table of uniform draws (see TwoCropAugment._view).
_AREA, _LOGR = slice(0, _CROP_TRIES), slice(_CROP_TRIES, 2 * _CROP_TRIES)
_CX, _CY, _FLIP, _JIT, _B, _C, _S, _H, _GRAY, _BLUR, _SIGMA, _SOL = range(
    2 * _CROP_TRIES, 2 * _CROP_TRIES + 12
)
_COLUMNS = 2 * _CROP_TRIES + 12


def _normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def eval_view(
    images_uint8: Tensor,
    img_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """The deterministic view used for probes: float32, resized to ``img_size`` (bilinear with
    antialiasing, only when the size differs) and normalised. Accepts N x 3 x H x W or 3 x H x W."""
    single = images_uint8.dim() == 3
    x = images_uint8.unsqueeze(0) if single else images_uint8
    x = x.float().div_(255.0)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(
            x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False
        )
    x = _normalise(x, mean, std)
    return x[0] if single else x


def axis_aligned_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """What ``F.affine_grid(theta, (N, C, height, width), align_corners=False)`` returns for
    matrices without rotation or shear ([[sx, 0, tx], [0, sy, ty]]), built by broadcasting:
    affine_grid's batched 3 x 2 matmul cost as much as the grid_sample itself on CPU."""
    n = len(theta)
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    gx = theta[:, 0, 0:1] * xs + theta[:, 0, 2:3]  # n x width
    gy = theta[:, 1, 1:2] * ys + theta[:, 1, 2:3]  # n x height
    return torch.stack(
        [
            gx.view(n, 1, width).expand(n, height, width),
            gy.view(n, height, 1).expand(n, height, width),
        ],
        dim=-1,
    )


class TwoCropAugment:
    """Two random global views of a uint8 batch, as float32 normalised N x 3 x S x S tensors.

    Per view: random-resized crop (area ``scale``, aspect ``ratio``) with a horizontal flip
    (``flip_p``), colour jitter with probability ``jitter_p`` (brightness, contrast, saturation,
    hue in that fixed order, factors drawn per image), grayscale (``gray_p``), Gaussian blur
    (``blur_p[view]``, sigma DINO's 0.1-2.0 scaled by ``img_size / 224``), solarize
    (``solarize_p[view]``), normalisation. The probabilities are arguments so a test (or an
    ablation) can switch components off. Inputs are expected at about ``img_size`` (what
    :func:`open_dataset` produces); crops are resampled bilinearly without antialiasing.
    """

    def __init__(
        self,
        img_size: int,
        *,
        scale: tuple[float, float] = (0.14, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        gray_p: float = 0.2,
        blur_p: tuple[float, float] = (1.0, 0.1),
        solarize_p: tuple[float, float] = (0.0, 0.2),
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.img_size = int(img_size)
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (ratio[0], ratio[1])
        self.mean, self.std = tuple(mean), tuple(std)
        self.flip_p, self.jitter_p, self.gray_p = flip_p, jitter_p, gray_p
        self.jitter = tuple(float(j) for j in jitter)
        self.blur_p, self.solarize_p = tuple(blur_p), tuple(solarize_p)
        k = self.img_size / 224
        self.blur_sigma = (_BLUR_SIGMA_224[0] * k, _BLUR_SIGMA_224[1] * k)

    def __call__(
        self, images_uint8: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Two views of ``images_uint8`` (N x 3 x H x W, uint8). The random factors come from
        ``generator`` (drawn on its device, then moved to the images' device), so a seeded
        generator reproduces the views exactly."""
        if images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got {tuple(images_uint8.shape)}")
        x = images_uint8.float().div_(255.0)
        return self._view(x, 0, generator), self._view(x, 1, generator)

    def _crop_theta(self, u: Tensor, h: int, w: int) -> Tensor:
        """Affine matrices (N x 2 x 3) of random-resized crops plus flips, in the normalised
        [-1, 1] coordinates of ``affine_grid``. Of ``_CROP_TRIES`` candidates per image the
        first that fits is kept; if none fits, the whole image (aspect clamped to ``ratio``)."""
        lo, hi = self.scale
        area = lo + (hi - lo) * u[:, _AREA]
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(log_lo + (log_hi - log_lo) * u[:, _LOGR])
        cw = torch.sqrt(area * r * h / w)  # crop width as a fraction of the image width
        ch = torch.sqrt(area / r * w / h)
        fits = (cw <= 1.0) & (ch <= 1.0)
        first = fits.int().argmax(dim=1, keepdim=True)
        cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
        fw, fh = 1.0, 1.0
        if w / h < self.ratio[0]:
            fh = (w / self.ratio[0]) / h
        elif w / h > self.ratio[1]:
            fw = (h * self.ratio[1]) / w
        none = ~fits.any(dim=1)
        cw = torch.where(none, torch.full_like(cw, fw), cw)
        ch = torch.where(none, torch.full_like(ch, fh), ch)
        cx = (2.0 * u[:, _CX] - 1.0) * (1.0 - cw)
        cy = (2.0 * u[:, _CY] - 1.0) * (1.0 - ch)
        sign = torch.where(u[:, _FLIP] < self.flip_p, -1.0, 1.0)
        zero = torch.zeros_like(cw)
        return torch.stack(
            [torch.stack([cw * sign, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1
        )

    def _view(self, x: Tensor, view: int, generator: torch.Generator | None) -> Tensor:
        n, _, h, w = x.shape
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, _COLUMNS, generator=generator, device=gen_device)
        u = u.to(device=x.device, dtype=torch.float32)
        grid = axis_aligned_grid(self._crop_theta(u, h, w), self.img_size, self.img_size)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

        def spread(col: int, strength: float) -> Tensor:
            # Uniform factor in [1 - strength, 1 + strength] (never below 0).
            return (1.0 + strength * (2.0 * u[:, col] - 1.0)).clamp_min(0.0)

        def chosen(col: int, p: float) -> Tensor | None:
            # Indices of the images whose draw in column ``col`` fell below ``p``.
            idx = (u[:, col] < p).nonzero().squeeze(1)
            return idx if idx.numel() else None

        b, c, s, hue = self.jitter
        if (idx := chosen(_JIT, self.jitter_p)) is not None:
            y = out.index_select(0, idx)
            y = colour.adjust_brightness(y, spread(_B, b).index_select(0, idx))
            y = colour.adjust_contrast(y, spread(_C, c).index_select(0, idx))
            y = colour.adjust_saturation(y, spread(_S, s).index_select(0, idx))
            if hue > 0:
                y = colour.adjust_hue(y, (hue * (2.0 * u[:, _H] - 1.0)).index_select(0, idx))
            out.index_copy_(0, idx, y)
        if (idx := chosen(_GRAY, self.gray_p)) is not None:
            gray = colour.grayscale(out.index_select(0, idx)).expand(-1, 3, -1, -1)
            out.index_copy_(0, idx, gray.contiguous())
        if (idx := chosen(_BLUR, self.blur_p[view])) is not None:
            lo, hi = self.blur_sigma
            sigma = (lo + (hi - lo) * u[:, _SIGMA]).index_select(0, idx)
            out.index_copy_(0, idx, colour.gaussian_blur(out.index_select(0, idx), sigma))
        if (idx := chosen(_SOL, self.solarize_p[view])) is not None:
            out.index_copy_(0, idx, colour.solarize(out.index_select(0, idx)))
        return _normalise(out, self.mean, self.std)
