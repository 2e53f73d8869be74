"""The HSSL network: base + K auxiliary heads + projectors + one shared prototype layer (method §2).

Student and teacher are two instances of :class:`HSSLNetwork`; the teacher is an EMA copy with
drop-path off and no gradients (see ``training.model.teacher``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model.base import create_base
from training.model.heads import create_head
from training.specs import BaseSpec, HeadSpec


class Projector(nn.Module):
    """3-layer MLP in → hidden → hidden → bottleneck with GELU, then L2 normalisation (method §2).

    ``use_bn`` puts a BatchNorm after each hidden Linear (the ``use_bn`` option of DINO's and
    iBOT's projection heads; off in the authors' HSSL runs). Measured (method §11): it keeps the
    teacher's global targets informative in short proxy runs where they otherwise go uniform.
    Inputs of any leading shape (B x C, or B x N x C patch tokens) are flattened to rows first,
    so BatchNorm normalises over every row of one call.
    """

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, use_bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in in (in_dim, hidden):
            layers.append(nn.Linear(width_in, hidden))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden, bottleneck))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        rows = self.mlp(x.reshape(-1, x.shape[-1]))
        return F.normalize(rows.reshape(*x.shape[:-1], rows.shape[-1]), dim=-1)


class Prototypes(nn.Module):
    """The shared weight-normalised prototype layer bottleneck → K, gain fixed to 1 (method §2).

    Equal to ``weight_norm(Linear(bias=False))`` with g = 1 and frozen: each prototype row is
    L2-normalised in the forward pass. One instance serves the base's [CLS] and patch tokens and
    every head, which is what makes "the base predicts the head" a plain cross-entropy.
    """

    def __init__(self, bottleneck: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


@dataclass
class NetworkOutput:
    """Logits and features of one forward pass over all views stacked on the batch axis."""

    base_logits: Tensor  # V*B x K   base global ([CLS]) through the base projector
    patch_logits: Tensor | None  # V*B x N x K   base patch tokens (None in evaluation)
    head_logits: list[Tensor]  # per head: V*B x K
    base_features: Tensor  # V*B x C   base global features (before the projector)
    head_features: list[Tensor]  # per head: V*B x C


class HSSLNetwork(nn.Module):
    """One base, K heads, a projector per branch, one prototype layer.

    ``head_input`` picks what the heads read: the base's pre-norm token map (``prenorm``, the
    paper's choice for ViTs) or its normed patch tokens (``postnorm``). ``head_sees_mask``
    (method §6): the student heads read the masked views (default) or, at the cost of a second
    base pass, the unmasked ones.
    """

    def __init__(
        self,
        base: BaseSpec,
        heads: tuple[HeadSpec, ...],
        *,
        out_dim: int,
        proj_hidden: int,
        proj_bottleneck: int,
        head_input: str = "prenorm",
        head_sees_mask: bool = True,
        proj_bn: bool = False,
    ) -> None:
        super().__init__()
        self.base = create_base(base)
        dim = self.base.embed_dim
        self.head_input = head_input
        self.head_sees_mask = head_sees_mask
        self.heads = nn.ModuleList(
            create_head(spec, dim, _continued_drop_path(base.drop_path_rate, self.base.depth, spec))
            for spec in heads
        )
        self.base_projector = Projector(dim, proj_hidden, proj_bottleneck, proj_bn)
        self.head_projectors = nn.ModuleList(
            Projector(dim, proj_hidden, proj_bottleneck, proj_bn) for _ in heads
        )
        self.prototypes = Prototypes(proj_bottleneck, out_dim)

    def forward(self, images: Tensor, masks: Tensor | None = None) -> NetworkOutput:
        """Training pass: logits of the base [CLS], of the base patch tokens and of every head.

        With ``masks`` (the student) only masked tokens are projected — the only ones the
        masked-patch loss reads — and the other rows are zero; without (the teacher) every
        token is, since the patch centre averages over all of them.
        """
        out = self.base(images, masks)
        if masks is None:
            patch_logits = self.prototypes(self.base_projector(out.tokens))
        else:
            where = masks.flatten(1).bool()
            if int(where.sum()) < 2:  # BatchNorm in the projector needs two rows: project all
                picked = self.prototypes(self.base_projector(out.tokens))[where]
            else:
                picked = self.prototypes(self.base_projector(out.tokens[where]))
            patch_logits = picked.new_zeros(*where.shape, picked.shape[-1])
            patch_logits = patch_logits.index_put((where,), picked)
        heads_read = out
        if masks is not None and not self.head_sees_mask and len(self.heads):
            heads_read = self.base(images)
        return self._globals(out, patch_logits, heads_read)

    def embed(self, images: Tensor, patch_logits: bool = False) -> tuple[NetworkOutput, Tensor]:
        """Evaluation pass (no mask): outputs and the mean patch token; the patch logits only
        when asked (for the collapse diagnostics of the patch term)."""
        out = self.base(images)
        patches = self.prototypes(self.base_projector(out.tokens)) if patch_logits else None
        return self._globals(out, patches), out.tokens.mean(1)

    def _globals(self, out, patch_logits: Tensor | None, heads_read=None) -> NetworkOutput:
        base_logits = self.prototypes(self.base_projector(out.global_))
        src = heads_read if heads_read is not None else out
        head_in = (
            src.token_map if self.head_input == "prenorm" else _as_map(src.tokens, src.token_map)
        )
        head_features, head_logits = [], []
        for head, projector in zip(self.heads, self.head_projectors, strict=True):
            _, feature = head(head_in)
            head_features.append(feature)
            head_logits.append(self.prototypes(projector(feature)))
        return NetworkOutput(base_logits, patch_logits, head_logits, out.global_, head_features)


def _as_map(tokens: Tensor, like: Tensor) -> Tensor:
    """B x N x C tokens → B x C x H x W in the shape of ``like``."""
    b, c, h, w = like.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def _continued_drop_path(rate: float, base_depth: int, spec: HeadSpec) -> list[float]:
    """Head blocks continue the base's linear drop-path schedule (method §2)."""
    total = base_depth + spec.depth
    return [rate * (base_depth + i) / max(total - 1, 1) for i in range(spec.depth)]
