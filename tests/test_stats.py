"""Tests of the rank statistics in search/stats.py against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.stats import average_ranks, bootstrap_ci, mean_sd, spearman


def test_average_ranks_ties_share_the_mean_rank():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    # Input order is kept: the ranks go back to the positions of the values.
    assert average_ranks([30, 10, 20, 10]).tolist() == [4.0, 1.5, 3.0, 1.5]
    assert average_ranks([5, 5, 5]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks([]).tolist() == []


def test_average_ranks_refuses_nan():
    with pytest.raises(ValueError, match="finite"):
        average_ranks([1.0, float("nan"), 2.0])


def test_spearman_monotone_and_reversed():
    x = [0.1, 0.5, 0.7, 2.0, 9.0]
    assert spearman(x, [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert spearman(x, [math.exp(v) for v in x]) == pytest.approx(1.0)  # any monotone map
    assert spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_with_ties_by_hand():
    # x = [1, 2, 3, 4]     -> ranks [1, 2, 3, 4],     centred (mean 2.5) [-1.5, -0.5, 0.5, 1.5]
    # y = [10, 30, 20, 20] -> ranks [1, 4, 2.5, 2.5], centred             [-1.5, 1.5, 0, 0]
    # sum of products = 2.25 - 0.75 + 0 + 0 = 1.5
    # sum of squares: x = 2.25 + 0.25 + 0.25 + 2.25 = 5, y = 2.25 + 2.25 = 4.5
    # rho = 1.5 / sqrt(5 * 4.5) = 1.5 / sqrt(22.5) = sqrt(0.1) ≈ 0.316228
    # (the no-ties shortcut 1 - 6·Σd²/(n(n²-1)) with d = [0, -2, 0.5, 1.5] gives 1 - 39/60 = 0.35,
    # which is wrong with ties: the implementation must use Pearson on the ranks.)
    rho = spearman([1, 2, 3, 4], [10, 30, 20, 20])
    assert rho == pytest.approx(math.sqrt(0.1), abs=1e-12)
    assert rho != pytest.approx(0.35, abs=1e-3)


def test_spearman_undefined_cases_are_nan():
    assert math.isnan(spearman([1, 2], [2, 1]))  # fewer than 3 pairs
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))  # constant side
    assert math.isnan(spearman([7, 7, 7], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, float("nan")], [1, 2, 3]))
    with pytest.raises(ValueError, match="pairs"):
        spearman([1, 2, 3], [1, 2])


def test_bootstrap_ci_contains_a_strong_correlation_and_is_deterministic():
    rng = np.random.default_rng(1)
    x = np.arange(20.0)
    y = x + rng.normal(0.0, 2.0, size=20)
    rho = spearman(x, y)
    assert rho > 0.8
    lo, hi = bootstrap_ci(x, y, n_boot=500, seed=3)
    assert lo <= rho <= hi
    assert 0.5 < lo < hi <= 1.0
    assert bootstrap_ci(x, y, n_boot=500, seed=3) == (lo, hi)
    assert bootstrap_ci(x, y, n_boot=500, seed=4) != (lo, hi)


def test_bootstrap_ci_vectorised_spearman_matches_the_plain_loop():
    # bootstrap_ci computes Spearman on all resamples at once; a wrapper forces the per-resample
    # loop over the same draws, so the two intervals must agree (ties included).
    x = [0.1, 0.2, 0.2, 0.4, 0.5, 0.5, 0.5, 0.9]
    y = [1, 3, 2, 2, 5, 4, 4, 8]
    fast = bootstrap_ci(x, y, n_boot=300, level=0.8, seed=7)
    slow = bootstrap_ci(x, y, lambda a, b: spearman(a, b), n_boot=300, level=0.8, seed=7)
    assert fast == pytest.approx(slow, abs=1e-12)
    assert fast[0] < fast[1]


def test_bootstrap_ci_narrows_with_a_lower_level():
    x, y = list(range(12)), [0, 2, 1, 3, 5, 4, 7, 6, 9, 8, 11, 10]
    lo95, hi95 = bootstrap_ci(x, y, n_boot=400, level=0.95)
    lo50, hi50 = bootstrap_ci(x, y, n_boot=400, level=0.5)
    assert lo95 <= lo50 <= hi50 <= hi95
    assert hi50 - lo50 < hi95 - lo95


def test_bootstrap_ci_too_little_data_is_nan():
    assert all(math.isnan(v) for v in bootstrap_ci([1, 2], [2, 1]))
    assert all(math.isnan(v) for v in bootstrap_ci([1, 2, 3], [5, 5, 5]))  # every resample nan

    def mostly_undefined(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 if a[0] == a[1] == a[2] else float("nan")

    assert all(math.isnan(v) for v in bootstrap_ci([1, 2, 3], [1, 2, 3], mostly_undefined))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1, 2, 3], [1, 2, 3], level=1.0)


def test_mean_sd():
    mean, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    # sample SD: squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n-1 = 3 -> sqrt(5/3)
    assert mean == pytest.approx(2.5)
    assert sd == pytest.approx(math.sqrt(5 / 3))
    assert mean_sd([0.7]) == (0.7, 0.0)
    assert all(math.isnan(v) for v in mean_sd([]))
    assert math.isnan(mean_sd([0.4, float("nan")])[0])  # a diverged seed shows


# --- the study's tests: Student's t, paired differences, Holm, permutations -----------------


def test_t_distribution_matches_the_printed_tables() -> None:
    from search.stats import t_quantile, t_sf

    # two-sided 95 % critical values from any t table
    for df, value in ((1, 12.706205), (3, 3.182446), (7, 2.364624), (30, 2.042272)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-6)
    assert t_quantile(0.025, 7) == pytest.approx(-2.364624, abs=1e-6)
    assert t_sf(0.0, 5) == pytest.approx(0.5)
    assert t_sf(1.0, 1) == pytest.approx(0.25)  # Cauchy: P(T > 1) = 1/4
    assert t_sf(-1.0, 1) == pytest.approx(0.75)


def test_paired_t_by_hand() -> None:
    from search.stats import paired_t

    # d = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), se 0.645497, t 3.872983 on 3 df
    out = paired_t([1, 2, 3, 4])
    assert out["mean"] == 2.5 and out["sd"] == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446 * math.sqrt(5 / 3) / 2
    assert (out["lo"], out["hi"]) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert 0.025 < out["p"] < 0.05  # |t| 3.87 lies between t(.975, 3) and t(.99, 3) = 4.54
    wider = paired_t([1, 2, 3, 4], level=0.99)
    assert wider["hi"] - wider["lo"] > out["hi"] - out["lo"]
    assert math.isnan(paired_t([1.0])["p"])


def test_holm_steps_down_and_keeps_the_input_order() -> None:
    from search.stats import holm

    out = holm([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.04·1, 0.06) = 0.06
    assert [round(o["p_holm"], 6) for o in out] == [0.03, 0.06, 0.06, 0.02]
    assert [o["reject"] for o in out] == [True, False, False, True]
    assert [round(o["level"], 4) for o in out] == [0.9833, 0.95, 0.975, 0.9875]
    with_nan = holm([float("nan"), 0.01])
    assert with_nan[0]["reject"] is False and with_nan[1]["p_holm"] == pytest.approx(0.01)


def test_sign_flip_and_spearman_permutation_p() -> None:
    from search.stats import permutation_p, sign_flip_p

    assert sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)  # only all-plus and all-minus
    assert sign_flip_p([1, -1]) == pytest.approx(1.0)
    perfect = permutation_p(range(8), range(8), n_perm=2000, seed=1)
    assert perfect < 0.002  # 2 of 40,320 orders have |rho| = 1
    assert permutation_p([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], seed=0) > 0.05
