"""Probe accuracies of frozen features (method §8).

The quality of a pre-trained base is read off its frozen teacher-base features with two probes:

* a weighted k-NN classifier as in DINO/iBOT (k = 20, T = 0.07, cosine similarity, each
  neighbour votes with weight ``exp(cos / T)``), label-free to train and cheap to run;
* a linear probe: multinomial logistic regression on standardised frozen features, trained
  full-batch with L-BFGS so that the result is deterministic and needs no learning-rate tuning.

Both are pure functions of tensors: features in, labels or an accuracy out. Nothing here touches
the global random state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_features_labels(
    features: Tensor, labels: Tensor | None, num_classes: int, name: str
) -> None:
    """Raise ``ValueError`` unless ``features`` is n x d and ``labels`` n integers in range."""
    if features.dim() != 2:
        raise ValueError(
            f"{name} features must be a 2-D (n, d) tensor, got shape {tuple(features.shape)}"
        )
    if labels is None:
        return
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name} labels must be a 1-D tensor of length {features.shape[0]} (one per feature "
            f"row), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def _check_same_width(train_features: Tensor, test_features: Tensor) -> None:
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}"
        )


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Predict test labels by a temperature-weighted k-NN vote over a feature bank (method §8).

    The DINO/iBOT weighted k-NN: features are L2-normalised, so the dot product is the cosine
    similarity; each test point takes its ``k`` most similar bank entries (``k`` is capped at the
    bank size, so a small bank is not an error); neighbour ``j`` votes for its class with weight
    ``exp(sim_j / temperature)``; the class with the largest summed weight wins. A low
    temperature lets one very close neighbour outvote several farther ones, which is why this
    probe differs from a plain majority vote.

    For numerical safety the weights are computed as ``exp((sim_j - max_j sim_j) / T)``: this
    rescales a test point's class scores by one positive factor and leaves the arg-max unchanged,
    but cannot overflow for small ``T``. Ties between classes go to the lowest class index.

    The test set is processed ``chunk`` rows at a time, so memory stays at
    ``chunk x len(bank)`` similarities whatever the test-set size; the result does not depend on
    ``chunk``.

    Args:
        train_features: ``(n_train, d)`` bank features.
        train_labels: ``(n_train,)`` integer labels in ``[0, num_classes)``.
        test_features: ``(n_test, d)`` features to classify.
        num_classes: number of classes.
        k: neighbours per test point (≥ 1; capped at ``n_train``).
        temperature: vote temperature ``T`` > 0.
        chunk: test rows per similarity block (≥ 1).

    Returns:
        ``(n_test,)`` LongTensor of predicted labels, on ``train_features``' device.

    Raises:
        ValueError: on bad shapes, an empty bank, labels out of range, or non-positive
            ``k``, ``temperature``, ``chunk`` or ``num_classes``.
    """
    _check_knn_args(train_features, train_labels, test_features, num_classes, k, temperature, chunk)
    device = train_features.device
    with torch.no_grad():
        bank = F.normalize(train_features.detach().float(), dim=1)
        bank_labels = train_labels.detach().to(device=device, dtype=torch.long)
        k_eff = min(k, bank.shape[0])
        predictions = []
        for start in range(0, test_features.shape[0], chunk):
            block = test_features[start : start + chunk].detach().to(device).float()
            votes = _knn_votes(block, bank, bank_labels, k_eff, temperature, num_classes)
            predictions.append(votes.argmax(dim=1))
        if not predictions:
            return torch.empty(0, dtype=torch.long, device=device)
        return torch.cat(predictions)


