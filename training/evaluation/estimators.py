"""Label-free quality estimators of a base's embeddings (issue 21): pure functions of an N x D
feature matrix, cheap next to an epoch (one SVD of the held-out [CLS] features).

* :func:`rankme`: the effective rank of the embeddings (Garrido et al., *RankMe*, ICML 2023):
  ``exp`` of the Shannon entropy of the singular values normalised to sum to one (plus a small
  epsilon, as the paper does). ``k`` equal non-zero singular values give exactly ``k``; a
  collapsed embedding gives about 1.
* :func:`alpha_req`: the power-law decay coefficient of the eigenspectrum of the embeddings'
  covariance (Agrawal et al., *α-ReQ*, NeurIPS 2022): the least-squares slope ``α`` of
  ``log λ_i = c − α log i`` over the eigenvalues above a relative floor. ``λ_i ∝ i^-α`` gives
  back ``α``; a flat spectrum gives 0, a fast-decaying (nearly collapsed) one a large ``α``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RANKME_EPS = 1e-7  # added to the normalised singular values (the paper's epsilon)
SPECTRUM_FLOOR = 1e-10  # eigenvalues below this fraction of the largest are numerical zeros


def _matrix(features: Tensor, name: str) -> Tensor:
    if features.dim() != 2 or min(features.shape) < 2:
        shape = tuple(features.shape)
        raise ValueError(f"{name} needs an N x D feature matrix with N, D >= 2, got {shape}")
    return features.detach().to(torch.float64)


def rankme(features: Tensor, eps: float = RANKME_EPS) -> float:
    """Effective rank ``exp(−Σ p_k log p_k)``, ``p_k = σ_k / Σσ + eps`` (σ: singular values of
    the N x D embedding matrix as it is, not centred, as in the paper)."""
    sigma = torch.linalg.svdvals(_matrix(features, "rankme"))
    total = float(sigma.sum())
    if total <= 0:
        return 1.0
    p = sigma / total + eps
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))  # 0 log 0 = 0


def eigenspectrum(features: Tensor) -> Tensor:
    """Eigenvalues of the embeddings' covariance, largest first (float64)."""
    x = _matrix(features, "eigenspectrum")
    x = x - x.mean(0, keepdim=True)
    sigma = torch.linalg.svdvals(x)
    return sigma.square() / (x.shape[0] - 1)


def alpha_req(features: Tensor) -> float:
    """The decay ``α`` of the covariance eigenspectrum, fitted as a line on log-log axes over
    the eigenvalues above ``SPECTRUM_FLOOR`` × the largest (NaN with fewer than 2 of them)."""
    lam = eigenspectrum(features)
    if len(lam) == 0 or float(lam[0]) <= 0:
        return math.nan
    lam = lam[lam > SPECTRUM_FLOOR * lam[0]]
    if len(lam) < 2:
        return math.nan
    x = torch.arange(1, len(lam) + 1, dtype=torch.float64).log()
    y = lam.log()
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / xc.square().sum())
    return -slope


def estimator_metrics(features: Tensor) -> dict[str, float]:
    """Every estimator of one embedding matrix, keyed as in :mod:`training.metrics`."""
    return {"rankme": rankme(features), "alpha_req": alpha_req(features)}
