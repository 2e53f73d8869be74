"""A worker's slots: how many trial processes it runs at once on its device, and each one's
share of it. ``hssl worker --slots N`` and ``hssl serve`` (``HSSL_LOCAL_WORKERS``) take N
shard jobs at once, so up to N runs train side by side; each run gets

- on CUDA, 1/N of the device's memory, through the per-trial cap the runner already applies
  (``training.runtime.device.cap_memory``); a search's own ``budget.trial_memory_mb`` still applies
  when it is smaller;
- on a CPU, at most 1/N of the cores as its thread count, fewer when other processes keep
  cores busy as the run starts (``training.runtime.threads``: the operator's ``OMP_NUM_THREADS``
  wins).

Pin a worker to one GPU with ``CUDA_VISIBLE_DEVICES``; run one worker per GPU, on any number of
hosts, against one PostgreSQL (see the README).
"""

from __future__ import annotations

import logging
import os

from training.runtime.threads import CAP_VAR, apply_thread_policy

log = logging.getLogger(__name__)


def slot_memory_mb(slots: int) -> int | None:
    """1/``slots`` of the visible CUDA device's memory in MiB, or None (one slot, no CUDA,
    or torch not importable here: the API process never pays for torch)."""
    if slots <= 1:
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    return int(total / 2**20 / slots)


def configure(slots: int, warm_pool: bool = True) -> int | None:
    """Threads and memory for ``slots`` slots, and the warm pool of trial processes
    (``search.runner``: the next run's process imports torch while this one trains);
    returns the per-trial memory cap (MiB) or None."""
    if warm_pool:
        os.environ.setdefault("HSSL_WARM_POOL", "1")
    threads = apply_thread_policy(slots=slots).get(CAP_VAR)
    memory = slot_memory_mb(slots)
    log.info("%d slot(s): at most %s threads, %s MiB GPU memory per trial", slots, threads, memory)
    return memory
