"""Fine-tuning batches from our image sets: timm's per-image PIL transform for training, the
probes' fixed view (after MAE's centre crop) for evaluation.

The sets of :func:`training.data.open_dataset` yield uint8 3 x S x S tensors; timm's RandAugment
works on PIL images, so each training image is turned into one and through the transform, in
DataLoader workers when ``num_workers`` > 0. The visiting order and the per-rank shard are the
data layer's own (:func:`training.data.loader.batch_chunks`), a function of (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from training.data import ImageSet, eval_view, iterate_batches
from training.data.loader import batch_chunks, loader_over


def decode_size(img_size: int, crop_pct: float) -> int:
    """The size images are opened at so that a ``crop_pct`` centre crop is ``img_size``
    (MAE evaluates ViT-B on a 224 crop of a 256 resize: 224 / 0.875 = 256)."""
    return img_size if crop_pct >= 1 else round(img_size / crop_pct)


def centre_crop(images: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` window of N x C x H x W images."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


class TransformedSet(Dataset):
    """``ds[i]`` as (transform(PIL image), label)."""

    def __init__(self, ds: ImageSet, transform: Callable) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.ds[i]
        pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
        return self.transform(pil), label


def train_batches(
    ds: ImageSet,
    transform: Callable,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    steps: int,
) -> DataLoader:
    """The first ``steps`` full batches of this rank's shuffled shard, transformed."""
    chunks = batch_chunks(
        len(ds),
        batch_size,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        drop_last=True,
        rank=rank,
        world_size=world_size,
    )
    return loader_over(TransformedSet(ds, transform), chunks[:steps], num_workers)


def eval_batches(
    ds: ImageSet,
    img_size: int,
    batch_size: int,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's share of ``ds`` in order, centre-cropped to ``img_size`` and normalised."""
    for images, labels in iterate_batches(
        ds,
        batch_size,
        shuffle=False,
        seed=0,
        drop_last=False,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
    ):
        view = eval_view(centre_crop(images.to(device), img_size), img_size)
        yield view, labels.to(device)
