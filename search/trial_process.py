"""Run one proxy trial, by default in a child process.

Training always runs in a child (spawned, so CUDA state never leaks across trials): an OOM
kill, a segfault or a hang past the wall-clock limit fails that trial with a reason and leaves
the search going. The child streams ``report(epoch, metrics)`` to the parent, which answers
whether to stop (Optuna pruning); ``should_cancel`` is polled every second. A child never
outlives its parent: on Linux the kernel kills it when the parent dies (even by SIGKILL), so a
killed worker leaves no orphan training on the GPU or writing into the run folder its retry uses.

Warm pool. Starting a child costs the interpreter plus the torch/timm/training imports (several
seconds), so each calling thread keeps one *spare*: a child already spawned, with the training
stack imported, waiting on its pipe for a config. ``run_trial_isolated`` hands the config to
the spare (or spawns one if there is none) and starts the next spare as soon as this one has
finished importing, so the next run on that thread finds it warm. Still one process per trial:
a child runs exactly one trial and exits; it applies the memory cap and the thread count after
it receives the config, before training.

- Per thread: a spare is used only by the thread that started it (concurrent callers never
  share one). It never outlives its thread or process: the kernel's parent-death signal is
  per *thread* on Linux, so it is SIGKILLed when that thread ends as well as when the process
  dies; a background janitor also kills spares of ended threads, and those left unused for
  ``HSSL_WARM_IDLE_S`` seconds (default 10) after their thread's last run, so an idle worker or
  a finished search holds no spare for long. ``shutdown_pool()`` (also run at exit) kills them
  all at once.
- Environment: a spare runs with the environment it was spawned with. It is used only if the
  environment, working directory and ``sys.path`` are still exactly those; any change (e.g.
  ``CUDA_VISIBLE_DEVICES`` or ``OMP_NUM_THREADS`` set after it started) discards it and the run
  gets a fresh child, so a run always sees what a cold spawn at call time would have seen.
  ``OMP_NUM_THREADS``, if set, is applied with ``torch.set_num_threads`` once the config is in.
- A spare is never used across a fork: a forked child starts with an empty pool.
- Off unless ``HSSL_WARM_POOL=1`` (the service's workers set it); off, or with
  ``warm=False``, a child is spawned per run at call time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.recipe import TrialConfig, TrialResult

Report = Callable[[int, dict[str, Any]], bool]
EXIT_GRACE_S = 5.0  # how long a child that stopped talking may take to exit before SIGKILL
WARM_POOL_ENV = "HSSL_WARM_POOL"  # "1" turns the warm pool on (default: a child per run)
IDLE_ENV = "HSSL_WARM_IDLE_S"  # how long a spare outlives its thread's last run, seconds
IDLE_S = 10.0  # its default: well over the bookkeeping between two trials of a search


@dataclass
class ChildInfo:
    """The child that ran this thread's last isolated trial (``last_child()``)."""

    pid: int
    pre_started: bool  # a spare, spawned before this run asked for a child
    ready: bool  # it had finished its imports when the config was handed to it
    spawned_at: float  # time.monotonic() of this process
    handed_at: float
    import_s: float | None = None  # the child's own import time (torch, timm, training.loop.train)
    threads: int | None = None  # torch's intra-op threads in the child, once the config was in


