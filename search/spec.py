"""The search specification: one pydantic model, also the body the REST API accepts.

It names the base (a timm model at proxy scale), the data, the candidate heads (a grid over the
head-spec knobs of method §6–7, or an explicit list), the strategy, the budget, the objectives and
the seed. Validation errors name the field and what is allowed.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.objectives import (
    DEFAULT_OBJECTIVES,
    LABEL_FREE,
    PROBE_OBJECTIVES,
    Objective,
    PrimaryProbe,
)
from search.strategy import STRATEGIES
from training.errors import SpecError
from training.head_families import applies
from training.recipe import PROXY_RECIPE, TrialConfig
from training.specs import HEAD_FAMILIES, POOLINGS, BaseSpec, HeadSpec
from training.timm_names import check_name

Family = Literal[HEAD_FAMILIES]  # type: ignore[valid-type]  (derived from the one registry)
DEFAULT_STRATEGY = "joint"
STRATEGY_NAMES = tuple(STRATEGIES)  # registered when the search package was imported


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelSpec(Strict):
    """The base at proxy scale (ViT overrides apply to ViT-style models only)."""

    name: str = Field("vit_tiny_patch16_224", description="timm model name", examples=["resnet18"])
    img_size: int = Field(32, ge=8, le=1024, description="proxy image size")
    patch_size: int | None = Field(4, ge=1, le=64)
    depth: int | None = Field(4, ge=1, le=64)
    width: int | None = Field(128, ge=8, le=4096)
    num_heads: int | None = Field(None, ge=1, le=64)
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="other timm constructor args")
    full_img_size: int = Field(224, ge=8, le=1024, description="image size for full pre-training")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            check_name(name)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return name

    def proxy(self) -> BaseSpec:
        return BaseSpec(**self.model_dump(exclude={"full_img_size"}))

    def full(self) -> BaseSpec:
        """The same model at full size: no proxy overrides, the full image size."""
        return BaseSpec(name=self.name, img_size=self.full_img_size, extra=dict(self.extra))


MAX_CANDIDATES = 4096  # a grid beyond this is refused before it is expanded


class CandidateSpace(Strict):
    """Candidate heads: the product of the lists below, or ``heads`` (explicit specs)."""

    families: list[Family] = Field(default_factory=lambda: list(HEAD_FAMILIES), min_length=1)
    depths: list[int] = Field(default_factory=lambda: [2], min_length=1)
    kernels: list[int] = Field(default_factory=lambda: [5], min_length=1)
    first_residual: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    pooling: list[Literal["avg", "max"]] = Field(default_factory=lambda: ["avg"], min_length=1)
    width_ratios: list[float | None] = Field(default_factory=lambda: [None], min_length=1)
    heads: list[str | dict[str, Any]] | None = Field(
        None, description="explicit head specs, e.g. 'convnext:depth=3,kernel=7'"
    )

    @model_validator(mode="after")
    def _valid_heads(self) -> CandidateSpace:
        size = self.grid_size()
        if size > MAX_CANDIDATES:  # checked before anything is expanded: a cheap refusal
            what = (
                "heads listed"
                if self.heads is not None
                else "grid " + " x ".join(str(len(v)) for v in self._grid_lists())
            )
            raise ValueError(
                f"the candidate space holds {size:,} candidates ({what}); at most "
                f"{MAX_CANDIDATES:,} are searched: shrink the lists or use the optuna strategy"
            )
        try:
            self.candidates()
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return self

    def _grid_lists(self) -> list[list]:
        return [
            self.families,
            self.depths,
            self.kernels,
            self.first_residual,
            self.pooling,
            self.width_ratios,
        ]

    def grid_size(self) -> int:
        """How many candidates the space names before duplicates merge (no expansion)."""
        if self.heads is not None:
            return len(self.heads)
        return math.prod(len(v) for v in self._grid_lists())

    def candidates(self) -> list[HeadSpec]:
        """Distinct head specs, in a stable order (knobs a family ignores are collapsed)."""
        if self.heads is not None:
            specs = [
                HeadSpec.parse(h) if isinstance(h, str) else HeadSpec.from_dict(h)
                for h in self.heads
            ]
        else:
            grid = itertools.product(
                self.families,
                self.depths,
                self.kernels,
                self.first_residual,
                self.pooling,
                self.width_ratios,
            )
            specs = [_collapse(HeadSpec(f, d, k, r, fr, p)) for f, d, k, fr, p, r in grid]
        unique = list(dict.fromkeys(specs))
        if not unique:
            raise SpecError("the candidate space is empty; list at least one head")
        return unique


def _collapse(spec: HeadSpec) -> HeadSpec:
    """Set knobs a family does not use to their defaults so duplicates merge."""
    return spec if applies(spec.family, "kernel") else HeadSpec(**{**spec.to_dict(), "kernel": 7})


class Budget(Strict):
    epochs: int = Field(1, ge=1, le=1000, description="training epochs per proxy run")
    trials: int = Field(
        8, ge=1, le=10_000, description="trials of the optuna and calibrate strategies"
    )
    seeds: int = Field(1, ge=1, le=20, description="paired seeds per candidate")
    batch_size: int = Field(64, ge=2, le=4096)
    data_limit: int | None = Field(None, ge=20, description="use at most this many images")
    heldout_images: int | None = Field(
        None,
        ge=20,
        le=10_000_000,
        description="evaluate on this many images the runs never train on, drawn from the "
        "whole data set (the training set stays data_limit's); default: data_limit's "
        "held-out fifth. A probe read on n images has a sampling SE of sqrt(p(1-p)/n)",
    )
    wall_clock_s: float | None = Field(None, gt=0, description="stop starting trials after this")
    prescreen_keep: int | None = Field(
        None, ge=1, description="zero-cost pre-screen: train only the top N by initial D"
    )
    prescreen_images: int = Field(512, ge=20, le=100_000)
    stop_when_stable: int | None = Field(
        None,
        ge=1,
        description="joint search: stop a run once its discrepancy ranking has not changed "
        "for this many evaluations (epochs with eval_every=1)",
    )
    trial_memory_mb: int | None = Field(
        None,
        ge=64,
        le=16_777_216,
        description="cap on what one trial may allocate, in MiB: host memory on a CPU (beyond "
        "what its process holds before training), GPU memory on CUDA; a trial over it fails "
        "'out of memory' and the search goes on",
    )
    parallel: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="at most this many runs of the search at once, spread over the workers of "
        "its queue (joint: one run per seed; independent: one per candidate and seed; optuna: "
        "trials asked in parallel); default: as many as there are free worker slots",
    )


def _strategy_rules(default: str) -> list[dict[str, Any]]:
    """Each registered strategy's cross-field rule as JSON Schema, so a schema-driven client
    never sends what the server must refuse (strategy absent = the default)."""
    rules = []
    for strategy in STRATEGIES.values():
        rule = strategy.schema_rule()
        if rule is None:
            continue
        condition: dict[str, Any] = {"properties": {"strategy": {"const": strategy.name}}}
        if strategy.name != default:
            condition["required"] = ["strategy"]
        rules.append({"if": condition, "then": rule})
    return rules


class StagedPlan(Strict):
    """The staged strategy's second stage: the ``keep`` best heads of the screen get
    independent runs on ``seeds`` paired seeds beside the baseline, judged on ``probe``."""

    keep: int = Field(3, ge=1, le=64, description="heads the screen keeps for stage 2")
    seeds: int = Field(3, ge=2, le=20, description="paired seeds per stage-2 head and baseline")
    probe: PrimaryProbe = Field(
        "linear", description="the primary probe the paired gain over the baseline is read on"
    )
    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="family-wise error rate of the Holm-corrected gains"
    )


class SearchSpec(Strict):
    """What to search: the body of ``POST /v1/searches`` and of ``hssl search run spec.yaml``."""

    # the cross-field rules of ``_consistent`` in the JSON Schema too, so a schema-driven
    # client never sends what the server must refuse (strategy absent = joint, the default)
    model_config = ConfigDict(
        **Strict.model_config, json_schema_extra={"allOf": _strategy_rules(DEFAULT_STRATEGY)}
    )

    name: str | None = Field(None, max_length=80, description="study name; derived if absent")
    base: BaseModelSpec = Field(default_factory=BaseModelSpec)
    data: str = Field("animal-mnist", min_length=1, max_length=4096)
    space: CandidateSpace = Field(default_factory=CandidateSpace)
    strategy: Literal[STRATEGY_NAMES] = Field(  # type: ignore[valid-type]
        DEFAULT_STRATEGY,
        description="; ".join(f"{s.name}: {s.summary}" for s in STRATEGIES.values()),
    )
    optuna_mode: Literal["pareto", "pruned"] = Field(
        "pareto",
        description="pareto: a multi-objective study of every objective; pruned: a "
        "single-objective study of the first objective with k-NN pruning (every objective is "
        "still recorded and ranked)",
    )
    staged: StagedPlan = Field(
        default_factory=StagedPlan,
        description="strategy staged only: stage 2's heads, seeds and probe (stage 1 screens "
        "every candidate with one joint run per budget seed, on the objectives)",
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: list(DEFAULT_OBJECTIVES), min_length=1
    )
    budget: Budget = Field(default_factory=Budget)
    include_baseline: bool = Field(False, description="also run plain iBOT (no head)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    recipe: Literal["proxy", "faithful"] = Field(
        "proxy",
        description="proxy: the short-run recipe that keeps the global objective from "
        "collapsing (PROXY_RECIPE: projector BN, KoLeo 0.1, K 256, lr 5e-3, EMA 0.99; "
        "docs/study/recipes); faithful: the authors' objective as in full pre-training",
    )
    trial_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="other TrialConfig fields for the proxy runs (over the recipe's)",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError("name may hold letters, digits, '.', '_' and '-' only")
        return name

    @model_validator(mode="before")
    @classmethod
    def _strategy_defaults(cls, data: Any) -> Any:
        """Fill in the strategy's defaults (a calibration's objectives default to ``knn``)."""
        if isinstance(data, dict) and data.get("strategy") in STRATEGIES:
            data = STRATEGIES[data["strategy"]].defaults(data)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        STRATEGIES[self.strategy].check(self)
        reserved = {
            *("base", "heads", "data", "epochs", "batch_size", "seed"),
            *("data_limit", "heldout_images"),
        }
        if clash := sorted(reserved & set(self.trial_overrides)):
            raise ValueError(f"trial_overrides may not set {clash}: use base/space/budget/seed")
        try:
            self.trial_config((), 0)
        except SpecError as exc:
            raise ValueError(f"trial_overrides: {exc}") from None
        return self

    def trial_config(self, heads: tuple[HeadSpec, ...], seed: int, **changes: Any) -> TrialConfig:
        """The proxy run of ``heads`` (``()`` = the baseline) with one of the paired seeds."""
        values = {
            **(PROXY_RECIPE if self.recipe == "proxy" else {}),
            **self.trial_overrides,
            "base": self.base.proxy(),
            "heads": heads,
            "data": self.data,
            "epochs": self.budget.epochs,
            "batch_size": self.budget.batch_size,
            "seed": seed,
            "data_limit": self.budget.data_limit,
            "heldout_images": self.budget.heldout_images,
            **changes,
        }
        if "finetune" in self.objectives:  # the probe the objective reads
            values["finetune_probe"] = True
        return TrialConfig.from_dict(values)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.budget.seeds)]


__all__ = [
    "LABEL_FREE",
    "POOLINGS",
    "PROBE_OBJECTIVES",
    "STRATEGY_NAMES",
    "BaseModelSpec",
    "Budget",
    "CandidateSpace",
    "Objective",
    "SearchSpec",
]


def planned_trials(spec: SearchSpec) -> int:
    """How many runs the search is planned to count (progress and quotas), as its strategy
    plans them (one per trial, or per candidate and seed, ...)."""
    return STRATEGIES[spec.strategy].planned_trials(spec)
