"""Collapse diagnostics (method §11): the statistics against values worked out by hand, the
classification on constructed uniform / one-hot / healthy targets and at its thresholds, the
per-run metrics over hand-built embeddings, and the early-stop rule of the loop."""

import math

import pytest
import torch

from training.evaluation.collapse import ONE_HOT_FRACTION, UNIFORM_MI, classify, target_stats, worst
from training.evaluation.evaluate import Embeddings, collapse_metrics
from training.loop.train import _collapsed_for, run_trial
from training.objective.hssl import HSSLObjective
from training.objective.targets import target_probs
from training.recipe import TrialConfig
from training.specs import BaseSpec

TAU_T = 0.04


# ---- target_stats ------------------------------------------------------------------------
def test_target_stats_on_a_hand_built_batch():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    stats = target_stats(logits, targets)
    # std across the two rows per column (N - 1 in the denominator): column 0 holds 1 and 3,
    # mean 2, var (1 + 1) / 1 = 2 → √2; column 1 holds 2 and 2 → 0; column 2 → √2
    assert stats["spread"] == pytest.approx((math.sqrt(2) + 0 + math.sqrt(2)) / 3, rel=1e-9)
    # per-image entropies: ln 2 and 0 (0·log 0 counts as 0, not NaN)
    assert stats["entropy"] == pytest.approx(math.log(2) / 2, rel=1e-9)
    # mean target [1/4, 1/4, 1/2]: -(2·¼·ln ¼ + ½·ln ½) = ln 2 + ½ ln 2
    assert stats["entropy_of_mean"] == pytest.approx(1.5 * math.log(2), rel=1e-9)
    # information = entropy of the mean − mean entropy = 1.5 ln 2 − 0.5 ln 2
    assert stats["information"] == pytest.approx(math.log(2), rel=1e-9)
    assert stats["ln_k"] == pytest.approx(math.log(3))


def test_target_stats_flattens_patch_tokens_over_images():
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) ** 1.5
    targets = torch.softmax(logits / 7, dim=-1)
    assert target_stats(logits, targets) == target_stats(
        logits.reshape(6, 4), targets.reshape(6, 4)
    )


def test_target_stats_needs_two_images():
    with pytest.raises(ValueError, match="at least two"):
        target_stats(torch.zeros(1, 3), torch.full((1, 3), 1 / 3))


# ---- classify ----------------------------------------------------------------------------
K = 8


def status_of(logits: torch.Tensor, center: torch.Tensor | float = 0.0) -> str:
    center = torch.as_tensor(center, dtype=torch.float32)
    return classify(target_stats(logits, target_probs(logits, center, TAU_T)))


def test_uniform_targets_are_uniform():
    stats = target_stats(torch.randn(6, K), torch.full((6, K), 1 / K))
    assert stats["entropy"] == pytest.approx(math.log(K))
    assert stats["information"] == pytest.approx(0.0, abs=1e-12)
    assert classify(stats) == "uniform"
    # through the loss's own transform: logits that hardly vary next to τt
    tiny = 1e-4 * torch.randn(6, K, generator=torch.Generator().manual_seed(0))
    assert status_of(tiny) == "uniform"


def test_every_image_on_the_same_prototype_is_one_hot():
    one_hot = torch.zeros(6, K)
    one_hot[:, 3] = 1.0
    stats = target_stats(torch.randn(6, K), one_hot)
    assert stats["entropy"] == 0.0 and stats["entropy_of_mean"] == 0.0
    # no information either, but one-hot is the kind reported
    assert stats["information"] == 0.0 and classify(stats) == "one-hot"
    logits = torch.zeros(6, K)
    logits[:, 3] = 1.0  # cosine logits: every image closest to prototype 3
    assert status_of(logits) == "one-hot"


