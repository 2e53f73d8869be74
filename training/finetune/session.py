"""A fine-tune's assembled state and its checkpoint: ``build_session(config, output_dir)``.

Data, model (DDP-wrapped under torchrun), optimiser, schedule, Mixup, loss, transform and the
optional EMA, all from the config. With ``output_dir`` the state is saved to ``finetune.pt``
after every epoch; ``resume=True`` continues from it (the config must be the same), and the
per-epoch log ``finetune.jsonl`` is rewritten from the checkpoint's history so it never holds
epochs the checkpoint does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from training.data import ImageSet, num_batches, open_dataset
from training.errors import DataError, HSSLError
from training.finetune import parts
from training.finetune.build import build_model
from training.finetune.config import FinetuneConfig
from training.finetune.data import decode_size
from training.finetune.init import InitWeights, load_init
from training.finetune.resolve import image_size
from training.runtime import checkpoint, runlog
from training.runtime.device import (
    Runtime,
    optimizer_options,
    place,
    resolve,
    seed_everything,
    wrap_distributed,
)

CHECKPOINT_NAME = "finetune.pt"
LOG_NAME = "finetune.jsonl"


@dataclass
class FinetuneSession:
    config: FinetuneConfig
    runtime: Runtime
    train_set: ImageSet
    heldout_set: ImageSet
    img_size: int
    model: nn.Module  # DDP-wrapped under torchrun
    network: nn.Module  # the unwrapped model
    optimizer: torch.optim.Optimizer
    scheduler: Any
    mixup: Any
    criterion: nn.Module
    transform: Any
    ema: ModelEmaV3 | None
    steps_per_epoch: int  # micro-batches per epoch and rank
    accum_steps: int
    peak_lr: float
    description: dict[str, Any]
    output_dir: Path | None
    start_epoch: int = 0
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def updates_per_epoch(self) -> int:
        return self.steps_per_epoch // self.accum_steps

    @property
    def checkpoint_path(self) -> Path | None:
        return self.output_dir / CHECKPOINT_NAME if self.output_dir else None

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epochs_done,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "history": json.loads(json.dumps(self.history, default=float)),
        }

    def save(self, record: dict[str, Any]) -> None:
        """Checkpoint, then append ``record`` to the log (rank 0 only)."""
        if not (self.runtime.main and self.output_dir):
            return
        checkpoint.save(self.checkpoint_path, self.state())
        runlog.append(self.output_dir / LOG_NAME, record)


@dataclass(frozen=True)
class Embedded:
    """What a fine-tune inside another run takes from it instead of from the config (the
    search's fine-tune probe): the base's weights in memory, the run's own train/held-out
    split, and a single-process runtime on the run's device."""

    init: InitWeights
    train_set: ImageSet
    heldout_set: ImageSet
    runtime: Runtime


def build_session(
    config: FinetuneConfig,
    output_dir: str | Path | None,
    *,
    resume: bool = False,
    embedded: Embedded | None = None,
) -> FinetuneSession:
    if embedded is None:
        runtime = resolve(config.device, config.precision)
        init = load_init(config.init) if config.init else None
        size = image_size(config, init)
        train_set, heldout_set = open_splits(config, decode_size(size, config.crop_pct))
    else:
        runtime, init = embedded.runtime, embedded.init
        size = image_size(config, init)
        train_set, heldout_set = embedded.train_set, embedded.heldout_set
    seed_everything(config.seed)
    network, description = build_model(config, init, len(train_set.classes))
    description["init"] = init.describe() if init else None
    del init  # the pre-trained tensors are in the model now
    network = place(network, runtime)
    accum = parts.accumulation_steps(config.effective_batch, config.batch_size, runtime.world_size)
    steps = num_batches(train_set, config.batch_size, drop_last=True, world_size=runtime.world_size)
    steps -= steps % accum
    if steps == 0:
        raise DataError(
            f"data set {config.data!r} has {len(train_set)} training images: fewer than one "
            f"optimiser step of {config.batch_size} x {accum} per process; lower the batch"
        )
    peak_lr = parts.scaled_lr(config.lr, config.batch_size * accum * runtime.world_size)
    optimizer = parts.make_optimizer(network, config, peak_lr, **optimizer_options(runtime))
    ema = ModelEmaV3(network, decay=config.ema_decay) if config.ema_decay else None
    model = wrap_distributed(network, runtime)
    session = FinetuneSession(
        config=config,
        runtime=runtime,
        train_set=train_set,
        heldout_set=heldout_set,
        img_size=size,
        model=model,
        network=network,
        optimizer=optimizer,
        scheduler=parts.make_scheduler(optimizer, config, steps // accum),
        mixup=parts.make_mixup(config, len(train_set.classes)),
        criterion=parts.make_criterion(config),
        transform=parts.make_train_transform(config, size),
        ema=ema,
        steps_per_epoch=steps,
        accum_steps=accum,
        peak_lr=peak_lr,
        description=description,
        output_dir=Path(output_dir) if output_dir else None,
    )
    _start_or_resume(session, resume)
    return session


def open_splits(config: FinetuneConfig, size: int) -> tuple[ImageSet, ImageSet]:
    """(train, held-out): a seeded stratified split of ``data``, or all of ``data`` and all of
    ``val_data`` (whose class folders must be the same)."""
    kw = dict(seed=config.seed, limit=config.data_limit)
    if config.val_data is None:
        return open_dataset(config.data, size, heldout=config.heldout, **kw)
    train_set, _ = open_dataset(config.data, size, heldout=0, **kw)
    val_set, _ = open_dataset(config.val_data, size, heldout=0, seed=config.seed)
    if val_set.classes != train_set.classes:
        raise DataError(
            f"val_data {config.val_data} has classes {list(val_set.classes)[:5]}... but data "
            f"{config.data} has {list(train_set.classes)[:5]}...; use the same class folders"
        )
    return train_set, val_set


def _start_or_resume(s: FinetuneSession, resume: bool) -> None:
    path = s.checkpoint_path
    if path is None or not path.exists():
        if s.runtime.main and s.output_dir:
            runlog.restart(s.output_dir / LOG_NAME, [])
        return
    if not resume:
        raise HSSLError(
            f"{path} exists: pass --resume (resume=True) to continue that run, or choose "
            "another output folder"
        )
    state = checkpoint.load(path, config=s.config)
    s.network.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    if s.ema is not None:
        s.ema.module.load_state_dict(state["ema"])
    s.start_epoch = s.epochs_done = int(state["epoch"])
    s.history = list(state["history"])
    if s.runtime.main:
        runlog.restart(s.output_dir / LOG_NAME, s.history)
