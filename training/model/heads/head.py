"""The auxiliary head: ``depth`` blocks on the base's token map, then pool and its own norm.

Spec §2: the head runs at the base width C, its global vector is the global average pool of its
output map followed by its **own** LayerNorm (not shared with the base), and its DropPath rates
continue the base's schedule (the caller passes them). §6 adds max pooling as a knob.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from training.errors import SpecError
from training.model.heads.blocks import BLOCKS
from training.specs import HeadSpec


class AuxHead(nn.Module):
    """Auxiliary head for one :class:`HeadSpec` (method §2, §6, §7).

    ``blocks[i]`` is built with ``drop_path_rates[i]``; block 0 has no identity path when
    ``spec.first_residual`` is False (see :mod:`training.model.heads.blocks` for the definition).
    ``forward`` returns ``(output map B x C x H x W, global B x C after the head's LayerNorm)``.
    """

    def __init__(
        self, spec: HeadSpec, dim: int, drop_path_rates: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if dim < 1:
            raise SpecError(f"head width must be positive, got {dim}")
        if drop_path_rates is None:
            drop_path_rates = [0.0] * spec.depth
        rates = [float(r) for r in drop_path_rates]
        if len(rates) != spec.depth:
            raise SpecError(
                f"need one drop-path rate per head block ({spec.depth}), got {len(rates)}"
            )
        if any(not 0 <= r < 1 for r in rates):
            raise SpecError(f"drop-path rates must be in [0, 1), got {rates}")
        self.spec = spec
        self.dim = dim
        block = BLOCKS[spec.family]
        self.blocks = nn.Sequential(
            *(
                block(dim, spec.kernel, spec.hidden_ratio, spec.first_residual or i > 0, rate)
                for i, rate in enumerate(rates)
            )
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, token_map: Tensor) -> tuple[Tensor, Tensor]:
        """Blocks, then global avg/max pool over H×W, then the head's own LayerNorm."""
        out = self.blocks(token_map)
        pooled = out.mean(dim=(2, 3)) if self.spec.pooling == "avg" else out.amax(dim=(2, 3))
        return out, self.norm(pooled)


def create_head(
    spec: HeadSpec, dim: int, drop_path_rates: Sequence[float] | None = None
) -> AuxHead:
    """Build the head for ``spec`` at base width ``dim``; ``drop_path_rates[i]`` → block i."""
    return AuxHead(spec, dim, drop_path_rates)
