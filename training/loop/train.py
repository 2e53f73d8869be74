"""One readable HSSL training loop: ``run_trial(config, report) -> TrialResult``.

Shape of DINO's ``train_one_epoch``: per iteration set lr / weight decay, build two augmented
views and their block masks, teacher forward (no grad), student forward, loss, backward,
per-tensor clipping, prototype freeze, step, EMA, centre update. Each epoch reseeds from
(seed, epoch), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.data import iterate_batches
from training.errors import HSSLError, TrainingError
from training.loop.optim import clip_per_tensor, freeze_prototypes, set_schedules
from training.loop.session import Session, build_session
from training.loop.session_eval import evaluate_session
from training.objective.masking import sample_masks
from training.recipe import TrialConfig, TrialResult
from training.runtime import runlog
from training.runtime.device import is_out_of_memory, peak_memory_mb, seed_everything
from training.runtime.progress import epoch_bar

Report = Callable[[int, dict[str, Any]], bool]
OnStep = Callable[[dict[str, Any]], None]
PROGRESS_EVERY_S = 5.0  # on_step: at most this often within an epoch, and at each epoch's end


def run_trial(
    config: TrialConfig,
    report: Report | None = None,
    *,
    output_dir: str | Path | None = None,
    progress: bool = False,
    on_step: OnStep | None = None,
) -> TrialResult:
    """Train one HSSL configuration and evaluate it.

    ``report(epoch, metrics)`` is called after every epoch (epoch 0 = at initialisation); a true
    return value stops the run (status ``stopped``), which is how a pruner cuts a trial short.
    A non-finite loss, running out of memory or an unusable data set/spec end the trial with
    status ``failed`` and a reason, never an exception into the caller. With ``output_dir`` a
    checkpoint is written every ``checkpoint_every`` epochs, an existing one is resumed, and
    ``log.jsonl`` gets one line per epoch (:mod:`training.runtime.runlog`). ``on_step``
    hears where training is inside an epoch (epoch, epochs, step, steps, images/s) every
    PROGRESS_EVERY_S seconds and at each epoch's end, on the main rank.
    """
    started = time.perf_counter()
    try:
        session = build_session(config, output_dir)
        return _train(session, report, progress, started, on_step)
    except HSSLError as exc:  # TrainingError (non-finite loss), DataError, SpecError
        return TrialResult(
            status="failed", reason=str(exc), wall_time_s=time.perf_counter() - started
        )
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        return TrialResult(
            status="failed",
            reason="out of memory: lower batch_size or the model/head size, or raise the cap",
            wall_time_s=time.perf_counter() - started,
        )


def _train(
    s: Session,
    report: Report | None,
    progress: bool,
    started: float,
    on_step: OnStep | None = None,
) -> TrialResult:
    cfg = s.config
    _restart_log(s)
    if s.start_epoch == 0 and cfg.eval_at_init:
        s.init_metrics = evaluate_session(s, epoch=0, final=False, linear=cfg.linear_probe)
        _log(s, {"epoch": 0, **s.init_metrics, "phase_s": s.phases.take()})
        if _report(s, report, 0, s.init_metrics):
            return _result(s, "stopped", started)
    images_seen, train_time = 0, 0.0
    for epoch in range(s.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        record, seconds = _epoch(s, epoch, progress, on_step)
        images = s.steps_per_epoch * cfg.batch_size * s.runtime.world_size
        images_seen, train_time = images_seen + images, train_time + seconds
        s.history.append(record)
        s.epochs_done = epoch + 1
        last = epoch + 1 == cfg.epochs
        if s.checkpoint_path and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
            with s.phases("checkpoint"):
                s.save_checkpoint()
        _log(s, {**record, **_timing(images, seconds, t0), "phase_s": s.phases.take()})
        speed = _per_s(images_seen, train_time)
        if _report(s, report, epoch + 1, record) and not last:
            return _result(s, "stopped", started, speed)
        collapsed = _collapsed_for(s.history, cfg.stop_on_collapse)
        if collapsed and not last:
            reason = (
                f"collapsed: {collapsed} targets at {cfg.stop_on_collapse} evaluations in a row"
            )
            return _result(s, "stopped", started, speed, reason)
    return _result(s, "completed", started, _per_s(images_seen, train_time))


def _epoch(
    s: Session, epoch: int, progress: bool, on_step: OnStep | None
) -> tuple[dict[str, Any], float]:
    """Train epoch ``epoch`` (0-based) and evaluate it when due: its history record (loss
    terms, the schedules' values at its last step, metrics) and its training seconds."""
    cfg = s.config
    t0 = time.perf_counter()
    losses = train_one_epoch(s, epoch, progress, on_step)
    seconds = time.perf_counter() - t0
    record: dict[str, Any] = {"epoch": epoch + 1, **losses, **_schedule_values(s, epoch)}
    last = epoch + 1 == cfg.epochs
    if cfg.due(epoch + 1):
        record.update(evaluate_session(s, epoch + 1, final=last, linear=last and cfg.linear_probe))
    return record, seconds


def _schedule_values(s: Session, epoch: int) -> dict[str, float]:
    """lr and weight decay of the epoch's last step, and its teacher temperature."""
    step = (epoch + 1) * s.steps_per_epoch - 1
    return {
        "lr": float(s.schedules.lr[step]),
        "wd": float(s.schedules.wd[step]),
        "teacher_temp": float(s.schedules.teacher_temp[epoch]),
    }


def _per_s(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def _timing(images: int, train_seconds: float, t0: float) -> dict[str, float]:
    """The log's timing fields (``runlog.TIMING_FIELDS``): the epoch's training throughput and
    its wall time since ``t0``, evaluation included."""
    return {
        "images_per_s": round(_per_s(images, train_seconds), 1),
        "epoch_time_s": round(time.perf_counter() - t0, 3),
    }


def train_one_epoch(
    s: Session, epoch: int, progress: bool, on_step: OnStep | None = None
) -> dict[str, float]:
    """One pass over the training images; returns the epoch's mean loss terms."""
    cfg, rt = s.config, s.runtime
    seed_everything(cfg.seed * 10_007 + epoch)
    mask_rng = random.Random(cfg.seed * 10_007 + epoch + rt.rank * 7919)
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed * 10_007 + epoch + rt.rank)
    teacher_temp = float(s.schedules.teacher_temp[epoch])
    sums: dict[str, float] = {}
    batches = iterate_batches(
        s.train_set,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        epoch=epoch,
        drop_last=True,
        rank=rt.rank,
        world_size=rt.world_size,
        num_workers=cfg.num_workers,
    )
    bar = epoch_bar(
        batches, s.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress and rt.main
    )
    t0 = last = fetched = time.perf_counter()
    for it, (images, _) in enumerate(bar):
        s.phases.add("data", time.perf_counter() - fetched)
        first = cfg.compile and epoch == s.start_epoch and it == 0  # compiles, then steps
        with s.phases("compile" if first else "train_step"):
            parts = train_step(s, images, epoch, it, gen, mask_rng, teacher_temp)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{parts['loss']:.3f}")
        now = time.perf_counter()
        if on_step and rt.main and (now - last >= PROGRESS_EVERY_S or it + 1 == s.steps_per_epoch):
            last = now
            done = (it + 1) * cfg.batch_size * rt.world_size
            on_step(
                {
                    "epoch": epoch + 1,
                    "epochs": cfg.epochs,
                    "step": it + 1,
                    "steps": s.steps_per_epoch,
                    "images_per_s": round(done / max(now - t0, 1e-9), 1),
                    "loss": round(parts["loss"], 4),
                }
            )
        fetched = time.perf_counter()
    n = max(s.steps_per_epoch, 1)
    return {key: value / n for key, value in sums.items()}


def train_step(
    s: Session,
    images: torch.Tensor,
    epoch: int,
    it: int,
    gen: torch.Generator,
    mask_rng: random.Random,
    teacher_temp: float,
) -> dict[str, float]:
    """One optimisation step on a uint8 batch; returns its loss terms."""
    cfg, rt = s.config, s.runtime
    step = epoch * s.steps_per_epoch + it
    set_schedules(s.optimizer, s.schedules.lr[step], s.schedules.wd[step])
    views = torch.cat(s.augment(images.to(rt.device, non_blocking=True), gen))
    if s.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    masks = None
    if cfg.masking:
        masks = sample_masks(len(views), s.grid, cfg.mask_prob, cfg.mask_ratio, mask_rng)
        masks = masks.to(rt.device, non_blocking=True)
    with rt.autocast():
        with torch.no_grad():
            teacher_out = s.teacher(views)
        student_out = s.student(views, masks)
        parts = s.objective(student_out, teacher_out, masks, teacher_temp)
    scalars = parts.scalars()
    if not math.isfinite(scalars["loss"]):
        raise TrainingError(
            f"loss became {scalars['loss']} at epoch {epoch + 1}, step {it + 1}: "
            "lower lr or raise clip_grad / teacher temperature"
        )
    s.optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    clip_per_tensor(s.student.parameters(), cfg.clip_grad)
    if epoch < cfg.freeze_prototypes_epochs:
        freeze_prototypes(s.student)
    s.optimizer.step()
    s.ema(float(s.schedules.momentum[step]))
    s.objective.update_centers(teacher_out)
    return scalars


def _report(s: Session, report: Report | None, epoch: int, metrics: dict[str, Any]) -> bool:
    """Call the report callback on rank 0 and share its decision with every rank."""
    stop = bool(report(epoch, metrics)) if (report and s.runtime.main) else False
    return s.runtime.broadcast_flag(stop)


def _restart_log(s: Session) -> None:
    """Cut ``log.jsonl`` back to the epochs the checkpoint holds (nothing for a fresh run), so
    a resumed run never logs an epoch twice (rank 0)."""
    if s.log_path and s.runtime.main:
        init = [{"epoch": 0, **s.init_metrics}] if s.init_metrics else []
        runlog.restart(s.log_path, [*init, *s.history])


def _log(s: Session, line: dict[str, Any]) -> None:
    """Append one line to ``log.jsonl`` beside the checkpoint (rank 0)."""
    if s.log_path and s.runtime.main:
        runlog.append(s.log_path, line)


def _collapsed_for(history: list[dict[str, Any]], patience: int) -> str | None:
    """The collapse kind if the last ``patience`` evaluations all found one, else None."""
    evaluated = [h.get("collapse") for h in history if "collapse" in h]
    if patience < 1 or len(evaluated) < patience:
        return None
    recent = evaluated[-patience:]
    return recent[-1] if all(status != "ok" for status in recent) else None


def _result(
    s: Session, status: str, started: float, images_per_s: float = 0.0, reason: str | None = None
) -> TrialResult:
    final = s.history[-1] if s.history else {}
    if reason is None and status == "stopped":
        reason = "stopped by the report callback"
    return TrialResult(
        status=status,
        reason=reason,
        epochs_done=s.epochs_done,
        init_metrics=s.init_metrics,
        metrics=final,
        history=tuple(s.history),
        wall_time_s=time.perf_counter() - started,
        images_per_s=images_per_s,
        peak_memory_mb=peak_memory_mb(s.runtime.device),
        checkpoint=str(s.checkpoint_path) if s.checkpoint_path else None,
        world_size=s.runtime.world_size,
        steps_per_epoch=s.steps_per_epoch,
    )
