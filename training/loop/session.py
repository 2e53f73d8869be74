"""A run's assembled state: data, student/teacher, objective, optimiser, schedules, checkpoint.

``build_session`` turns a :class:`TrialConfig` into everything the loop needs (and resumes from
a checkpoint); ``training.loop.session_eval.evaluate_session`` runs the probes and discrepancies
on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data import ImageSet, TwoCropAugment, num_batches, open_dataset, stratified_subset
from training.errors import DataError
from training.loop.optim import param_groups
from training.loop.schedules import cosine_schedule, lr_for_batch, teacher_temperature
from training.model.network import HSSLNetwork
from training.model.teacher import ema_update, make_teacher
from training.objective.hssl import HSSLObjective
from training.recipe import TrialConfig
from training.runtime import checkpoint, runlog
from training.runtime.device import (
    Runtime,
    channels_last,
    compile_in_place,
    optimizer_options,
    place,
    resolve,
    seed_everything,
    wrap_distributed,
)
from training.runtime.phases import Phases


@dataclass
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray


@dataclass
class Session:
    config: TrialConfig
    runtime: Runtime
    train_set: ImageSet
    heldout_set: ImageSet
    interim_set: ImageSet  # what the evaluations between the first and the last read
    student: nn.Module  # DDP-wrapped under torchrun
    network: HSSLNetwork  # the unwrapped student
    teacher: HSSLNetwork
    objective: HSSLObjective
    optimizer: torch.optim.Optimizer
    augment: TwoCropAugment
    schedules: Schedules
    steps_per_epoch: int
    channels_last: bool
    checkpoint_path: Path | None
    start_epoch: int = 0
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    init_metrics: dict[str, Any] = field(default_factory=dict)
    phases: Phases = field(default_factory=Phases)  # seconds per phase, into log.jsonl

    @property
    def grid(self) -> tuple[int, int]:
        return self.network.base.grid

    @property
    def log_path(self) -> Path | None:
        """The per-epoch ``log.jsonl`` beside the checkpoint (:mod:`training.runtime.runlog`)."""
        return self.checkpoint_path.parent / runlog.FILENAME if self.checkpoint_path else None

    def ema(self, momentum: float) -> None:
        ema_update(self.teacher, self.network, momentum)

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epochs_done,
            "student": self.network.state_dict(),
            "teacher": self.teacher.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": _plain(self.history),
            "init_metrics": _plain(self.init_metrics),
        }

    def save_checkpoint(self) -> None:
        if self.runtime.main and self.checkpoint_path:
            checkpoint.save(self.checkpoint_path, self.state())


def _plain(data: Any) -> Any:
    """Metrics as plain JSON types (numpy scalars cannot be loaded with weights_only=True)."""
    return json.loads(json.dumps(data, default=float))


def build_session(config: TrialConfig, output_dir: str | Path | None) -> Session:
    """Everything a run needs, built from ``config`` in a fixed order (the seeded global random
    state is drawn by the network's initialisation); resumes from ``output_dir``'s checkpoint."""
    runtime = resolve(config.device, config.precision)
    seed_everything(config.seed)
    train_set, heldout_set = open_dataset(
        config.data,
        config.base.img_size,
        seed=config.seed,
        heldout=config.heldout,
        limit=config.data_limit,
        heldout_images=config.heldout_images,
    )
    interim_set = stratified_subset(heldout_set, config.interim_eval_images, config.seed)
    network = _network(config, runtime)
    teacher = make_teacher(network)
    objective = _objective(config).to(runtime.device)
    optimizer = torch.optim.AdamW(
        param_groups(network),
        lr=0.0,
        weight_decay=config.weight_decay,
        **optimizer_options(runtime),
    )
    if config.compile:
        compile_in_place(network, teacher)
    steps = _steps_per_epoch(config, train_set, runtime.world_size)
    session = Session(
        config=config,
        runtime=runtime,
        train_set=train_set,
        heldout_set=heldout_set,
        interim_set=interim_set,
        student=wrap_distributed(network, runtime, find_unused_parameters=not config.masking),
        network=network,
        teacher=teacher,
        objective=objective,
        optimizer=optimizer,
        augment=TwoCropAugment(config.base.img_size),
        schedules=_schedules(config, steps, runtime.world_size),
        steps_per_epoch=steps,
        channels_last=channels_last(runtime),
        checkpoint_path=Path(output_dir) / checkpoint.FILENAME if output_dir else None,
    )
    if session.checkpoint_path and session.checkpoint_path.exists():
        _resume(session, checkpoint.load(session.checkpoint_path, config=config))
    return session


def _network(config: TrialConfig, runtime: Runtime) -> HSSLNetwork:
    """The student, placed on the run's device (:func:`place`)."""
    network = HSSLNetwork(
        config.base,
        config.heads,
        out_dim=config.out_dim,
        proj_hidden=config.proj_hidden,
        proj_bottleneck=config.proj_bottleneck,
        head_input=config.head_input,
        head_sees_mask=config.head_sees_mask,
        proj_bn=config.proj_bn,
    )
    return place(network, runtime)


def _objective(config: TrialConfig) -> HSSLObjective:
    return HSSLObjective(
        len(config.heads),
        config.out_dim,
        student_temp=config.student_temp,
        center_momentum=config.center_momentum,
        masking=config.masking,
        lambda_cls=config.lambda_cls,
        lambda_mim=config.lambda_mim,
        global_targets=config.global_targets,
        koleo_weight=config.koleo_weight,
    )


def _steps_per_epoch(config: TrialConfig, train_set: ImageSet, world_size: int) -> int:
    """Full batches per epoch and process; a data set with none is a :class:`DataError`."""
    steps = num_batches(train_set, config.batch_size, drop_last=True, world_size=world_size)
    if steps == 0:
        raise DataError(
            f"data set {config.data!r} has {len(train_set)} training images: fewer than "
            f"one batch of {config.batch_size} per process; lower batch_size"
        )
    return steps


def _schedules(cfg: TrialConfig, steps: int, world_size: int) -> Schedules:
    lr = lr_for_batch(cfg.lr, cfg.batch_size, world_size)
    return Schedules(
        lr=cosine_schedule(lr, cfg.min_lr, cfg.epochs, steps, cfg.warmup_epochs),
        wd=cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, steps),
        momentum=cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, steps),
        teacher_temp=teacher_temperature(
            cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs, cfg.epochs
        ),
    )


def _resume(s: Session, state: dict[str, Any]) -> None:
    s.network.load_state_dict(state["student"])
    s.teacher.load_state_dict(state["teacher"])
    s.objective.load_state_dict(state["objective"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.start_epoch = s.epochs_done = int(state["epoch"])
    s.history = list(state["history"])
    s.init_metrics = dict(state["init_metrics"])
