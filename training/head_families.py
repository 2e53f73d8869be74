"""The head families, registered once: what each is and which :class:`HeadSpec` fields it uses
(method §6, §7).

Everything else derives from :data:`_TABLE`: ``HEAD_FAMILIES`` (HeadSpec's check, the search
spec's ``Family`` literal and default grid), ``list_heads()`` (what the CLI and API show a user
choosing candidate heads), ``applies`` (which fields a family ignores, also in its label), and
the block classes, which :func:`training.model.heads.blocks.family_block` attaches by name (a
decorator, as timm registers its models). It imports no torch (unlike the package
:mod:`training.model.heads`): the API validates candidate spaces without loading the engine.
"""

from __future__ import annotations

from typing import Any

_ALL_FIELDS = ("depth", "kernel", "width_ratio", "first_residual", "pooling")

# family -> (one-line description, fields that do not apply, meaning of width_ratio)
_TABLE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "convnext": (
        "ConvNeXt block as in the paper: depthwise k×k conv, LayerNorm, MLP (GELU), residual; "
        "no layer-scale (heterogeneous for a ViT base)",
        (),
        "MLP hidden width / C (default 4)",
    ),
    "resnet": (
        "ResNet bottleneck: 1×1 → k×k → 1×1 convs with BatchNorm/ReLU, ReLU after the add",
        (),
        "bottleneck width / C (default 0.25)",
    ),
    "transformer": (
        "pre-LN ViT block (self-attention + MLP) on the flattened token map; homogeneous "
        "control for a ViT base, heterogeneous for a CNN base",
        ("kernel",),
        "MLP hidden width / C (default 4)",
    ),
    "mlp": (
        "token-wise LayerNorm + MLP with residual, no spatial mixing (low-discrepancy control)",
        ("kernel",),
        "MLP hidden width / C (default 4)",
    ),
    "pool": (
        "PoolFormer block: GroupNorm, k×k average-pool mixer (pool − x), residual; "
        "GroupNorm, 1×1-conv MLP, residual",
        (),
        "MLP hidden width / C (default 4)",
    ),
}
HEAD_FAMILIES: tuple[str, ...] = tuple(_TABLE)


def list_heads() -> list[dict[str, Any]]:
    """One entry per family: ``name``, ``description``, ``fields`` (HeadSpec fields that apply),
    ``ignored`` (fields accepted but without effect) and ``width_ratio`` (what it means)."""
    entries = []
    for name, (description, ignored, ratio) in _TABLE.items():
        entries.append(
            {
                "name": name,
                "description": description,
                "fields": [f for f in _ALL_FIELDS if f not in ignored],
                "ignored": list(ignored),
                "width_ratio": ratio,
            }
        )
    return entries


def applies(family: str, field: str) -> bool:
    """Whether HeadSpec ``field`` has an effect for ``family`` (e.g. kernel for mlp: no)."""
    return field not in _TABLE[family][1]
