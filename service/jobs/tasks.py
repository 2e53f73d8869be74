"""procrastinate for PostgreSQL workers: the app and its two tasks, deferring, maintenance,
and the dispatcher that defers new searches for ``hssl worker`` processes.

Tasks:

- ``run_search_job(search_id, shard)`` runs one shard of a search through the one job
  lifecycle (``service.jobs.lifecycle``; idempotent: a search already final returns at once; a
  re-run resumes its study). On a clean shutdown (SIGTERM/SIGINT) the running shards stop
  within about a second, the search stays ``running`` and the shards go back to our outbox,
  from which the next maintenance run defers them again.
- ``hssl_maintenance`` (periodic, every minute, on the ``hssl-maintenance`` queue every worker
  also listens to): retries procrastinate jobs of dead workers (failing the job and its search
  after 3 attempts), and re-defers searches whose ``jobs`` row is still ``queued`` after 30 s
  (the API died between its commit and its defer, or procrastinate was unreachable).

The tasks are registered by :func:`make_app` on each App rather than at module level through a
procrastinate ``Blueprint``: ``App.add_tasks_from`` namespaces the blueprint's task objects in
place, so one module-level blueprint can join only one App per process, and a process here
opens several (the API's deferring app, a worker's asynchronous app, the short-lived
synchronous app that defers new shards); ``App.with_connector``, the other way to share
module-level tasks, is deprecated for the same reason (tasks link back to one app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from typing import Any

import procrastinate
from procrastinate import exceptions as pq_exceptions
from procrastinate.jobs import Status
from sqlalchemy.engine import make_url

from service.jobs.execute import one_line
from service.jobs.lifecycle import run_held_job
from service.persistence import jobs
from service.persistence.db import engine_of, session_scope
from service.persistence.settings import Settings
from service.statuses import JobStatus

log = logging.getLogger(__name__)

RUN_TASK = "run_search_job"
MAINTENANCE_TASK = "hssl_maintenance"
MAINTENANCE_QUEUE = "hssl-maintenance"
OUTBOX_AFTER_S = 30.0
STALLED_AFTER_S = 30.0  # procrastinate's worker heartbeat is every 10 s


def conninfo(database_url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"procrastinate needs PostgreSQL, not {url.get_backend_name()}")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def make_app(
    settings: Settings,
    interrupt: threading.Event | None = None,
    memory_limit_mb: int | None = None,
) -> procrastinate.App:
    """A procrastinate App on the settings' database with our two tasks. The API defers
    with it (``open()``), a worker runs it (``open_async()``); ``interrupt`` stops the
    searches this process runs (set on shutdown)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(settings.resolved_database_url), min_size=1, max_size=4
    )
    app = procrastinate.App(connector=connector)

    @app.task(name=RUN_TASK, queue=settings.queue, pass_context=True)
    def run_search_job(context: procrastinate.JobContext, search_id: str, shard: int = 0) -> str:
        return run_job(
            settings, uuid.UUID(search_id), context.job.id, interrupt, shard, memory_limit_mb
        )

    @app.periodic(cron="* * * * *", periodic_id="every-minute", queueing_lock=MAINTENANCE_TASK)
    @app.task(name=MAINTENANCE_TASK, queue=MAINTENANCE_QUEUE, priority=100)
    async def maintenance(timestamp: int) -> dict[str, int]:
        return await maintain(app, settings)

    return app


def run_job(
    settings: Settings,
    search_id: uuid.UUID,
    pq_job_id: int | None,
    interrupt: threading.Event | None,
    shard: int = 0,
    memory_limit_mb: int | None = None,
) -> str:
    """The body of ``run_search_job``: our job row of the shard ``running`` (with heartbeats)
    while it runs, then ``done``/``failed``, or back to ``queued`` if interrupted. A shard
    whose row is already closed (its siblings found nothing left for it) returns at once."""
    worker = f"procrastinate:{socket.gethostname()}:{os.getpid()}:{pq_job_id}"
    engine = engine_of(settings)
    try:
        with session_scope(engine) as s:
            job_id = jobs.start_search_job(s, search_id, worker, shard)
    except Exception as exc:  # the row is read again when the job is retried
        log.warning("search %s: could not mark shard %s running: %s", search_id, shard, exc)
        raise
    if job_id is None:
        log.info("search %s: shard %s has nothing left to do", search_id, shard)
        return JobStatus.DONE
    return run_held_job(
        settings,
        jobs.HeldJob(job_id, search_id, worker, shard=shard),
        interrupt=interrupt,
        announce=lambda added: defer_shards(settings, search_id, added),
        memory_limit_mb=memory_limit_mb,
    )


