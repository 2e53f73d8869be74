"""One readable fine-tuning loop: ``run_finetune(config, output_dir) -> FinetuneResult``.

Shape of MAE's ``train_one_epoch``: per micro-batch, the schedule's lr at each optimiser update,
Mixup/CutMix, forward under autocast (bf16 on CUDA), loss / accumulation steps, backward (no
all-reduce until the last micro-batch under DDP), then clip, step, zero and EMA. After every
epoch: top-1/top-5 on the held-out split (and of the EMA), a checkpoint and one JSON line. Each
epoch reseeds from (seed, epoch, rank), so a resumed run continues exactly as an uninterrupted
one would.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training.errors import HSSLError, TrainingError
from training.finetune.config import FinetuneConfig, FinetuneResult
from training.finetune.data import eval_batches, train_batches
from training.finetune.metrics import evaluate
from training.finetune.session import Embedded, FinetuneSession, build_session
from training.runtime.device import is_out_of_memory, peak_memory_mb, seed_everything
from training.runtime.progress import epoch_bar

Report = Callable[[int, dict[str, Any]], bool]
EVAL_BATCH = 256


def run_finetune(
    config: FinetuneConfig,
    output_dir: str | Path | None = None,
    *,
    report: Report | None = None,
    resume: bool = False,
    progress: bool = False,
    embedded: Embedded | None = None,
) -> FinetuneResult:
    """Fine-tune ``config.init`` (or train from scratch) and evaluate it every epoch.

    ``report(epoch, record)`` hears every epoch's record; a true return stops the run (status
    ``stopped``). Bad input (data, model, init), a non-finite loss or running out of memory end
    it with status ``failed`` and a reason, never an exception into the caller. ``embedded``
    runs it inside another run (see :class:`training.finetune.session.Embedded`).
    """
    started = time.perf_counter()
    try:
        session = build_session(config, output_dir, resume=resume, embedded=embedded)
        return _train(session, report, progress, started)
    except HSSLError as exc:
        return FinetuneResult("failed", str(exc), wall_time_s=time.perf_counter() - started)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        reason = "out of memory: lower --batch-size (raise --effective-batch to keep the recipe)"
        return FinetuneResult("failed", reason, wall_time_s=time.perf_counter() - started)


def _train(
    s: FinetuneSession, report: Report | None, progress: bool, started: float
) -> FinetuneResult:
    cfg, rt = s.config, s.runtime
    images, train_time = 0, 0.0
    for epoch in range(s.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        record = {"epoch": epoch + 1, **train_one_epoch(s, epoch, progress)}
        train_time += time.perf_counter() - t0
        images += s.steps_per_epoch * cfg.batch_size * rt.world_size
        record.update(evaluate_session(s))
        s.history.append(record)
        s.epochs_done = epoch + 1
        s.save(record)
        stop = rt.broadcast_flag(bool(report(epoch + 1, record)) if report and rt.main else False)
        if stop and epoch + 1 < cfg.epochs:
            return _result(s, "stopped", started, images / max(train_time, 1e-9))
    return _result(s, "completed", started, images / max(train_time, 1e-9))


def train_one_epoch(s: FinetuneSession, epoch: int, progress: bool) -> dict[str, float]:
    """One pass over this rank's training shard; returns the mean loss and the last lr."""
    cfg, rt = s.config, s.runtime
    seed_everything(cfg.seed * 10_007 + epoch * 101 + rt.rank)
    s.model.train()
    batches = train_batches(
        s.train_set,
        s.transform,
        cfg.batch_size,
        seed=cfg.seed,
        epoch=epoch,
        rank=rt.rank,
        world_size=rt.world_size,
        num_workers=cfg.num_workers,
        steps=s.steps_per_epoch,
    )
    desc = f"fine-tune {epoch + 1}/{cfg.epochs}"
    bar = epoch_bar(batches, s.steps_per_epoch, desc, progress and rt.main)
    loss_sum = 0.0
    for it, (images, labels) in enumerate(bar):
        update = epoch * s.updates_per_epoch + it // s.accum_steps
        if it % s.accum_steps == 0:
            s.scheduler.step_update(update)
        loss = train_step(s, images, labels, last=(it + 1) % s.accum_steps == 0, update=update)
        if not math.isfinite(loss):
            raise TrainingError(
                f"fine-tune loss became {loss} at epoch {epoch + 1}, step {it + 1}: lower --lr"
            )
        loss_sum += loss
        bar.set_postfix(loss=f"{loss:.3f}")
    lr = max(group["lr"] for group in s.optimizer.param_groups)
    return {"loss": _mean_over_ranks(loss_sum / s.steps_per_epoch, s), "lr": lr}


def train_step(
    s: FinetuneSession, images: torch.Tensor, labels: torch.Tensor, *, last: bool, update: int
) -> float:
    """Forward and backward one micro-batch; on the ``last`` of an accumulation, step."""
    rt = s.runtime
    images = images.to(rt.device, non_blocking=True)
    labels = labels.to(rt.device, non_blocking=True)
    if rt.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    targets = labels
    if s.mixup is not None:
        images, targets = s.mixup(images, labels)
    syncing = last or rt.world_size == 1
    with contextlib.nullcontext() if syncing else s.model.no_sync():
        with rt.autocast():
            loss = s.criterion(s.model(images), targets)
        (loss / s.accum_steps).backward()
    if last:
        if s.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(s.network.parameters(), s.config.clip_grad)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        if s.ema is not None:
            s.ema.update(s.network, step=update + 1)
    return float(loss.detach())


def _mean_over_ranks(value: float, s: FinetuneSession) -> float:
    if s.runtime.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=s.runtime.device)
    dist.all_reduce(total)
    return float(total) / s.runtime.world_size


def evaluate_session(s: FinetuneSession) -> dict[str, float]:
    """Held-out top-1/top-5/loss of the model (and ``*_ema`` of the EMA), over all ranks."""
    rt = s.runtime
    models = {"": s.network, "_ema": s.ema.module if s.ema is not None else None}
    out: dict[str, float] = {}
    for suffix, model in models.items():
        if model is None:
            continue
        batches = eval_batches(
            s.heldout_set,
            s.img_size,
            EVAL_BATCH,
            rank=rt.rank,
            world_size=rt.world_size,
            device=rt.device,
            num_workers=s.config.num_workers,
        )
        metrics = evaluate(
            model, batches, autocast=rt.autocast, world_size=rt.world_size, device=rt.device
        )
        out.update({f"{key}{suffix}": value for key, value in metrics.items()})
    return out


def _result(s: FinetuneSession, status: str, started: float, speed: float) -> FinetuneResult:
    tops = [r["top1"] for r in s.history]
    return FinetuneResult(
        status=status,
        reason="stopped by the report callback" if status == "stopped" else None,
        epochs_done=s.epochs_done,
        metrics=s.history[-1] if s.history else {},
        best_top1=max(tops) if tops else None,
        history=tuple(s.history),
        init=s.description.get("init") or {},
        model={k: v for k, v in s.description.items() if k != "init"},
        wall_time_s=time.perf_counter() - started,
        images_per_s=speed,
        peak_memory_mb=peak_memory_mb(s.runtime.device),
        checkpoint=str(s.checkpoint_path) if s.checkpoint_path else None,
        world_size=s.runtime.world_size,
        steps_per_epoch=s.steps_per_epoch,
        accum_steps=s.accum_steps,
        peak_lr=s.peak_lr,
    )
