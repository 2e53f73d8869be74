"""Run one proxy trial, by default in a child process.

Training always runs in a child (spawned, so CUDA state never leaks across trials): an OOM
kill, a segfault or a hang past the wall-clock limit fails that trial with a reason and leaves
the search going. The child streams ``report(epoch, metrics)`` to the parent, which answers
whether to stop (Optuna pruning); ``should_cancel`` is polled every second. A child never
outlives its parent: on Linux the kernel kills it when the parent dies (even by SIGKILL), so a
killed worker leaves no orphan training on the GPU or writing into the run folder its retry uses.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.recipe import TrialConfig, TrialResult

Report = Callable[[int, dict[str, Any]], bool]
EXIT_GRACE_S = 5.0  # how long a child that stopped talking may take to exit before SIGKILL


def run_trial_isolated(
    config: TrialConfig,
    report: Report | None = None,
    *,
    output_dir: str | Path | None = None,
    timeout_s: float | None = None,
    should_cancel: Callable[[], bool] | None = None,
    memory_limit_mb: int | None = None,
) -> TrialResult:
    """``training.run_trial`` in a spawned child process; see the module docstring.
    ``memory_limit_mb`` caps what the child may allocate (``training.runtime.cap_memory``)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    out = str(output_dir) if output_dir else None
    proc = ctx.Process(
        target=_child_main,
        args=(config.to_dict(), out, child, os.getpid(), memory_limit_mb),
        daemon=True,
    )
    started = time.monotonic()
    proc.start()
    child.close()
    try:
        while True:
            if parent.poll(1.0):
                try:
                    kind, *payload = parent.recv()
                except EOFError:  # it closed its end: it is exiting, let it say how
                    proc.join(timeout=EXIT_GRACE_S)
                    break
                if kind == "result":
                    return TrialResult.from_dict(payload[0])
                parent.send(bool(report(*payload)) if report else False)
            elif not proc.is_alive():
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return _failed(f"exceeded the wall-clock limit of {timeout_s:g} s", started)
            if should_cancel is not None and should_cancel():
                return TrialResult(
                    status="cancelled", reason="cancelled", wall_time_s=time.monotonic() - started
                )
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
    return _failed(_death_reason(proc.exitcode), started)


def run_trial_inline(
    config: TrialConfig,
    report: Report | None = None,
    *,
    output_dir: str | Path | None = None,
    timeout_s: float | None = None,
    should_cancel: Callable[[], bool] | None = None,
    memory_limit_mb: int | None = None,
) -> TrialResult:
    """``run_trial`` in this process (debugging, fast tests): no crash isolation, and no
    wall-clock limit, cancellation or memory cap (``timeout_s``, ``should_cancel`` and
    ``memory_limit_mb`` are ignored: each would act on the whole calling process)."""
    started = time.monotonic()
    try:
        from training.loop import run_trial

        return run_trial(config, report, output_dir=output_dir)
    except Exception as exc:  # a bug or an unforeseen input fails this trial, not the search
        return _failed(f"{type(exc).__name__}: {exc}", started)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere the
    child notices at its next report, when the pipe is broken)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _child_main(
    config: dict[str, Any],
    output_dir: str | None,
    conn,
    parent_pid: int,
    memory_limit_mb: int | None = None,
) -> None:
    die_with_parent(parent_pid)
    from training.loop import run_trial
    from training.runtime import cap_memory

    if memory_limit_mb is not None:
        cap_memory(memory_limit_mb, config.get("device", "auto"))

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        conn.send(("report", epoch, metrics))
        return bool(conn.recv())

    started = time.monotonic()
    try:
        result = run_trial(TrialConfig.from_dict(config), report, output_dir=output_dir)
    except Exception as exc:  # reported as this trial's failure, with its reason
        result = _failed(f"{type(exc).__name__}: {exc}", started)
    conn.send(("result", result.to_dict()))
    conn.close()


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"trial process died from {name}{hint}"
    return f"trial process exited with code {exitcode} before reporting a result"


def _failed(reason: str, started: float) -> TrialResult:
    return TrialResult(status="failed", reason=reason, wall_time_s=time.monotonic() - started)
