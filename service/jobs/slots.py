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
import multiprocessing as mp
import os
from concurrent.futures import Future, ProcessPoolExecutor

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


def memory_share(slots: int) -> Future[int | None]:
    """``slot_memory_mb(slots)`` measured in a spawned process that exits once it answers, so
    the caller (``hssl serve``: the API's process) neither imports torch nor holds a CUDA
    context; answered at once for one slot."""
    if slots <= 1:
        done: Future[int | None] = Future()
        done.set_result(None)
        return done
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    try:
        return pool.submit(slot_memory_mb, slots)
    finally:
        pool.shutdown(wait=False)  # the submitted call still runs; then the process exits


def prepare(slots: int, warm_pool: bool = True) -> str | None:
    """The environment the trial processes of ``slots`` slots inherit: their thread count and
    the warm pool of trial processes (``search.trial_process``: the next run's process imports torch
    while this one trains); returns the thread cap."""
    if warm_pool:
        os.environ.setdefault("HSSL_WARM_POOL", "1")
    return apply_thread_policy(slots=slots).get(CAP_VAR)


def configure(slots: int, warm_pool: bool = True) -> int | None:
    """``prepare`` and the memory share of ``slots`` slots, measured here (a worker process,
    which imports torch anyway); returns the per-trial memory cap (MiB) or None."""
    threads = prepare(slots, warm_pool)
    memory = slot_memory_mb(slots)
    log.info("%d slot(s): at most %s threads, %s MiB GPU memory per trial", slots, threads, memory)
    return memory