def test_confident_diverse_targets_are_ok():
    # image i closest to prototype i: sharp per image, every prototype used by the batch
    stats = target_stats(torch.eye(K), target_probs(torch.eye(K), torch.zeros(1, K), TAU_T))
    assert stats["entropy"] < 1e-6 and stats["entropy_of_mean"] == pytest.approx(math.log(K))
    assert classify(stats) == "ok"


def test_the_centre_decides_between_one_hot_and_uniform():
    logits = torch.zeros(4, 3)
    logits[:, 0] = 1.0
    assert status_of(logits) == "one-hot"
    # the centre is the mean teacher logit: subtracted, nothing is left → uniform targets
    assert status_of(logits, torch.tensor([[1.0, 0.0, 0.0]])) == "uniform"


def test_the_same_soft_target_for_every_image_is_uniform():
    # every image gets [0.7, 0.2, 0.1, 0, ...]: sharp (entropy 0.80 of ln 8 = 2.08) but the same
    # for all, so it says nothing about the image: information 0
    target = torch.zeros(K)
    target[:3] = torch.tensor([0.7, 0.2, 0.1])
    stats = target_stats(torch.randn(5, K), target.expand(5, K))
    assert stats["entropy"] < 0.4 * math.log(K) and stats["information"] == pytest.approx(0.0)
    assert classify(stats) == "uniform"


@pytest.mark.parametrize(("tilt", "expected"), [(0.15, "uniform"), (0.3, "ok")])
def test_near_uniform_targets_that_still_vary_by_image(tilt, expected):
    # K = 256; half the images put (1 ± tilt)/256 on prototypes 0..127 / 128..255, the other
    # half the mirror image. The mean target is uniform (ln K); each image's entropy is
    # ln K − ½[(1+t)ln(1+t) + (1−t)ln(1−t)], so the information is that bracket / 2:
    # t = 0.15 → 0.01129 (< 0.02), t = 0.3 → 0.04570. Per-image entropy ≥ 0.99 ln K either way.
    up, down = (1 + tilt) / 256, (1 - tilt) / 256
    row = torch.tensor([up] * 128 + [down] * 128, dtype=torch.float64)
    targets = torch.stack([row, row.flip(0)] * 3)
    stats = target_stats(torch.randn(6, 256), targets)
    bracket = (1 + tilt) * math.log(1 + tilt) + (1 - tilt) * math.log(1 - tilt)
    assert stats["information"] == pytest.approx(bracket / 2, rel=1e-9)
    assert stats["entropy"] > 0.99 * math.log(256)
    assert classify(stats) == expected


def at(entropy: float, entropy_of_mean: float, k: int = 256) -> dict[str, float]:
    return {"entropy": entropy, "entropy_of_mean": entropy_of_mean, "ln_k": math.log(k)}


def test_classify_thresholds():
    ln_k = math.log(256)
    # one-hot: entropy of the mean at most ONE_HOT_FRACTION · ln K (inclusive)
    assert classify(at(0.0, ONE_HOT_FRACTION * ln_k)) == "one-hot"
    assert classify(at(0.0, ONE_HOT_FRACTION * ln_k + 1e-9)) == "ok"
    # uniform: information strictly below UNIFORM_MI nats
    assert classify(at(4.0 - UNIFORM_MI + 1e-6, 4.0)) == "uniform"
    assert classify(at(4.0 - UNIFORM_MI - 1e-6, 4.0)) == "ok"
    # the one-hot test comes first: no information and a one-prototype mean is one-hot
    assert classify(at(0.5, 0.5)) == "one-hot"


@pytest.mark.parametrize(("used", "expected"), [(1, "one-hot"), (3, "one-hot"), (4, "ok")])
def test_a_batch_on_fewer_than_about_three_of_256_prototypes_is_one_hot(used, expected):
    # 12 images with one-hot targets spread evenly over ``used`` prototypes: the mean target's
    # entropy is ln(used); the documented threshold 0.2·ln 256 ≈ ln 3.03
    targets = torch.zeros(12, 256)
    targets[torch.arange(12), torch.arange(12) % used] = 1.0
    stats = target_stats(torch.randn(12, 256), targets)
    assert stats["entropy_of_mean"] == pytest.approx(math.log(used), abs=1e-12)
    assert classify(stats) == expected


