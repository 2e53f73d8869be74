"""The proxy recipe's anti-collapse knobs (method §11): Sinkhorn-Knopp targets, KoLeo, the
projector's BatchNorm, their place in the objective, and the recipe's validation."""

import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed import ReduceOp

import training.objective.losses
from training.errors import SpecError
from training.model.network import HSSLNetwork, NetworkOutput, Projector
from training.objective.hssl import HSSLObjective
from training.objective.losses import koleo_loss, sinkhorn_targets, target_probs
from training.recipe import TrialConfig
from training.specs import BaseSpec


# ---- Sinkhorn-Knopp -----------------------------------------------------------------------
def sinkhorn_by_hand(logits: list[list[float]], tau: float, iterations: int) -> list[list[float]]:
    """SwAV / DINOv2's formulation in plain floats: Q = exp(L/τ)ᵀ (K x B), Q /= ΣQ; then per
    iteration each prototype row to 1/K, each image column to 1/B; finally columns × B."""
    b, k = len(logits), len(logits[0])
    q = [[math.exp(logits[i][j] / tau) for i in range(b)] for j in range(k)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / cols[i] / b for i in range(b)] for j in range(k)]
    return [[q[j][i] * b for j in range(k)] for i in range(b)]  # back to B x K


def test_sinkhorn_one_and_two_iterations_worked_out_by_hand():
    # τ = 0.5 and L = [[ln3 / 2, 0], [0, 0]]: exp(L/τ) = [[3, 1], [1, 1]], / 6 = [[1/2, 1/6],
    # [1/6, 1/6]]. Iteration 1, columns (sums 2/3, 1/3) to 1/2 each: [[3/8, 1/4], [1/8, 1/4]];
    # rows (sums 5/8, 3/8) to 1/2 each: [[3/10, 1/5], [1/6, 1/3]]; × B = 2 → [[3/5, 2/5],
    # [1/3, 2/3]]. Iteration 2 from [[3/10, 1/5], [1/6, 1/3]]: columns (7/15, 8/15) →
    # [[9/28, 3/16], [5/28, 5/16]]; rows (57/112, 55/112) → × 2 / 2 = [[12/19, 7/19], [4/11, 7/11]]
    logits = torch.tensor([[math.log(3) / 2, 0.0], [0.0, 0.0]])
    one = sinkhorn_targets(logits, 0.5, iterations=1)
    two = sinkhorn_targets(logits, 0.5, iterations=2)
    assert one.flatten().tolist() == pytest.approx([3 / 5, 2 / 5, 1 / 3, 2 / 3], rel=1e-6)
    assert two.flatten().tolist() == pytest.approx([12 / 19, 7 / 19, 4 / 11, 7 / 11], rel=1e-6)
    by_hand = sinkhorn_by_hand(logits.tolist(), 0.5, 2)
    assert [v for row in by_hand for v in row] == pytest.approx(two.flatten().tolist(), rel=1e-6)


def test_sinkhorn_default_three_iterations_on_a_3x2_matrix():
    logits = [[0.9, -0.2], [0.1, 0.4], [-0.5, 0.3]]
    tau = 0.3
    got = sinkhorn_targets(torch.tensor(logits), tau)
    expected = sinkhorn_by_hand(logits, tau, 3)
    assert got.flatten().tolist() == pytest.approx([v for r in expected for v in r], rel=1e-5)


def test_sinkhorn_rows_are_distributions_and_columns_balance():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    for iterations in (1, 3, 50):
        q = sinkhorn_targets(logits, 0.5, iterations)
        assert torch.allclose(q.sum(1), torch.ones(6), atol=1e-6)
        assert (q >= 0).all()
    # every prototype gets B/K = 1.5 of the batch's mass once converged; not after one step
    assert torch.allclose(
        sinkhorn_targets(logits, 0.5, 50).sum(0), torch.full((4,), 1.5), atol=1e-4
    )
    assert not torch.allclose(
        sinkhorn_targets(logits, 0.5, 1).sum(0), torch.full((4,), 1.5), atol=1e-3
    )