def run_trial_isolated(
    config: TrialConfig,
    report: Report | None = None,
    *,
    output_dir: str | Path | None = None,
    timeout_s: float | None = None,
    should_cancel: Callable[[], bool] | None = None,
    memory_limit_mb: int | None = None,
    warm: bool | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrialResult:
    """``training.run_trial`` in a child process of its own; see the module docstring.
    ``memory_limit_mb`` caps what the child may allocate (``training.runtime.device.cap_memory``).
    ``warm`` (default: on when ``HSSL_WARM_POOL=1``) uses and refills this thread's spare;
    ``warm=False`` spawns a child now and leaves no spare. The wall-clock limit counts from the
    hand-over of the config (for a child spawned now, its imports included, as before).
    ``on_progress`` hears the child's progress inside epochs (``training.loop.train`` on_step)."""
    warm = warm_pool_enabled() if warm is None else warm
    key = _env_key()
    job = ("run", config.to_dict(), str(output_dir) if output_dir else None, memory_limit_mb)
    child = _take(key) if warm else None
    if child is not None and not child.hand(job):  # it died while idle: start afresh
        child.discard()
        child = None
    pre_started = child is not None
    if child is None:
        child = _Child(key)
        child.hand(job)  # waits in its pipe until the child has imported
    info = ChildInfo(
        pid=child.pid,
        pre_started=pre_started,
        ready=child.import_s is not None,
        spawned_at=child.spawned_at,
        handed_at=time.monotonic(),
        import_s=child.import_s,
    )
    _local.last = info
    refilled = False

    def refill() -> None:  # the next spare imports while this trial trains
        nonlocal refilled
        if warm and not refilled:
            refilled = True
            _refill(key)

    if info.ready:
        refill()
    done = False
    try:
        result = _supervise(child, info, report, timeout_s, should_cancel, refill, on_progress)
        done = True
    finally:
        child.discard()
        if done:
            refill()
        if warm:
            _mark_idle()
    return result


def _supervise(
    child: _Child,
    info: ChildInfo,
    report: Report | None,
    timeout_s: float | None,
    should_cancel: Callable[[], bool] | None,
    on_ready: Callable[[], None],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrialResult:
    """Answer the child's reports until it sends its result, dies, times out or is cancelled."""
    proc, conn, started = child.proc, child.conn, info.handed_at
    while True:
        if conn.poll(1.0):
            try:
                kind, *payload = conn.recv()
            except (EOFError, OSError):  # it closed its end or died: let it say how
                proc.join(timeout=EXIT_GRACE_S)
                break
            if kind == "result":
                return TrialResult.from_dict(payload[0])
            if kind == "ready":
                info.import_s = child.import_s = payload[0]
                on_ready()
            elif kind == "started":
                info.threads = payload[0]["threads"]
            elif kind == "progress":  # no answer expected
                if on_progress is not None:
                    on_progress(payload[0])
            else:  # "report"
                answer = bool(report(*payload)) if report else False
                try:
                    conn.send(answer)
                except OSError:  # it died while the report was being answered
                    proc.join(timeout=EXIT_GRACE_S)
                    break
        elif not proc.is_alive():
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return _failed(f"exceeded the wall-clock limit of {timeout_s:g} s", started)
        if should_cancel is not None and should_cancel():
            return TrialResult(
                status="cancelled", reason="cancelled", wall_time_s=time.monotonic() - started
            )
    if proc.is_alive():  # closed its pipe but did not exit within the grace period
        proc.kill()
    proc.join()
    return _failed(_death_reason(proc.exitcode), started)


def run_trial_inline(
    config: TrialConfig,
    report: Report | None = None,
    *,
    output_dir: str | Path | None = None,
    timeout_s: float | None = None,
    should_cancel: Callable[[], bool] | None = None,
    memory_limit_mb: int | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrialResult:
    """``run_trial`` in this process (debugging, fast tests): no crash isolation, and no
    wall-clock limit, cancellation or memory cap (``timeout_s``, ``should_cancel`` and
    ``memory_limit_mb`` are ignored: each would act on the whole calling process)."""
    started = time.monotonic()
    try:
        from training.loop.train import run_trial

        return run_trial(config, report, output_dir=output_dir, on_step=on_progress)
    except Exception as exc:  # a bug or an unforeseen input fails this trial, not the search
        return _failed(f"{type(exc).__name__}: {exc}", started)


# ---- the warm pool ---------------------------------------------------------------------------


def warm_pool_enabled() -> bool:
    """On when ``HSSL_WARM_POOL`` is 1/true/yes/on (workers and ``hssl serve`` set it: see
    ``service.jobs.slots``) and the pool was not shut down at exit. Off by default: a one-off
    caller (the CLI, a notebook) would pay a spare's imports for a run that never comes."""
    on = os.environ.get(WARM_POOL_ENV, "0").strip().lower() in ("1", "true", "yes", "on")
    return on and not _closed


def prestart(wait: bool = False, timeout: float | None = None) -> int | None:
    """Give this thread a spare for the current environment now (e.g. when a worker starts,
    so even its first trial is warm) and return its pid; None with the pool off. ``wait``
    blocks until the spare has finished its imports (at most ``timeout`` seconds)."""
    if not warm_pool_enabled():
        return None
    key = _env_key()
    spare = _take(key) or _Child(key)
    _put(spare)
    _mark_idle()
    if wait:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not spare.check_ready(0.05) and spare.proc.is_alive():
            if deadline is not None and time.monotonic() > deadline:
                break
    return spare.pid


def spare_pid() -> int | None:
    """The pid of this thread's spare, if it has one."""
    _check_pid()
    with _pool_lock:
        spare = _spares.get(threading.get_ident())
    return spare.pid if spare is not None else None


def last_child() -> ChildInfo | None:
    """How this thread's last ``run_trial_isolated`` got its child."""
    return getattr(_local, "last", None)


def shutdown_pool() -> None:
    """Kill every spare of this process (later runs start new ones). Registered at exit."""
    global _spares
    _check_pid()
    with _pool_lock:
        spares, _spares = list(_spares.values()), {}
    for spare in spares:
        spare.discard()


class _Child:
    """A spawned trial process and the parent's end of its pipe."""

    def __init__(self, key: tuple) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child_main, args=(child_end, os.getpid()), daemon=True, name="hssl-trial"
        )
        self.proc.start()
        child_end.close()
        self.pid: int = self.proc.pid  # type: ignore[assignment]
        self.key = key
        self.owner = threading.current_thread()
        self.spawned_at = time.monotonic()
        self.import_s: float | None = None
        self.expires_at: float | None = None  # None while its thread's trial runs

    def check_ready(self, timeout: float = 0.0) -> bool:
        """Whether it has imported (it said ``ready``); waits at most ``timeout`` seconds."""
        if self.import_s is None:
            try:
                if self.conn.poll(timeout):
                    kind, *payload = self.conn.recv()
                    if kind == "ready":
                        self.import_s = payload[0]
            except (EOFError, OSError):  # it died: not ready, and the caller will see why
                pass
        return self.import_s is not None

    def hand(self, job: tuple) -> bool:
        try:
            self.conn.send(job)
        except OSError:  # BrokenPipeError: it is dead
            return False
        return True

    def discard(self) -> None:
        """Kill it (it may be idle, running or already gone) and reap it."""
        self.conn.close()
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


_pool_lock = threading.Lock()
_spares: dict[int, _Child] = {}  # thread ident -> that thread's spare
_pool_pid = os.getpid()
_closed = False  # set at interpreter exit: no new spares
_janitor: threading.Thread | None = None  # reaps idle and orphaned spares while there are any
JANITOR_EVERY_S = 1.0
_local = threading.local()


def _env_key() -> tuple:
    """What a spawned child inherits from this process at spawn time."""
    return (tuple(sorted(os.environ.items())), os.getcwd(), tuple(sys.path))


def _take(key: tuple) -> _Child | None:
    """Remove this thread's spare from the pool; None (after discarding it) if it is stale:
    another environment, left by an ended thread of the same ident, or dead."""
    _check_pid()
    with _pool_lock:
        spare = _spares.pop(threading.get_ident(), None)
    if spare is None:
        return None
    expired = spare.expires_at is not None and time.monotonic() > spare.expires_at
    if expired or spare.owner is not threading.current_thread() or spare.key != key:
        spare.discard()
        return None
    spare.check_ready()
    if not spare.proc.is_alive():
        spare.discard()
        return None
    return spare


def _put(spare: _Child) -> None:
    global _janitor
    with _pool_lock:
        old = _spares.pop(threading.get_ident(), None)
        _spares[threading.get_ident()] = spare
        if _janitor is None:
            _janitor = threading.Thread(target=_janitor_loop, name="hssl-warm-pool", daemon=True)
            _janitor.start()
    if old is not None and old is not spare:
        old.discard()


def _refill(key: tuple) -> None:
    """Spawn this thread's next spare (its imports run in the background)."""
    if not _closed:
        _check_pid()
        _put(_Child(key))


def _mark_idle() -> None:
    """This thread's run is over: its spare, if unused for ``HSSL_WARM_IDLE_S``, goes."""
    try:
        idle = float(os.environ.get(IDLE_ENV, IDLE_S))
    except ValueError:
        idle = IDLE_S
    with _pool_lock:
        spare = _spares.get(threading.get_ident())
        if spare is not None:
            spare.expires_at = time.monotonic() + idle


def _janitor_loop() -> None:
    """While there are spares: every second, kill those idle past their expiry and those
    whose thread has ended (on Linux already killed with it, unless it ended before the
    spare had asked for that). Ends when the pool is empty; ``_put`` starts it again."""
    global _janitor
    while True:
        time.sleep(JANITOR_EVERY_S)
        now = time.monotonic()
        with _pool_lock:
            if os.getpid() != _pool_pid:
                return
            stale = [
                ident
                for ident, s in _spares.items()
                if not s.owner.is_alive() or (s.expires_at is not None and now > s.expires_at)
            ]
            gone = [_spares.pop(ident) for ident in stale]
            finished = not _spares
            if finished:
                _janitor = None
        for spare in gone:
            spare.discard()
        if finished:
            return


def _check_pid() -> None:
    if os.getpid() != _pool_pid:
        _forget_pool()


def _forget_pool() -> None:
    """In a forked child: the spares are the parent's; drop them untouched (closing only this
    process's copies of their pipes)."""
    global _pool_lock, _spares, _pool_pid, _janitor
    for spare in _spares.values():
        with contextlib.suppress(OSError):
            spare.conn.close()
    _pool_lock, _spares, _pool_pid, _janitor = threading.Lock(), {}, os.getpid(), None


def _at_exit() -> None:
    global _closed
    _closed = True
    shutdown_pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
atexit.register(_at_exit)


# ---- the child -------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere the
    child notices at its next report, when the pipe is broken). On Linux "parent" is the
    thread that started it: a child dies with that thread too."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _child_main(conn, parent_pid: int) -> None:
    """Import the training stack, say ``ready``, wait for one config, run it, send its result
    and exit. A pipe closed before a config came means the spare is not needed: exit."""
    die_with_parent(parent_pid)
    t0 = time.perf_counter()
    import timm  # noqa: F401  (the slow imports happen before a config is waiting)
    import torch

    from training.loop.train import run_trial
    from training.runtime.device import cap_memory
    from training.runtime.threads import trial_threads

    try:
        conn.send(("ready", time.perf_counter() - t0))
        _, config, output_dir, memory_limit_mb = conn.recv()
    except (EOFError, OSError):
        return
    threads = trial_threads()  # the user's count, or the cores free now (training.runtime.threads)
    if threads is not None:  # explicit: torch is in already (the warm pool imported it)
        torch.set_num_threads(threads)
    if memory_limit_mb is not None:
        cap_memory(memory_limit_mb, config.get("device", "auto"))
    conn.send(("started", {"threads": torch.get_num_threads()}))

    def report(epoch: int, metrics: dict[str, Any]) -> bool:
        conn.send(("report", epoch, metrics))
        return bool(conn.recv())

    started = time.monotonic()
    try:
        result = run_trial(
            TrialConfig.from_dict(config),
            report,
            output_dir=output_dir,
            on_step=lambda data: conn.send(("progress", data)),
        )
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
