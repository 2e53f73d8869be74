"""Contract of the base adapter (method §2, §3) over timm families, at tiny proxy sizes."""

from __future__ import annotations

import pytest
import timm
import torch

from training.errors import SpecError
from training.model.base import BaseAdapter, BaseOutput, create_base
from training.specs import BaseSpec

VIT = {"img_size": 32, "patch_size": 4, "depth": 2, "width": 64}
CASES = {  # id -> spec; ViT family, ConvNeXt, ResNet, EfficientNet, RegNet, MobileNet, Swin, EVA
    "vit": BaseSpec("vit_tiny_patch16_224", **VIT),
    "deit": BaseSpec("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
    "deit_distilled": BaseSpec(
        "deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2
    ),
    "convnext": BaseSpec("convnext_atto", img_size=64),
    "resnet": BaseSpec("resnet18", img_size=64),
    "efficientnet": BaseSpec("efficientnet_b0", img_size=64),
    "regnet": BaseSpec("regnetx_002", img_size=64),
    "mobilenetv3": BaseSpec("mobilenetv3_small_100", img_size=64),
    "swin_nhwc": BaseSpec(
        "swin_tiny_patch4_window7_224", img_size=64, extra={"depths": (1, 1, 1, 1)}
    ),
    "eva_prefix_tokens": BaseSpec("eva02_tiny_patch14_224", **VIT),
    "pvt_v2": BaseSpec("pvt_v2_b0", img_size=64),
}
_BUILT: dict[str, BaseAdapter] = {}


def adapter(case: str) -> BaseAdapter:
    """Build each case once per test session (seeded), with drop path off for determinism."""
    if case not in _BUILT:
        torch.manual_seed(0)
        spec = CASES[case]
        _BUILT[case] = create_base(BaseSpec(**{**spec.to_dict(), "drop_path_rate": 0.0}))
    return _BUILT[case]


def inputs(base: BaseAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images; the first has its top-left token cell masked, the second none."""
    gen = torch.Generator().manual_seed(1)
    size = base.spec.img_size
    x = torch.randn(2, base.in_chans, size, size, generator=gen)
    mask = torch.zeros(2, *base.grid, dtype=torch.bool)
    mask[0, 0, 0] = True
    return x, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_contract(case: str) -> None:
    base = adapter(case).eval()
    x, mask = inputs(base)
    c, (h, w) = base.embed_dim, base.grid
    assert base.depth >= 1 and base.timm_kwargs["pretrained"] is False
    with torch.no_grad():
        plain, masked = base(x), base(x, mask)
    assert isinstance(plain, BaseOutput)
    for out in (plain, masked):
        assert out.global_.shape == (2, c)
        assert out.tokens.shape == (2, h * w, c)
        assert out.token_map.shape == (2, c, h, w)
        for t in out:
            assert t.dtype == torch.float32 and torch.isfinite(t).all()
    # masking changes the masked image and (eval mode: no batch statistics) nothing else
    assert not torch.allclose(plain.token_map[0], masked.token_map[0])
    assert not torch.allclose(plain.global_[0], masked.global_[0])
    torch.testing.assert_close(plain.token_map[1], masked.token_map[1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_reach_mask_parameter(case: str) -> None:
    base = adapter(case).train()
    x, mask = inputs(base)
    base.zero_grad()
    out = base(x, mask)
    gen = torch.Generator().manual_seed(2)  # random weights: a plain sum through a norm is flat
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in out)
    loss.backward()
    param = base.mask_token if base.is_vit else base.mask_value
    assert param.grad is not None and param.grad.abs().sum() > 0
    base.eval()


@pytest.mark.parametrize("case", ["vit", "deit_distilled"])
def test_vit_token_map_is_pre_norm(case: str) -> None:
    """token_map = last block's patch tokens before model.norm; tokens/global after it."""
    base = adapter(case).eval()
    model, prefix = base.model, base.model.num_prefix_tokens
    x, _ = inputs(base)
    seen = {}
    hook = model.blocks[-1].register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        with torch.no_grad():
            feats = model.forward_features(x)  # timm's own path, for comparison
            out = base(x)
    finally:
        hook.remove()
    c, (h, w) = base.embed_dim, base.grid
    pre_norm = seen["out"][:, prefix:].transpose(1, 2).reshape(2, c, h, w)
    torch.testing.assert_close(out.token_map, pre_norm)
    torch.testing.assert_close(out.tokens, feats[:, prefix:])
    torch.testing.assert_close(out.global_, feats[:, 0])
    post_norm_map = out.tokens.transpose(1, 2).reshape(2, c, h, w)
    assert not torch.allclose(out.token_map, post_norm_map)


def previous_vit_forward(
    base: BaseAdapter, x: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adapter's ViT path before it used ``forward_intermediates`` (issue 14), kept here as
    the reference: mask token after ``patch_embed``, timm's private ``_pos_embed``, the blocks
    by hand, pre-norm token map."""
    m = base.model
    t = m.patch_embed(x)
    if mask is not None:
        t = torch.where(mask.reshape(*t.shape[:-1], 1), base.mask_token.to(t.dtype), t)
    t = m.norm_pre(m._pos_embed(t))
    for block in m.blocks:
        t = block(t)
    normed, prefix = m.norm(t), m.num_prefix_tokens
    global_ = normed[:, 0] if m.cls_token is not None else m.forward_head(normed, pre_logits=True)
    c, (h, w) = base.embed_dim, base.grid
    return global_, normed[:, prefix:], t[:, prefix:].transpose(1, 2).reshape(len(x), c, h, w)


GAP_REGISTERS = BaseSpec(  # no [CLS] (global = timm's pooled head input), two register tokens
    "vit_tiny_patch16_224",
    **VIT,
    drop_path_rate=0.0,
    extra={"class_token": False, "global_pool": "avg", "reg_tokens": 2},
)


@pytest.mark.parametrize("case", ["vit", "deit", "deit_distilled", "gap_registers"])
@pytest.mark.parametrize("training", [False, True])
def test_vit_forward_equals_the_previous_implementation(case: str, training: bool) -> None:
    """forward_intermediates + the patch_embed hook give bit-identical outputs to the old path,
    masked and not; unmasked, tokens and global also equal timm's own forward_features."""
    if case == "gap_registers":
        torch.manual_seed(0)
        base = create_base(GAP_REGISTERS)
    else:
        base = adapter(case)
    base.train(training)
    x, mask = inputs(base)
    try:
        with torch.no_grad():
            for m in (None, mask):
                got, expected = base(x, m), previous_vit_forward(base, x, m)
                for name, a, b in zip(BaseOutput._fields, got, expected, strict=True):
                    assert torch.equal(a, b), (name, m is not None)
            feats = base.model.forward_features(x)
            plain = base(x)  # the hook of the masked call is gone
            model, prefix = base.model, base.model.num_prefix_tokens
            assert torch.equal(plain.tokens, feats[:, prefix:])
            pooled = model.forward_head(feats, pre_logits=True)
            cls_or_pooled = feats[:, 0] if model.cls_token is not None else pooled
            assert torch.equal(plain.global_, cls_or_pooled)
    finally:
        base.eval()


def test_vit_patch_dropout_is_a_spec_error() -> None:
    """forward_intermediates applies patch dropout; masked modelling needs every token."""
    with pytest.raises(SpecError, match="patch_drop_rate must be 0"):
        create_base(BaseSpec("vit_tiny_patch16_224", **VIT, extra={"patch_drop_rate": 0.5}))


def test_cnn_global_is_model_pre_logits_or_gap() -> None:
    resnet = adapter("resnet").eval()
    x, _ = inputs(resnet)
    with torch.no_grad():
        expected = resnet.model.forward_head(resnet.model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(resnet(x).global_, expected)
        mobile = adapter("mobilenetv3").eval()  # its pre-logits (conv_head) are wider than C
        out = mobile(x)
    torch.testing.assert_close(out.global_, out.token_map.mean(dim=(2, 3)))


def test_model_state_dict_is_timms() -> None:
    base = adapter("deit_distilled")
    fresh = timm.create_model(base.spec.name, **base.timm_kwargs)
    assert list(base.model.state_dict()) == list(fresh.state_dict())
    assert base.timm_kwargs["patch_size"] == 8


def test_proxy_overrides_and_default_heads() -> None:
    base = adapter("vit")
    assert base.embed_dim == 64 and base.grid == (8, 8) and base.depth == 2
    assert base.timm_kwargs["num_heads"] == 1 and base.timm_kwargs["img_size"] == 32
    assert "img_size" not in adapter("resnet").timm_kwargs  # CNNs take any size


def test_pretrained_tag_name() -> None:
    base = create_base(
        BaseSpec("vit_tiny_patch16_224.augreg_in21k", img_size=32, patch_size=8, depth=1)
    )
    assert base.grid == (4, 4) and base.embed_dim == 192


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(SpecError, match="unknown timm model 'vit_tny_patch16_224'") as err:
        create_base(BaseSpec("vit_tny_patch16_224"))
    assert "did you mean: vit_tiny_patch16_224" in str(err.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (BaseSpec("resnet18", depth=2), ["'depth'", "resnet18", "drop_path_rate"]),
        (BaseSpec("swin_tiny_patch4_window7_224", depth=2), ["'depth'", "depths"]),
        (BaseSpec("convnext_atto", extra={"bogus": 1}), ["extra.bogus", "convnext_atto"]),
        (BaseSpec("regnetx_002", extra={"bogus": 1}), ["regnetx_002", "bogus"]),
        (BaseSpec("vit_tiny_patch16_224", width=100, num_heads=3), ["could not build"]),
        (BaseSpec("resnet18", extra={"num_classes": 10}), ["extra.num_classes"]),
        (BaseSpec("resnet18", extra={"pretrained": True}), ["never downloaded"]),
    ],
)
def test_bad_override_is_spec_error(spec: BaseSpec, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        create_base(spec)
    for word in words:
        assert word in str(err.value)


def test_mask_shape_is_checked() -> None:
    base = adapter("vit")
    x, _ = inputs(base)
    with pytest.raises(ValueError, match="mask shape"):
        base(x, torch.zeros(2, 4, 4, dtype=torch.bool))
