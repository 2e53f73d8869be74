"""Checkpoints: written atomically so a run killed mid-save never leaves a torn file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.errors import HSSLError
from training.fields import same_config

FILENAME = "checkpoint.pt"


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path, *, config: Any = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (tensors and plain Python data only); with
    ``config`` (a TrialConfig or FinetuneConfig), one a resumed run may continue: written by
    that same configuration (``training.fields.same_config``)."""
    path = Path(path)
    if not path.is_file():
        raise HSSLError(f"checkpoint {path} does not exist; pass the file a run wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file
        raise HSSLError(
            f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc})"
        ) from None
    if config is not None and not same_config(type(config), state.get("config"), config):
        raise HSSLError(
            f"checkpoint {path} was written by another configuration; use a fresh output "
            "folder or the same settings"
        )
    return state
