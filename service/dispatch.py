"""Dispatchers: how a committed search reaches ``execute_search``.

The API calls ``dispatcher.submitted(search_id, queue)`` after the transaction that created
the search and its ``jobs`` row commits; ``start()``/``stop()`` follow the server's life.

- ``LocalDispatcher`` (the embedded default, and PostgreSQL with ``HSSL_LOCAL_WORKERS`` > 0):
  threads in this process claim rows of our ``jobs`` table (``service.queue``), run the search
  (its trials in child processes), heartbeat, finish. At start it reconciles jobs an earlier
  ``hssl serve`` on this host left running; every ``heartbeat_s`` it requeues stale jobs of
  any host. ``stop()`` interrupts the running searches (they stay ``running`` and their jobs
  go back to ``queued``, resumed by the next start).
- ``ProcrastinateDispatcher`` (PostgreSQL, ``HSSL_LOCAL_WORKERS=0``): defers the procrastinate
  task ``run_search_job`` for ``hssl worker`` processes and marks the row ``deferred``; a
  failed defer leaves the row ``queued`` for the workers' outbox sweep.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from service import queue as jobs
from service import slots
from service.db import session_scope
from service.execute import INTERRUPTED, Flag, engine_of, execute_search, one_line
from service.settings import Settings
from service.shards import ShardJob

log = logging.getLogger(__name__)


class Dispatcher(ABC):
    @abstractmethod
    def submitted(self, search_id: uuid.UUID, queue: str, shard: int = 0) -> None:
        """A search (or one more shard of it) was committed with its job row; never raises."""

    @abstractmethod
    def start(self) -> None:
        """Begin dispatching (idempotent)."""

    @abstractmethod
    def stop(self, timeout: float = 60.0) -> None:
        """Stop dispatching (idempotent)."""


class AnyOf:
    """A flag set when any of its (non-None) flags is set."""

    def __init__(self, *flags: Flag | None) -> None:
        self.flags = [f for f in flags if f is not None]

    def is_set(self) -> bool:
        return any(f.is_set() for f in self.flags)


class Heartbeat:
    """Refreshes a running job's heartbeat every ``settings.heartbeat_s`` from a thread;
    ``lost`` is set when the row is no longer this worker's (requeued as stale elsewhere),
    which interrupts the search so two workers never keep running one job."""

    def __init__(self, settings: Settings, job_id: int, worker: str) -> None:
        self.settings, self.job_id, self.worker = settings, job_id, worker
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        engine = engine_of(self.settings)
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                with session_scope(engine) as s:
                    ours = jobs.heartbeat(s, self.job_id, self.worker)
            except Exception as exc:  # the database blinked; the stale limit is far away
                log.warning("job %s: heartbeat failed: %s", self.job_id, one_line(exc))
                continue
            if not ours:
                log.warning("job %s is no longer %s's; interrupting it", self.job_id, self.worker)
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class _Running:
    job_id: int
    search_id: uuid.UUID
    worker: str
    interrupt: threading.Event = field(default_factory=threading.Event)


class LocalDispatcher(Dispatcher):
    """``slots`` threads claiming shard jobs of ``queue`` (default settings.queue; ``"*"``:
    any), so up to ``slots`` runs train at once here (``service.slots``)."""

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
        self.memory_limit_mb: int | None = None

    # ---- the interface ------------------------------------------------------------------
    def submitted(self, search_id: uuid.UUID, queue: str, shard: int = 0) -> None:
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._stopping.clear()
            self.memory_limit_mb = slots.configure(self.slots, self.settings.warm_pool)
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
            return {r.job_id: r.search_id for r in self._running.values()}

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

    def _run(self, job: jobs.Claimed) -> None:
        engine = engine_of(self.settings)
        run = _Running(job.id, job.search_id, job.worker)
        with self._lock:
            stopping = self._stopping.is_set()
            if not stopping:
                self._running[job.id] = run
        if stopping:  # claimed just as we stop: hand it back untouched
            self._record(engine, job, INTERRUPTED)
            return
        beat = Heartbeat(self.settings, job.id, job.worker)
        try:
            status = execute_search(
                self.settings,
                job.search_id,
                interrupt=AnyOf(run.interrupt, beat.lost),
                job=ShardJob(job.id, job.shard),
                announce=lambda added: self.submitted(job.search_id, job.queue),
                memory_limit_mb=self.memory_limit_mb,
            )
        finally:
            beat.stop()
            with self._lock:
                self._running.pop(job.id, None)
        self._record(engine, job, status)
        log.info("search %s: %s", job.search_id, status)

    def _record(self, engine, job: jobs.Claimed, status: str) -> None:
        try:
            with session_scope(engine) as s:
                if status == INTERRUPTED:
                    jobs.release_job(s, job.id, job.worker)
                else:
                    outcome = "failed" if status == "failed" else "done"
                    jobs.finish_job(s, job.id, outcome, job.worker)
        except Exception as exc:  # left running: the stale sweep takes it back
            log.warning("job %s: could not record %s: %s", job.id, status, one_line(exc))

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


class ProcrastinateDispatcher(Dispatcher):
    """Defers ``run_search_job`` for ``hssl worker`` processes (PostgreSQL only)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app = None
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            self._open()
        except Exception as exc:  # deferred later, or swept by the workers' outbox
            log.error("procrastinate is unreachable: %s", one_line(exc))

    def _open(self):
        from service.worker import make_app

        with self._lock:
            if self._app is None:
                self._app = make_app(self.settings).open()
            return self._app

    def submitted(self, search_id: uuid.UUID, queue: str, shard: int = 0) -> None:
        from procrastinate.exceptions import AlreadyEnqueued

        from service.worker import defer_search

        try:
            defer_search(self._open(), search_id, queue, shard)
        except AlreadyEnqueued:
            pass
        except Exception as exc:
            log.warning("search %s: defer failed, left to the outbox: %s", search_id, one_line(exc))
            return
        try:
            with session_scope(engine_of(self.settings)) as s:
                jobs.mark_deferred(s, search_id, shard)
        except Exception as exc:  # the outbox defers it again; the queueing lock dedupes
            log.warning("search %s: could not mark deferred: %s", search_id, one_line(exc))

    def stop(self, timeout: float = 60.0) -> None:
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            try:
                app.close()
            except Exception as exc:
                log.warning("closing procrastinate: %s", one_line(exc))


def make_dispatcher(settings: Settings) -> Dispatcher:
    """LocalDispatcher when settings.local_workers > 0 or the database is SQLite, else
    ProcrastinateDispatcher (``hssl worker`` processes run the searches)."""
    if settings.local_workers > 0 or not settings.is_postgres:
        return LocalDispatcher(settings, max(1, settings.local_workers))
    return ProcrastinateDispatcher(settings)
