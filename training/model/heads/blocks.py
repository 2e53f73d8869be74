"""The five auxiliary-head block families (method §2, §7), built from timm layers.

Every block maps a B x C x H x W token map to one of the same shape. ``residual=False`` is the
paper's "first block without residual connection" (method §2, §6), defined here as: **no
identity path from the block's input to its output**. One-residual blocks (convnext, resnet,
mlp) drop their residual; two-residual blocks (transformer, pool) drop the token mixer's
residual, so the MLP's residual adds the mixer output, not the block input. DropPath is applied
only on branches that have a residual (dropping a branch with no identity path would zero the
whole sample). No layer-scale anywhere (method §2).
"""

from __future__ import annotations

from timm.layers import (
    Attention,
    ConvNormAct,
    DropPath,
    GroupNorm1,
    Mlp,
    create_conv2d,
    trunc_normal_,
)
from timm.models.metaformer import Pooling
from torch import Tensor, nn

from training.head_families import HEAD_FAMILIES

BLOCKS: dict[str, type[HeadBlock]] = {}  # family name → block class, filled by family_block


def family_block(name: str):
    """Class decorator: the block of head family ``name`` (a family of
    :mod:`training.head_families`, registered once there)."""
    if name not in HEAD_FAMILIES:
        raise ValueError(f"{name!r} is not a head family of training.head_families")

    def register(cls: type[HeadBlock]) -> type[HeadBlock]:
        if name in BLOCKS:
            raise ValueError(f"head family {name!r} already has a block: {BLOCKS[name].__name__}")
        BLOCKS[name] = cls
        return cls

    return register


class HeadBlock(nn.Module):
    """Shared bookkeeping: whether the identity path exists and the block's drop-path rate."""

    def __init__(self, residual: bool, drop_path_rate: float) -> None:
        super().__init__()
        self.residual = residual
        self.drop_path_rate = float(drop_path_rate)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _merge(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + self.drop_path(branch) if self.residual else branch

    def _trunc_init(self) -> None:
        """ViT/ConvNeXt-style init: truncated normal (std 0.02) weights, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def _hidden(dim: int, ratio: float) -> int:
    return max(1, round(dim * ratio))


@family_block("convnext")
class ConvNeXtBlock(HeadBlock):
    """Depthwise k×k conv → LayerNorm (channels-last) → Linear C→rC → GELU → Linear → C (§2)."""

    def __init__(self, dim: int, kernel: int, ratio: float, residual: bool, dpr: float) -> None:
        super().__init__(residual, dpr)
        self.dwconv = create_conv2d(dim, dim, kernel, depthwise=True, bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, _hidden(dim, ratio), act_layer=nn.GELU)
        self._trunc_init()

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return self._merge(x, y)


@family_block("resnet")
class ResNetBlock(HeadBlock):
    """ResNet bottleneck: 1×1 C→rC, k×k, 1×1 →C with BN/ReLU; ReLU after the add (§7)."""

    def __init__(self, dim: int, kernel: int, ratio: float, residual: bool, dpr: float) -> None:
        super().__init__(residual, dpr)
        hidden = _hidden(dim, ratio)
        self.conv1 = ConvNormAct(dim, hidden, 1)
        self.conv2 = ConvNormAct(hidden, hidden, kernel)
        self.conv3 = ConvNormAct(hidden, dim, 1, apply_act=False)
        self.act = nn.ReLU()
        for m in self.modules():  # ResNet init; the last BN is NOT zeroed (it must learn)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(self._merge(x, y))


def num_heads_for(dim: int) -> int:
    """max(1, C // 64), lowered to the nearest divisor of C so heads split C evenly."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


@family_block("transformer")
class TransformerBlock(HeadBlock):
    """Pre-LN ViT block on the flattened map: x + Attn(LN x), then x + MLP(LN x) (§7).

    No position embedding is added: the base's tokens already carry their positions.
    """

    def __init__(self, dim: int, kernel: int, ratio: float, residual: bool, dpr: float) -> None:
        super().__init__(residual, dpr)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads_for(dim), qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, _hidden(dim, ratio), act_layer=nn.GELU)
        self._trunc_init()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = self._merge(t, self.attn(self.norm1(t)))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.transpose(1, 2).reshape(b, c, h, w)


@family_block("mlp")
class MlpBlock(HeadBlock):
    """Token-wise LayerNorm → MLP with a residual; no spatial mixing (low-discrepancy control)."""

    def __init__(self, dim: int, kernel: int, ratio: float, residual: bool, dpr: float) -> None:
        super().__init__(residual, dpr)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, _hidden(dim, ratio), act_layer=nn.GELU)
        self._trunc_init()

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self._merge(x, y)


@family_block("pool")
class PoolBlock(HeadBlock):
    """PoolFormer block: x + (AvgPool_k(n) − n) with n = GN1(x); then x + MLP(GN1 x) (§7).

    Uses PoolFormer's own pieces: timm's ``Pooling`` mixer (stride 1, no padding counted) and
    one-group GroupNorm; the MLP is 1×1 convolutions. No layer-scale (unlike PoolFormer).
    """

    def __init__(self, dim: int, kernel: int, ratio: float, residual: bool, dpr: float) -> None:
        super().__init__(residual, dpr)
        self.norm1 = GroupNorm1(dim)
        self.mixer = Pooling(pool_size=kernel)
        self.norm2 = GroupNorm1(dim)
        self.mlp = Mlp(dim, _hidden(dim, ratio), act_layer=nn.GELU, use_conv=True)
        self._trunc_init()

    def forward(self, x: Tensor) -> Tensor:
        x = self._merge(x, self.mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
