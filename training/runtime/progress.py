"""The one progress bar of both engines' epochs (rank 0 only, cleared when the epoch ends)."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def epoch_bar(batches: Iterable, total: int, desc: str, show: bool) -> tqdm:
    """``batches`` with a bar of ``total`` steps, drawn when ``show``."""
    return tqdm(batches, total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
