"""timm's fine-tuning parts, set from a :class:`FinetuneConfig`: the layer-decayed AdamW, the
cosine schedule with warm-up, Mixup/CutMix, the loss and the RandAugment transform.

Nothing is re-implemented here: each function only maps config fields onto timm's factory
arguments the way MAE's ``main_finetune.py`` does, plus two pure functions of batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import Optimizer

from training.data import IMAGENET_MEAN, IMAGENET_STD
from training.errors import SpecError
from training.finetune.config import FinetuneConfig


def accumulation_steps(effective_batch: int | None, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimiser step so that batch x world x steps = ``effective_batch``."""
    per_step = batch_size * world_size
    if effective_batch is None:
        return 1
    if effective_batch % per_step:
        raise SpecError(
            f"effective_batch {effective_batch} is not a multiple of batch_size {batch_size} x "
            f"{world_size} process(es) = {per_step}; change --batch-size or --effective-batch"
        )
    return effective_batch // per_step


def scaled_lr(lr_per_256: float, effective_batch: int) -> float:
    """The linear scaling rule MAE uses: lr = blr x effective batch / 256."""
    return lr_per_256 * effective_batch / 256.0


def make_optimizer(
    model: nn.Module, config: FinetuneConfig, lr: float, **options: bool
) -> Optimizer:
    """AdamW through timm's factory: biases, norms and ``no_weight_decay()`` tensors undecayed;
    with ``layer_decay`` the groups of ``param_groups_layer_decay`` (each with its
    ``lr_scale``, which timm's schedulers apply). ``options``: the runtime's (fused on CUDA)."""
    return create_optimizer_v2(
        model,
        opt="adamw",
        lr=lr,
        weight_decay=config.weight_decay,
        layer_decay=config.layer_decay,
        **options,
    )


def make_scheduler(
    optimizer: Optimizer, config: FinetuneConfig, updates_per_epoch: int
) -> CosineLRScheduler:
    """Linear warm-up from 0, then a half cosine to ``min_lr``, stepped per optimiser update
    (``step_update``) as MAE's per-iteration ``adjust_learning_rate``."""
    warmup = config.warmup_epochs * updates_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=config.epochs * updates_per_epoch - warmup,
        lr_min=config.min_lr,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def make_mixup(config: FinetuneConfig, num_classes: int) -> Mixup | None:
    """timm's batch-wise Mixup/CutMix with label smoothing folded into the soft targets."""
    if not config.mixing:
        return None
    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob,
        mode="batch",
        label_smoothing=config.smoothing,
        num_classes=num_classes,
    )


def make_criterion(config: FinetuneConfig) -> nn.Module:
    """Soft-target cross-entropy under Mixup; label smoothing alone; or plain cross-entropy."""
    if config.mixing:
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()


def make_train_transform(config: FinetuneConfig, img_size: int) -> Callable:
    """timm's training transform for one PIL image: random-resized crop (bicubic), flip,
    RandAugment, to tensor, normalise, random erasing (pixel mode); no colour jitter (MAE)."""
    return create_transform(
        img_size,
        is_training=True,
        scale=config.crop_scale,
        color_jitter=None,
        auto_augment=config.auto_augment,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        re_prob=config.re_prob,
        re_mode="pixel",
        re_count=1,
    )
