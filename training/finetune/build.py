"""The model to fine-tune: ``timm.create_model`` with the pre-trained base loaded, head fresh.

Name and kwargs come from :mod:`training.finetune.resolve`. The classifier is always new:
checkpoint weights under it are dropped and it is initialised with ``head_init_std`` (MAE:
``trunc_normal_(head.weight, std=2e-5)``). With ``global_pool="avg"`` timm's ViT replaces the
final ``norm`` by ``fc_norm`` after pooling; as in MAE, ``fc_norm`` starts fresh and the
pre-trained ``norm`` is not used. Any other missing or unexpected key is an error: a checkpoint
of another model never fine-tunes silently from scratch.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from training.errors import SpecError, one_line
from training.finetune.config import FinetuneConfig
from training.finetune.init import InitWeights
from training.finetune.resolve import architecture, model_name

# Keys a checkpoint may lack (MAE re-initialises the pooled-feature norm) or carry unused (the
# final norm that average pooling replaces).
POOL_NORM_PREFIXES = ("fc_norm.", "norm.")


def build_model(
    config: FinetuneConfig, init: InitWeights | None, num_classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model with the init's weights and a fresh classifier; and a description."""
    name = model_name(config, init)
    kwargs = architecture(config, init, name)
    try:
        model = timm.create_model(
            name,
            pretrained=False,
            num_classes=num_classes,
            drop_path_rate=config.drop_path,
            global_pool=config.global_pool,
            **kwargs,
        )
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise SpecError(
            f"could not build {name!r} with {kwargs} and global_pool={config.global_pool!r}: "
            f"{one_line(exc) if str(exc).strip() else type(exc).__name__}"
        ) from None
    loaded = load_base(model, init) if init else {"loaded": 0, "fresh": [], "unused": []}
    reset_classifier(model, config.head_init_std)
    info = {"name": name, "create_model_kwargs": kwargs, "num_classes": num_classes}
    return model, {**info, **loaded}


def classifier_prefix(model: nn.Module) -> str:
    """The module path of the classifier (``head`` for a ViT, ``head.fc`` for a ConvNeXt)."""
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head) + "."


def load_base(model: nn.Module, init: InitWeights) -> dict[str, Any]:
    """Load ``init.state`` into ``model`` except the classifier; SpecError if it does not fit."""
    head = classifier_prefix(model)
    state = {k: v for k, v in init.state.items() if not k.startswith(head)}
    own = model.state_dict()
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise SpecError(
            f"--init {init.source} does not fit this model: {k} is {tuple(state[k].shape)} there "
            f"and {tuple(own[k].shape)} here ({len(wrong)} tensors differ); same model and sizes?"
        )
    missing, unused = model.load_state_dict(state, strict=False)
    fresh = [k for k in missing if not k.startswith(head)]
    bad = [k for k in fresh if not k.startswith("fc_norm.")]
    bad += [k for k in unused if not k.startswith(POOL_NORM_PREFIXES)]
    if bad:
        raise SpecError(
            f"--init {init.source} does not fit this model: {len(bad)} tensors missing or "
            f"unexpected, e.g. {', '.join(sorted(bad)[:3])}; is it a checkpoint of this model?"
        )
    return {"loaded": len(state) - len(unused), "fresh": sorted(fresh), "unused": sorted(unused)}


@torch.no_grad()
def reset_classifier(model: nn.Module, std: float) -> None:
    """Truncated-normal weights with ``std`` (±2 std) and zero bias for every Linear under the
    classifier (MAE's fine-tuning head initialisation)."""
    for module in model.get_classifier().modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                module.bias.zero_()
