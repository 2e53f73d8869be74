"""HSSL training-step throughput and MFU on one GPU (run through ``bench/gpu_check.sh``).

Default: ViT-S/16 (``vit_small_patch16_224``) at 224 px, batch 128, bf16 autocast, the paper's
head (ConvNeXt, 3 blocks, kernel 7, first block without residual) and paper-size projectors
(K 8192, hidden 2048, bottleneck 256). The step is ``training.loop.train.train_step`` itself on a
session built by ``build_session`` (data ``synthetic``, a few images, only so the session
builds); every step is fed random uint8 images made on the GPU, so nothing is downloaded.

FLOPs of one step (student forward + backward, teacher forward) are counted once with
``FlopCounterMode``; MFU = FLOPs / step time / the GPU's peak dense bf16 FLOP/s (table below,
or ``PEAK_TFLOPS`` in the environment, which also overrides the table).

``--cpu-smoke`` runs a tiny version on the CPU (same code path, in fp32: CPU bf16 autocast
sends depthwise convs to a ~60x slower fallback) in well under a minute, to prove the script
works on a machine without a GPU; any flag given next to it overrides the smoke's value.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from typing import Any

import torch
from flops import flop_counter

from training.loop.session import Session, build_session
from training.loop.train import train_step
from training.objective.masking import sample_masks
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec

# Peak dense bf16 tensor FLOP/s (no sparsity), matched on torch.cuda.get_device_name();
# first match wins, so the specific names come before the generic "H100".
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
)

SMOKE = dict(
    device="cpu",
    model="vit_small_patch16_224",
    img_size=32,
    patch=8,
    depth=2,
    width=96,
    batch=8,
    out_dim=512,
    proj_hidden=128,
    proj_bottleneck=64,
    steps=3,
    warmup=2,
    # fp32: under CPU bf16 autocast a depthwise conv falls back to aten::_slow_conv2d per
    # channel (~60x slower here), which would make the smoke take minutes. On CUDA it is bf16.
    precision="fp32",
)


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    env = os.environ.get("PEAK_TFLOPS")
    if env:
        return float(env) * 1e12, "PEAK_TFLOPS"
    if device.type != "cuda":
        return None, "none (CPU; set PEAK_TFLOPS to get an MFU)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16:
        if key.lower() in name.lower():
            return value, f"table: {key}"
    return None, f"unknown GPU {name!r}: set PEAK_TFLOPS"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """``train_step`` on random uint8 batches that live on the session's device."""

    def __init__(self, s: Session, batch: int) -> None:
        self.s, self.it = s, 0
        dev = s.runtime.device
        size = s.config.base.img_size
        g = torch.Generator(device=dev).manual_seed(0)
        shape = (batch, 3, size, size)
        self.batches = [
            torch.randint(0, 256, shape, dtype=torch.uint8, device=dev, generator=g)
            for _ in range(2)
        ]
        self.gen = torch.Generator(device=dev).manual_seed(1)
        self.mask_rng = random.Random(0)
        self.temp = float(s.schedules.teacher_temp[0])
        self.last: dict[str, float] = {}

    def __call__(self) -> None:
        images = self.batches[self.it % len(self.batches)]
        it = self.it % self.s.steps_per_epoch
        self.last = train_step(self.s, images, 0, it, self.gen, self.mask_rng, self.temp)
        self.it += 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run to prove it works")
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--head", default="convnext:depth=3,kernel=7,first_residual=false")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out-dim", type=int, default=8192)
    p.add_argument("--proj-hidden", type=int, default=2048)
    p.add_argument("--proj-bottleneck", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "auto"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        raw = argv if argv is not None else sys.argv[1:]
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in raw if a.startswith("--")}
        for key, value in SMOKE.items():
            if key not in given:
                setattr(args, key, value)
    return args


