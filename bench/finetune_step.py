"""Fine-tune step throughput: ``training.finetune.loop.train_step`` against a hand-written timm
training loop of the same model and batch (issue 15, target ≥ 0.9×).

Our step runs on a session built by ``training.finetune.session.build_session`` (the ``proxy``
recipe unless flags say otherwise): timm's layer-decayed AdamW, the per-update cosine schedule,
Mixup/CutMix with soft targets, autocast where the runtime enables it. The reference is the
loop anyone would write with timm: ``timm.create_model`` with the same arguments, plain AdamW,
the same ``Mixup`` and ``SoftTargetCrossEntropy``, forward, backward, step, zero. Both are fed
the same pre-made batches already on the device (the data pipeline is not what is compared),
in alternating rounds so that a machine's drift hits both alike; the figure per side is the
median images/s over its rounds.

Defaults fit a CPU (a proxy-size ViT and ConvNeXt at 32 px); on a GPU pass e.g.
``--models vit_base_patch16_224 --img-size 224 --batch 128 --full-size``.
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from training.finetune.config import FinetuneConfig
from training.finetune.loop import train_step
from training.finetune.session import FinetuneSession, build_session

TARGET = 0.9
PROXY_SIZES = {  # the proxy-scale architecture a search trains, per model (CPU default)
    "vit_tiny_patch16_224": {"patch_size": 4, "depth": 4, "width": 192},
    "convnext_atto": {},
}


def our_session(model: str, args: argparse.Namespace) -> FinetuneSession:
    sizes = {} if args.full_size else PROXY_SIZES.get(model, {})
    config = FinetuneConfig.from_recipe(
        "proxy",
        model=model,
        data="synthetic",
        data_limit=max(4 * args.batch, 64),
        heldout=0.25,
        img_size=args.img_size,
        batch_size=args.batch,
        epochs=2,
        device=args.device,
        precision=args.precision,
        **sizes,
    )
    return build_session(config, None)


def reference_loop(s: FinetuneSession) -> tuple[torch.nn.Module, Any, Mixup, torch.nn.Module]:
    """The hand-written loop's model, optimiser, Mixup and loss: same model, same arguments."""
    cfg, info = s.config, s.description
    model = timm.create_model(
        info["name"],
        num_classes=info["num_classes"],
        drop_path_rate=cfg.drop_path,
        global_pool=cfg.global_pool,
        **info["create_model_kwargs"],
    ).to(s.runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.peak_lr, weight_decay=cfg.weight_decay)
    mixup = Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        label_smoothing=cfg.smoothing,
        num_classes=info["num_classes"],
    )
    return model, optimizer, mixup, SoftTargetCrossEntropy()


def make_batches(s: FinetuneSession, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    classes = s.description["num_classes"]
    shape = (s.config.batch_size, 3, s.img_size, s.img_size)
    return [
        (
            torch.randn(shape, generator=g).to(s.runtime.device),
            torch.randint(0, classes, (s.config.batch_size,), generator=g).to(s.runtime.device),
        )
        for _ in range(count)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(s: FinetuneSession, batches: list, start: int) -> float:
    sync(s.runtime.device)
    t0 = time.perf_counter()
    for i, (images, labels) in enumerate(batches):
        s.scheduler.step_update(start + i)
        train_step(s, images, labels, last=True, update=start + i)
    sync(s.runtime.device)
    return len(batches) * s.config.batch_size / (time.perf_counter() - t0)


def time_reference(s: FinetuneSession, parts: tuple, batches: list) -> float:
    model, optimizer, mixup, criterion = parts
    model.train()
    sync(s.runtime.device)
    t0 = time.perf_counter()
    for images, labels in batches:
        images, targets = mixup(images, labels)
        with s.runtime.autocast():
            loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(s.runtime.device)
    return len(batches) * s.config.batch_size / (time.perf_counter() - t0)


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    s = our_session(model, args)
    reference = reference_loop(s)
    batches = make_batches(s, args.steps)
    time_ours(s, batches[:2], 0)  # warm-up: first-call allocations, kernel selection
    time_reference(s, reference, batches[:2])
    ours, theirs = [], []
    for r in range(args.rounds):
        ours.append(time_ours(s, batches, 2 + r * len(batches)))
        theirs.append(time_reference(s, reference, batches))
    ratio = statistics.median(ours) / statistics.median(theirs)
    return {
        "model": s.description["name"],
        "create_model_kwargs": s.description["create_model_kwargs"],
        "img_size": s.img_size,
        "batch": s.config.batch_size,
        "ours_images_per_s": round(statistics.median(ours), 1),
        "reference_images_per_s": round(statistics.median(theirs), 1),
        "ratio": round(ratio, 3),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "meets_target": ratio >= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PROXY_SIZES))
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--full-size", action="store_true", help="the model as timm defines it")
    args = parser.parse_args()
    results = [measure(m, args) for m in args.models]
    print(
        json.dumps(
            {
                "bench": "finetune_step",
                "device": our_device(args),
                "threads": torch.get_num_threads(),
                "target": TARGET,
                "models": results,
                "meets_target": all(r["meets_target"] for r in results),
            }
        )
    )


def our_device(args: argparse.Namespace) -> str:
    if args.device != "auto":
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
