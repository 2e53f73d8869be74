"""Where a study-scale run's time goes (issue 24): one run of study v2's configuration (a
4-block width-64 ViT on 28 px Animal-MNIST, 1,600 training / 8,000 evaluation images, batch 32,
the proxy recipe, one ConvNeXt head, evaluations at initialisation, after epochs 1, 2, 4, 8 and
at the end), then the seconds per phase summed from its ``log.jsonl`` (``phase_s``: training
steps, data, BN recalibration, features, k-NN, linear probe, estimators, raw pixels, collapse
diagnostics, discrepancies, checkpoints). Prints ONE JSON line.

    .venv/bin/python bench/phases.py [--epochs 16 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from training.loop.train import run_trial
from training.recipe import TrialConfig
from training.runtime import runlog
from training.specs import BaseSpec, HeadSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrialConfig.proxy(
        base=BaseSpec(name="vit_tiny_patch16_224", img_size=28, patch_size=4, depth=4, width=64),
        heads=(HeadSpec(family="convnext", depth=2, kernel=3, first_residual=False),),
        data="animal-mnist",
        data_limit=2000,
        heldout_images=8000,
        interim_eval_images=1000,
        eval_epochs=tuple(e for e in (1, 2, 4, 8) if e < args.epochs),
        epochs=args.epochs,
        batch_size=32,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run_trial(config, output_dir=out, progress=False)
        wall = time.perf_counter() - t0
        lines = runlog.read(Path(out) / runlog.FILENAME)
    totals: dict[str, float] = {}
    for line in lines:
        for phase, seconds in (line.get("phase_s") or {}).items():
            totals[phase] = totals.get(phase, 0.0) + seconds
    timed = sum(totals.values())
    evaluation = {k: v for k, v in totals.items() if k not in ("train_step", "data", "checkpoint")}
    print(
        json.dumps(
            {
                "status": result.status,
                "epochs": args.epochs,
                "threads": args.threads,
                "wall_s": round(wall, 1),
                "phase_s": {
                    k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
                },
                "share": {
                    k: round(v / timed, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
                },
                "evaluation_share": round(sum(evaluation.values()) / timed, 3),
                "untimed_s": round(wall - timed, 1),
                "final": {
                    k: result.metrics.get(k) for k in ("knn_cls", "linear", "d_kl", "rankme")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