def test_sinkhorn_ignores_a_constant_shift_and_stays_finite():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    q = sinkhorn_targets(logits, 0.04)
    assert torch.allclose(sinkhorn_targets(logits + 7.0, 0.04), q, atol=1e-6)
    # without the max-shift exp(1000 / 0.04) would overflow to inf; float32 rounds the shifted
    # logits themselves (ulp 6e-5 at 1000, 1.5e-3 after / τ), hence the looser tolerance
    shifted = sinkhorn_targets(logits + 1000.0, 0.04)
    assert torch.isfinite(shifted).all() and torch.allclose(shifted, q, atol=1e-3)


def test_sinkhorn_refuses_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        sinkhorn_targets(torch.zeros(2, 2), 0.0)


class ThreadRanks:
    """``torch.distributed`` for ranks that are threads of this process: ``all_reduce``
    exchanges the tensors through a barrier (SUM or MAX), enough for ``sinkhorn_targets``."""

    ReduceOp = ReduceOp

    def __init__(self, world: int) -> None:
        self.world, self.slots, self.local = world, {}, threading.local()
        self.barrier = threading.Barrier(world, timeout=10)

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_world_size(self):
        return self.world

    def all_reduce(self, tensor, op=ReduceOp.SUM):
        self.slots[self.local.rank] = tensor.clone()
        self.barrier.wait()
        parts = torch.stack([self.slots[r] for r in range(self.world)])
        self.barrier.wait()
        tensor.copy_(parts.amax(0) if op == ReduceOp.MAX else parts.sum(0))


def test_sinkhorn_over_two_ranks_equals_one_process_on_the_global_batch(monkeypatch):
    # the column sums run over every rank's rows; each rank's rows must be shifted by the same
    # constant (the global max), else its rows are rescaled before the first iteration
    logits = 0.3 * torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    logits[4:] += 0.2  # rank 1's maximum is larger than rank 0's
    whole = sinkhorn_targets(logits, 0.04)
    ranks, results, errors = ThreadRanks(2), {}, []
    monkeypatch.setattr(training.objective.losses, "dist", ranks)

    def rank_main(rank):
        ranks.local.rank = rank
        try:
            results[rank] = sinkhorn_targets(logits[4 * rank : 4 * rank + 4], 0.04)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert torch.allclose(torch.cat([results[0], results[1]]), whole, atol=1e-6)


# ---- KoLeo --------------------------------------------------------------------------------
def on_circle(*degrees: float, radius=1.0) -> torch.Tensor:
    rad = [math.radians(d) for d in degrees]
    return torch.tensor([[radius * math.cos(a), radius * math.sin(a)] for a in rad])


def test_koleo_on_three_hand_placed_points():
    # unit vectors at 0°, 60°, 180°: chords 2·sin(Δ/2) → d(0°,60°) = 1, d(60°,180°) = √3,
    # d(0°,180°) = 2. Nearest neighbours: 0°→60° (1), 60°→0° (1), 180°→60° (√3)
    expected = -(math.log(1.0) + math.log(1.0) + math.log(math.sqrt(3))) / 3
    assert koleo_loss(on_circle(0, 60, 180)).item() == pytest.approx(expected, abs=1e-6)
    # features are L2-normalised first: lengths do not matter
    scaled = on_circle(0, 60, 180) * torch.tensor([[2.0], [0.5], [3.0]])
    assert koleo_loss(scaled).item() == pytest.approx(expected, abs=1e-6)


def min_distance(x: torch.Tensor) -> float:
    x = F.normalize(x, dim=-1)
    d = torch.cdist(x, x) + torch.eye(len(x)) * 10
    return float(d.min())


def test_koleo_gradient_pushes_the_nearest_points_apart():
    x = on_circle(0, 20, 180).requires_grad_(True)
    before, loss_before = min_distance(x.detach()), koleo_loss(x)
    loss_before.backward()
    with torch.no_grad():
        x -= 0.05 * x.grad
    assert min_distance(x.detach()) > before + 1e-3
    assert koleo_loss(x).item() < loss_before.item()


def test_koleo_needs_two_samples():
    with pytest.raises(ValueError, match="two samples"):
        koleo_loss(torch.ones(1, 4))


# ---- the projector's BatchNorm -------------------------------------------------------------
def test_projector_bn_layers_sit_after_each_hidden_linear():
    layers = [type(m) for m in Projector(8, 16, 4, use_bn=True).mlp]
    assert layers == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.GELU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.GELU,
        nn.Linear,
    ]
    assert all(
        m.num_features == 16 for m in Projector(8, 16, 4, True).mlp if isinstance(m, nn.BatchNorm1d)
    )