def test_worst_is_the_first_collapsed_status():
    assert worst([]) == "ok"
    assert worst(["ok", "ok"]) == "ok"
    assert worst(["ok", "one-hot", "uniform"]) == "one-hot"
    assert worst(["uniform", "ok"]) == "uniform"


# ---- collapse_metrics over hand-built embeddings ------------------------------------------
def embeddings(base_logits, head_logits=(), patch_logits=None) -> Embeddings:
    n = len(base_logits)
    g = torch.Generator().manual_seed(0)
    return Embeddings(
        base=torch.randn(n, 4, generator=g),
        patch_mean=torch.randn(n, 4, generator=g),
        base_logits=base_logits,
        heads=[torch.randn(n, 4, generator=g) for _ in head_logits],
        head_logits=list(head_logits),
        labels=torch.zeros(n, dtype=torch.int64),
        patch_logits=patch_logits,
    )


def collapsed_rows(n: int = 4, k: int = 3) -> torch.Tensor:
    logits = torch.zeros(n, k)
    logits[:, 0] = 1.0
    return logits


def test_baseline_metrics_measure_the_base_cls_with_the_objective_centre():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    objective = HSSLObjective(0, 3)
    out = collapse_metrics(embeddings(logits), objective, teacher_temp=TAU_T)
    assert set(out) == {
        "target_spread",
        "target_entropy",
        "target_entropy_of_mean",
        "target_information",
        "collapse",
        "ln_k",
    }
    assert out["target_spread"] == pytest.approx(2 * math.sqrt(2) / 3, rel=1e-6)
    assert out["ln_k"] == pytest.approx(math.log(3))
    # centre 0, τt = 0.04: softmax of 25·[1, 2, 3] and 25·[3, 2, 1], ≈ one-hot on 2 and on 0
    assert out["target_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert out["target_entropy_of_mean"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["target_information"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["collapse"] == "ok"
    # the same numbers with the run's centre: identical rows minus their centre → uniform
    rows = collapsed_rows()
    assert (
        collapse_metrics(embeddings(rows), objective, teacher_temp=TAU_T)["collapse"] == "one-hot"
    )
    objective.global_centers[0] = torch.tensor([[1.0, 0.0, 0.0]])
    centred = collapse_metrics(embeddings(rows), objective, teacher_temp=TAU_T)
    assert centred["collapse"] == "uniform"
    assert centred["target_entropy"] == pytest.approx(math.log(3), rel=1e-6)


def test_sinkhorn_targets_are_measured_when_the_objective_uses_them():
    # identical teacher rows: the centre gives one-hot targets; Sinkhorn spreads the batch
    # evenly over the prototypes, so each identical row becomes uniform
    rows = collapsed_rows()
    objective = HSSLObjective(0, 3, global_targets="sinkhorn")
    out = collapse_metrics(embeddings(rows), objective, teacher_temp=TAU_T)
    assert out["collapse"] == "uniform"
    assert out["target_entropy"] == pytest.approx(math.log(3), rel=1e-5)


def test_two_heads_give_one_row_each_and_the_worst_status():
    healthy = torch.eye(3).repeat(2, 1)  # 6 images over 3 prototypes, sharp
    base_collapsed = collapsed_rows(6)  # ignored: with heads the targets are the heads'
    query = embeddings(base_collapsed, head_logits=[healthy, collapsed_rows(6)])
    out = collapse_metrics(query, HSSLObjective(2, 3), teacher_temp=TAU_T)
    rows = out["head_rows"]
    assert [r["collapse"] for r in rows] == ["ok", "one-hot"]
    assert out["collapse"] == "one-hot"
    for key in ("target_spread", "target_entropy", "target_entropy_of_mean", "target_information"):
        assert out[key] == pytest.approx((rows[0][key] + rows[1][key]) / 2)
    assert rows[0]["target_entropy_of_mean"] == pytest.approx(math.log(3), rel=1e-6)
    assert rows[1]["target_spread"] == 0.0
    both_ok = collapse_metrics(
        embeddings(base_collapsed, head_logits=[healthy, healthy]),
        HSSLObjective(2, 3),
        teacher_temp=TAU_T,
    )
    assert both_ok["collapse"] == "ok"
    assert [r["collapse"] for r in both_ok["head_rows"]] == ["ok", "ok"]


def test_patch_keys_only_with_masking_and_patch_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4)
    patches = torch.randn(3, 5, 4, generator=g)  # 3 images x 5 tokens x K
    masked = HSSLObjective(0, 4)
    masked.patch_center.fill_(0.25)
    out = collapse_metrics(embeddings(logits, patch_logits=patches), masked, teacher_temp=TAU_T)
    expected = target_stats(patches, target_probs(patches, torch.full((1, 4), 0.25), TAU_T))
    assert out["patch_spread"] == pytest.approx(expected["spread"])
    assert out["patch_entropy"] == pytest.approx(expected["entropy"])
    assert out["patch_entropy_of_mean"] == pytest.approx(expected["entropy_of_mean"])
    assert out["patch_information"] == pytest.approx(expected["information"])
    assert out["patch_collapse"] == classify(expected)
    patch_keys = {
        "patch_spread",
        "patch_entropy",
        "patch_entropy_of_mean",
        "patch_information",
        "patch_collapse",
    }
    dino = HSSLObjective(0, 4, masking=False)
    no_mask = collapse_metrics(embeddings(logits, patch_logits=patches), dino, teacher_temp=TAU_T)
    assert not patch_keys & set(no_mask)
    assert not patch_keys & set(collapse_metrics(embeddings(logits), masked, teacher_temp=TAU_T))
    empty = embeddings(logits, patch_logits=torch.zeros(0, 5, 4))
    assert not patch_keys & set(collapse_metrics(empty, masked, teacher_temp=TAU_T))


