"""Base adapter: any timm model as the HSSL base, with masking and a token map (method §2, §3).

The adapter wraps the timm model unchanged (``self.model``, created with ``num_classes=0``), so
its state_dict is exactly timm's and the pre-trained base exports without conversion. It adds
one learnable mask parameter and returns three views of one forward pass (:class:`BaseOutput`).

* ViT family (timm ``VisionTransformer`` and subclasses, e.g. DeiT, distilled DeiT) [code]:
  masked patch embeddings are replaced by a learnable mask token (zeros init, as iBOT) after
  ``patch_embed`` and before the position embedding; the token map is the last block's patch
  tokens **before** the final norm; ``global_`` is the final-norm [CLS]. One call of timm's
  public ``forward_intermediates`` gives both; the mask token goes in through a forward hook on
  the ``patch_embed`` module, the one place between patch embedding and position embedding.
* Every other family (CNNs, Swin, EVA, ...) [recon]: the token-grid mask is upsampled to pixels
  (nearest) and masked pixels are replaced by a learnable per-channel value; the token map is
  the output of ``forward_features`` (NCHW, NHWC or prefix+patch tokens, reshaped to the grid).
  ``forward_intermediates`` is not used there: its last intermediate stops before what several
  families append in ``forward_features`` (ConvNeXt's ``norm_pre``, EfficientNet's conv head,
  Swin's final norm), so it would change the token map.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from training.errors import SpecError
from training.model.timm_build import build_timm_model
from training.specs import BaseSpec


class BaseOutput(NamedTuple):
    """One base forward pass (method §2).

    ``global_``: B x C global feature (final-norm [CLS] for ViTs, the model's own pooled pre-logits
    features otherwise). ``tokens``: B x N x C patch tokens for the iBOT masked-patch loss
    (after the final norm, no prefix tokens). ``token_map``: B x C x H x W, what the auxiliary
    head reads (pre-norm patch tokens for ViTs, the last stage map otherwise).
    """

    global_: Tensor
    tokens: Tensor
    token_map: Tensor


class BaseAdapter(nn.Module):
    """A timm model plus a mask parameter, returning :class:`BaseOutput` (method §2, §3).

    Attributes: ``model`` (the timm model), ``embed_dim`` (C), ``grid`` ((H, W) of the token map
    and of the mask), ``depth`` (blocks, to continue the drop-path schedule into the head),
    ``timm_kwargs`` (exact kwargs given to ``timm.create_model``), ``is_vit`` (which masking).
    """

    def __init__(self, spec: BaseSpec, model: nn.Module, timm_kwargs: dict) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.model = model
        self.timm_kwargs = dict(timm_kwargs)
        self.is_vit = isinstance(model, VisionTransformer)
        self.in_chans = int(timm_kwargs.get("in_chans", getattr(model, "in_chans", 3)))
        self.output_fmt = getattr(model, "output_fmt", "NCHW")
        self._prefix = 0
        self._global_from_head = True
        self.embed_dim, self.grid = self._probe()
        if self.is_vit:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        else:
            self.mask_value = nn.Parameter(torch.zeros(1, self.in_chans, 1, 1))
        self.depth = _count_blocks(model)

    @torch.no_grad()
    def _probe(self) -> tuple[int, tuple[int, int]]:
        """Discover C, the grid and how to read the output with one dummy forward (eval mode)."""
        was_training = self.model.training
        self.model.eval()
        size = self.spec.img_size
        x = torch.zeros(1, self.in_chans, size, size)
        try:
            if self.is_vit:
                tokens = self.model.patch_embed(x)
                grid = tokens.shape[1:3] if tokens.ndim == 4 else self.model.patch_embed.grid_size
                dim = self.model.embed_dim
            else:
                feats = self.model.forward_features(x)
                if feats.ndim == 4:
                    nchw = feats.permute(0, 3, 1, 2) if self.output_fmt == "NHWC" else feats
                    dim, grid = nchw.shape[1], tuple(nchw.shape[2:])
                elif feats.ndim == 3:
                    dim = feats.shape[-1]
                    grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
                    if grid is None:
                        prefix = int(getattr(self.model, "num_prefix_tokens", 0))
                        grid = self._square(feats, prefix)
                    self._prefix = feats.shape[1] - grid[0] * grid[1]
                else:
                    raise ValueError(f"forward_features gave a {feats.ndim}-D output")
                pooled = self.model.forward_head(feats, pre_logits=True).flatten(1)
                self._global_from_head = pooled.shape[-1] == dim
        finally:
            self.model.train(was_training)
        return int(dim), (int(grid[0]), int(grid[1]))

    def _square(self, tokens: Tensor, prefix: int) -> tuple[int, int]:
        n = tokens.shape[1] - prefix
        side = round(n**0.5)
        if side * side != n:
            raise ValueError(f"cannot infer a square token grid from {n} tokens of {self.name}")
        return side, side

    def forward(self, x: Tensor, mask: Tensor | None = None) -> BaseOutput:
        """Run the base; ``mask`` is bool B x H x W on :attr:`grid`, True = masked."""
        if mask is not None:
            expected = (x.shape[0], *self.grid)
            if tuple(mask.shape) != expected:
                raise ValueError(f"mask shape {tuple(mask.shape)} != {expected} (B x grid)")
            mask = mask.bool()
        return self._forward_vit(x, mask) if self.is_vit else self._forward_other(x, mask)

    def _forward_vit(self, x: Tensor, mask: Tensor | None) -> BaseOutput:
        """iBOT-style: mask token before the position embedding; pre-norm token map.

        timm's ``forward_intermediates`` with the last block as the one intermediate returns the
        final-norm tokens (prefix included) and the last block's pre-norm patch tokens as NCHW.
        """
        m = self.model
        hook = None
        if mask is not None:
            hook = m.patch_embed.register_forward_hook(partial(_put_mask_token, self, mask))
        try:
            normed, (token_map,) = m.forward_intermediates(x, indices=1, output_fmt="NCHW")
        finally:
            if hook is not None:
                hook.remove()
        if m.cls_token is not None:
            global_ = normed[:, 0]
        else:
            global_ = m.forward_head(normed, pre_logits=True)
        return BaseOutput(global_, normed[:, m.num_prefix_tokens :], token_map)

    def _forward_other(self, x: Tensor, mask: Tensor | None) -> BaseOutput:
        """[recon] pixel masking with a learnable per-channel value; tokens = forward_features."""
        if mask is not None:
            pixels = F.interpolate(mask[:, None].float(), size=x.shape[-2:], mode="nearest")
            x = torch.where(pixels.bool(), self.mask_value.to(x.dtype), x)
        feats = self.model.forward_features(x)
        batch, (h, w) = x.shape[0], self.grid
        if feats.ndim == 4:
            token_map = feats.permute(0, 3, 1, 2) if self.output_fmt == "NHWC" else feats
        else:
            token_map = feats[:, self._prefix :].transpose(1, 2).reshape(batch, -1, h, w)
        if self._global_from_head:
            global_ = self.model.forward_head(feats, pre_logits=True).flatten(1)
        else:  # pre-logits width differs from C (e.g. MobileNetV3's conv_head): GAP (method §2)
            global_ = token_map.mean(dim=(2, 3))
        tokens = token_map.flatten(2).transpose(1, 2)
        return BaseOutput(global_, tokens, token_map.contiguous())


def _put_mask_token(base: BaseAdapter, mask: Tensor, _module, _args, tokens: Tensor) -> Tensor:
    """Forward hook on ``patch_embed``: masked patch embeddings become the mask token (iBOT)."""
    where = mask.reshape(*tokens.shape[:-1], 1)  # tokens: B x N x C, or B x H x W x C (dynamic)
    return torch.where(where, base.mask_token.to(tokens.dtype), tokens)


def _count_blocks(model: nn.Module) -> int:
    """Blocks in the base, for continuing its drop-path schedule into the head.

    ViTs: ``len(model.blocks)``. Others: modules owning a ``drop_path*`` attribute (timm's
    convention for residual blocks, present even when the rate is 0), else feature stages.
    """
    if isinstance(model, VisionTransformer):
        return len(model.blocks)
    count = 0
    for module in model.modules():
        names = list(vars(module)) + [name for name, _ in module.named_children()]
        if any(name.startswith("drop_path") for name in names):
            count += 1
    if count == 0:
        count = len(getattr(model, "feature_info", []) or [])
    return max(1, count)


def create_base(spec: BaseSpec) -> BaseAdapter:
    """Build the timm model for ``spec`` (pretrained=False) and wrap it (method §2, §9).

    Raises :class:`~training.errors.SpecError` for an unknown name (with close matches), an
    override the model does not take (naming both, and what the model does take), or a ViT
    with patch dropout (which timm's ``forward_intermediates`` would apply in training).
    """
    model, kwargs = build_timm_model(spec)
    if isinstance(model, VisionTransformer) and not isinstance(model.patch_drop, nn.Identity):
        raise SpecError(
            f"base model {spec.name!r}: extra.patch_drop_rate must be 0, since masked modelling "
            "reads every patch token"
        )
    try:
        return BaseAdapter(spec, model, kwargs)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise SpecError(
            f"base model {spec.name!r} does not run at img_size {spec.img_size} with {kwargs}: "
            f"{exc or type(exc).__name__}"
        ) from None
