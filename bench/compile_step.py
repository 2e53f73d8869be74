"""What ``TrialConfig.compile`` buys at the study scale: one JSON line with the eager and the
compiled step time (median over steps after the first), the compiled run's first step (the
compilation and one step) and how many steps it takes to pay the compilation back.

    .venv/bin/python bench/compile_step.py [--steps 25 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from training.data import iterate_batches
from training.loop.session import build_session
from training.loop.train import train_step
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec


def study_config(compile: bool) -> TrialConfig:
    """Study v2's scale (bench/study_v2.yaml): the ConvNeXt d2 k3 head without residual."""
    return TrialConfig.proxy(
        base=BaseSpec(name="vit_tiny_patch16_224", img_size=28, patch_size=4, depth=4, width=64),
        heads=(HeadSpec.parse("convnext:depth=2,kernel=3,first_residual=false"),),
        data="animal-mnist",
        data_limit=2000,
        epochs=16,
        batch_size=32,
        device="cpu",
        compile=compile,
    )


def step_times(compile: bool, steps: int) -> list[float]:
    s = build_session(study_config(compile), None)
    batches = iterate_batches(s.train_set, 32, shuffle=True, seed=0, drop_last=True)
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    times = []
    for it, (images, _) in enumerate(batches):
        if it == steps:
            break
        started = time.perf_counter()
        train_step(s, images, 0, it, gen, rng, 0.04)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager, compiled = step_times(False, args.steps), step_times(True, args.steps)
    eager_ms = statistics.median(eager[1:]) * 1000
    compiled_ms = statistics.median(compiled[1:]) * 1000
    saved_ms = eager_ms - compiled_ms
    first_s = compiled[0]
    print(
        json.dumps(
            {
                "bench": "compile_step",
                "threads": args.threads,
                "steps": args.steps,
                "eager_step_ms": round(eager_ms, 1),
                "compiled_step_ms": round(compiled_ms, 1),
                "compiled_vs_eager": round(compiled_ms / eager_ms, 3),
                "compiled_first_step_s": round(first_s, 1),
                "steps_to_pay_back": round(first_s * 1000 / saved_ms) if saved_ms > 0 else None,
                "study_run_steps": 16 * 50,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
