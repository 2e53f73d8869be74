"""Auxiliary-head registry (method §2, §6, §7): five block families built from timm layers.

``create_head(spec, dim, drop_path_rates)`` builds an :class:`AuxHead`; ``list_heads()``
describes the families and which :class:`~training.specs.HeadSpec` fields apply to each.
"""

from training.head_families import applies, list_heads
from training.model.heads.blocks import BLOCKS, HeadBlock, num_heads_for
from training.model.heads.head import AuxHead, create_head

__all__ = [
    "BLOCKS",
    "AuxHead",
    "HeadBlock",
    "applies",
    "create_head",
    "list_heads",
    "num_heads_for",
]
