"""Turn a :class:`~training.specs.BaseSpec` into ``timm.create_model`` kwargs (method §2, §9).

Proxy trials shrink the base (method §9: e.g. ViT depth 4, width 128, patch 4 on 32 px), so the
spec's overrides are mapped onto constructor arguments. What a model accepts is read from its
class signature, found by building the default model on the ``meta`` device (no memory, no
weights); an override it does not take is a :class:`SpecError` naming both, never a silent
no-op. Weights are never downloaded: ``pretrained=False`` always. Names are checked against
the list :mod:`training.timm_names` ships (the API checks them there, without importing timm).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import timm
import torch
from torch import nn

from training.errors import SpecError
from training.specs import BaseSpec
from training.timm_names import check_name

# BaseSpec field -> timm constructor argument (ViT-style names).
OVERRIDES = {
    "patch_size": "patch_size",
    "depth": "depth",
    "width": "embed_dim",
    "num_heads": "num_heads",
}
_HIDDEN = {"self", "device", "dtype", "num_classes"}
_RESERVED = {"pretrained": False, "num_classes": 0}


def build_timm_model(spec: BaseSpec) -> tuple[nn.Module, dict[str, Any]]:
    """Create the timm model for ``spec``; return it and the exact kwargs used."""
    kwargs = timm_kwargs_for(spec)
    try:
        model = timm.create_model(spec.name, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise SpecError(
                f"base model {spec.name!r} rejected an override (its constructor takes **kwargs, "
                f"so what it accepts cannot be listed): {exc}"
            ) from None
        raise SpecError(f"could not build base model {spec.name!r} with {kwargs}: {exc}") from None
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise SpecError(
            f"could not build base model {spec.name!r} with {kwargs}: {exc or type(exc).__name__}"
        ) from None
    return model, kwargs


def timm_kwargs_for(spec: BaseSpec) -> dict[str, Any]:
    """The kwargs for ``timm.create_model(spec.name, **kwargs)``; validates every override."""
    check_name(spec.name)
    cls_name, params, is_open = _constructor_params(spec.name)

    def takes(arg: str) -> bool:
        return is_open or arg in params

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if "img_size" in params:  # CNNs take any input size and have no img_size argument
        kwargs["img_size"] = spec.img_size
    requested = {f: getattr(spec, f) for f in OVERRIDES if getattr(spec, f) is not None}
    default_heads = params.get("num_heads", inspect.Parameter.empty)
    if spec.width is not None and spec.num_heads is None and isinstance(default_heads, int):
        requested["num_heads"] = max(1, spec.width // 64)
    for field, value in requested.items():
        arg = OVERRIDES[field]
        if not takes(arg):
            raise SpecError(_rejection(spec.name, cls_name, params, field, arg))
        kwargs[arg] = value
    if takes("drop_path_rate"):
        kwargs["drop_path_rate"] = spec.drop_path_rate
    elif spec.drop_path_rate > 0:
        warnings.warn(
            f"base model {spec.name!r} has no drop_path_rate; drop_path_rate="
            f"{spec.drop_path_rate} is ignored",
            stacklevel=3,
        )
    for key, value in spec.extra.items():
        if key in _RESERVED and value != _RESERVED[key]:
            raise SpecError(
                f"extra.{key} must stay {_RESERVED[key]!r}: weights are never downloaded and the "
                "base is built without a classifier"
            )
        if not takes(key) and key not in kwargs:
            raise SpecError(_rejection(spec.name, cls_name, params, f"extra.{key}", key))
        kwargs[key] = value
    return kwargs


def _constructor_params(name: str) -> tuple[str, dict[str, Any], bool]:
    """(class name, {argument: default}, open) for the model's constructor.

    ``open`` means the signature ends in ``**kwargs`` that we cannot follow (e.g. RegNet folds
    them into its config): then every override is passed and timm itself has the last word.
    """
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # some constructors cannot run on meta; fall back to trying for real
        return name, {}, True
    params: dict[str, Any] = {}
    for klass in type(model).__mro__:
        if klass in (nn.Module, object):
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        var_kw = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = True
            elif p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in _HIDDEN:
                params.setdefault(p.name, p.default)
        if not var_kw:
            return type(model).__name__, params, False
    return type(model).__name__, params, True


def _rejection(name: str, cls_name: str, params: dict[str, Any], what: str, arg: str) -> str:
    taken = [f for f, a in OVERRIDES.items() if a in params]
    taken += [a for a in ("img_size", "drop_path_rate") if a in params]
    others = sorted(set(params) - set(OVERRIDES.values()) - {"img_size", "drop_path_rate"})
    return (
        f"base model {name!r} ({cls_name}) does not accept override {what!r} (timm argument "
        f"{arg!r}); overrides it takes: {', '.join(taken) or 'none'}; other constructor "
        f"arguments (via extra): {', '.join(others) or 'none'}"
    )
