"""Frozen configuration and result types of the training engine.

Configs go in, results come out; nothing here reads the environment. ``HeadSpec`` and
``BaseSpec`` are also what a recommendation file stores, so they round-trip through plain dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from training.errors import SpecError
from training.fields import known_fields
from training.head_families import HEAD_FAMILIES, applies

POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class HeadSpec:
    """One auxiliary head (method §2, §6, §7).

    ``width_ratio`` is the hidden width over the base width: the MLP ratio for convnext,
    transformer, mlp and pool blocks (default 4), the bottleneck ratio for resnet (default 0.25).
    ``first_residual=False`` removes the identity path from the first block's input to its
    output, the paper's first discrepancy-enlarging device.
    """

    family: str = "convnext"
    depth: int = 3
    kernel: int = 7
    width_ratio: float | None = None
    first_residual: bool = False
    pooling: str = "avg"

    def __post_init__(self) -> None:
        _check_types(
            self,
            {
                "family": str,
                "depth": int,
                "kernel": int,
                "first_residual": bool,
                "pooling": str,
                "width_ratio": (int, float, type(None)),
            },
        )
        if self.family not in HEAD_FAMILIES:
            raise SpecError(
                f"unknown head family {self.family!r}; choose one of {', '.join(HEAD_FAMILIES)}"
            )
        if not 1 <= self.depth <= 12:
            raise SpecError(f"head depth must be 1..12, got {self.depth}")
        if self.kernel not in (1, 3, 5, 7, 9, 11):
            raise SpecError(f"head kernel must be odd, 1..11, got {self.kernel}")
        if self.width_ratio is not None and not 0 < self.width_ratio <= 16:
            raise SpecError(f"head width_ratio must be in (0, 16], got {self.width_ratio}")
        if self.pooling not in POOLINGS:
            raise SpecError(
                f"head pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"
            )

    @property
    def hidden_ratio(self) -> float:
        if self.width_ratio is not None:
            return self.width_ratio
        return 0.25 if self.family == "resnet" else 4.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        return cls(**known_fields(cls, data, "head spec"))

    @classmethod
    def parse(cls, text: str) -> HeadSpec:
        """Parse the CLI form ``family[:key=value,...]``, e.g. ``convnext:depth=3,kernel=7``."""
        family, _, rest = text.strip().partition(":")
        values: dict[str, Any] = {"family": family.strip()}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise SpecError(f"head option {item!r} in {text!r} needs the form key=value")
            values[key] = _parse_value(key, raw.strip())
        return cls.from_dict(values)

    def label(self) -> str:
        """Short stable name, e.g. ``convnext-d3-k7-nores``."""
        parts = [self.family, f"d{self.depth}"]
        if applies(self.family, "kernel"):
            parts.append(f"k{self.kernel}")
        if self.width_ratio is not None:
            parts.append(f"r{self.width_ratio:g}")
        parts.append("res" if self.first_residual else "nores")
        if self.pooling != "avg":
            parts.append(self.pooling)
        return "-".join(parts)


def _check_types(spec: Any, expected: dict[str, type | tuple[type, ...]]) -> None:
    """Refuse values of the wrong type with the field's name (bools are not integers here)."""
    for name, types in expected.items():
        value = getattr(spec, name)
        wrong_bool = isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        )
        if wrong_bool or not isinstance(value, types):
            allowed = types if isinstance(types, tuple) else (types,)
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise SpecError(f"{type(spec).__name__} field {name} must be {names}, got {value!r}")


def _parse_value(key: str, raw: str) -> Any:
    if key in ("depth", "kernel"):
        try:
            return int(raw)
        except ValueError:
            raise SpecError(f"head option {key} must be an integer, got {raw!r}") from None
    if key == "width_ratio":
        try:
            return float(raw)
        except ValueError:
            raise SpecError(f"head option width_ratio must be a number, got {raw!r}") from None
    if key == "first_residual":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SpecError(f"head option first_residual must be true or false, got {raw!r}")
    return raw


@dataclass(frozen=True)
class BaseSpec:
    """A timm base model and its proxy-scale overrides.

    ``depth``, ``width``, ``num_heads`` and ``patch_size`` apply to ViT-style models;
    ``extra`` passes any other constructor argument straight to ``timm.create_model``.
    """

    name: str = "vit_tiny_patch16_224"
    img_size: int = 32
    patch_size: int | None = None
    depth: int | None = None
    width: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        optional_int = (int, type(None))
        _check_types(
            self,
            {
                "name": str,
                "img_size": int,
                "patch_size": optional_int,
                "depth": optional_int,
                "width": optional_int,
                "num_heads": optional_int,
                "drop_path_rate": (int, float),
                "extra": dict,
            },
        )
        if not 8 <= self.img_size <= 1024:
            raise SpecError(f"img_size must be 8..1024, got {self.img_size}")
        for name in ("patch_size", "depth", "width", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SpecError(f"base {name} must be positive, got {value}")
        if not 0 <= self.drop_path_rate < 1:
            raise SpecError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseSpec:
        return cls(**known_fields(cls, data, "base spec"))
