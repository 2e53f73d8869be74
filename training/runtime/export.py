"""Hand-off to fine-tuning: the pre-trained teacher base as a timm-loadable safetensors file.

The adapter keeps the timm model unchanged, so the exported keys are exactly timm's (created with
``num_classes=0``). Load it with::

    timm.create_model(name, pretrained=True,
                      pretrained_cfg_overlay=dict(file=path, num_classes=0), **kwargs)

where ``kwargs`` are the proxy overrides stored beside the weights (``num_classes`` may be set to
the downstream class count: timm then starts a fresh classifier).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from training.model.timm_build import timm_kwargs_for
from training.recipe import TrialConfig
from training.runtime import checkpoint

PREFIX = "base.model."


def export_base(checkpoint_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the teacher base of ``checkpoint_path`` to ``out_path`` (safetensors) and a JSON
    sidecar with the model name and kwargs; return that description."""
    state = checkpoint.load(checkpoint_path)
    config = TrialConfig.from_dict(state["config"])
    weights = {
        key[len(PREFIX) :]: value.contiguous()
        for key, value in state["teacher"].items()
        if key.startswith(PREFIX)
    }
    kwargs = {
        k: v
        for k, v in timm_kwargs_for(config.base).items()
        if k not in ("pretrained", "num_classes", "drop_path_rate")
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "model": config.base.name,
        "file": str(out.resolve()),
        "create_model_kwargs": kwargs,
        "epochs": int(state["epoch"]),
        "tensors": len(weights),
        "load": (
            f"timm.create_model({config.base.name!r}, pretrained=True, pretrained_cfg_overlay="
            f"dict(file={str(out.resolve())!r}, num_classes=0), **{kwargs!r})"
        ),
    }
    save_file(weights, str(out), metadata={"hssl": json.dumps(info)})
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info
