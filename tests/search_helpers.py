"""A tiny search spec for fast tests (seconds per run on one CPU thread)."""

from typing import Any

from search.spec import SearchSpec

TINY_SEARCH: dict[str, Any] = {
    "base": {
        "name": "vit_tiny_patch16_224",
        "img_size": 16,
        "patch_size": 4,
        "depth": 1,
        "width": 32,
    },
    "data": "synthetic",
    "space": {"heads": ["convnext:depth=1,kernel=3", "mlp:depth=1", "transformer:depth=1"]},
    "budget": {"epochs": 1, "batch_size": 16, "data_limit": 160},
    "trial_overrides": {
        "out_dim": 64,
        "proj_hidden": 32,
        "proj_bottleneck": 16,
        "linear_probe": False,
    },
}


def tiny(**changes: Any) -> SearchSpec:
    data = {**TINY_SEARCH}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return SearchSpec.model_validate(data)