def test_projector_bn_normalises_over_rows_in_train_mode():
    torch.manual_seed(0)
    proj = Projector(8, 16, 4, use_bn=True).train()
    seen = {}
    proj.mlp[1].register_forward_hook(
        lambda m, i, o: seen.update(inp=i[0].detach(), out=o.detach())
    )
    x = torch.randn(3, 5, 8)  # B x N x C patch tokens
    out = proj(x)
    assert out.shape == (3, 5, 4)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 5), atol=1e-6)
    # BN over all 15 rows (weight 1, bias 0 at init): (h - mean) / sqrt(biased var + eps)
    h = seen["inp"]
    assert h.shape == (15, 16)
    by_hand = (h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt()
    assert torch.allclose(seen["out"], by_hand, atol=1e-5)
    assert torch.allclose(seen["out"].mean(0), torch.zeros(16), atol=1e-5)
    # the same rows as the flattened 2-D call (one BatchNorm batch either way)
    assert torch.allclose(proj(x.reshape(15, 8)), out.reshape(15, 4), atol=1e-6)
    # and a row's output depends on the rest of the batch
    assert not torch.allclose(proj(x.reshape(15, 8)[:4])[0], out.reshape(15, 4)[0], atol=1e-4)


def test_projector_bn_uses_running_statistics_in_eval_mode():
    torch.manual_seed(0)
    proj = Projector(8, 16, 4, use_bn=True).train()
    x = torch.randn(6, 8) * 3 + 1
    train_out = proj(x)
    bn = proj.mlp[1]
    assert int(bn.num_batches_tracked) == 1 and not torch.allclose(bn.running_mean, torch.zeros(16))
    with pytest.raises(ValueError, match="more than 1 value"):
        proj(x[:1])  # one row cannot be batch-normalised in train mode
    proj.eval()
    stats = [bn.running_mean.clone(), bn.running_var.clone()]
    single = proj(x[:1])
    assert single.shape == (1, 4)
    assert torch.allclose(single, proj(x)[:1], atol=1e-6)  # independent of the batch
    assert not torch.allclose(single, train_out[:1], atol=1e-3)
    # eval passes leave the statistics alone
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_projector_without_bn_keeps_the_old_state_dict_keys():
    proj = Projector(8, 16, 4)
    keys = {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(proj.state_dict()) == keys

    class Old(nn.Module):  # the projector as it was before use_bn
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(
                nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4)
            )

    old = Old()
    proj.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(5, 8)
    assert torch.allclose(proj(x), F.normalize(old.mlp(x), dim=-1), atol=1e-6)
    with pytest.raises(RuntimeError, match="Missing key"):
        Projector(8, 16, 4, use_bn=True).load_state_dict(old.state_dict())


def test_network_with_proj_bn_handles_a_single_masked_token():
    torch.manual_seed(0)
    spec = BaseSpec(name="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, width=32)
    net = HSSLNetwork(spec, (), out_dim=12, proj_hidden=16, proj_bottleneck=8, proj_bn=True)
    assert isinstance(net.base_projector.mlp[1], nn.BatchNorm1d)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1, 2, 3] = True  # one token: BatchNorm cannot run on one row, all tokens are projected
    out = net(torch.randn(2, 3, 16, 16), masks)
    flat = out.patch_logits.reshape(2, 16, 12)
    assert flat[1, 11].abs().sum() > 0
    assert flat.abs().sum(-1).nonzero().tolist() == [[1, 11]]


# ---- the objective with the knobs ----------------------------------------------------------
KO, BO, VO = 5, 3, 2


def outputs(seed: int, heads: int = 0) -> NetworkOutput:
    g = torch.Generator().manual_seed(seed)
    return NetworkOutput(
        base_logits=torch.randn(VO * BO, KO, generator=g),
        patch_logits=None,
        head_logits=[torch.randn(VO * BO, KO, generator=g) for _ in range(heads)],
        base_features=torch.randn(VO * BO, 7, generator=g).requires_grad_(True),
        head_features=[torch.randn(VO * BO, 7, generator=g) for _ in range(heads)],
    )


def test_koleo_weight_adds_the_weighted_mean_over_views():
    student, teacher = outputs(0), outputs(1)
    plain = HSSLObjective(0, KO, masking=False)(student, teacher, None, 0.04)
    assert plain.koleo is None and "loss_koleo" not in plain.scalars()
    assert student.base_features.grad is None
    with_koleo = HSSLObjective(0, KO, masking=False, koleo_weight=0.3)(student, teacher, None, 0.04)
    views = student.base_features.detach().chunk(VO)
    koleo = (koleo_loss(views[0]) + koleo_loss(views[1])) / 2  # per view, then the mean
    assert with_koleo.koleo.item() == pytest.approx(koleo.item(), rel=1e-6)
    assert with_koleo.total.item() == pytest.approx(
        plain.total.item() + 0.3 * koleo.item(), rel=1e-6
    )
    scalars = with_koleo.scalars()
    assert scalars["loss_koleo"] == pytest.approx(koleo.item(), rel=1e-6)
    assert scalars["loss"] == pytest.approx(with_koleo.total.item())
    # the term trains the student's base features (the faithful loss does not reach them)
    with_koleo.total.backward()
    assert student.base_features.grad.abs().sum() > 0


def cross_view_ce(
    targets: torch.Tensor, student_logits: torch.Tensor, tau_s: float
) -> torch.Tensor:
    """mean over pairs q ≠ v of the batch mean of -Σ p log softmax(s / τs), by hand, 2 views."""
    t0, t1 = targets.chunk(2)
    s0, s1 = (student_logits / tau_s).log_softmax(-1).chunk(2)
    return (-(t0 * s1).sum(-1).mean() - (t1 * s0).sum(-1).mean()) / 2


def test_sinkhorn_global_targets_replace_the_centre():
    student, teacher = outputs(2, heads=1), outputs(3, heads=1)
    objective = HSSLObjective(1, KO, masking=False, global_targets="sinkhorn")
    objective.global_centers.fill_(5.0)  # would change centred targets; Sinkhorn ignores it
    parts = objective(student, teacher, None, 0.07)
    targets = sinkhorn_targets(teacher.head_logits[0], 0.07)  # over both views together
    cls1 = cross_view_ce(targets, student.base_logits, 0.1)
    cls2 = cross_view_ce(targets, student.head_logits[0], 0.1)
    assert parts.cls1[0].item() == pytest.approx(cls1.item(), rel=1e-6)
    assert parts.cls2[0].item() == pytest.approx(cls2.item(), rel=1e-6)
    assert parts.total.item() == pytest.approx(0.5 * cls1.item() + 0.5 * cls2.item(), rel=1e-6)
    centred = HSSLObjective(1, KO, masking=False)(student, teacher, None, 0.07)
    assert centred.total.item() != pytest.approx(parts.total.item(), rel=1e-3)
    probs = objective.global_target_probs(0, teacher.head_logits[0], 0.07)
    assert torch.allclose(probs, targets)
    centre_probs = HSSLObjective(1, KO).global_target_probs(0, teacher.head_logits[0], 0.07)
    assert torch.allclose(
        centre_probs, target_probs(teacher.head_logits[0], torch.zeros(1, KO), 0.07)
    )


def test_objective_refuses_an_unknown_target_kind():
    with pytest.raises(ValueError, match="global_targets"):
        HSSLObjective(0, KO, global_targets="softmax")


# ---- recipe validation ---------------------------------------------------------------------
def test_trial_config_validates_the_knobs():
    with pytest.raises(SpecError, match="global_targets"):
        TrialConfig(global_targets="swav")
    with pytest.raises(SpecError, match="koleo_weight"):
        TrialConfig(koleo_weight=-0.1)
    with pytest.raises(SpecError, match="stop_on_collapse"):
        TrialConfig(stop_on_collapse=-1)
    with pytest.raises(SpecError, match="proj_bn"):
        TrialConfig(proj_bn=1)
    config = TrialConfig(
        proj_bn=True, global_targets="sinkhorn", koleo_weight=1, stop_on_collapse=2
    )
    assert TrialConfig.from_dict(config.to_dict()) == config
    faithful = TrialConfig()
    assert (faithful.proj_bn, faithful.global_targets, faithful.koleo_weight) == (
        False,
        "centre",
        0.0,
    )
    assert faithful.stop_on_collapse == 0
