"""The fine-tuning config (``FinetuneConfig``), its two recipes and its result (``FinetuneResult``).

``mae`` is MAE's ViT-B/16 fine-tuning recipe as the HSSL paper used it (MAE, He et al. 2022,
appendix A.1, Table 9, and its released ``main_finetune.py``): 100 epochs, effective batch 1024,
AdamW, lr 5e-4 per 256 images, weight decay 0.05, layer decay 0.65, 5 warm-up epochs, min lr
1e-6, drop path 0.1, Mixup 0.8, CutMix 1.0, label smoothing 0.1, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing 0.25 (pixel mode), average-pooled features with a final
norm, a classifier initialised with std 2e-5, evaluation on a 224/256 centre crop. ``proxy`` keeps
every kind of regularisation, scaled down for short runs on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from training.errors import SpecError
from training.fields import known_fields
from training.results import RunResult

RECIPES: dict[str, dict[str, Any]] = {
    "mae": dict(
        epochs=100,
        batch_size=128,  # per process; accumulated to effective_batch on fewer than 8 GPUs
        effective_batch=1024,
        lr=5e-4,
        min_lr=1e-6,
        warmup_epochs=5,
        weight_decay=0.05,
        layer_decay=0.65,
        drop_path=0.1,
        mixup=0.8,
        cutmix=1.0,
        smoothing=0.1,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25,
        crop_scale=(0.08, 1.0),
        crop_pct=224 / 256,
    ),
    "proxy": dict(
        epochs=5,
        batch_size=64,
        effective_batch=None,
        lr=5e-3,  # 1e-3 reached 27 % top-1 from scratch on animal-mnist in 5 epochs, 5e-3 37 %
        min_lr=1e-6,
        warmup_epochs=1,
        weight_decay=0.05,
        layer_decay=0.75,
        drop_path=0.05,
        mixup=0.2,
        cutmix=0.2,
        smoothing=0.1,
        auto_augment="rand-m5-mstd0.5-inc1",
        re_prob=0.1,
        crop_scale=(0.35, 1.0),
        crop_pct=1.0,
    ),
}
# Image size when neither the flags nor the pre-trained base say (ViT-B at 224; proxy 32 px).
RECIPE_IMG_SIZE = {"mae": 224, "proxy": 32}
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one fine-tuning run needs; start from :meth:`from_recipe`.

    ``init`` is an ``hssl export`` safetensors file, a run folder of ``hssl train`` (or its
    ``checkpoint.pt``), any timm checkpoint, or None for supervised training from scratch.
    ``model`` is the timm name (None: the one the init was pre-trained as). ``img_size`` None
    takes the init's, else the recipe's. ``patch_size``/``depth``/``width`` shrink the model
    when the init does not fix it (from scratch, a timm checkpoint). Accuracy is measured on a
    stratified ``heldout`` split of ``data``, or on all of ``val_data`` (e.g. ImageNet's val
    folder) when given. ``batch_size`` is per process and step; ``effective_batch`` (None = no
    accumulation) is reached by gradient accumulation and scales ``lr`` (per 256 images).
    ``layer_decay`` None turns layer-wise decay off, ``ema_decay`` None the model EMA,
    ``clip_grad`` None the clipping.
    """

    recipe: str = "proxy"
    model: str | None = None
    init: str | None = None
    data: str = "animal-mnist"
    val_data: str | None = None
    data_limit: int | None = None
    heldout: float = 0.2
    img_size: int | None = None
    patch_size: int | None = None
    depth: int | None = None
    width: int | None = None
    epochs: int = 5
    batch_size: int = 64
    effective_batch: int | None = None
    lr: float = 5e-3
    min_lr: float = 1e-6
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    layer_decay: float | None = 0.75
    drop_path: float = 0.05
    mixup: float = 0.2
    cutmix: float = 0.2
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    auto_augment: str | None = "rand-m5-mstd0.5-inc1"
    re_prob: float = 0.1
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_pct: float = 1.0
    global_pool: str = "avg"
    head_init_std: float = 2e-5
    clip_grad: float | None = None
    ema_decay: float | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise SpecError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        _check_positive(self, ("epochs", "batch_size", "effective_batch", "img_size"))
        _check_positive(self, ("patch_size", "depth", "width", "lr"))
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise SpecError(
                f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of "
                f"{self.epochs} epochs; lower --warmup-epochs"
            )
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise SpecError(f"layer_decay must be in (0, 1] or None, got {self.layer_decay}")
        for name in ("drop_path", "smoothing", "re_prob", "mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise SpecError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mixup < 0 or self.cutmix < 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise SpecError("mixup, cutmix, min_lr and weight_decay must be >= 0")
        if self.mixing and self.batch_size % 2:
            raise SpecError(
                f"batch_size must be even with mixup/cutmix (timm's Mixup pairs each image with "
                f"its mirror in the batch), got {self.batch_size}"
            )
        low, high = self.crop_scale
        if not 0 < low <= high <= 1 or not 0 < self.crop_pct <= 1:
            raise SpecError("crop_scale must satisfy 0 < low <= high <= 1 and crop_pct (0, 1]")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise SpecError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.global_pool not in ("avg", "token"):
            raise SpecError(f"global_pool must be avg or token, got {self.global_pool!r}")

    @property
    def mixing(self) -> bool:
        """Whether Mixup/CutMix (and so soft targets) are on."""
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    @property
    def default_img_size(self) -> int:
        return RECIPE_IMG_SIZE[self.recipe]

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> FinetuneConfig:
        """The recipe ``name`` (``mae`` or ``proxy``) with ``overrides`` (None values skipped)."""
        if name not in RECIPES:
            raise SpecError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_dict({**RECIPES[name], "recipe": name, **changes})

    def with_(self, **changes: Any) -> FinetuneConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_scale"] = list(self.crop_scale)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        values = known_fields(cls, data, "fine-tune config")
        if "crop_scale" in values:
            values["crop_scale"] = tuple(float(v) for v in values["crop_scale"])
        return cls(**values)


def _check_positive(config: FinetuneConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise SpecError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class FinetuneResult(RunResult):
    """What a fine-tune produced (:class:`RunResult`; accuracies are fractions in [0, 1]), with
    its best top-1, the weights it started from, the model and its optimiser figures."""

    best_top1: float | None = None
    init: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    accum_steps: int = 1
    peak_lr: float = 0.0
