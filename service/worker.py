"""PostgreSQL workers: procrastinate runs ``execute_search`` for searches the API deferred.

Run one worker per GPU, each pinned to its device by the operator::

    CUDA_VISIBLE_DEVICES=0 hssl worker --queue gpu-a100 &
    CUDA_VISIBLE_DEVICES=1 hssl worker --queue gpu-a100 &

(``HSSL_DATABASE_URL`` names the PostgreSQL database; ``--slots N`` runs N shard jobs, so N
trial processes, at once on the same device, each with 1/N of it: see ``service.slots``.)

Tasks:

- ``run_search_job(search_id, shard)`` runs one shard of a search (idempotent: a search
  already final returns at once; a re-run resumes its study). On a clean shutdown
  (SIGTERM/SIGINT) the running shards stop within about a second, the search stays
  ``running`` and the shards go back to our outbox, from which the next maintenance run
  defers them again.
- ``hssl_maintenance`` (periodic, every minute, on the ``hssl-maintenance`` queue every worker
  also listens to): retries procrastinate jobs of dead workers (failing the job and its search
  after 3 attempts), and re-defers searches whose ``jobs`` row is still ``queued`` after 30 s
  (the API died between its commit and its defer, or procrastinate was unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from typing import Any

import procrastinate
from procrastinate import exceptions as pq_exceptions
from procrastinate.jobs import Status
from sqlalchemy.engine import make_url

from service import queue as jobs
from service import slots as slots_module
from service.db import is_transient, session_scope, wait_for_database
from service.dispatch import AnyOf, Heartbeat
from service.execute import INTERRUPTED, engine_of, execute_search, one_line
from service.settings import Settings
from service.shards import ShardJob

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
        return "done"
    beat = Heartbeat(settings, job_id, worker)
    stop = AnyOf(interrupt, beat.lost)
    try:
        status = execute_search(
            settings,
            search_id,
            interrupt=stop,
            job=ShardJob(job_id, shard),
            announce=lambda added: defer_shards(settings, search_id, added),
            memory_limit_mb=memory_limit_mb,
        )
    finally:
        beat.stop()
    try:
        with session_scope(engine) as s:
            if status == INTERRUPTED:
                jobs.release_job(s, job_id, worker)
            else:
                jobs.finish_job(s, job_id, "failed" if status == "failed" else "done", worker)
    except Exception as exc:
        log.warning("job %s: could not record %s: %s", job_id, status, one_line(exc))
    log.info("search %s shard %s: %s", search_id, shard, status)
    return status


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


async def wait_until_reachable(engine, interrupt: threading.Event) -> None:
    """Wait (in a thread) until the database answers, or until ``interrupt`` is set."""
    while not interrupt.is_set():
        try:
            await asyncio.to_thread(wait_for_database, engine, 10.0)
            return
        except Exception as exc:
            log.warning("PostgreSQL still unreachable: %s", one_line(exc))


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


def run_worker(
    settings: Settings, queue: str | None = None, slots: int = 1, name: str | None = None
) -> None:
    """Run a worker until SIGTERM/SIGINT: it takes ``run_search_job`` jobs of ``queue``
    (default settings.queue) and the maintenance jobs, ``slots`` shard jobs (so runs) at a
    time, each with its share of the device (``service.slots``).
    On a signal the running searches are interrupted (to be resumed elsewhere) and it exits.

    procrastinate stops a worker whose notification listener or heartbeat loses the database
    (after its running jobs end; a running search rides the outage out itself, see
    service.execute); we then wait for PostgreSQL and start a fresh worker on fresh
    connections, so a database restart never needs an operator."""
    from procrastinate.worker import Worker

    import search.run  # noqa: F401  (torch/timm/optuna load now, not on the first job: ~6 s)

    interrupt = threading.Event()
    app = make_app(settings, interrupt, slots_module.configure(slots, settings.warm_pool))
    queues = [queue or settings.queue, MAINTENANCE_QUEUE]

    current: dict[str, Worker] = {}

    def stop() -> None:
        log.info("stopping: interrupting running searches")
        interrupt.set()
        if "worker" in current:
            current["worker"].stop()

    async def one_round() -> None:
        async with app.open_async():
            worker = Worker(
                app=app,
                queues=queues,
                concurrency=slots,
                name=name or f"hssl-{socket.gethostname()}-{os.getpid()}",
                install_signal_handlers=False,
                delete_jobs="successful",
            )
            current["worker"] = worker
            await worker.run()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            while not interrupt.is_set():
                try:
                    await one_round()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("worker lost the database: %s", one_line(exc))
                if not interrupt.is_set():  # procrastinate stops when its listener dies
                    log.warning("worker stopped on its own; restarting once PostgreSQL answers")
                    await wait_until_reachable(engine_of(settings), interrupt)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