def config_for(args: argparse.Namespace) -> TrialConfig:
    base = BaseSpec(
        name=args.model,
        img_size=args.img_size,
        patch_size=args.patch,
        depth=args.depth,
        width=args.width,
    )
    return TrialConfig.paper(
        base,
        (HeadSpec.parse(args.head),),
        epochs=1,
        batch_size=args.batch,
        out_dim=args.out_dim,
        proj_hidden=args.proj_hidden,
        proj_bottleneck=args.proj_bottleneck,
        # steady state: the prototype layer trains (the recipe freezes it in epoch 1 only)
        freeze_prototypes_epochs=0,
        # the session needs a data set to build; batches are fed directly, so a tiny one
        data="synthetic",
        data_limit=args.batch + 2,
        heldout=2,
        device=args.device,
        precision=args.precision,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            json.dumps(
                {
                    "bench": "gpu_step",
                    "error": "no CUDA GPU visible; run `bash bench/gpu_check.sh --cpu-smoke` "
                    "for the CPU smoke check",
                    "torch": torch.__version__,
                }
            ),
            flush=True,
        )
        return 2
    t_build = time.perf_counter()
    cfg = config_for(args)
    s = build_session(cfg, None)
    dev = s.runtime.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step = Step(s, args.batch)
    build_s = time.perf_counter() - t_build

    t_warm = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(dev)
    warmup_s = time.perf_counter() - t_warm

    with flop_counter() as counter:
        step()
    sync(dev)
    step_flop = counter.get_total_flops()

    times = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - t)
    window = time.perf_counter() - t0

    # Host-side work inside train_step that the GPU waits for: drawing the block masks.
    views, grid = 2 * args.batch, s.grid
    rng = random.Random(0)
    t = time.perf_counter()
    for _ in range(5):
        sample_masks(views, grid, cfg.mask_prob, cfg.mask_ratio, rng)
    mask_ms = (time.perf_counter() - t) / 5 * 1e3

    step_s = window / max(args.steps, 1)
    peak, peak_source = peak_flops(dev)
    achieved = step_flop / step_s
    if dev.type == "cuda":
        memory = {
            "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved(dev) / 2**30, 2),
            "device_name": torch.cuda.get_device_name(dev),
        }
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        memory = {
            "peak_rss_mb": round(rss / 2**20 if sys.platform == "darwin" else rss / 1024, 1),
            "device_name": "cpu",
        }
    loss = step.last.get("loss", float("nan"))
    result: dict[str, Any] = {
        "bench": "gpu_step",
        "smoke": bool(args.cpu_smoke),
        "img_per_s": round(args.batch / step_s, 1),
        "step_ms": round(step_s * 1e3, 1),
        "step_ms_median": round(statistics.median(times) * 1e3, 1),
        "step_ms_min": round(min(times) * 1e3, 1),
        "step_tflop": round(step_flop / 1e12, 4),
        "achieved_tflop_per_s": round(achieved / 1e12, 3),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_tflop_per_s": peak / 1e12 if peak else None,
        "peak_source": peak_source,
        **memory,
        "mask_sampling_ms": round(mask_ms, 2),
        "loss_finite": math.isfinite(loss),
        "device": str(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "build_s": round(build_s, 1),
        "warmup_s": round(warmup_s, 1),
        "config": {
            "model": cfg.base.name,
            "img_size": cfg.base.img_size,
            "patch": cfg.base.patch_size,
            "depth": cfg.base.depth,
            "width": cfg.base.width,
            "grid": list(s.grid),
            "head": cfg.heads[0].label(),
            "batch": cfg.batch_size,
            "views": 2,
            "out_dim": cfg.out_dim,
            "proj": [cfg.proj_hidden, cfg.proj_bottleneck],
            "precision": "bf16" if s.runtime.bf16 else "fp32",
            "channels_last": s.channels_last,
            "steps": args.steps,
            "warmup": args.warmup,
        },
    }
    print(json.dumps(result), flush=True)
    return 0 if result["loss_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
