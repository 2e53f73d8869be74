"""The embedded dispatcher: ``slots`` threads of this process claim shard jobs from our ``jobs``
table (``service.persistence.jobs``) and run them through the one job lifecycle
(``service.jobs.lifecycle``), each search shard in a spawned child process
(``service.jobs.child``): the process that dispatches (``hssl serve``: the API's) never imports
torch, timm or matplotlib, and the child stores the ranking, plot and recommendation.

It serves the embedded default (SQLite) and PostgreSQL with ``HSSL_LOCAL_WORKERS`` > 0. At start
it reconciles jobs an earlier ``hssl serve`` on this host left running; every ``heartbeat_s`` it
requeues stale jobs of any host. ``stop()`` interrupts the running searches (they stay
``running`` and their jobs go back to ``queued``, resumed by the next start).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field

from service.jobs import slots
from service.jobs.child import execute_in_child
from service.jobs.execute import one_line
from service.jobs.lifecycle import record_outcome, run_held_job
from service.persistence import jobs
from service.persistence.db import engine_of, session_scope
from service.persistence.settings import Settings
from service.statuses import Outcome

log = logging.getLogger(__name__)

MEASURE_TIMEOUT_S = 300.0  # for the GPU's memory (a spawned process imports torch first)


@dataclass
class _Running:
    job: jobs.HeldJob
    interrupt: threading.Event = field(default_factory=threading.Event)


class LocalDispatcher:
    """``slots`` threads claiming shard jobs of ``queue`` (default settings.queue; ``"*"``:
    any), so up to ``slots`` runs train at once here (``service.jobs.slots``)."""

    ANY_QUEUE = "*"

    def __init__(
        self,
        settings: Settings,
        slots: int | None = None,
        *,
        queue: str | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.slots = max(1, slots if slots is not None else settings.local_workers)
        self.queue = queue or settings.queue
        self.poll_s = poll_s
        self.prefix = f"serve:{socket.gethostname()}:"
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._memory: Future[int | None] | None = None

    # ---- the interface ------------------------------------------------------------------
    def submitted(self, search_id: uuid.UUID, queue: str, shard: int = 0) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._stopping.clear()
            threads = slots.prepare(self.slots, self.settings.warm_pool)
            log.info("%d slot(s): at most %s threads per trial", self.slots, threads)
            self._memory = slots.memory_share(self.slots)  # measured in a child, meanwhile
            self.reconcile()
            for slot in range(self.slots):
                self._spawn(self._slot_loop, f"hssl-slot-{slot}", slot)
            self._spawn(self._sweep_loop, "hssl-sweep")

    def stop(self, timeout: float = 60.0) -> None:
        with self._lock:
            self._stopping.set()
            for run in self._running.values():
                run.interrupt.set()
            threads, self._threads = self._threads, []
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
            if thread.is_alive():
                log.warning("%s did not stop within %g s", thread.name, timeout)

    def running(self) -> dict[int, uuid.UUID]:
        """Job id → search id of the searches this process runs now."""
        with self._lock:
            return {r.job.id: r.job.search_id for r in self._running.values()}

    # ---- internals ----------------------------------------------------------------------
    def worker_id(self, slot: int) -> str:
        return f"{self.prefix}{os.getpid()}:{slot}"

    def reconcile(self) -> None:
        """Jobs a dead ``hssl serve`` on this host left running go back to the queue."""
        try:
            with session_scope(engine_of(self.settings)) as s:
                requeued, failed = jobs.reconcile_at_startup(s, self.prefix, keep=_alive)
            if requeued or failed:
                log.info("reconciled orphaned jobs: requeued %s, failed %s", requeued, failed)
        except Exception as exc:
            log.error("could not reconcile orphaned jobs: %s", one_line(exc))

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _slot_loop(self, slot: int) -> None:
        worker = self.worker_id(slot)
        engine = engine_of(self.settings)
        while not self._stopping.is_set():
            try:
                with session_scope(engine) as s:
                    job = jobs.claim_job(
                        s, None if self.queue == self.ANY_QUEUE else self.queue, worker
                    )
            except Exception as exc:
                log.warning("%s: claim failed: %s", worker, one_line(exc))
                self._stopping.wait(self.poll_s)
                continue
            if job is None:
                with self._wake:
                    if not self._stopping.is_set():
                        self._wake.wait(self.poll_s)
                continue
            self._run(job)

    def _run(self, job: jobs.HeldJob) -> None:
        run = _Running(job)
        with self._lock:
            stopping = self._stopping.is_set()
            if not stopping:
                self._running[job.id] = run
        if stopping:  # claimed just as we stop: hand it back untouched
            record_outcome(self.settings, job, Outcome.INTERRUPTED)
            return
        try:
            run_held_job(
                self.settings,
                job,
                interrupt=run.interrupt,
                announce=lambda added: self.submitted(job.search_id, job.queue),
                memory_limit_mb=self.memory_limit_mb(),
                execute=execute_in_child,
            )
        finally:
            with self._lock:
                self._running.pop(job.id, None)

    def memory_limit_mb(self) -> int | None:
        """Each trial's share of the GPU memory (MiB; None: one slot, or no CUDA)."""
        if self._memory is None:
            return None
        try:
            return self._memory.result(timeout=MEASURE_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not read the GPU's memory; trials are not capped: %s", one_line(exc))
            self._memory = None
            return None

    def _sweep_loop(self) -> None:
        engine = engine_of(self.settings)
        while not self._stopping.wait(self.settings.heartbeat_s):
            try:
                with session_scope(engine) as s:
                    requeued, failed = jobs.requeue_stale(s, self.settings.stale_after_s)
            except Exception as exc:
                log.warning("stale-job sweep failed: %s", one_line(exc))
                continue
            if requeued or failed:
                log.info("stale jobs: requeued %s, failed %s", requeued, failed)
                with self._wake:
                    self._wake.notify_all()


def _alive(worker: str) -> bool:
    """Is the process behind a ``serve:<host>:<pid>:<slot>`` worker id (this host) alive?
    This process's own id is from an earlier life (a container restarts as the same pid)."""
    try:
        pid = int(worker.split(":")[2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
