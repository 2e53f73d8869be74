"""Collapse diagnostics of the self-distillation targets (method §11).

A DINO/iBOT objective can fail in two ways that a loss curve does not show:

* **uniform**: the centred, sharpened teacher targets are ≈ the same near-uniform distribution
  for every image (the teacher's logits no longer vary enough across images to survive the
  centring), so they tell the student nothing about the image;
* **one-hot**: every image is sent to the same prototype (the mean target is one-hot), the
  classic "dimensional" collapse the centring is meant to prevent.

:func:`target_stats` measures a batch of teacher logits with the loss's own target transform;
:func:`classify` turns the numbers into ``"ok"``, ``"uniform"`` or ``"one-hot"`` with the
documented thresholds below. Both are pure functions on tensors / floats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training.objective.targets import entropy

# A target is "uniform" when it carries almost no information about the image: the mutual
# information between image and prototype, I = H(mean target) − mean H(target), is below this
# many nats. Measured at the study's CPU scale (K 256, ln K 5.55; docs/study/recipes): the
# faithful recipe's baseline 0.010 after 2 epochs and 0.002–0.005 from epoch 4 on (k-NN flat at
# the floor); the projector-BN baseline 0.033–0.12 while its k-NN rose 9 pp; a fresh network
# 0.13–1.5. (The per-image entropy alone does not separate them: 5.54 vs 5.46 of 5.55.)
UNIFORM_MI = 0.02
# A target is "one-hot" when the entropy of the *mean* target (how many prototypes the batch
# uses, in nats) is below this fraction of ln K: e.g. fewer than ~3 of 256 prototypes.
ONE_HOT_FRACTION = 0.2
STATUSES = ("ok", "uniform", "one-hot")


@torch.no_grad()
def target_stats(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Spread and entropies of one target term on N images.

    ``logits``: raw teacher logits (N x K, or N x T x K for patch tokens, flattened over
    tokens); ``targets``: the probabilities the loss would use for them (same shape).

    - ``spread``: std across images of each logit, averaged over the K prototypes (how much the
      teacher's output still depends on the image);
    - ``entropy``: mean per-image target entropy (nats; ln K = uniform);
    - ``entropy_of_mean``: entropy of the batch-mean target (ln K = every prototype used
      equally, 0 = one prototype for everything);
    - ``information``: ``entropy_of_mean − entropy``, the mutual information between image and
      prototype under the targets (0 when every image gets the same target, uniform or not);
    - ``ln_k``: the maximum, for reference.
    """
    k = logits.shape[-1]
    flat_logits = logits.reshape(-1, k).double()
    flat_targets = targets.reshape(-1, k).double()
    if flat_logits.shape[0] < 2:
        raise ValueError("target_stats needs at least two images to measure a spread")
    per_image = float(entropy(flat_targets).mean())
    of_mean = float(entropy(flat_targets.mean(0)))
    return {
        "spread": float(flat_logits.std(dim=0).mean()),
        "entropy": per_image,
        "entropy_of_mean": of_mean,
        "information": of_mean - per_image,
        "ln_k": math.log(k),
    }


def classify(stats: dict[str, float]) -> str:
    """``"uniform"``, ``"one-hot"`` or ``"ok"`` for one :func:`target_stats` result."""
    if stats["entropy_of_mean"] <= ONE_HOT_FRACTION * stats["ln_k"]:
        return "one-hot"
    if stats["entropy_of_mean"] - stats["entropy"] < UNIFORM_MI:
        return "uniform"
    return "ok"


def worst(statuses: list[str]) -> str:
    """One status for several targets: the first collapsed one, else ``"ok"``."""
    return next((s for s in statuses if s != "ok"), "ok")