def defer_shards(settings: Settings, search_id: uuid.UUID, added: list[tuple[int, str]]) -> None:
    """Defer the new shards of a search from a running task (a short-lived synchronous app:
    the worker's own app is asynchronous); a shard not deferred here waits in the outbox."""
    app = procrastinate.App(
        connector=procrastinate.SyncPsycopgConnector(
            conninfo=conninfo(settings.resolved_database_url)
        )
    )
    app.task(name=RUN_TASK, queue=settings.queue)(_never_run)
    engine = engine_of(settings)
    with app.open():
        for shard, queue in added:
            with contextlib.suppress(pq_exceptions.AlreadyEnqueued):
                defer_search(app, search_id, queue, shard)
            with session_scope(engine) as s:
                jobs.mark_deferred(s, search_id, shard)


def _never_run(search_id: str, shard: int = 0) -> str:  # the deferring app's task signature
    raise RuntimeError("defer_shards' app only defers")


async def maintain(app: procrastinate.App, settings: Settings) -> dict[str, int]:
    """Retry the run jobs of dead workers (fail them with their search after 3 attempts) and
    defer again the searches our outbox still holds."""
    engine = engine_of(settings)
    retried = failed = redeferred = 0
    stalled = await app.job_manager.get_stalled_jobs(
        task_name=RUN_TASK, seconds_since_heartbeat=STALLED_AFTER_S
    )
    for job in stalled:
        search_id = uuid.UUID(str(job.task_kwargs.get("search_id")))
        shard = int(job.task_kwargs.get("shard", 0))
        try:
            if job.attempts + 1 >= jobs.MAX_ATTEMPTS:
                await app.job_manager.finish_job(job, Status.FAILED, delete_job=False)
                reason = f"gave up after {job.attempts + 1} attempts: its worker stopped"
                await asyncio.to_thread(
                    _in_session, engine, jobs.fail_search_job, search_id, reason, shard
                )
                failed += 1
            else:
                await app.job_manager.retry_job(job)
                retried += 1
        except Exception as exc:  # another worker got there first, or the lock is taken
            log.warning("stalled job %s: %s", job.id, one_line(exc))
    waiting = await asyncio.to_thread(_in_session, engine, jobs.outbox, OUTBOX_AFTER_S)
    for search_id, shard, queue in waiting:
        try:
            await defer_search_async(app, search_id, queue, shard)
        except pq_exceptions.AlreadyEnqueued:
            pass
        except Exception as exc:
            log.warning("search %s: defer failed: %s", search_id, one_line(exc))
            continue
        await asyncio.to_thread(_in_session, engine, jobs.mark_deferred, search_id, shard)
        redeferred += 1
    summary = {"retried": retried, "failed": failed, "redeferred": redeferred}
    if any(summary.values()):
        log.info("maintenance: %s", summary)
    return summary


def _in_session(engine, func, *args: Any) -> Any:
    with session_scope(engine) as s:
        return func(s, *args)


def _deferrer(app: procrastinate.App, search_id: uuid.UUID, queue: str, shard: int):
    lock = str(search_id) if shard == 0 else f"{search_id}#{shard}"
    return app.configure_task(RUN_TASK, queue=queue, queueing_lock=lock)


def defer_search(app: procrastinate.App, search_id: uuid.UUID, queue: str, shard: int = 0) -> int:
    """Defer ``run_search_job`` for one shard (one waiting job per shard: queueing lock =
    the search id, with ``#shard`` after shard 0)."""
    return _deferrer(app, search_id, queue, shard).defer(search_id=str(search_id), shard=shard)


async def defer_search_async(
    app: procrastinate.App, search_id: uuid.UUID, queue: str, shard: int = 0
) -> int:
    kwargs = {"search_id": str(search_id), "shard": shard}
    return await _deferrer(app, search_id, queue, shard).defer_async(**kwargs)


class ProcrastinateDispatcher:
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
        with self._lock:
            if self._app is None:
                self._app = make_app(self.settings).open()
            return self._app

    def submitted(self, search_id: uuid.UUID, queue: str, shard: int = 0) -> None:
        try:
            defer_search(self._open(), search_id, queue, shard)
        except pq_exceptions.AlreadyEnqueued:
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
