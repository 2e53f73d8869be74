"""The honest floor (method §11): BatchNorm statistics recalibrated on training images for a
random-init network, and the raw-pixel reference."""

import copy

import pytest
import torch
from torch import nn

from training.data import eval_view, open_dataset
from training.evaluation.floor import PIXEL_SIDE, pixel_features, pixel_probes, recalibrate_bn
from training.model.network import HSSLNetwork
from training.specs import BaseSpec

SIZE = 16
DEVICE = torch.device("cpu")
PROBED = ("base.model.conv1.1", "base.model.layer3.0.bn1")  # the first BN, and a deep one


@pytest.fixture(scope="module")
def images():
    train, held = open_dataset("synthetic", SIZE, limit=40, heldout=0.2)
    return train, held


def resnet(proj_bn: bool = False) -> HSSLNetwork:
    """timm's resnet10t as the project builds a base (its default zero_init_last), drop path
    off so that a plain train-mode forward is deterministic."""
    torch.manual_seed(0)
    spec = BaseSpec(name="resnet10t", img_size=SIZE, drop_path_rate=0.0)
    return HSSLNetwork(spec, (), out_dim=16, proj_hidden=8, proj_bottleneck=4, proj_bn=proj_bn)


def norms(net: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        name: m for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def batch_stats(net: HSSLNetwork, uint8: torch.Tensor) -> dict[str, tuple]:
    """Per probed BN: the channel mean and unbiased variance of its input, taken by a hook on
    one train-mode forward of ``uint8`` (every module in train mode: BN uses batch statistics)."""
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].transpose(0, 1).flatten(1)  # C x (N·H·W)
            seen[name] = (x.mean(1), x.var(1, unbiased=True))

        return record

    layers = dict(net.named_modules())
    handles = [layers[name].register_forward_hook(hook(name)) for name in PROBED]
    with torch.no_grad():
        net.train().embed(eval_view(uint8, SIZE))
    for h in handles:
        h.remove()
    return seen


def test_timm_resnet_starts_with_init_statistics_and_zeroed_last_bn():
    net = resnet()
    for bn in norms(net).values():
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert int(bn.num_batches_tracked) == 0
    # zero_init_last: the last BN of each residual block starts with weight 0
    assert torch.equal(net.base.model.layer1[0].bn2.weight, torch.zeros(64))


def test_recalibrate_bn_sets_statistics_of_each_layer_input_over_the_images(images):
    train, _ = images
    net = resnet()
    reference = batch_stats(copy.deepcopy(net), train.images)  # all 32 images in one batch
    weights = {k: v.clone() for k, v in net.named_parameters()}
    count = recalibrate_bn(net, train, img_size=SIZE, device=DEVICE, batch_size=128)
    assert count == len(norms(net)) == 14
    layers = dict(net.named_modules())
    for name in PROBED:
        mean, var = reference[name]
        assert torch.allclose(layers[name].running_mean, mean, atol=1e-5, rtol=1e-4)
        assert torch.allclose(layers[name].running_var, var, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(var, torch.ones_like(var), atol=1e-2)  # not the init values
    for name, bn in norms(net).items():
        assert int(bn.num_batches_tracked) == 1, name
    assert all(torch.equal(p, weights[k]) for k, p in net.named_parameters())


def test_recalibrate_bn_averages_batches_and_honours_the_limit(images):
    train, _ = images
    net = resnet()
    first, second = train.images[:16], train.images[16:32]
    per_batch = [batch_stats(copy.deepcopy(net), b) for b in (first, second)]
    twice = copy.deepcopy(net)
    recalibrate_bn(twice, train, img_size=SIZE, device=DEVICE, batch_size=16)
    name = PROBED[1]
    layer = dict(twice.named_modules())[name]
    # momentum None: the cumulative average of the two batches' statistics
    expected_mean = (per_batch[0][name][0] + per_batch[1][name][0]) / 2
    expected_var = (per_batch[0][name][1] + per_batch[1][name][1]) / 2
    assert torch.allclose(layer.running_mean, expected_mean, atol=1e-5, rtol=1e-4)
    assert torch.allclose(layer.running_var, expected_var, atol=1e-5, rtol=1e-4)
    once = copy.deepcopy(net)
    recalibrate_bn(once, train, img_size=SIZE, device=DEVICE, batch_size=16, limit=16)
    layer = dict(once.named_modules())[name]
    assert torch.allclose(layer.running_mean, per_batch[0][name][0], atol=1e-5, rtol=1e-4)
    assert int(layer.num_batches_tracked) == 1


def test_recalibrate_bn_restores_modes_and_momenta(images):
    train, _ = images
    net = resnet(proj_bn=True)
    net.train()
    net.base.model.layer2.eval()  # a mixed state, to be given back as it was
    net.base_projector.eval()
    bns = norms(net)
    bns["base.model.bn1"].momentum = 0.3
    modes = {name: m.training for name, m in net.named_modules()}
    momenta = {name: bn.momentum for name, bn in bns.items()}
    assert len(set(modes.values())) == 2
    recalibrate_bn(net, train, img_size=SIZE, device=DEVICE)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert {name: bn.momentum for name, bn in bns.items()} == momenta
    assert momenta["base.model.bn1"] == 0.3 and momenta["base.model.conv1.1"] == 0.1
    # the projector's BatchNorm is recalibrated too, on both rows it projects in training: the
    # global features and the patch tokens (two calls for the one batch)
    projector_bn = net.base_projector.mlp[1]
    assert int(projector_bn.num_batches_tracked) == 2
    assert not torch.equal(projector_bn.running_var, torch.ones(8))


def test_recalibrate_bn_without_batchnorm_does_nothing(images):
    train, _ = images
    spec = BaseSpec(name="vit_tiny_patch16_224", img_size=SIZE, patch_size=4, depth=1, width=32)
    net = HSSLNetwork(spec, (), out_dim=8, proj_hidden=8, proj_bottleneck=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recalibrate_bn(net, train, img_size=SIZE, device=DEVICE) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# ---- raw pixels --------------------------------------------------------------------------
def test_pixel_features_are_the_flattened_fixed_view(images):
    train, _ = images
    features = pixel_features(train, SIZE)
    assert features.shape == (len(train), 3 * SIZE * SIZE) and features.dtype == torch.float32
    assert torch.allclose(features, eval_view(train.images, SIZE).flatten(1))
    assert pixel_features(train, SIZE, limit=5).shape == (5, 3 * SIZE * SIZE)


def test_pixel_features_cap_the_side_at_32():
    big, _ = open_dataset("synthetic", 48, limit=10, heldout=2)
    assert PIXEL_SIDE == 32
    assert pixel_features(big, 48).shape == (8, 3 * 32 * 32)


def test_pixel_probes_score_in_the_unit_interval(images):
    train, held = images
    kw = dict(img_size=SIZE, k=5, temperature=0.07, seed=0)
    both = pixel_probes(train, held, linear=True, **kw)
    assert set(both) == {"pixels_knn", "pixels_linear", "pixels_knn_se", "pixels_linear_se"}
    assert all(0.0 <= v <= 1.0 for v in both.values())
    p, n = both["pixels_knn"], len(held.labels)  # each reading carries its binomial SE
    assert both["pixels_knn_se"] == pytest.approx((p * (1 - p) / n) ** 0.5)
    knn_only = pixel_probes(train, held, linear=False, bank_limit=20, **kw)
    assert set(knn_only) == {"pixels_knn", "pixels_knn_se"}
    assert 0.0 <= knn_only["pixels_knn"] <= 1.0
