"""Where a fine-tune's pre-trained weights come from: ``--init``.

Three kinds, told apart by their content:

* ``export``: an ``hssl export`` safetensors file; its metadata (``hssl``) names the timm model
  and the ``create_model`` kwargs of the pre-trained base (``training.runtime.export``).
* ``run``: a run folder of ``hssl train`` or its ``checkpoint.pt``; the teacher base is read the
  way ``hssl export`` reads it (keys under ``base.model.``, kwargs from the run's config).
* ``timm``: any other checkpoint timm's ``load_state_dict`` reads (safetensors, a ``.pth`` with
  or without ``state_dict``/``model``); the model name must then be given.

:func:`inspect_init` checks the path cheaply (a run's checkpoint is memory-mapped, an export's
header read) so the CLI refuses a bad path in one line before anything is built;
:func:`load_init` reads the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import SpecError

if TYPE_CHECKING:
    from torch import Tensor

    from training.specs import BaseSpec

CHECKPOINT_FILE = "checkpoint.pt"  # training.CHECKPOINT_FILE (that module imports torch)

_DROPPED_KWARGS = ("pretrained", "num_classes", "drop_path_rate")


@dataclass(frozen=True)
class InitWeights:
    """Pre-trained base weights (timm keys) and what is known of the model they fit."""

    kind: str  # export, run or timm
    source: str
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None  # None: not known (a plain timm checkpoint)
    img_size: int | None = None
    state: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "model": self.model}


def inspect_init(source: str) -> InitWeights:
    """The kind and model of ``source`` (a run's weights memory-mapped, other kinds' not
    read); SpecError if it is not there or not a weights file of the kind it looks like."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SpecError(
            f"--init {source} does not exist; pass an `hssl export` .safetensors file, a run "
            "folder of `hssl train`, a timm checkpoint, or none"
        )
    if path.is_dir():
        state = _read_run(path / CHECKPOINT_FILE)
        if state is None:
            raise SpecError(
                f"--init {source} is a folder without a readable {CHECKPOINT_FILE} of "
                "`hssl train`; pass the folder `hssl train --out` wrote, or a weights file"
            )
        return _from_run(source, state)
    if path.suffix == ".safetensors":
        meta = _hssl_metadata(path)
        if meta is not None:
            kwargs = meta.get("create_model_kwargs", {})
            return InitWeights("export", source, meta["model"], kwargs, kwargs.get("img_size"))
    if path.suffix == ".pt" and (state := _read_run(path)) is not None:
        return _from_run(source, state)
    return InitWeights("timm", source)


def load_init(source: str) -> InitWeights:
    """The pre-trained base of ``source`` with its weights (see the module docstring)."""
    found = inspect_init(source)
    path = Path(source).expanduser()
    if found.kind == "export":
        from safetensors.torch import load_file

        return replace(found, state=load_file(str(path)))
    if found.kind == "run":
        return found
    return replace(found, state=_read_timm(path))


def _hssl_metadata(path: Path) -> dict[str, Any] | None:
    """The ``hssl`` metadata of a safetensors file, or None if it has none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # not a safetensors file after all
        raise SpecError(f"--init {path} is not a readable safetensors file ({exc})") from None
    return json.loads(meta["hssl"]) if "hssl" in meta else None


def _read_run(path: Path) -> dict[str, Any] | None:
    """A checkpoint of ``hssl train`` (tensors memory-mapped, so cheap), or None."""
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a plain torch checkpoint of ours
        return None
    return state if isinstance(state, dict) and "teacher" in state and "config" in state else None


def architecture_kwargs(base: BaseSpec) -> dict[str, Any]:
    """The ``timm.create_model`` kwargs that fix ``base``'s architecture (not its classifier,
    pretrained weights or drop path, which a fine-tune sets itself)."""
    from training.model.timm_build import timm_kwargs_for

    return {k: v for k, v in timm_kwargs_for(base).items() if k not in _DROPPED_KWARGS}


def _from_run(source: str, state: dict[str, Any]) -> InitWeights:
    """The teacher base of a pre-training checkpoint, as ``hssl export`` would write it."""
    from training.recipe import TrialConfig
    from training.runtime.export import PREFIX

    config = TrialConfig.from_dict(state["config"])
    weights = {k[len(PREFIX) :]: v for k, v in state["teacher"].items() if k.startswith(PREFIX)}
    kwargs = architecture_kwargs(config.base)
    return InitWeights("run", source, config.base.name, kwargs, config.base.img_size, weights)


def _read_timm(path: Path) -> dict[str, Tensor]:
    from timm.models import load_state_dict
    from torch import Tensor

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise SpecError(
            f"--init {path} cannot be read as a checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpecError(f"--init {path} holds no state dict of tensors")
    return state
