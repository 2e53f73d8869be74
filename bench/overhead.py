"""Per-run overhead of ``search.trial_process.run_trial_isolated``, cold vs warm pool (JSON).

overhead = wall time of ``run_trial_isolated`` minus the child's own ``TrialResult.wall_time_s``
(``run_trial`` from its start: building the data and model, training, evaluating): the cost of
getting a process to train in and back. Consecutive runs of a tiny trial (epochs=1, a few
images) on one thread (one slot), one intra-op thread per process. Modes:

- ``cold``: ``warm=False``, a child spawned per run (interpreter + torch/timm/training imports).
- ``warm``: back to back on the warm pool. A spare starts importing once the previous child has
  imported, so when trials are shorter than an import (these are) the next run still waits for
  the rest of the spare's import: this is the figure for tiny trials.
- ``warm_ready``: the warm pool with the spare given time to finish importing between runs
  (``prestart(wait=True)``, not counted): the figure for trials longer than an import, i.e.
  real proxy trials.

Each warm mode's first run (no spare yet on a new thread) is reported apart as ``first_s``.
``import_s`` is the child's own import time (torch, timm, training.loop.train), p50.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch, and inherited by every trial process
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import json
import threading
import time

import numpy as np

from search import trial_process
from training.recipe import TrialConfig
from training.specs import BaseSpec, HeadSpec


def tiny(data_limit: int, seed: int) -> TrialConfig:
    return TrialConfig(
        base=BaseSpec(name="vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, width=32),
        heads=(HeadSpec("mlp", depth=1),),
        data="synthetic",
        data_limit=data_limit,
        heldout=0.25,
        epochs=1,
        batch_size=16,
        out_dim=64,
        proj_hidden=32,
        proj_bottleneck=16,
        linear_probe=False,
        device="cpu",
        seed=seed,
    )


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
    }


def measure(mode: str, runs: int, data_limit: int) -> dict:
    """``runs`` timed runs on a thread of its own (a fresh slot: no spare inherited)."""
    out: dict = {}

    def slot() -> None:
        warm = mode != "cold"
        overhead, imports, train, pre_started, ready = [], [], [], 0, 0
        first = None
        for i in range(runs + (1 if warm else 0)):
            if mode == "warm_ready":
                trial_process.prestart(wait=True, timeout=300)
            started = time.monotonic()
            result = trial_process.run_trial_isolated(tiny(data_limit, i), warm=warm)
            wall = time.monotonic() - started
            assert result.status == "completed", result.reason
            info = trial_process.last_child()
            if warm and i == 0:
                first = round(wall - result.wall_time_s, 3)
                continue
            overhead.append(wall - result.wall_time_s)
            train.append(result.wall_time_s)
            if info.import_s is not None:
                imports.append(info.import_s)
            pre_started += info.pre_started
            ready += info.ready
        out.update(
            overhead_s=_stats(overhead),
            import_s=round(float(np.median(imports)), 3) if imports else None,
            trial_wall_s=round(float(np.median(train)), 3),
            pre_started=pre_started,
            ready=ready,
            runs=runs,
        )
        if first is not None:
            out["first_s"] = first
        trial_process.shutdown_pool()

    thread = threading.Thread(target=slot, name=f"slot-{mode}")
    thread.start()
    thread.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--data-limit", type=int, default=64)
    parser.add_argument("--modes", default="cold,warm,warm_ready")
    args = parser.parse_args()
    result = {"bench": "trial_overhead", "runs": args.runs, "data_limit": args.data_limit}
    for mode in args.modes.split(","):
        result[mode] = measure(mode, args.runs, args.data_limit)
    result["cpus"] = os.cpu_count()
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
