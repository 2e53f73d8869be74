"""Evaluation of a run: probes on frozen teacher-base features (method §8) and the label-free
discrepancies of every head (method §4), on held-out images in eval mode with fixed views."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from training.data import ImageSet, eval_view, iterate_batches
from training.evaluation.collapse import classify, target_stats, worst
from training.evaluation.discrepancy import cka_discrepancy, loss_discrepancy
from training.evaluation.probes import knn_accuracy, linear_probe, with_sampling_se
from training.model.network import HSSLNetwork
from training.objective.hssl import HSSLObjective
from training.objective.targets import target_probs
from training.runtime.phases import untimed


@dataclass
class Embeddings:
    """Per-image outputs of one network on one image set (CPU, float32)."""

    base: Tensor  # N x C   base global ([CLS])
    patch_mean: Tensor  # N x C   mean base patch token
    base_logits: Tensor  # N x K
    heads: list[Tensor]  # per head: N x C
    head_logits: list[Tensor]  # per head: N x K
    labels: Tensor
    patch_logits: Tensor | None = None  # first ``patch_limit`` images: n x T x K


@torch.no_grad()
def embed_set(
    net: HSSLNetwork,
    images: ImageSet,
    *,
    img_size: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    flip: bool = False,
    limit: int | None = None,
    patch_limit: int = 0,
) -> Embeddings:
    """Run ``net`` in eval mode over ``images`` (optionally horizontally flipped, the second
    fixed view) and collect its outputs (and the patch logits of the first ``patch_limit``)."""
    was_training = net.training
    net.eval()
    parts: dict[str, list] = {k: [] for k in ("base", "patch", "logits", "labels", "plogits")}
    heads: list[list[Tensor]] = [[] for _ in net.heads]
    head_logits: list[list[Tensor]] = [[] for _ in net.heads]
    seen = 0
    batches = iterate_batches(images, batch_size, shuffle=False, seed=0, drop_last=False)
    for batch, labels in batches:
        if limit is not None and seen >= limit:
            break
        x = eval_view(batch.to(device, non_blocking=True), img_size)
        if flip:
            x = x.flip(-1)
        with autocast or contextlib.nullcontext():
            out, patch_mean = net.embed(x, patch_logits=seen < patch_limit)
        parts["base"].append(out.base_features.float().cpu())
        parts["patch"].append(patch_mean.float().cpu())
        parts["logits"].append(out.base_logits.float().cpu())
        parts["labels"].append(labels)
        if out.patch_logits is not None:
            parts["plogits"].append(out.patch_logits[: patch_limit - seen].float().cpu())
        for k in range(len(net.heads)):
            heads[k].append(out.head_features[k].float().cpu())
            head_logits[k].append(out.head_logits[k].float().cpu())
        seen += len(labels)
    net.train(was_training)
    cut = slice(0, limit)
    return Embeddings(
        base=torch.cat(parts["base"])[cut],
        patch_mean=torch.cat(parts["patch"])[cut],
        base_logits=torch.cat(parts["logits"])[cut],
        heads=[torch.cat(h)[cut] for h in heads],
        head_logits=[torch.cat(h)[cut] for h in head_logits],
        labels=torch.cat(parts["labels"])[cut],
        patch_logits=torch.cat(parts["plogits"]) if parts["plogits"] else None,
    )


def probe_metrics(
    bank: Embeddings,
    query: Embeddings,
    *,
    num_classes: int,
    k: int,
    temperature: float,
    linear: bool,
    seed: int,
    phases: Callable[[str], contextlib.AbstractContextManager] = untimed,
) -> dict[str, float]:
    """Weighted k-NN on [CLS] and on the mean patch token; optionally a linear probe on both;
    each accuracy with its binomial sampling SE (``<key>_se``) and the images read
    (``heldout_n``). ``phases`` times the ``knn`` and ``linear`` parts."""
    with phases("knn"):
        metrics = {
            "knn_cls": knn_accuracy(
                bank.base,
                bank.labels,
                query.base,
                query.labels,
                num_classes=num_classes,
                k=k,
                temperature=temperature,
            ),
            "knn_patch": knn_accuracy(
                bank.patch_mean,
                bank.labels,
                query.patch_mean,
                query.labels,
                num_classes=num_classes,
                k=k,
                temperature=temperature,
            ),
        }
    if linear:
        with phases("linear"):
            train_x = torch.cat([bank.base, bank.patch_mean], 1)
            test_x = torch.cat([query.base, query.patch_mean], 1)
            metrics["linear"] = linear_probe(
                train_x, bank.labels, test_x, query.labels, num_classes=num_classes, seed=seed
            )
    n = len(query.labels)
    return {**with_sampling_se(metrics, n), "heldout_n": float(n)}


def discrepancy_metrics(
    teacher_views: list[Embeddings],
    student_views: list[Embeddings],
    objective: HSSLObjective,
    *,
    teacher_temp: float,
    student_temp: float,
) -> list[dict[str, float]]:
    """Per head: D_loss (held-out L_cls1: teacher head target vs student base prediction over
    the fixed views), H(target), D_kl = D_loss − H(target), and D_cka between the teacher's base
    and head global features (method §4)."""
    results = []
    for k in range(len(teacher_views[0].heads)):
        center = objective.global_centers[k].float().cpu()
        targets = [
            target_probs(view.head_logits[k], center, teacher_temp) for view in teacher_views
        ]
        predictions = [view.base_logits for view in student_views]
        row = loss_discrepancy(targets, predictions, student_temp)
        row["d_cka"] = cka_discrepancy(teacher_views[0].base, teacher_views[0].heads[k])
        results.append(row)
    return results


def collapse_metrics(
    query: Embeddings, objective: HSSLObjective, *, teacher_temp: float
) -> dict[str, object]:
    """Collapse diagnostics (method §11) of every target term on held-out images.

    Flat keys describe the global target the base learns from (the baseline's [CLS]; with
    heads, the mean over heads and the worst status): ``target_spread``, ``target_entropy``,
    ``target_entropy_of_mean``, ``collapse``; ``patch_*`` the masked-patch term; ``ln_k``.
    ``head_rows`` holds one row per head (the same keys without the patch ones).
    """
    globals_ = query.head_logits if objective.num_heads else [query.base_logits]
    rows = []
    for k, logits in enumerate(globals_):
        stats = target_stats(logits, objective.global_target_probs(k, logits, teacher_temp))
        rows.append(
            {
                "target_spread": stats["spread"],
                "target_entropy": stats["entropy"],
                "target_entropy_of_mean": stats["entropy_of_mean"],
                "target_information": stats["information"],
                "collapse": classify(stats),
            }
        )
    out: dict[str, object] = {
        key: sum(float(r[key]) for r in rows) / len(rows)
        for key in (
            "target_spread",
            "target_entropy",
            "target_entropy_of_mean",
            "target_information",
        )
    }
    out["collapse"] = worst([str(r["collapse"]) for r in rows])
    out["ln_k"] = math.log(query.base_logits.shape[-1])
    if objective.masking and query.patch_logits is not None and len(query.patch_logits) > 0:
        center = objective.patch_center.float().cpu()
        stats = target_stats(
            query.patch_logits, target_probs(query.patch_logits, center, teacher_temp)
        )
        out.update(
            patch_spread=stats["spread"],
            patch_entropy=stats["entropy"],
            patch_entropy_of_mean=stats["entropy_of_mean"],
            patch_information=stats["information"],
            patch_collapse=classify(stats),
        )
    if objective.num_heads:
        out["head_rows"] = rows
    return out
