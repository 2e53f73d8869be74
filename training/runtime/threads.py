"""How a trial process uses the CPU's cores when it may share them (issue 24).

Two things are set before the OpenMP runtime starts (environment variables of the process that
imports torch, or of the child processes a worker starts): how many intra-op threads a run uses
(``OMP_NUM_THREADS``: 1/N of the cores for N slots) and how its idle OpenMP threads wait for
work. libgomp's default lets a thread spin for a long while before it sleeps; on a machine
where another process holds a core, the spinning threads burn the time slices the real work
needs (measured: a busy single-threaded neighbour cut the step rate to 0.33× on 2 cores).
``chosen`` (``POLICIES``) bounds the spin. Whatever the user set explicitly always wins.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
POLICIES: dict[str, dict[str, str]] = {
    "current": {},  # libgomp's defaults
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # never spin
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
    # threads = the cores nobody else is using now (a short /proc/stat probe), bounded spin
    "adaptive": {"GOMP_SPINCOUNT": "100000"},
}
CHOSEN = "adaptive"
PROBE_S = 0.25


def busy_cores(seconds: float = PROBE_S) -> float | None:
    """How many cores other processes kept busy over ``seconds`` (this one sleeps meanwhile),
    from /proc/stat; None where there is none. A process at normal priority does not count
    niced work as busy: the scheduler gives it those cores first."""
    own_priority = os.nice(0) if hasattr(os, "nice") else 0

    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        if own_priority == 0:  # niced work (fields[1]) yields its cores to us
            idle += fields[1]
        return sum(fields), idle

    first = sample()
    if first is None:
        return None
    time.sleep(seconds)
    second = sample()
    if second is None or second[0] == first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (total - idle) / total


def policy_env(name: str, cores: int | None = None) -> dict[str, str]:
    """The variables of the named policy (``chosen`` is :data:`CHOSEN`); ``adaptive`` also
    sets the thread count to the ``cores`` free now (probed when not given)."""
    name = CHOSEN if name == "chosen" else name
    env = dict(POLICIES[name])
    if name == "adaptive":
        total = os.cpu_count() or 1
        if cores is None:
            busy = busy_cores()
            cores = total if busy is None else max(1, total - round(busy))
        env.update({v: str(cores) for v in THREAD_VARS})
    return env


CAP_VAR = "HSSL_THREAD_CAP"  # the most threads one trial may use (set by the policy)


def apply_thread_policy(
    env: MutableMapping[str, str] | None = None, *, slots: int = 1
) -> dict[str, str]:
    """At a process's start (``hssl`` commands, a worker's slots, the study): bound the OpenMP
    spin where the user chose no wait policy, and where the user set no thread count let each
    trial pick its threads when it starts (:func:`trial_threads`), at most ``cores // slots``.
    Returns what it set in ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    chosen: dict[str, str] = {}
    if not any(env.get(v) for v in WAIT_VARS):
        chosen.update(POLICIES[CHOSEN])
    if not any(env.get(v) for v in THREAD_VARS):
        chosen[CAP_VAR] = str(max(1, (os.cpu_count() or 1) // max(1, slots)))
    env.update(chosen)
    return chosen


def trial_threads(env: MutableMapping[str, str] | None = None) -> int | None:
    """The intra-op threads for a trial starting now: the user's ``OMP_NUM_THREADS`` if set;
    else, under the policy, the cores no other process is using (probed), at most the cap;
    else None (leave torch's default)."""
    env = os.environ if env is None else env
    try:
        explicit = int(env.get("OMP_NUM_THREADS", ""))
    except ValueError:
        explicit = 0
    if explicit > 0:
        return explicit
    if not env.get(CAP_VAR):
        return None
    cap = max(1, int(env[CAP_VAR]))
    busy = busy_cores()
    free = (os.cpu_count() or 1) - (0 if busy is None else round(busy))
    return max(1, min(cap, free))
