"""Evaluation of a run at one epoch: ``evaluate_session(session, epoch, ...)`` (method §8, §11).

Probes on the teacher base (each with its sampling SE), the label-free estimators of its
embeddings (RankMe, α-ReQ), the collapse diagnostics of the global targets and every head's
discrepancies, computed by rank 0 while the other ranks wait. At initialisation (epoch 0) the
BN statistics are first recalibrated and the raw-pixel reference measured: the honest floor
(``training.evaluation.floor``).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from training.evaluation.estimators import estimator_metrics
from training.evaluation.evaluate import (
    Embeddings,
    collapse_metrics,
    discrepancy_metrics,
    embed_set,
    probe_metrics,
)
from training.evaluation.floor import copy_bn_statistics, pixel_probes, recalibrate_bn
from training.evaluation.probes import with_sampling_se
from training.loop.session import Session
from training.model.teacher import same_weights

PATCH_DIAGNOSTIC_IMAGES = 256  # held-out images whose patch targets the diagnostics read


def evaluate_session(s: Session, epoch: int, *, final: bool, linear: bool) -> dict[str, Any]:
    """Probes on the teacher base, collapse diagnostics and per-head discrepancies (rank 0
    computes, all wait). At initialisation (epoch 0) BN statistics are first recalibrated and
    the raw-pixel reference is measured: the honest floor (``training.evaluation.floor``)."""
    metrics = _evaluate_on_main(s, epoch, final, linear) if s.runtime.main else {}
    if s.runtime.main and s.config.finetune_probe and (epoch == 0 or final):
        with s.phases("finetune"):
            metrics.update(_finetune_probe(s))
    if s.runtime.world_size > 1:
        dist.barrier()
    return metrics


def _evaluate_on_main(s: Session, epoch: int, final: bool, linear: bool) -> dict[str, Any]:
    """Probes and estimators on every held-out image at initialisation and at the end, on the
    fixed interim subset (``TrialConfig.interim_eval_images``) in between; the collapse
    diagnostics and discrepancies on the interim subset at every evaluation (comparable across
    epochs, and a fraction of the cost: they read four passes of the network)."""
    cfg, timed = s.config, s.phases
    # at initialisation the teacher is the student's exact copy: one network's passes serve both
    twins = epoch == 0 and same_weights(s.teacher, s.network)
    if epoch == 0 and cfg.recalibrate_bn:
        with timed("bn_recalibration"):
            for net in (s.teacher,) if twins else (s.teacher, s.network):
                recalibrate_bn(
                    net, s.train_set, img_size=cfg.base.img_size, device=s.runtime.device
                )
            if twins:
                copy_bn_statistics(s.teacher, s.network)
    kw = _embed_kwargs(s)
    whole = (epoch == 0 or final) and s.interim_set is not s.heldout_set
    with timed("features"):
        bank = embed_set(s.teacher, s.train_set, limit=cfg.eval_bank_limit, **kw)
        interim = embed_set(s.teacher, s.interim_set, patch_limit=PATCH_DIAGNOSTIC_IMAGES, **kw)
        query = embed_set(s.teacher, s.heldout_set, **kw) if whole else interim
    metrics: dict[str, Any] = dict(
        probe_metrics(
            bank,
            query,
            num_classes=len(s.train_set.classes),
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            linear=linear,
            seed=cfg.seed,
            phases=timed,
        )
    )
    with timed("estimators"):
        metrics.update(estimator_metrics(query.base))
    if epoch == 0 and cfg.pixel_reference:
        with timed("pixels"):
            metrics.update(_pixel_reference(s, linear))
    temp = float(s.schedules.teacher_temp[min(epoch, cfg.epochs - 1)])
    with timed("collapse"):
        diagnostics = collapse_metrics(interim, s.objective, teacher_temp=temp)
    head_rows = diagnostics.pop("head_rows", [])
    metrics.update(diagnostics)
    if cfg.heads:
        with timed("discrepancies"):
            metrics.update(_head_metrics(s, interim, head_rows, temp, twins=twins))
    return metrics


def _finetune_probe(s: Session) -> dict[str, float]:
    """Top-1 after a short proxy fine-tune of the teacher base (at epoch 0: of the random-init
    network, the probe's floor); :mod:`training.finetune.probe`."""
    from training.finetune.probe import finetune_probe  # timm's fine-tuning parts, on demand

    cfg = s.config
    top1 = finetune_probe(
        s.teacher.base.model,
        cfg.base,
        s.train_set,
        s.heldout_set,
        runtime=s.runtime,
        epochs=cfg.finetune_epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    return with_sampling_se(top1, len(s.heldout_set))


def _embed_kwargs(s: Session) -> dict[str, Any]:
    rt = s.runtime
    size = s.config.base.img_size
    return dict(img_size=size, batch_size=256, device=rt.device, autocast=rt.autocast())


def _pixel_reference(s: Session, linear: bool) -> dict[str, Any]:
    """k-NN and linear probes on raw pixels: the floor beside the random-init one."""
    cfg = s.config
    return pixel_probes(
        s.train_set,
        s.heldout_set,
        img_size=cfg.base.img_size,
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
        linear=linear,
        seed=cfg.seed,
        bank_limit=cfg.eval_bank_limit,
    )


def _head_metrics(
    s: Session,
    query: Embeddings,
    head_rows: list[dict[str, Any]],
    teacher_temp: float,
    *,
    twins: bool = False,
) -> dict[str, Any]:
    """``heads``: one row per head (its discrepancies and target diagnostics) on two views of
    the held-out images (plain and flipped); with one head its row is also at the top level.
    ``twins``: the student holds the teacher's weights, so the teacher's views are its own."""
    cfg, kw = s.config, _embed_kwargs(s)
    images = s.interim_set
    teacher_views = [query, embed_set(s.teacher, images, flip=True, **kw)]
    if twins:
        student_views = teacher_views
    else:
        student_views = [embed_set(s.network, images, flip=f, **kw) for f in (False, True)]
    rows = discrepancy_metrics(
        teacher_views,
        student_views,
        s.objective,
        teacher_temp=teacher_temp,
        student_temp=cfg.student_temp,
    )
    metrics: dict[str, Any] = {
        "heads": [
            {"head": h.label(), **row, **diag}
            for h, row, diag in zip(cfg.heads, rows, head_rows, strict=True)
        ]
    }
    if len(rows) == 1:
        metrics.update(rows[0])
    return metrics
