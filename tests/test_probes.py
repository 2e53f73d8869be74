"""Tests of the k-NN and linear probes (method §8) against hand-worked examples."""

from __future__ import annotations

import math

import pytest
import torch

from training.evaluation.probes import knn_accuracy, knn_classify, linear_probe


def _vote_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bank where one close neighbour faces two farther ones of another class.

    Test point: direction (1, 0). Bank (norms deliberately unequal, k-NN must L2-normalise):
      class 0: (5, 0)                        -> cos = 1
      class 1: 3·(cos 60°, ±sin 60°)         -> cos = 0.5 each
    Majority vote over k = 3: class 1 (2 votes to 1).
    Weighted vote, weight exp(cos / T):
      T = 0.1: class 0 = e^10 ≈ 22026.5, class 1 = 2·e^5 ≈ 296.8  -> class 0
      T = 1:   class 0 = e^1  ≈ 2.718,   class 1 = 2·e^0.5 ≈ 3.297 -> class 1
    The two tie when e^(1/T) = 2·e^(0.5/T), i.e. T = 0.5 / ln 2 ≈ 0.721.
    """
    s = math.sqrt(3) / 2
    bank = torch.tensor([[5.0, 0.0], [1.5, 3 * s], [1.5, -3 * s]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])
    return bank, labels, query


def test_knn_weighted_vote_beats_majority_at_low_temperature() -> None:
    bank, labels, query = _vote_example()
    low = knn_classify(bank, labels, query, num_classes=2, k=3, temperature=0.1)
    high = knn_classify(bank, labels, query, num_classes=2, k=3, temperature=1.0)
    assert low.tolist() == [0]  # e^10 > 2 e^5: the close neighbour wins
    assert high.tolist() == [1]  # e^1 < 2 e^0.5: the weights are nearly flat, majority wins
    assert low.dtype == torch.long


def test_knn_crossover_temperature() -> None:
    # Either side of T* = 0.5 / ln 2 ≈ 0.7213 the decision flips.
    bank, labels, query = _vote_example()
    t_star = 0.5 / math.log(2)
    assert knn_classify(bank, labels, query, num_classes=2, k=3, temperature=t_star * 0.98)[0] == 0
    assert knn_classify(bank, labels, query, num_classes=2, k=3, temperature=t_star * 1.02)[0] == 1


def test_knn_k_one_is_nearest_neighbour() -> None:
    # k = 1 keeps only the (5, 0) neighbour (cos 1), whatever the temperature.
    bank, labels, query = _vote_example()
    assert knn_classify(bank, labels, query, num_classes=2, k=1, temperature=100.0).tolist() == [0]


def test_knn_k_capped_at_bank_size() -> None:
    bank, labels, query = _vote_example()
    for temperature in (0.1, 1.0):
        capped = knn_classify(bank, labels, query, num_classes=2, k=20, temperature=temperature)
        exact = knn_classify(bank, labels, query, num_classes=2, k=3, temperature=temperature)
        assert torch.equal(capped, exact)


def test_knn_uses_cosine_not_euclidean() -> None:
    # Query (10, 1): Euclidean-nearest is (9, 0) of class 1, but by angle (0.1, 0.01) of
    # class 0 is identical in direction (cos = 1) while (9, 0) has cos = 10/√101 ≈ 0.995.
    bank = torch.tensor([[0.1, 0.01], [9.0, 0.0]])
    labels = torch.tensor([0, 1])
    pred = knn_classify(bank, labels, torch.tensor([[10.0, 1.0]]), num_classes=2, k=1)
    assert pred.tolist() == [0]


def test_knn_chunking_matches_single_block() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(60, 8, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    queries = torch.randn(37, 8, generator=g)
    whole = knn_classify(bank, labels, queries, num_classes=4, k=5)
    for chunk in (1, 7, 36, 37, 1000):
        assert torch.equal(
            knn_classify(bank, labels, queries, num_classes=4, k=5, chunk=chunk), whole
        )


def test_knn_empty_test_set() -> None:
    bank, labels, _ = _vote_example()
    out = knn_classify(bank, labels, torch.empty(0, 2), num_classes=2)
    assert out.shape == (0,) and out.dtype == torch.long


def test_knn_accuracy_counts_correct_fraction() -> None:
    # Queries: (1, 0) -> class 0 (see _vote_example; T = 0.07 is sharper still) and (0, -1):
    # cosines to the bank are 0, -0.866, +0.866 -> class 0 weight e^0 = 1,
    # class 1 weight e^(-0.866/0.07) + e^(0.866/0.07) ≈ e^12.4: class 1.
    bank, labels, _ = _vote_example()
    queries = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    assert knn_classify(bank, labels, queries, num_classes=2, k=3).tolist() == [0, 1]
    acc = knn_accuracy(bank, labels, queries, torch.tensor([0, 0]), num_classes=2, k=3)
    assert acc == pytest.approx(0.5)  # one of two right


@pytest.mark.parametrize(
    "kwargs",
    [{"k": 0}, {"temperature": 0.0}, {"chunk": 0}, {"num_classes": 0}],
)
def test_knn_rejects_bad_arguments(kwargs: dict) -> None:
    bank, labels, query = _vote_example()
    args = {"num_classes": 2, **kwargs}
    with pytest.raises(ValueError):
        knn_classify(bank, labels, query, **args)


def test_knn_rejects_bad_labels_and_shapes() -> None:
    bank, labels, query = _vote_example()
    with pytest.raises(ValueError, match="lie in"):
        knn_classify(bank, torch.tensor([0, 1, 2]), query, num_classes=2)
    with pytest.raises(ValueError, match="width"):
        knn_classify(bank, labels, torch.zeros(1, 3), num_classes=2)
    with pytest.raises(ValueError, match="empty"):
        knn_classify(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), query, num_classes=2)
    with pytest.raises(ValueError, match="empty test set"):
        knn_accuracy(
            bank, labels, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), num_classes=2
        )


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four well-separated Gaussian blobs in 16-D: centres 8 apart, unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, 16) * 8.0
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), 16, generator=g), labels


def test_linear_probe_separable_blobs() -> None:
    x_train, y_train = _blobs(50, seed=0)
    x_test, y_test = _blobs(50, seed=1)
    acc = linear_probe(x_train, y_train, x_test, y_test, num_classes=4)
    assert acc >= 0.99


def test_linear_probe_random_labels_is_chance() -> None:
    # Labels independent of the features: test accuracy ≈ 1/4; with 400 test points the
    # binomial SD is √(0.25·0.75/400) ≈ 0.022, so ±0.1 is > 4 SD.
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    y_train = torch.randint(0, 4, (400,), generator=g)
    y_test = torch.randint(0, 4, (400,), generator=g)
    acc = linear_probe(x_train, y_train, x_test, y_test, num_classes=4)
    assert abs(acc - 0.25) < 0.1


def test_linear_probe_deterministic_and_scale_free() -> None:
    # Same inputs, same answer; standardisation makes a per-feature affine rescale irrelevant.
    x_train, y_train = _blobs(20, seed=2)
    x_test, y_test = _blobs(20, seed=3)
    noise = torch.Generator().manual_seed(4)
    x_train = x_train + 3.0 * torch.randn(x_train.shape, generator=noise)  # make it imperfect
    a = linear_probe(x_train, y_train, x_test, y_test, num_classes=4, max_iter=30)
    b = linear_probe(x_train, y_train, x_test, y_test, num_classes=4, max_iter=30)
    scale, shift = torch.linspace(0.5, 50.0, 16), torch.linspace(-3.0, 3.0, 16)
    c = linear_probe(
        x_train * scale + shift, y_train, x_test * scale + shift, y_test, num_classes=4, max_iter=30
    )
    assert a == b
    assert c == pytest.approx(a, abs=1 / 80)  # at most one of 80 test points may differ


def test_linear_probe_constant_feature_column() -> None:
    # A column constant on the train set (std 0) must not produce inf/NaN.
    x_train, y_train = _blobs(20, seed=5)
    x_test, y_test = _blobs(20, seed=6)
    x_train[:, 15] = 2.0
    acc = linear_probe(x_train, y_train, x_test, y_test, num_classes=4)
    assert acc >= 0.99


def test_linear_probe_rejects_bad_input() -> None:
    x, y = _blobs(5, seed=0)
    with pytest.raises(ValueError, match="lie in"):
        linear_probe(x, y, x, y, num_classes=3)
    with pytest.raises(ValueError, match="non-empty"):
        linear_probe(x, y, x[:0], y[:0], num_classes=4)
    with pytest.raises(ValueError, match="max_iter"):
        linear_probe(x, y, x, y, num_classes=4, max_iter=0)
