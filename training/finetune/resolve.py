"""Which model, at which size, with which ``create_model`` kwargs: settled from the config and
the init before anything is built (no weights read, timm imported only to validate overrides),
so the CLI refuses a bad ``--init``, ``--model`` or size in one line.

The architecture comes from the init when it knows it (an export or a run folder: the exact
kwargs of pre-training, so every tensor fits), else from the config's name and overrides,
validated by :func:`training.model.timm_build.timm_kwargs_for`.
"""

from __future__ import annotations

from typing import Any

from training.errors import SpecError
from training.finetune.config import FinetuneConfig
from training.finetune.init import InitWeights, architecture_kwargs, inspect_init
from training.specs import BaseSpec
from training.timm_names import check_name


def preflight(config: FinetuneConfig) -> None:
    """Check the init, the model name, the image size and the architecture."""
    init = inspect_init(config.init) if config.init else None
    image_size(config, init)
    architecture(config, init, model_name(config, init))


def model_name(config: FinetuneConfig, init: InitWeights | None) -> str:
    """The timm name: the config's, or the one the init was pre-trained as (they must agree)."""
    known = init.model if init else None
    if config.model and known and config.model != known:
        raise SpecError(
            f"--init {init.source} was pre-trained as {known!r}, not {config.model!r}; drop "
            f"--model or pass {known}"
        )
    name = config.model or known
    if not name:
        raise SpecError("--model is needed: the init does not name its timm model")
    check_name(name)
    return name


def image_size(config: FinetuneConfig, init: InitWeights | None) -> int:
    """The config's size, else the init's pre-training size, else the recipe's."""
    pretrained = init.img_size if init else None
    learned = bool(init and init.model_kwargs and "img_size" in init.model_kwargs)
    if learned and config.img_size and config.img_size != pretrained:  # position embedding
        raise SpecError(
            f"--init {init.source} was pre-trained at {pretrained} px; use --img-size "
            f"{pretrained} (or leave it out)"
        )
    return config.img_size or pretrained or config.default_img_size


def architecture(config: FinetuneConfig, init: InitWeights | None, name: str) -> dict[str, Any]:
    """``create_model`` kwargs of the base, without the classifier, pooling and drop path."""
    overrides = {"patch_size": config.patch_size, "depth": config.depth, "width": config.width}
    given = {k: v for k, v in overrides.items() if v is not None}
    if init and init.model_kwargs is not None:
        if given:
            raise SpecError(
                f"--init {init.source} fixes the architecture; drop "
                + ", ".join(f"--{k.replace('_', '-')}" for k in sorted(given))
            )
        return dict(init.model_kwargs)
    spec = BaseSpec(name=name, img_size=image_size(config, init), **given)
    return architecture_kwargs(spec)
