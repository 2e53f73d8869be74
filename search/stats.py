"""Small rank statistics for the search's evidence (method §4, §10).

The paper's central claim is that a larger base/head discrepancy makes a better base; the search
checks it per base with Spearman's ρ between a discrepancy and a probe accuracy. Proxy runs give
few heads and few seeds (method §10: about 1.8 pp seed SD on k-NN), so ρ always comes with a
bootstrap interval, and every mean with its sample SD. Pure numpy, no scipy, so the formulas
are the ones the tests work out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values`` in ascending order; tied values share the average of their ranks.

    ``[10, 20, 20, 30]`` → ``[1, 2.5, 2.5, 4]``. Values must be finite: a NaN has no place in
    an order, so it raises instead of landing at an arbitrary rank.
    """
    a = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError("average_ranks needs finite values; drop NaN/inf entries first")
    order = np.argsort(a, kind="mergesort")
    _, first, counts = np.unique(a[order], return_index=True, return_counts=True)
    # A tie group occupies sorted positions first+1 .. first+count; its average is below.
    ranks = np.empty(a.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks of ``x`` and ``y``.

    NaN when there are fewer than 3 pairs, when either side is constant (ρ is undefined), or
    when any value is not finite (callers drop incomplete pairs before asking).
    """
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.size != b.size:
        raise ValueError(f"spearman needs pairs: got {a.size} x values and {b.size} y values")
    if a.size < 3 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    ra = average_ranks(a) - (a.size + 1) / 2.0
    rb = average_ranks(b) - (b.size + 1) / 2.0
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(ra * rb) / denom, -1.0, 1.0))


def bootstrap_ci(
    x: Sequence[float],
    y: Sequence[float],
    stat: Callable[[np.ndarray, np.ndarray], float] = spearman,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over pairs resampled with replacement.

    Resamples where the statistic is undefined (NaN, e.g. every drawn pair alike) are skipped.
    If fewer than half of the ``n_boot`` resamples are usable, or there are fewer than 3 pairs,
    the interval is ``(nan, nan)``: too little data to say anything honest. The same ``seed``
    gives the same interval.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.size != b.size:
        raise ValueError(f"bootstrap_ci needs pairs: got {a.size} x and {b.size} y values")
    nan = float("nan")
    if a.size < 3:
        return nan, nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, a.size, size=(n_boot, a.size))
    if stat is spearman and np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
        values = _spearman_resamples(a, b, draws)
    else:
        values = np.array([stat(a[idx], b[idx]) for idx in draws], dtype=float)
    values = values[np.isfinite(values)]
    if values.size < max(1, n_boot / 2):
        return nan, nan
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _ranks_in_resamples(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average rank of each original value within each resample (rows of ``counts``).

    Per distinct value, the rank is the number of drawn values below it plus (its own number
    of draws + 1) / 2: the same tie-averaged rank :func:`average_ranks` gives the resample.
    """
    _, group = np.unique(values, return_inverse=True)
    per_value = np.zeros((group.max() + 1, counts.shape[0]))
    np.add.at(per_value, group, counts.T)
    per_value = per_value.T
    ranks = np.cumsum(per_value, axis=1) - per_value + (per_value + 1.0) / 2.0
    return ranks[:, group]


def _spearman_resamples(a: np.ndarray, b: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """:func:`spearman` of every resample at once (one row of ``draws`` each), NaN if undefined.

    A resample is the original pairs with multiplicities, so its ρ is a count-weighted Pearson
    over the original pairs of their ranks within the resample. Vectorised because the plain
    loop costs ~0.3 s per 2,000 resamples, and the ranking computes six of them per request.
    """
    n_boot, n = draws.shape
    flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)
    centre = (n + 1) / 2.0  # the mean of average ranks 1..n, whatever the ties
    ra = _ranks_in_resamples(a, counts) - centre
    rb = _ranks_in_resamples(b, counts) - centre
    num = np.sum(counts * ra * rb, axis=1)
    den = np.sqrt(np.sum(counts * ra * ra, axis=1) * np.sum(counts * rb * rb, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.clip(num / den, -1.0, 1.0), np.nan)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof=1) over seeds; SD is 0.0 for one value, ``(nan, nan)`` for none.

    A NaN value propagates to both (a diverged seed should show, not vanish from the mean).
    """
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        return float("nan"), float("nan")
    if a.size == 1:
        return float(a[0]), 0.0 if np.isfinite(a[0]) else float("nan")
    return float(np.mean(a)), float(np.std(a, ddof=1))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[dict[str, float | bool]]:
    """Holm's step-down correction of ``p_values`` (one family), in the input order.

    Each entry: ``p_holm`` (the adjusted p-value: the running maximum of ``(m − i) · p_(i)``
    over the sorted p-values, capped at 1), ``level`` (the confidence level Holm tested that
    hypothesis at: ``1 − alpha / (m − i)`` for the i-th smallest, i from 0) and ``reject``
    (``p_holm <= alpha``). NaN p-values are left out of the family and never rejected.
    """
    p = np.asarray(p_values, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    out: list[dict[str, float | bool]] = [
        {"p_holm": float("nan"), "level": float("nan"), "reject": False} for _ in p
    ]
    running = 0.0
    for i, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = {
            "p_holm": float(running),
            "level": 1.0 - alpha / (m - i),
            "reject": bool(running <= alpha),
        }
    return out


def paired_t(differences: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Paired t-test of ``differences`` (one per seed) against 0: mean, SD, n, two-sided p and
    the t-interval of the mean at ``level`` (NaN below 2 values; p 1 when every difference is 0)."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    nan = float("nan")
    if n < 2:
        mean = float(d[0]) if n else nan
        return {"mean": mean, "sd": nan, "n": n, "p": nan, "lo": nan, "hi": nan}
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return {"mean": mean, "sd": 0.0, "n": n, "p": p, "lo": mean, "hi": mean}
    se = sd / math.sqrt(n)
    t = mean / se
    p = 2 * t_sf(abs(t), n - 1)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    return {"mean": mean, "sd": sd, "n": n, "p": p, "lo": mean - half, "hi": mean + half}


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean of paired ``differences``:
    the share of the 2^n sign patterns whose |mean| is at least the observed one (n <= 20)."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n == 0 or n > 20:
        return float("nan")
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    means = np.abs((signs * d).mean(axis=1))
    return float(np.mean(means >= abs(d.mean()) - 1e-12))


def permutation_p(
    x: Sequence[float], y: Sequence[float], *, n_perm: int = 10_000, seed: int = 0
) -> float:
    """Two-sided permutation p-value of Spearman's ρ(x, y): the share of ``n_perm`` seeded
    shuffles of ``y`` (plus the observed order) with |ρ| at least the observed |ρ|."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    observed = spearman(a, b)
    if not math.isfinite(observed):
        return float("nan")
    ra = average_ranks(a) - (a.size + 1) / 2.0
    rb = average_ranks(b) - (b.size + 1) / 2.0
    rng = np.random.default_rng(seed)
    shuffled = np.array([rb[rng.permutation(rb.size)] for _ in range(n_perm)])
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    rhos = shuffled @ ra / denom
    hits = np.sum(np.abs(rhos) >= abs(observed) - 1e-12) + 1
    return float(hits / (n_perm + 1))


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified
    Lentz), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where that converges faster."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return tail if t >= 0 else 1.0 - tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_sf`, to 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_sf(mid, df) > 1.0 - q else (lo, mid)
    return (lo + hi) / 2.0
