"""Contract of the auxiliary-head registry (method §2, §6, §7)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from training.errors import SpecError
from training.model.heads import AuxHead, applies, create_head, list_heads, num_heads_for
from training.specs import HEAD_FAMILIES, HeadSpec


def token_map(dim: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, dim, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("family", "depth", "first_residual", "dim_size"),
    list(itertools.product(HEAD_FAMILIES, (1, 2, 3), (True, False), ((32, 4), (64, 8)))),
)
def test_head_contract(family: str, depth: int, first_residual: bool, dim_size) -> None:
    dim, size = dim_size
    torch.manual_seed(0)
    spec = HeadSpec(family=family, depth=depth, kernel=3, first_residual=first_residual)
    head = create_head(spec, dim).train()
    assert isinstance(head, AuxHead) and head.spec == spec and len(head.blocks) == depth
    out, glob = head(token_map(dim, size))
    assert out.shape == (2, dim, size, size) and glob.shape == (2, dim)
    assert torch.isfinite(out).all() and torch.isfinite(glob).all()
    gen = torch.Generator().manual_seed(1)  # random weights: a plain sum through a norm is flat
    loss = (out * torch.randn(out.shape, generator=gen)).sum()
    (loss + (glob * torch.randn(glob.shape, generator=gen)).sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("family", HEAD_FAMILIES)
def test_first_residual_controls_identity_path(family: str) -> None:
    """Zero every weight of a block: with a residual it is the identity, without it is not."""
    x = token_map(32, 4).abs()  # non-negative: resnet's ReLU after the add keeps x as is
    for first_residual in (True, False):
        head = create_head(HeadSpec(family=family, depth=2, first_residual=first_residual), 32)
        head.eval()
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
            first, second = head.blocks[0](x), head.blocks[1](x)
        assert head.blocks[0].residual is first_residual
        torch.testing.assert_close(second, x)  # later blocks always keep their residual
        if first_residual:
            torch.testing.assert_close(first, x)
        else:
            assert not torch.allclose(first, x)


@pytest.mark.parametrize("family", HEAD_FAMILIES)
def test_kernel_changes_parameters_where_it_applies(family: str) -> None:
    def shapes(kernel: int) -> list[tuple[int, ...]]:
        head = create_head(HeadSpec(family=family, depth=1, kernel=kernel), 32)
        return [tuple(p.shape) for p in head.parameters()]

    entry = {e["name"]: e for e in list_heads()}[family]
    if family == "pool":  # parameter-free mixer: the kernel is the pooling window
        head = create_head(HeadSpec(family="pool", depth=1, kernel=5), 32)
        assert head.blocks[0].mixer.pool.kernel_size == 5 and "kernel" in entry["fields"]
    elif "kernel" in entry["fields"]:
        assert shapes(3) != shapes(7)
    else:
        assert shapes(3) == shapes(7) and entry["ignored"] == ["kernel"]


def test_width_ratio_sets_hidden_width() -> None:
    convnext = create_head(HeadSpec(family="convnext", depth=1), 32)
    assert convnext.blocks[0].mlp.fc1.out_features == 128  # default ratio 4
    resnet = create_head(HeadSpec(family="resnet", depth=1), 32)
    assert resnet.blocks[0].conv1.conv.out_channels == 8  # default bottleneck 0.25
    mlp = create_head(HeadSpec(family="mlp", depth=1, width_ratio=2), 32)
    assert mlp.blocks[0].mlp.fc1.out_features == 64


def test_convnext_block_matches_spec() -> None:
    """§2: depthwise k×k conv, LayerNorm, Linear C→4C, GELU, Linear 4C→C; no layer-scale."""
    block = create_head(HeadSpec(family="convnext", depth=1, kernel=7), 32).blocks[0]
    assert block.dwconv.groups == 32 and block.dwconv.kernel_size == (7, 7)
    assert isinstance(block.norm, nn.LayerNorm) and isinstance(block.mlp.act, nn.GELU)
    assert not any("gamma" in n or "ls" in n.split(".") for n, _ in block.named_parameters())


def test_drop_path_rates_apply_per_block() -> None:
    rates = [0.0, 0.1, 0.25]
    head = create_head(HeadSpec(family="transformer", depth=3), 64, rates)
    assert [b.drop_path_rate for b in head.blocks] == rates
    assert isinstance(head.blocks[0].drop_path, nn.Identity)
    assert [b.drop_path.drop_prob for b in head.blocks[1:]] == rates[1:]
    none = create_head(HeadSpec(family="pool", depth=2), 32)
    assert [b.drop_path_rate for b in none.blocks] == [0.0, 0.0]
    with pytest.raises(SpecError, match="one drop-path rate per head block"):
        create_head(HeadSpec(family="mlp", depth=2), 32, [0.1])


def test_global_uses_own_norm_and_pooling() -> None:
    x = token_map(32, 4)
    torch.manual_seed(0)
    avg = create_head(HeadSpec(family="mlp", depth=1), 32).eval()
    torch.manual_seed(0)
    mx = create_head(HeadSpec(family="mlp", depth=1, pooling="max"), 32).eval()
    with torch.no_grad():
        out, glob = avg(x)
        _, glob_max = mx(x)
    torch.testing.assert_close(glob, avg.norm(out.mean(dim=(2, 3))))
    torch.testing.assert_close(glob_max, avg.norm(out.amax(dim=(2, 3))))
    assert isinstance(avg.norm, nn.LayerNorm)


def test_transformer_heads_divide_width() -> None:
    assert [num_heads_for(d) for d in (32, 64, 128, 192, 200, 320)] == [1, 1, 2, 3, 2, 5]
    head = create_head(HeadSpec(family="transformer", depth=1), 200)
    assert head.blocks[0].attn.num_heads == 2


def test_list_heads_covers_all_families() -> None:
    entries = list_heads()
    assert [e["name"] for e in entries] == list(HEAD_FAMILIES)
    for e in entries:
        assert e["description"] and {"depth", "first_residual", "pooling"} <= set(e["fields"])
    ignored = {e["name"]: e["ignored"] for e in entries}
    assert ignored["mlp"] == ignored["transformer"] == ["kernel"]
    assert applies("convnext", "kernel") and not applies("mlp", "kernel")


def test_unknown_family_is_spec_error() -> None:
    with pytest.raises(SpecError, match="unknown head family"):
        create_head(HeadSpec(family="swin"), 32)


def test_every_family_is_registered_once_with_a_block():
    from training.model.heads.blocks import BLOCKS, family_block

    assert tuple(BLOCKS) == HEAD_FAMILIES  # each family of the one table has its block
    with pytest.raises(ValueError, match="not a head family"):
        family_block("unknown")
    with pytest.raises(ValueError, match="already has a block"):
        family_block("mlp")(type("Another", (), {}))
