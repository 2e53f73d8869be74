"""The fine-tune probe of a pre-training run: held-out top-1 of its teacher base after a short
``proxy``-recipe fine-tune on the run's own training split (the paper ranks heads by
fine-tuned accuracy; this is its proxy-scale stand-in, issue 15).

A run measures it twice: at initialisation, where it fine-tunes the random-init network (the
floor: supervised training from scratch, from the very weights pre-training starts from), and
at the end, on the pre-trained base. Both see the same recipe, split, batches and seed, so the
difference is what pre-training gave. The probe works on a copy: the run's networks, and its
random streams from the next epoch on, are untouched.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from training.data import ImageSet
from training.errors import TrainingError
from training.finetune.config import FinetuneConfig
from training.finetune.init import InitWeights, architecture_kwargs
from training.finetune.loop import run_finetune
from training.finetune.session import Embedded
from training.runtime.device import Runtime
from training.specs import BaseSpec

METRIC = "finetune"
MAX_BATCH = 64  # the proxy recipe's batch


def probe_batch(run_batch: int) -> int:
    """The fine-tune's batch: the run's, at most the recipe's, even (Mixup pairs images)."""
    return max(2, min(MAX_BATCH, run_batch) // 2 * 2)


def probe_config(base: BaseSpec, *, epochs: int, batch_size: int, seed: int) -> FinetuneConfig:
    """The ``proxy`` recipe shortened to ``epochs`` (warm-up only when there are two or more)."""
    return FinetuneConfig.from_recipe(
        "proxy",
        model=base.name,
        epochs=epochs,
        warmup_epochs=min(1, epochs - 1),
        batch_size=probe_batch(batch_size),
        img_size=base.img_size,
        seed=seed,
    )


def base_weights(model: nn.Module, base: BaseSpec) -> InitWeights:
    """A copy of the timm model's weights, described as ``hssl export`` describes a base."""
    kwargs = architecture_kwargs(base)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return InitWeights("run", "the run's teacher base", base.name, kwargs, base.img_size, state)


def finetune_probe(
    model: nn.Module,
    base: BaseSpec,
    train_set: ImageSet,
    heldout_set: ImageSet,
    *,
    runtime: Runtime,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """``{"finetune": top-1}`` of ``model`` (the run's timm base) fine-tuned for ``epochs``;
    a fine-tune that fails raises TrainingError with its reason (the run fails with it)."""
    config = probe_config(base, epochs=epochs, batch_size=batch_size, seed=seed)
    alone = replace(runtime, rank=0, world_size=1)  # rank 0 of a DDP run probes by itself
    inputs = Embedded(base_weights(model, base), train_set, heldout_set, alone)
    result = run_finetune(config, None, embedded=inputs)
    if result.status != "completed":
        raise TrainingError(f"the fine-tune probe failed: {result.reason}")
    return {METRIC: float(result.metrics["top1"])}
