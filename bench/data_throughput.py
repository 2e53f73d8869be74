"""Throughput of the data layer on one CPU thread; prints one JSON line.

- augment_img_per_s: TwoCropAugment on 32x32 Animal-MNIST batches of 256 (both views).
- folder_decode_img_per_s: iterate_batches over a temporary folder of PNGs written from
  Animal-MNIST (PIL decode + resize, num_workers=0).
- inmemory_batches_img_per_s: a shuffled epoch of iterate_batches over the in-memory set.

Each figure is the best of a few repeats, because the machine is shared. Reference point:
per-sample torchvision v2 augmentation ran at 427 img/s here (measurements.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from training.data import TwoCropAugment, iterate_batches, open_dataset


def _best_rate(fn, images: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return images / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--folder-images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size, batch = args.img_size, args.batch_size

    train, _ = open_dataset("animal-mnist", size, heldout=0)
    augment = TwoCropAugment(size)
    gen = torch.Generator().manual_seed(0)
    chunks = [train.images[i : i + batch] for i in range(0, 8 * batch, batch)]

    def run_augment() -> None:
        for chunk in chunks:
            augment(chunk, gen)

    aug_rate = _best_rate(run_augment, 8 * batch, args.repeats)

    def run_memory() -> None:
        for _ in iterate_batches(train, batch, shuffle=True, seed=0, drop_last=True):
            pass

    memory_rate = _best_rate(run_memory, (len(train) // batch) * batch, args.repeats)

    with tempfile.TemporaryDirectory(prefix="hssl-bench-") as tmp:
        small, _ = open_dataset("animal-mnist", 28, heldout=0, limit=args.folder_images)
        for i in range(len(small)):
            image, label = small[i]
            path = Path(tmp) / small.classes[label] / f"{i:05d}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        folder, _ = open_dataset(tmp, size, heldout=0)

        def run_folder() -> None:
            for _ in iterate_batches(folder, 64, shuffle=True, seed=0, drop_last=False):
                pass

        folder_rate = _best_rate(run_folder, len(folder), args.repeats)

    print(
        json.dumps(
            {
                "augment_img_per_s": round(aug_rate),
                "folder_decode_img_per_s": round(folder_rate),
                "inmemory_batches_img_per_s": round(memory_rate),
                "img_size": size,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
