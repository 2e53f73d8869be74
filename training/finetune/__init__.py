"""Supervised fine-tuning of a pre-trained base from timm's parts (issue 15).

``run_finetune(config, output_dir) -> FinetuneResult`` with a :class:`FinetuneConfig` from
``FinetuneConfig.from_recipe("mae" | "proxy", **overrides)``. Modules: ``config`` (config,
recipes, result), ``init`` (reading ``--init``), ``build`` (the timm model with the base loaded),
``parts`` (timm's optimiser, schedule, Mixup, loss, transform), ``data`` (batches),
``metrics`` (top-k), ``session`` (state, checkpoint, resume), ``loop`` (the epoch loop).
"""

from typing import Any

from training.finetune.config import RECIPES, FinetuneConfig, FinetuneResult

__all__ = ["RECIPES", "FinetuneConfig", "FinetuneResult", "run_finetune"]


def __getattr__(name: str) -> Any:
    """``run_finetune`` on first use: the loop imports torch and timm (seconds), which the
    CLI's checks of its input do not need."""
    if name == "run_finetune":
        from training.finetune.loop import run_finetune

        return run_finetune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
