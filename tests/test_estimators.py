"""The label-free estimators (issue 21) on features whose answer is known by hand, the probes'
sampling SE, and the metric registry they are declared in."""

from __future__ import annotations

import math

import pytest
import torch

from training.evaluation.estimators import alpha_req, eigenspectrum, estimator_metrics, rankme
from training.evaluation.probes import sampling_se, with_sampling_se


def _orthogonal_columns(n: int, d: int, *, centred: bool) -> torch.Tensor:
    """n x d with orthonormal columns (centred first if asked), float64."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if centred:
        x = x - x.mean(0, keepdim=True)
    q, _ = torch.linalg.qr(x)
    return q


def test_rankme_of_k_equal_singular_values_is_k() -> None:
    # singular values (3, 3, 3, 3, 0, 0): p = 1/4 each -> exp(H) = 4 (eps moves it by ~1e-6)
    q = _orthogonal_columns(50, 6, centred=False)
    x = q * torch.tensor([3.0, 3.0, 3.0, 3.0, 0.0, 0.0], dtype=torch.float64)
    assert rankme(x) == pytest.approx(4.0, abs=1e-4)
    assert rankme(x, eps=0.0) == pytest.approx(4.0, abs=1e-9)


def test_rankme_of_two_unequal_singular_values_by_hand() -> None:
    # sigma = (3, 1): p = (0.75, 0.25); H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    q = _orthogonal_columns(20, 2, centred=False)
    x = q * torch.tensor([3.0, 1.0], dtype=torch.float64)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert expected == pytest.approx(1.75476, abs=1e-5)
    assert rankme(x, eps=0.0) == pytest.approx(expected, abs=1e-9)


def test_rankme_of_a_collapsed_embedding_is_one() -> None:
    x = torch.ones(30, 8) * torch.arange(1, 31).unsqueeze(1)  # every row on one direction
    assert rankme(x) == pytest.approx(1.0, abs=1e-4)


def test_alpha_req_recovers_a_power_law_decay() -> None:
    n, d = 200, 16
    for alpha in (0.5, 1.0, 2.0):
        lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
        # centred orthonormal columns scaled so that the covariance is exactly diag(lam)
        x = _orthogonal_columns(n, d, centred=True) * (lam * (n - 1)).sqrt()
        assert torch.allclose(eigenspectrum(x), lam, atol=1e-10)
        assert alpha_req(x) == pytest.approx(alpha, abs=1e-9)


def test_alpha_req_of_a_flat_spectrum_is_zero_and_ignores_numerical_zeros() -> None:
    n = 100
    x = _orthogonal_columns(n, 5, centred=True) * math.sqrt(n - 1)
    assert alpha_req(x) == pytest.approx(0.0, abs=1e-9)
    padded = torch.cat([x, torch.zeros(n, 3, dtype=torch.float64)], 1)  # rank 5 of 8
    assert alpha_req(padded) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(alpha_req(torch.ones(10, 4)))  # no spread at all: no spectrum to fit


def test_estimators_refuse_what_is_not_a_feature_matrix() -> None:
    with pytest.raises(ValueError, match="N x D"):
        rankme(torch.ones(5))
    with pytest.raises(ValueError, match="N x D"):
        alpha_req(torch.ones(1, 4))
    assert set(estimator_metrics(torch.randn(20, 4))) == {"rankme", "alpha_req"}


def test_sampling_se_is_the_binomial_formula() -> None:
    assert sampling_se(0.5, 400) == pytest.approx(0.025)  # sqrt(.25/400): the old study's SE
    assert sampling_se(0.5, 8000) == pytest.approx(math.sqrt(0.25 / 8000))
    assert sampling_se(1.0, 10) == 0.0
    out = with_sampling_se({"knn_cls": 0.9, "linear": 0.6}, 100)
    assert out["knn_cls_se"] == pytest.approx(0.03)
    assert out["linear_se"] == pytest.approx(math.sqrt(0.24 / 100))
    with pytest.raises(ValueError):
        sampling_se(0.5, 0)


def test_the_registry_feeds_objectives_records_and_directions() -> None:
    from search.objectives import BASE_ESTIMATORS, LABEL_FREE, METRIC_OF, direction_of
    from search.records import HEAD_KEYS, METRICS, RUN_KEYS
    from search.spec import SearchSpec
    from training.metrics import REGISTRY, Metric, register

    assert METRIC_OF["rankme"] == "rankme" and METRIC_OF["knn"] == "knn_cls"
    assert "rankme" in BASE_ESTIMATORS and "rankme" not in LABEL_FREE  # per base, not per head
    assert "target_information" in LABEL_FREE
    assert direction_of("alpha_req") == "minimize" and direction_of("d_kl") == "maximize"
    assert {"rankme", "alpha_req", "knn_cls_se", "linear_se", "heldout_n"} <= set(RUN_KEYS)
    assert "rankme" in METRICS and "rankme" not in HEAD_KEYS
    spec = SearchSpec.model_validate({"strategy": "independent", "objectives": ["rankme"]})
    assert spec.objectives == ["rankme"]
    with pytest.raises(ValueError, match="joint strategy"):
        SearchSpec.model_validate({"strategy": "joint", "objectives": ["rankme"]})
    with pytest.raises(ValueError, match="declared twice"):
        register(Metric("knn_cls", "again", "probe", "base"))
    assert len([m for m in REGISTRY.values() if m.objective == "knn"]) == 1


def test_a_minimised_objective_ranks_its_smallest_first() -> None:
    from search.ranking import pareto_front, rank, summarize
    from search.records import TrialRecord
    from training.specs import HeadSpec

    heads = [HeadSpec(family="mlp", depth=d) for d in (1, 2, 3)]
    records = [
        TrialRecord(number=i, label=h.label(), head=h, seed=0, state="COMPLETE", strategy="x",
                    final={"alpha_req": a, "rankme": r})
        for i, (h, a, r) in enumerate(zip(heads, (2.0, 1.0, 3.0), (5.0, 9.0, 1.0), strict=True))
    ]  # fmt: skip
    ranked = rank(summarize(records), ["alpha_req"])
    assert [s.label for s in ranked] == ["mlp-d2-nores", "mlp-d1-nores", "mlp-d3-nores"]
    # d2 is best on both (smallest alpha, largest RankMe): it alone is on the front
    assert pareto_front(summarize(records), ["alpha_req", "rankme"]) == ["mlp-d2-nores"]
