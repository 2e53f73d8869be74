"""Tests of the discrepancy measures (method §3, §4) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from training.errors import HSSLError
from training.evaluation.discrepancy import (
    DegenerateFeaturesError,
    cka_discrepancy,
    linear_cka,
    loss_discrepancy,
)
from training.objective.targets import cross_entropy, entropy, target_probs

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
TS = 0.1  # student temperature of method §3


def _logits(*scaled: float) -> torch.Tensor:
    """One row of student logits whose softmax at temperature TS is softmax(scaled)."""
    return torch.tensor([[v * TS for v in scaled]], dtype=torch.float64)


# ---------------------------------------------------------------- target_probs / CE / entropy


def test_target_probs_centres_and_sharpens() -> None:
    # (logits - c) / T = ([0.3, 0.3 + 0.04 ln 3] - 0.1) / 0.04 = [5, 5 + ln 3]
    # softmax = [1, 3] / 4 = [0.25, 0.75]
    logits = torch.tensor([[0.3, 0.3 + 0.04 * LN3]], dtype=torch.float64)
    for center in (torch.tensor([0.1, 0.1]), torch.tensor([[0.1, 0.1]])):
        probs = target_probs(logits, center.double(), 0.04)
        torch.testing.assert_close(probs, torch.tensor([[0.25, 0.75]], dtype=torch.float64))


def test_target_probs_centre_shifts_mass() -> None:
    # logits [0, 0] with centre [0, -0.1], T = 0.1: (0 - c) / T = [0, 1] -> [1, e] / (1 + e)
    probs = target_probs(torch.zeros(1, 2), torch.tensor([0.0, -0.1]), 0.1)
    e = math.e
    torch.testing.assert_close(probs, torch.tensor([[1 / (1 + e), e / (1 + e)]]))


def test_cross_entropy_hand_values() -> None:
    # Row 0: P = [0.5, 0.5], student logits [0, ln 3]·T -> Q = [1/4, 3/4]
    #   H = -(0.5 ln 1/4 + 0.5 ln 3/4) = ln 4 - 0.5 ln 3 ≈ 0.836988
    # Row 1: P = [1, 0], student logits [0, 0] -> Q = [1/2, 1/2]
    #   H = -ln 1/2 = ln 2 ≈ 0.693147
    target = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    student = torch.cat([_logits(0.0, LN3), _logits(0.0, 0.0)])
    out = cross_entropy(target, student, TS)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([LN4 - 0.5 * LN3, LN2], dtype=torch.float64))
    assert out[0].item() == pytest.approx(0.836988, abs=1e-6)


def test_cross_entropy_keeps_leading_dims_and_gradient() -> None:
    # A (B, N, K) patch map gives (B, N); uniform P and uniform Q over K = 4 give ln 4 each.
    target = torch.full((2, 3, 4), 0.25)
    student = torch.zeros(2, 3, 4, requires_grad=True)
    out = cross_entropy(target, student, TS)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.full((2, 3), LN4))
    out.sum().backward()
    # dH/ds = (Q - P) / T = 0 at Q = P.
    torch.testing.assert_close(student.grad, torch.zeros(2, 3, 4))


def test_entropy_hand_values() -> None:
    # [0.5, 0.5] -> ln 2 ≈ 0.693147
    # [1, 0]     -> 0 (0 log 0 = 0, not NaN)
    # [1/4, 3/4] -> 0.25 ln 4 + 0.75 ln(4/3) = 0.346574 + 0.215762 = 0.562335
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    out = entropy(p)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(
        out, torch.tensor([LN2, 0.0, 0.25 * LN4 + 0.75 * math.log(4 / 3)], dtype=torch.float64)
    )
    assert out[2].item() == pytest.approx(0.562335, abs=1e-6)


# ------------------------------------------------------------------------- loss_discrepancy


def test_loss_discrepancy_two_views_cross_pairs_only() -> None:
    # Targets: t0 = [0.5, 0.5] (H = ln 2), t1 = [1, 0] (H = 0).
    # Base:    b0/Ts = [0, ln 3] -> Q0 = [1/4, 3/4];  b1/Ts = [0, 0] -> Q1 = [1/2, 1/2].
    # Pairs q != v:
    #   (0, 1): H(t0, Q1) = ln 2
    #   (1, 0): H(t1, Q0) = -ln(1/4) = ln 4
    # D_loss = (ln 2 + ln 4) / 2 = 1.5 ln 2 ≈ 1.039721
    # H_target = (ln 2 + 0) / 2 ≈ 0.346574
    # D_kl = ln 2 ≈ 0.693147   (= mean of KL(t0||Q1) = 0 and KL(t1||Q0) = ln 4)
    # The same-view pairs would give H(t0, Q0) = 0.836988 and H(t1, Q1) = ln 2 instead.
    targets = [torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])]
    base = [_logits(0.0, LN3), _logits(0.0, 0.0)]
    out = loss_discrepancy(targets, base, TS)
    assert set(out) == {"d_loss", "h_target", "d_kl"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["d_loss"] == pytest.approx(1.5 * LN2, abs=1e-9)
    assert out["h_target"] == pytest.approx(0.5 * LN2, abs=1e-9)
    assert out["d_kl"] == pytest.approx(LN2, abs=1e-9)


def test_loss_discrepancy_single_view_uses_same_view() -> None:
    # One view: no q != v pair, so the pair (0, 0) is used.
    # Batch row 0: t = [0.5, 0.5], b/Ts = [0, ln 3]: H = ln 4 - 0.5 ln 3, entropy ln 2
    # Batch row 1: t = [1, 0],     b/Ts = [0, 0]:    H = ln 2,            entropy 0
    # D_loss   = (ln 4 - 0.5 ln 3 + ln 2) / 2 = 1.5 ln 2 - 0.25 ln 3 ≈ 0.765068
    # H_target = ln 2 / 2 ≈ 0.346574
    # D_kl     = ln 2 - 0.25 ln 3 ≈ 0.418494  (= mean of 0.5 ln(4/3) and ln 2)
    targets = [torch.tensor([[0.5, 0.5], [1.0, 0.0]])]
    base = [torch.cat([_logits(0.0, LN3), _logits(0.0, 0.0)])]
    out = loss_discrepancy(targets, base, TS)
    assert out["d_loss"] == pytest.approx(1.5 * LN2 - 0.25 * LN3, abs=1e-7)
    assert out["h_target"] == pytest.approx(0.5 * LN2, abs=1e-7)
    assert out["d_kl"] == pytest.approx(LN2 - 0.25 * LN3, abs=1e-7)
    assert out["d_kl"] == pytest.approx(0.418494, abs=1e-6)


def test_loss_discrepancy_extra_student_views() -> None:
    # One target view t0 = [1, 0] and two base views: only the pair (0, 1) counts; b0 is the
    # same crop as t0 and is skipped (made absurd here to prove it).
    # H(t0, softmax([0, ln 3])) = -ln(1/4) = ln 4; entropy(t0) = 0 -> D_kl = ln 4.
    targets = [torch.tensor([[1.0, 0.0]])]
    base = [_logits(-1e3, 1e3), _logits(0.0, LN3)]
    out = loss_discrepancy(targets, base, TS)
    assert out == pytest.approx({"d_loss": LN4, "h_target": 0.0, "d_kl": LN4}, abs=1e-9)


def test_loss_discrepancy_three_views_uniform_base() -> None:
    # Uniform base predictions: H(t, [1/2, 1/2]) = ln 2 for every target, so D_loss = ln 2.
    # Each q appears in 2 of the 6 ordered pairs, so H_target is the plain mean of
    # ln 2, 0 and 0.562335 = 0.418494, and D_kl = ln 2 - 0.418494 = 0.274653 (= 0.25 ln 3).
    targets = [
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.25, 0.75]]),
    ]
    base = [torch.zeros(1, 2)] * 3
    out = loss_discrepancy(targets, base, TS)
    assert out["d_loss"] == pytest.approx(LN2, abs=1e-9)
    assert out["h_target"] == pytest.approx(0.418494, abs=1e-6)
    assert out["d_kl"] == pytest.approx(0.25 * LN3, abs=1e-9)


def test_d_kl_zero_when_base_predicts_target() -> None:
    # base/Ts = log t  =>  softmax(base/Ts) = t  =>  H(t, Q) = H(t) and D_kl = 0.
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 16, generator=g, dtype=torch.float64).softmax(dim=-1)
    base = TS * t.log()
    out = loss_discrepancy([t, t], [base, base], TS)
    assert out["d_kl"] == pytest.approx(0.0, abs=1e-12)
    assert out["d_loss"] == pytest.approx(out["h_target"], abs=1e-12)
    assert out["h_target"] > 0


@pytest.mark.parametrize("seed", range(5))
def test_d_kl_non_negative(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    targets = [
        target_probs(torch.randn(4, 32, generator=g), torch.zeros(32), 0.04) for _ in range(2)
    ]
    base = [torch.randn(4, 32, generator=g) for _ in range(2)]
    out = loss_discrepancy(targets, base, TS)
    assert out["d_kl"] >= -1e-12
    assert out["d_loss"] >= out["h_target"] - 1e-12


def test_loss_discrepancy_rejects_bad_input() -> None:
    t, b = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2)
    with pytest.raises(ValueError, match="probabilities"):
        loss_discrepancy([torch.tensor([[2.0, -1.0]])], [b], TS)  # logits, not probabilities
    with pytest.raises(ValueError, match="as many base views"):
        loss_discrepancy([t, t], [b], TS)
    with pytest.raises(ValueError, match="shape"):
        loss_discrepancy([t], [torch.zeros(1, 3)], TS)
    with pytest.raises(ValueError, match="at least one"):
        loss_discrepancy([], [], TS)
    with pytest.raises(ValueError, match="student_temp"):
        loss_discrepancy([t], [b], 0.0)


# ------------------------------------------------------------------------------- linear CKA


def test_linear_cka_hand_value_is_squared_correlation() -> None:
    # x = [1, 2, 3] -> centred [-1, 0, 1];  y = [2, 4, 7], mean 13/3 -> [-7/3, -1/3, 8/3]
    # yᵀx = 7/3 + 0 + 8/3 = 5;  xᵀx = 2;  yᵀy = (49 + 1 + 64) / 9 = 114/9
    # CKA = 5² / (2 · 114/9) = 225/228 ≈ 0.986842 = r² with r = 5 / √(2 · 114/9)
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[2.0], [4.0], [7.0]])
    assert linear_cka(x, y) == pytest.approx(225 / 228, abs=1e-12)
    assert cka_discrepancy(x, y) == pytest.approx(3 / 228, abs=1e-12)


def test_linear_cka_second_hand_value() -> None:
    # x centred [-1, 0, 1], y = [1, 3, 2] centred [-1, 1, 0]: yᵀx = 1, xᵀx = yᵀy = 2
    # CKA = 1 / (2 · 2) = 0.25 (correlation 0.5, squared)
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)


def _related_features(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = x[:, :4] @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    return x, y + 0.5 * torch.randn(200, 4, generator=g, dtype=torch.float64)


def test_linear_cka_self_and_symmetry() -> None:
    x, y = _related_features(0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka_discrepancy(x, x) == pytest.approx(0.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert 0.0 < linear_cka(x, y) < 1.0


def test_linear_cka_invariances() -> None:
    x, y = _related_features(1)
    base = linear_cka(x, y)
    g = torch.Generator().manual_seed(2)
    qx, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    qy, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    assert linear_cka(x @ qx, y) == pytest.approx(base, abs=1e-10)  # orthogonal transform
    assert linear_cka(x, y @ qy) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(base, abs=1e-10)  # translation
    # float32 input gives the same value (computed in float64 internally).
    assert linear_cka(x.float(), y.float()) == pytest.approx(base, abs=1e-5)
    # ...but a non-isotropic scaling is not an invariance: the test above is not vacuous.
    stretch = torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0, 0.1], dtype=torch.float64)
    assert abs(linear_cka(x * stretch, y) - base) > 0.01


def test_linear_cka_independent_features_small() -> None:
    # For independent features with n >> d, CKA ≈ √(d1·d2) / n = √24 / 2000 ≈ 0.0025.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 4, generator=g)
    y = torch.randn(2000, 6, generator=g)
    assert linear_cka(x, y) < 0.02
    assert cka_discrepancy(x, y) > 0.98


@pytest.mark.parametrize(
    "x",
    [torch.full((5, 3), 2.5), torch.zeros(5, 3), torch.tensor([[1.0, 2.0, 3.0]])],
    ids=["constant", "zeros", "single-sample"],
)
def test_linear_cka_constant_features_raise(x: torch.Tensor) -> None:
    y = torch.arange(2.0 * x.shape[0]).reshape(-1, 2) ** 2  # varies across samples
    with pytest.raises(DegenerateFeaturesError, match="do not vary"):
        linear_cka(x, y)
    with pytest.raises(DegenerateFeaturesError):
        cka_discrepancy(y, x)
    assert issubclass(DegenerateFeaturesError, ValueError)
    assert issubclass(DegenerateFeaturesError, HSSLError)


def test_linear_cka_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(torch.randn(4), torch.randn(4, 2))
    bad = torch.randn(4, 2)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(bad, torch.randn(4, 2))
