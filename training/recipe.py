"""The trial recipe (``TrialConfig``) and its outcome (``TrialResult``).

A proxy trial keeps the HSSL loss, masking, EMA teacher and head design of the paper and shrinks
sizes and schedules (method §9–10). Defaults are the proxy scale measured on 2 CPU cores; the
paper's full recipe is ``TrialConfig.paper(...)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from training.errors import SpecError
from training.fields import known_fields
from training.results import RunResult
from training.specs import BaseSpec, HeadSpec

# Proxy-only departures from the authors' recipe that keep short runs from collapsing (method
# §11; measured in docs/study/recipes: projector BN alone kept the targets from going uniform
# but left one seed of three near its floor; with KoLeo every seed gained >= 5.75 pp k-NN).
# The default of searches and of `hssl train --recipe proxy`, never of full pre-training
# (``TrialConfig.paper``) or of ``TrialConfig()`` itself.
PROXY_RECIPE: dict[str, Any] = {
    "proj_bn": True,
    "koleo_weight": 0.1,
    "out_dim": 256,
    "lr": 5e-3,
    "momentum_teacher": 0.99,
}
VARIANTS = ("ibot", "dino")
HEAD_INPUTS = ("prenorm", "postnorm")
PRECISIONS = ("auto", "fp32", "bf16")
GLOBAL_TARGETS = ("centre", "sinkhorn")


SIZE_LIMITS = {  # (low, high) of the fields that size the networks, banks and loaders
    "out_dim": (2, 262_144),
    "proj_hidden": (1, 16_384),
    "proj_bottleneck": (1, 8_192),
    "epochs": (1, 100_000),
    "batch_size": (2, 65_536),
    "knn_k": (1, 10_000),
    "num_workers": (0, 256),
    "eval_bank_limit": (1, 10_000_000),
    "finetune_epochs": (1, 10_000),
    "heldout_images": (1, 10_000_000),
    "interim_eval_images": (1, 10_000_000),
}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one HSSL run needs. ``heads=()`` is the plain-iBOT baseline (method §3).

    ``variant="dino"`` turns masking and the patch loss off (the DINO-style variant).
    Several heads train at once with the 1/K weighting of method §5 (the joint search).
    """

    base: BaseSpec = field(default_factory=lambda: BaseSpec(patch_size=4, depth=4, width=128))
    heads: tuple[HeadSpec, ...] = (HeadSpec(family="convnext", depth=3, kernel=5),)
    variant: str = "ibot"
    data: str = "animal-mnist"
    data_limit: int | None = None
    heldout: float = 0.2
    # the evaluation set apart from the training size: this many images the run never trains
    # on, from the whole source (None: the ``heldout`` part of ``data_limit``); issue 21
    heldout_images: int | None = None
    epochs: int = 1
    batch_size: int = 64
    # optimisation (lr is per 256 images and scaled linearly by the batch size)
    lr: float = 2e-3
    min_lr: float = 2e-6
    warmup_epochs: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 0.3
    freeze_prototypes_epochs: int = 0
    # teacher
    momentum_teacher: float = 0.99
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # projection heads and prototypes
    out_dim: int = 1024
    proj_hidden: int = 512
    proj_bottleneck: int = 128
    # proxy-only departures that keep short runs from collapsing (method §11); the faithful
    # values (off) are the defaults here and in ``paper()``; the search's proxy recipe sets them
    proj_bn: bool = False  # BatchNorm after the projector's hidden layers (DINO's use_bn)
    global_targets: str = "centre"  # or "sinkhorn": Sinkhorn-Knopp targets for the global terms
    koleo_weight: float = 0.0  # KoLeo on the student base globals, mean over views (DINOv2 sums)
    # masking (iBOT block masking, drawn per crop)
    mask_prob: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    # loss weights: L = lambda_cls * (0.5 L_cls1 + 0.5 L_cls2) + lambda_mim * L_mim
    lambda_cls: float = 1.0
    lambda_mim: float = 1.0
    # discrepancy-enlarging knobs (method §6)
    head_input: str = "prenorm"
    head_sees_mask: bool = True
    # evaluation
    knn_k: int = 20
    knn_temperature: float = 0.07
    eval_every: int = 1
    eval_epochs: tuple[int, ...] = ()  # evaluate after exactly these epochs (and the last) instead
    eval_at_init: bool = True
    eval_bank_limit: int | None = 8000
    # the evaluations between initialisation and the end read a fixed stratified subset of this
    # many held-out images (None: all of them); the first and the last always read all
    interim_eval_images: int | None = None
    linear_probe: bool = True
    recalibrate_bn: bool = True  # BN statistics re-estimated on training images before the floor
    pixel_reference: bool = True  # raw-pixel k-NN / linear beside the floor, at initialisation
    # fine-tune probe (issue 15): top-1 after a short proxy fine-tune of the teacher base, at
    # initialisation (the floor: supervised training from scratch) and at the end
    finetune_probe: bool = False
    finetune_epochs: int = 3
    stop_on_collapse: int = 0  # stop after this many evaluations in a row found it collapsed
    # execution
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    checkpoint_every: int = 1
    # torch.compile the student and the teacher (their forward passes): the first step pays the
    # compilation (logged as the phase ``compile``); worth it only for runs of many steps
    compile: bool = False

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_types()
        if self.variant not in VARIANTS:
            raise SpecError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.head_input not in HEAD_INPUTS:
            raise SpecError(f"head_input must be one of {HEAD_INPUTS}, got {self.head_input!r}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise SpecError("epochs must be >= 1 and batch_size >= 2")
        low, high = self.mask_ratio
        if not 0 <= low <= high < 1:
            raise SpecError(f"mask_ratio must satisfy 0 <= low <= high < 1, got {self.mask_ratio}")
        if not 0 <= self.mask_prob <= 1:
            raise SpecError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
        if self.global_targets not in GLOBAL_TARGETS:
            raise SpecError(
                f"global_targets must be one of {GLOBAL_TARGETS}, got {self.global_targets!r}"
            )
        if self.koleo_weight < 0 or self.stop_on_collapse < 0:
            raise SpecError("koleo_weight and stop_on_collapse must be >= 0")
        if self.eval_every < 0:
            raise SpecError("eval_every must be >= 0 (0 = only at the end)")
        bad = [e for e in self.eval_epochs if isinstance(e, bool) or not isinstance(e, int)]
        if bad or any(not 1 <= e <= self.epochs for e in self.eval_epochs):
            got = list(self.eval_epochs)
            raise SpecError(f"eval_epochs must be whole epochs in 1..{self.epochs}, got {got}")

    def due(self, epochs_done: int) -> bool:
        """Whether the run evaluates after ``epochs_done`` epochs (always after the last)."""
        if epochs_done == self.epochs:
            return True
        if self.eval_epochs:
            return epochs_done in self.eval_epochs
        return bool(self.eval_every) and epochs_done % self.eval_every == 0

    def _check_sizes(self) -> None:
        """Sizes a run allocates by must be within sense: a small request must not build a
        model no machine holds (checked before anything is built)."""
        for name, (low, high) in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
                raise SpecError(f"{name} must be in [{low}, {high:,}], got {value:,}")

    def _check_types(self) -> None:
        """Scalar fields must have their declared type (a number for a float field)."""
        kinds = {
            "int": (int,),
            "float": (int, float),
            "bool": (bool,),
            "str": (str,),
            "int | None": (int, type(None)),
            "float | None": (int, float, type(None)),
        }
        for f in fields(self):
            allowed = kinds.get(str(f.type))
            value = getattr(self, f.name)
            if allowed is None:
                continue
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
                raise SpecError(f"trial config field {f.name} must be {f.type}, got {value!r}")

    @property
    def masking(self) -> bool:
        return self.variant == "ibot"

    @property
    def baseline(self) -> bool:
        return not self.heads

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["heads"] = [h.to_dict() for h in self.heads]
        data["mask_ratio"] = list(self.mask_ratio)
        data["eval_epochs"] = list(self.eval_epochs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        values = known_fields(cls, data, "trial config")
        if "base" in values and isinstance(values["base"], dict):
            values["base"] = BaseSpec.from_dict(values["base"])
        if "heads" in values:
            values["heads"] = tuple(
                h if isinstance(h, HeadSpec) else HeadSpec.from_dict(h) for h in values["heads"]
            )
        if "mask_ratio" in values:
            values["mask_ratio"] = tuple(values["mask_ratio"])
        if "eval_epochs" in values:
            values["eval_epochs"] = tuple(values["eval_epochs"])
        return cls(**values)

    def with_(self, **changes: Any) -> TrialConfig:
        return replace(self, **changes)

    @classmethod
    def proxy(cls, **kw: Any) -> TrialConfig:
        """The proxy recipe (:data:`PROXY_RECIPE`) with ``kw`` on top: short runs that learn."""
        return cls.from_dict({**PROXY_RECIPE, **kw})

    @classmethod
    def paper(cls, base: BaseSpec, heads: tuple[HeadSpec, ...], epochs: int = 100, **kw: Any):
        """The published ViT-B recipe (method §9): use for full pre-training, not proxies."""
        recipe: dict[str, Any] = dict(
            lr=7.5e-4,
            min_lr=2e-6,
            warmup_epochs=10,
            batch_size=256,
            momentum_teacher=0.996,
            warmup_teacher_temp=0.04,
            teacher_temp=0.07,
            warmup_teacher_temp_epochs=epochs // 2,
            freeze_prototypes_epochs=1,
            out_dim=8192,
            proj_hidden=2048,
            proj_bottleneck=256,
            eval_every=0,
            eval_at_init=False,
            linear_probe=False,
        )
        recipe.update(kw)
        return cls(base=base, heads=heads, epochs=epochs, **recipe)


@dataclass(frozen=True)
class TrialResult(RunResult):
    """What a trial produced (:class:`RunResult`) and its measurements at initialisation."""

    init_metrics: dict[str, Any] = field(default_factory=dict)
