"""Mini-batches of an :class:`ImageSet`, deterministic per (seed, epoch) and sharded per rank.

In-memory sets are batched by indexing the one big uint8 tensor (no per-image Python work);
folder sets go through a torch DataLoader whose workers decode with PIL. Either way the order
is a function of (seed, epoch) only, and rank ``r`` of ``world_size`` gets the disjoint shard
``order[r::world_size]``. With ``drop_last=True`` (training under DDP) the permutation is first
cut to a multiple of ``world_size`` and incomplete batches are dropped, so every rank runs the
same number of steps. With ``drop_last=False`` (evaluation) nothing is padded or repeated:
rank 0's shard may be one image longer than the last rank's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from training.data.datasets import SHUFFLE_STREAM, ImageSet, seeded_generator, take_rows


def _check(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _shard_size(n: int, *, drop_last: bool, rank: int, world_size: int) -> int:
    if drop_last:
        return n // world_size
    return len(range(rank, n, world_size))


def shard_indices(
    n: int, *, shuffle: bool, seed: int, epoch: int, drop_last: bool, rank: int, world_size: int
) -> Tensor:
    """The indices (int64) rank ``rank`` visits in this epoch, in visiting order."""
    if shuffle:
        g = seeded_generator(seed, SHUFFLE_STREAM, epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if drop_last:
        order = order[: (n // world_size) * world_size]
    return order[rank::world_size]


def num_batches(
    ds: ImageSet, batch_size: int, *, drop_last: bool, world_size: int = 1, rank: int = 0
) -> int:
    """How many batches :func:`iterate_batches` yields for ``rank`` (the same on every rank
    when ``drop_last``; otherwise rank 0 has the most)."""
    _check(batch_size, rank, world_size)
    size = _shard_size(len(ds), drop_last=drop_last, rank=rank, world_size=world_size)
    return size // batch_size if drop_last else -(-size // batch_size)


def _collate(items: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    images = torch.stack([img for img, _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return images, labels


def batch_chunks(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    rank: int,
    world_size: int,
) -> list[Tensor]:
    """This rank's shard of ``range(n)`` for the epoch, cut into batches of indices in visiting
    order (the incomplete last one dropped when ``drop_last``)."""
    _check(batch_size, rank, world_size)
    idx = shard_indices(
        n,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
    stop = (len(idx) // batch_size) * batch_size if drop_last else len(idx)
    return [idx[i : i + batch_size] for i in range(0, stop, batch_size)]


def loader_over(
    dataset: Dataset, chunks: list[Tensor], num_workers: int, collate_fn: Callable | None = None
) -> DataLoader:
    """A DataLoader that visits ``dataset`` in exactly these index batches."""
    return DataLoader(
        dataset,
        batch_sampler=[c.tolist() for c in chunks],
        num_workers=num_workers,
        collate_fn=collate_fn,
        persistent_workers=False,
    )


def iterate_batches(
    ds: ImageSet,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    drop_last: bool,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (uint8 B x 3 x S x S images, int64 labels) for this rank's shard of ``ds``.

    ``num_workers`` only matters for folder sets (decoding processes); batches of in-memory
    sets are fresh copies, so callers may modify them.
    """
    chunks = batch_chunks(
        len(ds),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
    if ds.images is not None:
        return ((take_rows(ds.images, c), ds.labels.index_select(0, c)) for c in chunks)
    return iter(loader_over(ds, chunks, num_workers, _collate))
