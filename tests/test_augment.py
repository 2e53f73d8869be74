"""The batched two-view augmentation, its colour operations and the evaluation view."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from training.data import TwoCropAugment, colour, eval_view, open_dataset

# Switches every random component off: what is left is a resize and the normalisation.
OFF = dict(
    scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0)
)
HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    train, _ = open_dataset("synthetic", 32, heldout=0, limit=64)
    return train.images


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_two_views_shape_dtype_and_statistics(images):
    mean = tuple((images.float() / 255).mean(dim=(0, 2, 3)).tolist())
    std = tuple((images.float() / 255).std(dim=(0, 2, 3)).tolist())
    a, b = TwoCropAugment(24, mean=mean, std=std)(images, _gen(0))
    for view in (a, b):
        assert view.shape == (64, 3, 24, 24) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
        assert abs(view.mean().item()) < 0.6 and 0.4 < view.std().item() < 2.0
    assert (a - b).abs().mean() > 0.1  # two different views
    # The eval view with the data's own statistics is normalised exactly.
    x = eval_view(images, 32, mean=mean, std=std)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_same_seed_same_views_other_seed_other_views(images):
    aug = TwoCropAugment(32)
    a1, b1 = aug(images, _gen(7))
    a2, b2 = aug(images, _gen(7))
    a3, _ = aug(images, _gen(8))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3)


def test_everything_off_reproduces_the_eval_view(images):
    a, b = TwoCropAugment(32, **OFF)(images, _gen(0))
    expected = eval_view(images, 32)
    torch.testing.assert_close(a, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(b, expected, atol=1e-4, rtol=0)
    # Larger inputs: the full-image crop is a plain bilinear resize.
    big = F.interpolate(images.float(), size=(48, 48), mode="nearest").to(torch.uint8)
    a, _ = TwoCropAugment(32, **OFF, **HALF)(big, _gen(0))
    resized = F.interpolate(big.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(a, (resized - 0.5) / 0.5, atol=1e-4, rtol=0)


def test_flip_component(images):
    a, _ = TwoCropAugment(32, **{**OFF, "flip_p": 1.0})(images, _gen(0))
    torch.testing.assert_close(a, eval_view(images, 32).flip(-1), atol=1e-4, rtol=0)


def test_crop_windows_stay_inside_the_image():
    aug = TwoCropAugment(32)
    u = torch.rand(2000, 64, generator=_gen(1))
    theta = aug._crop_theta(u, 32, 32)
    cw, ch = theta[:, 0, 0].abs(), theta[:, 1, 1]
    assert (theta[:, 0, 0] < 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert (theta[:, 0, 2].abs() + cw <= 1 + 1e-6).all()
    assert (theta[:, 1, 2].abs() + ch <= 1 + 1e-6).all()
    area = cw * ch
    assert area.min() >= 0.14 - 1e-6 and area.max() <= 1 + 1e-6
    ratio = cw / ch
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    fixed = TwoCropAugment(32, scale=(0.25, 0.25), ratio=(1, 1))._crop_theta(u, 32, 32)
    torch.testing.assert_close(fixed[:, 1, 1], torch.full((2000,), 0.5))


def test_grayscale_and_solarize_components(images):
    a, b = TwoCropAugment(32, **{**OFF, "gray_p": 1.0}, **HALF)(images, _gen(0))
    assert torch.allclose(a[:, 0], a[:, 1]) and torch.allclose(a[:, 1], a[:, 2])
    _, b = TwoCropAugment(32, **{**OFF, "solarize_p": (0.0, 1.0)}, **HALF)(images, _gen(0))
    x = images.float() / 255
    expected = torch.where(x >= 128 / 255, 1 - x, x)
    torch.testing.assert_close(b, (expected - 0.5) / 0.5, atol=1e-4, rtol=0)


def test_blur_component_blurs_only_view_one(images):
    aug = TwoCropAugment(224, **{**OFF, "blur_p": (1.0, 0.0)})
    big = F.interpolate(images[:8].float(), size=(224, 224), mode="nearest").to(torch.uint8)
    a, b = aug(big, _gen(0))
    sharp = eval_view(big, 224)
    torch.testing.assert_close(b, sharp, atol=1e-4, rtol=0)
    assert (a - sharp).abs().mean() > 1e-3
    # Blurring keeps the mean and lowers the pixel-to-pixel differences.
    assert (a.mean() - sharp.mean()).abs() < 1e-2
    assert a.diff(dim=-1).abs().mean() < sharp.diff(dim=-1).abs().mean()


def test_colour_ops_match_torchvision():
    x = torch.rand(6, 3, 9, 11, generator=_gen(2))
    f = torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4])
    for ours, theirs in [
        (colour.adjust_brightness, TF.adjust_brightness),
        (colour.adjust_contrast, TF.adjust_contrast),
        (colour.adjust_saturation, TF.adjust_saturation),
    ]:
        got = ours(x.clone(), f)
        want = torch.stack([theirs(x[i], float(f[i])) for i in range(6)])
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)  # luma 0.299 vs 0.2989
    torch.testing.assert_close(colour.grayscale(x), TF.rgb_to_grayscale(x), atol=2e-4, rtol=0)


def test_hue_rotation_keeps_greys_and_turns_colours():
    x = torch.rand(4, 3, 5, 5, generator=_gen(3)) * 0.5 + 0.25
    torch.testing.assert_close(colour.adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    grey = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(
        colour.adjust_hue(grey, torch.full((4,), 0.1)), grey, atol=1e-5, rtol=0
    )
    # A full turn is the identity, half a turn is not, and luma is kept (inside the gamut).
    torch.testing.assert_close(colour.adjust_hue(x, torch.ones(4)), x, atol=1e-5, rtol=0)
    turned = colour.adjust_hue(x, torch.full((4,), 0.05))
    assert (turned - x).abs().max() > 0.01
    torch.testing.assert_close(colour.grayscale(turned), colour.grayscale(x), atol=1e-4, rtol=0)


def test_hsv_to_rgb_primaries():
    hue = torch.tensor([0.0, 1 / 3, 2 / 3])
    rgb = colour.hsv_to_rgb(hue, torch.ones(3), torch.ones(3))
    torch.testing.assert_close(rgb, torch.eye(3), atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(images):
    aug = TwoCropAugment(32)
    a_cpu, b_cpu = aug(images, _gen(0))
    a_gpu, b_gpu = aug(images.cuda(), _gen(0))
    assert a_gpu.is_cuda
    torch.testing.assert_close(a_gpu.cpu(), a_cpu, atol=1e-3, rtol=0)
    torch.testing.assert_close(b_gpu.cpu(), b_cpu, atol=1e-3, rtol=0)