def _check_knn_args(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk: int,
) -> None:
    """Raise ``ValueError`` unless :func:`knn_classify` can run on these arguments."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    _check_features_labels(train_features, train_labels, num_classes, "train")
    _check_features_labels(test_features, None, num_classes, "test")
    if train_features.shape[0] == 0:
        raise ValueError("the k-NN feature bank is empty (0 training features)")
    _check_same_width(train_features, test_features)


def _knn_votes(
    block: Tensor, bank: Tensor, bank_labels: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """Summed ``exp((sim - max sim) / T)`` votes per class, ``(b, num_classes)``, of the ``k``
    most similar bank rows for each row of ``block`` (``bank`` is L2-normalised)."""
    sims = F.normalize(block, dim=1) @ bank.T  # (b, n_train) cosine similarities
    top_sims, top_idx = sims.topk(k, dim=1)  # sorted, so column 0 is the max
    weights = ((top_sims - top_sims[:, :1]) / temperature).exp()
    scores = torch.zeros(block.shape[0], num_classes, device=bank.device)
    return scores.scatter_add_(1, bank_labels[top_idx], weights)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_classify` on a labelled test set (method §8).

    Raises:
        ValueError: as :func:`knn_classify`, or if the test set is empty or its labels do not
            match its features.
    """
    _check_features_labels(test_features, test_labels, num_classes, "test")
    if test_features.shape[0] == 0:
        raise ValueError("cannot compute k-NN accuracy on an empty test set")
    predicted = knn_classify(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )
    return (predicted == test_labels.to(predicted.device)).double().mean().item()


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
    seed: int = 0,
) -> float:
    """Test accuracy in [0, 1] of a linear classifier on frozen features (method §8).

    Features are standardised with the **train** mean and standard deviation (a column that is
    constant on the train set is only centred, not divided by ~0). A multinomial logistic
    regression ``softmax(x W + b)`` is then fitted full-batch by minimising

        mean cross-entropy + weight_decay / 2 * ||W||_F^2      (the bias is not decayed)

    with ``torch.optim.LBFGS`` (strong-Wolfe line search, at most ``max_iter`` iterations).
    Full-batch L-BFGS on this convex objective needs no learning rate or schedule and gives the
    same answer on every call, which is what a probe that ranks heads needs. The work is in
    float64; a 10k x 256 train set with 10 classes fits in about 1.5 s on one CPU core (plus a
    one-off ~2 s the first time ``torch.optim`` machinery is imported in a process).

    ``seed`` draws the small initial weights from a private ``torch.Generator`` (the global
    random state is untouched); with ``weight_decay > 0`` the optimum is unique, so the seed
    matters only through early stopping at ``max_iter``.

    Args:
        train_features: ``(n_train, d)`` frozen features to fit on.
        train_labels: ``(n_train,)`` integer labels in ``[0, num_classes)``.
        test_features: ``(n_test, d)`` frozen features to evaluate on.
        test_labels: ``(n_test,)`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes.
        weight_decay: L2 penalty coefficient on ``W`` (≥ 0).
        max_iter: maximum L-BFGS iterations (≥ 1).
        seed: seed of the initial weights.

    Raises:
        ValueError: on bad shapes, empty sets, labels out of range, or bad hyper-parameters.
    """
    _check_linear_args(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes,
        weight_decay,
        max_iter,
    )
    device, dtype = train_features.device, torch.float64
    x_train, x_test = _standardise(
        train_features.detach().to(dtype), test_features.detach().to(device=device, dtype=dtype)
    )
    y_train = train_labels.detach().to(device=device, dtype=torch.long)
    y_test = test_labels.detach().to(device=device, dtype=torch.long)
    weight, bias = _fit_logistic(x_train, y_train, num_classes, weight_decay, max_iter, seed)
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(dim=1)
        return (predicted == y_test).double().mean().item()


def _check_linear_args(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int,
) -> None:
    """Raise ``ValueError`` unless :func:`linear_probe` can run on these arguments."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    _check_features_labels(train_features, train_labels, num_classes, "train")
    _check_features_labels(test_features, test_labels, num_classes, "test")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError(
            f"linear probe needs non-empty train and test sets, got {train_features.shape[0]} "
            f"train and {test_features.shape[0]} test rows"
        )
    _check_same_width(train_features, test_features)


def _standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Both sets scaled by the train mean and standard deviation; a column constant on the train
    set (std 0 up to rounding, relative to its value) is only centred."""
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False)
    constant = std <= 1e-7 * mean.abs().clamp_min(torch.finfo(x_train.dtype).tiny)
    std = torch.where(constant, torch.ones_like(std), std)
    return (x_train - mean) / std, (x_test - mean) / std


def _fit_logistic(
    x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int, seed: int
) -> tuple[Tensor, Tensor]:
    """``(W, b)`` minimising mean cross-entropy of ``softmax(x W + b)`` + ``wd / 2 ||W||²`` by
    full-batch L-BFGS (strong Wolfe), from small seeded initial weights."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    n, dim = x.shape
    init = torch.randn(dim, num_classes, generator=generator, dtype=x.dtype) * 0.01
    weight = init.to(x.device).requires_grad_(True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    # The gradient is written out by hand rather than taken by autograd: autograd's
    # ``x.T @ g`` on the transposed view is several times slower on CPU than a product with a
    # contiguous copy of the transpose, and this product dominates each L-BFGS step.
    x_t = x.T.contiguous()
    one_hot = F.one_hot(y, num_classes).to(x.dtype)

    def closure() -> Tensor:
        with torch.no_grad():
            log_probs = (x @ weight + bias).log_softmax(dim=1)
            loss = -(log_probs * one_hot).sum() / n
            loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
            residual = (log_probs.exp() - one_hot) / n  # d mean-CE / d logits
            weight.grad = x_t @ residual + weight_decay * weight
            bias.grad = residual.sum(dim=0)
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def sampling_se(accuracy: float, n: int) -> float:
    """The binomial sampling SE of an accuracy read on ``n`` images, ``sqrt(p(1-p)/n)``: how
    much the reading would move on another draw of ``n`` held-out images of the same kind."""
    if n < 1:
        raise ValueError(f"sampling_se needs at least one image, got n={n}")
    p = min(max(float(accuracy), 0.0), 1.0)
    return (p * (1.0 - p) / n) ** 0.5


def with_sampling_se(readings: dict[str, float], n: int) -> dict[str, float]:
    """``readings`` (accuracies on ``n`` images) with each one's ``<key>_se`` beside it."""
    out = dict(readings)
    for key, value in readings.items():
        out[f"{key}_se"] = sampling_se(value, n)
    return out
