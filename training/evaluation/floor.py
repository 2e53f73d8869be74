"""An honest floor for probe gains (method §11): what a random-init network and raw pixels score.

A gain from pre-training counts only above what needs no pre-training. Two references:

* **the random-init network with BatchNorm statistics recalibrated** (:func:`recalibrate_bn`):
  a fresh network evaluated with BN running statistics at their init values (mean 0, var 1)
  scores whatever those arbitrary statistics give — timm's ResNets, whose last BN in each
  block starts at zero, measured a k-NN floor of 0.17 where the same network built otherwise
  measured 0.74. Re-estimating the statistics on training images (train-mode forward passes,
  no gradient, cumulative average) is what a trained network's statistics would be for its
  weights, so the floor compares like with like.
* **raw pixels** (:func:`pixel_probes`): k-NN and linear probe on the flattened normalised
  fixed view of each image (resized to at most 32 px, to bound the dimension).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.data import ImageSet, eval_view, iterate_batches
from training.evaluation.probes import knn_accuracy, linear_probe, with_sampling_se

PIXEL_SIDE = 32


@torch.no_grad()
def recalibrate_bn(
    net: nn.Module,
    images: ImageSet,
    *,
    img_size: int,
    device: torch.device,
    limit: int = 1024,
    batch_size: int = 128,
) -> int:
    """Re-estimate every BatchNorm's running statistics on up to ``limit`` training images
    (their fixed view) with train-mode forwards through ``net.embed``; weights are untouched
    and every module is left in its previous mode. Returns the number of BN layers."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    modes = {m: m.training for m in net.modules()}
    momenta = {m: m.momentum for m in norms}
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    seen = 0
    batches = iterate_batches(images, batch_size, shuffle=False, seed=0, drop_last=False)
    for batch, _ in batches:
        if seen >= limit or len(batch) < 2:
            break
        net.embed(eval_view(batch.to(device), img_size), patch_logits=True)
        seen += len(batch)
    for m in norms:
        m.momentum = momenta[m]
    for m, mode in modes.items():
        m.train(mode)
    return len(norms)


@torch.no_grad()
def copy_bn_statistics(source: nn.Module, target: nn.Module) -> None:
    """Give ``target``'s BatchNorms ``source``'s running statistics (the same architecture)."""
    norms = [
        [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for net in (source, target)
    ]
    for src, dst in zip(*norms, strict=True):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(src, name) is not None:
                getattr(dst, name).copy_(getattr(src, name))


def pixel_features(images: ImageSet, img_size: int, limit: int | None = None) -> torch.Tensor:
    """Flattened normalised fixed views (at most PIXEL_SIDE px a side), N x D, float32."""
    side = min(img_size, PIXEL_SIDE)
    rows, seen = [], 0
    for batch, _ in iterate_batches(images, 512, shuffle=False, seed=0, drop_last=False):
        x = eval_view(batch, img_size)
        if side != img_size:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        rows.append(x.flatten(1))
        seen += len(batch)
        if limit is not None and seen >= limit:
            break
    return torch.cat(rows)[:limit]


def pixel_probes(
    bank: ImageSet,
    query: ImageSet,
    *,
    img_size: int,
    k: int,
    temperature: float,
    linear: bool,
    seed: int,
    bank_limit: int | None = None,
) -> dict[str, float]:
    """Raw-pixel k-NN (and linear probe) with the runs' own bank, split and probe settings."""
    x_bank = pixel_features(bank, img_size, bank_limit)
    y_bank = bank.labels[: len(x_bank)]
    x_query = pixel_features(query, img_size)
    classes = len(bank.classes)
    out = {
        "pixels_knn": knn_accuracy(
            x_bank, y_bank, x_query, query.labels, num_classes=classes, k=k, temperature=temperature
        )
    }
    if linear:
        out["pixels_linear"] = linear_probe(
            x_bank, y_bank, x_query, query.labels, num_classes=classes, seed=seed
        )
    return with_sampling_se(out, len(query.labels))
