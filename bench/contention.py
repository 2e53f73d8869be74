"""What a busy neighbour costs a training step, per OpenMP thread policy (issue 24).

For each policy (environment variables read when the OpenMP runtime starts, so each is timed in
a fresh process) and each number of busy neighbours (single-threaded spinning processes, the
kind of load a shared worker sees), a child process builds the proxy-scale HSSL session of
``bench/train_throughput.py`` with the machine's threads and times ``--steps`` training steps.
Prints ONE JSON line: images/s per policy and load, the ratio to the same policy's quiet rate,
and each policy's quiet rate against today's default (``current``).

    .venv/bin/python bench/contention.py [--steps 12 --busy 0 1 2 --policies current chosen]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

from training.runtime.threads import policy_env

STEP = r"""
import json, random, statistics, sys, time
import torch
sys.path.insert(0, "bench")
from train_throughput import ProductionStep
from training.specs import BaseSpec, HeadSpec
from training.data import iterate_batches
from training.recipe import TrialConfig
from training.loop.session import build_session
cfg = TrialConfig(base=BaseSpec(patch_size=4, depth=4, width=128), eval_at_init=False, device="cpu")
s = build_session(cfg, None)
stream = iterate_batches(s.train_set, cfg.batch_size, shuffle=True, seed=0, drop_last=True)
batches = [images for (images, _), _ in zip(stream, range(4), strict=False)]
step = ProductionStep(s, batches)
for _ in range(3):
    step()
times = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"img_per_s": cfg.batch_size / statistics.median(times),
                  "threads": torch.get_num_threads()}))
"""


def spin(stop: mp.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def timed(policy: str, busy: int, steps: int) -> dict[str, float]:
    stop = mp.Event()
    spinners = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    time.sleep(0.5)
    try:
        env = {
            k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        }
        env.update(policy_env(policy))
        out = subprocess.run(
            [sys.executable, "-c", STEP, str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", default=["current", "passive", "adaptive"])
    args = parser.parse_args()
    rates: dict[str, dict[str, float]] = {}
    for policy in args.policies:
        rates[policy] = {}
        for busy in args.busy:
            rates[policy][str(busy)] = round(timed(policy, busy, args.steps)["img_per_s"], 1)
    quiet = {p: r.get("0") for p, r in rates.items()}
    print(
        json.dumps(
            {
                "cores": os.cpu_count(),
                "img_per_s": rates,
                "vs_own_quiet": {
                    p: {b: round(v / quiet[p], 3) for b, v in r.items()}
                    for p, r in rates.items()
                    if quiet[p]
                },
                "quiet_vs_current": {
                    p: round(q / quiet["current"], 3)
                    for p, q in quiet.items()
                    if q and quiet.get("current")
                },
                "policies": {p: policy_env(p) for p in args.policies},
            }
        )
    )


if __name__ == "__main__":
    main()
