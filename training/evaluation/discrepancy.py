"""Architecture discrepancy between a base and an auxiliary head (method §3, §4).

Two label-free measures, both taken on held-out images:

* **Loss discrepancy** (method §4): the held-out base ← head cross-entropy ``L_cls1`` of method §3,
  i.e. how hard it is for the base to predict the head's sharpened, centred targets. Raw
  ``D_loss`` is dominated by the entropy ``H(Ta)`` of the head's targets and can rank heads
  backwards, so heads are ranked by ``D_kl = D_loss - H(Ta)``, the mean KL divergence from the
  head target to the base prediction; all three numbers are reported.
* **CKA discrepancy** (method §4): ``1 - linear CKA`` of base and head global features on a fixed
  probe set.

The building blocks (:func:`~training.objective.targets.target_probs`, ``cross_entropy``,
``entropy``) are the objective's method §3 formulas; the aggregate measures return plain floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from training.errors import HSSLError
from training.objective.targets import cross_entropy, entropy


class DegenerateFeaturesError(HSSLError, ValueError):
    """Features with no variation across samples, for which CKA is undefined.

    Raised rather than returning NaN so that a collapsed representation is reported where it
    is found instead of silently turning a ranking into NaNs; callers that want to go on can
    catch it (it is also a ``ValueError``).
    """


def loss_discrepancy(
    head_targets: Sequence[Tensor], base_logits: Sequence[Tensor], student_temp: float
) -> dict[str, float]:
    """Loss discrepancy ``D_loss``, target entropy ``H_target`` and ``D_kl`` (method §3, §4).

    ``head_targets[q]`` are the head's target probabilities for view ``q`` (already centred and
    sharpened, e.g. by :func:`target_probs`); ``base_logits[v]`` are the base student's logits
    for view ``v``. As in the L_cls1 term of method §3, only cross-view pairs ``q != v`` count:

        D_loss   = mean over pairs (q, v) of mean_batch H(target_q, softmax(base_v / τs))
        H_target = mean over the same pairs of mean_batch entropy(target_q)
        D_kl     = D_loss - H_target = mean over pairs of mean_batch KL(target_q || base_v)

    so ``D_kl >= 0``, with equality exactly when the base predicts every target exactly.
    ``H_target`` is weighted over the same pairs as ``D_loss`` so that the difference is a KL.

    Views are matched by index. There may be more base views than target views (the DINO/iBOT
    convention: the first ``len(head_targets)`` base views are the same crops as the targets,
    any further ones are extra student crops); then every target view pairs with every base
    view of a different index. **Single view**: when there is one target view and one base
    view no ``q != v`` pair exists, and the same-view pair ``(0, 0)`` is used instead.

    Computed without gradients in float64, since ``D_kl`` is a small difference of two numbers
    near ``ln K``.

    Args:
        head_targets: ``n_t >= 1`` tensors of shape ``(B, K)``, rows are probabilities.
        base_logits: ``n_s >= n_t`` tensors of shape ``(B, K)``.
        student_temp: student temperature ``τs`` > 0.

    Returns:
        ``{"d_loss": ..., "h_target": ..., "d_kl": ...}`` as Python floats (nats).

    Raises:
        ValueError: on empty inputs, fewer base views than target views, shape mismatches,
            targets that are not probability rows, or a non-positive temperature.
    """
    _check_views(head_targets, base_logits, student_temp)
    with torch.no_grad():
        targets = [t.detach().to(torch.float64) for t in head_targets]
        logits = [s.detach().to(torch.float64) for s in base_logits]
        _check_probability_rows(targets)
        pairs = _cross_view_pairs(len(targets), len(logits))
        target_entropy = [entropy(t).mean() for t in targets]
        d_loss = torch.stack(
            [cross_entropy(targets[q], logits[v], student_temp).mean() for q, v in pairs]
        ).mean()
        h_target = torch.stack([target_entropy[q] for q, _ in pairs]).mean()
    d_loss_f, h_target_f = d_loss.item(), h_target.item()
    return {"d_loss": d_loss_f, "h_target": h_target_f, "d_kl": d_loss_f - h_target_f}


def _cross_view_pairs(n_targets: int, n_students: int) -> list[tuple[int, int]]:
    """Every (target view q, student view v) with q != v; ``[(0, 0)]`` when there is none
    (one view each), as :func:`loss_discrepancy` documents."""
    pairs = [(q, v) for q in range(n_targets) for v in range(n_students) if q != v]
    return pairs or [(0, 0)]


def _check_views(
    head_targets: Sequence[Tensor], base_logits: Sequence[Tensor], student_temp: float
) -> None:
    """Raise ``ValueError`` unless the views are non-empty (B, K) tensors of one shape, with at
    least as many base views as target views, and the temperature is positive."""
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    n_t, n_s = len(head_targets), len(base_logits)
    if n_t == 0:
        raise ValueError("loss_discrepancy needs at least one head-target view, got none")
    if n_s < n_t:
        raise ValueError(
            f"loss_discrepancy needs at least as many base views as target views "
            f"(views are matched by index), got {n_s} base and {n_t} target views"
        )
    shape = tuple(head_targets[0].shape)
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"each view must be a non-empty (B, K) tensor, got shape {shape}")
    for name, views in (("head_targets", head_targets), ("base_logits", base_logits)):
        for i, view in enumerate(views):
            if tuple(view.shape) != shape:
                raise ValueError(
                    f"{name}[{i}] has shape {tuple(view.shape)}, expected {shape} like "
                    f"head_targets[0]"
                )


def _check_probability_rows(targets: Sequence[Tensor]) -> None:
    """Raise ``ValueError`` unless every row is non-negative and sums to 1 (to 1e-3)."""
    one = torch.ones((), dtype=torch.float64)
    for q, t in enumerate(targets):
        if bool((t < 0).any()) or not torch.allclose(t.sum(dim=-1), one, atol=1e-3):
            raise ValueError(
                f"head_targets[{q}] rows must be probabilities (non-negative, summing to "
                f"1); pass target_probs(...) output, not logits"
            )


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two feature sets on the same samples (method §4).

    With ``X`` (n x d1) and ``Y`` (n x d2) column-centred,

        CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)

    (Kornblith et al., 2019). It lies in [0, 1], is 1 for ``CKA(X, X)``, is invariant to
    orthogonal transforms and isotropic scaling of either feature set (so it compares
    representations, not coordinates), and for one-dimensional features equals the squared
    Pearson correlation. The feature-space form costs O(n·(d1 + d2)²), linear in ``n``, which
    suits a probe set with many more images than feature dimensions. Computed in float64; the
    result is clipped to [0, 1] to remove rounding overshoot.

    Raises:
        ValueError: if the inputs are not 2-D, differ in the number of rows, or hold NaN/inf.
        DegenerateFeaturesError: if either feature set is constant across samples (including
            ``n = 1``): the centred features are zero and CKA is 0/0, undefined. This is what a
            fully collapsed representation looks like, so it is reported, not hidden as NaN.
    """
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(
            f"linear_cka needs 2-D (n, d) features, got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs the same samples in both sets, got {x.shape[0]} and "
            f"{y.shape[0]} rows"
        )
    with torch.no_grad():
        centred = []
        for name, feats in (("x", x), ("y", y)):
            f = feats.detach().to(torch.float64)
            if not bool(torch.isfinite(f).all()):
                raise ValueError(f"linear_cka: {name} contains NaN or inf")
            fc = f - f.mean(dim=0, keepdim=True)
            # Constant columns centre to zero up to rounding relative to their magnitude.
            if float(fc.norm()) <= 1e-9 * float(f.norm()) or float(fc.norm()) == 0.0:
                raise DegenerateFeaturesError(
                    f"linear CKA is undefined: features {name} ({tuple(feats.shape)}) do not vary "
                    f"across the {feats.shape[0]} samples (constant or a single sample); the "
                    f"representation may have collapsed"
                )
            centred.append(fc)
        xc, yc = centred
        cross = (yc.T @ xc).pow(2).sum()
        norm_x = (xc.T @ xc).norm()
        norm_y = (yc.T @ yc).norm()
        value = float(cross / (norm_x * norm_y))
    return min(max(value, 0.0), 1.0)


def cka_discrepancy(x: Tensor, y: Tensor) -> float:
    """``D_cka = 1 - linear_cka(x, y)`` (method §4): 0 for one representation, → 1 unrelated.

    Raises the same errors as :func:`linear_cka`.
    """
    return 1.0 - linear_cka(x, y)