# ---- the loop's early stop ----------------------------------------------------------------
def test_collapsed_for_needs_patience_evaluations_in_a_row():
    history = [
        {"epoch": 1, "collapse": "ok"},
        {"epoch": 2, "collapse": "one-hot"},
        {"epoch": 3, "loss": 1.0},  # not evaluated: does not break the streak
        {"epoch": 4, "collapse": "uniform"},
    ]
    assert _collapsed_for(history, 2) == "uniform"  # the latest kind
    assert _collapsed_for(history, 1) == "uniform"
    assert _collapsed_for(history, 3) is None  # the streak includes an "ok"
    assert _collapsed_for(history, 0) is None  # 0 = never stop
    assert _collapsed_for(history[:2], 3) is None  # too few evaluations yet
    assert _collapsed_for([*history, {"epoch": 5, "collapse": "ok"}], 1) is None


def test_run_stops_early_on_collapsed_targets():
    # a huge teacher temperature makes every target uniform: collapsed at the first evaluation
    config = TrialConfig(
        base=BaseSpec(name="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, width=32),
        heads=(),
        variant="dino",
        data="synthetic",
        data_limit=40,
        heldout=0.2,
        epochs=3,
        batch_size=16,
        out_dim=32,
        proj_hidden=16,
        proj_bottleneck=8,
        teacher_temp=100.0,
        warmup_teacher_temp=100.0,
        eval_at_init=False,
        linear_probe=False,
        eval_bank_limit=None,
        stop_on_collapse=1,
        device="cpu",
    )
    result = run_trial(config)
    assert result.status == "stopped" and result.epochs_done == 1
    assert result.reason.startswith("collapsed: uniform")
    assert result.metrics["collapse"] == "uniform"
